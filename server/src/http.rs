//! The HTTP side port (shard 0): `/health` (the process is up), `/ready`
//! (every shard has opened its partitions), `/metrics` (Prometheus text).
//! Minimal HTTP/1.0-style: one request per connection, bounded head.

use crate::limits::HTTP_REQUEST_BYTES_MAX;
use crate::shard::Shard;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub async fn serve(listener: TcpListener, shard: Rc<Shard>) {
    loop {
        let accept = async { Some(listener.accept().await) };
        let stop = async {
            shard.shutdown.wait().await;
            None
        };
        match futures_lite::future::or(stop, accept).await {
            None => return,
            Some(Ok(s)) => {
                glommio::spawn_local(answer(s, shard.clone())).detach();
            }
            Some(Err(_)) => glommio::timer::sleep(Duration::from_millis(10)).await,
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
            shared.metrics.render(),
            "text/plain; version=0.0.4",
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
