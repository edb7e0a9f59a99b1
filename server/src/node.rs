//! The node: start-up and shutdown of one `strom-server` process. Raises
//! the memlock and open-file limits, puts the placement in force (loading,
//! migrating and writing the metadata before any shard runs), starts one
//! pinned glommio executor per shard, prints where it listens once every
//! shard is ready, and shuts down cleanly on SIGINT/SIGTERM (stop accepting,
//! finish in-flight requests, close every partition, exit 0).
//!
//! The top layer: it may use every module; nothing uses it but `main.rs`.

use crate::config::{Args, LogFormat, ServerConfig};
use crate::error::ServerError;
use crate::serve::ShardStart;
use crate::shard::Shared;
use crate::{group, kafka, limits, metadata};
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

/// Structured logs on stderr (stdout carries the machine-readable
/// `listening ...`/`ready ...` lines): level filter from `STROM_LOG`
/// (default `info`), text or JSON lines.
pub fn init_logging(format: LogFormat) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    let (filter, bad) = match std::env::var("STROM_LOG") {
        Err(_) => (EnvFilter::new("info"), None),
        Ok(spec) => match EnvFilter::try_new(&spec) {
            Ok(f) => (f, None),
            Err(e) => (EnvFilter::new("info"), Some((spec, e))),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_thread_names(true);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
    if let Some((spec, e)) = bad {
        tracing::warn!(STROM_LOG = %spec, error = %e, "invalid log filter; logging at info");
    }
}

/// Raises the open-file soft limit to the hard limit (every connection and
/// every open segment is a descriptor) and says so when even the hard limit
/// is below what the connection limits allow.
fn ensure_nofile(shards: usize) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    let want = (shards * limits::CONNECTIONS_PER_SHARD_MAX) as u64 + 1024;
    if lim.rlim_cur < want {
        tracing::warn!(
            open_files_limit = lim.rlim_cur,
            wanted = want,
            "the open-file limit is below what the connection limits allow; \
             raise it (ulimit -n, or LimitNOFILE= in the systemd unit)"
        );
    }
}

/// io_uring registers each executor's `io_memory` (and its rings) as locked
/// memory. Root raises the limit; anyone else is told how.
fn ensure_memlock(shards: usize) {
    let need = (shards * (limits::IO_MEMORY_BYTES + (1 << 20))) as u64;
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut cur) } != 0 {
        return;
    }
    if cur.rlim_cur == libc::RLIM_INFINITY || cur.rlim_cur >= need {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
            return;
        }
    }
    if cur.rlim_max == libc::RLIM_INFINITY || cur.rlim_max >= need {
        let raised = libc::rlimit {
            rlim_cur: cur.rlim_max,
            rlim_max: cur.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit
        // up to the hard limit needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) } == 0 {
            return;
        }
    }
    tracing::warn!(
        memlock_kib = cur.rlim_cur / 1024,
        shards,
        need_kib = need / 1024,
        "the locked-memory limit (RLIMIT_MEMLOCK) is below what io_uring needs. Raise it with \
         `ulimit -l unlimited` (shell), LimitMEMLOCK=infinity (systemd), or `--ulimit memlock=-1` \
         (docker); or start fewer shards with --cores"
    );
}

/// Set by the panic hook: a panic on any thread. A panic in a task can
/// take its executor's thread down without dropping the shard's exit guard
/// (glommio does not unwind its tasks), so the main thread watches this too
/// and shuts the node down instead of serving with a dead shard.
static PANICKED: AtomicBool = AtomicBool::new(false);

fn watch_panics() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICKED.store(true, Ordering::SeqCst);
        previous(info);
    }));
}

