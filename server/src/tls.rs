//! TLS on a listener (foundation layer): the per-listener settings, the
//! rustls server configuration built from PEM files at start-up, the
//! handshake of one accepted socket (bounded in time and in how many run at
//! once on a shard), and [`Stream`], the byte stream every protocol's
//! connection reads and writes, plaintext or TLS.
//!
//! rustls (ring provider, TLS 1.2 and 1.3) runs over glommio's TCP stream
//! through futures-rustls: glommio's streams implement the futures-io
//! traits futures-rustls wraps, so no adapter of our own sits in between.
//!
//! Invariants and limits:
//! - A listener without a `[tls.*]` table is plaintext (the default).
//! - At most `TLS_HANDSHAKES_PER_SHARD_MAX` handshakes run at once on one
//!   shard (one executor thread: the count is thread-local); a connection
//!   accepted past it is closed at once, before any TLS byte is read.
//! - A handshake not finished within `TLS_HANDSHAKE_TIMEOUT_MS` closes that
//!   connection. Plaintext (or any other non-TLS) bytes on a TLS port fail
//!   the handshake and close that connection only.
//! - With client certificates on, the connection's principal is
//!   `User:` + the verified certificate's subject (Kafka's default
//!   mapping); key material and certificates are never logged.

use futures_lite::io::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// Handshakes one shard runs at once; connections past it are closed.
pub const TLS_HANDSHAKES_PER_SHARD_MAX: usize = 256;
/// Longest a TLS handshake may take before its connection is closed.
pub const TLS_HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// Largest PEM file read (certificate chain, key or CA bundle).
pub const PEM_FILE_BYTES_MAX: u64 = 1 << 20;

/// Whether a TLS listener asks for client certificates (mTLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificate is asked for.
    #[default]
    None,
    /// A certificate is asked for and verified if sent; a client without one
    /// connects with no certificate principal.
    Requested,
    /// A verified certificate is required to connect.
    Required,
}

/// One listener's `[tls.kafka]` / `[tls.native]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    /// PEM: the server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM: the server's private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM: CAs that client certificates must chain to (needed unless
    /// `client_auth` is `none`).
    pub client_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
}

/// Why a TLS configuration could not be built (a start-up failure).
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("{what} {path}: {reason}")]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("client_auth = {0:?} needs client_ca_file")]
    NoClientCa(ClientAuth),
    #[error("rustls refused the configuration: {0}")]
    Rustls(String),
}

/// A listener's TLS server side, built once and shared by every shard.
#[derive(Debug, Clone)]
pub struct TlsServer {
    pub config: Arc<rustls::ServerConfig>,
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    let err = |reason: String| TlsConfigError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let len = std::fs::metadata(path)
        .map_err(|e| err(e.to_string()))?
        .len();
    if len > PEM_FILE_BYTES_MAX {
        return Err(err(format!(
            "{len} bytes exceeds the limit of {PEM_FILE_BYTES_MAX}"
        )));
    }
    std::fs::read(path).map_err(|e| err(e.to_string()))
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read_pem(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsConfigError::File {
            what,
            path: path.to_path_buf(),
            reason: format!("not PEM certificates: {e:?}"),
        })?;
    if certs.is_empty() {
        return Err(TlsConfigError::File {
            what,
            path: path.to_path_buf(),
            reason: "no certificate in the file".into(),
        });
    }
    Ok(certs)
}

/// The ring provider, TLS 1.2 and 1.3.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TlsServer {
    /// Reads the PEM files and builds the rustls configuration.
    pub fn load(file: &TlsFile) -> Result<TlsServer, TlsConfigError> {
        let chain = certs("cert_file", &file.cert_file)?;
        let key_pem = read_pem("key_file", &file.key_file)?;
        // The key's own error is not echoed: it could quote key bytes.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsConfigError::File {
            what: "key_file",
            path: file.key_file.clone(),
            reason: "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".into(),
        })?;
        let provider = provider();
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        let builder = match file.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            mode => {
                let ca = file
                    .client_ca_file
                    .as_ref()
                    .ok_or(TlsConfigError::NoClientCa(mode))?;
                let mut roots = rustls::RootCertStore::empty();
                for c in certs("client_ca_file", ca)? {
                    roots
                        .add(c)
                        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
                }
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let v = if mode == ClientAuth::Requested {
                    v.allow_unauthenticated()
                } else {
                    v
                };
                builder.with_client_cert_verifier(
                    v.build()
                        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?,
                )
            }
        };
        let config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
        Ok(TlsServer {
            config: Arc::new(config),
        })
    }
}

/// The TLS settings of every listener (`None`: plaintext).
#[derive(Debug, Clone, Default)]
pub struct ListenerTls {
    pub kafka: Option<TlsServer>,
    pub native: Option<TlsServer>,
}

/// The `[tls]` table: one optional sub-table per listener.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsTables {
    pub kafka: Option<TlsFile>,
    pub native: Option<TlsFile>,
}

impl TlsTables {
    pub fn load(&self) -> Result<ListenerTls, TlsConfigError> {
        Ok(ListenerTls {
            kafka: self.kafka.as_ref().map(TlsServer::load).transpose()?,
            native: self.native.as_ref().map(TlsServer::load).transpose()?,
        })
    }
}

/// A connection's byte stream: plaintext or TLS, and who the peer proved
/// to be by certificate.
pub struct Stream {
    inner: Inner,
    /// `User:<subject>` of a verified client certificate.
    pub cert_principal: Option<String>,
}

