//! Test helpers: start the real `strom-server` binary on loopback with a
//! unique data directory, and a tiny blocking client built on
//! `strom_flatbuffers::protocol`. The child is killed on drop.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::*;
use strom_flatbuffers::{BatchBuilder, RecordIn};

/// A fresh temporary directory, removed when the returned guard (or the
/// server it is handed to) is dropped, unless `STROM_KEEP_TEST_DATA` is set.
pub fn temp_dir(tag: &str) -> strom_tests::TempDir {
    strom_tests::TempDir::new(&format!("strom-srv-{tag}"))
}

pub struct Server {
    pub child: Option<Child>,
    pub native: SocketAddr,
    pub http: SocketAddr,
    pub data_dir: PathBuf,
    pub cores: usize,
    /// The temporary data directory this server owns; dropped (removed)
    /// after the child is killed.
    pub owned_dir: Option<strom_tests::TempDir>,
}

impl Server {
    pub fn start(cores: usize, data_dir: impl Into<strom_tests::DataDir>) -> Server {
        let (data_dir, owned_dir) = data_dir.into().into_parts();
        let mut child = Command::new(env!("CARGO_BIN_EXE_strom-server"))
            .args(["--cores", &cores.to_string()])
            .args(["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .args(["--kafka-listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn strom-server");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Keep draining after the test stops listening, so that the
                // server never writes into a closed pipe.
                let _ = tx.send(line);
            }
        });
        let mut native = None;
        let mut http = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while native.is_none() || http.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx
                .recv_timeout(left)
                .expect("server printed its listening lines");
            if let Some(a) = line.strip_prefix("listening native=") {
                native = Some(a.parse().expect("addr"));
            } else if let Some(a) = line.strip_prefix("listening http=") {
                http = Some(a.parse().expect("addr"));
            }
        }
        Server {
            child: Some(child),
            native: native.expect("native"),
            http: http.expect("http"),
            data_dir,
            cores,
            owned_dir,
        }
    }

    pub fn client(&self) -> Client {
        let mut c = Client::connect(self.native);
        c.handshake();
        c
    }

    /// SIGTERM and wait (bounded); returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        // SAFETY: kill with a pid we own.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("server did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn http_get(&self, path: &str) -> String {
        let mut s = TcpStream::connect(self.http).expect("connect http");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Client {
    pub stream: TcpStream,
    next_cid: u64,
}

pub struct Answer {
    pub cid: u64,
    pub body: ResponseBody,
    pub trailer: Vec<u8>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        stream.set_nodelay(true).expect("nodelay");
        Client {
            stream,
            next_cid: 1,
        }
    }

    pub fn handshake(&mut self) -> ApiVersionsResponse {
        match self.call(RequestBody::ApiVersions(ApiVersionsRequest {
            client_name: "server-tests".into(),
            min_version: 1,
            max_version: 1,
        })) {
            ResponseBody::ApiVersions(v) => {
                assert_eq!(v.error, ErrorCode::None, "{}", v.message);
                v
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn send(&mut self, body: &RequestBody, trailer: &[u8]) -> u64 {
        let cid = self.next_cid;
        self.next_cid += 1;
        let mut msg = encode_request(cid, body).expect("encode");
        msg.extend_from_slice(trailer);
        self.stream.write_all(&msg).expect("send");
        cid
    }

    /// Reads one response, or `None` if the server closed the connection.
    pub fn recv(&mut self) -> Option<Answer> {
        let mut len = [0u8; 4];
        if self.stream.read_exact(&mut len).is_err() {
            return None;
        }
        let total = u32::from_le_bytes(len) as usize;
        let mut msg = vec![0u8; 4 + total];
        msg[..4].copy_from_slice(&len);
        self.stream.read_exact(&mut msg[4..]).ok()?;
        let d = decode_response(&msg).expect("valid response");
        Some(Answer {
            cid: d.correlation_id,
            body: d.body,
            trailer: msg[d.trailer].to_vec(),
        })
    }

    pub fn call_with(&mut self, body: RequestBody, trailer: &[u8]) -> Answer {
        let cid = self.send(&body, trailer);
        let a = self.recv().expect("response");
        assert_eq!(a.cid, cid);
        a
    }

    pub fn call(&mut self, body: RequestBody) -> ResponseBody {
        self.call_with(body, &[]).body
    }

    pub fn create_topic(&mut self, name: &str, partitions: u32) {
        match self.call(RequestBody::CreateTopics(CreateTopicsRequest {
            topics: vec![CreateTopic {
                name: name.into(),
                partitions,
                configs: vec![],
            }],
        })) {
            ResponseBody::CreateTopics(r) => {
                assert_eq!(
                    r.results[0].error,
                    ErrorCode::None,
                    "{}",
                    r.results[0].message
                )
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Produces one batch per (partition, frame); returns the results.
    pub fn produce(
        &mut self,
        topic: &str,
        acks: Acks,
        batches: &[(u32, Vec<u8>)],
    ) -> Option<ProduceResponse> {
        let req = ProduceRequest {
            acks,
            timeout_ms: 10_000,
            batches: batches
                .iter()
                .map(|(p, f)| ProduceBatch {
                    topic: topic.into(),
                    partition: *p,
                    batch_len: f.len() as u32,
                })
                .collect(),
        };
        let trailer: Vec<u8> = batches
            .iter()
            .flat_map(|(_, f)| f.iter().copied())
            .collect();
        let body = RequestBody::Produce(req);
        if acks == Acks::None {
            self.send(&body, &trailer);
            return None;
        }
        match self.call_with(body, &trailer).body {
            ResponseBody::Produce(r) => Some(r),
            other => panic!("unexpected {other:?}"),
        }
    }

    pub fn fetch(
        &mut self,
        topic: &str,
        partition: u32,
        offset: u64,
        max_wait_ms: u32,
    ) -> (FetchResult, Vec<u8>) {
        let a = self.call_with(
            RequestBody::Fetch(FetchRequest {
                max_wait_ms,
                min_bytes: 1,
                max_bytes: 16 << 20,
                partitions: vec![FetchPartition {
                    topic: topic.into(),
                    partition,
                    offset,
                    partition_max_bytes: 8 << 20,
                }],
                read_committed: false,
            }),
            &[],
        );
        match a.body {
            ResponseBody::Fetch(mut r) => (r.results.remove(0), a.trailer),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A batch of `n` records with values `{tag}-{i}`.
pub fn batch(tag: &str, n: usize) -> Vec<u8> {
    let mut b = BatchBuilder::new();
    for i in 0..n {
        let v = format!("{tag}-{i}");
        let k = format!("k{i}");
        b.push(&RecordIn {
            timestamp_ms: 1_700_000_000_000 + i as i64,
            key: Some(k.as_bytes()),
            value: Some(v.as_bytes()),
            headers: &[("h", b"1")],
        });
    }
    b.finish()
}

/// Every record value in a fetch trailer, in order.
pub fn values(trailer: &[u8]) -> Vec<(u64, String)> {
    let mut out = Vec::new();
    for f in frames(trailer) {
        let f = f.expect("whole frame");
        for r in strom_flatbuffers::records(f).expect("records") {
            out.push((
                r.offset,
                String::from_utf8_lossy(r.value.unwrap_or(b"")).into_owned(),
            ));
        }
    }
    out
}
