//! TLS on the Kafka and native listeners, against a real `strom-server`
//! with certificates made here (rcgen): a rustls client speaks Kafka and
//! the native protocol over TLS 1.2 and 1.3, with and without a client
//! certificate; an untrusted CA, a wrong host name and plaintext bytes on
//! the TLS port all fail, and none of these disturbs a TLS client connected
//! at the same time; kcat produces and consumes over SSL.

mod common;
mod kafka_common;

use kafka_common::certs::{client_config, tls_connect, TestCerts, Tls};
use kafka_common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// A Kafka ApiVersions v0 request with this correlation id.
fn api_versions_v0(cid: i32) -> Vec<u8> {
    let client = b"tls-test";
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&cid.to_be_bytes());
    body.extend_from_slice(&(client.len() as i16).to_be_bytes());
    body.extend_from_slice(client);
    let mut msg = (body.len() as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    msg
}

/// Sends ApiVersions and checks the answer: its correlation id, error 0
/// and a non-empty API table.
fn kafka_api_versions(s: &mut impl ReadWrite, cid: i32) {
    s.write_all(&api_versions_v0(cid)).expect("send");
    s.flush().expect("flush");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("answer length");
    let n = i32::from_be_bytes(len) as usize;
    assert!((10..1 << 20).contains(&n), "answer of {n} bytes");
    let mut ans = vec![0u8; n];
    s.read_exact(&mut ans).expect("answer");
    assert_eq!(i32::from_be_bytes(ans[0..4].try_into().expect("4")), cid);
    assert_eq!(i16::from_be_bytes(ans[4..6].try_into().expect("2")), 0);
    let apis = i32::from_be_bytes(ans[6..10].try_into().expect("4"));
    assert!(apis > 5, "{apis} APIs");
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Whether the server closes `s` (EOF or reset) within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).expect("timeout");
    let mut buf = [0u8; 512];
    let start = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
        if start.elapsed() > limit {
            return false;
        }
    }
}

fn start_tls_server(
    tag: &str,
    client_auth: &str,
) -> (KafkaServer, TestCerts, strom_tests::TempDir) {
    let dir = temp_dir(&format!("{tag}-certs"));
    let certs = TestCerts::generate(dir.path());
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "{}{}",
            certs.tls_table("kafka", client_auth),
            certs.tls_table("native", client_auth)
        ),
    )
    .expect("write config");
    let server = KafkaServer::start_with(
        1,
        temp_dir(tag),
        &["--config", config.to_str().expect("utf-8 path")],
    );
    (server, certs, dir)
}

