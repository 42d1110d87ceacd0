//! Every type that crosses the kernel/user boundary, defined once.
//!
//! The XDP program (`lb-ebpf`) and the agent (`lb-userspace`) both use these
//! types for the keys and values of the BPF maps. All of them are `#[repr(C)]`
//! with explicit padding fields, so their layout is fixed and they can be
//! `Pod`. Addresses and ports are kept in network byte order, exactly as they
//! appear in packets, so the datapath never converts them.
#![no_std]

use bytemuck::{Pod, Zeroable};

/// IP protocol numbers the balancer serves.
pub mod proto {
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

/// Names of the BPF maps, as the XDP program declares them. The agent opens
/// and pins maps by these names.
pub mod map_name {
    /// Virtual services: [`ServiceKey`](crate::ServiceKey) -> [`Service`](crate::Service).
    pub const SERVICES: &str = "services";
    /// VIP addresses (any port): u32 address -> u8 (unused). Lets the datapath
    /// drop malformed packets meant for a VIP instead of passing them.
    pub const VIP_ADDRS: &str = "vip_addrs";
    /// Server table, indexed by server id: [`Server`](crate::Server).
    pub const SERVERS: &str = "servers";
    /// Consistent-hash tables, one row of [`MAGLEV_TABLE_SIZE`](crate::MAGLEV_TABLE_SIZE)
    /// server ids per service: `u32`.
    pub const MAGLEV: &str = "maglev";
    /// Connection tracking: an array of [`FlowSlot`](crate::FlowSlot)s, hashed
    /// as [`flow_table`](crate::flow_table) says.
    pub const FLOWS: &str = "flows";
    /// The flow table's tags: a `u64` per bucket, a 16-bit tag per slot
    /// (see [`flow_table::tag`](crate::flow_table::tag)).
    pub const FLOW_TAGS: &str = "flow_tags";
    /// Return path by server endpoint: [`EndpointKey`](crate::EndpointKey) ->
    /// [`ReverseNat`](crate::ReverseNat) (the VIP its replies come from).
    pub const SERVER_ENDPOINTS: &str = "server_endpoints";
    /// Return path per flow, for endpoints shared by several services:
    /// reply 5-tuple -> [`ReverseNat`](crate::ReverseNat).
    pub const REVERSE_NAT: &str = "reverse_nat";
    /// Per-CPU packet counters, indexed by [`Outcome`](crate::Outcome): `u64`.
    pub const OUTCOMES: &str = "outcomes";
    /// Per-CPU counters of flows evicted from a full flow table, indexed by
    /// [`eviction`](crate::eviction) kind: `u64`.
    pub const EVICTIONS: &str = "evictions";
    /// Per-CPU per-server counters, indexed by server id: [`ServerStats`](crate::ServerStats).
    pub const SERVER_STATS: &str = "server_stats";
    /// The traffic filter: 65536 bytes of [`filter`](crate::filter) bits.
    pub const FILTER: &str = "filter";
    /// Next hop towards each server, indexed by server id: [`NextHop`](crate::NextHop).
    pub const NEXT_HOPS: &str = "next_hops";
    /// Ring buffer of [`ResetRequest`](crate::ResetRequest)s: TCP resets the
    /// datapath asks the agent to send (XDP can send only one frame per packet).
    pub const RESET_REQUESTS: &str = "reset_requests";
    /// The purge's request: one [`purge::Request`](crate::purge::Request).
    pub const PURGE_REQUEST: &str = "purge_request";
    /// Servers whose flows the purge removes, indexed by server id: `u8`, 1
    /// to purge.
    pub const PURGE_SERVERS: &str = "purge_servers";
    /// The flows one purge run removed: [`purge::Purged`](crate::purge::Purged)s.
    pub const PURGED: &str = "purged";
    /// The format of the pinned maps' contents: one `u32`,
    /// [`MAPS_FORMAT`](crate::MAPS_FORMAT).
    pub const MAPS_FORMAT: &str = "maps_format";
    /// The datapath's clock: one `u64`, nanoseconds of CLOCK_MONOTONIC_COARSE
    /// as the agent last published it (see `lb-userspace/src/datapath/clock.rs`).
    pub const CLOCK: &str = "clock";

    /// IPv6 services: [`ServiceKey6`](crate::ServiceKey6) -> [`Service`](crate::Service).
    pub const SERVICES6: &str = "services6";
    /// IPv6 VIP addresses (any port): [`Addr6`](crate::Addr6) -> u8 (unused).
    pub const VIP_ADDRS6: &str = "vip_addrs6";
    /// Each server's IPv6 address, indexed by server id: [`Addr6`](crate::Addr6)
    /// (all zeroes: none). Its state is the one in [`SERVERS`].
    pub const SERVER_ADDRS6: &str = "server_addrs6";
    /// The IPv6 flow table: [`FlowSlot6`](crate::FlowSlot6)s, laid out as
    /// [`flow_table`](crate::flow_table) says.
    pub const FLOWS6: &str = "flows6";
    /// The IPv6 flow table's tags.
    pub const FLOW_TAGS6: &str = "flow_tags6";
    /// IPv6 return path by server endpoint: [`EndpointKey6`](crate::EndpointKey6)
    /// -> [`ReverseNat6`](crate::ReverseNat6).
    pub const SERVER_ENDPOINTS6: &str = "server_endpoints6";
    /// IPv6 return path per flow, for shared endpoints.
    pub const REVERSE_NAT6: &str = "reverse_nat6";
    /// Next hop towards each server's IPv6 address, by server id: [`NextHop`](crate::NextHop).
    pub const NEXT_HOPS6: &str = "next_hops6";
    /// Next hop towards recent IPv4 clients, per CPU: [`ClientHop`](crate::ClientHop)s.
    pub const CLIENT_HOPS: &str = "client_hops";
    /// The same for IPv6 clients.
    pub const CLIENT_HOPS6: &str = "client_hops6";
    /// The IPv6 flows one purge run removed: [`purge::Purged6`](crate::purge::Purged6)s.
    pub const PURGED6: &str = "purged6";
    /// The programs `lb` tail-calls for a family: the IPv6 program at 0.
    pub const FAMILY_PROGRAMS: &str = "family_programs";
    /// New IPv4 flows for the other balancer nodes: each CPU's log of
    /// [`flow_sync::LOG_SLOTS`](crate::flow_sync::LOG_SLOTS)
    /// [`flow_sync::LogEntry`](crate::flow_sync::LogEntry)s (slot numbers
    /// of the IPv4 table), one after the other (mmapable); the count in
    /// [`FLOW_SYNC`] moves only while sharing is on.
    pub const NEW_FLOWS: &str = "new_flows";
    /// The same for IPv6 flows.
    pub const NEW_FLOWS6: &str = "new_flows6";
    /// Flow sharing: a line of [`flow_sync::LINE`](crate::flow_sync::LINE)
    /// `u64`s per CPU (mmapable): the flag the agent sets, and the CPU's
    /// count of flows written to each log.
    pub const FLOW_SYNC: &str = "flow_sync";

