//! Where a packet is parsed. Everything the rest of the datapath needs is
//! bounds-checked here, once, before anything is looked up or rewritten:
//! Ethernet, then IPv4 (`parse4`) or IPv6 and its extension headers
//! (`parse6`), then TCP or UDP.

use aya_ebpf::programs::XdpContext;
use lb_common::{Addr6, FlowKey, FlowKey6, Outcome, filter, proto};

use crate::{
    family::{Family, V4, V6},
    maps::{FILTER, VIP_ADDRS, VIP_ADDRS6},
};

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const IPV6_HLEN: usize = 40;
pub const TCP_HLEN: usize = 20;
pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
/// Fragment offset and More Fragments bits of `frag_off` (network order).
const IP_FRAGMENTED: u16 = 0x3fff;

/// IPv6 extension headers the walk knows (next-header values).
mod ext {
    pub const HOP_BY_HOP: u8 = 0;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const DESTINATION: u8 = 60;
}
/// Extension headers walked before giving up on a packet to a VIP: real
/// traffic carries one or two (hop-by-hop, destination options).
const MAX_EXT_HEADERS: usize = 4;

pub mod tcp_flag {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const ACK: u8 = 0x10;
}

#[repr(C)]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: u16,
}

#[repr(C)]
pub struct Ipv6Hdr {
    /// Version, traffic class and flow label.
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: Addr6,
    pub daddr: Addr6,
}

/// The two bytes every IPv6 extension header starts with (the fragment
/// header's second is reserved; its length is fixed).
#[repr(C)]
pub struct ExtHdr {
    pub nexthdr: u8,
    pub len: u8,
    /// Routing header: the type, then the segments left.
    pub routing_type: u8,
    pub segments_left: u8,
}

#[repr(C)]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub protocol: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// The part of the TCP and UDP headers the balancer touches: ports first,
/// checksum at an offset that depends on the protocol.
#[repr(C)]
pub struct Ports {
    pub src: u16,
    pub dst: u16,
}

#[repr(C)]
pub struct TcpHdr {
    pub ports: Ports,
    pub seq: u32,
    pub ack_seq: u32,
    pub data_offset: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

#[repr(C)]
pub struct UdpHdr {
    pub ports: Ports,
    pub len: u16,
    pub check: u16,
}

/// A parsed TCP or UDP packet of family `F`, headers in bounds.
///
/// The invariant, stated once: `parse` checked (with [`ptr_at`]) that each
/// header pointer below lies wholly within the frame, and the headers do not
/// overlap (the ports and the checksum are distinct fields of the L4
/// header). The program runs to completion on one CPU with the frame to
/// itself. The frame neither moves nor shrinks while a `Packet` lives: the
/// only code that resizes it (`reset::reset_sender`) takes the `Packet` by
/// value, so none is left to use afterwards. The types keep the rest: a
/// header is read through `&self` and written only through `&mut self`, so
/// no two references to one header coexist.
pub struct Packet<F: Family> {
    eth: *mut EthHdr,
    ip: *mut F::Ip,
    ports: *mut Ports,
    /// The TCP or UDP checksum field.
    l4_check: *mut u16,
    /// 5-tuple as received, network byte order.
    pub key: F::Key,
    /// The filter's word on its ports ([`filter_bits`]): `SERVICE`, or else
    /// whether `SERVER_PORT` (never 0: such a packet is not ours).
    pub filter: u8,
    /// TCP flags; 0 for UDP.
    pub tcp_flags: u8,
    /// TCP acknowledgement number, host order; 0 for UDP.
    pub tcp_ack: u32,
    /// The sequence number after this segment (seq + payload, + 1 for SYN
    /// and FIN): the sender's next sequence number.
    pub seq_end: u32,
    /// Frame length, for the byte counters.
    pub len: u64,
}

/// The headers an address rewrite changes, borrowed together (they are
/// disjoint, so one `&mut Packet` may lend all three at once).
pub struct Rewritable<'a, F: Family> {
    pub ip: &'a mut F::Ip,
    pub ports: &'a mut Ports,
    /// The TCP or UDP checksum field.
    pub l4_check: &'a mut u16,
}

impl<F: Family> Packet<F> {
    #[inline(always)]
    pub fn eth(&self) -> &EthHdr {
        // SAFETY: in bounds (the invariant on `Packet`); no `&mut` to it can
        // be alive while `self` is borrowed shared.
        unsafe { &*self.eth }
    }

    #[inline(always)]
    pub fn ip(&self) -> &F::Ip {
        // SAFETY: as for `eth`.
        unsafe { &*self.ip }
    }