/// Runs the server until SIGINT/SIGTERM or a shard exits.
pub fn run(args: Args) -> Result<(), ServerError> {
    watch_panics();
    let cfg = ServerConfig::resolve(args)?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        shards = cfg.shards,
        data_dir = %cfg.data_dir.display(),
        listen = %cfg.listen,
        http = %cfg.http,
        kafka_listen = ?cfg.kafka.listen,
        "starting"
    );
    ensure_memlock(cfg.shards);
    ensure_nofile(cfg.shards);
    let meta = start_placement(&cfg)?;

    let shutdown = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, shutdown.clone()).map_err(|e| ServerError::Io {
            op: "register signal handler",
            path: "-".into(),
            source: e,
        })?;
    }
    let shared = shared_for(&cfg, meta, crate::shard::StorageKind::Direct);
    let mesh =
        (cfg.shards > 1).then(|| MeshBuilder::full(cfg.shards, limits::MESH_CHANNEL_CAPACITY));
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut handles = Vec::new();
    let mut listen = cfg.listen;
    let mut addrs = None;
    let mut direct_ports: Vec<u16> = Vec::with_capacity(cfg.shards);
    // Checked before any shard starts (a BASE too high for the last shard).
    let direct_addrs = (0..cfg.shards)
        .map(|id| cfg.shard_ports.addr(cfg.listen, id))
        .collect::<Result<Vec<_>, _>>()?;
    for (id, &direct) in direct_addrs.iter().enumerate() {
        let (bound_tx, bound_rx) = mpsc::channel();
        let start = ShardStart {
            id,
            listen: Some(listen),
            direct,
            http: (id == 0).then_some(cfg.http),
            shared: shared.clone(),
            mesh: mesh.clone(),
            bound: bound_tx,
            ready: ready_tx.clone(),
            body: None,
        };
        let handle = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
            .name(&format!("strom-shard-{id}"))
            .io_memory(limits::IO_MEMORY_BYTES)
            .spawn(move || crate::serve::run(start))
            .map_err(|e| ServerError::Executor(format!("shard {id}: {e}")))?;
        handles.push(handle);
        // Every shard binds the port shard 0 got (port 0 works).
        match bound_rx.recv() {
            Ok(Ok(b)) => {
                if id == 0 {
                    listen = b.native;
                    addrs = Some((b.native, b.http));
                }
                direct_ports.extend(b.direct.map(|a| a.port()));
            }
            Ok(Err(e)) => return Err(fail(&shared, handles, ServerError::Executor(e))),
            Err(_) => {
                return Err(fail(
                    &shared,
                    handles,
                    ServerError::Executor(format!("shard {id} exited during start-up")),
                ))
            }
        }
    }
    let _ = shared.native_addr.set(listen);
    // Every shard has a direct port, or none has (`--shard-ports off`).
    if direct_ports.len() == cfg.shards {
        let _ = shared.shard_ports.set(direct_ports);
    }
    for _ in 0..cfg.shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(fail(&shared, handles, ServerError::Executor(e))),
            Err(_) => {
                return Err(fail(
                    &shared,
                    handles,
                    ServerError::Executor("a shard exited during start-up".into()),
                ))
            }
        }
    }
    let (native, http) = addrs.expect("shard 0 reported its addresses");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "listening native={native}");
        if let Some(k) = shared.kafka.bound() {
            let _ = writeln!(out, "listening kafka={k}");
        }
        if let Some(h) = http {
            let _ = writeln!(out, "listening http={h}");
        }
        let _ = writeln!(
            out,
            "ready shards={} data_dir={}",
            cfg.shards,
            cfg.data_dir.display()
        );
        let _ = out.flush();
    }
    tracing::info!(
        native = %native,
        kafka = ?shared.kafka.bound(),
        http = ?http,
        shards = cfg.shards,
        topics = shared.initial_metadata.topics.len(),
        "listening; ready"
    );
    while !shutdown.load(Ordering::SeqCst) {
        if shared.exited.load(Ordering::SeqCst) > 0 || PANICKED.load(Ordering::SeqCst) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    if shutdown.load(Ordering::SeqCst) {
        tracing::info!("signal received; shutting down");
    } else {
        tracing::error!("a shard exited; shutting down");
    }
    shared.shutdown.store(true, Ordering::SeqCst);
    let mut failed = false;
    for h in handles {
        if h.join().is_err() {
            failed = true;
        }
    }
    let _ = writeln!(std::io::stdout(), "stopped");
    tracing::info!(clean = !failed, "stopped");
    if failed {
        return Err(ServerError::Executor("a shard failed".into()));
    }
    Ok(())
}

