//! One client connection: a reader that frames and decodes requests (two
//! passes: `peek_message`, then `decode_request`) and runs each in its own
//! task, and a writer that sends answers as they complete (out of order;
//! the correlation id pairs them).
//!
//! Invariants and limits:
//! - At most `INFLIGHT_REQUESTS_MAX` requests run at once; at the limit the
//!   reader stops reading the socket (back-pressure through TCP).
//! - The first request must be ApiVersions; anything else before it gets a
//!   HandshakeRequired error.
//! - A message that cannot be framed (bad lengths) closes the connection
//!   after a best-effort error response; a framed message that does not
//!   decode gets an InvalidRequest error when its correlation id is readable
//!   and closes the connection otherwise. Nothing here affects other
//!   connections, and nothing panics on input.
//! - A connection with nothing in flight that sends nothing for
//!   `IDLE_TIMEOUT_MS` is closed.
//! - Produce batches are cut from the read buffer with `BytesMut::split_to`
//!   (no copy); fetch frames go out as the `Bytes` the engine returned.

use crate::handlers;
use crate::limits::*;
use crate::metrics::ShardMetrics;
use crate::shard::Shard;
use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;
use strom_flatbuffers::protocol::{
    announced_len, decode_request, encode_error_response, peek_correlation_id, peek_message,
    ErrorCode, RequestBody,
};

/// One answer: the envelope and table, then the trailer buffers in order.
pub struct Outgoing {
    pub head: Vec<u8>,
    pub trailer: Vec<Bytes>,
}

enum WriteMsg {
    Out(Outgoing),
    Close,
}

/// The stream, shared by the reader and the writer task. Each poll borrows
/// it only for the duration of the poll, never across an await.
#[derive(Clone)]
struct Half(Rc<RefCell<TcpStream>>);

impl AsyncRead for Half {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for Half {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}

struct Conn {
    shard: Rc<Shard>,
    tx: Rc<LocalSender<WriteMsg>>,
    inflight: Rc<Semaphore>,
    broken: Rc<Cell<bool>>,
    handshaken: Cell<bool>,
}

impl Conn {
    async fn send(&self, out: Outgoing) {
        let _ = self.tx.send(WriteMsg::Out(out)).await;
    }

    async fn send_error(&self, cid: u64, code: ErrorCode, message: &str) {
        ShardMetrics::add(&self.shard.metrics().errors, 1);
        self.send(Outgoing {
            head: encode_error_response(cid, code, message),
            trailer: Vec::new(),
        })
        .await;
    }

    fn inflight(&self) -> usize {
        INFLIGHT_REQUESTS_MAX - self.inflight.available() as usize
    }
}

pub async fn serve(shard: Rc<Shard>, stream: TcpStream) {
    shard.connections.set(shard.connections.get() + 1);
    ShardMetrics::add(&shard.metrics().connections_open, 1);
    let _ = stream.set_nodelay(true);
    let half = Half(Rc::new(RefCell::new(stream)));
    let (tx, rx) = local_channel::new_bounded(INFLIGHT_REQUESTS_MAX + 8);
    let broken = Rc::new(Cell::new(false));
    let writer = glommio::spawn_local(write_loop(shard.clone(), half.clone(), rx, broken.clone()));
    let conn = Conn {
        shard: shard.clone(),
        tx: Rc::new(tx),
        inflight: Rc::new(Semaphore::new(INFLIGHT_REQUESTS_MAX as u64)),
        broken,
        handshaken: Cell::new(false),
    };
    read_loop(&conn, half.clone()).await;
    // Let in-flight requests finish (bounded), then flush and close.
    let drain = conn.inflight.acquire(INFLIGHT_REQUESTS_MAX as u64);
    let limit = async {
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_DRAIN_MS)).await;
        Ok(())
    };
    let _ = futures_lite::future::or(drain, limit).await;
    let _ = conn.tx.send(WriteMsg::Close).await;
    writer.await;
    let mut h = half;
    let _ = h.close().await;
    shard.connections.set(shard.connections.get() - 1);
    ShardMetrics::sub(&shard.metrics().connections_open, 1);
}

enum Read {
    Bytes(usize),
    Eof,
    Idle,
    Shutdown,
    Failed,
}