    /// The Ethernet header's two addresses as six 16-bit words (the header
    /// is 2-byte aligned, like the frame).
    #[inline(always)]
    pub fn eth_addrs_mut(&mut self) -> &mut [u16; 6] {
        // SAFETY: in bounds (the invariant on `Packet`); the addresses are
        // the header's first 12 bytes; `&mut self` makes this the only
        // reference into the packet's headers.
        unsafe { &mut *(self.eth as *mut [u16; 6]) }
    }

    /// The IP header, the ports and the L4 checksum, to rewrite.
    #[inline(always)]
    pub fn rewritable(&mut self) -> Rewritable<'_, F> {
        // SAFETY: in bounds and disjoint (the invariant on `Packet`);
        // `&mut self` makes these the only references into its headers.
        unsafe { Rewritable { ip: &mut *self.ip, ports: &mut *self.ports, l4_check: &mut *self.l4_check } }
    }

    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.proto() == proto::UDP
    }

    #[inline(always)]
    pub fn proto(&self) -> u8 {
        crate::family::Key::proto(&self.key)
    }

    #[inline(always)]
    pub fn is_rst(&self) -> bool {
        self.tcp_flags & tcp_flag::RST != 0
    }

    /// A connection opening: SYN without ACK.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.tcp_flags & (tcp_flag::SYN | tcp_flag::ACK) == tcp_flag::SYN
    }
}

/// A pointer to a `T` at `offset` in the frame, if the whole `T` lies
/// within it (the check the verifier also demands before any access).
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// What to do with a packet that cannot be served: packets meant for a VIP
/// are dropped with `reason`; anything else is not ours and goes to the kernel.
#[inline(always)]
fn refuse(daddr: u32, reason: Outcome) -> Outcome {
    // SAFETY: only the presence of the entry is read, never its value.
    if unsafe { VIP_ADDRS.get(&daddr) }.is_some() { reason } else { Outcome::PassNotForUs }
}

/// [`refuse`] for an IPv6 destination.
#[inline(always)]
fn refuse6(daddr: &Addr6, reason: Outcome) -> Outcome {
    // SAFETY: only the presence of the entry is read, never its value.
    if unsafe { VIP_ADDRS6.get(daddr) }.is_some() { reason } else { Outcome::PassNotForUs }
}

/// The frame's EtherType, if it has an Ethernet header.
#[inline(always)]
pub fn ether_type(ctx: &XdpContext) -> Option<u16> {
    let eth: *mut EthHdr = ptr_at(ctx, 0)?;
    // SAFETY: in the frame (`ptr_at`).
    Some(u16::from_be(unsafe { (*eth).ether_type }))
}

/// What the TCP or UDP header gives a packet: its ports' and checksum's
/// places, TCP flags, acknowledgement and the sequence number after it.
struct L4 {
    ports: *mut Ports,
    l4_check: *mut u16,
    tcp_flags: u8,
    tcp_ack: u32,
    seq_end: u32,
}

/// Parses the TCP or UDP header at `l4` of a packet whose IP payload (from
/// `l4` on) is `payload` bytes. `refused` turns a reason into the outcome.
#[inline(always)]
fn parse_l4(
    ctx: &XdpContext,
    protocol: u8,
    l4: usize,
    payload: usize,
    refused: impl Fn(Outcome) -> Outcome,
) -> Result<L4, Outcome> {
    match protocol {
        proto::TCP => {
            let tcp: *mut TcpHdr = ptr_at(ctx, l4).ok_or_else(|| refused(Outcome::DropTruncated))?;
            // SAFETY: in the frame (`ptr_at`).
            let tcph = unsafe { &mut *tcp };
            let doff = ((tcph.data_offset >> 4) as usize) * 4;
            if doff < core::mem::size_of::<TcpHdr>() || doff > payload {
                return Err(refused(Outcome::DropTruncated));
            }
            let seq = u32::from_be(tcph.seq);
            let data = (payload - doff) as u32;
            let syn_fin = ((tcph.flags & tcp_flag::SYN != 0) as u32) + ((tcph.flags & tcp_flag::FIN != 0) as u32);
            Ok(L4 {
                ports: &mut tcph.ports as *mut Ports,
                l4_check: &mut tcph.check as *mut u16,
                tcp_flags: tcph.flags,
                tcp_ack: u32::from_be(tcph.ack_seq),
                seq_end: seq.wrapping_add(data + syn_fin),
            })
        }
        proto::UDP => {
            let udp: *mut UdpHdr = ptr_at(ctx, l4).ok_or_else(|| refused(Outcome::DropTruncated))?;
            // SAFETY: in the frame (`ptr_at`).
            let udph = unsafe { &mut *udp };
            Ok(L4 {
                ports: &mut udph.ports as *mut Ports,
                l4_check: &mut udph.check as *mut u16,
                tcp_flags: 0,
                tcp_ack: 0,
                seq_end: 0,
            })
        }
        _ => Err(refused(Outcome::PassOtherProtocol)),
    }
}

