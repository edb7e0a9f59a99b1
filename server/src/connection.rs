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

use crate::gather::Gather;
use crate::handlers;
use crate::limits::*;
use crate::metrics::{Protocol, ShardMetrics};
use crate::readbuf::{Read, ReadBuf};
use crate::shard::Shard;
use crate::tls::Stream as TcpStream;
use bytes::{Bytes, BytesMut};
use futures_lite::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use strom_flatbuffers::protocol::{
    announced_len, decode_request, encode_error_response, error_name, peek_correlation_id,
    peek_message, ErrorCode, RequestBody,
};

/// One answer: the envelope and table, then the trailer buffers in order.
pub struct Outgoing {
    pub head: Vec<u8>,
    pub trailer: Vec<Bytes>,
}

enum WriteMsg {
    /// An answer and the permits it holds (its in-flight slot, its fetch
    /// bytes): released only once the answer is written, so a client that
    /// never reads its socket holds at most `INFLIGHT_REQUESTS_MAX` answers
    /// and `CONNECTION_FETCH_BYTES_MAX` bytes of fetched data, not more.
    Out(Outgoing, Vec<glommio::sync::StaticPermit>),
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
    fetch_bytes: Rc<Semaphore>,
    broken: Rc<Cell<bool>>,
    handshaken: Cell<bool>,
}

impl Conn {
    async fn send(&self, out: Outgoing) {
        let _ = self.tx.send(WriteMsg::Out(out, Vec::new())).await;
    }

    /// Answers with an error and counts the request under `api`.
    async fn send_error(
        &self,
        cid: u64,
        api: &'static str,
        code: ErrorCode,
        message: &str,
        started: Instant,
    ) {
        let name = error_name(code);
        let m = self.shard.metrics();
        m.request(Protocol::Native, api, name, started.elapsed());
        m.client_error(self.shard.id, Protocol::Native, api, name, message);
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
        fetch_bytes: Rc::new(Semaphore::new(CONNECTION_FETCH_BYTES_MAX as u64)),
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

async fn read_loop(conn: &Conn, mut half: Half) {
    let shard = &conn.shard;
    let mut rb = ReadBuf::default();
    loop {
        let buf = &mut rb.buf;
        // First pass: frame every complete message already buffered.
        loop {
            match peek_message(buf, REQUEST_BYTES_MAX) {
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
                    ShardMetrics::add(&shard.metrics().framing_errors, 1);
                    let message = format!("unframeable message, closing: {e}");
                    if let Some(cid) = peek_correlation_id(buf) {
                        conn.send_error(cid, "invalid", e.code(), &message, Instant::now())
                            .await;
                    } else {
                        shard.metrics().client_error(
                            shard.id,
                            Protocol::Native,
                            "invalid",
                            error_name(e.code()),
                            &message,
                        );
                    }
                    return;
                }
            }
        }
        if conn.broken.get() {
            return;
        }
        // Bounded by the checks above: a message announced larger than the
        // scratch buffer is read straight into `buf` (see `crate::readbuf`).
        let missing = announced_len(buf)
            .map(|n| n.saturating_sub(buf.len()))
            .unwrap_or(0);
        let read = rb.read_from(&mut half, missing, &shard.shutdown).await;
        match read {
            Read::Bytes(n) => ShardMetrics::add(&shard.metrics().bytes_in, n as u64),
            Read::Idle if conn.inflight() > 0 => {}
            Read::Eof | Read::Idle | Read::Shutdown | Read::Failed => return,
        }
    }
}

/// Decodes one framed message and starts its handling. `false` closes the
/// connection.
async fn dispatch(conn: &Conn, mut msg: BytesMut) -> bool {
    let shard = &conn.shard;
    let started = Instant::now();
    let decoded = match decode_request(&msg) {
        Ok(d) => d,
        Err(e) => {
            let message = format!("undecodable request: {e}");
            return match peek_correlation_id(&msg) {
                Some(cid) => {
                    conn.send_error(cid, "invalid", e.code(), &message, started)
                        .await;
                    true
                }
                None => {
                    ShardMetrics::add(&shard.metrics().framing_errors, 1);
                    shard.metrics().client_error(
                        shard.id,
                        Protocol::Native,
                        "invalid",
                        error_name(e.code()),
                        &message,
                    );
                    false
                }
            };
        }
    };
    let cid = decoded.correlation_id;
    let api = decoded.body.name();
    if let RequestBody::ApiVersions(r) = &decoded.body {
        let (ok, resp) = handlers::api_versions(shard, r);
        conn.handshaken.set(conn.handshaken.get() || ok);
        let m = shard.metrics();
        let name = error_name(resp.error);
        m.request(Protocol::Native, api, name, started.elapsed());
        if !ok {
            m.client_error(shard.id, Protocol::Native, api, name, &resp.message);
        }
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
            api,
            ErrorCode::HandshakeRequired,
            "send ApiVersions first on every connection",
            started,
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
    // A fetch reserves its answer's size from the connection's budget
    // before it runs (in its own task: the reader keeps its slot limit).
    let fetch_budget = match &decoded.body {
        RequestBody::Fetch(f) => Some(
            (f.max_bytes as usize)
                .clamp(1, FETCH_BYTES_MAX)
                .min(CONNECTION_FETCH_BYTES_MAX) as u64,
        ),
        _ => None,
    };
    let fetch_bytes = conn.fetch_bytes.clone();
    let broken = conn.broken.clone();
    glommio::spawn_local(async move {
        let mut permits = vec![permit];
        if let Some(n) = fetch_budget {
            match fetch_bytes.acquire_static_permit(n).await {
                Ok(p) => permits.push(p),
                Err(_) => return,
            }
            // Nobody will read this answer: do not build it.
            if broken.get() {
                return;
            }
        }
        let out = handlers::handle(&shard, cid, decoded.body, trailer, started).await;
        if let Some(out) = out {
            let _ = tx.send(WriteMsg::Out(out, permits)).await;
        }
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
    // Answers ready together go out in one send (see `gather.rs`).
    let mut batch = Gather::default();
    let mut permits: Vec<glommio::sync::StaticPermit> = Vec::new();
    let mut closing = false;
    while !closing {
        let Some(first) = rx.recv().await else {
            break;
        };
        let mut next = Some(first);
        let mut res = Ok(());
        let mut n = 0usize;
        while let Some(msg) = next.take() {
            // The permits are released once this batch is written.
            let out = match msg {
                WriteMsg::Close => {
                    closing = true;
                    break;
                }
                WriteMsg::Out(o, p) => {
                    permits.extend(p);
                    o
                }
            };
            if broken.get() || res.is_err() {
                continue;
            }
            n += out.head.len();
            res = batch.push(&mut half, &out.head).await;
            for b in &out.trailer {
                if res.is_err() {
                    break;
                }
                n += b.len();
                res = batch.push(&mut half, b).await;
            }
            if res.is_ok() && batch.gathered_bytes() >= WRITE_BATCH_BYTES {
                res = batch.flush(&mut half).await;
                // Every answer so far is written: release their permits.
                permits.clear();
            }
            // More answers already waiting join this send.
            next = futures_lite::future::poll_once(rx.recv()).await.flatten();
        }
        if res.is_ok() && !broken.get() {
            res = batch.flush(&mut half).await;
        }
        batch.clear();
        permits.clear();
        match res {
            Ok(()) => ShardMetrics::add(&shard.metrics().bytes_out, n as u64),
            Err(_) => broken.set(true),
        }
    }
}
