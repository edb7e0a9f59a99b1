//! The HTTP side port (shard 0): `/health` (the process is up: always 200),
//! `/ready` (200 once every shard has bound its listeners and opened its
//! partitions, 503 before that and from the start of shutdown), `/metrics`
//! (Prometheus text: every shard's snapshot, gathered over the mesh with
//! `Op::Metrics` and merged; see `metrics.rs`).
//! Minimal HTTP/1.0-style: one request per connection, bounded head.

use crate::limits::{HTTP_REQUEST_BYTES_MAX, METRICS_SCRAPE_TIMEOUT_MS};
use crate::ops::fan_out;
use crate::router::{Op, Reply};
use crate::shard::Shard;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Serves from shard 0's start-up until its executor ends (through the
/// shutdown drain, where `/ready` answers 503).
pub async fn serve(listener: TcpListener, shard: Rc<Shard>) {
    loop {
        match listener.accept().await {
            Ok(s) => {
                glommio::spawn_local(answer(s, shard.clone())).detach();
            }
            Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn answer(mut s: TcpStream, shard: Rc<Shard>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < HTTP_REQUEST_BYTES_MAX {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => head.extend_from_slice(&chunk[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let shared = &shard.shared;
    let (status, body, ctype) = match path {
        "/health" => ("200 OK", "ok\n".to_owned(), "text/plain"),
        "/ready" => {
            if shared.ready.load(Ordering::SeqCst) >= shared.shards
                && !shared.shutdown.load(Ordering::SeqCst)
            {
                ("200 OK", "ready\n".to_owned(), "text/plain")
            } else {
                (
                    "503 Service Unavailable",
                    "not ready\n".to_owned(),
                    "text/plain",
                )
            }
        }
        "/metrics" => (
            "200 OK",
            scrape(&shard).await,
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        _ => ("404 Not Found", "not found\n".to_owned(), "text/plain"),
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.close().await;
}

/// Asks every shard for its snapshot (this one included) and merges what
/// arrives within `METRICS_SCRAPE_TIMEOUT_MS`; `strom_scrape_shards` says
/// how many answered.
async fn scrape(shard: &Rc<Shard>) -> String {
    let ops: Vec<(usize, Op)> = (0..shard.shards).map(|s| (s, Op::Metrics)).collect();
    let rx = fan_out(shard, ops);
    let deadline = std::time::Instant::now() + Duration::from_millis(METRICS_SCRAPE_TIMEOUT_MS);
    let mut snapshots = Vec::with_capacity(shard.shards);
    for _ in 0..shard.shards {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let next = async { rx.recv().await };
        let timer = async {
            glommio::timer::sleep(left).await;
            None
        };
        match futures_lite::future::or(next, timer).await {
            Some((_, Reply::Metrics(s))) => snapshots.push(*s),
            Some(_) => {}
            None => break,
        }
    }
    crate::metrics::render(snapshots, shard.shards)
}
