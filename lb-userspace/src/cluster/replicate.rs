//! Flow replication: every flow this node's datapath creates is sent to
//! the other nodes, and theirs are written into this node's flow tables.
//! When the router moves a flow to another node (a node withdrawn, lost or
//! added rehashes flows), or ECMPs a server's reply to another node, that
//! node continues it on the flow's own server, even if the pool changed
//! since the flow began (a Maglev row rebuilt since would pick another:
//! katran#155), and rewrites its replies back to the VIP.
//!
//! Design: the datapath logs the table slot of each new flow (only while
//! sharing is on; each CPU in its own part of a log:
//! `lb-ebpf/src/flow_sync.rs`); this task polls the log every [`POLL`],
//! reads those flows from their slots, and sends them in datagrams of up to
//! [`BATCH`] flows to
//! each peer's `sync_address` over the nodes' own network (UDP: a lost
//! datagram costs the flows it held only if their node is lost too). A
//! received flow names its server by identity (pool and server names), not
//! by id, and is written where the datapath would write it.
//!
//! Datagrams are taken only from the addresses of live nodes (their records
//! in the store); the nodes' network should be a trusted one, as for IPVS's
//! sync daemon.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::MapData;
use bytemuck::{Pod, Zeroable};
use lb_common::{
    Flow, FlowKey, FlowKey6, FlowSlot6, ReverseNat, ReverseNat6, flow_seen, flow_state, flow_time, map_name, proto,
};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, oneshot, watch},
};

use crate::{
    agent::{runtime::stopped, snapshot::Snapshot},
    datapath::{
        Maps, bpf_batch,
        clock::datapath_now_ns,
        family::{Family, Key, V4, V6},
        flow_log::{FlowLog, NewFlows},
        flow_table::{FlowTable, TableWriter},
    },
    servers::maglev::identity,
};

/// How often the datapath's log of new flows is read: a flow's copy
/// leaves within this (and a datagram's way) of its first packet.
pub const POLL: Duration = Duration::from_millis(5);

/// Flows per datagram: 24 records and the header fit in 1,400 bytes, below
/// any path's MTU.
pub const BATCH: usize = 24;

/// The datagram's first bytes: the format's name and version.
const MAGIC: [u8; 4] = *b"LBF1";

/// One replicated flow on the wire: both families in one shape, addresses
/// and ports as the flow key holds them (network order), the server by its
/// identity ([`identity`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct WireFlow {
    pub server: u64,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    /// 4 or 6.
    pub family: u8,
    pub state: u8,
    pub seen: u8,
    pub client_next_seq: u32,
    pub server_next_seq: u32,
}

/// A flow of either family, as the tables hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Replicated {
    V4(FlowKey, Flow),
    V6(FlowKey6, Flow),
}

impl WireFlow {
    /// The wire form of a flow whose server has identity `server`.
    pub fn of(replicated: &Replicated, server: u64) -> WireFlow {
        let (flow, mut wire) = match replicated {
            Replicated::V4(key, flow) => {
                let mut w =
                    WireFlow { family: 4, src_port: key.src_port, dst_port: key.dst_port, ..Default::default() };
                w.proto = key.proto;
                w.src[..4].copy_from_slice(&key.src_addr.to_ne_bytes());
                w.dst[..4].copy_from_slice(&key.dst_addr.to_ne_bytes());
                (flow, w)
            }
            Replicated::V6(key, flow) => {
                let mut w =
                    WireFlow { family: 6, src_port: key.src_port, dst_port: key.dst_port, ..Default::default() };
                w.proto = key.proto;
                w.src.copy_from_slice(bytemuck::bytes_of(&key.src_addr));
                w.dst.copy_from_slice(bytemuck::bytes_of(&key.dst_addr));
                (flow, w)
            }
        };
        wire.server = server;
        wire.state = flow.state;
        wire.seen = flow.seen;
        wire.client_next_seq = flow.client_next_seq;
        wire.server_next_seq = flow.server_next_seq;
        wire
    }

