//! The serde layer: structs that mirror the YAML file one to one.
//!
//! Nothing past [`super::load`] sees these types; they are converted into the validated model
//! in [`super::model`]. Fields whose YAML shape has several forms (`tls`, `upstream`) stay as
//! raw YAML values here and are interpreted by the model, which can then name the exact problem.

use serde::Deserialize;
use serde_yaml_ng::Value;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    /// Listen addresses of the three listeners.
    #[serde(default)]
    pub listen: RawListen,
    /// Where certificates, keys and ACME accounts are kept: a directory (relative to the config
    /// file), or `{ dir, redis, … }` for replicas sharing Redis.
    pub storage: Option<Value>,
    /// ACME account and CA settings, needed when a host has `tls: acme`.
    pub acme: Option<RawAcme>,
    /// Worker threads of the proxy (default: one per CPU).
    pub threads: Option<usize>,
    /// How long SIGTERM waits for open requests before the process exits (default 5s).
    pub shutdown_grace: Option<String>,
    /// How often `tls: {cert, key}` files are checked for changes (default 2s).
    pub watch_interval: Option<String>,
    /// The host whose certificate a TLS client that sends no SNI gets (clients send none to an
    /// IP address). Default: the host named by an IP literal, when exactly one is.
    pub default_host: Option<String>,
    /// Client-side timeouts.
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Client-side limits: connections, request headers, HTTP/2 streams.
    #[serde(default)]
    pub limits: RawLimits,
    /// Addresses or CIDR ranges of proxies in front of this one (a load balancer) whose
    /// `X-Forwarded-*`, `Forwarded` and `X-Real-IP` headers are kept; from anyone else they are
    /// replaced. Not capped per address either.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// One JSON line per MCP call: who called what, decided how, with what outcome.
    pub audit: Option<super::audit::RawAudit>,
    /// The admin (metrics) listener: `{ token: sha256:HEX }` to require a bearer token for
    /// `/metrics` and `/status`; `tls: { cert, key, client_ca }` for HTTPS and client
    /// certificates.
    pub admin: Option<super::admin::RawAdmin>,
    /// The served hosts, keyed by their primary name.
    #[serde(default)]
    pub hosts: serde_yaml_ng::Mapping,
}

/// `timeouts:` (durations like 30s)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    /// An HTTP/1 request header must be complete within this time of its first byte (30s).
    pub header: Option<String>,
    /// An HTTP/1 connection idle between requests is closed after this (60s).
    pub keepalive: Option<String>,
    /// An HTTP/2 connection with no open stream is closed after this (60s).
    pub h2_idle: Option<String>,
    /// An HTTP/2 client must send its preface and settings within this time (10s).
    pub h2_handshake: Option<String>,
    /// A write to a client that stopped reading may wait this long; then the request (and its
    /// upstream stream) is ended (60s).
    pub write: Option<String>,
    /// A TLS handshake must complete within this time of the connection's accept (10s).
    pub tls_handshake: Option<String>,
}

/// `limits:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    /// Client connections open at once, both listeners together (default: half the open-files
    /// limit, which is raised to its hard limit at start).
    pub connections: Option<usize>,
    /// Client connections open at once from one address; an IPv6 /64 counts as one address
    /// (default 1024, and at most half of `connections`).
    pub connections_per_address: Option<usize>,
    /// Largest HTTP/1 request header (`32KiB`); larger gets 431.
    pub header_size: Option<Value>,
    /// Most request header fields (100, at most 256); more gets 431.
    pub header_count: Option<usize>,
    /// HTTP/2 streams a client may open at once on one connection (100).
    pub h2_streams: Option<u32>,
}

/// `listen:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawListen {
    /// Port 80 service: ACME HTTP-01, redirect to https, `tls: none` hosts; `none`: no port 80.
    pub http: Option<String>,
    /// TLS listener.
    pub https: Option<String>,
    /// Metrics and health listener.
    pub metrics: Option<String>,
    /// Port written into http→https redirects (default: the port of `https`).
    pub redirect_https_port: Option<u16>,
    /// Unix socket through which a new process takes the listeners over (`run --upgrade-from`).
    pub upgrade_socket: Option<String>,
    /// TLS session resumption on the https listener (true): a returning client skips the full
    /// handshake. `false`: every connection pays a full handshake (benchmarks, strict setups).
    pub session_resumption: Option<bool>,
}

/// `acme:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAcme {
    /// `letsencrypt`, `letsencrypt-staging` or an https URL of an ACME directory; or a list
    /// of CAs in order of preference (each a name/URL or `{ url, directory_root, eab }`).
    pub directory: Option<Value>,
    /// Contact URLs (`mailto:`), or bare e-mail addresses.
    #[serde(default)]
    pub contact: Vec<String>,
    /// Agreement to the CA's terms of service.
    #[serde(default)]
    pub accept_terms: bool,
    /// Extra root CA (PEM) trusted for the directory's own HTTPS.
    pub directory_root: Option<String>,
    /// External Account Binding.
    pub eab: Option<RawEab>,
    /// Certificate profile to request (`classic`, `tlsserver`, `shortlived`, ...).
    pub profile: Option<String>,
    /// Renew when this share of the lifetime (`33%`) or this duration (`30d`) remains.
    pub renew_when_remaining: Option<String>,
    /// Certificate key type: `ecdsa-p256` (default) or `ecdsa-p384`.
    pub key_type: Option<String>,
    /// Orders in flight at once across hosts (default 4).
    pub concurrency: Option<usize>,
    /// Wait after a first failed order (default 2m); doubles per failure.
    pub retry_initial: Option<String>,
    /// Longest wait between failed orders (default 6h).
    pub retry_max: Option<String>,
    /// How names are proved: `http-01` or `tls-alpn-01` (default: http-01 when port 80 is
    /// open, else tls-alpn-01). A host may say otherwise.
    pub challenge: Option<String>,
    /// Most orders per host in a sliding window, across restarts and replicas (`3/24h`).
    pub order_limit: Option<String>,
    /// Longest wait between two looks at the CA's renewal window (default 6h).
    pub renewal_check: Option<String>,
    /// DNS-01: how the TXT records are written.
    pub dns: Option<super::dns::RawDns>,
}

