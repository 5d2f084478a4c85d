//! One authorization server as a resource server needs it: its metadata (RFC 8414, or OpenID
//! discovery), found from the issuer identifier and refreshed hourly; its signing keys (JWKS),
//! cached, refetched when a token names a key not yet seen, at most once per `min_refresh`. A
//! failed fetch is not retried for every token: each fetch backs off (1 s, doubling to a
//! minute) and tokens meanwhile get the failure without a request to the server.

use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use tokio::sync::Mutex;

use crate::outbound::{FetchError, JsonClient};

/// How long metadata and keys are used before they are fetched again.
const MAX_AGE: Duration = Duration::from_secs(3600);

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error("{0}")]
    Metadata(String),
    /// A recent fetch failed: not tried again before its back-off ends.
    #[error("backing off after a failed fetch ({0:?} left)")]
    BackingOff(Duration),
}

impl IssuerError {
    /// Whether this is news (worth a log line) rather than a failure already logged.
    pub fn is_backing_off(&self) -> bool {
        matches!(self, Self::BackingOff(_))
    }
}

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// When a failed fetch may be tried again.
#[derive(Default)]
struct Backoff {
    until: Option<Instant>,
    step: Duration,
}

impl Backoff {
    fn check(&self) -> Result<(), IssuerError> {
        match self.until {
            Some(t) if t > Instant::now() => Err(IssuerError::BackingOff(t - Instant::now())),
            _ => Ok(()),
        }
    }

    fn record<T>(&mut self, r: &Result<T, IssuerError>) {
        if r.is_ok() {
            *self = Self::default();
        } else {
            self.step = (self.step * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
            self.until = Some(Instant::now() + self.step);
        }
    }
}

#[derive(Clone)]
pub struct Metadata {
    pub jwks_uri: Option<String>,
    pub introspection_endpoint: Option<String>,
}

struct Cached<T> {
    value: T,
    at: Instant,
}

pub struct Issuer {
    pub issuer: String,
    client: JsonClient,
    min_refresh: Duration,
    metadata: Mutex<Option<Cached<Metadata>>>,
    keys: Mutex<Option<Cached<JwkSet>>>,
    metadata_backoff: std::sync::Mutex<Backoff>,
    keys_backoff: std::sync::Mutex<Backoff>,
}

/// The well-known URLs for `issuer`: RFC 8414 §3.1 (inserted between host and path), then
/// OpenID Connect discovery (appended).
fn discovery_urls(issuer: &str) -> Vec<String> {
    let Ok(u) = url::Url::parse(issuer) else {
        return Vec::new();
    };
    let origin = u.origin().ascii_serialization();
    let path = u.path().trim_end_matches('/');
    vec![
        format!("{origin}/.well-known/oauth-authorization-server{path}"),
        format!(
            "{}/.well-known/openid-configuration",
            issuer.trim_end_matches('/')
        ),
    ]
}

impl Issuer {
    pub fn new(issuer: &str, client: JsonClient, min_refresh: Duration) -> Self {
        Self {
            issuer: issuer.to_string(),
            client,
            min_refresh,
            metadata: Mutex::new(None),
            keys: Mutex::new(None),
            metadata_backoff: Default::default(),
            keys_backoff: Default::default(),
        }
    }

    /// The client that reaches this server (its roots).
    pub fn client(&self) -> &JsonClient {
        &self.client
    }

    /// The server's metadata, fetched when missing or older than an hour (backing off after
    /// a failure).
    pub async fn metadata(&self) -> Result<Metadata, IssuerError> {
        let mut cached = self.metadata.lock().await;
        if let Some(c) = cached.as_ref().filter(|c| c.at.elapsed() < MAX_AGE) {
            return Ok(c.value.clone());
        }
        lock(&self.metadata_backoff).check()?;
        let r = self.fetch_metadata(&mut cached).await;
        lock(&self.metadata_backoff).record(&r);
        r
    }

    async fn fetch_metadata(
        &self,
        cached: &mut Option<Cached<Metadata>>,
    ) -> Result<Metadata, IssuerError> {
        let mut last = None;
        for url in discovery_urls(&self.issuer) {
            match self.client.get(&url).await {
                Ok(doc) => {
                    // RFC 8414 §3.3: the document must name the issuer it was fetched for.
                    if doc["issuer"].as_str() != Some(self.issuer.as_str()) {
                        return Err(IssuerError::Metadata(format!(
                            "{url} names issuer {}, not {}",
                            doc["issuer"], self.issuer
                        )));
                    }
                    let text = |k: &str| doc[k].as_str().map(str::to_string);
                    let m = Metadata {
                        jwks_uri: text("jwks_uri"),
                        introspection_endpoint: text("introspection_endpoint"),
                    };
                    *cached = Some(Cached {
                        value: m.clone(),
                        at: Instant::now(),
                    });
                    return Ok(m);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.map_or_else(
            || IssuerError::Metadata(format!("{} is not a URL", self.issuer)),
            IssuerError::Fetch,
        ))
    }

    /// The key a token's header names (`kid`; without one, the only key of a one-key set).
    /// `Ok(None)`: the set, fresh or refetched, has no such key.
    pub async fn key(&self, kid: Option<&str>) -> Result<Option<Jwk>, IssuerError> {
        let find = |set: &JwkSet| match kid {
            Some(k) => set.find(k).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let mut cached = self.keys.lock().await;
        if let Some(c) = cached.as_ref() {
            let found = find(&c.value);
            // A key not seen yet may be a rotation: refetch, but not more often than allowed.
            let fresh = c.at.elapsed() < MAX_AGE;
            if found.is_some() && fresh {
                return Ok(found);
            }
            if fresh && c.at.elapsed() < self.min_refresh {
                return Ok(found);
            }
        }
        lock(&self.keys_backoff).check()?;
        let r = self.fetch_keys().await;
        lock(&self.keys_backoff).record(&r);
        let set = r?;
        let found = find(&set);
        *cached = Some(Cached {
            value: set,
            at: Instant::now(),
        });
        Ok(found)
    }

    async fn fetch_keys(&self) -> Result<JwkSet, IssuerError> {
        let uri = self.metadata().await?.jwks_uri.ok_or_else(|| {
            IssuerError::Metadata(format!("{} publishes no jwks_uri", self.issuer))
        })?;
        let doc = self.client.get(&uri).await?;
        serde_json::from_value(doc)
            .map_err(|e| IssuerError::Metadata(format!("{uri}: not a JWK set: {e}")))
    }
}

fn lock(m: &std::sync::Mutex<Backoff>) -> std::sync::MutexGuard<'_, Backoff> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::discovery_urls;

    #[test]
    fn rfc8414_inserts_the_well_known_segment_before_the_issuer_path() {
        assert_eq!(
            discovery_urls("https://as.example.com/tenant/1"),
            [
                "https://as.example.com/.well-known/oauth-authorization-server/tenant/1",
                "https://as.example.com/tenant/1/.well-known/openid-configuration"
            ]
        );
        assert_eq!(
            discovery_urls("https://as.example.com"),
            [
                "https://as.example.com/.well-known/oauth-authorization-server",
                "https://as.example.com/.well-known/openid-configuration"
            ]
        );
    }
}
