//! The documentation set: Markdown and plain-text files under a directory, and optionally a
//! Hugo-style `index.json` (an array of pages with a title, a URL or path, and content).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Deserialize;

/// One page, addressed by its path relative to the corpus root (`/`-separated).
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub path: String,
    pub title: String,
    pub body: String,
    /// Public URL from an `index.json`, when it gave one.
    pub url: Option<String>,
}

const TEXT_EXTENSIONS: &[&str] = &["md", "markdown", "mdx", "txt", "text", "rst"];
/// Files larger than this are skipped (logged): a documentation page is not a data dump.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;

/// Pages by path. Building never fails on one bad file; it logs and goes on.
#[derive(Debug, Default, Clone)]
pub struct Corpus {
    pub pages: BTreeMap<String, Page>,
}

/// Where pages come from.
#[derive(Debug, Clone)]
pub struct Source {
    pub dirs: Vec<PathBuf>,
    pub index_json: Option<PathBuf>,
}

impl Source {
    /// Cheap identity of the whole source (every file's path, size and mtime), to notice changes.
    pub fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        let mut files = Vec::new();
        for d in &self.dirs {
            if d.is_file() {
                files.push(d.clone());
            } else {
                walk(d, &mut files);
            }
        }
        if let Some(j) = &self.index_json {
            files.push(j.clone());
        }
        files.sort();
        for f in files {
            f.hash(&mut h);
            if let Ok(m) = std::fs::metadata(&f) {
                m.len().hash(&mut h);
                m.modified()
                    .ok()
                    .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
                    .hash(&mut h);
            }
        }
        h.finish()
    }

    pub fn load(&self) -> anyhow::Result<Corpus> {
        let mut pages = BTreeMap::new();
        for dir in &self.dirs {
            let (root, files) = if dir.is_file() {
                (
                    dir.parent().unwrap_or(Path::new(".")).to_path_buf(),
                    vec![dir.clone()],
                )
            } else if dir.is_dir() {
                let mut files = Vec::new();
                walk(dir, &mut files);
                (dir.clone(), files)
            } else {
                anyhow::bail!("{}: no such file or directory", dir.display());
            };
            for f in files {
                let rel = relative(&root, &f);
                match read_page(&f, &rel) {
                    Ok(Some(p)) => {
                        pages.insert(p.path.clone(), p);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(file = %f.display(), error = %e, "skipping file"),
                }
            }
        }
        if let Some(j) = &self.index_json {
            for p in read_index_json(j)? {
                pages.insert(p.path.clone(), p);
            }
        }
        Ok(Corpus { pages })
    }
}

fn relative(root: &Path, f: &Path) -> String {
    f.strip_prefix(root)
        .unwrap_or(f)
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// Text files under `dir`, skipping hidden entries and not following symlinks out of the tree.
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let Ok(ft) = e.file_type() else { continue };
        let p = e.path();
        if ft.is_dir() {
            walk(&p, out);
        } else if ft.is_file()
            && p.extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| TEXT_EXTENSIONS.contains(&x.to_ascii_lowercase().as_str()))
        {
            out.push(p);
        }
    }
}

fn read_page(f: &Path, rel: &str) -> anyhow::Result<Option<Page>> {
    let len = std::fs::metadata(f)?.len();
    if len > MAX_FILE_BYTES {
        tracing::warn!(file = %f.display(), bytes = len, "skipping a file over 8 MiB");
        return Ok(None);
    }
    let raw = std::fs::read(f)?;
    let text = String::from_utf8_lossy(&raw);
    let (front_title, body) = split_front_matter(&text);
    let title = front_title
        .or_else(|| first_heading(body))
        .unwrap_or_else(|| title_from_path(rel));
    Ok(Some(Page {
        path: rel.to_string(),
        title,
        body: body.trim().to_string(),
        url: None,
    }))
}