/// The state every shard of a node shares.
fn shared_for(
    cfg: &ServerConfig,
    meta: metadata::Metadata,
    storage: crate::shard::StorageKind,
) -> Arc<Shared> {
    Arc::new(Shared {
        shards: cfg.shards,
        placement: meta.placement(),
        data_dir: cfg.data_dir.clone(),
        shutdown: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
        drained: AtomicUsize::new(0),
        exited: AtomicUsize::new(0),
        peers: (0..cfg.shards)
            .map(|_| AtomicUsize::new(usize::MAX))
            .collect(),
        initial_metadata: meta,
        group_config: cfg.groups.clone(),
        kafka: kafka::KafkaShared::new(cfg.kafka.clone()),
        producer_ids: crate::producers::ProducerIds::new(
            cfg.cluster.as_ref().map_or(0, |c| c.node_id),
            crate::engine::partition::now_ms(),
        ),
        produce_fault: crate::config::ProduceFault::from_env(),
        shard_ports: std::sync::OnceLock::new(),
        native_addr: std::sync::OnceLock::new(),
        storage,
        cluster: cfg.cluster.clone().map(Arc::new),
        meta_leader: std::sync::atomic::AtomicU64::new(0),
        tls: cfg.tls.clone(),
        auth: cfg.auth.clone(),
    })
}