    /// Every map, for pinning and compatibility checks (the purge's three
    /// live only during a purge and the clock runs only with its agent:
    /// they are never pinned).
    pub const ALL: [&str; 34] = [
        SERVICES,
        VIP_ADDRS,
        SERVERS,
        MAGLEV,
        FLOWS,
        FLOW_TAGS,
        SERVER_ENDPOINTS,
        REVERSE_NAT,
        OUTCOMES,
        EVICTIONS,
        SERVER_STATS,
        FILTER,
        NEXT_HOPS,
        RESET_REQUESTS,
        PURGE_REQUEST,
        PURGE_SERVERS,
        PURGED,
        MAPS_FORMAT,
        CLOCK,
        SERVICES6,
        VIP_ADDRS6,
        SERVER_ADDRS6,
        FLOWS6,
        FLOW_TAGS6,
        SERVER_ENDPOINTS6,
        REVERSE_NAT6,
        NEXT_HOPS6,
        PURGED6,
        FAMILY_PROGRAMS,
        NEW_FLOWS,
        NEW_FLOWS6,
        FLOW_SYNC,
        CLIENT_HOPS,
        CLIENT_HOPS6,
    ];
}

/// The format of what the maps hold, beyond their shapes (which the agent
/// checks apart): raised when the same bytes would be read differently, such
/// as a new flow hash, which places every flow elsewhere in the table. An
/// agent refuses pinned maps of another format: it would not find their flows.
/// 1: the maps before the format was recorded. 2: the flow hash mixes the VIP
/// side with one multiplication. 3: the IPv6 flow hash mixes once, as IPv4's.
/// 4: a flow is 20 bytes (16-bit server id, times in ticks), an IPv6 slot 64.
/// 5: a flow is 16 bytes (no creation time), an IPv4 slot 32 (its key
/// without the protocol, which the flow's state tells).
pub const MAPS_FORMAT: u32 = 5;

/// Size of the reset request ring buffer, bytes (a power of two, pages).
pub const RESET_REQUESTS_BYTES: u32 = 64 * 1024;

/// Number of slots in each service's Maglev table. Maglev needs a prime; this
/// one keeps the share of each server within a fraction of a percent of its
/// weight for pools of up to a few hundred servers.
pub const MAGLEV_TABLE_SIZE: u32 = 65537;

/// A Maglev slot that holds no server: the service has no server eligible for
/// new flows.
pub const NO_SERVER: u32 = u32::MAX;

/// Default capacity of the server table (server ids are `0..MAX_SERVERS`).
pub const DEFAULT_MAX_SERVERS: u32 = 4096;
/// Default number of services (rows of the Maglev map).
pub const DEFAULT_MAX_SERVICES: u32 = 64;
/// Default capacity of the flow table.
pub const DEFAULT_MAX_FLOWS: u32 = 1 << 20;

/// An IPv6 address as the datapath loads it: four 32-bit words in network
/// byte order (all zeroes: none).
pub type Addr6 = [u32; 4];

/// A virtual service: where clients send their packets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceKey {
    /// VIP, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

/// An IPv6 virtual service.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct ServiceKey6 {
    pub addr: Addr6,
    pub port: u16,
    pub proto: u8,
    pub _pad: u8,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Service {
    /// Row of this service in the Maglev map.
    pub index: u32,
}

/// Server states, as stored in [`Server::state`]. The agent writes them; the
/// datapath reads them when it picks a server and on every flow-table hit.
pub mod server_state {
    /// Slot not in use (no such server, or removed from the config).
    pub const UNUSED: u8 = 0;
    /// In service: gets new flows, forwards existing ones.
    pub const ENABLED: u8 = 1;
    /// No new flows; existing flows keep being forwarded.
    pub const DRAINING: u8 = 2;
    /// Out of service: no packet of any flow is forwarded to it.
    pub const DISABLED: u8 = 3;
}

/// A server of a pool (a pool member). Indexed by server id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Server {
    /// Address, network byte order.
    pub addr: u32,
    /// Port, network byte order.
    pub port: u16,
    /// One of [`server_state`].
    pub state: u8,
    /// Bits of [`server_flags`].
    pub flags: u8,
    /// Hash of "pool/server" names: lets a restarted agent give each pool
    /// member the id it had, so flows in the pinned flow table stay on it.
    /// Not read by the datapath.
    pub identity: u64,
}

/// How long the datapath trusts a cached next hop before looking it up again.
pub const NEXT_HOP_TTL_NS: u64 = 1_000_000_000;

/// A server reply's next hop towards its client, as the datapath caches it:
/// the FIB's answer for replies from `vip` to `client` arriving on
/// `ingress` (all three are the lookup's inputs: routing rules may choose
/// by source). The FIB lookup is most of what a reply costs (measured:
/// about 200 of 300 ns for IPv4, 420 of 550 for IPv6), and replies are most
/// of a service's packets. Per CPU, so no line is written by two CPUs and
/// no reader sees a half-written entry; direct-mapped by addresses
/// ([`client_hop_index`]): a client whose place another took is looked up
/// again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ClientHop {
    /// When it was looked up, on the datapath's clock; 0: never.
    pub checked_ns: u64,
    /// Egress interface.
    pub ifindex: u32,
    /// The interface the replies arrive on.
    pub ingress: u32,
    /// As in [`NextHop::eth_addrs`].
    pub eth_addrs: [u16; 6],
    /// MTU of the route.
    pub mtu: u16,
    pub _pad: u16,
    /// The addresses, an IPv4 address in the first word, the rest 0.
    pub client: [u32; 4],
    pub vip: [u32; 4],
}

// One cache line.
const _: () = assert!(core::mem::size_of::<ClientHop>() == 64);

/// Entries of each CPU's client-hop cache, per family (a power of two).
pub const CLIENT_HOP_ENTRIES: u32 = 4096;

/// Where the hop for replies from `vip` to `client` sits in the cache
/// (the addresses' words).
#[inline(always)]
pub fn client_hop_index(client: &[u32; 4], vip: &[u32; 4]) -> u32 {
    let folded = client[0] ^ client[1] ^ client[2] ^ client[3] ^ (vip[0] ^ vip[1] ^ vip[2] ^ vip[3]).rotate_left(16);
    folded.wrapping_mul(0x9e37_79b1) >> (32 - CLIENT_HOP_ENTRIES.trailing_zeros())
}

/// The FIB's answer for a server, cached by the datapath so that forwarding
/// a packet does not cost a route and neighbour lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct NextHop {
    /// When it was looked up, on the datapath's clock (the agent's, CLOCK_MONOTONIC_COARSE); 0: never.
    pub checked_ns: u64,
    /// Egress interface.
    pub ifindex: u32,
    /// MTU of the route.
    pub mtu: u16,
    pub _pad: u16,
    /// The Ethernet header's addresses as the packet carries them, the
    /// destination MAC then the source MAC, in 16-bit words (the header's
    /// alignment): the datapath writes them with six stores, not twelve
    /// byte stores.
    pub eth_addrs: [u16; 6],
    pub _pad2: u32,
}

/// A flow as the client sees it: client address and port, VIP and port.
/// Also used for the reply direction (server -> client) in `reverse_nat`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    // Two scalar paddings, not a [u8; 3]: the BPF backend zeroes an array
    // with a call to memset, on every packet.
    pub _pad: u8,
    pub _pad2: u16,
}

impl FlowKey {
    /// A 5-tuple, every field in network byte order.
    #[inline(always)]
    pub fn new(src_addr: u32, dst_addr: u32, src_port: u16, dst_port: u16, proto: u8) -> FlowKey {
        FlowKey { src_addr, dst_addr, src_port, dst_port, proto, _pad: 0, _pad2: 0 }
    }
}

/// An IPv6 flow as the client sees it (see [`FlowKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct FlowKey6 {
    pub src_addr: Addr6,
    pub dst_addr: Addr6,
    pub src_port: u16,
    pub dst_port: u16,
    pub proto: u8,
    pub _pad: u8,
    pub _pad2: u16,
}

impl FlowKey6 {
    /// A 5-tuple, every field in network byte order.
    #[inline(always)]
    pub fn new(src_addr: Addr6, dst_addr: Addr6, src_port: u16, dst_port: u16, proto: u8) -> FlowKey6 {
        FlowKey6 { src_addr, dst_addr, src_port, dst_port, proto, _pad: 0, _pad2: 0 }
    }
}

/// Flow states, as stored in [`Flow::state`].
pub mod flow_state {
    /// No flow: a free slot of the flow table.
    pub const FREE: u8 = 0;
    /// TCP, no FIN or RST seen.
    pub const TCP_OPEN: u8 = 1;
    /// TCP, a FIN or RST was seen from either side: removed after a short
    /// linger; a new SYN on the same 5-tuple starts a new flow.
    pub const TCP_CLOSING: u8 = 2;
    pub const UDP: u8 = 3;
}

/// What the datapath has seen of a TCP flow, as bits in [`Flow::seen`].
pub mod flow_seen {
    pub const FIN_FROM_CLIENT: u8 = 1;
    pub const FIN_FROM_SERVER: u8 = 2;
    pub const RST: u8 = 4;
    /// [`Flow::client_next_seq`](crate::Flow::client_next_seq) holds a value.
    pub const CLIENT_SEQ: u8 = 8;
    /// [`Flow::server_next_seq`](crate::Flow::server_next_seq) holds a value.
    pub const SERVER_SEQ: u8 = 16;
    /// The client sent an ACK: the handshake is done (a flow without it is
    /// half-open, as every flow of a flood of spoofed SYNs is).
    pub const CLIENT_ACK: u8 = 32;
    /// Written from another node's copy (flow replication), and not
    /// forwarded by this node since: the datapath clears it on the first
    /// packet of the flow it forwards in a tick ([`flow_time`]) after the
    /// copy's.
    pub const COPY: u8 = 64;
    /// The client sent data after the server last did: a request the server
    /// has not answered yet (set by the client's new data, SYN included,
    /// cleared by the server's). A quiet connection without it rests between
    /// requests; with it, its server is still at work (see the agent's
    /// `idle_close`). A flow written before this bit existed reads as resting.
    pub const AWAITING_SERVER: u8 = 128;

    /// A TCP flow is over once reset, or closed by both sides. A half-closed
    /// one (one FIN) is still in use: the other side may go on sending.
    pub const fn ended(seen: u8) -> bool {
        seen & RST != 0 || seen & (FIN_FROM_CLIENT | FIN_FROM_SERVER) == FIN_FROM_CLIENT | FIN_FROM_SERVER
    }
}

/// Kinds of flows evicted from a full flow table (indexes of the
/// [`EVICTIONS`](map_name::EVICTIONS) counters). A new flow takes the slot of
/// the flow idle longest among its candidates that carry no connection in
/// use (half-open or over), and only when there is none, of the flow idle
/// longest: a flood of spoofed SYNs evicts its own flows first.
pub mod eviction {
    /// A TCP flow whose client never completed the handshake.
    pub const HALF_OPEN: u32 = 0;
    /// A TCP flow reset, or closed by both sides.
    pub const CLOSED: u32 = 1;
    /// A flow in use: an established TCP connection, or UDP.
    pub const IN_USE: u32 = 2;
    pub const COUNT: u32 = 3;
    pub const NAMES: [&str; COUNT as usize] = ["half_open", "closed", "in_use"];

