//! The agent's life: take the instance's API socket, load the datapath and
//! the saved server states, fill the tables, attach; then run the owner of
//! the state (`crate::agent`, on a thread of its own), the API, the health
//! monitors, the answers to the datapath's reset requests and the
//! datapath's clock until told to stop; then detach. Every part is watched
//! (`supervise`): one that ends stops the agent with its cause.

mod cleanup;
pub mod startup;
pub mod supervise;
mod systemd;

use std::{
    net::SocketAddr,
    os::unix::net::UnixListener as StdUnixListener,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
    sync::{mpsc, watch},
};

use self::startup::StartupClock;
use crate::{
    agent::shared::Shared,
    agent::{
        monitors,
        owner::Owner,
        runtime::{self, OwnerHandle, now_ms},
        state_file,
    },
    api::{self, ops::Ops},
    cluster::{self, Cluster, presence::Presence},
    config::{ClusterConfig, Config},
    datapath::{
        BPFFS, Datapath, MapSizes,
        counters::Counters,
        ebpf_log::{DatapathLog, LogReader},
        ops::Live,
        reset_requests::ResetRequests,
        tcp_reset::ResetSender,
    },
    servers::plan::Tables,
};

/// Where an instance pins its maps and links.
pub use cleanup::cleanup;

pub fn pin_dir(instance: &str) -> PathBuf {
    Path::new(BPFFS).join(instance)
}

pub fn map_sizes(config: &Config) -> MapSizes {
    MapSizes {
        max_flows: config.flows.max_flows,
        max_flows6: config.max_flows6(),
        max_services: config.max_services,
        max_servers: config.max_servers,
    }
}

/// Runs the agent until SIGINT or SIGTERM; `config_path` is re-read on
/// `lb reload` and SIGHUP.
pub fn run(
    config: Config,
    config_path: PathBuf,
    datapath_log: DatapathLog,
    mut startup: StartupClock,
) -> anyhow::Result<()> {
    // First, so that a second agent of the same instance stops here, before
    // it touches the datapath.
    let listener = api::unix::bind(&config.api_socket)?;
    let socket = config.api_socket.clone();
    let http = http_listener(&config);
    startup.mark("API sockets");
    let result = http.and_then(|http| start(config, config_path, listener, http, datapath_log, startup));
    let _ = std::fs::remove_file(&socket);
    result
}

/// The HTTP API's address and token, taken before the datapath is touched
/// so that a port in use or a missing token stops the agent at once.
fn http_listener(config: &Config) -> anyhow::Result<Option<HttpListener>> {
    let Some(addr) = config.http.listen else { return Ok(None) };
    let token = http_token(config)?;
    let listener = std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .with_context(|| format!("cannot listen on {addr} (http.listen)"))?;
    Ok(Some(HttpListener { addr, listener, token }))
}

struct HttpListener {
    addr: SocketAddr,
    listener: std::net::TcpListener,
    token: Option<String>,
}

