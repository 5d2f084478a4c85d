//! Ranked full-text search over the corpus with tantivy (BM25, English stemming, title boosted),
//! built in memory at start and rebuilt whole when the corpus changes.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use tantivy::collector::TopDocs;
use tantivy::query::QueryParser;
use tantivy::schema::{
    Field, IndexRecordOption, Schema, TextFieldIndexing, TextOptions, Value, STORED, STRING,
};
use tantivy::snippet::SnippetGenerator;
use tantivy::{doc, Index, IndexReader, TantivyDocument};

use crate::corpus::{Corpus, Page};

/// Most hits one search returns.
pub const MAX_LIMIT: usize = 50;
const SNIPPET_CHARS: usize = 240;

/// One ranked hit.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct Hit {
    pub title: String,
    /// Pass to `get_doc`.
    pub path: String,
    /// BM25 relevance; higher is better.
    pub score: f32,
    /// Text around the matches, matched words in **bold**.
    pub snippet: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The corpus with its index.
pub struct Docs {
    pub pages: BTreeMap<String, Page>,
    reader: IndexReader,
    parser: QueryParser,
    f_path: Field,
    f_body: Field,
}

impl Docs {
    pub fn build(corpus: Corpus) -> anyhow::Result<Self> {
        let mut sb = Schema::builder();
        let stemmed = TextOptions::default().set_stored().set_indexing_options(
            TextFieldIndexing::default()
                .set_tokenizer("en_stem")
                .set_index_option(IndexRecordOption::WithFreqsAndPositions),
        );
        let f_path = sb.add_text_field("path", STRING | STORED);
        let f_title = sb.add_text_field("title", stemmed.clone());
        let f_body = sb.add_text_field("body", stemmed);
        let index = Index::create_in_ram(sb.build());
        let mut writer = index.writer_with_num_threads(1, 64 * 1024 * 1024)?;
        for p in corpus.pages.values() {
            writer.add_document(doc!(
                f_path => p.path.as_str(),
                f_title => p.title.as_str(),
                f_body => p.body.as_str(),
            ))?;
        }
        writer.commit()?;
        let reader = index.reader()?;
        let mut parser = QueryParser::for_index(&index, vec![f_title, f_body]);
        parser.set_field_boost(f_title, 3.0);
        Ok(Self {
            pages: corpus.pages,
            reader,
            parser,
            f_path,
            f_body,
        })
    }

    /// Ranked hits for `query` (words, "phrases", +must, -not; syntax errors are forgiven).
    pub fn search(&self, query: &str, limit: usize) -> anyhow::Result<Vec<Hit>> {
        let (q, _errors) = self.parser.parse_query_lenient(query);
        let searcher = self.reader.searcher();
        let top = searcher.search(
            &q,
            &TopDocs::with_limit(limit.clamp(1, MAX_LIMIT)).order_by_score(),
        )?;
        let mut snippets = SnippetGenerator::create(&searcher, &*q, self.f_body)?;
        snippets.set_max_num_chars(SNIPPET_CHARS);
        let mut hits = Vec::with_capacity(top.len());
        for (score, addr) in top {
            let d: TantivyDocument = searcher.doc(addr)?;
            let Some(path) = d.get_first(self.f_path).and_then(|v| v.as_str()) else {
                continue;
            };
            let Some(page) = self.pages.get(path) else {
                continue;
            };
            let s = snippets.snippet(&page.body);
            hits.push(Hit {
                title: page.title.clone(),
                path: page.path.clone(),
                score,
                snippet: bold(s.fragment(), s.highlighted()),
                url: page.url.clone(),
            });
        }
        Ok(hits)
    }

    pub fn get(&self, path: &str) -> Option<&Page> {
        self.pages.get(path)
    }
}

/// `fragment` with the `highlighted` byte ranges wrapped in `**`.
fn bold(fragment: &str, highlighted: &[std::ops::Range<usize>]) -> String {
    let mut out = String::with_capacity(fragment.len() + 4 * highlighted.len());
    let mut at = 0;
    for r in highlighted {
        if r.start < at || r.end > fragment.len() {
            continue;
        }
        out.push_str(&fragment[at..r.start]);
        out.push_str("**");
        out.push_str(&fragment[r.clone()]);
        out.push_str("**");
        at = r.end;
    }
    out.push_str(&fragment[at..]);
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(path: &str, title: &str, body: &str) -> (String, Page) {
        (
            path.to_string(),
            Page {
                path: path.into(),
                title: title.into(),
                body: body.into(),
                url: None,
            },
        )
    }

    #[test]
    fn ranks_title_matches_and_stems() {
        let corpus = Corpus {
            pages: [
                page(
                    "a.md",
                    "Renewing certificates",
                    "How renewal works with ACME.",
                ),
                page(
                    "b.md",
                    "Routes",
                    "Each route maps a path to an upstream; certificates are elsewhere.",
                ),
                page("c.md", "Metrics", "Prometheus counters."),
            ]
            .into_iter()
            .collect(),
        };
        let docs = Docs::build(corpus).unwrap();
        let hits = docs.search("certificate renew", 10).unwrap();
        assert_eq!(hits[0].path, "a.md", "{hits:?}");
        assert!(hits.iter().all(|h| h.path != "c.md"));
        assert!(
            hits[0].snippet.contains("**renewal**"),
            "{}",
            hits[0].snippet
        );
        // Query syntax errors are forgiven, not fatal.
        assert!(docs.search("\"unclosed AND (", 5).is_ok());
    }
}
