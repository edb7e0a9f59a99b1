//! One Kafka client connection. The reader frames requests (two passes:
//! [`codec::peek_request`], then [`codec::decode_request`]) and runs each in
//! its own task; the writer awaits those tasks in request order, because
//! Kafka clients expect answers in the order they asked.
//!
//! Invariants and limits:
//! - At most `KAFKA_INFLIGHT_REQUESTS_MAX` requests are in flight; past it
//!   the reader stops reading (back-pressure through TCP).
//! - A request larger than `KAFKA_REQUEST_BYTES_MAX` or with a size that
//!   cannot hold a header closes the connection (the stream cannot be
//!   re-synchronized). Any other request gets an answer, an error answer for
//!   APIs and versions not served.
//! - Produce with acks=0 gets no answer, as Kafka clients expect.
//! - Idle connections (nothing in flight, nothing sent) close after
//!   `IDLE_TIMEOUT_MS`; shutdown stops reading and drains what is in flight.

use super::codec::{self, Incoming};
use super::handlers::{self, Ctx};
use super::sasl::{self, Gate, SaslState};
use crate::limits::*;
use crate::metrics::{Protocol, ShardMetrics};
use crate::readbuf::{Read, ReadBuf};
use crate::shard::Shard;
use crate::tls::Stream as TcpStream;
use bytes::Bytes;
use futures_lite::io::AsyncWriteExt;
use glommio::channels::local_channel::{self, LocalReceiver};
use glommio::task::JoinHandle;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

/// An answer in the making: `None` for requests that get no answer. An
/// answer is its encoded bytes in order (fetched records as buffers of
/// their own, see `splice.rs`).
enum Pending {
    Task(JoinHandle<Option<Vec<Bytes>>>),
    Ready(Vec<Bytes>),
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    shard.connections.set(shard.connections.get() + 1);
    ShardMetrics::add(&shard.metrics().connections_open, 1);
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let peer = stream.peer_addr().ok();
    let stream = Rc::new(RefCell::new(stream));
    let (tx, rx) = local_channel::new_bounded(KAFKA_INFLIGHT_REQUESTS_MAX);
    let inflight = Rc::new(Cell::new(0usize));
    let writer = glommio::spawn_local(write_loop(
        shard.clone(),
        stream.clone(),
        rx,
        inflight.clone(),
    ));
    let cert_principal = stream.borrow().cert_principal.clone();
    let ctx = Rc::new(Ctx::new(shard.clone(), local, peer));
    if let Some(p) = cert_principal {
        *ctx.principal.borrow_mut() = p;
    }
    read_loop(&ctx, &stream, &tx, &inflight, peer.map(|p| p.ip())).await;
    drop(tx);
    let drain = async {
        writer.await;
    };
    let limit = glommio::timer::sleep(Duration::from_millis(SHUTDOWN_DRAIN_MS));
    futures_lite::future::or(drain, limit).await;
    shard.connections.set(shard.connections.get() - 1);
    ShardMetrics::sub(&shard.metrics().connections_open, 1);
}

