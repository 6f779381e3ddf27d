//! A test CA made at run time (rcgen), a server certificate for localhost / 127.0.0.1
//! signed by it, and an HTTPS server (HTTP/2 by ALPN, HTTP/1.1 too) over rustls.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// A request as the fakes see it: head plus the whole body.
pub struct Req {
    /// The connection's number in accept order, process-wide (see [`connections_accepted`]).
    pub conn: u64,
    pub method: hyper::Method,
    pub path: String,
    pub version: hyper::Version,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

static CONNECTIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Connections every fake in this process accepted so far. A test that kills a client
/// process takes this as a watermark: requests on connections numbered above it came
/// from a process started later, whatever the dead one still had in flight.
pub fn connections_accepted() -> u64 {
    CONNECTIONS.load(std::sync::atomic::Ordering::SeqCst)
}

pub type Handler =
    Arc<dyn Fn(Req) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>> + Send + Sync>;

/// The CA and the server certificate; `ca_file` is what Herald's `ca_file` points at.
pub struct TestCa {
    pub ca_file: PathBuf,
    server: Arc<ServerConfig>,
}

impl TestCa {
    pub fn new(dir: &Path) -> TestCa {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Herald push test CA");
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca.self_signed(&ca_key).expect("ca cert");
        let issuer = Issuer::new(ca, ca_key);

        let leaf_key = KeyPair::generate().expect("leaf key");
        let mut leaf =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("leaf params");
        leaf.distinguished_name
            .push(DnType::CommonName, "localhost");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_cert = leaf.signed_by(&leaf_key, &issuer).expect("leaf cert");

        let ca_file = dir.join("test-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write ca");
        let chain: Vec<CertificateDer<'static>> =
            vec![leaf_cert.der().clone(), ca_cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut cfg = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("tls versions")
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server cert");
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TestCa {
            ca_file,
            server: Arc::new(cfg),
        }
    }

    /// Serves `handler` over HTTPS on a fresh 127.0.0.1 port until the task is aborted.
    pub async fn serve(&self, handler: Handler) -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake");
        let addr = listener.local_addr().expect("fake addr");
        let acceptor = TlsAcceptor::from(self.server.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let conn = CONNECTIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                let (acceptor, handler) = (acceptor.clone(), handler.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (head, body) = req.into_parts();
                            // A request cut off mid-body (its client died) never
                            // reached the service, as with the real providers: it is
                            // neither answered nor logged.
                            let body = match body.collect().await {
                                Ok(b) => b.to_bytes(),
                                Err(_) => {
                                    let mut r = Response::new(Full::new(Bytes::new()));
                                    *r.status_mut() = hyper::StatusCode::BAD_REQUEST;
                                    return Ok::<_, Infallible>(r);
                                }
                            };
                            let req = Req {
                                conn,
                                method: head.method,
                                path: head.uri.path().to_string(),
                                version: head.version,
                                headers: head.headers,
                                body,
                            };
                            Ok::<_, Infallible>(handler(req).await)
                        }
                    });
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let _ = builder.serve_connection(TokioIo::new(tls), svc).await;
                });
            }
        });
        (addr, task)
    }
}

/// A response with a JSON body and extra headers.
pub fn json_response(
    status: u16,
    body: &serde_json::Value,
    headers: &[(&str, String)],
) -> Response<Full<Bytes>> {
    let mut b = Response::builder()
        .status(status)
        .header("content-type", "application/json");
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// A response with no body.
pub fn empty_response(status: u16, headers: &[(&str, String)]) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(Bytes::new())).expect("response")
}
