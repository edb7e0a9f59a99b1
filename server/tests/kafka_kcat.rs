//! kcat (librdkafka's command-line client) against the Kafka listener:
//! metadata, produce from a file with keys and headers, consume to the end
//! byte for byte; and the cross-protocol path: records produced with kcat
//! are read back through the native protocol, unchanged.

mod common;
mod kafka_common;

use kafka_common::*;
use std::process::Command;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(60);

/// (key, value, headers) of one record.
type Rec = (Option<Vec<u8>>, Option<Vec<u8>>, Vec<(String, Vec<u8>)>);

fn kcat_cmd(bin: &str, server: &KafkaServer) -> Command {
    let mut c = Command::new(bin);
    c.args(["-b", &server.bootstrap(), "-q"]);
    c
}

#[test]
fn kcat_metadata_produce_consume_byte_for_byte_and_native_reads_it() {
    let Some(bin) = kcat() else {
        skip("kcat_metadata_produce_consume", "kcat");
        return;
    };
    let server = KafkaServer::start(2, temp_dir("kcat"));
    // Produce: keys and values with spaces, punctuation and UTF-8; every
    // record carries two headers. Topic is auto-created.
    let dir = temp_dir("kcat-files");
    let input: String = (0..200)
        .map(|i| format!("key-{i}\tvalue {i} ✓ {}\n", "x".repeat(i % 37)))
        .collect();
    let path = dir.join("in.txt");
    std::fs::write(&path, &input).expect("write input");
    let mut p = kcat_cmd(bin, &server);
    p.args([
        "-P", "-t", "kc", "-K", "\t", "-H", "h1=one", "-H", "h2=two", "-l",
    ])
    .arg(&path);
    run_bounded(p, LIMIT);

    // Metadata names this broker (the listener's own address) and the topic.
    let mut l = kcat_cmd(bin, &server);
    l.args(["-L", "-t", "kc"]);
    let meta = String::from_utf8_lossy(&run_bounded(l, LIMIT).stdout).into_owned();
    assert!(
        meta.contains(&format!("broker 0 at {}", server.bootstrap())),
        "{meta}"
    );
    assert!(meta.contains("topic \"kc\" with 1 partitions"), "{meta}");

    // Consume to the end: the same bytes back, with the headers.
    let mut c = kcat_cmd(bin, &server);
    c.args(["-C", "-t", "kc", "-e", "-f", "%k\t%s\n"]);
    let out = run_bounded(c, LIMIT).stdout;
    assert_eq!(String::from_utf8_lossy(&out), input);
    let mut h = kcat_cmd(bin, &server);
    h.args(["-C", "-t", "kc", "-e", "-f", "%o %h\n"]);
    let out = String::from_utf8_lossy(&run_bounded(h, LIMIT).stdout).into_owned();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 200);
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(*l, format!("{i} h1=one,h2=two"));
    }

    // Cross-protocol: the native protocol reads what kcat wrote.
    let mut native = common::Client::connect(server.native);
    native.handshake();
    let mut got: Vec<Rec> = Vec::new();
    let mut offset = 0u64;
    while got.len() < 200 {
        let (res, trailer) = native.fetch("kc", 0, offset, 1000);
        assert_eq!(res.error, strom_flatbuffers::protocol::ErrorCode::None);
        let mut rest = &trailer[..];
        while !rest.is_empty() {
            let h = strom_flatbuffers::FrameHeader::ref_from(rest).expect("frame header");
            let (frame, tail) = rest.split_at(h.frame_len());
            for r in strom_flatbuffers::frame::records(frame).expect("valid frame") {
                if r.offset >= offset {
                    let hs: Vec<(String, Vec<u8>)> = r
                        .headers()
                        .map(|(k, v)| (k.to_owned(), v.to_vec()))
                        .collect();
                    got.push((r.key.map(|k| k.to_vec()), r.value.map(|v| v.to_vec()), hs));
                }
            }
            offset = h.next_offset();
            rest = tail;
        }
    }
    let expected: Vec<Rec> = input
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').expect("tab");
            (
                Some(k.as_bytes().to_vec()),
                Some(v.as_bytes().to_vec()),
                vec![
                    ("h1".into(), b"one".to_vec()),
                    ("h2".into(), b"two".to_vec()),
                ],
            )
        })
        .collect();
    assert_eq!(got, expected);
}

