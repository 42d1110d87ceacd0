//! Sending a rewritten packet on: a FIB lookup gives the egress interface and
//! MAC addresses; the packet leaves with XDP_TX or a redirect.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{ClientHop, NEXT_HOP_TTL_NS, NextHop as CachedHop, Outcome, client_hop_index};

use crate::{
    family::{Family, Key},
    parse::Packet,
};

/// What sending a packet on reads and writes of it: a balanced flow's
/// packet, or an ICMP error about one (`icmp`).
pub trait Routed<F: Family> {
    fn ip(&self) -> &F::Ip;
    /// The protocol after the IP header, for the route lookup.
    fn l4_protocol(&self) -> u8;
    /// The source address as received.
    fn source(&self) -> F::Addr;
    /// The Ethernet header's two addresses as six 16-bit words.
    fn eth_addrs_mut(&mut self) -> &mut [u16; 6];
}

impl<F: Family> Routed<F> for Packet<F> {
    #[inline(always)]
    fn ip(&self) -> &F::Ip {
        Packet::ip(self)
    }
    #[inline(always)]
    fn l4_protocol(&self) -> u8 {
        self.proto()
    }
    #[inline(always)]
    fn source(&self) -> F::Addr {
        self.key.src()
    }
    #[inline(always)]
    fn eth_addrs_mut(&mut self) -> &mut [u16; 6] {
        Packet::eth_addrs_mut(self)
    }
}

/// Where a packet goes next.
pub enum NextHop {
    /// Out of `ifindex`, with these Ethernet addresses (destination MAC,
    /// then source MAC, as the header carries them).
    Resolved { ifindex: u32, eth_addrs: [u16; 6] },
    /// The route is known but not the neighbour's MAC yet: the kernel must
    /// forward this one (and resolve the neighbour for the next ones).
    Unresolved,
}

/// Looks up the route for a packet that will carry `saddr` -> `daddr`
/// (the addresses after rewriting), and the route's MTU. Does not touch the
/// packet.
#[inline(always)]
pub fn next_hop<F: Family>(
    ctx: &XdpContext,
    pkt: &impl Routed<F>,
    saddr: F::Addr,
    daddr: F::Addr,
) -> Result<(NextHop, u16), Outcome> {
    let mut hop = CachedHop::default();
    match fib(ctx, pkt, &saddr, &daddr, &mut hop) {
        BPF_FIB_LKUP_RET_SUCCESS => Ok((NextHop::Resolved { ifindex: hop.ifindex, eth_addrs: hop.eth_addrs }, hop.mtu)),
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok((NextHop::Unresolved, 0)),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Outcome::DropMtuExceeded),
        _ => Err(Outcome::DropNoRoute),
    }
}

