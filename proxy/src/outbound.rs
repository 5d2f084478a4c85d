//! Requests mcp-edge makes on its own behalf (to an authorization server: metadata, keys,
//! introspection): HTTPS only, verified against the system's roots plus configured extra roots,
//! each with a time limit and a cap on the answer's size.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnectorBuilder;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls_pki_types::CertificateDer;

/// The longest answer read (metadata and key sets are a few KB).
const MAX_BODY: usize = 1024 * 1024;
const TIMEOUT: Duration = Duration::from_secs(10);

pub type HttpsConnector = hyper_rustls::HttpsConnector<HttpConnector>;

/// Why an outbound request failed, for logs and metrics.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot set up TLS: {0}")]
    Tls(String),
    #[error("{url}: {reason}")]
    Request { url: String, reason: String },
    #[error("{url}: answered {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: not the JSON expected: {reason}")]
    Json { url: String, reason: String },
}

/// An HTTPS connector trusting the system's roots and `extra`.
pub fn https_connector(extra: &[CertificateDer<'static>]) -> Result<HttpsConnector, FetchError> {
    let provider = Arc::new(crate::pem::ring_provider());
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra.to_vec(), provider.clone())
            .map_err(|e| FetchError::Tls(format!("certificate verification: {e}")))?;
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| FetchError::Tls(e.to_string()))?
        .dangerous() // the platform verifier: the system's roots + the extra ones
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(TIMEOUT));
    http.set_nodelay(true);
    http.enforce_http(false);
    Ok(HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_only()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http))
}

/// A JSON client for one set of roots.
#[derive(Clone)]
pub struct JsonClient {
    inner: Client<HttpsConnector, Full<Bytes>>,
}

impl JsonClient {
    pub fn new(extra_roots: &[CertificateDer<'static>]) -> Result<Self, FetchError> {
        Ok(Self {
            inner: Client::builder(TokioExecutor::new()).build(https_connector(extra_roots)?),
        })
    }

    /// `GET url`, a 200 answer parsed as JSON.
    pub async fn get(&self, url: &str) -> Result<serde_json::Value, FetchError> {
        let req = http::Request::get(url)
            .header(http::header::ACCEPT, "application/json")
            .body(Full::new(Bytes::new()));
        self.send(url, req).await
    }

    /// `POST url` with a form body and optional basic credentials, the answer parsed as JSON.
    pub async fn post_form(
        &self,
        url: &str,
        form: &[(&str, &str)],
        basic: Option<(&str, &str)>,
    ) -> Result<serde_json::Value, FetchError> {
        let body = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let mut req = http::Request::post(url)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            );
        if let Some((user, password)) = basic {
            use base64::Engine;
            // RFC 6749 §2.3.1: each part form-encoded before the Basic encoding.
            let enc =
                |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let raw = format!("{}:{}", enc(user), enc(password));
            let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            req = req.header(http::header::AUTHORIZATION, format!("Basic {b64}"));
        }
        self.send(url, req.body(Full::new(Bytes::from(body)))).await
    }

    async fn send(
        &self,
        url: &str,
        req: http::Result<http::Request<Full<Bytes>>>,
    ) -> Result<serde_json::Value, FetchError> {
        let fail = |reason: String| FetchError::Request {
            url: url.to_string(),
            reason,
        };
        let req = req.map_err(|e| fail(e.to_string()))?;
        let exchange = async {
            let rsp = self
                .inner
                .request(req)
                .await
                .map_err(|e| fail(e.to_string()))?;
            let status = rsp.status().as_u16();
            let body = Limited::new(rsp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| fail(e.to_string()))?
                .to_bytes();
            Ok::<_, FetchError>((status, body))
        };
        let (status, body) = tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| fail(format!("no answer within {}s", TIMEOUT.as_secs())))??;
        if status != 200 {
            return Err(FetchError::Status {
                url: url.to_string(),
                status,
            });
        }
        serde_json::from_slice(&body).map_err(|e| FetchError::Json {
            url: url.to_string(),
            reason: e.to_string(),
        })
    }
}
