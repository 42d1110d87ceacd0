//! The two address families from the agent's side: each has its own flow
//! table, return paths and purge records (`lb_common`), and the agent's
//! walks (sweep, purge, terminations) run once per family through
//! [`Family`], seeing each flow as family-free [`FlowEnds`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::maps::{IterableMap, MapData};
use lb_common::{Addr6, Flow, FlowKey, FlowKey6, FlowSlot, FlowSlot6, ReverseNat, ReverseNat6, TableSlot, purge};

use super::{Maps, flow_table::FlowTable};
use crate::servers::ServiceId;

/// An IPv4 address as the datapath loads it (network order in a native u32).
pub fn addr4(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

pub fn ip4(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a.to_ne_bytes())
}

/// An IPv6 address as the datapath loads it (four network-order words).
pub fn addr6(a: Ipv6Addr) -> Addr6 {
    let o = a.octets();
    std::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
}

pub fn ip6(a: Addr6) -> Ipv6Addr {
    let mut o = [0u8; 16];
    for (i, w) in a.iter().enumerate() {
        o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
    }
    Ipv6Addr::from(o)
}

/// A flow's ends, whatever its family: the client, the VIP (host order
/// ports) and the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEnds {
    pub client: SocketAddr,
    pub vip: SocketAddr,
    pub proto: u8,
}

impl FlowEnds {
    /// The service the flow came to.
    pub fn service(&self) -> ServiceId {
        ServiceId { vip: self.vip.ip(), port: self.vip.port(), proto: self.proto }
    }
}

/// What the agent's walks need of a family.
pub trait Family: 'static {
    type Key: aya::Pod + Copy + PartialEq + std::hash::Hash + Eq;
    type Slot: TableSlot<Key = Self::Key>;
    type Nat: aya::Pod;
    type Purged: Copy + 'static;
    /// The purge request's family (`lb_common::purge::IPV4`, `IPV6`).
    const PURGE: u32;
    fn table(maps: &Maps) -> &FlowTable<Self::Slot>;
    fn reverse_nat(maps: &Maps) -> &MapData;
    fn purged(maps: &Maps) -> &MapData;
    fn purged_flow(record: &Self::Purged) -> (&Key<Self>, &Flow);
    fn ends(key: &Key<Self>) -> FlowEnds;
    /// The return-path key of a flow on a server at `address`:`port` (host
    /// order): its replies' 5-tuple. None if the address is of the other family.
    fn reply_key(key: &Key<Self>, address: IpAddr, port: u16) -> Option<Key<Self>>;
    /// Where the flow's replies must appear to come from.
    fn nat(key: &Key<Self>) -> Self::Nat;
}

/// The key of a family's flows.
pub type Key<F> = <F as Family>::Key;

pub struct V4;
pub struct V6;

impl Family for V4 {
    type Key = FlowKey;
    type Slot = FlowSlot;
    type Nat = ReverseNat;
    type Purged = purge::Purged;
    const PURGE: u32 = purge::IPV4;
    fn table(maps: &Maps) -> &FlowTable<FlowSlot> {
        &maps.flows
    }
    fn reverse_nat(maps: &Maps) -> &MapData {
        maps.reverse_nat_map()
    }
    fn purged(maps: &Maps) -> &MapData {
        maps.purged.map()
    }
    fn purged_flow(record: &purge::Purged) -> (&FlowKey, &Flow) {
        (&record.key, &record.flow)
    }
    fn ends(k: &FlowKey) -> FlowEnds {
        FlowEnds {
            client: SocketAddr::new(ip4(k.src_addr).into(), u16::from_be(k.src_port)),
            vip: SocketAddr::new(ip4(k.dst_addr).into(), u16::from_be(k.dst_port)),
            proto: k.proto,
        }
    }
    fn reply_key(k: &FlowKey, address: IpAddr, port: u16) -> Option<FlowKey> {
        let IpAddr::V4(a) = address else { return None };
        Some(FlowKey::new(addr4(a), k.src_addr, port.to_be(), k.src_port, k.proto))
    }
    fn nat(k: &FlowKey) -> ReverseNat {
        ReverseNat { vip: k.dst_addr, port: k.dst_port, ..ReverseNat::default() }
    }
}

impl Family for V6 {
    type Key = FlowKey6;
    type Slot = FlowSlot6;
    type Nat = ReverseNat6;
    type Purged = purge::Purged6;
    const PURGE: u32 = purge::IPV6;
    fn table(maps: &Maps) -> &FlowTable<FlowSlot6> {
        &maps.flows6
    }
    fn reverse_nat(maps: &Maps) -> &MapData {
        maps.reverse_nat6_map()
    }
    fn purged(maps: &Maps) -> &MapData {
        maps.purged6.map()
    }
    fn purged_flow(record: &purge::Purged6) -> (&FlowKey6, &Flow) {
        (&record.key, &record.flow)
    }
    fn ends(k: &FlowKey6) -> FlowEnds {
        FlowEnds {
            client: SocketAddr::new(ip6(k.src_addr).into(), u16::from_be(k.src_port)),
            vip: SocketAddr::new(ip6(k.dst_addr).into(), u16::from_be(k.dst_port)),
            proto: k.proto,
        }
    }
    fn reply_key(k: &FlowKey6, address: IpAddr, port: u16) -> Option<FlowKey6> {
        let IpAddr::V6(a) = address else { return None };
        Some(FlowKey6::new(addr6(a), k.src_addr, port.to_be(), k.src_port, k.proto))
    }
    fn nat(k: &FlowKey6) -> ReverseNat6 {
        ReverseNat6 { vip: k.dst_addr, port: k.dst_port, ..ReverseNat6::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_round_trip_in_the_datapath_layout() {
        let a: Ipv6Addr = "fd00:100::1".parse().unwrap();
        assert_eq!(ip6(addr6(a)), a);
        // The words are the address's bytes in memory order.
        assert_eq!(addr6(a)[0].to_ne_bytes(), [0xfd, 0x00, 0x01, 0x00]);
        let b = Ipv4Addr::new(10, 0, 0, 1);
        assert_eq!(ip4(addr4(b)), b);
    }
}
