//! The body of one shard's executor (node layer): builds the [`Shard`]
//! from what start-up hands it, binds its listeners (native, Kafka, and
//! HTTP on shard 0), joins the mesh and serves its receive loop, opens the
//! partitions it owns, accepts connections until shutdown, then drains and
//! closes.
//!
//! Invariants:
//! - Every incoming mesh call runs in its own task and its answer is sent
//!   from that task, so two shards calling each other cannot deadlock.
//! - A shard's exit, even by panic, is counted in `Shared::exited`.

use crate::connection;
use crate::error::ServerError;
use crate::limits::*;
use crate::metadata::Metadata;
use crate::metrics::ShardMetrics;
use crate::router::{MeshBatch, MeshMsg, Router};
use crate::shard::{Shard, Shared};
use crate::shutdown::Event;
use glommio::channels::channel_mesh::{MeshBuilder, Receivers};
use glommio::net::TcpListener;
use glommio::sync::Semaphore;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// What start-up hands one shard.
pub struct ShardStart {
    pub id: usize,
    /// The native listener's address; `None` for an in-process node, which
    /// binds no listener of any kind (see `node::run_in_process`).
    pub listen: Option<SocketAddr>,
    /// Where this shard alone accepts native connections (`--shard-ports`).
    pub direct: Option<SocketAddr>,
    /// Shard 0 only: the HTTP address.
    pub http: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    pub mesh: Option<MeshBuilder<MeshBatch, glommio::channels::channel_mesh::Full>>,
    /// Where to report the bound addresses or a failure.
    pub bound: std::sync::mpsc::Sender<Result<Bound, String>>,
    /// Where to report readiness (partitions open) or a failure.
    pub ready: std::sync::mpsc::Sender<Result<usize, String>>,
    /// In-process nodes: what to run on this shard once every shard is
    /// ready; when it returns, the node shuts down.
    pub body: Option<InProcessBody>,
}

/// What an in-process node runs on one of its shards (see [`ShardStart::body`]).
pub type InProcessBody =
    Box<dyn FnOnce(Rc<Shard>) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send>;

fn bind_err(addr: SocketAddr, e: impl std::fmt::Display) -> String {
    ServerError::Bind {
        addr: addr.to_string(),
        reason: e.to_string(),
    }
    .to_string()
}

/// Counts a shard's exit, even by panic, so that the main thread notices.
struct ExitGuard(Arc<Shared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.0.exited.fetch_add(1, Ordering::SeqCst);
    }
}

/// The addresses one shard bound (all unspecified for an in-process node).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    pub native: SocketAddr,
    /// Shard 0 only.
    pub http: Option<SocketAddr>,
    /// The shard's own port (`--shard-ports`), if any.
    pub direct: Option<SocketAddr>,
}

impl Default for Bound {
    fn default() -> Self {
        Bound {
            native: SocketAddr::from(([0, 0, 0, 0], 0)),
            http: None,
            direct: None,
        }
    }
}