fn start(
    config: Config,
    config_path: PathBuf,
    listener: StdUnixListener,
    http: Option<HttpListener>,
    datapath_log: DatapathLog,
    mut startup: StartupClock,
) -> anyhow::Result<()> {
    let (runtime, signals) = runtime_and_signals()?;
    let states = state_file::load(&config.state_file)?;
    startup.mark("state file");
    let pins = pin_dir(&config.instance);
    let mut first_pins = FirstPins::of(&pins);
    let mut dp = Datapath::load_pinned(&pins, map_sizes(&config), datapath_log, &mut |phase| startup.mark(phase))
        .with_context(|| format!("cannot load the datapath (pins in {})", pins.display()))?;
    let tables = Tables::apply(&mut dp, &config, states, now_ms())
        .context("cannot write the configuration into the datapath")?;
    startup.mark("tables");
    log_tables(&tables);
    let raw_socket = || ResetSender::new().context("cannot open a raw socket to send TCP resets");
    let (resets, requests_sender) = (raw_socket()?, raw_socket()?);
    let readers = Readers::open(&mut dp, &pins, &config, requests_sender)?;
    let stop_clock = Arc::new(AtomicBool::new(false));
    let clock = dp.maps.clock.keep_running(Arc::clone(&stop_clock)).context("cannot run the datapath's clock")?;
    let (services, servers) = (tables.services.len(), tables.servers.len());
    let mut owner = Owner::new(config, Live::new(dp, resets), tables.servers, tables.services);
    catch_up(&mut owner);
    // In a cluster: the store's states, before a flow can be assigned.
    let cluster = match owner.config().cluster.clone() {
        Some(config) => Some(runtime.block_on(join_cluster(&mut owner, config))?),
        None => None,
    };
    owner.started_at(now_ms());
    owner.save_states()?;
    startup.mark("owner");
    let (interfaces, mode) = (owner.config().interfaces.clone(), owner.config().xdp_mode);
    attach(&mut owner.dp_mut().dp, &interfaces, mode)?;
    first_pins.keep();
    startup.mark("attach");
    log::info!(
        "instance {}: {services} service(s), {servers} server(s), attached to {}; maps pinned in {}; API on {}",
        owner.config().instance,
        owner.dp().dp.attached_interfaces().join(", "),
        pins.display(),
        owner.config().api_socket.display()
    );

    let result = runtime.block_on(serve(owner, config_path, (listener, http), readers, signals, cluster, startup));
    stop_clock.store(true, Ordering::Relaxed);
    let _ = clock.join();
    // XDP stays attached (its links are pinned): forwarding goes on with the
    // states as they are, and an agent started again (a restart, an upgrade)
    // takes over without a packet missed. `lb cleanup` stops forwarding.
    drop(result?);
    log::info!(
        "stopped; XDP stays attached and forwards with the current states (links and maps pinned in {}); \
         to stop forwarding: lb cleanup --config <this config>",
        pins.display()
    );
    Ok(())
}

/// The pins of an instance's first start (none were there): removed if the
/// start fails before it attaches, so that a failed first start (a bad
/// interface, say) leaves no maps behind (the flow table alone is tens of
/// MiB). Pins that were there stay: they hold a running datapath's flows.
struct FirstPins(Option<PathBuf>);

impl FirstPins {
    fn of(pins: &Path) -> FirstPins {
        FirstPins((!pins.exists()).then(|| pins.to_owned()))
    }

    /// Attached: the pins are the datapath's from now on.
    fn keep(&mut self) {
        self.0 = None;
    }
}

impl Drop for FirstPins {
    fn drop(&mut self) {
        let Some(pins) = self.0.take() else { return };
        match std::fs::remove_dir_all(&pins) {
            Ok(()) => log::info!("removed {}: this first start did not attach", pins.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => log::warn!("cannot remove {} after a failed first start: {e}", pins.display()),
        }
    }
}

/// The runtime and the signal handlers, made before anything is attached:
/// a SIGTERM from then on (systemctl stop during a start) stops the agent
/// cleanly, leaving XDP attached.
fn runtime_and_signals() -> anyhow::Result<(tokio::runtime::Runtime, Signals)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lb-api")
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let signals = {
        let _runtime = runtime.enter();
        let install = |kind| signal(kind).context("cannot install signal handlers");
        Signals {
            interrupt: install(SignalKind::interrupt())?,
            terminate: install(SignalKind::terminate())?,
            hangup: install(SignalKind::hangup())?,
        }
    };
    Ok((runtime, signals))
}

/// The services, and the servers that resume out of service, in the log.
fn log_tables(tables: &Tables) {
    for service in &tables.services {
        log::info!("service {} -> pool {}", service.label(), service.pool);
    }
    for slot in tables.servers.iter().filter(|s| s.admin != crate::servers::AdminState::Enabled || s.removing) {
        let removing = if slot.removing { " (being removed from the config)" } else { "" };
        log::info!("{}/{} resumes as {}{removing}", slot.pool, slot.name, slot.admin.label());
    }
}

/// The config's `enabled` lines that changed while no agent ran, and the
/// servers it removed meanwhile, applied now, as a reload would; and the
/// servers a health monitor had put in maintenance, known to be so.
fn catch_up(owner: &mut Owner<Live>) {
    for change in owner.apply_config_lines(now_ms()) {
        log::info!(
            "{}/{}: {} -> {} (the config's enabled line changed)",
            change.pool,
            change.server,
            change.from,
            change.to
        );
    }
    owner.begin_removals(now_ms());
    owner.resume_maintenance();
}

