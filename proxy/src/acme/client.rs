//! Talking to the CA: the HTTP client instant-acme uses (time limits, the directory's own
//! extra root, Retry-After captured from error responses) and the ACME account, persisted per
//! directory in the storage directory.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::rt::TokioExecutor;
use instant_acme::{
    Account, AccountCredentials, BodyWrapper, BytesResponse, ExternalAccountKey, HttpClient,
    NewAccount, Problem,
};

use crate::config::AcmeConfig;
use crate::storage::{Key, Storage};

/// Limit on one request to the CA, from connect to response headers.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

tokio::task_local! {
    /// The latest Retry-After the CA sent with an error response, within one order attempt.
    static RETRY_AFTER_SEEN: Cell<Option<SystemTime>>;
}

/// Runs `f` with Retry-After capture on; returns its output and the last Retry-After seen.
pub(super) async fn capturing_retry_after<F: Future>(f: F) -> (F::Output, Option<SystemTime>) {
    RETRY_AFTER_SEEN
        .scope(Cell::new(None), async move {
            let out = f.await;
            (out, RETRY_AFTER_SEEN.with(|c| c.get()))
        })
        .await
}

/// What kind of failure an attempt met: what the manager does next depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FailureKind {
    /// The CA answered with a problem document.
    Problem,
    /// The CA no longer knows the account (it was deactivated, or the CA was reset): register
    /// a new one and try again at once.
    AccountGone,
    /// The CA did not finish (validation, issuance) in time.
    TimedOut,
    /// The runaway guard refused to place the order (`acme.order_limit`); nothing reached
    /// the CA.
    OrderLimit,
    /// Anything else: the CA unreachable, storage, a local error.
    Other,
}

/// Why an attempt failed, in words for the log and the status file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub(super) struct Failure {
    pub kind: FailureKind,
    pub message: String,
    /// The CA asked not to come back before this moment.
    pub retry_after: Option<SystemTime>,
}

impl Failure {
    pub(super) fn new(message: impl Into<String>) -> Self {
        Self {
            kind: FailureKind::Other,
            message: message.into(),
            retry_after: None,
        }
    }

