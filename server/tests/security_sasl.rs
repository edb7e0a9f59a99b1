//! SASL on the Kafka listener over TLS (SASL_SSL), against a real
//! `strom-server` with bootstrap users from its config file: kcat,
//! confluent-kafka and kafka-python produce and consume with PLAIN,
//! SCRAM-SHA-256 and SCRAM-SHA-512; a wrong password fails fast with
//! SASL_AUTHENTICATION_FAILED; a request before authentication closes the
//! connection; an authenticated client connected meanwhile is undisturbed;
//! the stored credentials are salted (no password in the file) and survive
//! a restart.

mod common;
mod kafka_common;

use bytes::{Buf, BufMut, BytesMut};
use kafka_common::certs::{client_config, tls_connect, TestCerts, Tls};
use kafka_common::*;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use std::io::{Read, Write};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);
const MECHANISMS: [&str; 3] = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"];

struct Setup {
    server: KafkaServer,
    certs: TestCerts,
    _dir: strom_tests::TempDir,
}

fn start(tag: &str) -> Setup {
    let dir = temp_dir(&format!("{tag}-certs"));
    let certs = TestCerts::generate(dir.path());
    let config = dir.path().join("server.toml");
    std::fs::write(
        &config,
        format!(
            "{}[sasl]\nkafka = true\nsuper_users = [\"User:admin\"]\n\
             [[sasl.bootstrap_users]]\nname = \"admin\"\npassword = \"admin-secret\"\n\
             [[sasl.bootstrap_users]]\nname = \"alice\"\npassword = \"alice-secret\"\n",
            certs.tls_table("kafka", "none"),
        ),
    )
    .expect("write config");
    let server = KafkaServer::start_with(
        1,
        temp_dir(tag),
        &["--config", config.to_str().expect("utf-8 path")],
    );
    Setup {
        server,
        certs,
        _dir: dir,
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad JSON {s:?}: {e}"))
}

fn sec_clients(
    setup: &Setup,
    client: &str,
    mode: &str,
    mech: &str,
    password: &str,
    topic: &str,
) -> serde_json::Value {
    json(&python(
        "sec_clients.py",
        &[
            client,
            mode,
            &setup.server.bootstrap(),
            "SASL_SSL",
            mech,
            "alice",
            password,
            setup.certs.ca_pem.to_str().expect("utf-8"),
            topic,
            "2000",
        ],
        LIMIT,
    ))
}

#[test]
fn confluent_kafka_and_kafka_python_produce_and_consume_over_sasl_ssl_with_each_mechanism() {
    let have_ck = python_has("confluent_kafka");
    let have_kp = python_has("kafka");
    if !have_ck {
        skip("sasl_ssl_confluent_kafka", "confluent-kafka");
    }
    if !have_kp {
        skip("sasl_ssl_kafka_python", "kafka-python");
    }
    let setup = start("sasl-clients");
    for mech in MECHANISMS {
        for (client, have) in [("ck", have_ck), ("kp", have_kp)] {
            if !have {
                continue;
            }
            let topic = format!("{client}-{}", mech.to_lowercase());
            let r = sec_clients(&setup, client, "run", mech, "alice-secret", &topic);
            assert_eq!(r["errors"], 0, "{r}");
            assert_eq!(r["unflushed"], 0, "{r}");
            assert_eq!(r["consumed"], 2000, "{r}");
            assert_eq!(r["intact"], true, "{r}");
        }
    }
}

#[test]
fn kcat_produces_and_consumes_over_sasl_ssl_with_plain() {
    let Some(bin) = kcat() else {
        skip("kcat_sasl_ssl", "kcat");
        return;
    };
    let setup = start("sasl-kcat");
    let input: String = (0..300).map(|i| format!("sasl record {i}\n")).collect();
    let path = setup.certs.dir.join("in.txt");
    std::fs::write(&path, &input).expect("write input");
    // PLAIN only: the kcat here links librdkafka 2.0.2, whose SCRAM
    // client-final message repeats the client nonce (`r=<c><c><s>`, seen on
    // the wire) against RFC 5802, and is refused (e=invalid-proof);
    // librdkafka 2.16 (confluent-kafka) and kafka-python pass with both
    // SCRAM mechanisms (the test above).
    #[allow(clippy::single_element_loop)]
    for mech in ["PLAIN"] {
        let topic = format!("kcat-{}", mech.to_lowercase());
        let args = |c: &mut std::process::Command| {
            c.args(["-b", &setup.server.bootstrap(), "-q"])
                .args(["-X", "security.protocol=SASL_SSL"])
                .arg("-X")
                .arg(format!("sasl.mechanisms={mech}"))
                .args([
                    "-X",
                    "sasl.username=alice",
                    "-X",
                    "sasl.password=alice-secret",
                ])
                .arg("-X")
                .arg(format!("ssl.ca.location={}", setup.certs.ca_pem.display()));
        };
        let mut p = std::process::Command::new(bin);
        args(&mut p);
        p.args(["-P", "-t", &topic, "-l"]).arg(&path);
        run_bounded(p, LIMIT);
        let mut c = std::process::Command::new(bin);
        args(&mut c);
        c.args(["-C", "-t", &topic, "-e", "-f", "%s\n"]);
        let out = run_bounded(c, LIMIT).stdout;
        assert_eq!(String::from_utf8_lossy(&out), input, "{mech}");
    }
}

/// Sends one Kafka request (header v1, non-flexible versions only).
fn send<T: Encodable>(s: &mut Tls, key: ApiKey, version: i16, cid: i32, req: &T) {
    let mut body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(cid)
        .with_client_id(Some(StrBytes::from_static_str("sasl-test")))
        .encode(&mut body, 1)
        .expect("header");
    req.encode(&mut body, version).expect("body");
    let mut msg = BytesMut::new();
    msg.put_i32(body.len() as i32);
    msg.extend_from_slice(&body);
    s.write_all(&msg).expect("send");
    s.flush().expect("flush");
}

/// Reads one answer (header v0), or `None` if the server closed.
fn recv<T: Decodable>(s: &mut Tls, version: i16, cid: i32) -> Option<T> {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).ok()?;
    let n = i32::from_be_bytes(len) as usize;
    let mut buf = vec![0u8; n];
    s.read_exact(&mut buf).ok()?;
    let mut b = bytes::Bytes::from(buf);
    assert_eq!(b.get_i32(), cid);
    Some(T::decode(&mut b, version).expect("decode answer"))
}