    /// The kind of a flow, from its state and what it has seen.
    pub const fn kind(state: u8, seen: u8) -> u32 {
        if state == super::flow_state::UDP {
            IN_USE
        } else if super::flow_seen::ended(seen) {
            CLOSED
        } else if seen & super::flow_seen::CLIENT_ACK == 0 {
            HALF_OPEN
        } else {
            IN_USE
        }
    }
}

/// Connection-tracking entry: which server a flow is on. 16 bytes, so that
/// an IPv4 flow's slot (its 12-byte key and version beside it) is half a
/// cache line, and an IPv6 flow's (its 40-byte key beside it) one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Flow {
    /// Its server's id: below `limits.max_servers`, which is at most 65,536.
    pub server_id: u16,
    /// One of [`flow_state`].
    pub state: u8,
    /// Bits of [`flow_seen`].
    pub seen: u8,
    /// The datapath's clock at the last packet, either direction, in
    /// [`flow_time`] ticks.
    pub last_seen: u32,
    /// The next sequence number the client will send (host order): what the
    /// server expects, so a reset sent to the server with it is accepted.
    pub client_next_seq: u32,
    /// The next sequence number the server will send (host order).
    pub server_next_seq: u32,
}

impl Flow {
    /// The id of the flow's server, as the server table numbers them.
    #[inline(always)]
    pub fn server(&self) -> u32 {
        self.server_id as u32
    }

    /// The flow's protocol, as its state tells it.
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        if self.state == flow_state::UDP { proto::UDP } else { proto::TCP }
    }
}

/// A flow's times: the datapath's clock (CLOCK_MONOTONIC_COARSE, as the
/// agent publishes it, in ns) in ticks of 2^20 ns (1.05 ms) held in 32 bits,
/// which is what makes a [`Flow`] 16 bytes. They wrap every 52 days, so a
/// time is read as an age against the clock now ([`age_ns`]), or against
/// another time less than 26 days away ([`after`]): no flow in the table is
/// idle that long (its timeouts are at most [`MAX_IDLE_TIMEOUT_NS`], and the
/// sweep removes a flow once idle that long).
pub mod flow_time {
    /// A tick is 2^`TICK_SHIFT` ns.
    pub const TICK_SHIFT: u32 = 20;
    /// The longest idle timeout a flow may have (24 days): below half the
    /// ticks' range, so that every flow's age stays readable.
    pub const MAX_IDLE_TIMEOUT_NS: u64 = 24 * 86_400 * 1_000_000_000;
    const _: () = assert!(MAX_IDLE_TIMEOUT_NS < 1 << (31 + TICK_SHIFT));

    /// The tick of clock time `ns`.
    #[inline(always)]
    pub fn tick(ns: u64) -> u32 {
        (ns >> TICK_SHIFT) as u32
    }

    /// Ticks from tick `t` to tick `now` (0 for a tick to come: none is
    /// written, since copies from other nodes take this node's clock, but
    /// an age never reads as 52 days for one).
    #[inline(always)]
    pub fn age(now: u32, t: u32) -> u32 {
        let ticks = now.wrapping_sub(t);
        if (ticks as i32) < 0 { 0 } else { ticks }
    }

    /// How long before clock time `now_ns` tick `t` began, to a tick.
    #[inline(always)]
    pub fn age_ns(now_ns: u64, t: u32) -> u64 {
        (age(tick(now_ns), t) as u64) << TICK_SHIFT
    }

    /// Whether tick `a` is at or after tick `b` (which are less than 26 days
    /// apart).
    #[inline(always)]
    pub fn at_or_after(a: u32, b: u32) -> bool {
        a.wrapping_sub(b) as i32 >= 0
    }

    /// Whether tick `a` is after tick `b` (as [`at_or_after`]).
    #[inline(always)]
    pub fn after(a: u32, b: u32) -> bool {
        a.wrapping_sub(b) as i32 > 0
    }
}

/// One slot of the IPv4 flow table: half a cache line holding one flow.
/// Half, not a whole line: what a lookup among a million flows and a new
/// flow pay grows with the table's size in bytes, its page walks above all
/// (docs/performance.md, "the table's footprint").
///
/// Slots are written under a sequence lock: the writer (who owns the slot
/// through its tag, see [`flow_table::tag`]) makes `version` odd, rewrites
/// the slot, and gives it a new even value. A reader that sees the same even
/// version before and after copying the slot saw one consistent flow.
/// Touching an existing flow (time, sequence numbers) writes its fields in
/// place without the lock, as with any BPF map value.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowSlot {
    /// First, 8-byte aligned (as the slot is): the datapath compares keys a
    /// word at a time.
    pub key: SlotKey,
    /// `flow.state` is [`flow_state::FREE`] in a free slot.
    pub flow: Flow,
    pub version: u32,
}

const _: () = assert!(core::mem::size_of::<FlowSlot>() == 32);

/// An IPv4 flow's key as its slot holds it: a [`FlowKey`] without its
/// protocol, which the flow's state tells ([`Flow::proto`]): 12 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SlotKey {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
}

/// One slot of the IPv6 flow table: one cache line, the key (40 bytes) and
/// the flow under the same sequence lock, as in a [`FlowSlot`]. A table of
/// its own, so IPv4's table spends no room on IPv6's keys.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct FlowSlot6 {
    /// First, 8-byte aligned, as in a [`FlowSlot`].
    pub key: FlowKey6,
    pub flow: Flow,
    pub version: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<FlowSlot6>() == 64);

/// A flow-table slot of either family, as the datapath and the agent both
/// read and write it: its parts under one sequence lock, and its key's hash.
pub trait TableSlot: Copy + 'static {
    type Key: Copy + Default + PartialEq + 'static;
    /// The slot's version and flow (field addresses: nothing is read).
    fn parts(slot: *mut Self) -> (*mut u32, *mut Flow);
    /// Whether the slot holds `key`, as far as its stored key tells: the
    /// caller checks [`Self::same_proto`] against the flow it reads.
    ///
    /// # Safety
    /// `slot` points at a slot of a table (volatile reads).
    unsafe fn holds(slot: *mut Self, key: &Self::Key) -> bool;
    /// Whether `flow`, found under `key`'s stored words, is of `key`'s
    /// protocol (IPv4's slot keeps the protocol in the flow's state).
    fn same_proto(key: &Self::Key, flow: &Flow) -> bool;
    /// The slot's key, read volatile, with the protocol of `flow` (the
    /// slot's flow, read under the same version).
    ///
    /// # Safety
    /// As [`Self::holds`].
    unsafe fn read_key(slot: *mut Self, flow: &Flow) -> Self::Key;
    /// Stores `key` in the slot (volatile), which the caller owns.
    ///
    /// # Safety
    /// As [`Self::holds`].
    unsafe fn write_key(slot: *mut Self, key: &Self::Key);
    fn hash(key: &Self::Key) -> u64;
}

/// Offsets, not dereferences: the pointer may be one the caller has yet to
/// prove valid.
#[inline(always)]
fn field<S, T>(slot: *mut S, offset: usize) -> *mut T {
    slot.cast::<u8>().wrapping_add(offset).cast()
}

impl TableSlot for FlowSlot {
    type Key = FlowKey;
    #[inline(always)]
    fn parts(slot: *mut Self) -> (*mut u32, *mut Flow) {
        (field(slot, core::mem::offset_of!(FlowSlot, version)), field(slot, core::mem::offset_of!(FlowSlot, flow)))
    }
    /// A 64-bit and a 32-bit load: the addresses, then the ports, as a
    /// little-endian machine (the BPF target and the agent's) lays them out.
    #[inline(always)]
    unsafe fn holds(slot: *mut Self, key: &FlowKey) -> bool {
        let addrs = key.src_addr as u64 | (key.dst_addr as u64) << 32;
        let ports = key.src_port as u32 | (key.dst_port as u32) << 16;
        // SAFETY: the caller's slot; the key opens it, 8-byte aligned.
        unsafe {
            core::ptr::read_volatile(field::<_, u64>(slot, 0)) == addrs
                && core::ptr::read_volatile(field::<_, u32>(slot, 8)) == ports
        }
    }
    #[inline(always)]
    fn same_proto(key: &FlowKey, flow: &Flow) -> bool {
        key.proto == flow.proto()
    }
    #[inline(always)]
    unsafe fn read_key(slot: *mut Self, flow: &Flow) -> FlowKey {
        // SAFETY: the caller's slot.
        let k: SlotKey = unsafe { core::ptr::read_volatile(field(slot, core::mem::offset_of!(FlowSlot, key))) };
        FlowKey::new(k.src_addr, k.dst_addr, k.src_port, k.dst_port, flow.proto())
    }
    #[inline(always)]
    unsafe fn write_key(slot: *mut Self, key: &FlowKey) {
        let k =
            SlotKey { src_addr: key.src_addr, dst_addr: key.dst_addr, src_port: key.src_port, dst_port: key.dst_port };
        // SAFETY: the caller's slot.
        unsafe { core::ptr::write_volatile(field(slot, core::mem::offset_of!(FlowSlot, key)), k) }
    }
    #[inline(always)]
    fn hash(key: &FlowKey) -> u64 {
        flow_table::hash(key)
    }
}