    pub(super) fn context(mut self, what: &str) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

/// A problem document as one line: type, detail, and each subproblem.
pub(super) fn describe_problem(p: &Problem) -> String {
    let mut s = p.r#type.as_deref().unwrap_or("(no type)").to_string();
    if let Some(status) = p.status {
        s.push_str(&format!(" [{status}]"));
    }
    if let Some(d) = &p.detail {
        s.push_str(": ");
        s.push_str(d);
    }
    for sub in &p.subproblems {
        s.push_str("; ");
        s.push_str(&sub.to_string());
    }
    s
}

impl From<instant_acme::Error> for Failure {
    fn from(e: instant_acme::Error) -> Self {
        match e {
            instant_acme::Error::Api(p) => Self {
                kind: if p.r#type.as_deref()
                    == Some("urn:ietf:params:acme:error:accountDoesNotExist")
                {
                    FailureKind::AccountGone
                } else {
                    FailureKind::Problem
                },
                message: describe_problem(&p),
                retry_after: None,
            },
            instant_acme::Error::Timeout(next) => Self {
                kind: FailureKind::TimedOut,
                message: "the CA did not finish in time".into(),
                retry_after: next.map(|i| {
                    SystemTime::now() + i.saturating_duration_since(std::time::Instant::now())
                }),
            },
            other => Self::new(error_chain(&other)),
        }
    }
}

/// An error and its sources, joined: hyper's top-level message alone ("client error
/// (Connect)") hides the reason.
pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

type Hyper = HyperClient<crate::outbound::HttpsConnector, BodyWrapper<Bytes>>;

/// instant-acme's HTTP client with a time limit per request and Retry-After capture.
struct Client {
    inner: Hyper,
}

fn parse_retry_after(rsp: &BytesResponse) -> Option<SystemTime> {
    let v = rsp.parts.headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    match v.parse::<u64>() {
        Ok(secs) => Some(SystemTime::now() + Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(v).ok(),
    }
}

impl HttpClient for Client {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let fut = HttpClient::request(&self.inner, req);
        Box::pin(async move {
            let rsp = tokio::time::timeout(REQUEST_TIMEOUT, fut)
                .await
                .map_err(|_| {
                    instant_acme::Error::Other("no answer from the CA within 30s".into())
                })??;
            if rsp.parts.status.is_client_error() || rsp.parts.status.is_server_error() {
                if let Some(at) = parse_retry_after(&rsp) {
                    let _ = RETRY_AFTER_SEEN.try_with(|c| c.set(Some(at)));
                }
            }
            Ok(rsp)
        })
    }
}

/// The HTTP client for the CA: the system's roots plus `directory_root` if configured.
fn http_client(config: &AcmeConfig) -> Result<Box<dyn HttpClient>, Failure> {
    let extra = config.directory_root.clone().unwrap_or_default();
    let https =
        crate::outbound::https_connector(&extra).map_err(|e| Failure::new(e.to_string()))?;
    Ok(Box::new(Client {
        inner: HyperClient::builder(TokioExecutor::new()).build(https),
    }))
}

/// The account for one directory: loaded from its credentials file, or registered with the CA
/// and saved (0600) on first use.
pub(super) struct Accounts {
    config: AcmeConfig,
    storage: Storage,
    key: Key,
    cached: tokio::sync::Mutex<Option<Account>>,
    /// Set when the CA said the saved account does not exist: register a new one.
    stale_file: std::sync::atomic::AtomicBool,
}

impl Accounts {
    pub(super) fn new(config: AcmeConfig, storage: Storage) -> Self {
        Self {
            key: Key::acme_account(&config.directory),
            storage,
            config,
            cached: tokio::sync::Mutex::new(None),
            stale_file: Default::default(),
        }
    }

    pub(super) fn config(&self) -> &AcmeConfig {
        &self.config
    }

    pub(super) async fn get(&self) -> Result<Account, Failure> {
        use std::sync::atomic::Ordering;
        let mut cached = self.cached.lock().await;
        if let Some(a) = &*cached {
            return Ok(a.clone());
        }
        let stale = self.stale_file.load(Ordering::Relaxed);
        if !stale {
            if let Some(creds) = self.read_credentials().await? {
                let account = self.restore(creds).await?;
                *cached = Some(account.clone());
                return Ok(account);
            }
        }
        let contact: Vec<&str> = self.config.contact.iter().map(String::as_str).collect();
        let eab = self
            .config
            .eab
            .as_ref()
            .map(|e| ExternalAccountKey::new(e.kid.clone(), &e.hmac_key));
        let (account, creds) = Account::builder_with_http(http_client(&self.config)?)
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: self.config.accept_terms,
                    only_return_existing: false,
                },
                self.config.directory.clone(),
                eab.as_ref(),
            )
            .await
            .map_err(|e| Failure::from(e).context("registering the ACME account"))?;
        let json = serde_json::to_vec(&creds).expect("credentials serialize");
        let store_err = |e: crate::storage::StorageError| {
            Failure::new(format!("cannot store the ACME account: {e}"))
        };
        let first = if stale {
            self.storage
                .put(&[(&self.key, &json)])
                .await
                .map_err(store_err)?;
            true
        } else {
            self.storage
                .put_new(&self.key, &json)
                .await
                .map_err(store_err)?
        };
        if !first {
            // Another replica registered one meanwhile: use that one, so all share one account.
            if let Some(creds) = self.read_credentials().await? {
                let account = self.restore(creds).await?;
                *cached = Some(account.clone());
                return Ok(account);
            }
            // What is stored does not parse: replace it.
            self.storage
                .put(&[(&self.key, &json)])
                .await
                .map_err(store_err)?;
        }
        tracing::info!(directory = %self.config.directory, id = account.id(), key = %self.key, "registered ACME account");
        self.stale_file.store(false, Ordering::Relaxed);
        *cached = Some(account.clone());
        Ok(account)
    }

    async fn restore(&self, creds: AccountCredentials) -> Result<Account, Failure> {
        Account::builder_with_http(http_client(&self.config)?)
            .from_credentials(creds)
            .await
            .map_err(|e| Failure::from(e).context("ACME directory"))
    }

    /// The stored credentials; None when there are none or they do not parse. A store that
    /// cannot be read is a failure: registering anew then would orphan the stored account.
    async fn read_credentials(&self) -> Result<Option<AccountCredentials>, Failure> {
        let bytes = match self.storage.get(&self.key).await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => return Err(Failure::new(format!("cannot read the ACME account: {e}"))),
        };
        match serde_json::from_slice(&bytes) {
            Ok(c) => Ok(Some(c)),
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "unreadable ACME account; registering a new account");
                Ok(None)
            }
        }
    }

    /// Forgets `account` after the CA said it does not know it; the next `get` registers anew.
    pub(super) async fn forget(&self, account: &Account) {
        let mut cached = self.cached.lock().await;
        if cached.as_ref().is_some_and(|a| a.id() == account.id()) {
            *cached = None;
            self.stale_file
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(directory = %self.config.directory, id = account.id(), "the CA no longer knows this ACME account; registering a new one");
        }
    }
}

