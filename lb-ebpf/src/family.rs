//! The two address families, as the packet path sees them: their maps and
//! what differs in their headers. Flows, server choice and server states are
//! written once (`flow`, `flow_table`, `main`), generic over [`Family`], and
//! compiled once per family: an IPv4 packet runs the same code as before
//! IPv6 existed, and IPv6 has maps of its own, so IPv4 pays nothing for it.

use aya_ebpf::{
    bindings::bpf_fib_lookup,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use lb_common::{
    Addr6, ClientHop, FlowKey, FlowKey6, FlowSlot, FlowSlot6, NextHop, ResetRequest, ResetRequest6, ReverseNat,
    ReverseNat6, Server, ServiceKey, ServiceKey6, TableSlot, flow_table,
};

use crate::{
    csum, events,
    maps::{
        CLIENT_HOPS, CLIENT_HOPS6, FLOW_TAGS, FLOW_TAGS6, FLOWS, FLOWS6, NEW_FLOWS, NEW_FLOWS6, NEXT_HOPS, NEXT_HOPS6,
        REVERSE_NAT, REVERSE_NAT6, SERVER_ADDRS6, SERVER_ENDPOINTS, SERVER_ENDPOINTS6, SERVICES, SERVICES6,
        flow_bucket_mask, flow_bucket_mask6,
    },
    parse::{Ipv4Hdr, Ipv6Hdr},
};

/// A 5-tuple of either family.
pub trait Key: Copy + Default {
    type Addr: Copy + PartialEq;
    fn new(src: Self::Addr, dst: Self::Addr, src_port: u16, dst_port: u16, proto: u8) -> Self;
    fn src(&self) -> Self::Addr;
    fn dst(&self) -> Self::Addr;
    fn src_port(&self) -> u16;
    fn dst_port(&self) -> u16;
    fn proto(&self) -> u8;
}

/// A return path of either family: the VIP and port replies come from.
pub trait Nat: Copy {
    type Addr: Copy;
    fn new(vip: Self::Addr, port: u16) -> Self;
    fn vip(&self) -> Self::Addr;
    fn port(&self) -> u16;
    fn shared(&self) -> bool;
}

/// What the packet path needs of an address family.
pub trait Family: Sized + 'static {
    type Addr: Copy + PartialEq + Default + 'static;
    type Ip: 'static;
    type Key: Key<Addr = Self::Addr> + 'static;
    type ServiceKey: 'static;
    type Slot: TableSlot<Key = Self::Key>;
    type Nat: Nat<Addr = Self::Addr> + 'static;
    type Reset: 'static;
    /// Larger keys: the path is split into calls (BPF-to-BPF) whose frames
    /// do not add up, to fit the verifier's 512 bytes of stack along a call
    /// chain: `handle` leaves new flows to a call of their own (`new_flow6`;
    /// a SYN's or a UDP datagram's is created in `opening6`, before `handle`
    /// is reached).
    const SPLIT_FRAMES: bool;

    fn services() -> &'static HashMap<Self::ServiceKey, lb_common::Service>;
    fn service_key(addr: Self::Addr, port: u16, proto: u8) -> Self::ServiceKey;
    fn endpoints() -> &'static HashMap<Self::ServiceKey, Self::Nat>;
    fn reverse_nat() -> &'static LruHashMap<Self::Key, Self::Nat>;
    fn flows() -> &'static Array<Self::Slot>;
    /// Each CPU's log of new flows (flow replication), and the index of
    /// its count in the CPU's `flow_sync` line.
    fn new_flows() -> &'static Array<lb_common::flow_sync::LogEntry>;
    const LOG_HEAD: usize;
    fn flow_tags() -> &'static Array<[u64; flow_table::TAG_LINE_BUCKETS as usize]>;
    fn bucket_mask() -> u32;
    fn next_hops() -> &'static Array<NextHop>;
    fn client_hops() -> &'static PerCpuArray<ClientHop>;
    /// An address as the client-hop cache keys it.
    fn cache_words(addr: &Self::Addr) -> [u32; 4];
    /// The server's address in this family (`None`: it has none).
    fn server_addr(server_id: u32, server: &Server) -> Option<Self::Addr>;
    fn reset_request(src: Self::Addr, dst: Self::Addr, src_port: u16, dst_port: u16, seq: u32) -> Self::Reset;
    fn log_reset_sent(key: &Self::Key);
    fn log_flow_slot_lost(key: &Self::Key);
    /// [`flow_table::victim`](crate::flow_table) in this family's table.
    fn victim(first0: u32, first1: u32, word0: u64, word1: u64, now: u32) -> u32;

    /// The hop limit (TTL).
    fn hop_limit(ip: &Self::Ip) -> u8;
    /// The packet's length from its IP header on (for the MTU).
    fn ip_len(ip: &Self::Ip) -> u16;
    /// Sets the destination (`to_dst`) or source address; returns what the
    /// change adds to the TCP/UDP checksum (their pseudo-header).
    fn set_addr(ip: &mut Self::Ip, to_dst: bool, addr: Self::Addr) -> u32;
    /// One hop further, as any router: the TTL or hop limit less one (the
    /// caller checked it is above 1), with the IPv4 checksum's update for
    /// that and `addr_change`.
    fn next_hop_count(ip: &mut Self::Ip, addr_change: u32);
    /// The FIB lookup's parameters for a packet `src` -> `dst`.
    fn fib_params(params: &mut bpf_fib_lookup, ip: &Self::Ip, l4_protocol: u8, src: Self::Addr, dst: Self::Addr);
}

