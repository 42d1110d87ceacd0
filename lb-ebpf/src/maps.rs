//! The BPF maps. The agent creates them with the sizes from its config
//! (`max_entries` here are placeholders it overrides), pins them under
//! /sys/fs/bpf/<instance>/ and is their only writer, except for the flow
//! tables and counters, which the datapath writes.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use lb_common::{
    Addr6, CLIENT_HOP_ENTRIES, ClientHop, DEFAULT_MAX_FLOWS, DEFAULT_MAX_SERVERS, DEFAULT_MAX_SERVICES, EndpointKey,
    EndpointKey6, FlowKey, FlowKey6, FlowSlot, FlowSlot6, MAGLEV_TABLE_SIZE, NextHop, OUTCOME_COUNT,
    RESET_REQUESTS_BYTES, ReverseNat, ReverseNat6, Server, ServerStats, Service, ServiceKey, ServiceKey6, filter,
    flow_sync, flow_table, purge,
};

/// Virtual services (VIP, port, protocol) -> their row in `maglev`. Agent writes.
#[map(name = "services")]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// VIP addresses, any port. Agent writes. Read only for malformed packets, to
/// drop (not pass) what was meant for a VIP.
#[map(name = "vip_addrs")]
pub static VIP_ADDRS: HashMap<u32, u8> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Server table indexed by server id: address, port and state. Agent writes;
/// the datapath reads the state on every flow-table hit.
#[map(name = "servers")]
pub static SERVERS: Array<Server> = Array::with_max_entries(DEFAULT_MAX_SERVERS, 0);

/// Consistent-hash tables, one row of MAGLEV_TABLE_SIZE server ids per
/// service, holding only servers that may take new flows. Agent writes,
/// through mmap (a row at a time).
#[map(name = "maglev")]
pub static MAGLEV: Array<u32> = Array::with_max_entries(DEFAULT_MAX_SERVICES * MAGLEV_TABLE_SIZE, BPF_F_MMAPABLE);

/// Connection tracking, keyed by the client's 5-tuple (VIP included): the
/// slots of `lb_common::flow_table`. Datapath creates and updates flows; the
/// agent ages them out, reading and writing the array through mmap.
#[map(name = "flows")]
pub static FLOWS: Array<FlowSlot> = Array::with_max_entries(flow_table::slots(DEFAULT_MAX_FLOWS), BPF_F_MMAPABLE);

/// The flow table's tags (`lb_common::flow_table::tag`): a `u64` of four
/// 16-bit tags per bucket, in lines of `TAG_LINE_BUCKETS` buckets. Datapath,
/// agent and purge write them by compare-and-swap; the agent reads them
/// through mmap.
#[map(name = "flow_tags")]
pub static FLOW_TAGS: Array<[u64; flow_table::TAG_LINE_BUCKETS as usize]> =
    Array::with_max_entries(flow_table::tag_lines(flow_table::slots(DEFAULT_MAX_FLOWS)), BPF_F_MMAPABLE);

/// The flow table's bucket mask (`flow_table::bucket_mask`), set by the agent
/// at load time for the table size it chose: the verifier sees a constant.
#[unsafe(no_mangle)]
static FLOW_BUCKET_MASK: u32 = flow_table::bucket_mask(flow_table::slots(DEFAULT_MAX_FLOWS));

/// `BPF_F_MMAPABLE`: the agent maps the flow table to walk it at memory
/// speed, and the Maglev rows and the filter to write them so.
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[inline(always)]
pub fn flow_bucket_mask() -> u32 {
    // SAFETY: a plain read of a static (volatile: a load-time constant,
    // not the value compiled in).
    unsafe { core::ptr::read_volatile(&FLOW_BUCKET_MASK) }
}

/// The IPv6 services, VIPs, return paths and flows: the same as their IPv4
/// maps above, keyed by 128-bit addresses. A server's state stays in
/// `servers` (one state for both families); its IPv6 address is here.
#[map(name = "services6")]
pub static SERVICES6: HashMap<ServiceKey6, Service> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

