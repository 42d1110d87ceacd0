//! Sending a rewritten packet on: a FIB lookup gives the egress interface and
//! MAC addresses; the packet leaves with XDP_TX or a redirect.

use aya_ebpf::{
    bindings::{
        BPF_FIB_LKUP_RET_FRAG_NEEDED, BPF_FIB_LKUP_RET_NO_NEIGH, BPF_FIB_LKUP_RET_SUCCESS, bpf_fib_lookup, xdp_action,
    },
    helpers::{bpf_fib_lookup as fib_lookup, bpf_redirect},
    programs::XdpContext,
};
use lb_common::{NEXT_HOP_TTL_NS, NextHop as CachedHop, Outcome};

use crate::{maps::NEXT_HOPS, parse::Packet};

const AF_INET: u8 = 2;

/// Where a packet goes next.
pub enum NextHop {
    /// Out of `ifindex`, with these MAC addresses.
    Resolved { ifindex: u32, src_mac: [u8; 6], dst_mac: [u8; 6], mtu: u16 },
    /// The route is known but not the neighbour's MAC yet: the kernel must
    /// forward this one (and resolve the neighbour for the next ones).
    Unresolved,
}

/// Looks up the route for a packet that will carry `saddr` -> `daddr`
/// (the addresses after rewriting). Does not touch the packet.
#[inline(always)]
pub fn next_hop(ctx: &XdpContext, pkt: &Packet, saddr: u32, daddr: u32) -> Result<NextHop, Outcome> {
    let ip = unsafe { &*pkt.ip };
    let mut params: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    params.family = AF_INET;
    params.l4_protocol = ip.protocol;
    params.__bindgen_anon_1.tot_len = u16::from_be(ip.tot_len);
    params.__bindgen_anon_2.tos = ip.tos;
    params.__bindgen_anon_3.ipv4_src = saddr;
    params.__bindgen_anon_4.ipv4_dst = daddr;
    params.ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let rc = unsafe { fib_lookup(ctx.ctx as *mut _, &mut params, core::mem::size_of::<bpf_fib_lookup>() as i32, 0) };
    match rc as u32 {
        // On success the union that carried tot_len returns the route's MTU.
        BPF_FIB_LKUP_RET_SUCCESS => Ok(NextHop::Resolved {
            ifindex: params.ifindex,
            src_mac: params.smac,
            dst_mac: params.dmac,
            mtu: unsafe { params.__bindgen_anon_1.mtu_result },
        }),
        BPF_FIB_LKUP_RET_NO_NEIGH => Ok(NextHop::Unresolved),
        BPF_FIB_LKUP_RET_FRAG_NEEDED => Err(Outcome::DropMtuExceeded),
        _ => Err(Outcome::DropNoRoute),
    }
}

/// The next hop towards server `server_id` (address `daddr`): from the
/// cache while it is fresh, else from the FIB (and then cached). Saves the
/// route and neighbour lookup on almost every packet to a server.
#[inline(always)]
pub fn next_hop_to_server(
    ctx: &XdpContext,
    pkt: &Packet,
    server_id: u32,
    daddr: u32,
    now: u64,
) -> Result<NextHop, Outcome> {
    let cached = NEXT_HOPS.get_ptr_mut(server_id).ok_or(Outcome::Aborted)?;
    let cached = unsafe { &mut *cached };
    if cached.checked_ns != 0 && now.wrapping_sub(cached.checked_ns) < NEXT_HOP_TTL_NS {
        if u16::from_be(unsafe { (*pkt.ip).tot_len }) > cached.mtu {
            return Err(Outcome::DropMtuExceeded);
        }
        return Ok(NextHop::Resolved {
            ifindex: cached.ifindex,
            src_mac: cached.src_mac,
            dst_mac: cached.dst_mac,
            mtu: cached.mtu,
        });
    }
    let hop = next_hop(ctx, pkt, pkt.key.src_addr, daddr)?;
    if let NextHop::Resolved { ifindex, src_mac, dst_mac, mtu } = hop {
        *cached = CachedHop { checked_ns: now, ifindex, mtu, src_mac, dst_mac, _pad: [0; 6] };
    }
    Ok(hop)
}

/// Sends the (fully rewritten) packet to its next hop; returns the verdict.
#[inline(always)]
pub fn send(ctx: &XdpContext, pkt: &Packet, hop: &NextHop) -> u32 {
    match *hop {
        NextHop::Resolved { ifindex, src_mac, dst_mac, .. } => {
            let eth = unsafe { &mut *pkt.eth };
            eth.src = src_mac;
            eth.dst = dst_mac;
            if ifindex == unsafe { (*ctx.ctx).ingress_ifindex } {
                xdp_action::XDP_TX
            } else {
                unsafe { bpf_redirect(ifindex, 0) as u32 }
            }
        }
        NextHop::Unresolved => xdp_action::XDP_PASS,
    }
}