pub struct V4;
pub struct V6;

/// The flow hash of a family's key.
#[inline(always)]
pub fn hash<F: Family>(key: &F::Key) -> u64 {
    <F::Slot as TableSlot>::hash(key)
}

const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;

impl Key for FlowKey {
    type Addr = u32;
    #[inline(always)]
    fn new(src: u32, dst: u32, src_port: u16, dst_port: u16, proto: u8) -> Self {
        FlowKey::new(src, dst, src_port, dst_port, proto)
    }
    #[inline(always)]
    fn src(&self) -> u32 {
        self.src_addr
    }
    #[inline(always)]
    fn dst(&self) -> u32 {
        self.dst_addr
    }
    #[inline(always)]
    fn src_port(&self) -> u16 {
        self.src_port
    }
    #[inline(always)]
    fn dst_port(&self) -> u16 {
        self.dst_port
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
}

impl Key for FlowKey6 {
    type Addr = Addr6;
    #[inline(always)]
    fn new(src: Addr6, dst: Addr6, src_port: u16, dst_port: u16, proto: u8) -> Self {
        FlowKey6::new(src, dst, src_port, dst_port, proto)
    }
    #[inline(always)]
    fn src(&self) -> Addr6 {
        self.src_addr
    }
    #[inline(always)]
    fn dst(&self) -> Addr6 {
        self.dst_addr
    }
    #[inline(always)]
    fn src_port(&self) -> u16 {
        self.src_port
    }
    #[inline(always)]
    fn dst_port(&self) -> u16 {
        self.dst_port
    }
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
}

impl Nat for ReverseNat {
    type Addr = u32;
    #[inline(always)]
    fn new(vip: u32, port: u16) -> Self {
        ReverseNat { vip, port, ..ReverseNat::default() }
    }
    #[inline(always)]
    fn vip(&self) -> u32 {
        self.vip
    }
    #[inline(always)]
    fn port(&self) -> u16 {
        self.port
    }
    #[inline(always)]
    fn shared(&self) -> bool {
        self.shared != 0
    }
}

impl Nat for ReverseNat6 {
    type Addr = Addr6;
    #[inline(always)]
    fn new(vip: Addr6, port: u16) -> Self {
        ReverseNat6 { vip, port, ..ReverseNat6::default() }
    }
    #[inline(always)]
    fn vip(&self) -> Addr6 {
        self.vip
    }
    #[inline(always)]
    fn port(&self) -> u16 {
        self.port
    }
    #[inline(always)]
    fn shared(&self) -> bool {
        self.shared != 0
    }
}

impl Family for V4 {
    type Addr = u32;
    type Ip = Ipv4Hdr;
    type Key = FlowKey;
    type ServiceKey = ServiceKey;
    type Slot = FlowSlot;
    type Nat = ReverseNat;
    type Reset = ResetRequest;
    const SPLIT_FRAMES: bool = false;

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey, lb_common::Service> {
        &SERVICES
    }
    #[inline(always)]
    fn service_key(addr: u32, port: u16, proto: u8) -> ServiceKey {
        ServiceKey { addr, port, proto, _pad: 0 }
    }
    #[inline(always)]
    fn endpoints() -> &'static HashMap<ServiceKey, ReverseNat> {
        &SERVER_ENDPOINTS
    }
    #[inline(always)]
    fn reverse_nat() -> &'static LruHashMap<FlowKey, ReverseNat> {
        &REVERSE_NAT
    }
    #[inline(always)]
    fn flows() -> &'static Array<FlowSlot> {
        &FLOWS
    }
    #[inline(always)]
    fn new_flows() -> &'static Array<lb_common::flow_sync::LogEntry> {
        &NEW_FLOWS
    }
    const LOG_HEAD: usize = lb_common::flow_sync::HEAD4;
    #[inline(always)]
    fn flow_tags() -> &'static Array<[u64; flow_table::TAG_LINE_BUCKETS as usize]> {
        &FLOW_TAGS
    }
    #[inline(always)]
    fn bucket_mask() -> u32 {
        flow_bucket_mask()
    }
    #[inline(always)]
    fn next_hops() -> &'static Array<NextHop> {
        &NEXT_HOPS
    }
    #[inline(always)]
    fn client_hops() -> &'static PerCpuArray<ClientHop> {
        &CLIENT_HOPS
    }
    #[inline(always)]
    fn cache_words(addr: &u32) -> [u32; 4] {
        [*addr, 0, 0, 0]
    }
    #[inline(always)]
    fn server_addr(_server_id: u32, server: &Server) -> Option<u32> {
        Some(server.addr)
    }
    #[inline(always)]
    fn reset_request(src_addr: u32, dst_addr: u32, src_port: u16, dst_port: u16, seq: u32) -> ResetRequest {
        ResetRequest { src_addr, dst_addr, src_port, dst_port, seq }
    }
    #[inline(always)]
    fn log_reset_sent(key: &FlowKey) {
        events::reset_sent(key);
    }
    #[inline(always)]
    fn log_flow_slot_lost(key: &FlowKey) {
        events::flow_slot_lost(key);
    }
    #[inline(always)]
    fn victim(first0: u32, first1: u32, word0: u64, word1: u64, now: u32) -> u32 {
        crate::flow_table::victim4(first0, first1, word0, word1, now)
    }

    #[inline(always)]
    fn hop_limit(ip: &Ipv4Hdr) -> u8 {
        ip.ttl
    }
    #[inline(always)]
    fn ip_len(ip: &Ipv4Hdr) -> u16 {
        u16::from_be(ip.tot_len)
    }
    #[inline(always)]
    fn set_addr(ip: &mut Ipv4Hdr, to_dst: bool, addr: u32) -> u32 {
        let field = if to_dst { &mut ip.daddr } else { &mut ip.saddr };
        let change = csum::change4(*field, addr);
        *field = addr;
        change
    }
    #[inline(always)]
    fn next_hop_count(ip: &mut Ipv4Hdr, addr_change: u32) {
        // TTL and protocol share one 16-bit word of the checksum.
        let old = u16::from_ne_bytes([ip.ttl, ip.protocol]);
        ip.ttl -= 1;
        let new = u16::from_ne_bytes([ip.ttl, ip.protocol]);
        ip.check = csum::apply(ip.check, addr_change + csum::change2(old, new));
    }
    #[inline(always)]
    fn fib_params(params: &mut bpf_fib_lookup, ip: &Ipv4Hdr, l4_protocol: u8, src: u32, dst: u32) {
        params.family = AF_INET;
        params.l4_protocol = l4_protocol;
        params.__bindgen_anon_1.tot_len = u16::from_be(ip.tot_len);
        params.__bindgen_anon_2.tos = ip.tos;
        params.__bindgen_anon_3.ipv4_src = src;
        params.__bindgen_anon_4.ipv4_dst = dst;
    }
}