fn closed(s: &mut Tls) -> bool {
    s.sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// A TLS connection that completed a PLAIN exchange, or the error code.
fn plain_login(setup: &Setup, user: &str, password: &str) -> (Tls, i16) {
    let mut s = tls_connect(
        setup.server.kafka,
        client_config(
            &setup.certs.ca_pem,
            None,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
        ),
        "localhost",
    )
    .expect("handshake");
    send(
        &mut s,
        ApiKey::SaslHandshake,
        1,
        1,
        &SaslHandshakeRequest::default().with_mechanism(StrBytes::from_static_str("PLAIN")),
    );
    let h: SaslHandshakeResponse = recv(&mut s, 1, 1).expect("handshake answer");
    assert_eq!(h.error_code, 0);
    assert!(h.mechanisms.iter().any(|m| m.as_str() == "SCRAM-SHA-512"));
    let token = format!("\0{user}\0{password}");
    send(
        &mut s,
        ApiKey::SaslAuthenticate,
        1,
        2,
        &SaslAuthenticateRequest::default().with_auth_bytes(bytes::Bytes::from(token)),
    );
    let a: SaslAuthenticateResponse = recv(&mut s, 1, 2).expect("authenticate answer");
    (s, a.error_code)
}

fn metadata_ok(s: &mut Tls, cid: i32) {
    send(s, ApiKey::Metadata, 1, cid, &MetadataRequest::default());
    let m: MetadataResponse = recv(s, 1, cid).expect("metadata answer");
    assert_eq!(m.brokers.len(), 1);
}

#[test]
fn wrong_password_fails_fast_and_requests_before_authentication_close_only_that_connection() {
    let setup = start("sasl-refusals");
    // An authenticated client, connected throughout.
    let (mut steady, code) = plain_login(&setup, "alice", "alice-secret");
    assert_eq!(code, 0);
    metadata_ok(&mut steady, 3);

    // Wrong password: SASL_AUTHENTICATION_FAILED, then the server closes.
    let started = Instant::now();
    let (mut bad, code) = plain_login(&setup, "alice", "not-her-password");
    assert_eq!(code, 58, "SASL_AUTHENTICATION_FAILED");
    assert!(closed(&mut bad), "closed after a failed login");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // Unknown user: the same answer.
    let (_, code) = plain_login(&setup, "mallory", "x");
    assert_eq!(code, 58);

    // Metadata before authenticating: the connection is closed, unanswered.
    let mut early = tls_connect(
        setup.server.kafka,
        client_config(&setup.certs.ca_pem, None, &[&rustls::version::TLS13]),
        "localhost",
    )
    .expect("handshake");
    send(
        &mut early,
        ApiKey::Metadata,
        1,
        1,
        &MetadataRequest::default(),
    );
    assert!(closed(&mut early), "a request before authentication closes");

    // The steady client saw none of it.
    metadata_ok(&mut steady, 4);

    // confluent-kafka with a wrong password fails within seconds, with an
    // authentication error.
    if python_has("confluent_kafka") {
        for mech in MECHANISMS {
            let r = sec_clients(&setup, "ck", "badpass", mech, "wrong", "unused");
            assert_eq!(r["failed"], true, "{r}");
            let err = r["error"].as_str().unwrap_or_default().to_lowercase();
            assert!(err.contains("authentication"), "{r}");
            assert!(r["seconds"].as_f64().unwrap_or(99.0) < 15.0, "{r}");
        }
    } else {
        skip("sasl_wrong_password_confluent_kafka", "confluent-kafka");
    }

    // Too many failed logins from this address: even the right password is
    // refused until the window passes.
    for _ in 0..6 {
        let _ = plain_login(&setup, "alice", "still-wrong");
    }
    let (_, code) = plain_login(&setup, "alice", "alice-secret");
    assert_eq!(code, 58, "locked out after repeated failures");
    metadata_ok(&mut steady, 5);
}

#[test]
fn stored_credentials_are_salted_and_survive_a_restart() {
    let mut setup = start("sasl-restart");
    let file = setup.server.data_dir.join("security.json");
    let text = std::fs::read_to_string(&file).expect("security.json written at start-up");
    assert!(!text.contains("alice-secret") && !text.contains("admin-secret"));
    let stored: serde_json::Value = serde_json::from_str(&text).expect("json");
    let alice = &stored["body"]["users"]["alice"];
    for m in ["SCRAM-SHA-256", "SCRAM-SHA-512"] {
        assert!(
            alice[m]["iterations"].as_u64().unwrap_or(0) >= 4096,
            "{alice}"
        );
        assert!(
            !alice[m]["salt"].as_str().unwrap_or("").is_empty(),
            "{alice}"
        );
    }
    setup.server.restart();
    let after = std::fs::read_to_string(&file).expect("still there");
    assert_eq!(text, after, "bootstrap users are not re-salted at restart");
    let (mut s, code) = plain_login(&setup, "alice", "alice-secret");
    assert_eq!(code, 0);
    metadata_ok(&mut s, 3);
}

#[test]
fn scram_credentials_altered_through_the_admin_client_log_in_and_survive_a_restart() {
    if !python_has("confluent_kafka") {
        skip("sasl_admin_confluent_kafka", "confluent-kafka");
        return;
    }
    let mut setup = start("sasl-admin");
    let ca = setup.certs.ca_pem.to_str().expect("utf-8").to_owned();
    let admin = |setup: &Setup, user: &str, pw: &str, extra: &[&str]| {
        let b = setup.server.bootstrap();
        let mut args = vec![b.as_str(), ca.as_str(), user, pw, "bob", "bob-secret"];
        args.extend_from_slice(extra);
        json(&python("sec_admin.py", &args, LIMIT))
    };
    // alice is no super user: refused.
    let r = admin(&setup, "alice", "alice-secret", &[]);
    assert_eq!(r["altered"], false, "{r}");
    assert!(
        r["alter_error"]
            .as_str()
            .unwrap_or("")
            .contains("CLUSTER_AUTHORIZATION_FAILED"),
        "{r}"
    );
    // admin (a super user) creates bob, who then logs in with both.
    let r = admin(&setup, "admin", "admin-secret", &[]);
    assert_eq!(r["altered"], true, "{r}");
    assert_eq!(
        r["described"],
        serde_json::json!(["SCRAM_SHA_256/4096", "SCRAM_SHA_512/4096"]),
        "{r}"
    );
    assert_eq!(r["logins"]["SCRAM-SHA-256"], true, "{r}");
    assert_eq!(r["logins"]["SCRAM-SHA-512"], true, "{r}");
    let text = std::fs::read_to_string(setup.server.data_dir.join("security.json"))
        .expect("security.json");
    assert!(!text.contains("bob-secret"));
    // Durable: after a restart bob still logs in.
    setup.server.restart();
    let r = admin(&setup, "admin", "admin-secret", &["describe-only"]);
    assert_eq!(r["logins"]["SCRAM-SHA-256"], true, "{r}");
    assert_eq!(r["logins"]["SCRAM-SHA-512"], true, "{r}");
    let (mut s, code) = plain_login(&setup, "bob", "bob-secret");
    assert_eq!(code, 0, "PLAIN checks against the SCRAM credential");
    metadata_ok(&mut s, 9);
}
