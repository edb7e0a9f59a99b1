//! Test certificates made by the tests themselves (rcgen): a CA, a server
//! certificate for `localhost` and 127.0.0.1 signed by it, a client
//! certificate signed by it, and a second CA the server never trusts.

#![allow(dead_code)]

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct TestCerts {
    pub dir: PathBuf,
    pub ca_pem: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A CA that signed nothing the server presents.
    pub other_ca_pem: PathBuf,
}

fn ca(cn: &str) -> (rcgen::Certificate, KeyPair) {
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, cn);
    let key = KeyPair::generate().expect("ca key");
    let cert = p.self_signed(&key).expect("self-sign ca");
    (cert, key)
}

impl TestCerts {
    /// Writes every PEM file into `dir`.
    pub fn generate(dir: &Path) -> TestCerts {
        std::fs::create_dir_all(dir).expect("mkdir certs");
        let (ca_cert, ca_key) = ca("strom test CA");
        let (other, _) = ca("some other CA");

        let mut sp = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .expect("server params");
        sp.distinguished_name
            .push(DnType::CommonName, "strom-server");
        let skey = KeyPair::generate().expect("server key");
        let scert = sp.signed_by(&skey, &ca_cert, &ca_key).expect("sign server");

        let mut cp = CertificateParams::new(Vec::<String>::new()).expect("client params");
        cp.distinguished_name.push(DnType::CommonName, "alice");
        cp.distinguished_name
            .push(DnType::OrganizationName, "Strom Tests");
        let ckey = KeyPair::generate().expect("client key");
        let ccert = cp.signed_by(&ckey, &ca_cert, &ca_key).expect("sign client");

        let w = |name: &str, text: String| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write pem");
            p
        };
        TestCerts {
            dir: dir.to_path_buf(),
            ca_pem: w("ca.pem", ca_cert.pem()),
            server_cert: w("server.pem", scert.pem()),
            server_key: w("server.key", skey.serialize_pem()),
            client_cert: w("client.pem", ccert.pem()),
            client_key: w("client.key", ckey.serialize_pem()),
            other_ca_pem: w("other-ca.pem", other.pem()),
        }
    }

    /// A `[tls.<listener>]` table for the server's config file.
    pub fn tls_table(&self, listener: &str, client_auth: &str) -> String {
        format!(
            "[tls.{listener}]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nclient_auth = {client_auth:?}\n",
            self.server_cert, self.server_key, self.ca_pem
        )
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client_config(
    ca: &Path,
    client: Option<(&Path, &Path)>,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca pem") {
        roots.add(c.expect("cert")).expect("add root");
    }
    let b = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions")
        .with_root_certificates(roots);
    let cfg = match client {
        None => b.with_no_client_auth(),
        Some((cert, key)) => {
            let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
                .expect("client pem")
                .map(|c| c.expect("cert"))
                .collect();
            let key = PrivateKeyDer::from_pem_file(key).expect("client key");
            b.with_client_auth_cert(chain, key).expect("client auth")
        }
    };
    Arc::new(cfg)
}

pub type Tls = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects and completes the handshake, or says why it failed.
pub fn tls_connect(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    host: &str,
) -> Result<Tls, String> {
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let name = ServerName::try_from(host.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(cfg, name).expect("client conn");
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Ok(rustls::StreamOwned::new(conn, sock))
}
