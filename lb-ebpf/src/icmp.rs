//! Where an ICMP error about a balanced flow is sent on to the flow's server,
//! so that path MTU discovery works through the balancer. A router between
//! the balancer and a client that cannot forward a server's reply (sent from
//! the VIP, too large for the next link) answers the VIP with "fragmentation
//! needed" (ICMP type 3 code 4) or "packet too big" (ICMPv6 type 2). Only the
//! server can act on it: the error goes to it rewritten as if the server's
//! own packet had drawn it (the quoted packet's source is the server's
//! address and port again, every checksum updated), and its TCP lowers its
//! segment size for that client. Any other ICMP to a VIP passes to the
//! kernel, as before.

use aya_ebpf::programs::XdpContext;
use lb_common::{Outcome, proto, server_state};

use crate::{
    csum,
    family::{Family, Key, V4, V6},
    flow_table,
    forward::{self, NextHop, Routed},
    maps::SERVERS,
    parse::{self, ETH_HLEN, EthHdr, IPV4_HLEN, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, Ports, ptr_at},
};

/// ICMP "destination unreachable", code "fragmentation needed and DF set".
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_FRAG_NEEDED: u8 = 4;
/// ICMPv6 "packet too big".
const ICMPV6_PACKET_TOO_BIG: u8 = 2;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
/// The ICMP header before the quoted packet (type, code, checksum, and the
/// next-hop MTU in the second word).
const ICMP_HLEN: usize = 8;

#[repr(C)]
struct IcmpHdr {
    kind: u8,
    code: u8,
    check: u16,
    rest: u32,
}

/// A "too big" error to a VIP, its parts in bounds.
///
/// As for `parse::Packet`: every pointer was checked (with [`ptr_at`]) to lie
/// wholly within the frame, the parts do not overlap (the outer header, the
/// ICMP header, the quoted IP header and its ports follow each other; the
/// quoted TCP or UDP checksum lies after the ports), and the frame does not
/// change size while this lives. Fields are read and written only through
/// `&mut self`, one at a time.
pub struct TooBig<F: Family> {
    eth: *mut EthHdr,
    outer: *mut F::Ip,
    icmp: *mut IcmpHdr,
    quoted: *mut F::Ip,
    quoted_ports: *mut Ports,
    /// The quoted TCP or UDP checksum, if the error quotes that much.
    quoted_l4_check: Option<*mut u16>,
    /// The error's sender (a router).
    source: F::Addr,
    /// The flow the quoted packet belongs to, client -> VIP.
    flow_key: F::Key,
}

impl<F: Quoting> Routed<F> for TooBig<F> {
    #[inline(always)]
    fn ip(&self) -> &F::Ip {
        // SAFETY: in bounds (the invariant on `TooBig`); no `&mut` to it is
        // alive while `self` is borrowed shared.
        unsafe { &*self.outer }
    }
    #[inline(always)]
    fn l4_protocol(&self) -> u8 {
        F::ICMP_PROTOCOL
    }
    #[inline(always)]
    fn source(&self) -> F::Addr {
        self.source
    }
    #[inline(always)]
    fn eth_addrs_mut(&mut self) -> &mut [u16; 6] {
        // SAFETY: in bounds (the invariant on `TooBig`); the addresses are
        // the Ethernet header's first 12 bytes, 2-byte aligned like the frame.
        unsafe { &mut *(self.eth as *mut [u16; 6]) }
    }
}

/// What differs between ICMP and ICMPv6 errors.
pub trait Quoting: Family {
    const ICMP_PROTOCOL: u8;
    /// Whether the ICMP checksum covers a pseudo-header (ICMPv6's does, so
    /// the outer destination's change counts in it).
    const PSEUDO_HEADER: bool;
    /// The error's parts, if it is a "too big" error quoting a TCP or UDP
    /// packet sent from the address it is addressed to (a VIP).
    fn parse(ctx: &XdpContext) -> Option<TooBig<Self>>;
    /// Updates the quoted IP header's own checksum for the address change
    /// summed in `change`; returns what that adds to the ICMP checksum.
    fn quoted_ip_check(ip: &mut Self::Ip, change: u32) -> u32;
}