impl TableSlot for FlowSlot6 {
    type Key = FlowKey6;
    #[inline(always)]
    fn parts(slot: *mut Self) -> (*mut u32, *mut Flow) {
        (field(slot, core::mem::offset_of!(FlowSlot6, version)), field(slot, core::mem::offset_of!(FlowSlot6, flow)))
    }
    /// Five 64-bit loads, compared as they come (the protocol among them).
    #[inline(always)]
    unsafe fn holds(slot: *mut Self, key: &FlowKey6) -> bool {
        let want = key as *const FlowKey6 as *const u64;
        let mut same = true;
        for i in 0..5 {
            // SAFETY: the caller's slot, whose key opens it 8-byte aligned,
            // and a 40-byte key of ours (a u32 struct: read unaligned).
            same &= unsafe {
                core::ptr::read_volatile(field::<_, u64>(slot, 8 * i)) == core::ptr::read_unaligned(want.add(i))
            };
        }
        same
    }
    #[inline(always)]
    fn same_proto(_: &FlowKey6, _: &Flow) -> bool {
        true
    }
    #[inline(always)]
    unsafe fn read_key(slot: *mut Self, _: &Flow) -> FlowKey6 {
        // SAFETY: the caller's slot.
        unsafe { core::ptr::read_volatile(field(slot, core::mem::offset_of!(FlowSlot6, key))) }
    }
    #[inline(always)]
    unsafe fn write_key(slot: *mut Self, key: &FlowKey6) {
        // SAFETY: the caller's slot.
        unsafe { core::ptr::write_volatile(field(slot, core::mem::offset_of!(FlowSlot6, key)), *key) }
    }
    #[inline(always)]
    fn hash(key: &FlowKey6) -> u64 {
        flow_table::hash6(key)
    }
}

/// The flow table's layout, shared by the datapath and the agent: an array
/// of [`FlowSlot`]s in buckets of [`BUCKET_SLOTS`](flow_table::BUCKET_SLOTS)
/// consecutive slots (128 bytes of memory in IPv4, 256 in IPv6). A flow
/// sits in one of two buckets its hash picks: mostly the one with more free
/// slots when it was created ([`first_bucket`](flow_table::first_bucket)).
/// Two choices keep buckets even: in a simulation, a million flows never
/// found both their buckets full in a table of 4 Mi slots (sized for two
/// million), and 20 did in one of 2 Mi slots (7 with balancing alone; in a
/// kernel LRU map at its size, every new flow pushes one out). Nothing is
/// allocated or linked: a lookup reads its buckets' tags (see
/// [`tag`](flow_table::tag)), then only a slot whose tag matches, and a miss
/// (a new flow) reads no slot.
pub mod flow_table {
    use crate::FlowKey;

    pub const BUCKET_SLOTS: u32 = 4;
    /// Buckets in a 4 KiB page (the array's data starts on a page).
    const PAGE_BUCKETS: u32 = 16;
    /// The smallest table: one page.
    pub const MIN_SLOTS: u32 = PAGE_BUCKETS * BUCKET_SLOTS;

    /// Slots for a table of `max_flows` flows: twice as many, so a full
    /// table is at most half full, and a power of two, so that a bucket is
    /// found by a mask.
    pub const fn slots(max_flows: u32) -> u32 {
        let n = max_flows.next_power_of_two() * 2;
        if n < MIN_SLOTS { MIN_SLOTS } else { n }
    }

    /// A free slot's tag.
    pub const TAG_FREE: u16 = 0;
    /// The tag of a slot being freed (by the agent or the purge program).
    pub const TAG_BUSY: u16 = 1;

    /// Bits of a tag drawn from the flow's hash: the key part, which a
    /// lookup compares. The 6 bits above hold its server's hint.
    const KEY_BITS: u32 = 10;
    const KEY_MASK: u16 = (1 << KEY_BITS) - 1;
    /// Server hints there are: the low 6 bits of a server id.
    pub const SERVER_HINTS: u32 = 1 << (16 - KEY_BITS);

    /// A flow's tag: 10 bits of its hash (never all free or busy) and, above
    /// them, its server's hint ([`server_hint`]). Each bucket has a `u64` of
    /// four tags in the `flow_tags` map (slot `i` of the bucket in bits
    /// `16 i..16 i + 16`), an array a 32nd the table's size: a lookup reads
    /// its buckets' tags and only the slots whose key part matches (1 in
    /// 1024 others do), so a miss (a new flow) reads no slot; a purge reads
    /// only the slots whose hint is one of its servers'. Whoever changes a
    /// tag with a compare-and-swap owns the slot: the datapath to write a new
    /// flow (a free tag, or the oldest flow's), the agent or the purge to
    /// free one (its flow's tag, to busy, then free). The map's elements are
    /// lines of [`TAG_LINE_BUCKETS`] tag words.
    #[inline(always)]
    pub fn tag(hash: u64, server_id: u32) -> u16 {
        key_tag(hash) | (server_hint(server_id) as u16) << KEY_BITS
    }

    /// The part of a flow's tag that its key alone decides.
    #[inline(always)]
    pub fn key_tag(hash: u64) -> u16 {
        let t = (hash >> 48) as u16 & KEY_MASK;
        if t <= TAG_BUSY { t + 2 } else { t }
    }

    /// Whether a slot's tag may be the flow whose [`key_tag`] is `key_tag`.
    #[inline(always)]
    pub fn tag_matches(tag: u16, key_tag: u16) -> bool {
        tag & KEY_MASK == key_tag
    }

    /// A server's hint, as its flows' tags carry it.
    #[inline(always)]
    pub fn server_hint(server_id: u32) -> u32 {
        server_id % SERVER_HINTS
    }

    /// The server hint a flow's tag carries.
    #[inline(always)]
    pub fn tag_server_hint(tag: u16) -> u32 {
        (tag >> KEY_BITS) as u32
    }

    /// Slot `lane`'s tag in a bucket's tag word.
    #[inline(always)]
    pub fn lane(tags: u64, lane: u32) -> u16 {
        (tags >> (16 * lane)) as u16
    }

    /// The tag word with slot `lane`'s tag set to `tag`.
    #[inline(always)]
    pub fn with_lane(tags: u64, lane: u32, tag: u16) -> u64 {
        (tags & !(0xffff << (16 * lane))) | (tag as u64) << (16 * lane)
    }

    /// The top bit of each lane of a bucket's tag word, where its slot is
    /// free (its tag [`TAG_FREE`], 0): no loop, no branch.
    #[inline(always)]
    pub fn free_lanes(tags: u64) -> u64 {
        const LOW: u64 = 0x7fff_7fff_7fff_7fff;
        const HIGH: u64 = !LOW;
        // A lane's top bit: set if any of its bits is (its low 15 bits plus
        // 0x7fff carry into it without crossing into the next lane).
        !(((tags & LOW) + LOW) | tags) & HIGH
    }

    /// How many lanes [`free_lanes`] marked.
    #[inline(always)]
    pub fn lanes_count(marks: u64) -> u32 {
        ((marks >> 15 & 1) + (marks >> 31 & 1) + (marks >> 47 & 1) + (marks >> 63)) as u32
    }

    /// The first lane [`free_lanes`] marked (3 if none is: callers check
    /// there is one).
    #[inline(always)]
    pub fn first_lane(marks: u64) -> u32 {
        if marks & 1 << 15 != 0 {
            0
        } else if marks & 1 << 31 != 0 {
            1
        } else if marks & 1 << 47 != 0 {
            2
        } else {
            3
        }
    }

    /// Whether a new flow takes the first of its two buckets ([`buckets`]),
    /// from their [`free_lanes`]: the first while it holds at most one
    /// flow, else the one with more free slots (the first on a tie). A
    /// lookup reads the first bucket's tags, and the second's only when the
    /// flow is not in the first: filling the first a little further keeps
    /// 91 % of flows there in a table a quarter full, against 77 % when
    /// balancing alone, and spares most lookups among a million flows a
    /// second line (ACK among 1e6 flows 0.83-0.86x, measured alternately).
    /// The price, at the table's limit only: both buckets full for 2 new
    /// flows in 100,000 against 0.7 (see the unit test).
    #[inline(always)]
    pub fn first_bucket(free0: u64, free1: u64) -> bool {
        let count0 = lanes_count(free0);
        count0 >= BUCKET_SLOTS - 1 || count0 >= lanes_count(free1)
    }