async fn read_loop(conn: &Conn, mut half: Half) {
    let shard = &conn.shard;
    let mut buf = BytesMut::with_capacity(READ_BUFFER_BYTES);
    loop {
        // First pass: frame every complete message already buffered.
        loop {
            match peek_message(&buf, REQUEST_BYTES_MAX) {
                Ok(None) => break,
                Ok(Some(bounds)) => {
                    let msg = buf.split_to(bounds.message_len);
                    if !dispatch(conn, msg).await {
                        return;
                    }
                }
                Err(e) => {
                    // The stream cannot be re-synchronized: answer if we can
                    // tell whom to, then close.
                    if let Some(cid) = peek_correlation_id(&buf) {
                        conn.send_error(cid, e.code(), &e.to_string()).await;
                    } else {
                        ShardMetrics::add(&shard.metrics().errors, 1);
                    }
                    return;
                }
            }
        }
        if conn.broken.get() {
            return;
        }
        // Reserve for the announced message (bounded by the checks above).
        let want = announced_len(&buf)
            .map(|n| n.saturating_sub(buf.len()))
            .unwrap_or(0)
            .clamp(READ_BUFFER_BYTES, 1 << 20);
        let start = buf.len();
        buf.resize(start + want, 0);
        let read = {
            let dst = &mut buf[start..];
            let io = async {
                match half.read(dst).await {
                    Ok(0) => Read::Eof,
                    Ok(n) => Read::Bytes(n),
                    Err(_) => Read::Failed,
                }
            };
            let idle = async {
                glommio::timer::sleep(Duration::from_millis(IDLE_TIMEOUT_MS)).await;
                Read::Idle
            };
            let stop = async {
                shard.shutdown.wait().await;
                Read::Shutdown
            };
            futures_lite::future::or(stop, futures_lite::future::or(io, idle)).await
        };
        match read {
            Read::Bytes(n) => {
                buf.truncate(start + n);
                ShardMetrics::add(&shard.metrics().bytes_in, n as u64);
            }
            Read::Idle if conn.inflight() > 0 => buf.truncate(start),
            Read::Eof | Read::Idle | Read::Shutdown | Read::Failed => return,
        }
    }
}

/// Decodes one framed message and starts its handling. `false` closes the
/// connection.
async fn dispatch(conn: &Conn, mut msg: BytesMut) -> bool {
    let shard = &conn.shard;
    let decoded = match decode_request(&msg) {
        Ok(d) => d,
        Err(e) => {
            shard.metrics().request("invalid");
            return match peek_correlation_id(&msg) {
                Some(cid) => {
                    conn.send_error(cid, e.code(), &format!("undecodable request: {e}"))
                        .await;
                    true
                }
                None => false,
            };
        }
    };
    shard.metrics().request(decoded.body.name());
    let cid = decoded.correlation_id;
    if let RequestBody::ApiVersions(r) = &decoded.body {
        let (ok, resp) = handlers::api_versions(shard, r);
        conn.handshaken.set(conn.handshaken.get() || ok);
        let body = strom_flatbuffers::protocol::ResponseBody::ApiVersions(resp);
        let head = strom_flatbuffers::protocol::encode_response(cid, &body).unwrap_or_default();
        conn.send(Outgoing {
            head,
            trailer: Vec::new(),
        })
        .await;
        return true;
    }
    if !conn.handshaken.get() {
        conn.send_error(
            cid,
            ErrorCode::HandshakeRequired,
            "send ApiVersions first on every connection",
        )
        .await;
        return true;
    }
    // Back-pressure: wait for a slot before reading any further.
    let Ok(permit) = conn.inflight.clone().acquire_static_permit(1).await else {
        return false;
    };
    let trailer = msg.split_off(decoded.trailer.start);
    drop(msg);
    let shard = shard.clone();
    let tx = conn.tx.clone();
    glommio::spawn_local(async move {
        let out = handlers::handle(&shard, cid, decoded.body, trailer).await;
        if let Some(out) = out {
            let _ = tx.send(WriteMsg::Out(out)).await;
        }
        drop(permit);
    })
    .detach();
    true
}

async fn write_loop(
    shard: Rc<Shard>,
    mut half: Half,
    rx: LocalReceiver<WriteMsg>,
    broken: Rc<Cell<bool>>,
) {
    while let Some(msg) = rx.recv().await {
        let out = match msg {
            WriteMsg::Close => break,
            WriteMsg::Out(o) => o,
        };
        if broken.get() {
            continue;
        }
        let mut n = out.head.len();
        let mut res = half.write_all(&out.head).await;
        for b in &out.trailer {
            if res.is_err() {
                break;
            }
            n += b.len();
            res = half.write_all(b).await;
        }
        match res {
            Ok(()) => ShardMetrics::add(&shard.metrics().bytes_out, n as u64),
            Err(_) => broken.set(true),
        }
    }
}