/// The quoted TCP or UDP header (at `l4`, of `protocol`) of a packet sent
/// from `vip` to `client`: its ports, its checksum if quoted, and the key
/// of the flow it belongs to.
#[inline(always)]
fn quoted_l4<F: Family>(
    ctx: &XdpContext,
    l4: usize,
    protocol: u8,
    vip: F::Addr,
    client: F::Addr,
) -> Option<(*mut Ports, Option<*mut u16>, F::Key)> {
    let check_at = match protocol {
        proto::TCP => 16,
        proto::UDP => 6,
        _ => return None,
    };
    let ports: *mut Ports = ptr_at(ctx, l4)?;
    // SAFETY: in the frame (`ptr_at`).
    let p = unsafe { &*ports };
    Some((ports, ptr_at(ctx, l4 + check_at), Key::new(client, vip, p.dst, p.src, protocol)))
}

impl Quoting for V4 {
    const ICMP_PROTOCOL: u8 = IPPROTO_ICMP;
    const PSEUDO_HEADER: bool = false;

    #[inline(always)]
    fn parse(ctx: &XdpContext) -> Option<TooBig<V4>> {
        // The parse that sent the packet here found a VIP destination and a
        // 20-byte header, and no fragment.
        let outer: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN)?;
        let icmp_at = ETH_HLEN + IPV4_HLEN;
        let icmp: *mut IcmpHdr = ptr_at(ctx, icmp_at)?;
        let quoted: *mut Ipv4Hdr = ptr_at(ctx, icmp_at + ICMP_HLEN)?;
        // SAFETY (the three reads): in the frame (`ptr_at`).
        let (o, i, q) = unsafe { (&*outer, &*icmp, &*quoted) };
        if o.version_ihl != 0x45
            || o.protocol != IPPROTO_ICMP
            || (i.kind, i.code) != (ICMP_DEST_UNREACH, ICMP_FRAG_NEEDED)
        {
            return None;
        }
        // The quoted packet left from the VIP the error is addressed to.
        if q.version_ihl != 0x45 || q.saddr != o.daddr {
            return None;
        }
        let l4 = icmp_at + ICMP_HLEN + IPV4_HLEN;
        let (quoted_ports, quoted_l4_check, flow_key) = quoted_l4::<V4>(ctx, l4, q.protocol, q.saddr, q.daddr)?;
        Some(TooBig {
            eth: ptr_at(ctx, 0)?,
            outer,
            icmp,
            quoted,
            quoted_ports,
            quoted_l4_check,
            source: o.saddr,
            flow_key,
        })
    }

    #[inline(always)]
    fn quoted_ip_check(ip: &mut Ipv4Hdr, change: u32) -> u32 {
        let old = ip.check;
        ip.check = csum::apply(old, change);
        csum::change2(old, ip.check)
    }
}

impl Quoting for V6 {
    const ICMP_PROTOCOL: u8 = IPPROTO_ICMPV6;
    const PSEUDO_HEADER: bool = true;

    #[inline(always)]
    fn parse(ctx: &XdpContext) -> Option<TooBig<V6>> {
        let outer: *mut Ipv6Hdr = ptr_at(ctx, ETH_HLEN)?;
        // SAFETY: in the frame (`ptr_at`).
        let o = unsafe { &*outer };
        // The parse that sent the packet here walked the same chain.
        let (next, icmp_at) = parse::walk_extensions(ctx, o.nexthdr, &|_| Outcome::PassOtherProtocol).ok()?;
        let icmp: *mut IcmpHdr = ptr_at(ctx, icmp_at)?;
        let quoted: *mut Ipv6Hdr = ptr_at(ctx, icmp_at + ICMP_HLEN)?;
        // SAFETY (both reads): in the frame (`ptr_at`).
        let (i, q) = unsafe { (&*icmp, &*quoted) };
        if next != IPPROTO_ICMPV6 || i.kind != ICMPV6_PACKET_TOO_BIG || i.code != 0 {
            return None;
        }
        // The quoted packet left from the VIP the error is addressed to. It
        // is a server's packet that the balancer rewrote: no extension
        // headers of its own.
        if (u32::from_be(q.vtc_flow) >> 28) != 6 || q.saddr != o.daddr {
            return None;
        }
        let l4 = icmp_at + ICMP_HLEN + IPV6_HLEN;
        let (quoted_ports, quoted_l4_check, flow_key) = quoted_l4::<V6>(ctx, l4, q.nexthdr, q.saddr, q.daddr)?;
        Some(TooBig {
            eth: ptr_at(ctx, 0)?,
            outer,
            icmp,
            quoted,
            quoted_ports,
            quoted_l4_check,
            source: o.saddr,
            flow_key,
        })
    }

