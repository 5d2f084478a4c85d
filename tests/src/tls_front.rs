//! An HTTPS upstream for tests: TLS terminated with the certificate the test made (and, if
//! asked, a client certificate required), bytes passed on to a plain upstream. The certificate
//! can be replaced while it runs (rotation).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};

pub struct TlsFront {
    pub addr: SocketAddr,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    client_ca: Option<String>,
    /// Completed handshakes since the certificate was last set.
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

fn server_config(
    cert_pem: &str,
    key_pem: &str,
    client_ca: Option<&str>,
) -> Arc<rustls::ServerConfig> {
    crate::install_crypto();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder(Arc::new(crate::roots_from_pem(ca)))
                .build()
                .unwrap(),
        ),
        None => builder.with_no_client_auth(),
    };
    // A resolver rather than `with_single_cert`: rustls would refuse to serve the version-1
    // certificates some appliances have, and those are what some tests are about.
    let signing = crate::ring_provider()
        .key_provider
        .load_private_key(key)
        .unwrap();
    let mut cfg = builder.with_cert_resolver(Arc::new(Always(Arc::new(
        rustls::sign::CertifiedKey::new(chain, signing),
    ))));
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

#[derive(Debug)]
struct Always(Arc<rustls::sign::CertifiedKey>);

impl rustls::server::ResolvesServerCert for Always {
    fn resolve(
        &self,
        _: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.clone())
    }
}

impl TlsFront {
    /// Serves `cert_pem`/`key_pem` on a loopback port in front of `backend` (plain HTTP).
    /// With `client_ca`, a client certificate signed by it is required.
    pub async fn start(
        cert_pem: &str,
        key_pem: &str,
        client_ca: Option<&str>,
        backend: SocketAddr,
    ) -> Self {
        let config = Arc::new(Mutex::new(server_config(cert_pem, key_pem, client_ca)));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = config.clone();
        let handshakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = handshakes.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let current = cfg.lock().unwrap().clone();
                let count = count.clone();
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::TlsAcceptor::from(current);
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Ok(mut up) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
                });
            }
        });
        Self {
            addr,
            config,
            client_ca: client_ca.map(str::to_string),
            handshakes,
            task,
        }
    }

    /// Serves another certificate to new connections.
    pub fn replace_certificate(&self, cert_pem: &str, key_pem: &str) {
        *self.config.lock().unwrap() = server_config(cert_pem, key_pem, self.client_ca.as_deref());
        self.handshakes
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// Handshakes completed since the certificate was last set.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

impl Drop for TlsFront {
    fn drop(&mut self) {
        self.task.abort();
    }
}