/// The FIB lookup: its answer code, and on success the egress interface,
/// MTU and Ethernet addresses in `hop`.
#[inline(always)]
fn fib<F: Family>(
    ctx: &XdpContext,
    pkt: &impl Routed<F>,
    saddr: &F::Addr,
    daddr: &F::Addr,
    hop: &mut CachedHop,
) -> u32 {
    // SAFETY: a plain C struct of integers: all zeroes is a valid value.
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    F::fib_params(&mut params, pkt.ip(), pkt.l4_protocol(), *saddr, *daddr);
    // SAFETY: the context the kernel passed this run.
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    // SAFETY: `params` is a valid, initialised struct of the size given.
    let rc = unsafe { fib_lookup(ctx.ctx as *mut _, &mut params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    if rc as u32 == BPF_FIB_LKUP_RET_SUCCESS {
        hop.ifindex = params.ifindex;
        hop.eth_addrs = eth_addrs(params.dmac, params.smac);
        // SAFETY: on success the union that carried tot_len holds the route's MTU.
        hop.mtu = unsafe { params.__bindgen_anon_1.mtu_result };
    }
    rc as u32
}

/// The next hop towards server `server_id` (address `daddr`): from the
/// cache while it is fresh, else from the FIB (and then cached). Saves the
/// route and neighbour lookup on almost every packet to a server.
#[inline(always)]
pub fn next_hop_to_server<F: Family>(
    ctx: &XdpContext,
    pkt: &impl Routed<F>,
    server_id: u32,
    daddr: F::Addr,
    now: u64,
) -> Result<NextHop, Outcome> {
    let cached = F::next_hops().get_ptr_mut(server_id).ok_or(Outcome::Aborted)?;
    // SAFETY: a valid element the map returned. Another CPU may rewrite it
    // at once; a torn entry costs at worst one packet sent by the kernel.
    let cached = unsafe { &mut *cached };
    if fresh(cached.checked_ns, now) {
        within_mtu(pkt, cached.mtu)?;
        return Ok(NextHop::Resolved { ifindex: cached.ifindex, eth_addrs: cached.eth_addrs });
    }
    let (hop, mtu) = next_hop(ctx, pkt, pkt.source(), daddr)?;
    if let NextHop::Resolved { ifindex, eth_addrs } = hop {
        *cached = CachedHop { checked_ns: now, ifindex, mtu, eth_addrs, ..CachedHop::default() };
    }
    Ok(hop)
}

/// The next hop towards `client`, for a server's reply that will leave from
/// `vip`: from this CPU's cache of recent clients while fresh, else from
/// the FIB (and then cached, see [`ClientHop`]).
#[inline(always)]
pub fn next_hop_to_client<F: Family>(
    ctx: &XdpContext,
    pkt: &impl Routed<F>,
    vip: F::Addr,
    client: F::Addr,
    now: u64,
) -> Result<NextHop, Outcome> {
    let (client_words, vip_words) = (F::cache_words(&client), F::cache_words(&vip));
    let index = client_hop_index(&client_words, &vip_words);
    let cached = F::client_hops().get_ptr_mut(index).ok_or(Outcome::Aborted)?;
    // SAFETY: a valid element the map returned, this CPU's own: no other
    // CPU reads or writes it, and the program runs to its end on this CPU.
    let cached = unsafe { &mut *cached };
    // SAFETY: the context the kernel passed this run.
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let same = cached.client == client_words && cached.vip == vip_words && cached.ingress == ingress;
    if same && fresh(cached.checked_ns, now) {
        within_mtu(pkt, cached.mtu)?;
        return Ok(NextHop::Resolved { ifindex: cached.ifindex, eth_addrs: cached.eth_addrs });
    }
    let (hop, mtu) = next_hop(ctx, pkt, vip, client)?;
    if let NextHop::Resolved { ifindex, eth_addrs } = hop {
        *cached = ClientHop {
            checked_ns: now,
            ifindex,
            ingress,
            eth_addrs,
            mtu,
            client: client_words,
            vip: vip_words,
            ..ClientHop::default()
        };
    }
    Ok(hop)
}

/// Whether a hop looked up at `checked_ns` may still be used at `now`
/// (less than [`NEXT_HOP_TTL_NS`] ago).
#[inline(always)]
fn fresh(checked_ns: u64, now: u64) -> bool {
    checked_ns != 0 && now.wrapping_sub(checked_ns) < NEXT_HOP_TTL_NS
}

/// A packet sent by a cached hop is dropped if it is larger than the
/// route's MTU, as the FIB lookup would answer.
#[inline(always)]
fn within_mtu<F: Family>(pkt: &impl Routed<F>, mtu: u16) -> Result<(), Outcome> {
    if F::ip_len(pkt.ip()) > mtu { Err(Outcome::DropMtuExceeded) } else { Ok(()) }
}

/// Sends the (fully rewritten) packet to its next hop; returns the verdict.
#[inline(always)]
pub fn send<F: Family>(ctx: &XdpContext, pkt: &mut impl Routed<F>, hop: &NextHop) -> u32 {
    match *hop {
        NextHop::Resolved { ifindex, eth_addrs } => {
            *pkt.eth_addrs_mut() = eth_addrs;
            // SAFETY: the context the kernel passed this run.
            if ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
                xdp_action::XDP_TX
            } else {
                // SAFETY: a helper taking plain integers.
                unsafe { bpf_redirect(ifindex, 0) as u32 }
            }
        }
        NextHop::Unresolved => xdp_action::XDP_PASS,
    }
}

/// The Ethernet header's addresses in 16-bit words, as the packet carries
/// them: the destination MAC, then the source MAC.
#[inline(always)]
fn eth_addrs(dst: [u8; 6], src: [u8; 6]) -> [u16; 6] {
    let byte = |i: usize| if i < 6 { dst[i] } else { src[i - 6] };
    core::array::from_fn(|w| u16::from_ne_bytes([byte(2 * w), byte(2 * w + 1)]))
}
