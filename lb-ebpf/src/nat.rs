//! Address and port rewriting, with incremental checksum updates. Called only
//! once the packet's fate is decided, so a packet is rewritten whole or not at all.
//! Each header's checksum is updated once for all its changes: the address
//! change is summed once and counts in both (the TCP and UDP checksums cover
//! the addresses through their pseudo-header).

use crate::{
    csum,
    parse::{Ipv4Hdr, Packet},
};

/// Client -> VIP becomes client -> server, one hop further.
#[inline(always)]
pub fn rewrite_destination(pkt: &mut Packet, addr: u32, port: u16) {
    let udp = pkt.is_udp();
    let h = pkt.rewritable();
    let addr_change = csum::change4(h.ip.daddr, addr);
    rewrite_l4_check(h.l4_check, udp, addr_change + csum::change2(h.ports.dst, port));
    h.ip.daddr = addr;
    h.ports.dst = port;
    decrement_ttl(h.ip, addr_change);
}

/// Server -> client becomes VIP -> client, one hop further.
#[inline(always)]
pub fn rewrite_source(pkt: &mut Packet, addr: u32, port: u16) {
    let udp = pkt.is_udp();
    let h = pkt.rewritable();
    let addr_change = csum::change4(h.ip.saddr, addr);
    rewrite_l4_check(h.l4_check, udp, addr_change + csum::change2(h.ports.src, port));
    h.ip.saddr = addr;
    h.ports.src = port;
    decrement_ttl(h.ip, addr_change);
}

/// The TCP/UDP checksum after the changes summed in `change`.
#[inline(always)]
fn rewrite_l4_check(check: &mut u16, udp: bool, change: u32) {
    // A zero UDP checksum means "none": leave it so.
    if udp && *check == 0 {
        return;
    }
    let mut new = csum::apply(*check, change);
    if udp && new == 0 {
        new = 0xffff;
    }
    *check = new;
}

/// We route the packet, so we decrement its TTL like any router; the IP
/// checksum takes that and `change` (the address rewrite) at once. The
/// caller has checked that the TTL is above 1.
#[inline(always)]
fn decrement_ttl(ip: &mut Ipv4Hdr, change: u32) {
    // TTL and protocol share one 16-bit word of the checksum.
    let old = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    ip.ttl -= 1;
    let new = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    ip.check = csum::apply(ip.check, change + csum::change2(old, new));
}
