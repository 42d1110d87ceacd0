//! Address and port rewriting, with incremental checksum updates. Called only
//! once the packet's fate is decided, so a packet is rewritten whole or not at all.
//! Each header's checksum is updated once for all its changes: the address
//! change is summed once and counts in both (the TCP and UDP checksums cover
//! the addresses through their pseudo-header).

use crate::{csum, parse::Packet};

/// Client -> VIP becomes client -> server, one hop further.
#[inline(always)]
pub fn rewrite_destination(pkt: &Packet, addr: u32, port: u16) {
    let ip = pkt.ip();
    let ports = pkt.ports();
    let addr_change = csum::change4(ip.daddr, addr);
    rewrite_l4_check(pkt, addr_change + csum::change2(ports.dst, port));
    ip.daddr = addr;
    ports.dst = port;
    decrement_ttl(pkt, addr_change);
}

/// Server -> client becomes VIP -> client, one hop further.
#[inline(always)]
pub fn rewrite_source(pkt: &Packet, addr: u32, port: u16) {
    let ip = pkt.ip();
    let ports = pkt.ports();
    let addr_change = csum::change4(ip.saddr, addr);
    rewrite_l4_check(pkt, addr_change + csum::change2(ports.src, port));
    ip.saddr = addr;
    ports.src = port;
    decrement_ttl(pkt, addr_change);
}

/// The TCP/UDP checksum after the changes summed in `change`.
#[inline(always)]
fn rewrite_l4_check(pkt: &Packet, change: u32) {
    let check = pkt.l4_check();
    // A zero UDP checksum means "none": leave it so.
    if pkt.is_udp() && *check == 0 {
        return;
    }
    let mut new = csum::apply(*check, change);
    if pkt.is_udp() && new == 0 {
        new = 0xffff;
    }
    *check = new;
}

/// We route the packet, so we decrement its TTL like any router; the IP
/// checksum takes that and `change` (the address rewrite) at once. The
/// caller has checked that the TTL is above 1.
#[inline(always)]
fn decrement_ttl(pkt: &Packet, change: u32) {
    let ip = pkt.ip();
    // TTL and protocol share one 16-bit word of the checksum.
    let old = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    ip.ttl -= 1;
    let new = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    ip.check = csum::apply(ip.check, change + csum::change2(old, new));
}