enum Inner {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl Stream {
    pub fn plain(s: TcpStream) -> Stream {
        Stream {
            inner: Inner::Plain(s),
            cert_principal: None,
        }
    }

    fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Plain(s) => s,
            Inner::Tls(t) => t.get_ref().0,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    pub fn local_addr(&self) -> glommio::Result<std::net::SocketAddr, ()> {
        self.tcp().local_addr()
    }

    pub fn peer_addr(&self) -> glommio::Result<std::net::SocketAddr, ()> {
        self.tcp().peer_addr()
    }

    pub fn set_nodelay(&self, on: bool) -> glommio::Result<(), ()> {
        self.tcp().set_nodelay(on)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Inner::Tls(t) => Pin::new(&mut **t).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Inner::Tls(t) => Pin::new(&mut **t).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Inner::Tls(t) => Pin::new(&mut **t).poll_write_vectored(cx, bufs),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_flush(cx),
            Inner::Tls(t) => Pin::new(&mut **t).poll_flush(cx),
        }
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &mut self.inner {
            Inner::Plain(s) => Pin::new(s).poll_close(cx),
            Inner::Tls(t) => Pin::new(&mut **t).poll_close(cx),
        }
    }
}

thread_local! {
    /// Handshakes in progress on this shard (one executor per thread).
    static HANDSHAKES: Cell<usize> = const { Cell::new(0) };
}

/// Why a connection's handshake did not complete.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{TLS_HANDSHAKES_PER_SHARD_MAX} handshakes already in progress on this shard")]
    TooMany,
    #[error("no handshake within {TLS_HANDSHAKE_TIMEOUT_MS} ms")]
    Timeout,
    #[error("handshake failed: {0}")]
    Failed(std::io::Error),
}

/// Decrements the shard's handshake count however the handshake ends.
struct Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        HANDSHAKES.with(|h| h.set(h.get().saturating_sub(1)));
    }
}

/// The principal Kafka derives from a certificate: `User:` + its subject
/// (`CN=...,O=...`), or `None` for bytes that do not parse.
pub fn principal_of(cert_der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let parts: Vec<String> = cert
        .subject()
        .iter_attributes()
        .filter_map(|a| {
            let key = x509_parser::objects::oid2abbrev(
                a.attr_type(),
                x509_parser::objects::oid_registry(),
            )
            .map(str::to_owned)
            .unwrap_or_else(|_| a.attr_type().to_id_string());
            Some(format!("{key}={}", a.as_str().ok()?))
        })
        .collect();
    Some(format!("User:{}", parts.join(",")))
}

/// Runs the server side of the handshake on an accepted socket.
pub async fn accept(server: &TlsServer, tcp: TcpStream) -> Result<Stream, HandshakeError> {
    let admitted = HANDSHAKES.with(|h| {
        if h.get() >= TLS_HANDSHAKES_PER_SHARD_MAX {
            false
        } else {
            h.set(h.get() + 1);
            true
        }
    });
    if !admitted {
        return Err(HandshakeError::TooMany);
    }
    let _slot = Slot;
    let acceptor = futures_rustls::TlsAcceptor::from(server.config.clone());
    let handshake = async { Some(acceptor.accept(tcp).await) };
    let timeout = async {
        glommio::timer::sleep(Duration::from_millis(TLS_HANDSHAKE_TIMEOUT_MS)).await;
        None
    };
    let tls = match futures_lite::future::or(handshake, timeout).await {
        None => return Err(HandshakeError::Timeout),
        Some(Err(e)) => return Err(HandshakeError::Failed(e)),
        Some(Ok(t)) => t,
    };
    let cert_principal = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| principal_of(c.as_ref()));
    Ok(Stream {
        inner: Inner::Tls(Box::new(tls)),
        cert_principal,
    })
}

/// Handshakes in progress on the calling shard (for tests and metrics).
pub fn handshakes_in_progress() -> usize {
    HANDSHAKES.with(|h| h.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_principal_is_the_certificate_subject() {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Strom");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("cert");
        assert_eq!(
            principal_of(cert.der()).as_deref(),
            Some("User:CN=alice,O=Strom")
        );
        assert_eq!(principal_of(b"not a certificate"), None);
    }

    #[test]
    fn missing_or_bad_pem_files_are_start_up_errors() {
        let dir = std::env::temp_dir().join(format!("strom-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let cert = dir.join("c.pem");
        std::fs::write(&cert, "not pem").expect("write");
        let f = TlsFile {
            cert_file: cert.clone(),
            key_file: dir.join("missing.key"),
            client_ca_file: None,
            client_auth: ClientAuth::None,
        };
        assert!(TlsServer::load(&f).is_err());
        let key = rcgen::KeyPair::generate().expect("key");
        let c = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        std::fs::write(&cert, c.pem()).expect("write");
        let kf = dir.join("k.pem");
        std::fs::write(&kf, key.serialize_pem()).expect("write");
        let ok = TlsFile {
            key_file: kf,
            ..f.clone()
        };
        assert!(TlsServer::load(&ok).is_ok());
        let needs_ca = TlsFile {
            client_auth: ClientAuth::Required,
            ..ok
        };
        assert!(matches!(
            TlsServer::load(&needs_ca),
            Err(TlsConfigError::NoClientCa(ClientAuth::Required))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