    /// The flow this node writes: on its server `server_id`, seen now.
    /// `None` for an unknown family, or a state that is no flow of its
    /// protocol (IPv4's slot keeps the protocol in the state alone).
    pub fn to_flow(&self, server_id: u32, now_ns: u64) -> Option<Replicated> {
        let flow_of_its_protocol = match self.state {
            flow_state::UDP => self.proto == proto::UDP,
            flow_state::TCP_OPEN | flow_state::TCP_CLOSING => self.proto == proto::TCP,
            _ => false,
        };
        if !flow_of_its_protocol {
            return None;
        }
        let flow = Flow {
            // Ids are below `limits.max_servers`, at most 65,536.
            server_id: u16::try_from(server_id).ok()?,
            state: self.state,
            seen: self.seen | flow_seen::COPY,
            last_seen: flow_time::tick(now_ns),
            client_next_seq: self.client_next_seq,
            server_next_seq: self.server_next_seq,
        };
        let addr4 = |a: &[u8; 16]| u32::from_ne_bytes([a[0], a[1], a[2], a[3]]);
        let addr6 = |a: &[u8; 16]| bytemuck::pod_read_unaligned(a);
        match self.family {
            4 => {
                let key = FlowKey {
                    src_addr: addr4(&self.src),
                    dst_addr: addr4(&self.dst),
                    src_port: self.src_port,
                    dst_port: self.dst_port,
                    proto: self.proto,
                    ..FlowKey::default()
                };
                Some(Replicated::V4(key, flow))
            }
            6 => {
                let key = FlowKey6 {
                    src_addr: addr6(&self.src),
                    dst_addr: addr6(&self.dst),
                    src_port: self.src_port,
                    dst_port: self.dst_port,
                    proto: self.proto,
                    ..FlowKey6::default()
                };
                Some(Replicated::V6(key, flow))
            }
            _ => None,
        }
    }
}

/// A datagram of up to [`BATCH`] flows.
pub fn encode(flows: &[WireFlow]) -> Vec<u8> {
    let mut datagram = Vec::with_capacity(MAGIC.len() + 4 + size_of_val(flows));
    datagram.extend_from_slice(&MAGIC);
    datagram.extend_from_slice(&(flows.len() as u32).to_le_bytes());
    datagram.extend_from_slice(bytemuck::cast_slice(flows));
    datagram
}

/// The flows of a datagram; an error says what is wrong with it.
pub fn decode(datagram: &[u8]) -> Result<Vec<WireFlow>, String> {
    let (head, body) = datagram.split_at_checked(8).ok_or_else(|| format!("{} bytes: no header", datagram.len()))?;
    if head[..4] != MAGIC {
        return Err("not a flow datagram (unknown magic)".into());
    }
    let count = u32::from_le_bytes([head[4], head[5], head[6], head[7]]) as usize;
    if count > BATCH || body.len() != count * size_of::<WireFlow>() {
        return Err(format!("{count} flows announced, {} bytes of them", body.len()));
    }
    Ok(body.chunks_exact(size_of::<WireFlow>()).map(bytemuck::pod_read_unaligned).collect())
}

/// What replication did, for the metrics and `lb nodes`.
#[derive(Default)]
pub struct SyncCounts {
    /// Flows of this node sent (each to every peer): new ones, pushes to a
    /// joining node, refreshes of long-lived ones.
    pub sent: AtomicU64,
    /// Other nodes' flows written into this node's tables.
    pub received: AtomicU64,
    /// Datagrams refused: from an unknown address, malformed, or naming a
    /// server this node does not have.
    pub refused: AtomicU64,
    /// New flows overwritten in the datapath's log before they were read.
    pub lost: AtomicU64,
}

impl SyncCounts {
    pub fn view(&self) -> crate::model::ReplicationCounts {
        crate::model::ReplicationCounts {
            sent: self.sent.load(Ordering::Relaxed),
            received: self.received.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
        }
    }
}

/// Another live node, as its record in the store names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub node: String,
    /// Its `cluster.sync_address`.
    pub address: SocketAddr,
    /// When its agent started: a restarted peer gets a full push again.
    pub started_ms: u64,
}

/// How long a joining node waits for its peers' pushes before it goes on
/// without the missing ones (and says which).
pub const JOIN_WAIT: Duration = Duration::from_secs(5);