/// Flow replication's parts, with `cluster.sync_address` (the datapath
/// shares new flows from now on); none without (it shares none: an earlier
/// agent may have left sharing on in the pinned maps).
fn replication(
    dp: &mut Datapath,
    pins: &Path,
    config: &crate::config::Config,
) -> anyhow::Result<Option<cluster::replicate::Parts>> {
    let address = config.cluster.as_ref().and_then(|c| c.sync_address);
    dp.maps.share_new_flows(address.is_some()).context("cannot turn the sharing of new flows on or off")?;
    let Some(address) = address else { return Ok(None) };
    // Copies on the peers idle out as any flow does: refreshed well within
    // the shortest idle timeout.
    let idle = config.flows.tcp_idle_timeout.min(config.flows.udp_idle_timeout);
    let refresh = (idle / 3).clamp(Duration::from_secs(1), Duration::from_secs(60));
    cluster::replicate::Parts::open(&dp.maps, pins, address, refresh).map(Some)
}

/// Both flow tables, for node maintenance to count the flows that still
/// reach a draining node.
fn open_flow_tables(
    pins: &Path,
) -> anyhow::Result<(
    crate::datapath::flow_table::FlowTable,
    crate::datapath::flow_table::FlowTable<lb_common::FlowSlot6>,
)> {
    use crate::datapath::flow_table::FlowTable;
    let v4 = FlowTable::from_pins(pins).context("cannot open the flow table")?;
    let v6 = FlowTable::from_pins6(pins).context("cannot open the IPv6 flow table")?;
    Ok((v4, v6))
}

/// Attaches XDP to every configured interface, or to none anew: a failure
/// detaches what this start attached, and leaves attached what it took over
/// from the previous agent (forwarding as before).
fn attach(dp: &mut Datapath, interfaces: &[String], mode: crate::config::XdpMode) -> anyhow::Result<()> {
    for interface in interfaces {
        if let Err(e) = dp.attach(interface, mode) {
            dp.detach_new();
            let said = "attach failed: detached from the interfaces this start attached (those taken over from the \
                        previous agent stay attached)";
            return Err(e).context(said);
        }
    }
    for interface in dp.detach_unlisted(interfaces) {
        log::info!("{interface}: detached: the config no longer names it in `interfaces`");
    }
    Ok(())
}

/// A node joining its cluster: the store's states are applied before XDP
/// is attached; with the store unreachable the node starts from its state
/// file and says it is stale until it syncs.
async fn join_cluster(owner: &mut Owner<Live>, config: ClusterConfig) -> anyhow::Result<Joining> {
    let joined = cluster::join(&config).await.context("cannot set up the cluster store's client")?;
    let (outbox, proposals) = mpsc::unbounded_channel();
    owner.join_cluster(Shared::new(config.node.clone(), outbox));
    let revision = match joined.states {
        Some((states, revision)) => {
            log::info!(
                "cluster: joined as node {}: {} server state(s) at revision {revision}",
                config.node,
                states.len()
            );
            owner.apply_shared(states, revision, now_ms());
            Some(revision)
        }
        None => None,
    };
    Ok(Joining { store: joined.store, config, revision, proposals })
}

/// What the cluster's tasks start from.
struct Joining {
    store: cluster::store::Store,
    config: ClusterConfig,
    /// The revision applied at the start (none: stale, resync first).
    revision: Option<i64>,
    proposals: mpsc::UnboundedReceiver<crate::servers::Batch>,
}

/// The HTTP API's token, read from `http.token_file` (refused if missing or empty).
fn http_token(config: &Config) -> anyhow::Result<Option<String>> {
    let Some(path) = &config.http.token_file else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the HTTP API's token (http.token_file {})", path.display()))?;
    let token = text.trim();
    if token.is_empty() || token.contains(char::is_whitespace) {
        anyhow::bail!("http.token_file {}: the token must be one word, not empty", path.display());
    }
    use std::os::unix::fs::PermissionsExt as _;
    if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
        log::warn!("http.token_file {} can be read by other users than its owner (chmod 600 it)", path.display());
    }
    Ok(Some(token.to_owned()))
}

