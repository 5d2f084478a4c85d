//! Session affinity without shared state: the replica that created an MCP session is sealed
//! into the session id the client sees (ChaCha20-Poly1305 under a key kept in storage).
//!
//! The client gets `s1` + base64url(nonce ‖ seal(replica URL ‖ 0 ‖ backend session id)). On each
//! request the proxy opens it, routes to that replica and restores the backend's own id. A forged,
//! tampered or foreign id does not open and is refused, never routed at random.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::storage::{Key, Storage, StorageError};

const PREFIX: &str = "s1";
const AAD: &[u8] = b"mcp-edge session v1";

/// Seals with one key and opens with it or with a key it replaced (a temporary key used while
/// the shared one could not be read), so no session breaks when the shared key arrives.
pub struct Sealer {
    keys: arc_swap::ArcSwap<Vec<LessSafeKey>>,
    rng: SystemRandom,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("the session seal key in storage has {len} bytes, not 32")]
    BadKey { len: usize },
    #[error("no system randomness: {0}")]
    Random(String),
}

/// The key every replica sharing `storage` seals with: read, or made and stored on first start
/// (created only if absent, so replicas starting together agree on one). A read that fails
/// for any reason but absence is an error: replacing the key would break every session.
pub async fn shared_key(storage: &Storage) -> Result<Vec<u8>, SealError> {
    let key = Key::seal_key();
    let bytes = match storage.get(&key).await? {
        Some(b) => b,
        None => {
            let k = random_key()?;
            if storage.put_new(&key, &k).await? {
                k.to_vec()
            } else {
                // Another replica was first: use its key.
                storage.get(&key).await?.unwrap_or_default()
            }
        }
    };
    if bytes.len() != 32 {
        return Err(SealError::BadKey { len: bytes.len() });
    }
    Ok(bytes)
}

/// 32 random bytes.
pub fn random_key() -> Result<[u8; 32], SealError> {
    let mut k = [0u8; 32];
    SystemRandom::new()
        .fill(&mut k)
        .map_err(|e| SealError::Random(e.to_string()))?;
    Ok(k)
}

impl Sealer {
    pub fn from_key(key: &[u8]) -> Option<Self> {
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, key).ok()?;
        Some(Self {
            keys: arc_swap::ArcSwap::from_pointee(vec![LessSafeKey::new(unbound)]),
            rng: SystemRandom::new(),
        })
    }

    /// Seals with `key` from now on; ids sealed before still open.
    pub fn adopt(&self, key: &[u8]) -> bool {
        let Ok(unbound) = UnboundKey::new(&CHACHA20_POLY1305, key) else {
            return false;
        };
        let new = LessSafeKey::new(unbound);
        self.keys.rcu(|old| {
            let mut keys = vec![new.clone()];
            keys.extend(old.iter().take(3).cloned());
            keys
        });
        true
    }

    /// The client-facing id for `session` created by `replica`.
    pub fn seal(&self, replica: &str, session: &str) -> Option<String> {
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut buf = Vec::with_capacity(replica.len() + session.len() + 17);
        buf.extend_from_slice(replica.as_bytes());
        buf.push(0);
        buf.extend_from_slice(session.as_bytes());
        self.keys.load()[0]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(AAD),
                &mut buf,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Some(format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// The replica and backend session id sealed in `token`, or None when it was not made here.
    pub fn open(&self, token: &str) -> Option<(String, String)> {
        let raw = URL_SAFE_NO_PAD.decode(token.strip_prefix(PREFIX)?).ok()?;
        if raw.len() < NONCE_LEN {
            return None;
        }
        let (nonce, rest) = raw.split_at(NONCE_LEN);
        let keys = self.keys.load();
        let mut buf = Vec::new();
        let plain = keys.iter().find_map(|key| {
            let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
            buf.clear();
            buf.extend_from_slice(rest);
            let len = key
                .open_in_place(nonce, Aad::from(AAD), &mut buf)
                .ok()?
                .len();
            Some(len)
        })?;
        let plain = &buf[..plain];
        let sep = plain.iter().position(|b| *b == 0)?;
        let replica = std::str::from_utf8(&plain[..sep]).ok()?.to_string();
        let session = std::str::from_utf8(&plain[sep + 1..]).ok()?.to_string();
        Some((replica, session))
    }
}

/// Query parameters that carry a legacy HTTP+SSE session id (`sessionId` in the TypeScript SDK,
/// `session_id` in the Python SDK).
pub const QUERY_KEYS: [&str; 2] = ["sessionId", "session_id"];

/// The session id in a query string, with the parameter name.
pub fn query_session(query: &str) -> Option<(&'static str, String)> {
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        if let Some(key) = QUERY_KEYS.iter().find(|q| **q == k) {
            return Some((key, v.into_owned()));
        }
    }
    None
}