/// Asks the replicator to push every flow this node forwards to every peer
/// now (a graceful node disable, before withdrawing); answered with how
/// many flows were pushed.
pub type PushAll = oneshot::Sender<u64>;

/// What replication needs from the start-up, opened before the runtime
/// runs: the log of new flows and the flow tables (mapped), the bound
/// socket.
pub struct Parts {
    pub address: SocketAddr,
    socket: std::net::UdpSocket,
    log: FlowLog,
    table: TableWriter,
    table6: TableWriter<FlowSlot6>,
    /// The return paths of flows on shared endpoints, both families.
    reverse_nat: (MapData, MapData),
    refresh: Duration,
}

impl Parts {
    /// `refresh`: how often the copies of this node's long-lived flows are
    /// sent again, so that the peers' copies do not idle out.
    pub fn open(maps: &Maps, pins: &Path, address: SocketAddr, refresh: Duration) -> anyhow::Result<Parts> {
        let log = maps.flow_log().context("cannot map the log of new flows")?;
        let table = FlowTable::from_pins(pins).and_then(FlowTable::writer).context("cannot map the flow table")?;
        let table6 =
            FlowTable::from_pins6(pins).and_then(FlowTable::writer).context("cannot map the IPv6 flow table")?;
        let socket = std::net::UdpSocket::bind(address)
            .with_context(|| format!("cluster.sync_address {address}: cannot receive other nodes' flows there"))?;
        socket.set_nonblocking(true)?;
        let pinned = |name: &str| {
            MapData::from_pin(pins.join(name)).with_context(|| format!("cannot open the pinned map {name}"))
        };
        let reverse_nat = (pinned(map_name::REVERSE_NAT)?, pinned(map_name::REVERSE_NAT6)?);
        Ok(Parts { address, socket, log, table, table6, reverse_nat, refresh })
    }

    /// The task, on the runtime.
    pub fn start(self, links: Links) -> std::io::Result<Replicator> {
        Ok(Replicator {
            socket: UdpSocket::from_std(self.socket)?,
            log: self.log,
            table: self.table,
            table6: self.table6,
            reverse_nat: self.reverse_nat,
            refresh: self.refresh,
            links,
            counts: Arc::default(),
            said: Said::default(),
        })
    }
}

/// The replicator's links with the rest of the agent.
pub struct Links {
    /// The other live nodes; none until the store first answered.
    pub peers: watch::Receiver<Option<Vec<Peer>>>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Set once this node has the live flows of the peers it found at its
    /// start (or waited [`JOIN_WAIT`] for them): it may then be announced.
    pub joined: watch::Sender<bool>,
    pub push_all: mpsc::Receiver<PushAll>,
}

pub struct Replicator {
    socket: UdpSocket,
    log: FlowLog,
    table: TableWriter,
    table6: TableWriter<FlowSlot6>,
    reverse_nat: (MapData, MapData),
    refresh: Duration,
    links: Links,
    pub counts: Arc<SyncCounts>,
    said: Said,
}