/// Runs the owner, the API and the reset answers until a signal; returns
/// the datapath to detach.
async fn serve(
    mut owner: Owner<Live>,
    config_path: PathBuf,
    (listener, http): (StdUnixListener, Option<HttpListener>),
    readers: Readers,
    signals: Signals,
    cluster: Option<Joining>,
    mut startup: StartupClock,
) -> anyhow::Result<Live> {
    let Readers { counters, reset_requests, datapath_log, replication, flow_tables } = readers;
    // Everything that can fail before anything starts.
    let io = Io::new(listener, http, reset_requests, datapath_log)?;
    let Signals { mut interrupt, mut terminate, hangup } = signals;
    startup.mark("runtime");
    let (snapshot_tx, snapshots) = watch::channel(Arc::new(owner.snapshot(now_ms())));
    startup.mark("first snapshot");
    let bgp = owner.config().bgp.clone();
    let (plan_tx, plan) = watch::channel(Arc::new(Vec::new()));
    owner.publish_checks_to(plan_tx);
    let (checks_tx, checks) = watch::channel(Arc::new(crate::health::Checks::new()));
    let (commands_tx, commands) = mpsc::channel(64);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (mut parts, owner_alive) = supervise::Parts::new();
    let owner_thread = spawn_owner(owner, config_path, commands, snapshot_tx, shutdown.clone(), owner_alive)?;
    let owner_handle = OwnerHandle::new(commands_tx);
    parts.spawn("SIGHUP", reload_on_hangup(hangup, owner_handle.clone(), shutdown.clone()));
    let monitors = monitors::Runner { plan, owner: owner_handle.clone(), view: checks_tx };
    parts.spawn("health monitors", monitors.run(shutdown.clone()));
    startup.mark("tasks");
    let startup = startup.finish();
    log::info!("started in {}", startup.summary());
    let mut ops = Ops::new(snapshots.clone(), checks.clone(), counters, owner_handle.clone(), startup);
    // The VIPs are announced once this node forwards them with the store's
    // states (a joining node applied them before XDP was attached), and,
    // in a cluster, has its peers' flows and is in service.
    let (in_service_tx, in_service) = watch::channel(None);
    let (announced_tx, announced) = watch::channel(Default::default());
    match (cluster, flow_tables) {
        (Some(joining), Some(tables)) => {
            let node = NodeLinks { replication, tables, in_service: in_service_tx, announced };
            let cluster = follow_cluster(joining, node, &owner_handle, &snapshots, &checks, &mut parts, &shutdown)?;
            ops = ops.in_cluster(cluster);
        }
        _ => in_service_alone(in_service_tx, &mut parts, &shutdown),
    }
    if let Some(config) = bgp {
        let announcer =
            cluster::announce::Announcer { config, snapshots: snapshots.clone(), in_service, announced: announced_tx };
        parts.spawn("BGP announcements", announcer.run(shutdown.clone()));
    }
    let ops = Arc::new(ops);
    io.serve(&mut parts, &ops, &shutdown);
    parts.spawn("packet report", report_packets(ops, shutdown));
    systemd::notify(systemd::READY);
    let stop = async {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
    };
    let fault = parts.until(stop).await;
    stop_all(parts, fault, shutdown_tx, owner_thread).await
}

/// Stops every task and the owner, once told to stop or at the first
/// task's fault; the datapath to leave as it is (attached, pinned).
async fn stop_all(
    parts: supervise::Parts,
    fault: Result<(), String>,
    shutdown: watch::Sender<bool>,
    owner_thread: std::thread::JoinHandle<std::io::Result<Owner<Live>>>,
) -> anyhow::Result<Live> {
    systemd::notify(systemd::STOPPING);
    let _ = shutdown.send(true);
    parts.join_all().await;
    let owner = owner_thread.join();
    if let Err(fault) = fault {
        // The cause of a panic is in the log above (the panic's own line).
        anyhow::bail!("{fault}: stopping, so that it is started again; XDP stays attached and forwards");
    }
    let owner = owner.map_err(|_| anyhow::anyhow!("the owner's thread panicked"))??;
    Ok(owner.into_datapath())
}