/// Runs a node of `shards` shards inside this process, for tests of the
/// operations layer without sockets: partitions live in each shard's
/// in-memory file system (the metadata file and the consumer-offset logs,
/// which use `std::fs`, in `data_dir`), no listener is bound, and `body`
/// runs on shard 0 once every shard has opened its partitions. When `body`
/// returns, the node drains, closes its partitions and its executors end;
/// `body`'s result is returned. Each shard runs on its own unpinned
/// executor, so several in-process nodes may run side by side.
pub fn run_in_process<T, F, Fut>(
    shards: usize,
    data_dir: &std::path::Path,
    body: F,
) -> Result<T, ServerError>
where
    T: Send + 'static,
    F: FnOnce(std::rc::Rc<crate::shard::Shard>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + 'static,
{
    assert!(shards >= 1, "a node has at least one shard");
    let args = Args {
        data_dir: Some(data_dir.to_path_buf()),
        cores: Some(shards),
        ..Args::default()
    };
    let mut cfg = ServerConfig::resolve(args)?;
    cfg.kafka.listen = None;
    let meta = start_placement(&cfg)?;
    let shared = shared_for(&cfg, meta, crate::shard::StorageKind::Memory);
    let mesh = (shards > 1).then(|| MeshBuilder::full(shards, limits::MESH_CHANNEL_CAPACITY));
    let (ready_tx, ready_rx) = mpsc::channel();
    let (result_tx, result_rx) = mpsc::channel();
    let mut body: Option<crate::serve::InProcessBody> = Some(Box::new(move |shard| {
        Box::pin(async move {
            let _ = result_tx.send(body(shard).await);
        })
    }));
    let mut handles = Vec::new();
    for id in 0..shards {
        let (bound_tx, _bound_rx) = mpsc::channel();
        let start = ShardStart {
            id,
            listen: None,
            direct: None,
            http: None,
            shared: shared.clone(),
            mesh: mesh.clone(),
            bound: bound_tx,
            ready: ready_tx.clone(),
            body: if id == 0 { body.take() } else { None },
        };
        let handle = LocalExecutorBuilder::new(Placement::Unbound)
            .name(&format!("strom-inproc-{id}"))
            .io_memory(limits::IO_MEMORY_BYTES)
            .spawn(move || crate::serve::run(start))
            .map_err(|e| ServerError::Executor(format!("shard {id}: {e}")));
        match handle {
            Ok(h) => handles.push(h),
            Err(e) => return Err(fail(&shared, handles, e)),
        }
    }
    drop(ready_tx);
    for _ in 0..shards {
        match ready_rx.recv() {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(fail(&shared, handles, ServerError::Executor(e))),
            Err(_) => {
                let e = ServerError::Executor("a shard exited during start-up".into());
                return Err(fail(&shared, handles, e));
            }
        }
    }
    let mut panicked = false;
    for h in handles {
        panicked |= h.join().is_err();
    }
    match result_rx.try_recv() {
        Ok(result) if !panicked => Ok(result),
        _ => Err(ServerError::Executor(
            "an in-process shard failed before its body finished".into(),
        )),
    }
}

/// Creates the metadata directory, loads the metadata and puts the placement for `cfg.shards` shards in
/// force before any shard starts: a new directory gets epoch 1 and the
/// built-in offsets partition count; another shard count a new epoch (whole
/// partitions and offsets partitions move to other shards, no file moves);
/// a format-1 directory has its per-shard offsets logs migrated first. The
/// metadata file is written before any shard reads it.
fn start_placement(cfg: &ServerConfig) -> Result<metadata::Metadata, ServerError> {
    use metadata::PlacementChange;
    std::fs::create_dir_all(cfg.data_dir.join("meta")).map_err(|e| ServerError::Io {
        op: "create dir",
        path: cfg.data_dir.join("meta"),
        source: e,
    })?;
    let stored = metadata::load(&cfg.data_dir)?;
    let (meta, change) = metadata::plan_placement(stored, cfg.shards, limits::OFFSETS_PARTITIONS);
    let placement = meta.placement();
    match change {
        PlacementChange::Unchanged => {}
        PlacementChange::Created => tracing::info!(
            shards = placement.shards,
            placement_epoch = placement.epoch,
            offsets_partitions = placement.offsets_partitions,
            "new data directory"
        ),
        PlacementChange::Resharded { from_shards } => tracing::warn!(
            from = from_shards,
            to = placement.shards,
            placement_epoch = placement.epoch,
            "shard count changed; partitions and offsets partitions move to their new shards"
        ),
        PlacementChange::FromFormat1 { from_shards } => {
            let m = group::migrate::run(&cfg.data_dir, from_shards, placement.offsets_partitions)?;
            tracing::warn!(
                format_1_shards = from_shards,
                logs = m.logs,
                groups = m.groups,
                records = m.records,
                offsets_partitions = placement.offsets_partitions,
                "metadata format 1: consumer offsets migrated from one log per shard into the \
                 offsets partitions"
            );
        }
    }
    check_cluster_identity(cfg, &meta)?;
    if change != PlacementChange::Unchanged {
        metadata::store(&cfg.data_dir, &meta)?;
    }
    // After the format-2 metadata is durable (now or by an earlier start
    // that crashed before this step), the per-shard offsets logs are garbage.
    if group::migrate::remove_legacy(&cfg.data_dir)? {
        tracing::info!("removed the format-1 consumer offsets logs");
    }
    Ok(meta)
}

/// A data directory belongs to one node of one cluster, or to a single
/// node: never both, and never to two node ids (`cluster/node-id`).
fn check_cluster_identity(
    cfg: &ServerConfig,
    meta: &metadata::Metadata,
) -> Result<(), ServerError> {
    let id_path = cfg.data_dir.join("cluster").join("node-id");
    let stored = match std::fs::read_to_string(&id_path) {
        Ok(s) => Some(s.trim().parse::<u64>().map_err(|_| ServerError::Config {
            path: id_path.clone(),
            reason: format!("not a node id: {s:?}"),
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(ServerError::Io {
                op: "read",
                path: id_path,
                source: e,
            })
        }
    };
    let refuse = |reason: String| {
        Err(ServerError::Config {
            path: cfg.data_dir.clone(),
            reason,
        })
    };
    match (&cfg.cluster, stored) {
        (None, None) => Ok(()),
        (None, Some(id)) => refuse(format!(
            "this data directory belongs to cluster node {id}; start it with --node-id {id} and its peers"
        )),
        (Some(c), Some(id)) if id != c.node_id => refuse(format!(
            "this data directory belongs to node {id}, not {}; a node id is never reused or changed",
            c.node_id
        )),
        (Some(_), Some(_)) => Ok(()),
        (Some(c), None) => {
            if !meta.topics.is_empty() {
                return refuse(
                    "this data directory holds a single node's topics; a cluster node starts empty"
                        .into(),
                );
            }
            std::fs::create_dir_all(cfg.data_dir.join("cluster")).map_err(|e| ServerError::Io {
                op: "create dir",
                path: cfg.data_dir.join("cluster"),
                source: e,
            })?;
            metadata::write_atomically(&id_path, format!("{}\n", c.node_id).as_bytes())
        }
    }
}

fn fail(
    shared: &Shared,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    e: ServerError,
) -> ServerError {
    shared.shutdown.store(true, Ordering::SeqCst);
    drop(handles);
    e
}