/// The faults already warned of, each once (later ones at debug level):
/// a peer that cannot be sent to, datagrams refused from an address. The
/// counters (`lb_cluster_replication_refused_total`) count every one; the
/// warning says why. At most [`Said::MAX`] remembered, so that datagrams
/// from many addresses cannot grow it.
#[derive(Default)]
struct Said(std::sync::Mutex<std::collections::HashSet<(SocketAddr, &'static str)>>);

impl Said {
    const MAX: usize = 64;

    /// Whether `fault` from or to `at` is said for the first time.
    fn first(&self, at: SocketAddr, fault: &'static str) -> bool {
        let mut said = self.0.lock().unwrap_or_else(|e| e.into_inner());
        said.len() < Self::MAX && said.insert((at, fault))
    }

    /// `at` works again: its next fault is said again.
    fn clear(&self, at: SocketAddr, fault: &'static str) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&(at, fault));
    }
}

/// Warns the first time, then at debug level.
macro_rules! warn_once {
    ($said:expr, $at:expr, $fault:literal, $($arg:tt)+) => {
        if $said.first($at, $fault) {
            log::warn!("flow replication: {} (said once)", format_args!($($arg)+));
        } else {
            log::debug!("flow replication: {}", format_args!($($arg)+));
        }
    };
}

/// Server ids and identities of the latest snapshot, both ways.
#[derive(Default)]
struct Ids {
    of: Option<Arc<Snapshot>>,
    identity: HashMap<u32, u64>,
    id: HashMap<u64, u32>,
    /// Servers whose endpoint serves several services, by id: their
    /// address(es) and port. A copy of their flows needs its return path.
    shared: HashMap<u32, (IpAddr, Option<std::net::Ipv6Addr>, u16)>,
}

impl Ids {
    fn refresh(&mut self, snapshot: &Arc<Snapshot>) {
        if self.of.as_ref().is_some_and(|s| Arc::ptr_eq(s, snapshot)) {
            return;
        }
        self.identity.clear();
        self.id.clear();
        self.shared.clear();
        for pool in &snapshot.pools {
            for server in &pool.servers {
                let identity = identity(&pool.name, &server.name);
                self.identity.insert(server.id, identity);
                self.id.insert(identity, server.id);
                if server.shared_endpoint {
                    self.shared.insert(server.id, (server.address, server.address6, server.port));
                }
            }
        }
        self.of = Some(Arc::clone(snapshot));
    }
}

/// The flows this node pushes and refreshes: its own, and copies it has
/// forwarded since they were written (a copy never used here is left to
/// its own node, so copies do not keep each other alive).
pub use crate::datapath::flow_table::forwarded_here;

/// Datagrams from an address that is no live node's yet. A node that starts
/// pushes its flows to each peer as soon as it sees it in the store, which
/// may be before that peer sees it (each reads the store's records every
/// presence tick): its datagrams are held here, taken once their address
/// is a live node's, and refused after [`STRANGER_WAIT`] (so a node's start
/// costs no flow and reads as no fault). At most [`STRANGERS_MAX_BYTES`]
/// held (about 70,000 flows in full datagrams).
#[derive(Default)]
struct Strangers {
    held: std::collections::VecDeque<(tokio::time::Instant, SocketAddr, Vec<u8>)>,
    bytes: usize,
}

/// As long as a joining node waits for its peers' pushes: the others see it
/// within a presence tick or two, and a store slow to answer (or a busy
/// host) is given the same room.
const STRANGER_WAIT: Duration = JOIN_WAIT;
const STRANGERS_MAX_BYTES: usize = 4 << 20;

impl Strangers {
    /// Holds `datagram`; false when full (refuse it).
    fn hold(&mut self, from: SocketAddr, datagram: &[u8]) -> bool {
        if self.bytes + datagram.len() > STRANGERS_MAX_BYTES {
            return false;
        }
        self.bytes += datagram.len();
        self.held.push_back((tokio::time::Instant::now() + STRANGER_WAIT, from, datagram.to_vec()));
        true
    }

    /// The held datagrams whose sender `known` knows now, in their order.
    fn known_now(&mut self, known: impl Fn(SocketAddr) -> bool) -> Vec<(SocketAddr, Vec<u8>)> {
        let (now, still): (Vec<_>, Vec<_>) = self.held.drain(..).partition(|(_, from, _)| known(*from));
        self.held = still.into();
        self.bytes = self.held.iter().map(|(_, _, datagram)| datagram.len()).sum();
        now.into_iter().map(|(_, from, datagram)| (from, datagram)).collect()
    }

    fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// When the oldest held datagram is to be refused.
    fn next_expiry(&self) -> tokio::time::Instant {
        self.held.front().map_or_else(tokio::time::Instant::now, |(until, ..)| *until)
    }

    /// Drops the datagrams held past their wait; their senders.
    fn expire(&mut self, now: tokio::time::Instant) -> Vec<SocketAddr> {
        let mut expired = Vec::new();
        while self.held.front().is_some_and(|(until, ..)| *until <= now) {
            if let Some((_, from, datagram)) = self.held.pop_front() {
                self.bytes -= datagram.len();
                expired.push(from);
            }
        }
        expired
    }
}

/// Where a joining node stands: the peers whose push it still waits for.
struct Joining {
    waiting: Option<Vec<SocketAddr>>,
    until: tokio::time::Instant,
}

impl Replicator {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut ids = Ids::default();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut pushed: Vec<(SocketAddr, u64)> = Vec::new();
        let mut joining = Joining { waiting: None, until: tokio::time::Instant::now() + JOIN_WAIT };
        let mut strangers = Strangers::default();
        let mut refresh = tokio::time::interval(self.refresh);
        let mut refreshed_ns = datapath_now_ns();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let joined = *self.links.joined.borrow();
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                _ = poll.tick() => {
                    let new = self.log.poll();
                    self.counts.lost.fetch_add(new.lost, Ordering::Relaxed);
                    let flows = replicated(new);
                    if !flows.is_empty() {
                        ids.refresh(&self.links.snapshots.borrow());
                        let peers = self.peer_addresses();
                        self.send(&flows, &ids, &peers).await;
                    }
                }
                received = self.socket.recv_from(&mut buffer) => match received {
                    Ok((len, from)) if self.knows(from) => {
                        ids.refresh(&self.links.snapshots.borrow());
                        // Its datagrams held before this one first.
                        self.receive_held(&mut strangers, &ids, &mut joining);
                        if self.receive(&buffer[..len], from, &ids) {
                            joining.pushed_by(from, &self.links.joined);
                        }
                    }
                    Ok((len, from)) => {
                        if !strangers.hold(from, &buffer[..len]) {
                            self.refuse_stranger(from);
                        }
                    }
                    Err(e) => log::debug!("flow replication: receiving: {e}"),
                },
                _ = self.links.peers.changed() => {
                    let Some(peers) = self.links.peers.borrow_and_update().clone() else { continue };
                    joining.found(&peers, &self.links.joined);
                    ids.refresh(&self.links.snapshots.borrow());
                    self.receive_held(&mut strangers, &ids, &mut joining);
                    self.push_to_new(&peers, &mut pushed, &ids).await;
                }
                () = tokio::time::sleep_until(strangers.next_expiry()), if !strangers.is_empty() => {
                    for from in strangers.expire(tokio::time::Instant::now()) {
                        self.refuse_stranger(from);
                    }
                }
                Some(asked) = self.links.push_all.recv() => {
                    ids.refresh(&self.links.snapshots.borrow());
                    let peers = self.peer_addresses();
                    let flows = self.flows_where(|_| true);
                    self.send(&flows, &ids, &peers).await;
                    let _ = asked.send(flows.len() as u64);
                }
                _ = refresh.tick() => {
                    // Flows forwarded here since the last refresh (those
                    // created since were sent when created: the ones still
                    // open are sent once more, as they would be next time).
                    let since = std::mem::replace(&mut refreshed_ns, datapath_now_ns());
                    let since = flow_time::tick(since);
                    let flows = self.flows_where(|f| flow_time::at_or_after(f.last_seen, since));
                    ids.refresh(&self.links.snapshots.borrow());
                    let peers = self.peer_addresses();
                    self.send(&flows, &ids, &peers).await;
                }
                () = tokio::time::sleep_until(joining.until), if !joined => joining.give_up(&self.links.joined),
            }
        }
    }

    fn peer_addresses(&self) -> Vec<SocketAddr> {
        self.links.peers.borrow().iter().flatten().map(|p| p.address).collect()
    }

    /// Pushes every live flow this node forwards to each peer not pushed to
    /// yet (a node that joined, or restarted), then the end of the push.
    async fn push_to_new(&self, peers: &[Peer], pushed: &mut Vec<(SocketAddr, u64)>, ids: &Ids) {
        pushed.retain(|done| peers.iter().any(|p| (p.address, p.started_ms) == *done));
        let new: Vec<&Peer> = peers.iter().filter(|p| !pushed.contains(&(p.address, p.started_ms))).collect();
        if new.is_empty() {
            return;
        }
        let flows = self.flows_where(|_| true);
        for peer in new {
            self.send(&flows, ids, &[peer.address]).await;
            if let Err(e) = self.socket.send_to(&encode(&[]), peer.address).await {
                log::warn!("flow replication: cannot end the push to {} ({}): {e}", peer.node, peer.address);
            }
            log::info!("flow replication: pushed {} live flow(s) to {} ({})", flows.len(), peer.node, peer.address);
            pushed.push((peer.address, peer.started_ms));
        }
    }

    /// The live flows this node forwards that `pick` picks, both families.
    fn flows_where(&self, pick: impl Fn(&Flow) -> bool) -> Vec<Replicated> {
        let live = |f: &Flow| forwarded_here(f) && !flow_seen::ended(f.seen) && pick(f);
        let mut flows = Vec::new();
        self.table.for_each(|k, f| {
            if live(f) {
                flows.push(Replicated::V4(*k, *f));
            }
        });
        self.table6.for_each(|k, f| {
            if live(f) {
                flows.push(Replicated::V6(*k, *f));
            }
        });
        flows
    }

    async fn send(&self, flows: &[Replicated], ids: &Ids, peers: &[SocketAddr]) {
        let wire: Vec<WireFlow> = flows
            .iter()
            .filter_map(|f| {
                let server_id = match f {
                    Replicated::V4(_, flow) | Replicated::V6(_, flow) => flow.server(),
                };
                ids.identity.get(&server_id).map(|identity| WireFlow::of(f, *identity))
            })
            .collect();
        for batch in wire.chunks(BATCH) {
            let datagram = encode(batch);
            for peer in peers {
                match self.socket.send_to(&datagram, peer).await {
                    Ok(_) => self.said.clear(*peer, "send"),
                    Err(e) => warn_once!(self.said, *peer, "send", "cannot send new flows to {peer}: {e}"),
                }
            }
        }
        self.counts.sent.fetch_add(wire.len() as u64, Ordering::Relaxed);
    }

    /// Whether `from` is a live node's address.
    fn knows(&self, from: SocketAddr) -> bool {
        let ip = from.ip().to_canonical();
        self.links.peers.borrow().iter().flatten().any(|p| p.address.ip().to_canonical() == ip)
    }

    /// The held datagrams of senders now known, in the order they came.
    fn receive_held(&self, strangers: &mut Strangers, ids: &Ids, joining: &mut Joining) {
        if strangers.is_empty() {
            return;
        }
        for (from, datagram) in strangers.known_now(|from| self.knows(from)) {
            if self.receive(&datagram, from, ids) {
                joining.pushed_by(from, &self.links.joined);
            }
        }
    }

    /// A datagram from an address that no live node has (or no longer held).
    fn refuse_stranger(&self, from: SocketAddr) {
        self.counts.refused.fetch_add(1, Ordering::Relaxed);
        warn_once!(
            self.said,
            from,
            "unknown",
            "datagrams from {from} ignored: not the cluster.sync_address of a node live in the store \
             (counted in lb_cluster_replication_refused_total)"
        );
    }

    /// Writes a datagram's flows, from a live node; true if it ends a push
    /// to this node.
    fn receive(&self, datagram: &[u8], from: SocketAddr, ids: &Ids) -> bool {
        let flows = match decode(datagram) {
            Ok(flows) => flows,
            Err(why) => {
                self.counts.refused.fetch_add(1, Ordering::Relaxed);
                warn_once!(self.said, from, "malformed", "a datagram from {from} refused: {why}");
                return false;
            }
        };
        let now = datapath_now_ns();
        let mut written = 0;
        let mut paths = ReturnPaths::default();
        for wire in &flows {
            let flow = ids.id.get(&wire.server).and_then(|id| wire.to_flow(*id, now));
            match flow {
                Some(Replicated::V4(key, flow)) => {
                    written += u64::from(self.table.insert(&key, &flow));
                    return_path::<V4>(&mut paths.v4, &key, ids.shared.get(&flow.server()));
                }
                Some(Replicated::V6(key, flow)) => {
                    written += u64::from(self.table6.insert(&key, &flow));
                    return_path::<V6>(&mut paths.v6, &key, ids.shared.get(&flow.server()));
                }
                None => {
                    self.counts.refused.fetch_add(1, Ordering::Relaxed);
                    warn_once!(
                        self.said,
                        from,
                        "server",
                        "flows from {from} on a server this node does not have (do the nodes' pools differ? see lb nodes)"
                    );
                }
            }
        }
        paths.write(&self.reverse_nat);
        self.counts.received.fetch_add(written, Ordering::Relaxed);
        flows.is_empty()
    }
}