async fn read_loop(
    ctx: &Rc<Ctx>,
    stream: &Rc<RefCell<TcpStream>>,
    tx: &local_channel::LocalSender<Pending>,
    inflight: &Cell<usize>,
    peer_ip: Option<std::net::IpAddr>,
) {
    let shard = &ctx.shard;
    let store = shard.shared.auth.clone();
    let mut sasl = SaslState::default();
    let mut rb = ReadBuf::default();
    let mut reader = ReadHalf(stream.clone());
    loop {
        let buf = &mut rb.buf;
        loop {
            match codec::peek_request(buf, KAFKA_REQUEST_BYTES_MAX) {
                Ok(None) => break,
                Ok(Some(total)) => {
                    let mut msg = buf.split_to(total);
                    let body = msg.split_off(4).freeze();
                    if let Some(head) = codec::peek_head(&body) {
                        if !sasl::admit_head(&store, &sasl, &head) {
                            shard.metrics().client_error(
                                shard.id,
                                Protocol::Kafka,
                                crate::metrics::kafka_api_name(
                                    kafka_protocol::messages::ApiKey::try_from(head.api_key)
                                        .unwrap_or(kafka_protocol::messages::ApiKey::ApiVersions),
                                ),
                                "SaslAuthenticationRequired",
                                "request before SASL authentication, closing",
                            );
                            return;
                        }
                    }
                    let mut close_after = false;
                    let pending = match codec::decode_request(body) {
                        Incoming::Close => {
                            let m = shard.metrics();
                            ShardMetrics::add(&m.framing_errors, 1);
                            m.client_error(
                                shard.id,
                                Protocol::Kafka,
                                "invalid",
                                "InvalidRequest",
                                "unreadable request header, closing",
                            );
                            return;
                        }
                        Incoming::Answer(b) => {
                            let m = shard.metrics();
                            m.request(
                                Protocol::Kafka,
                                "unsupported",
                                "UnsupportedVersion",
                                Duration::ZERO,
                            );
                            m.client_error(
                                shard.id,
                                Protocol::Kafka,
                                "unsupported",
                                "UnsupportedVersion",
                                "an API or version this edge does not serve",
                            );
                            Pending::Ready(vec![b.freeze()])
                        }
                        Incoming::Request(d) => match sasl::gate(&store, &mut sasl, peer_ip, &d) {
                            Gate::Close => return,
                            Gate::Answer { bytes, close } => {
                                if let Some(p) = &sasl.principal {
                                    *ctx.principal.borrow_mut() = p.clone();
                                }
                                let m = shard.metrics();
                                m.request(
                                    Protocol::Kafka,
                                    crate::metrics::kafka_api_name(d.key),
                                    if close {
                                        "SaslAuthenticationFailed"
                                    } else {
                                        "None"
                                    },
                                    Duration::ZERO,
                                );
                                if close {
                                    m.client_error(
                                        shard.id,
                                        Protocol::Kafka,
                                        crate::metrics::kafka_api_name(d.key),
                                        "SaslAuthenticationFailed",
                                        &format!("SASL refused for {peer_ip:?}, closing"),
                                    );
                                }
                                close_after = close;
                                Pending::Ready(vec![bytes])
                            }
                            Gate::Pass => {
                                let ctx = ctx.clone();
                                let started = std::time::Instant::now();
                                Pending::Task(
                                    glommio::spawn_local(async move {
                                        handlers::handle(&ctx, *d, started).await
                                    })
                                    .detach(),
                                )
                            }
                        },
                    };
                    inflight.set(inflight.get() + 1);
                    if tx.send(pending).await.is_err() || close_after {
                        return;
                    }
                }
                Err(e) => {
                    let m = shard.metrics();
                    ShardMetrics::add(&m.framing_errors, 1);
                    m.client_error(
                        shard.id,
                        Protocol::Kafka,
                        "invalid",
                        "InvalidRequest",
                        &format!("unframeable message, closing: {e:?}"),
                    );
                    return;
                }
            }
        }
        let missing = codec::announced_len(buf)
            .map(|n| n.saturating_sub(buf.len()))
            .unwrap_or(0);
        match rb.read_from(&mut reader, missing, &shard.shutdown).await {
            Read::Bytes(n) => ShardMetrics::add(&shard.metrics().bytes_in, n as u64),
            Read::Idle if inflight.get() > 0 => {}
            Read::Eof | Read::Idle | Read::Shutdown | Read::Failed => return,
        }
    }
}

/// Borrows the stream only for the duration of each poll.
struct ReadHalf(Rc<RefCell<TcpStream>>);

impl futures_lite::io::AsyncRead for ReadHalf {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl futures_lite::io::AsyncWrite for ReadHalf {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

async fn write_loop(
    shard: Rc<Shard>,
    stream: Rc<RefCell<TcpStream>>,
    rx: LocalReceiver<Pending>,
    inflight: Rc<Cell<usize>>,
) {
    let mut w = ReadHalf(stream);
    let mut broken = false;
    let mut gather = crate::gather::Gather::default();
    while let Some(p) = rx.recv().await {
        let out = match p {
            Pending::Ready(b) => Some(b),
            Pending::Task(t) => t.await.flatten(),
        };
        inflight.set(inflight.get().saturating_sub(1));
        let Some(out) = out else { continue };
        let len: usize = out.iter().map(|b| b.len()).sum();
        if len == 0 {
            // An answer that could not be encoded: the client would pair
            // every later answer with the wrong request.
            broken = true;
            let _ = w.close().await;
        }
        if broken {
            continue;
        }
        // Small parts (the encoded head, a length) leave in one send; a
        // large part (fetched records) from its own buffer (`gather.rs`).
        let mut res = Ok(());
        for part in &out {
            res = gather.push(&mut w, part).await;
            if res.is_err() {
                break;
            }
        }
        if res.is_ok() {
            res = gather.flush(&mut w).await;
        }
        gather.clear();
        match res {
            Ok(()) => ShardMetrics::add(&shard.metrics().bytes_out, len as u64),
            Err(_) => broken = true,
        }
    }
}