/// The profiles the CA's directory offers (`meta.profiles`), within `limit`.
pub(super) async fn offered_profiles(
    config: &AcmeConfig,
    limit: Duration,
) -> Result<Vec<String>, String> {
    let client = http_client(config).map_err(|f| f.message)?;
    let req = http::Request::get(&config.directory)
        .header(
            http::header::USER_AGENT,
            concat!("mcp-edge/", env!("CARGO_PKG_VERSION")),
        )
        .body(BodyWrapper::from(Vec::new()))
        .map_err(|e| e.to_string())?;
    // One deadline for the answer and its body.
    let body = tokio::time::timeout(limit, async {
        let mut rsp = client.request(req).await.map_err(|e| error_chain(&e))?;
        if !rsp.parts.status.is_success() {
            return Err(format!("the directory answered {}", rsp.parts.status));
        }
        rsp.body.into_bytes().await.map_err(|e| e.to_string())
    })
    .await
    .map_err(|_| format!("no answer within {}s", limit.as_secs()))??;
    let dir: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| format!("the directory is not JSON: {e}"))?;
    let mut names: Vec<String> = dir
        .pointer("/meta/profiles")
        .and_then(|p| p.as_object())
        // Names as the CA wrote them may hold anything: printable ASCII, 64 at most, is shown.
        .map(|m| {
            m.keys()
                .map(|k| {
                    k.chars()
                        .take(64)
                        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
                        .collect()
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    Ok(names)
}

/// Whether the CA offers `acme.profile`: Err with the words for the operator when it does not;
/// Ok when it does, no profile is set, or the CA cannot be asked (`Ok(Some(reason))`).
pub(super) async fn check_profile(config: &AcmeConfig) -> Result<Option<String>, String> {
    let Some(profile) = &config.profile else {
        return Ok(None);
    };
    match offered_profiles(config, Duration::from_secs(10)).await {
        Ok(offered) if offered.iter().any(|p| p == profile) => Ok(None),
        Ok(offered) if offered.is_empty() => Err(format!(
            "acme.profile: {profile:?}: the CA at {} offers no profiles; remove the setting",
            config.directory
        )),
        Ok(offered) => Err(format!(
            "acme.profile: {profile:?} is not offered by the CA at {}; it offers: {}",
            config.directory,
            offered.join(", ")
        )),
        Err(e) => Ok(Some(format!(
            "acme.profile {profile:?} not checked: cannot read the CA's directory ({e})"
        ))),
    }
}