/// The owner of the servers' state on a thread of its own, its timers
/// (drain deadlines, sweeps) on a clock of its own; `alive` is dropped
/// when it ends, which the supervisor sees.
fn spawn_owner(
    owner: Owner<Live>,
    config_path: PathBuf,
    commands: mpsc::Receiver<runtime::Command>,
    snapshots: watch::Sender<Arc<crate::agent::snapshot::Snapshot>>,
    shutdown: watch::Receiver<bool>,
    alive: supervise::OwnerAlive,
) -> std::io::Result<std::thread::JoinHandle<std::io::Result<Owner<Live>>>> {
    std::thread::Builder::new().name("owner".into()).spawn(move || {
        let _alive = alive;
        let timers = tokio::runtime::Builder::new_current_thread().enable_time().build()?;
        Ok(timers.block_on(runtime::run_owner(owner, config_path, commands, snapshots, shutdown)))
    })
}

/// A node without a cluster is always in service: its VIPs are announced
/// (with `[bgp]`) from the start.
fn in_service_alone(
    in_service: watch::Sender<Option<bool>>,
    parts: &mut supervise::Parts,
    shutdown: &watch::Receiver<bool>,
) {
    in_service.send_replace(Some(true));
    // Held for the agent's life: the announcer waits on it.
    let mut stop = shutdown.clone();
    parts.spawn("node state", async move {
        let _in_service = in_service;
        runtime::stopped(&mut stop).await;
    });
}

/// What the agent serves and waits on, made ready for the runtime before
/// any task starts (all of it can fail; nothing has started yet).
struct Io {
    api: tokio::net::UnixListener,
    http: Option<(tokio::net::TcpListener, SocketAddr, Option<String>)>,
    reset_requests: AsyncFd<ResetRequests>,
    datapath_log: Option<AsyncFd<LogReader>>,
}

impl Io {
    fn new(
        api: StdUnixListener,
        http: Option<HttpListener>,
        reset_requests: ResetRequests,
        datapath_log: Option<LogReader>,
    ) -> anyhow::Result<Io> {
        let api = tokio::net::UnixListener::from_std(api).context("cannot serve the API socket")?;
        let http = match http {
            Some(HttpListener { addr, listener, token }) => {
                Some((tokio::net::TcpListener::from_std(listener).context("cannot serve HTTP")?, addr, token))
            }
            None => None,
        };
        // SAFETY: the descriptor is the ring buffer's own, owned by
        // `reset_requests`, which the AsyncFd owns: it stays open and the
        // same while registered.
        let reset_requests = unsafe { AsyncFd::register_with_interest(reset_requests, tokio::io::Interest::READABLE) }
            .context("cannot wait on the datapath's reset requests")?;
        let datapath_log = match datapath_log {
            Some(reader) => Some(
                // SAFETY: as above: the ring buffer's descriptor is owned by
                // the reader, which the AsyncFd owns.
                unsafe { AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE) }
                    .context("cannot wait on the datapath's log")?,
            ),
            None => None,
        };
        Ok(Io { api, http, reset_requests, datapath_log })
    }

    /// Starts the API socket, HTTP (the API, the dashboard, the metrics) and
    /// its history, and the answers to the datapath's ring buffers.
    fn serve(self, parts: &mut supervise::Parts, ops: &Arc<Ops>, shutdown: &watch::Receiver<bool>) {
        parts.spawn("history", api::history::sample(Arc::clone(ops), shutdown.clone()));
        parts.spawn("API socket", api::unix::serve(self.api, Arc::clone(ops), Default::default(), shutdown.clone()));
        if let Some((listener, addr, token)) = self.http {
            let web =
                api::http::Web { ops: Arc::clone(ops), token, limits: Default::default(), shutdown: shutdown.clone() };
            let token = if web.token.is_some() { "a token" } else { "no token: loopback only" };
            log::info!("HTTP API, dashboard and metrics on http://{addr}/ ({token})");
            parts.spawn("HTTP API", api::http::serve(listener, Arc::new(web), shutdown.clone()));
        }
        // Resets are sent as soon as the datapath asks for them.
        let answer = |r: &mut ResetRequests| {
            r.answer_all();
        };
        let requests = on_records(self.reset_requests, "the reset requests", answer, shutdown.clone());
        parts.spawn("reset requests", requests);
        if let Some(reader) = self.datapath_log {
            parts.spawn("datapath log", on_records(reader, "the datapath's log", LogReader::flush, shutdown.clone()));
        }
    }
}

