//! Maps key paths to the line they stand on, from the YAML parser's event markers.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use super::{KeyPath, Seg};

#[derive(Default)]
pub(crate) struct LineIndex {
    lines: HashMap<KeyPath, usize>,
}

impl LineIndex {
    pub(crate) fn build(text: &str) -> Self {
        let mut b = Builder::default();
        // A document serde_yaml accepted but this parser does not only loses line numbers.
        let _ = Parser::new_from_str(text).load(&mut b, false);
        Self { lines: b.lines }
    }

    /// The line of `path`, or of its nearest ancestor the index knows.
    pub(crate) fn line_of(&self, path: &KeyPath) -> Option<usize> {
        let mut p = path.0.as_slice();
        loop {
            if let Some(l) = self.lines.get(&KeyPath(p.to_vec())) {
                return Some(*l);
            }
            p = p.split_last()?.1;
            if p.is_empty() {
                return None;
            }
        }
    }
}

enum Frame {
    Map { path: Vec<Seg>, key: Option<String> },
    Seq { path: Vec<Seg>, index: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    lines: HashMap<KeyPath, usize>,
}

impl Builder {
    /// Path of the node that starts now, or None when it is a mapping key (recorded here).
    fn node_path(&mut self, ev: &Event, line: usize) -> Option<Vec<Seg>> {
        match self.stack.last_mut() {
            None => Some(Vec::new()),
            Some(Frame::Map { path, key }) => match key {
                None => {
                    let k = match ev {
                        Event::Scalar(s, ..) => s.clone(),
                        _ => "?".to_string(),
                    };
                    let mut p = path.clone();
                    p.push(Seg::Key(k.clone()));
                    self.lines.entry(KeyPath(p)).or_insert(line);
                    *key = Some(k);
                    None
                }
                Some(k) => {
                    let mut p = path.clone();
                    p.push(Seg::Key(k.clone()));
                    Some(p)
                }
            },
            Some(Frame::Seq { path, index }) => {
                let mut p = path.clone();
                p.push(Seg::Index(*index));
                self.lines.entry(KeyPath(p.clone())).or_insert(line);
                Some(p)
            }
        }
    }

    /// A value finished: the parent moves on to its next key or element.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key, .. }) => *key = None,
            Some(Frame::Seq { index, .. }) => *index += 1,
            None => {}
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let line = mark.line();
        match ev {
            // `node_path` records a mapping key (and returns None) or gives the value's path.
            Event::Scalar(..) | Event::Alias(_) if self.node_path(&ev, line).is_some() => {
                self.value_done();
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A complex (non-scalar) mapping key is not tracked: treat it as key "?".
                let path = self.node_path(&ev, line).unwrap_or_default();
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map { path, key: None }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
}