/// The return paths of received flows whose server's endpoint serves
/// several services: there, replies find their VIP by flow.
#[derive(Default)]
struct ReturnPaths {
    v4: (Vec<FlowKey>, Vec<ReverseNat>),
    v6: (Vec<FlowKey6>, Vec<ReverseNat6>),
}

impl ReturnPaths {
    fn write(&self, (reverse_nat, reverse_nat6): &(MapData, MapData)) {
        let written = [
            (!self.v4.0.is_empty()).then(|| bpf_batch::update_batch(reverse_nat, &self.v4.0, &self.v4.1)),
            (!self.v6.0.is_empty()).then(|| bpf_batch::update_batch(reverse_nat6, &self.v6.0, &self.v6.1)),
        ];
        for e in written.into_iter().flatten().filter_map(Result::err) {
            log::warn!("flow replication: cannot write the return paths of shared endpoints' flows: {e}");
        }
    }
}

/// Adds the return path of `key` to a family's part of [`ReturnPaths`] if
/// its server is `shared`.
fn return_path<F: Family>(
    (keys, nats): &mut (Vec<Key<F>>, Vec<F::Nat>),
    key: &Key<F>,
    shared: Option<&(IpAddr, Option<std::net::Ipv6Addr>, u16)>,
) {
    let Some(&(address, address6, port)) = shared else { return };
    if let Some(reply) = F::reply_key(key, address, port).or_else(|| F::reply_key(key, address6?.into(), port)) {
        keys.push(reply);
        nats.push(F::nat(key));
    }
}