#[test]
fn kcat_consumes_what_the_native_protocol_produced_across_shards() {
    let Some(bin) = kcat() else {
        skip("kcat_consumes_native", "kcat");
        return;
    };
    let server = KafkaServer::start(2, temp_dir("kcat-native"));
    let mut native = common::Client::connect(server.native);
    native.handshake();
    native.create_topic("nat", 2);
    for p in 0..2 {
        let r = native
            .produce(
                "nat",
                strom_flatbuffers::protocol::Acks::Durable,
                &[(p, common::batch(&format!("p{p}"), 50))],
            )
            .expect("answer");
        assert!(r
            .results
            .iter()
            .all(|x| x.error == strom_flatbuffers::protocol::ErrorCode::None));
    }
    let mut c = kcat_cmd(bin, &server);
    c.args(["-C", "-t", "nat", "-e", "-f", "%p %o %k=%s %h %T\n"]);
    let out = String::from_utf8_lossy(&run_bounded(c, LIMIT).stdout).into_owned();
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines.len(), 100, "{out}");
    assert!(lines.contains(&"0 7 k7=p0-7 h=1 1700000000007"), "{out}");
    assert!(lines.contains(&"1 49 k49=p1-49 h=1 1700000000049"), "{out}");
}

#[test]
fn unsupported_requests_get_answers_and_the_connection_stays_open() {
    use std::io::{Read, Write};
    let server = KafkaServer::start(1, temp_dir("kafka-raw"));
    let mut s = std::net::TcpStream::connect(server.kafka).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let send = |s: &mut std::net::TcpStream, key: i16, version: i16, cid: i32| {
        let mut body = Vec::new();
        body.extend_from_slice(&key.to_be_bytes());
        body.extend_from_slice(&version.to_be_bytes());
        body.extend_from_slice(&cid.to_be_bytes());
        body.extend_from_slice(&(-1i16).to_be_bytes()); // null client id
        let mut msg = (body.len() as i32).to_be_bytes().to_vec();
        msg.extend_from_slice(&body);
        s.write_all(&msg).expect("send");
    };
    let recv = |s: &mut std::net::TcpStream| -> Vec<u8> {
        let mut len = [0u8; 4];
        s.read_exact(&mut len).expect("answer length");
        let mut b = vec![0u8; i32::from_be_bytes(len) as usize];
        s.read_exact(&mut b).expect("answer");
        b
    };
    // ApiVersions v99: a v0 answer with UNSUPPORTED_VERSION and the table.
    send(&mut s, 18, 99, 1);
    let a = recv(&mut s);
    assert_eq!(&a[..4], &1i32.to_be_bytes());
    assert_eq!(&a[4..6], &35i16.to_be_bytes());
    // An API nobody serves (DescribeAcls v0): an error answer, not a hang-up.
    send(&mut s, 29, 0, 2);
    assert_eq!(&recv(&mut s)[..4], &2i32.to_be_bytes());
    // An unknown API key.
    send(&mut s, 9999, 0, 3);
    assert_eq!(&recv(&mut s)[..4], &3i32.to_be_bytes());
    // Still serving: ApiVersions v0.
    send(&mut s, 18, 0, 4);
    let a = recv(&mut s);
    assert_eq!(&a[..4], &4i32.to_be_bytes());
    assert_eq!(&a[4..6], &0i16.to_be_bytes());
}

/// The story: the kafka-protocol crate decodes an array with
/// `Vec::with_capacity(n)` for `n` read from the wire (upstream
/// kafka-protocol-rs#152, still open), so a few bytes declaring billions of
/// Metadata topics ask for a huge reservation before failing to decode. On a
/// kernel that refuses the reservation the process would abort. The broker
/// must answer or drop that one connection and keep serving everyone.
#[test]
fn a_request_declaring_billions_of_elements_harms_no_one() {
    use std::io::{Read, Write};
    let server = KafkaServer::start(1, temp_dir("kafka-lying-array"));
    let mut bad = std::net::TcpStream::connect(server.kafka).expect("connect");
    bad.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // Metadata v0, correlation id 7, null client id, topics array of 0x7fffffff.
    let mut body = Vec::new();
    body.extend_from_slice(&3i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&7i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    body.extend_from_slice(&i32::MAX.to_be_bytes());
    body.extend_from_slice(&[0, 1, b'x']);
    let mut msg = (body.len() as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    bad.write_all(&msg).expect("send");
    let mut buf = [0u8; 64];
    let _ = bad.read(&mut buf); // an error answer or a closed connection
                                // Everyone else is still served: ApiVersions v0 on a new connection.
    let mut good = std::net::TcpStream::connect(server.kafka).expect("connect again");
    good.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&8i32.to_be_bytes());
    body.extend_from_slice(&(-1i16).to_be_bytes());
    let mut msg = (body.len() as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    good.write_all(&msg).expect("send");
    let mut len = [0u8; 4];
    good.read_exact(&mut len).expect("the broker still answers");
    let mut answer = vec![0u8; i32::from_be_bytes(len) as usize];
    good.read_exact(&mut answer).expect("answer");
    assert_eq!(&answer[..4], &8i32.to_be_bytes());
    assert_eq!(
        &answer[4..6],
        &0i16.to_be_bytes(),
        "ApiVersions without error"
    );
}