    /// The top bit of each lane of a bucket's tag word whose slot holds a
    /// flow (its tag neither [`TAG_FREE`] nor [`TAG_BUSY`]).
    #[inline(always)]
    pub fn live_lanes(tags: u64) -> u64 {
        const LOW: u64 = 0x7fff_7fff_7fff_7fff;
        // Bit 0 cleared: free (0) and busy (1) both read as 0.
        let t = tags & 0xfffe_fffe_fffe_fffe;
        (((t & LOW) + LOW) | t) & !LOW
    }

    /// A server hint in the place a tag carries it, in each of a tag word's
    /// lanes: what [`lanes_with_hint`] compares with.
    #[inline(always)]
    pub fn hint_pattern(hint: u32) -> u64 {
        ((hint as u64 % SERVER_HINTS as u64) << KEY_BITS) * 0x0001_0001_0001_0001
    }

    /// The top bit of each lane whose tag carries the hint of `pattern`
    /// ([`hint_pattern`]): four lanes at once, no branch. Free and busy tags
    /// carry hint 0: see [`live_lanes`].
    #[inline(always)]
    pub fn lanes_with_hint(tags: u64, pattern: u64) -> u64 {
        const LOW: u64 = 0x7fff_7fff_7fff_7fff;
        const HINTS: u64 = 0xfc00_fc00_fc00_fc00;
        let differ = (tags ^ pattern) & HINTS;
        // A lane's top bit: set if its hint bits differ (bits 10..14 plus
        // 0x7fff carry into bit 15 and no further).
        !(((differ & LOW) + LOW) | differ) & !LOW
    }

    /// The top bit of each lane whose tag carries one of `hints` (bit `h`
    /// for hint `h`): a lane at a time, for several servers' hints.
    #[inline(always)]
    pub fn lanes_with_hints(tags: u64, hints: u64) -> u64 {
        let mut marks = 0;
        for i in 0..BUCKET_SLOTS {
            marks |= (hints >> tag_server_hint(lane(tags, i)) & 1) << (16 * i + 15);
        }
        marks
    }