impl Joining {
    /// The store answered: the peers to wait for (none: joined at once).
    fn found(&mut self, peers: &[Peer], joined: &watch::Sender<bool>) {
        if self.waiting.is_none() && !*joined.borrow() {
            self.waiting = Some(peers.iter().map(|p| p.address).collect());
            self.until = tokio::time::Instant::now() + JOIN_WAIT;
            self.check(joined);
        }
    }

    fn pushed_by(&mut self, from: SocketAddr, joined: &watch::Sender<bool>) {
        if let Some(waiting) = &mut self.waiting {
            waiting.retain(|p| p.ip().to_canonical() != from.ip().to_canonical());
            self.check(joined);
        }
    }

    fn check(&mut self, joined: &watch::Sender<bool>) {
        if self.waiting.as_ref().is_some_and(Vec::is_empty) && !*joined.borrow() {
            log::info!("flow replication: this node has its peers' live flows");
            joined.send_replace(true);
        }
    }

    fn give_up(&mut self, joined: &watch::Sender<bool>) {
        match &self.waiting {
            Some(waiting) => log::warn!(
                "flow replication: no complete push from {waiting:?} within {JOIN_WAIT:?}: going on without \
                 their flows (those moved here later may change server if their pool changed)"
            ),
            None => log::warn!("flow replication: the store did not answer within {JOIN_WAIT:?}: going on alone"),
        }
        joined.send_replace(true);
    }
}