/// `query` with the value of `key` replaced by `value`; other parameters untouched.
pub fn replace_query_session(query: &str, key: &str, value: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k == key => {
                format!(
                    "{k}={}",
                    url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>()
                )
            }
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

/// Rewrites the first SSE event of a legacy `/sse` stream (`event: endpoint`, whose data is the
/// POST URL with the session id) so that the client sees a sealed id. Later bytes pass as they are.
pub struct EndpointRewriter {
    replica: String,
    buf: Vec<u8>,
    done: bool,
}

/// Give up (and pass the stream through unchanged) if the first event is larger than this.
const MAX_FIRST_EVENT: usize = 16 * 1024;

impl EndpointRewriter {
    pub fn new(replica: String) -> Self {
        Self {
            replica,
            buf: Vec::new(),
            done: false,
        }
    }

    /// Feeds one chunk; returns what to send downstream now.
    pub fn feed(&mut self, sealer: &Sealer, chunk: &[u8], end: bool) -> Vec<u8> {
        if self.done {
            return chunk.to_vec();
        }
        self.buf.extend_from_slice(chunk);
        let end_of_event = find_event_end(&self.buf);
        if end_of_event.is_none() && !end && self.buf.len() < MAX_FIRST_EVENT {
            return Vec::new();
        }
        self.done = true;
        let buf = std::mem::take(&mut self.buf);
        let Some(cut) = end_of_event else {
            return buf;
        };
        let (event, rest) = buf.split_at(cut);
        let mut out = match std::str::from_utf8(event) {
            Ok(text) => self.rewrite_event(sealer, text).into_bytes(),
            Err(_) => event.to_vec(),
        };
        out.extend_from_slice(rest);
        out
    }

    fn rewrite_event(&self, sealer: &Sealer, event: &str) -> String {
        let is_endpoint = event
            .lines()
            .any(|l| l.trim_end() == "event: endpoint" || l.trim_end() == "event:endpoint");
        if !is_endpoint {
            return event.to_string();
        }
        let mut out = String::with_capacity(event.len() + 64);
        for line in event.split_inclusive('\n') {
            let body = line.trim_end_matches(['\r', '\n']);
            let ending = &line[body.len()..];
            let rewritten = body
                .strip_prefix("data:")
                .and_then(|d| self.rewrite_url(sealer, d.trim_start()))
                .map(|u| format!("data: {u}"));
            out.push_str(rewritten.as_deref().unwrap_or(body));
            out.push_str(ending);
        }
        out
    }

    fn rewrite_url(&self, sealer: &Sealer, url: &str) -> Option<String> {
        let (path, query) = url.split_once('?')?;
        let (key, id) = query_session(query)?;
        let sealed = sealer.seal(&self.replica, &id)?;
        Some(format!(
            "{path}?{}",
            replace_query_session(query, key, &sealed)
        ))
    }
}

/// Index just past the blank line that ends the first SSE event.
fn find_event_end(buf: &[u8]) -> Option<usize> {
    for (i, _) in buf.iter().enumerate() {
        for sep in [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"] {
            if buf[i..].starts_with(sep) {
                return Some(i + sep.len());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_key(&[7u8; 32]).unwrap()
    }

    #[test]
    fn seal_round_trips_and_rejects_tampering() {
        let s = sealer();
        let t = s.seal("http://10.0.0.5:8000", "abc-123").unwrap();
        assert_eq!(
            s.open(&t),
            Some(("http://10.0.0.5:8000".into(), "abc-123".into()))
        );
        let mut bytes = t.into_bytes();
        let last = bytes.len() - 3;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(s.open(&String::from_utf8(bytes).unwrap()), None);
        assert_eq!(s.open("abc-123"), None);
        assert_eq!(s.open("s1"), None);
        let other = Sealer::from_key(&[8u8; 32]).unwrap();
        assert_eq!(other.open(&s.seal("http://a:1", "x").unwrap()), None);
    }

    #[test]
    fn ids_sealed_before_adopting_the_shared_key_still_open() {
        let s = sealer();
        let before = s.seal("http://a:1", "old").unwrap();
        assert!(s.adopt(&[9u8; 32]));
        let after = s.seal("http://a:1", "new").unwrap();
        assert_eq!(s.open(&before), Some(("http://a:1".into(), "old".into())));
        // Sealed with the adopted key: other replicas on that key open it.
        let shared = Sealer::from_key(&[9u8; 32]).unwrap();
        assert_eq!(
            shared.open(&after),
            Some(("http://a:1".into(), "new".into()))
        );
        assert_eq!(shared.open(&before), None);
        assert!(!s.adopt(&[1u8; 5]));
    }

    #[test]
    fn endpoint_event_is_rewritten_across_chunks() {
        let s = sealer();
        let mut r = EndpointRewriter::new("http://127.0.0.1:9".into());
        let mut out = r.feed(
            &s,
            b"event: endpoint\r\ndata: /messages/?session_id=",
            false,
        );
        assert!(out.is_empty());
        out.extend(r.feed(&s, b"deadbeef\r\n\r\n: ping\r\n\r\n", false));
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("\r\n\r\n: ping\r\n\r\n"), "{text}");
        let sealed = text
            .split("session_id=")
            .nth(1)
            .unwrap()
            .split("\r\n")
            .next()
            .unwrap();
        assert_eq!(
            s.open(sealed),
            Some(("http://127.0.0.1:9".into(), "deadbeef".into()))
        );
        assert_eq!(r.feed(&s, b"data: x\n\n", false), b"data: x\n\n");
    }
}
