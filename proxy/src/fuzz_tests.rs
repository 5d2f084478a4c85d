//! Property tests over the code that reads bytes from strangers: the path normaliser, the
//! sealed-session opener, the legacy `endpoint` event rewriter and the configuration loader.
//! None may panic on any input; each keeps the invariant it exists for. Bounded: a fixed number
//! of cases each (proptest's default 256, fewer for the slower ones), run by `cargo test`.

use std::path::Path;

use proptest::prelude::*;

use crate::path::normalize;
use crate::upstream::affinity::{query_session, replace_query_session, EndpointRewriter, Sealer};

fn sealer() -> Sealer {
    Sealer::from_key(&[7u8; 32]).expect("a 32-byte key")
}

proptest! {
    /// Whatever the path, the result (if any) is absolute, has no dot-segment in any spelling
    /// a server might decode, and normalising it again changes nothing.
    #[test]
    fn normalised_paths_have_no_dot_segments(path in "/[a-zA-Z0-9%./\\\\_~:-]{0,48}") {
        if let Ok(p) = normalize(&path) {
            prop_assert!(p.starts_with('/'), "{p}");
            let decoded = p
                .replace("%2F", "/")
                .replace("%5C", "/")
                .replace('\\', "/");
            prop_assert!(
                !decoded.split('/').any(|s| s == "." || s == ".."),
                "{path} → {p}"
            );
            let again = normalize(&p).expect("a normalised path normalises");
            prop_assert_eq!(again.as_ref(), p.as_ref());
        }
    }

    /// Any byte string as a path: no panic.
    #[test]
    fn normalise_never_panics(path in any::<String>()) {
        let _ = normalize(&path);
    }

    /// A sealed id opens to what was sealed; anything else a client sends opens to nothing,
    /// never panics.
    #[test]
    fn sealed_ids_open_only_to_what_was_sealed(
        replica in "https?://[a-z0-9.]{1,20}:[0-9]{1,5}",
        session in "[ -~]{0,64}",
        forged in any::<String>(),
    ) {
        let s = sealer();
        let token = s.seal(&replica, &session).expect("sealing");
        prop_assert_eq!(s.open(&token), Some((replica.clone(), session.clone())));
        let mut tampered = token.clone().into_bytes();
        let i = tampered.len() - 1;
        tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
        prop_assert_eq!(s.open(&String::from_utf8(tampered).unwrap_or_default()), None);
        prop_assert_eq!(s.open(&forged), None);
        let _ = s.open(&format!("s1{forged}"));
    }

    /// Query strings from clients: finding and replacing the session id never panics, and a
    /// replaced id is found again.
    #[test]
    fn query_session_ids_round_trip(query in "[a-zA-Z0-9_=&%.-]{0,64}", id in "[a-zA-Z0-9]{1,16}") {
        if let Some((key, _)) = query_session(&query) {
            let replaced = replace_query_session(&query, key, &id);
            prop_assert_eq!(query_session(&replaced).map(|(_, v)| v), Some(id.clone()));
        }
    }

    /// SSE bytes from an upstream in any chunking: the rewriter never panics, and a stream
    /// without an `endpoint` event passes through unchanged.
    #[test]
    fn the_endpoint_rewriter_takes_any_bytes(
        body in proptest::collection::vec(any::<u8>(), 0..512),
        cuts in proptest::collection::vec(0usize..512, 0..6),
    ) {
        let s = sealer();
        let mut rw = EndpointRewriter::new("http://10.0.0.1:8000".into());
        let mut points: Vec<usize> = cuts.into_iter().map(|c| c.min(body.len())).collect();
        points.sort_unstable();
        let mut out = Vec::new();
        let mut at = 0;
        for p in points.into_iter().chain([body.len()]) {
            out.extend(rw.feed(&s, &body[at..p], p == body.len()));
            at = p;
        }
        let text = String::from_utf8_lossy(&body);
        if !text.contains("endpoint") {
            prop_assert_eq!(out, body);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Configuration text of any shape: errors, never a panic.
    #[test]
    fn the_config_loader_never_panics(text in "[a-z_:\\n {}\\[\\],\"'0-9./@-]{0,160}") {
        let _ = crate::config::parse(&text, Path::new("/nonexistent"), Path::new("fuzz.yaml"));
    }

    /// Well-formed YAML with known keys and values of every type, nested.
    #[test]
    fn the_config_loader_takes_any_value_under_any_key(
        keys in proptest::collection::vec(
            prop::sample::select(vec![
                "listen", "http", "https", "storage", "acme", "eab", "hmac_key", "kid", "hosts",
                "a.test", "tls", "upstream", "urls", "routes", "path", "pin_sha256", "ca",
                "timeouts", "header", "threads", "contact", "retry_initial", "aliases",
            ]),
            1..6,
        ),
        value in prop::sample::select(vec![
            "1", "-1", "99999999999999999999", "true", "null", "[]", "{}", "\"x\"", "[1, {a: b}]",
            "0.0.0.0:0", "http://u:p@h:1", "https://[::1]:0", "10000000d", "auto", "/..",
        ]),
    ) {
        let mut text = String::new();
        for (depth, k) in keys.iter().enumerate() {
            text.push_str(&"  ".repeat(depth));
            text.push_str(k);
            text.push(':');
            text.push(if depth + 1 == keys.len() { ' ' } else { '\n' });
        }
        text.push_str(value);
        text.push('\n');
        let _ = crate::config::parse(&text, Path::new("/nonexistent"), Path::new("fuzz.yaml"));
    }
}
