//! Address and port rewriting, with incremental checksum updates. Called only
//! once the packet's fate is decided, so a packet is rewritten whole or not at all.
//! Each header's checksum is updated once for all its changes: the address
//! change is summed once and counts in both (the TCP and UDP checksums cover
//! the addresses through their pseudo-header; IPv6 has no header checksum).

use crate::{csum, family::Family, parse::Packet};

/// Client -> VIP becomes client -> server, one hop further.
#[inline(always)]
pub fn rewrite_destination<F: Family>(pkt: &mut Packet<F>, addr: F::Addr, port: u16) {
    rewrite(pkt, true, addr, port);
}

/// Server -> client becomes VIP -> client, one hop further.
#[inline(always)]
pub fn rewrite_source<F: Family>(pkt: &mut Packet<F>, addr: F::Addr, port: u16) {
    rewrite(pkt, false, addr, port);
}

#[inline(always)]
fn rewrite<F: Family>(pkt: &mut Packet<F>, to_dst: bool, addr: F::Addr, port: u16) {
    let udp = pkt.is_udp();
    let h = pkt.rewritable();
    let addr_change = F::set_addr(h.ip, to_dst, addr);
    let field = if to_dst { &mut h.ports.dst } else { &mut h.ports.src };
    let port_change = csum::change2(*field, port);
    *field = port;
    rewrite_l4_check(h.l4_check, udp, addr_change + port_change);
    // We route the packet, so we count the hop like any router.
    F::next_hop_count(h.ip, addr_change);
}

/// The TCP/UDP checksum after the changes summed in `change`.
#[inline(always)]
fn rewrite_l4_check(check: &mut u16, udp: bool, change: u32) {
    // A zero UDP checksum means "none" in IPv4: leave it so. (IPv6 forbids
    // it: the parse passes no such packet on.)
    if udp && *check == 0 {
        return;
    }
    let mut new = csum::apply(*check, change);
    if udp && new == 0 {
        new = 0xffff;
    }
    *check = new;
}