/// The new flows of both families, as replication sends them.
fn replicated(new: NewFlows) -> Vec<Replicated> {
    let v4 = new.v4.into_iter().map(|(key, flow)| Replicated::V4(key, flow));
    v4.chain(new.v6.into_iter().map(|(key, flow)| Replicated::V6(key, flow))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flow(server_id: u16) -> Flow {
        Flow { server_id, state: 2, seen: 5, client_next_seq: 1000, server_next_seq: 7, ..Flow::default() }
    }

    #[test]
    fn a_flow_of_either_family_crosses_the_wire_whole_on_the_receivers_own_server_id() {
        let key = FlowKey {
            src_addr: 0x0200000a,
            dst_addr: 0x0100640a,
            src_port: 0x3930,
            dst_port: 0x5000,
            proto: 6,
            ..Default::default()
        };
        let key6 = FlowKey6 { src_port: 1, dst_port: 2, proto: 6, ..Default::default() };
        let flows = [Replicated::V4(key, flow(3)), Replicated::V6(key6, flow(3))];
        let wire: Vec<WireFlow> = flows.iter().map(|f| WireFlow::of(f, 0xabcd)).collect();
        let back = decode(&encode(&wire)).expect("a datagram of ours");
        assert_eq!(back, wire);
        let now = 42 << flow_time::TICK_SHIFT;
        match back[0].to_flow(9, now) {
            Some(Replicated::V4(k, f)) => {
                assert_eq!(k, key);
                let seen = flow(9).seen | flow_seen::COPY;
                assert_eq!(f, Flow { server_id: 9, seen, last_seen: 42, ..flow(9) });
                assert!(!forwarded_here(&f), "a copy is its own node's until used here");
                // The datapath clears the mark as it forwards a packet.
                assert!(forwarded_here(&Flow { seen: f.seen & !flow_seen::COPY, ..f }));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(back[1].to_flow(9, now), Some(Replicated::V6(k, _)) if k == key6));
        assert!(encode(&[WireFlow::default(); BATCH]).len() <= 1400, "a full datagram fits any path");
    }

    /// Datagrams from a node not seen yet are held until it is seen, in
    /// their order, or refused after their wait; what is held is bounded.
    #[test]
    fn a_strangers_datagrams_wait_for_it_to_be_seen() {
        let (a, b): (SocketAddr, SocketAddr) = ("10.0.0.1:7946".parse().unwrap(), "10.0.0.2:7946".parse().unwrap());
        let mut strangers = Strangers::default();
        assert!(strangers.hold(a, b"1") && strangers.hold(b, b"2") && strangers.hold(a, b"3"));
        let taken = strangers.known_now(|from| from == a);
        assert_eq!(taken, [(a, b"1".to_vec()), (a, b"3".to_vec())]);
        assert!(!strangers.is_empty(), "b's still held");
        let now = tokio::time::Instant::now();
        assert!(strangers.expire(now).is_empty(), "refused before its wait");
        assert_eq!(strangers.expire(now + STRANGER_WAIT), [b]);
        assert!(strangers.is_empty());
        let datagram = vec![0u8; 1400];
        let held = (0..4000).filter(|_| strangers.hold(b, &datagram)).count();
        assert_eq!(held, STRANGERS_MAX_BYTES / 1400, "bounded by bytes");
        strangers.known_now(|from| from == b);
        assert!(strangers.hold(b, &datagram), "room again once taken");
    }

    /// A fault is warned of once per address and kind, again once it was
    /// over; a flood of addresses does not grow what is remembered.
    #[test]
    fn each_fault_is_said_once_until_it_is_over() {
        let said = Said::default();
        let a: SocketAddr = "10.0.0.1:7000".parse().unwrap();
        assert!(said.first(a, "send"));
        assert!(!said.first(a, "send"), "said twice");
        assert!(said.first(a, "unknown"), "another fault of the same address");
        said.clear(a, "send");
        assert!(said.first(a, "send"), "a fault that came back");
        let many = (0..1000u16).filter(|p| said.first(SocketAddr::from(([10, 0, 0, 2], *p)), "unknown")).count();
        assert_eq!(many, Said::MAX - 2);
        assert_eq!(said.0.lock().unwrap().len(), Said::MAX);
    }

    #[test]
    fn malformed_datagrams_are_refused_with_the_reason() {
        let good = encode(&[WireFlow { family: 4, ..Default::default() }]);
        assert!(decode(&good[..good.len() - 1]).unwrap_err().contains("1 flows announced"));
        assert!(decode(b"LBF").unwrap_err().contains("no header"));
        assert!(decode(b"XXXX\0\0\0\0").unwrap_err().contains("magic"));
        let mut too_many = good.clone();
        too_many[4] = 200;
        assert!(decode(&too_many).is_err());
        let tcp = WireFlow { family: 4, proto: proto::TCP, state: flow_state::TCP_OPEN, ..Default::default() };
        assert!(tcp.to_flow(1, 0).is_some());
        assert_eq!(WireFlow { family: 5, ..tcp }.to_flow(1, 0), None, "an unknown family");
        assert_eq!(WireFlow { proto: proto::UDP, ..tcp }.to_flow(1, 0), None, "a TCP state for UDP");
        assert_eq!(WireFlow { state: flow_state::UDP, ..tcp }.to_flow(1, 0), None, "a UDP state for TCP");
        assert_eq!(WireFlow { state: flow_state::FREE, ..tcp }.to_flow(1, 0), None, "no flow");
    }
}