/// The filter's word on a packet of `protocol` whose L4 header starts at
/// `l4`, from its ports alone ([`filter`]): `SERVICE` if a service may be
/// at its destination (`service_index` of its destination port), else
/// `SERVER_PORT` if a server endpoint may send from its source port, else
/// 0: not ours. Read before the TCP or UDP header is parsed, so that the
/// host's own traffic pays for no more (measured, alternately: a packet not
/// for a VIP 20 -> 12-14 ns in IPv4, 33 -> 22-26 in IPv6; the other paths
/// unchanged), and once: the packet carries it on ([`Packet::filter`]). A
/// malformed TCP or UDP header to a port of no service is then passed to
/// the kernel as the host's own, as one to another address is. `None` for
/// a packet of another protocol, or whose ports lie beyond the frame: the
/// parse names what it is.
#[inline(always)]
fn filter_bits(ctx: &XdpContext, protocol: u8, l4: usize, service_index: impl Fn(u16) -> u32) -> Option<u8> {
    if protocol != proto::TCP && protocol != proto::UDP {
        return None;
    }
    let ports = ptr_at::<Ports>(ctx, l4)?;
    // SAFETY: in the frame (`ptr_at`).
    let p = unsafe { &*ports };
    let bits = |index: u32| FILTER.get(index).copied().unwrap_or(0);
    if bits(service_index(p.dst)) & filter::SERVICE != 0 {
        return Some(filter::SERVICE);
    }
    Some(bits(p.src as u32) & filter::SERVER_PORT)
}

/// [`filter_bits`] in a parse: `Err` for a packet that is not ours. `None`
/// (the parse fails further on) reads as 0.
#[inline(always)]
fn ours(filter: Option<u8>) -> Result<u8, Outcome> {
    match filter {
        Some(0) => Err(Outcome::PassNotForUs),
        bits => Ok(bits.unwrap_or(0)),
    }
}

/// Parses Ethernet, IPv4 and the TCP or UDP header (the caller checked the
/// EtherType). `Err` carries the outcome of a packet that goes no further
/// (passed or dropped, never rewritten).
#[inline(always)]
pub fn parse4(ctx: &XdpContext) -> Result<Packet<V4>, Outcome> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Outcome::PassNotIp)?;
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Outcome::DropTruncated)?;
    // SAFETY: in the frame (`ptr_at`).
    let iph = unsafe { &*ip };
    let ihl = ((iph.version_ihl & 0x0f) as usize) * 4;
    let tot_len = u16::from_be(iph.tot_len) as usize;
    if iph.version_ihl >> 4 != 4 || ihl < IPV4_HLEN || tot_len < ihl {
        return Err(Outcome::DropBadIpHeader);
    }
    let len = (ctx.data_end() - ctx.data()) as u64;
    if ETH_HLEN + tot_len > len as usize {
        return Err(refuse(iph.daddr, Outcome::DropTruncated));
    }
    if iph.frag_off & u16::to_be(IP_FRAGMENTED) != 0 {
        return Err(refuse(iph.daddr, Outcome::DropFragment));
    }
    if ihl != IPV4_HLEN {
        return Err(refuse(iph.daddr, Outcome::DropIpOptions));
    }
    let daddr = iph.daddr;
    let protocol = iph.protocol;
    let filter =
        ours(filter_bits(ctx, protocol, ETH_HLEN + IPV4_HLEN, |port| filter::service_index(daddr, port, protocol)))?;
    let l4 = parse_l4(ctx, protocol, ETH_HLEN + IPV4_HLEN, tot_len - IPV4_HLEN, |r| refuse(daddr, r))?;
    // SAFETY: a field of a header in the frame.
    let p = unsafe { &*l4.ports };
    Ok(Packet {
        eth,
        ip,
        ports: l4.ports,
        l4_check: l4.l4_check,
        key: FlowKey::new(iph.saddr, iph.daddr, p.src, p.dst, iph.protocol),
        filter,
        tcp_flags: l4.tcp_flags,
        tcp_ack: l4.tcp_ack,
        seq_end: l4.seq_end,
        len,
    })
}

/// [`filter_bits`] for an IPv6 packet without extension headers, read
/// first by `lb6`, before its out-of-line parse: the host's own IPv6
/// traffic goes back to the kernel for what IPv4's costs (measured,
/// alternately: 23 -> 13 ns; IPv4 12-14), at about 3 ns more for IPv6
/// packets to a VIP (the header is read twice), and [`parse6`] takes the
/// bits from it. `None` for anything else (extension headers, a bad
/// version or length): [`parse6`] tells what it is. Read in `lb` before
/// its tail call instead, it cost IPv4's path 4 ns (LLVM compiled `lb`
/// differently around it).
#[inline(always)]
pub fn ipv6_filter(ctx: &XdpContext) -> Option<u8> {
    let ip = ptr_at::<Ipv6Hdr>(ctx, ETH_HLEN)?;
    // SAFETY: in the frame (`ptr_at`).
    let iph = unsafe { &*ip };
    let end = ETH_HLEN + IPV6_HLEN + u16::from_be(iph.payload_len) as usize;
    if (u32::from_be(iph.vtc_flow) >> 28) != 6 || end > ctx.data_end() - ctx.data() {
        return None;
    }
    let (daddr, protocol) = (iph.daddr, iph.nexthdr);
    filter_bits(ctx, protocol, ETH_HLEN + IPV6_HLEN, |port| filter::service_index6(&daddr, port, protocol))
}