/// What the cluster's tasks share with this node's flows and announcer.
struct NodeLinks {
    replication: Option<cluster::replicate::Parts>,
    tables: (crate::datapath::flow_table::FlowTable, crate::datapath::flow_table::FlowTable<lb_common::FlowSlot6>),
    in_service: watch::Sender<Option<bool>>,
    announced: watch::Receiver<std::collections::BTreeSet<std::net::IpAddr>>,
}

/// Starts the cluster's tasks: following the store's states, recording
/// the owner's proposals, publishing this node and seeing the others,
/// replicating flows, following this node's maintenance state.
fn follow_cluster(
    joining: Joining,
    node: NodeLinks,
    owner: &OwnerHandle,
    snapshots: &watch::Receiver<Arc<crate::agent::snapshot::Snapshot>>,
    checks: &watch::Receiver<Arc<crate::health::Checks>>,
    parts: &mut supervise::Parts,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Cluster> {
    let NodeLinks { replication, tables, in_service, announced } = node;
    let sync = replication.as_ref().map(|r| r.address);
    let Replicating { peers: peers_tx, joined, push_all, counts } =
        start_replication(replication, snapshots, parts, shutdown)?;
    let Joining { store, config, revision, proposals } = joining;
    let (admins_tx, admins) = watch::channel(Default::default());
    let (still_arriving_tx, still_arriving) = watch::channel(None);
    let maintenance = cluster::maintenance::Maintenance {
        node: config.node.clone(),
        store: store.clone(),
        admins: admins.clone(),
        joined,
        push_all,
        tables,
        in_service,
        still_arriving: still_arriving_tx,
    };
    parts.spawn("node maintenance", maintenance.run(shutdown.clone()));
    let (reachable_tx, reachable) = watch::channel(revision.is_some());
    let (view_tx, view) = watch::channel(Arc::new(crate::model::NodesView::default()));
    let (reload_tx, reload_outcome) = watch::channel(None);
    let links = cluster::sync::ReloadLinks { outcome: reload_tx, view: view.clone(), timeout: config.timeout };
    let follow = cluster::sync::follow_states(store.clone(), owner.clone(), revision, reachable_tx, shutdown.clone());
    parts.spawn("cluster states", follow);
    parts.spawn(
        "cluster proposals",
        cluster::sync::record_proposals(store.clone(), owner.clone(), proposals, shutdown.clone()),
    );
    let reloads = cluster::sync::follow_reloads(store.clone(), owner.clone(), links, shutdown.clone());
    parts.spawn("cluster reloads", reloads);
    let presence = Presence {
        store: store.clone(),
        node: config.node.clone(),
        lease_ttl: config.lease,
        started_ms: now_ms(),
        stale: revision.is_none().into(),
        owner: owner.clone(),
        snapshots: snapshots.clone(),
        checks: checks.clone(),
        reload: reload_outcome,
        reachable,
        view: view_tx,
        sync,
        peers: peers_tx,
        admins: admins_tx,
        announced,
        still_arriving,
    };
    parts.spawn("cluster presence", presence.run(shutdown.clone()));
    Ok(Cluster { store, node: config.node.clone(), timeout: config.timeout, view, admins, replication: counts })
}

/// Flow replication, where the config has it, and what the other cluster
/// tasks hold of it.
struct Replicating {
    /// The peers to send new flows to (written by the presence task).
    peers: watch::Sender<Option<Vec<cluster::replicate::Peer>>>,
    /// Whether this node has the others' flows (at once without replication).
    joined: watch::Receiver<bool>,
    /// Asks for every live flow to be sent to the peers (node maintenance);
    /// the answer is how many were.
    push_all: Option<mpsc::Sender<tokio::sync::oneshot::Sender<u64>>>,
    counts: Option<Arc<cluster::replicate::SyncCounts>>,
}

fn start_replication(
    replication: Option<cluster::replicate::Parts>,
    snapshots: &watch::Receiver<Arc<crate::agent::snapshot::Snapshot>>,
    parts: &mut supervise::Parts,
    shutdown: &watch::Receiver<bool>,
) -> anyhow::Result<Replicating> {
    let (peers_tx, peers) = watch::channel(None);
    let (joined_tx, joined) = watch::channel(false);
    let Some(replication) = replication else {
        joined_tx.send_replace(true);
        return Ok(Replicating { peers: peers_tx, joined, push_all: None, counts: None });
    };
    let (push_all, asked) = mpsc::channel(4);
    let links = cluster::replicate::Links { peers, snapshots: snapshots.clone(), joined: joined_tx, push_all: asked };
    let replicator = replication.start(links).context("cannot start flow replication")?;
    let counts = Some(Arc::clone(&replicator.counts));
    parts.spawn("flow replication", replicator.run(shutdown.clone()));
    Ok(Replicating { peers: peers_tx, joined, push_all: Some(push_all), counts })
}

/// SIGHUP: re-read the config, as `lb reload` does (the guard applies: a
/// reload that would leave a pool with no server is refused, and said so
/// in the log).
async fn reload_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    owner: OwnerHandle,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = runtime::stopped(&mut shutdown) => return,
            _ = hangup.recv() => {}
        }
        log::info!("SIGHUP: reloading the config");
        match owner.reload(false, false).await {
            Ok(report) if report.changes.is_empty() => log::info!("reload: nothing changed"),
            Ok(_) => {}
            Err(e) => log::error!("reload refused, nothing applied: {}", e.message),
        }
    }
}