#[test]
fn tls_listeners_serve_trusted_clients_and_refuse_the_rest_without_disturbing_others() {
    let (server, certs, _dir) = start_tls_server("tls-refusals", "requested");
    let both = [&rustls::version::TLS13, &rustls::version::TLS12];

    // A TLS client that stays connected through every refusal below.
    let mut steady = tls_connect(
        server.kafka,
        client_config(&certs.ca_pem, None, &both),
        "localhost",
    )
    .expect("trusted handshake");
    assert_eq!(
        steady.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    kafka_api_versions(&mut steady, 1);

    // TLS 1.2 only, by IP address (the certificate names 127.0.0.1 too).
    let mut v12 = tls_connect(
        server.kafka,
        client_config(&certs.ca_pem, None, &[&rustls::version::TLS12]),
        "127.0.0.1",
    )
    .expect("TLS 1.2 handshake");
    assert_eq!(
        v12.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    kafka_api_versions(&mut v12, 2);

    // An untrusted CA: the client refuses the server's certificate.
    let e = tls_connect(
        server.kafka,
        client_config(&certs.other_ca_pem, None, &both),
        "localhost",
    )
    .map(|_| ())
    .expect_err("untrusted CA must fail");
    assert!(
        e.contains("UnknownIssuer") || e.contains("invalid peer certificate"),
        "{e}"
    );

    // A host name the certificate does not name.
    let e = tls_connect(
        server.kafka,
        client_config(&certs.ca_pem, None, &both),
        "wrong.example",
    )
    .map(|_| ())
    .expect_err("wrong host name must fail");
    assert!(
        e.contains("NotValidForName") || e.contains("not valid for"),
        "{e}"
    );

    // Plaintext Kafka bytes on the TLS port: that connection is closed.
    let started = Instant::now();
    let mut plain = TcpStream::connect(server.kafka).expect("connect");
    plain
        .write_all(&api_versions_v0(3))
        .expect("send plaintext");
    assert!(
        closed_within(&mut plain, Duration::from_secs(5)),
        "plaintext on a TLS port must close the connection"
    );
    assert!(started.elapsed() < Duration::from_secs(5));

    // A client that connects and sends nothing holds no shard hostage: the
    // others go on (the handshake timeout closes it later).
    let mut silent = TcpStream::connect(server.kafka).expect("connect");
    let silent_since = Instant::now();

    // The steady client saw none of it.
    kafka_api_versions(&mut steady, 4);
    kafka_api_versions(&mut v12, 5);

    // The native listener: TLS with a client certificate, the native
    // ApiVersions handshake answered.
    let mut native = tls_connect(
        server.native,
        client_config(
            &certs.ca_pem,
            Some((&certs.client_cert, &certs.client_key)),
            &both,
        ),
        "localhost",
    )
    .expect("native mTLS handshake");
    native_api_versions(&mut native);
    // Plaintext native bytes on the native TLS port: closed too.
    let mut plain = TcpStream::connect(server.native).expect("connect");
    let req = strom_flatbuffers::protocol::encode_request(
        1,
        &strom_flatbuffers::protocol::RequestBody::ApiVersions(
            strom_flatbuffers::protocol::ApiVersionsRequest {
                client_name: "plain".into(),
                min_version: 1,
                max_version: 1,
            },
        ),
    )
    .expect("encode");
    plain.write_all(&req).expect("send");
    assert!(closed_within(&mut plain, Duration::from_secs(5)));
    native_api_versions(&mut native);
    kafka_api_versions(&mut steady, 6);

    // The silent connection is closed by the handshake timeout (10 s).
    assert!(
        closed_within(&mut silent, Duration::from_secs(15)),
        "a connection that never handshakes is closed"
    );
    let waited = silent_since.elapsed();
    assert!(waited >= Duration::from_secs(9), "closed after {waited:?}");
    kafka_api_versions(&mut steady, 7);
}

fn native_api_versions(s: &mut Tls) {
    use strom_flatbuffers::protocol::*;
    let req = encode_request(
        7,
        &RequestBody::ApiVersions(ApiVersionsRequest {
            client_name: "tls-test".into(),
            min_version: 1,
            max_version: 1,
        }),
    )
    .expect("encode");
    s.write_all(&req).expect("send");
    s.flush().expect("flush");
    let mut len = [0u8; 4];
    s.read_exact(&mut len).expect("len");
    let total = u32::from_le_bytes(len) as usize;
    let mut msg = vec![0u8; 4 + total];
    msg[..4].copy_from_slice(&len);
    s.read_exact(&mut msg[4..]).expect("answer");
    let d = decode_response(&msg).expect("valid response");
    assert_eq!(d.correlation_id, 7);
    match d.body {
        ResponseBody::ApiVersions(v) => assert_eq!(v.error, ErrorCode::None, "{}", v.message),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn tls_required_client_certificate_refuses_a_client_without_one() {
    let (server, certs, _dir) = start_tls_server("tls-mtls", "required");
    let both = [&rustls::version::TLS13, &rustls::version::TLS12];
    let mut with = tls_connect(
        server.kafka,
        client_config(
            &certs.ca_pem,
            Some((&certs.client_cert, &certs.client_key)),
            &both,
        ),
        "localhost",
    )
    .expect("mTLS handshake");
    kafka_api_versions(&mut with, 1);
    // Without a certificate: TLS 1.3 finishes the client's side of the
    // handshake before the server's verdict, so the refusal shows as an
    // alert or a close on the first exchange.
    let refused = match tls_connect(
        server.kafka,
        client_config(&certs.ca_pem, None, &both),
        "localhost",
    ) {
        Err(_) => true,
        Ok(mut s) => {
            let _ = s.write_all(&api_versions_v0(2));
            let _ = s.flush();
            let mut b = [0u8; 4];
            s.read_exact(&mut b).is_err()
        }
    };
    assert!(refused, "a client without a certificate must be refused");
    kafka_api_versions(&mut with, 3);
}

#[test]
fn kcat_produces_and_consumes_over_ssl() {
    let Some(bin) = kcat() else {
        skip("kcat_produces_and_consumes_over_ssl", "kcat");
        return;
    };
    let (server, certs, dir) = start_tls_server("tls-kcat", "none");
    let input: String = (0..500).map(|i| format!("record {i} over TLS\n")).collect();
    let path = dir.path().join("in.txt");
    std::fs::write(&path, &input).expect("write input");
    let ssl = |c: &mut std::process::Command| {
        c.args(["-b", &format!("localhost:{}", server.kafka.port()), "-q"])
            .args(["-X", "security.protocol=ssl"])
            .arg("-X")
            .arg(format!("ssl.ca.location={}", certs.ca_pem.display()));
    };
    let mut p = std::process::Command::new(bin);
    ssl(&mut p);
    p.args(["-P", "-t", "tls-topic", "-l"]).arg(&path);
    run_bounded(p, LIMIT);
    let mut c = std::process::Command::new(bin);
    ssl(&mut c);
    c.args(["-C", "-t", "tls-topic", "-e", "-f", "%s\n"]);
    let out = run_bounded(c, LIMIT).stdout;
    assert_eq!(String::from_utf8_lossy(&out), input);

    // kcat trusting another CA fails instead of talking.
    let mut bad = std::process::Command::new(bin);
    bad.args(["-b", &format!("localhost:{}", server.kafka.port()), "-q"])
        .args(["-X", "security.protocol=ssl"])
        .arg("-X")
        .arg(format!("ssl.ca.location={}", certs.other_ca_pem.display()))
        .args(["-L", "-m", "5"]);
    let out = bad.output().expect("run kcat");
    assert!(!out.status.success(), "kcat with an untrusted CA must fail");
}