    /// The index of the lowest set bit of `x` (64 if none), without a
    /// branch: BPF has no instruction for it. (LLVM may recognise the count
    /// and compile it to a lookup in a small read-only table instead: its
    /// result then needs a mask the verifier can see, see the purge.)
    #[inline(always)]
    pub fn lowest_bit(x: u64) -> u32 {
        // The bits below the lowest set one, counted.
        let mut n = (x & x.wrapping_neg()).wrapping_sub(1);
        n -= n >> 1 & 0x5555_5555_5555_5555;
        n = (n & 0x3333_3333_3333_3333) + (n >> 2 & 0x3333_3333_3333_3333);
        n = (n + (n >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
        (n.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32
    }

    /// Buckets whose tag words share an element of the `flow_tags` map: a
    /// cache line of them, which the purge skips at once when all are free.
    pub const TAG_LINE_BUCKETS: u32 = 8;

    /// Elements of the `flow_tags` map (`[u64; TAG_LINE_BUCKETS]`) for a
    /// table of `slots`.
    pub const fn tag_lines(slots: u32) -> u32 {
        slots / BUCKET_SLOTS / TAG_LINE_BUCKETS
    }

    /// The mask that takes a hash to a bucket number, for a table of `slots`.
    pub const fn bucket_mask(slots: u32) -> u32 {
        slots / BUCKET_SLOTS - 1
    }

    /// The first slots of the two buckets a flow may sit in, from separate
    /// bits of its hash (rarely the same bucket twice: the flow then has one
    /// choice). Anywhere in the table: keeping both in one page measured
    /// slower.
    #[inline(always)]
    pub fn buckets(hash: u64, bucket_mask: u32) -> [u32; 2] {
        let first = hash as u32 & bucket_mask;
        let second = (hash >> 32) as u32 & bucket_mask;
        [first * BUCKET_SLOTS, second * BUCKET_SLOTS]
    }

    /// A 64-bit mix (MurmurHash3's finaliser) of the 5-tuple: places a flow
    /// in the table and, for a new flow, picks its Maglev slot.
    #[inline(always)]
    pub fn hash(key: &FlowKey) -> u64 {
        let a = ((key.src_addr as u64) << 32) | ((key.src_port as u64) << 16) | key.proto as u64;
        let b = ((key.dst_addr as u64) << 32) | key.dst_port as u64;
        // The VIP side takes one multiplication (by an odd constant, so no
        // two sides collide), not a full mix: the finaliser mixes it with the
        // client side anyway, and every packet waits on this hash (measured:
        // +0.02 of the reflector's packet rate). A new hash is a new
        // MAPS_FORMAT.
        fmix64(a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    /// The same for an IPv6 5-tuple: each address folded to 64 bits first
    /// (a xor of its halves: a client's or VIP's address varies in either),
    /// then mixed once, as IPv4's (a second mix of the client side cost
    /// IPv6's packets 2-6 ns, measured; one passes the same spread tests).
    #[inline(always)]
    pub fn hash6(key: &crate::FlowKey6) -> u64 {
        let fold = |a: &crate::Addr6| (a[0] ^ a[2]) as u64 | ((a[1] ^ a[3]) as u64) << 32;
        let a = fold(&key.src_addr) ^ ((key.src_port as u64) << 16 | key.proto as u64).rotate_left(40);
        let b = fold(&key.dst_addr) ^ (key.dst_port as u64) << 48;
        fmix64(a ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }

    #[inline(always)]
    fn fmix64(mut h: u64) -> u64 {
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^= h >> 33;
        h
    }
}

/// Flow replication between balancer nodes: the datapath hands each new
/// flow to its agent, which sends it to the other nodes (see
/// `lb-userspace/src/cluster/replicate.rs`), so that any node can continue
/// any flow when the router sends it elsewhere.
///
/// Each CPU writes the flow-table slot of each flow it creates into its own
/// part of a log (one per family), a ring of [`LOG_SLOTS`] slot numbers it
/// alone writes: no lock, no helper call, two stores to lines it keeps
/// cached, made last on the new flow's path (`lb-ebpf/src/flow_sync.rs`
/// says why there). Its line of the `flow_sync` map holds the sharing flag
/// and the number of flows it has written to each log; the agent polls
/// those, reads the new slot numbers through mmap, and the flows from the
/// table's slots (under their sequence locks). A slot number overwritten
/// before the agent read it is counted as lost by the agent (its flow's
/// copy waits for the next refresh).
pub mod flow_sync {
    /// Entries of each CPU's log, per family (a power of two): the agent
    /// reads every few milliseconds, so a CPU would need to create flows
    /// at some 800,000 per second to lap it. 32 KiB per CPU and family.
    pub const LOG_SLOTS: u32 = 4096;

    /// A CPU's line of the `flow_sync` map: `u64`s at these indexes.
    pub const LINE: usize = 8;
    /// Non-zero: new flows are shared (the agent writes every CPU's).
    pub const ON: usize = 0;
    /// Flows this CPU has written to the IPv4 log, ever.
    pub const HEAD4: usize = 1;
    /// Flows this CPU has written to the IPv6 log, ever.
    pub const HEAD6: usize = 2;

    /// An entry of a log: the number of the flow-table slot the new flow
    /// was written to (in its family's table). A `u64`: a BPF array's
    /// elements are 8 bytes apart at least, as the agent maps them.
    pub type LogEntry = u64;
}

/// The in-kernel purge of servers' flows (program `purge_flows`, in
/// `lb-ebpf/src/purge.rs`): the agent marks the servers in `purge_servers`,
/// then runs the program on a range of buckets until the range is done;
/// each run frees up to [`BATCH`](purge::BATCH) flows and hands them back in
/// `purged`.
pub mod purge {
    use bytemuck::{Pod, Zeroable};

    use crate::{Flow, FlowKey};

    /// In [`Request::family`]: which flow table a run walks.
    pub const IPV4: u32 = 4;
    pub const IPV6: u32 = 6;

    /// Flows one run frees at most: the size of the `purged` map.
    pub const BATCH: u32 = 16 * 1024;

    /// One run's request and answer (the `purge_request` map's one element).
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
    pub struct Request {
        /// In: the first bucket to scan. Out: the first bucket not scanned
        /// (`end_bucket` once the range is done).
        pub next_bucket: u32,
        /// In: the end of the range (exclusive).
        pub end_bucket: u32,
        /// In: 0. Out: flows freed, in `purged[0..purged]`.
        pub purged: u32,
        /// In: [`IPV4`] (or 0) or [`IPV6`].
        pub family: u32,
        /// In: bit `h` set if a server to purge has the hint `h`
        /// ([`flow_table::server_hint`](crate::flow_table::server_hint)):
        /// only slots whose tag has one of these hints are read.
        pub server_hints: u64,
    }

    /// A flow the purge freed.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
    pub struct Purged {
        pub key: FlowKey,
        pub flow: Flow,
    }

    /// An IPv6 flow the purge freed.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
    pub struct Purged6 {
        pub key: crate::FlowKey6,
        pub flow: Flow,
    }
}

/// A TCP reset for the agent to send (host order numbers, network order
/// addresses and ports, like packets): the datapath answers a packet of a
/// terminated flow with a reset to its sender and asks for one to the other end.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ResetRequest {
    pub src_addr: u32,
    pub dst_addr: u32,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
}

/// An IPv6 TCP reset for the agent to send (see [`ResetRequest`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ResetRequest6 {
    pub src_addr: Addr6,
    pub dst_addr: Addr6,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: u32,
}

/// Where a server's reply must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ReverseNat {
    /// VIP, network byte order.
    pub vip: u32,
    /// Service port, network byte order.
    pub port: u16,
    /// In `server_endpoints`: 1 when the endpoint serves several services,
    /// so the VIP of a reply is found per flow, in `reverse_nat`.
    pub shared: u8,
    pub _pad: u8,
}

/// A server endpoint (address, port, protocol), keying `server_endpoints`:
/// the same layout as a service.
pub type EndpointKey = ServiceKey;

/// Where a server's IPv6 reply must appear to come from.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ReverseNat6 {
    pub vip: Addr6,
    pub port: u16,
    /// As in [`ReverseNat::shared`].
    pub shared: u8,
    pub _pad: u8,
}

/// An IPv6 server endpoint, keying `server_endpoints6`.
pub type EndpointKey6 = ServiceKey6;

/// The datapath's traffic filter, the `filter` map: a byte array that lets
/// it pass traffic that is not its own with an array read instead of hash
/// lookups. Two kinds of bits, at two kinds of index:
pub mod filter {
    /// At [`service_index`]`(vip, port, protocol)`: some virtual service may
    /// be there (several may share an index; the services map decides).
    pub const SERVICE: u8 = 1;
    /// At a port's network-order value: some server endpoint sends from it.
    pub const SERVER_PORT: u8 = 2;
    /// Entries in the map: one per 16-bit index.
    pub const ENTRIES: u32 = 65536;

    /// Folds a (VIP, port, protocol), as found in a packet (network order
    /// loaded natively), to 16 bits. VIPs that differ in any octet, or ports
    /// of one VIP, land on different indexes.
    #[inline(always)]
    pub fn service_index(addr: u32, port: u16, proto: u8) -> u32 {
        ((addr ^ (addr >> 16)) ^ port as u32 ^ ((proto as u32) << 8)) & 0xffff
    }

    /// The same for an IPv6 VIP: its words folded to one first.
    #[inline(always)]
    pub fn service_index6(addr: &crate::Addr6, port: u16, proto: u8) -> u32 {
        service_index(addr[0] ^ addr[1] ^ addr[2] ^ addr[3], port, proto)
    }
}

/// Bits of [`Server::flags`].
pub mod server_flags {
    /// The server's endpoint serves several services: its flows need a
    /// per-flow return-path entry.
    pub const SHARED_ENDPOINT: u8 = 1;
}

/// Per-server traffic counters (per CPU; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ServerStats {
    /// Packets and bytes forwarded to the server.
    pub packets_to: u64,
    pub bytes_to: u64,
    /// Replies from the server rewritten back to the VIP.
    pub packets_from: u64,
    pub bytes_from: u64,
    /// Flows created on this server.
    pub new_flows: u64,
}

macro_rules! outcomes {
    ($($(#[doc = $doc:literal])* $name:ident = $label:literal,)*) => {
        /// What happened to a packet. The datapath counts every packet under
        /// exactly one outcome, so every pass and drop has a named reason.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Outcome {
            $($(#[doc = $doc])* $name,)*
        }

        impl Outcome {
            pub const ALL: &'static [Outcome] = &[$(Outcome::$name,)*];

            /// The outcome numbered `index` (`outcome as u32`), computed,
            /// not read from [`ALL`](Self::ALL): IPv6's path gets its
            /// outcome back from a call as a number, and reading the table
            /// cost it a cache line a packet (2-6 ns, measured).
            #[inline(always)]
            pub const fn from_index(index: u32) -> Option<Outcome> {
                if index < Self::ALL.len() as u32 {
                    // SAFETY: `Outcome` is `repr(u32)` and its variants take
                    // no explicit discriminant, so they are numbered 0, 1,
                    // ... in declaration order: every number below their
                    // count is one of them (asserted at compile time below).
                    Some(unsafe { core::mem::transmute::<u32, Outcome>(index) })
                } else {
                    None
                }
            }

            /// Stable name, as shown by the CLI and the API.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Outcome::$name => $label,)*
                }
            }
        }
    };
}

outcomes! {
    /// Neither IPv4 nor IPv6 (ARP, ...): passed to the kernel.
    PassNotIp = "pass_not_ip",
    /// IPv4 but neither for a virtual service nor a server's reply.
    PassNotForUs = "pass_not_for_us",
    /// To a VIP address but neither TCP nor UDP (ICMP, NDP, ...), and not
    /// an error about a balanced flow: passed.
    PassOtherProtocol = "pass_other_protocol",
    /// TTL would expire: passed unchanged, the kernel answers with ICMP.
    PassTtlExpired = "pass_ttl_expired",
    /// Rewritten, but the next hop's MAC is not known yet: passed to the
    /// kernel, which resolves it and forwards the (fully rewritten) packet.
    PassNeighbourUnresolved = "pass_neighbour_unresolved",
    /// First packet of a flow: server chosen, flow created, forwarded.
    ForwardNewFlow = "forward_new_flow",
    /// Packet of a known flow, forwarded to its server.
    ForwardFlow = "forward_flow",
    /// Server reply, rewritten to come from the VIP and forwarded.
    ForwardReply = "forward_reply",
    /// ICMP "fragmentation needed" or ICMPv6 "packet too big" to a VIP about
    /// a balanced flow: sent on to the flow's server, rewritten as if its own
    /// packet had drawn it (path MTU discovery through the balancer).
    ForwardIcmpTooBig = "forward_icmp_too_big",
    /// Headers cut short (Ethernet, IPv4, TCP or UDP) on a packet to a VIP.
    DropTruncated = "drop_truncated",
    /// IPv4 header length below 20 bytes or beyond the total length, or an
    /// IPv6 header whose version or payload length is wrong.
    DropBadIpHeader = "drop_bad_ip_header",
    /// IPv4 options on a packet to a VIP (not supported).
    DropIpOptions = "drop_ip_options",
    /// IPv4 fragment, or IPv6 packet with a fragment header, to a VIP (not
    /// supported: ports are only in the first).
    DropFragment = "drop_fragment",
    /// IPv6 packet to a VIP whose extension headers are not walked: a
    /// routing header with segments left, an unknown header, or a chain
    /// longer than the datapath follows.
    DropIpv6ExtensionHeaders = "drop_ipv6_extension_headers",
    /// IPv6 UDP with a zero checksum, to a VIP: RFC 8200 makes the checksum
    /// mandatory (the receiver would drop it).
    DropUdpZeroChecksum = "drop_udp_zero_checksum",
    /// The service has no server that may take new flows.
    DropNoServer = "drop_no_server",
    /// The flow's server is disabled or no longer configured, and the flow
    /// is UDP, or TCP already over (the packet is not answered).
    DropServerUnavailable = "drop_server_unavailable",
    /// A TCP packet of a flow whose server is disabled: answered with a reset
    /// (XDP_TX), and the other end's reset requested from the agent.
    ResetTerminatedFlow = "reset_terminated_flow",
    /// Reply from a server that is not (or no longer) the flow's server.
    DropReplyWithoutFlow = "drop_reply_without_flow",
    /// No route to the server or client.
    DropNoRoute = "drop_no_route",
    /// Larger than the egress MTU.
    DropMtuExceeded = "drop_mtu_exceeded",
    /// A new flow lost the claim of a slot of its bucket to another CPU (or
    /// the agent) at the same instant, twice running: dropped, the client's
    /// retransmission gets a slot.
    DropFlowSlotTaken = "drop_flow_slot_taken",
    /// The program hit an internal error (map full, ...): XDP_ABORTED.
    Aborted = "aborted",
}

/// Number of outcome counters.
pub const OUTCOME_COUNT: u32 = Outcome::ALL.len() as u32;

// `Outcome::from_index`'s premise: the variant at place `i` is numbered `i`.
const _: () = {
    let mut i = 0;
    while i < Outcome::ALL.len() {
        assert!(Outcome::ALL[i] as u32 == i as u32);
        i += 1;
    }
};

// The layouts both sides rely on.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<ServiceKey>() == 8);
    assert!(size_of::<Service>() == 4);
    assert!(size_of::<Server>() == 16);
    assert!(size_of::<FlowKey>() == 16);
    assert!(size_of::<Flow>() == 16);
    // Read through mmap: multiples of 8 bytes, as an array map's elements.
    assert!(size_of::<purge::Purged>() == 32);
    assert!(size_of::<purge::Purged6>() == 56);
    assert!(size_of::<ResetRequest>() == 16);
    assert!(size_of::<ReverseNat>() == 8);
    assert!(size_of::<ServerStats>() == 40);
    assert!(size_of::<NextHop>() == 32);
    assert!(size_of::<ServiceKey6>() == 20);
    assert!(size_of::<FlowKey6>() == 40);
    assert!(size_of::<ResetRequest6>() == 40);
    assert!(size_of::<ReverseNat6>() == 20);
};

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: each type is #[repr(C)], has no padding (checked by bytemuck's
    // Pod derive) and every bit pattern is valid.
    unsafe impl aya::Pod for ServiceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Service {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Server {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Flow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowSlot {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReverseNat {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServerStats {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ResetRequest {}
    // SAFETY: as above.
    unsafe impl aya::Pod for NextHop {}
    // SAFETY: as above.
    unsafe impl aya::Pod for purge::Request {}
    // SAFETY: as above.
    unsafe impl aya::Pod for purge::Purged {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ServiceKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowKey6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FlowSlot6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ReverseNat6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ResetRequest6 {}
    // SAFETY: as above.
    unsafe impl aya::Pod for purge::Purged6 {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::collections::HashSet;

