//! The test authorization server (tests/python/auth_server.py, Authlib): client credentials,
//! authorization code with PKCE, introspection, JWKS with key rotation; and tokens minted with
//! its signing key for the shapes it does not issue itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, https_client, python, wait_for, Edge, Ports, TestCa};

/// The authorization server, killed on drop.
pub struct AuthServer {
    child: Child,
    pub port: u16,
    /// ES256 signing keys (PKCS#8 PEM) the server uses: `k1` from the start, `k2` after rotation.
    pub k1: String,
    pub log: PathBuf,
}

impl Drop for AuthServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AuthServer {
    pub async fn start(dir: &Path, ca: &TestCa) -> Self {
        let (cert, key) = ca.leaf(&["127.0.0.1"]);
        let write = |name: &str, text: &str| {
            let p = dir.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let k1 = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let k2 = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let port = free_port();
        let log = dir.join("auth-server.log");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/auth_server.py");
        let child = Command::new(python())
            .arg(script)
            .args(["--port", &port.to_string(), "--kid", "k1", "--kid2", "k2"])
            .arg("--cert")
            .arg(write("as.pem", &cert))
            .arg("--key")
            .arg(write("as.key", &key))
            .arg("--signing-key")
            .arg(write("k1.pem", &k1))
            .arg("--signing-key2")
            .arg(write("k2.pem", &k2))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the authorization server");
        let server = Self {
            child,
            port,
            k1,
            log,
        };
        let client = server.client(ca);
        wait_for(Duration::from_secs(30), "authorization server", || async {
            client
                .get(format!("{}/jwks", server.issuer()))
                .send()
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await;
        server
    }

    pub fn issuer(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn client(&self, ca: &TestCa) -> reqwest::Client {
        https_client(ca.root_store(), &[], ([127, 0, 0, 1], self.port).into())
    }

    /// A token from the token endpoint (client credentials) for `resource`.
    pub async fn token(&self, ca: &TestCa, client: &str, resource: &str) -> String {
        let r = self
            .client(ca)
            .post(format!("{}/token", self.issuer()))
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(&[("grant_type", "client_credentials"), ("resource", resource)])
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            status,
            200,
            "{body}: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
        body["access_token"].as_str().unwrap().to_string()
    }

    pub async fn post(&self, ca: &TestCa, path: &str, form: &[(&str, &str)], client: &str) {
        let r = self
            .client(ca)
            .post(format!("{}{path}", self.issuer()))
            .basic_auth(client, Some(format!("{client}-secret")))
            .form(form)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
}

/// A JWT signed with `key_pem` (ES256) under `kid`.
pub fn mint(key_pem: &str, kid: &str, claims: serde_json::Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(kid.into());
    h.typ = Some("at+jwt".into());
    let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&h, &claims, &key).unwrap()
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An edge serving `localhost` over TLS (a leaf of `ca`) with `host` (the rest of the host's
/// YAML, indented).
pub async fn tls_edge(dir: &Path, ca: &TestCa, host: &str) -> Edge {
    let (cert, key) = ca.leaf(&["localhost"]);
    std::fs::write(dir.join("edge.pem"), cert).unwrap();
    std::fs::write(dir.join("edge.key"), key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    let ports = Ports::new();
    let cfg = format!(
        "{}storage: {}\nhosts:\n  localhost:\n    tls: {{ cert: {}, key: {} }}\n{host}",
        ports.yaml(),
        dir.join("certs").display(),
        dir.join("edge.pem").display(),
        dir.join("edge.key").display(),
    );
    Edge::start(dir, &ports, &cfg).await
}

/// The `auth: oauth:` block for `issuer` (its CA in `dir/ca.pem`), requiring `scopes`.
pub fn oauth_block(issuer: &str, dir: &Path, scopes: &str, indent: &str) -> String {
    format!(
        "{indent}auth:\n{indent}  oauth:\n{indent}    issuer: {issuer}\n{indent}    ca: {}\n{indent}    scopes: [{scopes}]\n{indent}    jwks_min_refresh: 1s\n{indent}    introspection_cache: 1s\n{indent}    introspection: {{ client_id: edge, client_secret: edge-secret }}\n",
        dir.join("ca.pem").display()
    )
}