/// The signals the agent answers: SIGINT and SIGTERM stop it, SIGHUP reloads.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

/// What the agent reads from the datapath.
struct Readers {
    counters: Counters,
    reset_requests: ResetRequests,
    datapath_log: Option<LogReader>,
    replication: Option<cluster::replicate::Parts>,
    /// In a cluster: both flow tables (node maintenance).
    flow_tables:
        Option<(crate::datapath::flow_table::FlowTable, crate::datapath::flow_table::FlowTable<lb_common::FlowSlot6>)>,
}

impl Readers {
    fn open(dp: &mut Datapath, pins: &Path, config: &Config, requests_sender: ResetSender) -> anyhow::Result<Self> {
        Ok(Readers {
            counters: Counters::open(&dp.maps).context("cannot open the counters")?,
            reset_requests: ResetRequests::open(&dp.maps, requests_sender).context("cannot read the reset requests")?,
            datapath_log: dp.take_log_reader(),
            replication: replication(dp, pins, config)?,
            flow_tables: match &config.cluster {
                Some(_) => Some(open_flow_tables(pins)?),
                None => None,
            },
        })
    }
}

/// Reads a ring buffer of the datapath's each time it has records, until
/// the agent stops: `read` drains it (answers reset requests, prints log
/// records).
async fn on_records<T: std::os::fd::AsRawFd>(
    mut ring: AsyncFd<T>,
    what: &str,
    mut read: impl FnMut(&mut T),
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let mut ready = tokio::select! {
            () = runtime::stopped(&mut shutdown) => return,
            ready = ring.readable_mut() => match ready {
                Ok(ready) => ready,
                Err(e) => return log::error!("cannot wait on {what}: {e}"),
            },
        };
        // Cleared before reading: a record written after the read brings a
        // new wake-up (a ring wakes its reader only when it was empty), and
        // clearing after it would lose that one, and leave the ring's later
        // records unread.
        ready.clear_ready();
        read(ready.get_inner_mut());
    }
}

/// Logs the packet counters once a minute.
async fn report_packets(ops: Arc<Ops>, mut shutdown: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    every.tick().await;
    loop {
        tokio::select! {
            () = runtime::stopped(&mut shutdown) => return,
            _ = every.tick() => {}
        }
        if let Ok(stats) = ops.stats() {
            let busy: Vec<String> =
                stats.outcomes.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k}={n}")).collect();
            log::info!("packets: {}", busy.join(" "));
        }
    }
}