/// One CA of a list in `acme.directory`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCa {
    /// `letsencrypt`, `letsencrypt-staging` or an https URL of an ACME directory.
    pub url: String,
    /// Extra root CA (PEM) trusted for this directory's own HTTPS.
    pub directory_root: Option<String>,
    /// External Account Binding with this CA.
    pub eab: Option<RawEab>,
}

/// `acme.eab:`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEab {
    /// Key identifier given by the CA.
    pub kid: String,
    /// HMAC key given by the CA (base64url).
    pub hmac_key: String,
}

impl std::fmt::Debug for RawEab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawEab")
            .field("kid", &self.kid)
            .field("hmac_key", &"<redacted>")
            .finish()
    }
}

/// One entry of `hosts:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    /// `acme | self-signed | none | { cert, key }`.
    pub tls: Option<Value>,
    /// More names served with the same certificate and routes.
    #[serde(default)]
    pub aliases: Vec<String>,
    /// Origins allowed to call this host; others get 403.
    pub allowed_origins: Option<Vec<String>>,
    /// Shorthand for a single route `/` to this upstream.
    pub upstream: Option<Value>,
    /// Routes by longest path prefix.
    pub routes: Option<Vec<RawRoute>>,
    /// Who may call (every route, unless a route says otherwise).
    pub auth: Option<Value>,
    /// How often a caller may call (every route, unless a route says otherwise).
    pub rate_limit: Option<Value>,
    /// MCP awareness (every route, unless a route says otherwise).
    pub mcp: Option<RawMcp>,
    /// Which caller may make which MCP call (every route, unless a route says otherwise).
    pub policy: Option<Value>,
    /// ACME challenge for this host's names (default: `acme.challenge`).
    pub challenge: Option<String>,
}

/// `mcp:` of a host or route.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMcp {
    /// Read the JSON-RPC calls and outcomes for metrics and the access log (true).
    pub observe: Option<bool>,
    /// Tool (prompt, resource) names counted by name per route; later ones are `_other` (50).
    pub max_tools: Option<usize>,
    /// Refuse a POST whose Mcp-Method/Mcp-Name/MCP-Protocol-Version headers disagree with its
    /// body (400, JSON-RPC error -32020).
    pub validate: Option<bool>,
    /// With `validate`: also refuse protocol versions that predate header validation.
    pub strict: Option<bool>,
}

/// `tls: { cert, key }`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTlsFiles {
    /// Certificate chain, PEM, leaf first.
    pub cert: String,
    /// Private key, PEM (PKCS#8, SEC1 or PKCS#1).
    pub key: String,
}

/// One entry of `routes:`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    /// Path prefix, starting with `/`.
    pub path: String,
    /// Where matching requests go.
    pub upstream: Value,
    /// This route's own `auth` (`none`: open), instead of the host's.
    pub auth: Option<Value>,
    /// This route's own `rate_limit` (`none`: unlimited), instead of the host's.
    pub rate_limit: Option<Value>,
    /// This route's own `mcp` settings, instead of the host's.
    pub mcp: Option<RawMcp>,
    /// This route's own `policy` (`none`: every call), instead of the host's.
    pub policy: Option<Value>,
}

/// The map form of `upstream:`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUpstream {
    /// One or more `http://` URLs (several: round robin with session affinity).
    pub urls: Vec<String>,
    /// Per-read timeout; long for quiet SSE streams (default 1h).
    pub read_timeout: Option<String>,
    /// The whole response header must arrive within this time of the request; then 504
    /// (default 60s).
    pub response_header_timeout: Option<String>,
    /// Per-write timeout (default 60s).
    pub write_timeout: Option<String>,
    /// TCP connect timeout (default 10s).
    pub connect_timeout: Option<String>,
    /// Largest request body accepted (`4MiB`, `512KiB`, bytes); larger ones get 413.
    pub max_request_body: Option<Value>,
    /// Send the client's Host to the upstream instead of the upstream's own authority.
    #[serde(default)]
    pub preserve_host: bool,
    /// CA certificates (PEM) trusted for an `https://` upstream.
    pub ca: Option<String>,
    /// SHA-256 fingerprints of the upstream's leaf certificate.
    pub pin_sha256: Option<Vec<String>>,
    /// SNI and name to verify for an `https://` upstream.
    pub server_name: Option<String>,
    /// Client certificate (PEM) for mutual TLS to the upstream.
    pub client_cert: Option<String>,
    /// Client key (PEM) for mutual TLS to the upstream.
    pub client_key: Option<String>,
    /// Active health check of each replica (off by default; failed connections always take a
    /// replica out for a while).
    pub health_check: Option<RawHealthCheck>,
}

/// `upstream.health_check:`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    /// Path requested with GET; a 2xx or 3xx answer means healthy.
    pub path: String,
    /// Time between probes of a replica (default 10s).
    pub interval: Option<String>,
    /// A probe not answered within this time failed (default 2s).
    pub timeout: Option<String>,
}