/// The body of one shard's executor.
pub async fn run(start: ShardStart) {
    let _exit = ExitGuard(start.shared.clone());
    let ShardStart {
        id,
        listen,
        direct,
        http,
        shared,
        mesh,
        bound,
        ready,
        body,
    } = start;
    if let Some(max) = crate::config::engine_defaults().shard_cache_bytes_max {
        strom_engine::log::set_shard_cache_bytes_max(max);
    }
    // A periodic timer from the first moment: twice under heavy load a
    // start-up hung with both executors asleep in io_uring wait although
    // work was pending (a wake-up from another thread, e.g. a spawn_blocking
    // completion, was lost; attaching a debugger woke it). A timer bounds
    // the cost of such a loss to one tick. Mitigation, not a root cause fix.
    glommio::spawn_local(async {
        loop {
            glommio::timer::sleep(Duration::from_millis(REACTOR_NUDGE_MS)).await;
        }
    })
    .detach();
    let listeners = match listen {
        Some(listen) => match bind_all(listen, direct, http, &shared) {
            Ok(l) => Some(l),
            Err(e) => {
                let _ = bound.send(Err(e));
                return;
            }
        },
        None => None,
    };
    let _ = bound.send(Ok(match &listeners {
        Some(l) => Bound {
            native: l.native.local_addr().unwrap_or(l.native_addr),
            http: l.http.as_ref().and_then(|l| l.local_addr().ok()),
            direct: l.direct.as_ref().and_then(|l| l.local_addr().ok()),
        },
        None => Bound::default(),
    }));

    // Join the mesh and learn every shard's peer id.
    let (senders, receivers) = match mesh {
        Some(m) => match m.join().await {
            Ok((s, r)) => (Some(s), Some(r)),
            Err(_) => {
                let _ = ready.send(Err(format!("shard {id}: joining the mesh failed")));
                return;
            }
        },
        None => (None, None),
    };
    if let Some(s) = &senders {
        shared.peers[id].store(s.peer_id(), Ordering::SeqCst);
    } else {
        shared.peers[id].store(0, Ordering::SeqCst);
    }
    while shared
        .peers
        .iter()
        .any(|p| p.load(Ordering::SeqCst) == usize::MAX)
    {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(shared.placement.shards, shared.shards);
    let peer_of = shared
        .peers
        .iter()
        .map(|p| p.load(Ordering::SeqCst))
        .collect();
    // Cluster mode: this shard's Raft node (its port bound now, so a
    // failure is a start-up failure).
    let producers = Rc::new(crate::producers::Producers::default());
    let (replication, meta_entries) = match &shared.cluster {
        None => (None, None),
        Some(c) => {
            let log =
                crate::cluster::replica_log_config(crate::config::engine_defaults().log_config());
            match crate::cluster::start(c.clone(), id, &shared.data_dir, log, producers.clone())
                .await
            {
                Ok((r, m)) => (Some(r), m),
                Err(e) => {
                    let _ = ready.send(Err(format!("shard {id}: {e}")));
                    return;
                }
            }
        }
    };
    let shard = Rc::new(Shard {
        id,
        shards: shared.shards,
        data_dir: shared.data_dir.clone(),
        metadata: RefCell::new(Metadata {
            shard_count: shared.shards as u32,
            placement_epoch: shared.placement.epoch,
            offsets_partitions: shared.placement.offsets_partitions,
            ..Metadata::default()
        }),
        partitions: RefCell::new(HashMap::new()),
        router: Router::new(id, senders, peer_of),
        groups: crate::group::service::GroupShard::new(
            shared.group_config.clone(),
            shared.placement,
        ),
        txn: crate::txn::TxnShard::new(),
        shared: shared.clone(),
        admin_lock: Semaphore::new(1),
        apply_lock: Semaphore::new(1),
        connections: Cell::new(0),
        shutdown: Event::default(),
        producers,
        metrics: ShardMetrics::default(),
        storage: shared.storage.open(),
        replication,
        replicated: RefCell::new(HashMap::new()),
        opened_instances: Cell::new(0),
    });

    if let Some(r) = receivers {
        serve_mesh(&shard, r);
    }
    let Listeners {
        native: listener,
        http: http_listener,
        kafka: kafka_listener,
        direct: direct_listener,
        ..
    } = match listeners {
        Some(l) => l,
        None => {
            return run_in_process(shard, body, ready).await;
        }
    };
    // HTTP first, so that /health and a 503 /ready answer during start-up.
    if let Some(h) = http_listener {
        glommio::spawn_local(crate::http::serve(h, shard.clone())).detach();
    }
    shard.apply(shared.initial_metadata.clone()).await;
    start_producer_upkeep(&shard);
    // Only now: the shard's metadata holds the stored `cluster_meta_index`,
    // so entries the metadata group replays at open are recognized as
    // applied. Started before, the apply task took every replayed entry
    // for new, wrote older topic tables back and removed the replicas of
    // every later topic (found by tests/tests/cluster_faults.rs).
    if let Some(entries) = meta_entries {
        glommio::spawn_local(crate::ops::cluster::apply_metadata(shard.clone(), entries)).detach();
        glommio::spawn_local(crate::ops::cluster::publish_controller(shard.clone())).detach();
    }
    shard.groups.load(&shard).await;
    shard.txn.load(&shard).await;
    tracing::debug!(
        shard = id,
        partitions = shard.partitions.borrow().len(),
        "shard ready"
    );
    shared.ready.fetch_add(1, Ordering::SeqCst);
    let _ = ready.send(Ok(id));

    // Watch the process-wide flag.
    let watcher = {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while !shard.shared.shutdown.load(Ordering::SeqCst) {
                glommio::timer::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
            }
            shard.shutdown.fire();
        })
    };
    if let Some(k) = kafka_listener {
        glommio::spawn_local(crate::kafka::serve(shard.clone(), k)).detach();
    }
    let direct_loop = direct_listener.map(|l| {
        let shard = shard.clone();
        glommio::spawn_local(async move { accept_loop(&shard, l).await })
    });
    accept_loop(&shard, listener).await;
    if let Some(d) = direct_loop {
        d.await;
    }
    watcher.await;

    drain_and_close(&shard).await;
}