    #[inline(always)]
    fn quoted_ip_check(_ip: &mut Ipv6Hdr, _change: u32) -> u32 {
        // No header checksum in IPv6.
        0
    }
}

/// An ICMP packet to a VIP: a "too big" error about a balanced flow goes to
/// the flow's server; `Err(PassOtherProtocol)` for anything else, as before.
#[inline(always)]
pub fn too_big<F: Quoting>(ctx: &XdpContext) -> Result<(Outcome, u32), Outcome> {
    let mut err = F::parse(ctx).ok_or(Outcome::PassOtherProtocol)?;
    let hash = crate::family::hash::<F>(&err.flow_key);
    let found = flow_table::lookup::<F>(&err.flow_key, hash).ok_or(Outcome::PassOtherProtocol)?;
    let server_id = found.flow.server();
    let server = SERVERS.get(server_id).copied().ok_or(Outcome::DropServerUnavailable)?;
    // A terminated flow's server is sent nothing more.
    if server.state != server_state::ENABLED && server.state != server_state::DRAINING {
        return Err(Outcome::DropServerUnavailable);
    }
    let addr = F::server_addr(server_id, &server).ok_or(Outcome::DropServerUnavailable)?;
    if F::hop_limit(err.ip()) <= 1 {
        return Err(Outcome::PassTtlExpired);
    }
    let now = crate::maps::CLOCK.get(0).copied().unwrap_or(0);
    let hop = forward::next_hop_to_server(ctx, &err, server_id, addr, now)?;
    rewrite(&mut err, addr, server.port);
    let verdict = forward::send(ctx, &mut err, &hop);
    let outcome = match hop {
        NextHop::Unresolved => Outcome::PassNeighbourUnresolved,
        NextHop::Resolved { .. } => Outcome::ForwardIcmpTooBig,
    };
    Ok((outcome, verdict))
}

/// To the server: the outer destination becomes the server, and the quoted
/// packet becomes the one the server sent (from its address and port).
#[inline(always)]
fn rewrite<F: Quoting>(err: &mut TooBig<F>, addr: F::Addr, port: u16) {
    // SAFETY: in bounds and disjoint (the invariant on `TooBig`); `&mut err`
    // makes these the only references into its headers.
    let (outer, icmp, quoted, ports) =
        unsafe { (&mut *err.outer, &mut *err.icmp, &mut *err.quoted, &mut *err.quoted_ports) };
    let outer_change = F::set_addr(outer, true, addr);
    let quoted_change = F::set_addr(quoted, false, addr);
    let quoted_check_change = F::quoted_ip_check(quoted, quoted_change);
    let port_change = csum::change2(ports.src, port);
    ports.src = port;
    let mut l4_check_change = 0;
    if let Some(check) = err.quoted_l4_check {
        // SAFETY: in bounds, after the ports (the invariant on `TooBig`).
        let check = unsafe { &mut *check };
        let udp = err.flow_key.proto() == proto::UDP;
        // A zero UDP checksum means "none" (IPv4): left so; one that
        // computes to zero is sent as its other form.
        if *check != 0 || !udp {
            let old = *check;
            let mut new = csum::apply(old, quoted_change + port_change);
            if udp && new == 0 {
                new = 0xffff;
            }
            *check = new;
            l4_check_change = csum::change2(old, new);
        }
    }
    // The ICMP checksum covers the whole quoted part, and for ICMPv6 the
    // pseudo-header's destination.
    let pseudo = if F::PSEUDO_HEADER { outer_change } else { 0 };
    icmp.check = csum::apply(icmp.check, quoted_change + quoted_check_change + port_change + l4_check_change + pseudo);
    F::next_hop_count(outer, outer_change);
}
