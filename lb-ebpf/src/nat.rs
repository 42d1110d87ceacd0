//! Address and port rewriting, with incremental checksum updates. Called only
//! once the packet's fate is decided, so a packet is rewritten whole or not at all.

use crate::{csum, parse::Packet};

/// Client -> VIP becomes client -> server.
#[inline(always)]
pub fn rewrite_destination(pkt: &Packet, addr: u32, port: u16) {
    let ip = unsafe { &mut *pkt.ip };
    let ports = unsafe { &mut *pkt.ports };
    rewrite_l4_check(pkt, ip.daddr, addr, ports.dst, port);
    ip.check = csum::replace4(ip.check, ip.daddr, addr);
    ip.daddr = addr;
    ports.dst = port;
}

/// Server -> client becomes VIP -> client.
#[inline(always)]
pub fn rewrite_source(pkt: &Packet, addr: u32, port: u16) {
    let ip = unsafe { &mut *pkt.ip };
    let ports = unsafe { &mut *pkt.ports };
    rewrite_l4_check(pkt, ip.saddr, addr, ports.src, port);
    ip.check = csum::replace4(ip.check, ip.saddr, addr);
    ip.saddr = addr;
    ports.src = port;
}

/// The TCP/UDP checksum covers the addresses (pseudo-header) and the ports.
#[inline(always)]
fn rewrite_l4_check(pkt: &Packet, old_addr: u32, new_addr: u32, old_port: u16, new_port: u16) {
    let check = unsafe { &mut *pkt.l4_check };
    // A zero UDP checksum means "none": leave it so.
    if pkt.is_udp() && *check == 0 {
        return;
    }
    let mut new = csum::replace4(*check, old_addr, new_addr);
    new = csum::replace2(new, old_port, new_port);
    if pkt.is_udp() && new == 0 {
        new = 0xffff;
    }
    *check = new;
}

/// We route the packet, so we decrement its TTL like any router. The caller
/// has checked that the TTL is above 1.
#[inline(always)]
pub fn decrement_ttl(pkt: &Packet) {
    let ip = unsafe { &mut *pkt.ip };
    // TTL and protocol share one 16-bit word of the checksum.
    let old = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    ip.ttl -= 1;
    let new = u16::from_ne_bytes([ip.ttl, ip.protocol]);
    ip.check = csum::replace2(ip.check, old, new);
}