/// Single node: the shard's producer-state snapshots and expiry
/// (`Shard::producer_upkeep`); a replicated partition's state follows its
/// Raft log instead.
fn start_producer_upkeep(shard: &Rc<Shard>) {
    if shard.replication.is_none() {
        glommio::spawn_local(shard.clone().producer_upkeep()).detach();
        // Compaction too: a replicated partition's log is its Raft log.
        glommio::spawn_local(shard.clone().cleaner_upkeep()).detach();
    }
}

/// Drain: connections finish their in-flight requests and close; the mesh
/// is served until every shard has drained; then the partitions close.
async fn drain_and_close(shard: &Rc<Shard>) {
    let shared = &shard.shared;
    let deadline = std::time::Instant::now() + Duration::from_millis(SHUTDOWN_DRAIN_MS);
    while shard.connections.get() > 0 && std::time::Instant::now() < deadline {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shared.drained.fetch_add(1, Ordering::SeqCst);
    while shared.drained.load(Ordering::SeqCst) < shared.shards
        && std::time::Instant::now() < deadline
    {
        glommio::timer::sleep(Duration::from_millis(5)).await;
    }
    shard.close_all().await;
    shard.groups.close().await;
    shard.txn.close().await;
}

/// An in-process shard after start-up: opens its partitions, runs the body
/// (if this shard has one) and then asks the node to shut down, or waits
/// for that; then drains and closes like a listening shard.
async fn run_in_process(
    shard: Rc<Shard>,
    body: Option<InProcessBody>,
    ready: std::sync::mpsc::Sender<Result<usize, String>>,
) {
    let shared = shard.shared.clone();
    shard.apply(shared.initial_metadata.clone()).await;
    start_producer_upkeep(&shard);
    shard.groups.load(&shard).await;
    shard.txn.load(&shard).await;
    shared.ready.fetch_add(1, Ordering::SeqCst);
    let _ = ready.send(Ok(shard.id));
    while shared.ready.load(Ordering::SeqCst) < shared.shards {
        glommio::timer::sleep(Duration::from_millis(1)).await;
    }
    if let Some(body) = body {
        body(shard.clone()).await;
        shared.shutdown.store(true, Ordering::SeqCst);
    }
    // A shard that panicked (its body, say) ends the node too.
    while !shared.shutdown.load(Ordering::SeqCst) && shared.exited.load(Ordering::SeqCst) == 0 {
        glommio::timer::sleep(Duration::from_millis(SHUTDOWN_POLL_MS)).await;
    }
    shard.shutdown.fire();
    drain_and_close(&shard).await;
}

/// A listening shard's sockets.
struct Listeners {
    native: TcpListener,
    native_addr: SocketAddr,
    http: Option<TcpListener>,
    kafka: Option<TcpListener>,
    direct: Option<TcpListener>,
}

/// Binds first, so that shard 0 can report the real port (port 0 works).
/// Every shard binds the Kafka port shard 0 got (recorded in `shared`).
fn bind_all(
    listen: SocketAddr,
    direct: Option<SocketAddr>,
    http: Option<SocketAddr>,
    shared: &Shared,
) -> Result<Listeners, String> {
    let native = TcpListener::bind(listen).map_err(|e| bind_err(listen, e))?;
    let http = match http {
        Some(a) => Some(TcpListener::bind(a).map_err(|e| bind_err(a, e))?),
        None => None,
    };
    let kafka = crate::kafka::bind(&shared.kafka)?;
    let direct = match direct {
        Some(a) => Some(TcpListener::bind(a).map_err(|e| bind_err(a, e))?),
        None => None,
    };
    Ok(Listeners {
        native,
        native_addr: listen,
        http,
        kafka,
        direct,
    })
}

async fn accept_loop(shard: &Rc<Shard>, listener: TcpListener) {
    crate::shard::accept_until_shutdown(
        shard,
        listener,
        crate::metrics::Protocol::Native,
        shard.shared.tls.native.clone(),
        connection::serve,
    )
    .await;
}

/// One task per peer: answers go to their waiting call; each call runs in
/// its own task so that this loop never waits on a send.
fn serve_mesh(shard: &Rc<Shard>, mut receivers: Receivers<MeshBatch>) {
    for (peer, rx) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(batch) = rx.recv().await {
                for msg in batch {
                    match msg {
                        MeshMsg::Reply { id, reply } => shard.router.complete(id, reply),
                        MeshMsg::Call { id, op } => {
                            let shard = shard.clone();
                            glommio::spawn_local(async move {
                                let reply = crate::ops::owner::execute(&shard, op).await;
                                shard.router.answer(peer, id, reply);
                            })
                            .detach();
                        }
                    }
                }
            }
        })
        .detach();
    }
}