impl Family for V6 {
    type Addr = Addr6;
    type Ip = Ipv6Hdr;
    type Key = FlowKey6;
    type ServiceKey = ServiceKey6;
    type Slot = FlowSlot6;
    type Nat = ReverseNat6;
    type Reset = ResetRequest6;
    const SPLIT_FRAMES: bool = true;

    #[inline(always)]
    fn services() -> &'static HashMap<ServiceKey6, lb_common::Service> {
        &SERVICES6
    }
    #[inline(always)]
    fn service_key(addr: Addr6, port: u16, proto: u8) -> ServiceKey6 {
        ServiceKey6 { addr, port, proto, _pad: 0 }
    }
    #[inline(always)]
    fn endpoints() -> &'static HashMap<ServiceKey6, ReverseNat6> {
        &SERVER_ENDPOINTS6
    }
    #[inline(always)]
    fn reverse_nat() -> &'static LruHashMap<FlowKey6, ReverseNat6> {
        &REVERSE_NAT6
    }
    #[inline(always)]
    fn flows() -> &'static Array<FlowSlot6> {
        &FLOWS6
    }
    #[inline(always)]
    fn new_flows() -> &'static Array<lb_common::flow_sync::LogEntry> {
        &NEW_FLOWS6
    }
    const LOG_HEAD: usize = lb_common::flow_sync::HEAD6;
    #[inline(always)]
    fn flow_tags() -> &'static Array<[u64; flow_table::TAG_LINE_BUCKETS as usize]> {
        &FLOW_TAGS6
    }
    #[inline(always)]
    fn bucket_mask() -> u32 {
        flow_bucket_mask6()
    }
    #[inline(always)]
    fn next_hops() -> &'static Array<NextHop> {
        &NEXT_HOPS6
    }
    #[inline(always)]
    fn client_hops() -> &'static PerCpuArray<ClientHop> {
        &CLIENT_HOPS6
    }
    #[inline(always)]
    fn cache_words(addr: &Addr6) -> [u32; 4] {
        *addr
    }
    #[inline(always)]
    fn server_addr(server_id: u32, _server: &Server) -> Option<Addr6> {
        let addr = *SERVER_ADDRS6.get(server_id)?;
        if addr == [0; 4] { None } else { Some(addr) }
    }
    #[inline(always)]
    fn reset_request(src_addr: Addr6, dst_addr: Addr6, src_port: u16, dst_port: u16, seq: u32) -> ResetRequest6 {
        ResetRequest6 { src_addr, dst_addr, src_port, dst_port, seq }
    }
    #[inline(always)]
    fn log_reset_sent(key: &FlowKey6) {
        events::reset_sent6(key);
    }
    #[inline(always)]
    fn log_flow_slot_lost(key: &FlowKey6) {
        events::flow_slot_lost6(key);
    }
    #[inline(always)]
    fn victim(first0: u32, first1: u32, word0: u64, word1: u64, now: u32) -> u32 {
        crate::flow_table::victim6(first0, first1, word0, word1, now)
    }

    #[inline(always)]
    fn hop_limit(ip: &Ipv6Hdr) -> u8 {
        ip.hop_limit
    }
    #[inline(always)]
    fn ip_len(ip: &Ipv6Hdr) -> u16 {
        u16::from_be(ip.payload_len).saturating_add(crate::parse::IPV6_HLEN as u16)
    }
    #[inline(always)]
    fn set_addr(ip: &mut Ipv6Hdr, to_dst: bool, addr: Addr6) -> u32 {
        let field = if to_dst { &mut ip.daddr } else { &mut ip.saddr };
        let mut change = 0;
        for i in 0..4 {
            change += csum::change4(field[i], addr[i]);
        }
        *field = addr;
        change
    }
    #[inline(always)]
    fn next_hop_count(ip: &mut Ipv6Hdr, _addr_change: u32) {
        // No header checksum in IPv6.
        ip.hop_limit -= 1;
    }
    #[inline(always)]
    fn fib_params(params: &mut bpf_fib_lookup, ip: &Ipv6Hdr, l4_protocol: u8, src: Addr6, dst: Addr6) {
        params.family = AF_INET6;
        params.l4_protocol = l4_protocol;
        params.__bindgen_anon_1.tot_len = Self::ip_len(ip);
        // Traffic class and flow label, as the kernel's own lookup takes them.
        params.__bindgen_anon_2.flowinfo = ip.vtc_flow & 0x0fff_ffffu32.to_be();
        params.__bindgen_anon_3.ipv6_src = src;
        params.__bindgen_anon_4.ipv6_dst = dst;
    }
}