#[map(name = "vip_addrs6")]
pub static VIP_ADDRS6: HashMap<Addr6, u8> = HashMap::with_max_entries(DEFAULT_MAX_SERVICES, 0);

/// Each server's IPv6 address by server id (all zeroes: none). Agent writes.
#[map(name = "server_addrs6")]
pub static SERVER_ADDRS6: Array<Addr6> = Array::with_max_entries(DEFAULT_MAX_SERVERS, 0);

/// The IPv6 flow table, slots of one cache line (`lb_common::FlowSlot6`).
/// The agent sizes it for `flows.max` when the config has an IPv6 service,
/// and at its minimum otherwise.
#[map(name = "flows6")]
pub static FLOWS6: Array<FlowSlot6> = Array::with_max_entries(flow_table::slots(DEFAULT_MAX_FLOWS), BPF_F_MMAPABLE);

#[map(name = "flow_tags6")]
pub static FLOW_TAGS6: Array<[u64; flow_table::TAG_LINE_BUCKETS as usize]> =
    Array::with_max_entries(flow_table::tag_lines(flow_table::slots(DEFAULT_MAX_FLOWS)), BPF_F_MMAPABLE);

#[unsafe(no_mangle)]
static FLOW_BUCKET_MASK6: u32 = flow_table::bucket_mask(flow_table::slots(DEFAULT_MAX_FLOWS));

#[inline(always)]
pub fn flow_bucket_mask6() -> u32 {
    // SAFETY: as for `flow_bucket_mask`.
    unsafe { core::ptr::read_volatile(&FLOW_BUCKET_MASK6) }
}

#[map(name = "server_endpoints6")]
pub static SERVER_ENDPOINTS6: HashMap<EndpointKey6, ReverseNat6> = HashMap::with_max_entries(DEFAULT_MAX_SERVERS, 0);

#[map(name = "reverse_nat6")]
pub static REVERSE_NAT6: LruHashMap<FlowKey6, ReverseNat6> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

#[map(name = "next_hops6")]
pub static NEXT_HOPS6: Array<NextHop> = Array::with_max_entries(DEFAULT_MAX_SERVERS, 0);

#[map(name = "purged6")]
pub static PURGED6: Array<purge::Purged6> = Array::with_max_entries(purge::BATCH, BPF_F_MMAPABLE);

/// Return path by server endpoint: the VIP and port its replies come from.
/// Agent writes, from the config.
#[map(name = "server_endpoints")]
pub static SERVER_ENDPOINTS: HashMap<EndpointKey, ReverseNat> = HashMap::with_max_entries(DEFAULT_MAX_SERVERS, 0);

/// Return path per flow, only for endpoints shared by several services: the server's reply 5-tuple -> the VIP and port it must come
/// from. Datapath creates entries with the flow; the agent removes them with it.
#[map(name = "reverse_nat")]
pub static REVERSE_NAT: LruHashMap<FlowKey, ReverseNat> = LruHashMap::with_max_entries(DEFAULT_MAX_FLOWS, 0);

/// One counter per packet outcome. Datapath writes.
#[map(name = "outcomes")]
pub static OUTCOMES: PerCpuArray<u64> = PerCpuArray::with_max_entries(OUTCOME_COUNT, 0);

#[map(name = "evictions")]
pub static EVICTIONS: PerCpuArray<u64> = PerCpuArray::with_max_entries(lb_common::eviction::COUNT, 0);

/// Traffic per server, indexed by server id. Datapath writes.
#[map(name = "server_stats")]
pub static SERVER_STATS: PerCpuArray<ServerStats> = PerCpuArray::with_max_entries(DEFAULT_MAX_SERVERS, 0);

/// The traffic filter: `lb_common::filter` bits, so traffic that is not ours
/// passes after an array read. Agent writes.
#[map(name = "filter")]
pub static FILTER: Array<u8> = Array::with_max_entries(filter::ENTRIES, BPF_F_MMAPABLE);

/// Next hop towards each server, indexed by server id: the FIB's answer,
/// cached. Datapath writes (after a lookup); the agent clears an entry when
/// its server changes.
#[map(name = "next_hops")]
pub static NEXT_HOPS: Array<NextHop> = Array::with_max_entries(DEFAULT_MAX_SERVERS, 0);

