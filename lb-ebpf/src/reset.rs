//! Where a terminated flow's packets are answered: a TCP packet of a flow
//! whose server is disabled becomes, in place, a reset back to its sender
//! (XDP_TX), and the agent is asked to reset the other end.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_xdp_adjust_tail, programs::XdpContext};
use lb_common::{FlowKey, FlowKey6, Outcome, ResetRequest, ResetRequest6, proto};

use crate::{
    csum,
    family::{Family, V4, V6},
    maps::RESET_REQUESTS,
    parse::{ETH_HLEN, EthHdr, IPV4_HLEN, IPV6_HLEN, Ipv4Hdr, Ipv6Hdr, Packet, TCP_HLEN, TcpHdr, ptr_at, tcp_flag},
};

const DONT_FRAGMENT: u16 = 0x4000;

/// What a reset's IP header is, per family.
pub trait Resets: Family {
    /// The IP header's length.
    const IP_HLEN: usize;
    /// Whether the agent knows where to send this reset.
    fn addressed(request: &Self::Reset) -> bool;
    /// Writes the IP header of a reset answering `key` (addresses swapped);
    /// returns the TCP pseudo-header's sum.
    fn write_ip(ip: *mut Self::Ip, key: &Self::Key) -> u32;
}

impl Resets for V4 {
    const IP_HLEN: usize = IPV4_HLEN;
    #[inline(always)]
    fn addressed(request: &ResetRequest) -> bool {
        request.dst_addr != 0
    }
    #[inline(always)]
    fn write_ip(ip: *mut Ipv4Hdr, key: &FlowKey) -> u32 {
        // SAFETY: the caller's pointer to the header, in the frame.
        let ip = unsafe { &mut *ip };
        ip.version_ihl = 0x45;
        ip.tos = 0;
        ip.tot_len = ((IPV4_HLEN + TCP_HLEN) as u16).to_be();
        ip.id = 0;
        ip.frag_off = DONT_FRAGMENT.to_be();
        ip.ttl = 64;
        ip.protocol = proto::TCP;
        ip.saddr = key.dst_addr;
        ip.daddr = key.src_addr;
        ip.check = 0;
        // SAFETY: the 20-byte IPv4 header read as ten 16-bit words (2-byte aligned).
        let ip_words: &[u16; 10] = unsafe { &*(ip as *const Ipv4Hdr as *const [u16; 10]) };
        ip.check = csum::over(ip_words, 0);
        words_sum(&[key.dst_addr, key.src_addr])
    }
}

impl Resets for V6 {
    const IP_HLEN: usize = IPV6_HLEN;
    #[inline(always)]
    fn addressed(request: &ResetRequest6) -> bool {
        request.dst_addr != [0; 4]
    }
    #[inline(always)]
    fn write_ip(ip: *mut Ipv6Hdr, key: &FlowKey6) -> u32 {
        // SAFETY: the caller's pointer to the header, in the frame.
        let ip = unsafe { &mut *ip };
        ip.vtc_flow = (6u32 << 28).to_be();
        ip.payload_len = (TCP_HLEN as u16).to_be();
        ip.nexthdr = proto::TCP;
        ip.hop_limit = 64;
        ip.saddr = key.dst_addr;
        ip.daddr = key.src_addr;
        words_sum(&key.dst_addr) + words_sum(&key.src_addr)
    }
}

/// The one's complement sum of addresses as 16-bit words (unfolded).
#[inline(always)]
fn words_sum(words: &[u32]) -> u32 {
    words.iter().map(|w| (w >> 16) + (w & 0xffff)).sum()
}

/// Answers `pkt` with a reset to its sender; `other_end` is the reset the
/// agent should send to the other side (skipped when its address is unknown).
/// Takes the packet by value: the frame is resized here, and no `Packet`
/// (whose pointers would be stale) may outlive that.
#[inline(always)]
pub fn reset_sender<F: Resets>(
    ctx: &XdpContext,
    pkt: Packet<F>,
    other_end: &F::Reset,
) -> Result<(Outcome, u32), Outcome> {
    if F::addressed(other_end) {
        // Best effort: when the ring is full the other end learns of the reset
        // the next time it sends.
        let _ = RESET_REQUESTS.output::<F::Reset>(other_end, 0);
    }
    // RFC 793: a reset answering a segment with ACK carries seq = its ack;
    // otherwise seq 0 and an ACK of everything the segment occupied.
    let (seq, ack, flags) = if pkt.tcp_flags & tcp_flag::ACK != 0 {
        (pkt.tcp_ack, 0, tcp_flag::RST)
    } else {
        (0, pkt.seq_end, tcp_flag::RST | tcp_flag::ACK)
    };
    let key = pkt.key;
    let eth = pkt.eth();
    let (src_mac, dst_mac) = (eth.src, eth.dst);

    // Cut the frame to bare headers (options, extension headers and payload go).
    let len = ctx.data_end() - ctx.data();
    let want = ETH_HLEN + F::IP_HLEN + TCP_HLEN;
    // The frame is resized: `pkt`'s pointers go stale, so it goes too.
    drop(pkt);
    // SAFETY: the helper checks the new length itself; no pointer into the
    // frame is alive (`pkt` is gone): the headers are found anew below.
    if len > want && unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((len - want) as i32)) } != 0 {
        return Err(Outcome::Aborted);
    }
    // The frame moved: find the headers again.
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Outcome::Aborted)?;
    let ip: *mut F::Ip = ptr_at(ctx, ETH_HLEN).ok_or(Outcome::Aborted)?;
    let tcp: *mut TcpHdr = ptr_at(ctx, ETH_HLEN + F::IP_HLEN).ok_or(Outcome::Aborted)?;
    // SAFETY: distinct headers, each in the frame (`ptr_at`).
    let (eth, tcp) = unsafe { (&mut *eth, &mut *tcp) };

    eth.src = dst_mac;
    eth.dst = src_mac;
    let addresses = F::write_ip(ip, &key);

    use crate::family::Key;
    tcp.ports.src = key.dst_port();
    tcp.ports.dst = key.src_port();
    tcp.seq = seq.to_be();
    tcp.ack_seq = ack.to_be();
    tcp.data_offset = 5 << 4;
    tcp.flags = flags;
    tcp.window = 0;
    tcp.check = 0;
    tcp.urg_ptr = 0;
    // Pseudo-header: addresses, protocol, TCP length (as 16-bit words; the
    // IPv6 one's 32-bit fields sum the same).
    let pseudo = addresses + (6u16.to_be() as u32) + ((TCP_HLEN as u16).to_be() as u32);
    // SAFETY: the 20-byte TCP header read as ten 16-bit words (2-byte aligned).
    let tcp_words: &[u16; 10] = unsafe { &*(tcp as *const TcpHdr as *const [u16; 10]) };
    tcp.check = csum::over(tcp_words, pseudo);
    Ok((Outcome::ResetTerminatedFlow, xdp_action::XDP_TX))
}