    use super::{
        CLIENT_HOP_ENTRIES, Flow, FlowKey, FlowSlot, Outcome, TableSlot, client_hop_index, filter::service_index,
        flow_state, flow_table, flow_time, proto,
    };

    /// An IPv4 slot keeps its key's protocol in its flow's state alone: a
    /// key reads back whole, and a key of the other protocol on the same
    /// addresses and ports is not the slot's flow.
    #[test]
    fn an_ipv4_slot_tells_its_flows_protocol_by_its_state() {
        for (p, state) in
            [(proto::TCP, flow_state::TCP_OPEN), (proto::TCP, flow_state::TCP_CLOSING), (proto::UDP, flow_state::UDP)]
        {
            let key = FlowKey::new(0x0200_000a, 0x0100_640a, 0x3930, 0x5000, p);
            let flow = Flow { server_id: 3, state, ..Flow::default() };
            let mut slot = FlowSlot { flow, ..FlowSlot::default() };
            let at = &mut slot as *mut FlowSlot;
            // SAFETY: a slot of ours, on the stack.
            unsafe {
                FlowSlot::write_key(at, &key);
                assert_eq!(FlowSlot::read_key(at, &flow), key);
                assert!(FlowSlot::holds(at, &key) && FlowSlot::same_proto(&key, &flow));
                let other = FlowKey { proto: if p == proto::TCP { proto::UDP } else { proto::TCP }, ..key };
                assert!(!FlowSlot::same_proto(&other, &flow), "{other:?}");
                assert!(!FlowSlot::holds(at, &FlowKey { src_port: 0x3931, ..key }));
                assert!(!FlowSlot::holds(at, &FlowKey { dst_addr: 0x0200_640a, ..key }));
            }
        }
    }

    /// A flow's times are 32-bit ticks that wrap: read against the clock
    /// now, or against each other, they keep their order across the wrap,
    /// for any flow younger than the longest idle timeout.
    #[test]
    fn a_flows_times_read_as_ages_across_the_ticks_wrap() {
        let tick_ns = 1u64 << flow_time::TICK_SHIFT;
        let wrap_ns = tick_ns << 32;
        for now in [5 * tick_ns, wrap_ns - 3 * tick_ns, wrap_ns + 2 * tick_ns, 7 * wrap_ns + 11] {
            let seen = flow_time::tick(now - 4 * tick_ns);
            assert_eq!(flow_time::age_ns(now, seen), 4 * tick_ns, "at {now}");
            assert_eq!(flow_time::age_ns(now, flow_time::tick(now)), 0);
            assert!(flow_time::at_or_after(seen, seen) && !flow_time::after(seen, seen));
            let Some(then) = now.checked_sub(flow_time::MAX_IDLE_TIMEOUT_NS) else { continue };
            let oldest = flow_time::tick(then);
            let age = flow_time::age_ns(now, oldest);
            assert!(age.abs_diff(flow_time::MAX_IDLE_TIMEOUT_NS) <= tick_ns, "at {now}: {age}");
            assert!(flow_time::after(flow_time::tick(now), oldest) && !flow_time::after(oldest, flow_time::tick(now)));
        }
        // A tick to come (never written by this node's datapath) reads as now.
        assert_eq!(flow_time::age_ns(5 * tick_ns, 9), 0);
    }

    /// The datapath hands outcomes between its functions as numbers: each
    /// number names its own outcome, and one past the last names none.
    #[test]
    fn an_outcome_comes_back_from_its_number() {
        for &outcome in Outcome::ALL {
            assert_eq!(Outcome::from_index(outcome as u32), Some(outcome));
        }
        assert_eq!(Outcome::from_index(Outcome::ALL.len() as u32), None);
        assert_eq!(Outcome::from_index(u32::MAX), None);
    }

    /// The flow hash places flows in buckets (its low and high 32 bits),
    /// picks their tags and Maglev slots (high bits): each must spread keys
    /// that differ in a few bits, as real 5-tuples do (one client's ports,
    /// clients of one subnet, one VIP's ports).
    #[test]
    fn the_flow_hash_spreads_structured_keys() {
        let addr = |a: u32| a.to_be();
        let key = |client: u32, client_port: u32, vip_port: u32, proto| {
            let (sport, dport) = ((client_port as u16).to_be(), (vip_port as u16).to_be());
            flow_table::hash(&FlowKey::new(addr(client), addr(0x0a64_0001), sport, dport, proto))
        };
        assert_spreads("one client's ports", (0..60_000).map(|p| key(0x0a00_0002, p, 80, 6)));
        assert_spreads("clients of a /16", (0..60_000).map(|c| key(0x0a00_0000 + c, 40000, 443, 6)));
        assert_spreads("one VIP's ports", (0..60_000).map(|p| key(0x0a00_0002, 40000, p, 17)));
    }

    /// The same for IPv6 5-tuples, whose addresses are folded to 64 bits
    /// before the mix: clients that differ in their interface identifier, in
    /// their subnet, or in their ports.
    #[test]
    fn the_ipv6_flow_hash_spreads_structured_keys() {
        let vip: super::Addr6 = [0xfd00_0100u32.to_be(), 0, 0, 1u32.to_be()];
        let key = |client: super::Addr6, client_port: u32, vip_port: u32, proto| {
            let (sport, dport) = ((client_port as u16).to_be(), (vip_port as u16).to_be());
            flow_table::hash6(&super::FlowKey6::new(client, vip, sport, dport, proto))
        };
        let host = |subnet: u32, id: u32| [0x2001_0db8u32.to_be(), subnet.to_be(), 0, id.to_be()];
        assert_spreads("one client's ports", (0..60_000).map(|p| key(host(1, 2), p, 80, 6)));
        assert_spreads("hosts of a /64", (0..60_000).map(|c| key(host(1, c), 40000, 443, 6)));
        assert_spreads("one host id in many /64s", (0..60_000).map(|s| key(host(s << 8, 2), 40000, 443, 6)));
        assert_spreads("one VIP's ports", (0..60_000).map(|p| key(host(1, 2), 40000, p, 17)));
    }

    /// Buckets of a 64 Ki-slot table (16 Ki buckets, 3.7 keys each on
    /// average): the fullest stays near what random placement gives. Tags
    /// (1024 key parts, 59 keys each) and 16 ranges of Maglev slots even.
    fn assert_spreads(case: &str, hashes: impl Iterator<Item = u64>) {
        let hashes: std::vec::Vec<u64> = hashes.collect();
        let n = hashes.len() as f64;
        let mask = flow_table::bucket_mask(1 << 16);
        let mut buckets = std::vec![[0u32; 2]; mask as usize + 1];
        for &hash in &hashes {
            let [first, second] = flow_table::buckets(hash, mask);
            buckets[(first / flow_table::BUCKET_SLOTS) as usize][0] += 1;
            buckets[(second / flow_table::BUCKET_SLOTS) as usize][1] += 1;
        }
        for choice in 0..2 {
            let fullest = buckets.iter().map(|b| b[choice]).max().unwrap();
            assert!(fullest <= 16, "{case}: a bucket (choice {choice}) got {fullest} keys");
        }
        let mut tags = std::vec![0u32; 1024];
        let mut ranges = [0u32; 16];
        for &hash in &hashes {
            tags[(hash >> 48) as usize & 1023] += 1;
            ranges[(hash >> 60) as usize] += 1;
        }
        let (least, most) = (tags.iter().min().unwrap(), tags.iter().max().unwrap());
        assert!(*least >= 25 && *most <= 100, "{case}: tags drawn {least} to {most} times");
        for count in ranges {
            assert!((count as f64 / n - 1.0 / 16.0).abs() < 0.005, "{case}: Maglev ranges {ranges:?}");
        }
    }

    /// The free lanes of a tag word, found without a loop, are the lanes
    /// whose tag is free: every combination of free and taken lanes, with
    /// tags that set only the top bit, only the low bit, or all bits.
    #[test]
    fn free_lanes_are_the_lanes_whose_tag_is_free() {
        for tag in [1u16, 2, 0x8000, 0xffff, 0x0400, 0x7fff] {
            for pattern in 0..16u32 {
                let mut word = 0;
                for lane in 0..4 {
                    if pattern & 1 << lane != 0 {
                        word = flow_table::with_lane(word, lane, tag);
                    }
                }
                let marks = flow_table::free_lanes(word);
                let free: std::vec::Vec<u32> = (0..4).filter(|l| flow_table::lane(word, *l) == 0).collect();
                assert_eq!(flow_table::lanes_count(marks), free.len() as u32, "tag {tag:#x}, pattern {pattern:04b}");
                if let Some(first) = free.first() {
                    assert_eq!(flow_table::first_lane(marks), *first, "tag {tag:#x}, pattern {pattern:04b}");
                }
            }
        }
    }

