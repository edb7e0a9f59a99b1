//! The operations layer: what Strom does, independent of the protocol a
//! request arrived in. Each edge (native, Kafka, HTTP) decodes a request,
//! translates it into the operations here, and encodes their result; no
//! edge has its own copy of routing, fan-out, fetch or long poll.
//!
//! - [`call`] / [`fan_out`] / [`collect`]: run an [`Op`] on the shard that
//!   owns its partitions, in place or over the mesh.
//! - [`fetch`]: one fetch with long poll and a byte budget.
//! - [`owner`]: what the owning shard does with an [`Op`].
//! - [`init_producer_id`]: producer ids and epoch bumps for idempotent
//!   producers of every protocol.
//!
//! Invariants:
//! - An operation on a partition runs on the shard that owns it, and only
//!   there; a request on another shard reaches it through [`call`].
//! - A fan-out answers every part it was given: by the owner's reply, the
//!   owner's failure (that shard's parts only), or the deadline.

pub mod cluster;
pub mod fetch;
pub mod owner;
pub mod producer_id;

pub use fetch::{fetch, FetchPart, FetchSpec};
pub use producer_id::{init_producer_id, InitProducer, InitProducerIdError};

use crate::error::WireError;
use crate::router::{Op, Reply};
use crate::shard::Shard;
use crate::shutdown::first_of;
use glommio::channels::local_channel::{self, LocalReceiver};
use owner::execute;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Instant;
use strom_flatbuffers::protocol::ErrorCode;

/// Runs `op` on `target`: in place when this shard owns it, else over the
/// mesh. Boxed because admin operations call back into it.
pub fn call(shard: &Rc<Shard>, target: usize, op: Op) -> Pin<Box<dyn Future<Output = Reply>>> {
    let shard = shard.clone();
    Box::pin(async move {
        if target == shard.id {
            execute(&shard, op).await
        } else {
            shard.metrics().forwarded(target);
            shard.router.forward(target, op).await
        }
    })
}

/// Runs every op in its own detached task (so that a caller giving up
/// cancels nothing half-done) and delivers the replies as they come.
pub fn fan_out(shard: &Rc<Shard>, ops: Vec<(usize, Op)>) -> LocalReceiver<(usize, Reply)> {
    let (tx, rx) = local_channel::new_bounded(ops.len().max(1));
    let tx = Rc::new(tx);
    for (target, op) in ops {
        let fut = call(shard, target, op);
        let tx = tx.clone();
        glommio::spawn_local(async move {
            let reply = fut.await;
            let _ = tx.try_send((target, reply));
        })
        .detach();
    }
    rx
}

/// The long poll of every protocol edge: waits on each shard of
/// `per_shard` (shard -> (topic, partition, offset seen)) until any of those
/// partitions grows past its offset, `deadline` passes or the server shuts
/// down; then ends the waits still running on the other shards, so none
/// outlives the fetch it served (see `crate::waits`).
pub async fn long_poll(
    shard: &Rc<Shard>,
    per_shard: BTreeMap<usize, Vec<(String, u32, u64)>>,
    deadline: Instant,
) {
    if per_shard.is_empty() {
        return;
    }
    let id = shard.router.waits.next_id(shard.id);
    let left = deadline.saturating_duration_since(Instant::now());
    let wait_ms = u64::try_from(left.as_millis()).unwrap_or(u64::MAX);
    let targets: Vec<usize> = per_shard.keys().copied().collect();
    let ops: Vec<(usize, Op)> = per_shard
        .into_iter()
        .map(|(s, items)| (s, Op::Wait { id, items, wait_ms }))
        .collect();
    let rx = fan_out(shard, ops);
    let answered = Rc::new(std::cell::Cell::new(None));
    let first = answered.clone();
    let futs: Vec<Pin<Box<dyn Future<Output = ()>>>> = vec![
        Box::pin(async move {
            if let Some((target, _done)) = rx.recv().await {
                first.set(Some(target));
            }
        }),
        Box::pin(glommio::timer::sleep(left)),
        Box::pin(shard.shutdown.wait()),
    ];
    first_of(futs).await;
    // The wait that answered has ended by itself; end the others.
    let cancels: Vec<(usize, Op)> = targets
        .into_iter()
        .filter(|s| Some(*s) != answered.get())
        .map(|s| (s, Op::CancelWait { id }))
        .collect();
    if !cancels.is_empty() {
        drop(fan_out(shard, cancels));
    }
}

/// Collects up to `n` replies, or as many as arrive before `deadline`.
pub async fn collect(
    rx: &LocalReceiver<(usize, Reply)>,
    n: usize,
    deadline: Option<Instant>,
) -> Vec<(usize, Reply)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let next = async { rx.recv().await };
        let got = match deadline {
            None => next.await,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                let timer = async {
                    glommio::timer::sleep(left).await;
                    None
                };
                futures_lite::future::or(next, timer).await
            }
        };
        match got {
            Some(r) => out.push(r),
            None => break,
        }
    }
    out
}

/// The error a reply of an unexpected kind stands for (a shard's failure,
/// or a programming error).
pub fn reply_error(reply: Reply) -> WireError {
    match reply {
        Reply::Failed(e) => e,
        _ => WireError::new(ErrorCode::Internal, "unexpected reply kind"),
    }
}
