//! Where a packet is parsed. Everything the rest of the datapath needs is
//! bounds-checked here, once, before anything is looked up or rewritten.

use aya_ebpf::programs::XdpContext;
use lb_common::{FlowKey, Outcome, proto};

use crate::maps::VIP_ADDRS;

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const TCP_HLEN: usize = 20;
const ETH_P_IPV4: u16 = 0x0800;
/// Fragment offset and More Fragments bits of `frag_off` (network order).
const IP_FRAGMENTED: u16 = 0x3fff;

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

/// A parsed TCP or UDP over IPv4 packet, headers in bounds.
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
pub struct Packet {
    eth: *mut EthHdr,
    ip: *mut Ipv4Hdr,
    ports: *mut Ports,
    /// The TCP or UDP checksum field.
    l4_check: *mut u16,
    /// 5-tuple as received, network byte order.
    pub key: FlowKey,
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
pub struct Rewritable<'a> {
    pub ip: &'a mut Ipv4Hdr,
    pub ports: &'a mut Ports,
    /// The TCP or UDP checksum field.
    pub l4_check: &'a mut u16,
}

impl Packet {
    #[inline(always)]
    pub fn eth(&self) -> &EthHdr {
        // SAFETY: in bounds (the invariant on `Packet`); no `&mut` to it can
        // be alive while `self` is borrowed shared.
        unsafe { &*self.eth }
    }

    #[inline(always)]
    pub fn ip(&self) -> &Ipv4Hdr {
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

    /// The IPv4 header, the ports and the L4 checksum, to rewrite.
    #[inline(always)]
    pub fn rewritable(&mut self) -> Rewritable<'_> {
        // SAFETY: in bounds and disjoint (the invariant on `Packet`);
        // `&mut self` makes these the only references into its headers.
        unsafe { Rewritable { ip: &mut *self.ip, ports: &mut *self.ports, l4_check: &mut *self.l4_check } }
    }

    #[inline(always)]
    pub fn is_udp(&self) -> bool {
        self.key.proto == proto::UDP
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

/// Parses Ethernet, IPv4 and the TCP or UDP header. `Err` carries the outcome
/// of a packet that goes no further (passed or dropped, never rewritten).
#[inline(always)]
pub fn parse(ctx: &XdpContext) -> Result<Packet, Outcome> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Outcome::PassNotIpv4)?;
    // SAFETY (each header below): `ptr_at` checked that it is in the frame.
    if u16::from_be(unsafe { (*eth).ether_type }) != ETH_P_IPV4 {
        return Err(Outcome::PassNotIpv4);
    }
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
    let l4 = ETH_HLEN + IPV4_HLEN;
    let (ports, l4_check, tcp_flags, tcp_ack, seq_end) = match iph.protocol {
        proto::TCP => {
            let tcp: *mut TcpHdr = ptr_at(ctx, l4).ok_or_else(|| refuse(iph.daddr, Outcome::DropTruncated))?;
            // SAFETY: in the frame (`ptr_at`).
            let tcph = unsafe { &mut *tcp };
            let doff = ((tcph.data_offset >> 4) as usize) * 4;
            if doff < core::mem::size_of::<TcpHdr>() || IPV4_HLEN + doff > tot_len {
                return Err(refuse(iph.daddr, Outcome::DropTruncated));
            }
            let seq = u32::from_be(tcph.seq);
            let payload = (tot_len - IPV4_HLEN - doff) as u32;
            let syn_fin = ((tcph.flags & tcp_flag::SYN != 0) as u32) + ((tcph.flags & tcp_flag::FIN != 0) as u32);
            let seq_end = seq.wrapping_add(payload + syn_fin);
            let ack = u32::from_be(tcph.ack_seq);
            (&mut tcph.ports as *mut Ports, &mut tcph.check as *mut u16, tcph.flags, ack, seq_end)
        }
        proto::UDP => {
            let udp: *mut UdpHdr = ptr_at(ctx, l4).ok_or_else(|| refuse(iph.daddr, Outcome::DropTruncated))?;
            // SAFETY: in the frame (`ptr_at`).
            let udph = unsafe { &mut *udp };
            (&mut udph.ports as *mut Ports, &mut udph.check as *mut u16, 0, 0, 0)
        }
        _ => return Err(refuse(iph.daddr, Outcome::PassOtherProtocol)),
    };
    // SAFETY: a field of a header in the frame.
    let p = unsafe { &*ports };
    Ok(Packet {
        eth,
        ip,
        ports,
        l4_check,
        key: FlowKey::new(iph.saddr, iph.daddr, p.src, p.dst, iph.protocol),
        tcp_flags,
        tcp_ack,
        seq_end,
        len,
    })
}