/// Parses Ethernet, IPv6, its extension headers and the TCP or UDP header
/// (the caller checked the EtherType). As [`parse4`]: fragments and odd
/// extension headers to a VIP are dropped with their reason.
#[inline(always)]
pub fn parse6(ctx: &XdpContext, early: Option<u8>) -> Result<Packet<V6>, Outcome> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Outcome::PassNotIp)?;
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Outcome::DropTruncated)?;
    // SAFETY: in the frame (`ptr_at`).
    let iph = unsafe { &*ip };
    if (u32::from_be(iph.vtc_flow) >> 28) != 6 {
        return Err(Outcome::DropBadIpHeader);
    }
    let daddr = iph.daddr;
    let refused = |reason| refuse6(&daddr, reason);
    let len = (ctx.data_end() - ctx.data()) as u64;
    let end = ETH_HLEN + IPV6_HLEN + u16::from_be(iph.payload_len) as usize;
    if end > len as usize {
        return Err(refused(Outcome::DropTruncated));
    }
    // The filter read early only from a header with no extension headers
    // after it (TCP or UDP next): the walk's answer is known, and its
    // offset a constant for the rest of the parse.
    let (protocol, l4) = match early {
        Some(_) => (iph.nexthdr, ETH_HLEN + IPV6_HLEN),
        None => walk_extensions(ctx, iph.nexthdr, &refused)?,
    };
    if l4 > end {
        return Err(refused(Outcome::DropTruncated));
    }
    // Without extension headers, `lb6` read the filter already (`early`).
    let filter =
        ours(early.or_else(|| filter_bits(ctx, protocol, l4, |port| filter::service_index6(&daddr, port, protocol))))?;
    let l4h = parse_l4(ctx, protocol, l4, end - l4, refused)?;
    // SAFETY: a field of a header in the frame.
    if protocol == proto::UDP && unsafe { *l4h.l4_check } == 0 {
        return Err(refused(Outcome::DropUdpZeroChecksum));
    }
    // SAFETY: a field of a header in the frame.
    let p = unsafe { &*l4h.ports };
    Ok(Packet {
        eth,
        ip,
        ports: l4h.ports,
        l4_check: l4h.l4_check,
        key: FlowKey6::new(iph.saddr, daddr, p.src, p.dst, protocol),
        filter,
        tcp_flags: l4h.tcp_flags,
        tcp_ack: l4h.tcp_ack,
        seq_end: l4h.seq_end,
        len,
    })
}

/// Walks IPv6 extension headers from the one `next` names: the upper-layer
/// protocol and its offset in the frame. A bounded walk: hop-by-hop and
/// destination options, and routing headers with no segments left, are
/// skipped; a fragment header, a routing header still routing, or more
/// headers than [`MAX_EXT_HEADERS`] end it with a reason.
#[inline(always)]
pub fn walk_extensions(
    ctx: &XdpContext,
    mut next: u8,
    refused: &impl Fn(Outcome) -> Outcome,
) -> Result<(u8, usize), Outcome> {
    let mut offset = ETH_HLEN + IPV6_HLEN;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            ext::HOP_BY_HOP | ext::DESTINATION | ext::ROUTING => {}
            ext::FRAGMENT => return Err(refused(Outcome::DropFragment)),
            _ => return Ok((next, offset)),
        }
        let hdr: *mut ExtHdr = ptr_at(ctx, offset).ok_or_else(|| refused(Outcome::DropTruncated))?;
        // SAFETY: in the frame (`ptr_at`).
        let hdr = unsafe { &*hdr };
        if next == ext::ROUTING && hdr.segments_left != 0 {
            return Err(refused(Outcome::DropIpv6ExtensionHeaders));
        }
        next = hdr.nexthdr;
        // Length in 8-byte units, not counting the first 8: at most 2 KiB,
        // so the offset stays bounded for the verifier.
        offset += (hdr.len as usize + 1) * 8;
    }
    match next {
        ext::FRAGMENT => Err(refused(Outcome::DropFragment)),
        ext::HOP_BY_HOP | ext::DESTINATION | ext::ROUTING => Err(refused(Outcome::DropIpv6ExtensionHeaders)),
        _ => Ok((next, offset)),
    }
}