    /// A new flow's bucket: the first while it holds at most one flow, else
    /// the one with more free slots, the first on a tie. Every occupancy of
    /// both buckets, with tags of every kind in the taken lanes.
    #[test]
    fn a_new_flow_fills_its_first_bucket_a_little_further() {
        let word = |pattern: u32, tag: u16| {
            (0..4).filter(|l| pattern & 1 << l != 0).fold(0, |w, l| flow_table::with_lane(w, l, tag))
        };
        for (p0, p1, tag) in
            (0..16u32).flat_map(|a| (0..16u32).flat_map(move |b| [1u16, 0x0405, 0xffff].map(move |t| (a, b, t))))
        {
            let free = [4 - p0.count_ones(), 4 - p1.count_ones()];
            let first =
                flow_table::first_bucket(flow_table::free_lanes(word(p0, tag)), flow_table::free_lanes(word(p1, tag)));
            assert_eq!(first, free[0] >= 3 || free[0] >= free[1], "taken {p0:04b} {p1:04b}, tag {tag:#x}");
        }
    }

    /// A million random flows placed as the datapath places them: in a
    /// table sized for two million (4 Mi slots) none finds both buckets
    /// full and 91 % sit in their first bucket (77 % with balancing alone);
    /// at 2 Mi slots (sized for one million, at its limit) both buckets are
    /// full for 2 in 100,000 (balancing alone: 0.7).
    #[test]
    fn most_flows_sit_in_their_first_bucket_and_buckets_stay_even() {
        let fill = |slots: u32, balanced_only: bool| {
            let buckets = slots / flow_table::BUCKET_SLOTS;
            let mut words = std::vec![0u64; buckets as usize];
            let mut x = 0x2545_f491_4f6c_dd1du64;
            let (mut first, mut lost) = (0u32, 0u32);
            for _ in 0..1_000_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let pair = flow_table::buckets(x, flow_table::bucket_mask(slots))
                    .map(|f| (f / flow_table::BUCKET_SLOTS) as usize);
                let free = pair.map(|b| flow_table::free_lanes(words[b]));
                if free == [0, 0] {
                    lost += 1;
                    continue;
                }
                let take_first = if balanced_only {
                    flow_table::lanes_count(free[0]) >= flow_table::lanes_count(free[1])
                } else {
                    flow_table::first_bucket(free[0], free[1])
                };
                let b = if take_first { 0 } else { 1 };
                let w = &mut words[pair[b]];
                *w = flow_table::with_lane(*w, flow_table::first_lane(free[b]), flow_table::tag(x, 7));
                first += (b == 0) as u32;
            }
            (first as f64 / (1_000_000 - lost) as f64, lost)
        };
        let (share, lost) = fill(4 << 20, false);
        let (balanced_share, balanced_lost) = fill(4 << 20, true);
        let (_, full_lost) = fill(2 << 20, false);
        let (_, full_balanced_lost) = fill(2 << 20, true);
        assert_eq!((lost, balanced_lost), (0, 0));
        assert!(share > 0.88 && balanced_share < 0.8, "first bucket: {share:.3}, balancing alone {balanced_share:.3}");
        assert!(
            full_lost <= 4 * full_balanced_lost.max(5),
            "at its limit: {full_lost} lost, {full_balanced_lost} balancing alone"
        );
    }

    /// The purge's four-lanes-at-once tests agree with a lane-by-lane
    /// reading: live lanes, lanes of one hint (hint 0 included, which free
    /// and busy tags also carry) and of several, over words of random tags
    /// and of every hint; and the lowest set bit of any one-bit word.
    #[test]
    fn lane_marks_agree_with_each_lane_read_alone() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let special = [0u16, 1, 2, 0x03ff, 0x0400, 0x0401, 0xfc00, 0xffff];
        for round in 0..20_000 {
            let mut word = random();
            // Some lanes free, busy or at the hints' edges.
            for lane in 0..4 {
                if random() % 3 == 0 {
                    word = flow_table::with_lane(word, lane, special[random() as usize % special.len()]);
                }
            }
            let live = |l: u32| flow_table::lane(word, l) > flow_table::TAG_BUSY;
            let hint_of = |l: u32| flow_table::tag_server_hint(flow_table::lane(word, l));
            let bits = |f: &dyn Fn(u32) -> bool| (0..4).filter(|l| f(*l)).fold(0u32, |b, l| b | 1 << l);
            assert_eq!(lane_bits(flow_table::live_lanes(word)), bits(&live), "{word:#x}");
            let hint = round % flow_table::SERVER_HINTS;
            let one = flow_table::lanes_with_hint(word, flow_table::hint_pattern(hint));
            assert_eq!(lane_bits(one), bits(&|l| hint_of(l) == hint), "{word:#x}, hint {hint}");
            let hints = random() & random();
            let several = flow_table::lanes_with_hints(word, hints);
            assert_eq!(lane_bits(several), bits(&|l| hints >> hint_of(l) & 1 != 0), "{word:#x}");
        }
        for bit in 0..64 {
            assert_eq!(flow_table::lowest_bit(1 << bit), bit);
            assert_eq!(flow_table::lowest_bit(u64::MAX << bit), bit);
        }
        assert_eq!(flow_table::lowest_bit(0), 64);
    }

    /// A bit per lane (bit `i` for lane `i`) of a tag word's lane marks.
    fn lane_bits(marks: u64) -> u32 {
        (0..4).filter(|l| marks >> (16 * l + 15) & 1 != 0).fold(0, |bits, l| bits | 1 << l)
    }

    /// A flow's tag is never a free or busy one, carries its server's hint,
    /// and is found by its key alone.
    #[test]
    fn tags_carry_the_server_hint_and_match_by_key() {
        for i in 0..100_000u64 {
            let hash = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let server = (i % 300) as u32;
            let tag = flow_table::tag(hash, server);
            assert!(tag > flow_table::TAG_BUSY, "tag {tag} of hash {hash:#x}");
            assert_eq!(flow_table::tag_server_hint(tag), flow_table::server_hint(server));
            assert!(flow_table::tag_matches(tag, flow_table::key_tag(hash)));
            assert!(!flow_table::tag_matches(tag, flow_table::key_tag(hash ^ 1 << 48)));
        }
    }

    /// The filter is only worth its read if services do not pile onto few
    /// indexes: VIPs that differ in one octet, and ports of one VIP, must not
    /// collide.
    #[test]
    fn service_indexes_spread_vips_and_ports() {
        let vip = |octets: [u8; 4]| u32::from_ne_bytes(octets);
        let http = 80u16.to_be();
        for octet in 0..4 {
            let mut seen = HashSet::new();
            for value in 0..=255u8 {
                let mut octets = [10, 100, 0, 1];
                octets[octet] = value;
                assert!(seen.insert(service_index(vip(octets), http, 6)), "octet {octet} = {value} collides");
            }
        }
        let mut seen = HashSet::new();
        for port in 1..=1024u16 {
            assert!(seen.insert(service_index(vip([10, 100, 0, 1]), port.to_be(), 6)), "port {port} collides");
        }
        assert_ne!(service_index(vip([10, 100, 0, 1]), http, 6), service_index(vip([10, 100, 0, 1]), http, 17));
    }

    /// The client-hop cache holds a subnet's clients side by side: as many
    /// clients of one /20 (IPv4, in network order as the datapath sees
    /// them) or of one IPv6 prefix as it has places take more than 3/4 of
    /// them (87% for IPv4 today; a random spread would take 63%).
    #[test]
    fn clients_of_one_subnet_take_most_of_the_client_hop_places() {
        let vip4 = [0x0a64_0001u32.to_be(), 0, 0, 0];
        let vip6 = [0xfd00_0100u32.to_be(), 0, 0, 1u32.to_be()];
        let v4: HashSet<u32> =
            (0..CLIENT_HOP_ENTRIES).map(|i| client_hop_index(&[(0x0b00_0000 | i).to_be(), 0, 0, 0], &vip4)).collect();
        let v6: HashSet<u32> = (0..CLIENT_HOP_ENTRIES)
            .map(|i| client_hop_index(&[0xfd00_0000u32.to_be(), 0, 0, (i + 1).to_be()], &vip6))
            .collect();
        for (family, places) in [("IPv4", v4), ("IPv6", v6)] {
            assert!(places.iter().all(|&p| p < CLIENT_HOP_ENTRIES), "{family}: out of the cache");
            assert!(
                places.len() as u32 > CLIENT_HOP_ENTRIES * 3 / 4,
                "{family}: {} places of {CLIENT_HOP_ENTRIES}",
                places.len()
            );
        }
    }
}