/// YAML (`---`) or TOML (`+++`) front matter: its `title`, and the text after it.
pub fn split_front_matter(text: &str) -> (Option<String>, &str) {
    let t = text.trim_start_matches('\u{feff}');
    for fence in ["---", "+++"] {
        let Some(rest) = t.strip_prefix(fence) else {
            continue;
        };
        let Some(rest) = rest
            .strip_prefix('\n')
            .or_else(|| rest.strip_prefix("\r\n"))
        else {
            continue;
        };
        let close = format!("\n{fence}");
        let Some(end) = rest.find(&close) else {
            continue;
        };
        let meta = &rest[..end];
        let after = &rest[end + close.len()..];
        let body = after.split_once('\n').map_or("", |(_, b)| b);
        let title = if fence == "---" {
            serde_yaml_ng::from_str::<serde_yaml_ng::Value>(meta)
                .ok()
                .and_then(|v| v.get("title").and_then(|t| t.as_str()).map(str::to_string))
        } else {
            meta.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "title").then(|| v.trim().trim_matches(['"', '\'']).to_string())
            })
        };
        return (title.filter(|t| !t.is_empty()), body);
    }
    (None, t)
}

/// The first Markdown heading (`# Title` or a setext `Title\n=====`).
pub fn first_heading(body: &str) -> Option<String> {
    let mut prev: Option<&str> = None;
    let mut in_code = false;
    for line in body.lines() {
        let l = line.trim();
        if l.starts_with("```") || l.starts_with("~~~") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if let Some(h) = l.strip_prefix('#') {
            let h = h
                .trim_start_matches('#')
                .trim()
                .trim_end_matches('#')
                .trim();
            if !h.is_empty() {
                return Some(h.to_string());
            }
        }
        if let Some(p) = prev {
            if !p.is_empty() && !l.is_empty() && l.chars().all(|c| c == '=') {
                return Some(p.to_string());
            }
        }
        prev = Some(l);
    }
    None
}

fn title_from_path(rel: &str) -> String {
    let stem = rel.rsplit('/').next().unwrap_or(rel);
    let stem = stem.rsplit_once('.').map_or(stem, |(s, _)| s);
    stem.replace(['-', '_'], " ")
}

#[derive(Deserialize)]
struct JsonPage {
    title: Option<String>,
    #[serde(alias = "permalink", alias = "uri", alias = "relpermalink")]
    url: Option<String>,
    path: Option<String>,
    #[serde(alias = "body", alias = "plain", alias = "summary")]
    content: Option<String>,
}

fn read_index_json(f: &Path) -> anyhow::Result<Vec<Page>> {
    let bytes = std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
    let list: Vec<JsonPage> = serde_json::from_slice(&bytes)
        .map_err(|e| anyhow::anyhow!("{}: not an array of pages: {e}", f.display()))?;
    let mut out = Vec::new();
    for (i, p) in list.into_iter().enumerate() {
        let path = p
            .path
            .clone()
            .or_else(|| p.url.as_deref().map(url_path))
            .unwrap_or_else(|| format!("index.json/{i}"));
        let path = path.trim_matches('/').to_string();
        let path = if path.is_empty() {
            "index".to_string()
        } else {
            path
        };
        out.push(Page {
            title: p
                .title
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| title_from_path(&path)),
            body: p.content.unwrap_or_default(),
            url: p.url,
            path,
        });
    }
    Ok(out)
}

/// The path part of a URL (or the string itself when it is already a path).
fn url_path(u: &str) -> String {
    let no_scheme = u
        .split_once("://")
        .map_or(u, |(_, r)| r.split_once('/').map_or("", |(_, p)| p));
    no_scheme.split(['?', '#']).next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn titles_from_front_matter_heading_or_name() {
        let (t, body) =
            split_front_matter("---\ntitle: Install guide\ntags: [a]\n---\n# Other\ntext\n");
        assert_eq!(t.as_deref(), Some("Install guide"));
        assert!(body.starts_with("# Other"));
        let (t, _) = split_front_matter("+++\ntitle = \"TOML title\"\n+++\nbody\n");
        assert_eq!(t.as_deref(), Some("TOML title"));
        assert_eq!(
            first_heading("intro\n\n## Setup ##\n").as_deref(),
            Some("Setup")
        );
        assert_eq!(
            first_heading("```\n# not this\n```\nReal\n====\n").as_deref(),
            Some("Real")
        );
        assert_eq!(
            title_from_path("guides/getting-started.md"),
            "getting started"
        );
        assert_eq!(url_path("https://example.com/docs/a/?x=1"), "docs/a/");
    }
}