/// Next hop towards recent clients, for servers' replies: each CPU's cache
/// of the FIB's answers (`lb_common::ClientHop`). Datapath writes.
#[map(name = "client_hops")]
pub static CLIENT_HOPS: PerCpuArray<ClientHop> = PerCpuArray::with_max_entries(CLIENT_HOP_ENTRIES, 0);

#[map(name = "client_hops6")]
pub static CLIENT_HOPS6: PerCpuArray<ClientHop> = PerCpuArray::with_max_entries(CLIENT_HOP_ENTRIES, 0);

/// The purge's request and answer (`lb_common::purge`). Agent writes the
/// range; the purge program writes where it stopped and how many it freed.
#[map(name = "purge_request")]
pub static PURGE_REQUEST: Array<purge::Request> = Array::with_max_entries(1, 0);

/// Servers whose flows the purge frees, by server id (1: purge). Agent writes.
#[map(name = "purge_servers")]
pub static PURGE_SERVERS: Array<u8> = Array::with_max_entries(DEFAULT_MAX_SERVERS, 0);

/// The flows one purge run freed, for the agent's resets and return-path
/// clean-up. Purge program writes; the agent reads them through mmap.
#[map(name = "purged")]
pub static PURGED: Array<purge::Purged> = Array::with_max_entries(purge::BATCH, BPF_F_MMAPABLE);

/// The time, as the agent publishes it (`lb-userspace/src/datapath/clock.rs`): the
/// datapath's clock, one load instead of a helper call per packet.
#[map(name = "clock")]
pub static CLOCK: Array<u64> = Array::with_max_entries(1, 0);

/// The format of the maps' contents (`lb_common::MAPS_FORMAT`), pinned with
/// them so that an agent of another format refuses them. Agent writes; the
/// datapath never reads it.
#[map(name = "maps_format")]
pub static MAPS_FORMAT: Array<u32> = Array::with_max_entries(1, 0);

/// TCP resets for the agent to send: the other end of a terminated flow
/// whose packet the datapath answered. Datapath writes, agent reads.
#[map(name = "reset_requests")]
pub static RESET_REQUESTS: RingBuf = RingBuf::with_byte_size(RESET_REQUESTS_BYTES, 0);

/// New IPv4 flows for the other balancer nodes (`lb_common::flow_sync`):
/// each CPU's log of the slots it wrote them to; its count in `FLOW_SYNC`
/// moves while sharing is on. The agent reads through mmap, and sizes it
/// to its CPUs.
#[map(name = "new_flows")]
pub static NEW_FLOWS: Array<flow_sync::LogEntry> = Array::with_max_entries(flow_sync::LOG_SLOTS, BPF_F_MMAPABLE);

/// New IPv6 flows, the same way.
#[map(name = "new_flows6")]
pub static NEW_FLOWS6: Array<flow_sync::LogEntry> = Array::with_max_entries(flow_sync::LOG_SLOTS, BPF_F_MMAPABLE);

/// Flow sharing, a line per CPU (`lb_common::flow_sync::LINE`): the agent
/// sets `ON`; the datapath counts the flows it wrote to each log.
#[map(name = "flow_sync")]
pub static FLOW_SYNC: Array<[u64; flow_sync::LINE]> = Array::with_max_entries(1, BPF_F_MMAPABLE);

/// The programs a family's packets go on to by a tail call: the IPv6
/// program (`lb6`, from `lb`) at [`IPV6_PROGRAM`], and the rest of IPv6's
/// path (`lb6_other`, from `lb6`) at [`IPV6_OTHER_PROGRAM`]. Agent writes,
/// at load.
#[map(name = "family_programs")]
pub static FAMILY_PROGRAMS: ProgramArray = ProgramArray::with_max_entries(2, 0);

/// `lb6`'s index in [`FAMILY_PROGRAMS`].
pub const IPV6_PROGRAM: u32 = 0;

/// `lb6_other`'s index in [`FAMILY_PROGRAMS`].
pub const IPV6_OTHER_PROGRAM: u32 = 1;
