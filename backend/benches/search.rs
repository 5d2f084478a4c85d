//! `search_docs` latency and index build time over a generated corpus.
//!
//! cargo bench -p mcp-docs --bench search [-- PAGES QUERIES]
//!
//! Pages are made of words drawn from a 20,000-word vocabulary with a Zipf-like skew (as in real
//! text: a few words everywhere, most words rare), 400 words each, with a title of 3-6 words.
//! Queries are 1-3 words drawn the same way. Prints build time and p50/p90/p99/max latency of
//! the search call the `search_docs` tool makes (query parse, BM25 top-10, snippets).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use mcp_docs::corpus::{Corpus, Page};
use mcp_docs::index::Docs;

/// xorshift64*: deterministic, so every run searches the same corpus.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// An index in 0..n, skewed towards small values (roughly Zipf).
    fn zipf(&mut self, n: usize) -> usize {
        let x = self.unit();
        ((n as f64).powf(x) - 1.0) as usize % n
    }
}

fn vocabulary(rng: &mut Rng, n: usize) -> Vec<String> {
    const SYL: &[&str] = &[
        "ka", "to", "ri", "men", "sol", "va", "dor", "lin", "qu", "est", "ra", "pho", "nex", "ul",
        "tri", "ga", "mo", "zen", "bel", "cor", "di", "fa", "ho", "ju", "ly", "pre", "ston", "wy",
    ];
    let mut words = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    while words.len() < n {
        let k = 2 + (rng.next() % 3) as usize;
        let w: String = (0..k)
            .map(|_| SYL[(rng.next() % SYL.len() as u64) as usize])
            .collect();
        if seen.insert(w.clone()) {
            words.push(w);
        }
    }
    words
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let pages: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let queries: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(5000);

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let vocab = vocabulary(&mut rng, 20_000);
    let mut map = BTreeMap::new();
    for i in 0..pages {
        let title: Vec<&str> = (0..3 + rng.next() % 4)
            .map(|_| vocab[rng.zipf(vocab.len())].as_str())
            .collect();
        let mut body = String::new();
        for j in 0..400 {
            body.push_str(&vocab[rng.zipf(vocab.len())]);
            body.push(if j % 15 == 14 { '.' } else { ' ' });
        }
        let path = format!("section-{}/page-{i}.md", i % 50);
        map.insert(
            path.clone(),
            Page {
                path,
                title: title.join(" "),
                body,
                url: None,
            },
        );
    }
    let bytes: usize = map.values().map(|p| p.body.len()).sum();

    let started = Instant::now();
    let docs = Docs::build(Corpus { pages: map }).expect("index builds");
    let build = started.elapsed();

    let qs: Vec<String> = (0..queries)
        .map(|_| {
            (0..1 + rng.next() % 3)
                .map(|_| vocab[rng.zipf(vocab.len())].as_str())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    // Warm-up: first touches of the index.
    for q in qs.iter().take(200) {
        docs.search(q, 10).unwrap();
    }
    let mut lat = Vec::with_capacity(qs.len());
    let mut hits = 0usize;
    for q in &qs {
        let t = Instant::now();
        hits += docs.search(q, 10).unwrap().len();
        lat.push(t.elapsed());
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "corpus: {pages} pages, {:.1} MB of text",
        bytes as f64 / 1e6
    );
    println!("index build: {:.0} ms", ms(build));
    println!(
        "search_docs ({} queries, top 10 with snippets, {:.1} hits avg): p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        qs.len(),
        hits as f64 / qs.len() as f64,
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap())
    );
}
