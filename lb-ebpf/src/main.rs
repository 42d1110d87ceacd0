//! The XDP load balancer: forwards each packet of a virtual service to a
//! server of its pool (destination NAT), and rewrites the servers' replies
//! back to the VIP. See the files by concern: `parse` (headers), `flow`
//! (flows: creation, server choice, server state), `flow_table` (finding and
//! placing flows), `nat` (rewrite), `forward`
//! (FIB, redirect), `reset` (answering terminated flows), `maps`, `counters`.
//! And `purge`: a second program, which the agent runs (never attached) to
//! free servers' flows in the kernel.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]
// The flow table's compare-and-swap: BPF has no `AtomicU64` in `core`, but
// LLVM lowers the intrinsic to the BPF cmpxchg instruction.
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features, reason = "core_intrinsics, for the cmpxchg above"))]

#[cfg(target_arch = "bpf")]
mod counters;
#[cfg(target_arch = "bpf")]
mod csum;
#[cfg(target_arch = "bpf")]
mod events;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod flow_table;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod nat;
#[cfg(target_arch = "bpf")]
mod parse;
#[cfg(target_arch = "bpf")]
mod purge;
#[cfg(target_arch = "bpf")]
mod reset;

#[cfg(target_arch = "bpf")]
mod program {
    use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
    use lb_common::{Outcome, ReverseNat, ServiceKey, filter, flow_table};

    use crate::{
        counters::{count, count_from_server, count_to_server},
        events,
        flow::{self, Assignment, Refusal},
        forward,
        maps::{CLOCK, FILTER, REVERSE_NAT, SERVER_ENDPOINTS, SERVICES},
        nat,
        parse::{self, Packet},
        reset,
    };

    #[xdp]
    pub fn lb(ctx: XdpContext) -> u32 {
        let (outcome, verdict) = match handle(&ctx) {
            Ok(done) => done,
            Err(outcome) => (outcome, verdict_of(outcome)),
        };
        count(outcome);
        verdict
    }

    /// The verdict for a packet that is not forwarded.
    #[inline(always)]
    fn verdict_of(outcome: Outcome) -> u32 {
        match outcome {
            Outcome::PassNotIpv4
            | Outcome::PassNotForUs
            | Outcome::PassOtherProtocol
            | Outcome::PassTtlExpired
            | Outcome::PassNeighbourUnresolved => xdp_action::XDP_PASS,
            Outcome::Aborted => xdp_action::XDP_ABORTED,
            _ => xdp_action::XDP_DROP,
        }
    }

    #[inline(always)]
    fn handle(ctx: &XdpContext) -> Result<(Outcome, u32), Outcome> {
        let mut pkt = parse::parse(ctx)?;
        let bits = |index: u32| FILTER.get(index).copied().unwrap_or(0);
        let k = &pkt.key;
        if bits(filter::service_index(k.dst_addr, k.dst_port, k.proto)) & filter::SERVICE != 0 {
            check_ttl(&pkt)?;
            let now = now();
            let service_key = ServiceKey { addr: k.dst_addr, port: k.dst_port, proto: k.proto, _pad: 0 };
            // SAFETY: the value (an index) is copied out at once; the agent
            // writes services only before it points traffic at them.
            let service = || unsafe { SERVICES.get(&service_key) };
            // Packets of existing flows need no service lookup: the flow key
            // holds the VIP. A SYN nearly always opens a flow, so its service
            // is looked up first. (Measured: a new flow costs about 100 ns
            // more when the service lookup comes between the flow-table miss
            // and the insert.)
            let syn_service = if pkt.is_syn() { service() } else { None };
            let hash = flow_table::hash(k);
            match flow::existing(&pkt, hash) {
                Ok(Some(a)) => return to_server(ctx, &mut pkt, a, now),
                Ok(None) => {}
                Err(refusal) => return refused(ctx, pkt, refusal),
            }
            if let Some(service) = if pkt.is_syn() { syn_service } else { service() } {
                let a = flow::create(&pkt, hash, service, now).inspect_err(|outcome| {
                    if *outcome == Outcome::DropFlowSlotTaken {
                        events::flow_slot_lost(&pkt.key);
                    }
                })?;
                return to_server(ctx, &mut pkt, a, now);
            }
        }
        if bits(k.src_port as u32) & filter::SERVER_PORT == 0 {
            return Err(Outcome::PassNotForUs);
        }
        // From a server endpoint: a reply to rewrite back to the VIP.
        let endpoint = ServiceKey { addr: pkt.key.src_addr, port: pkt.key.src_port, proto: pkt.key.proto, _pad: 0 };
        // SAFETY (both lookups): the values are read at once, and the agent
        // writes an entry whole before traffic can use it.
        if let Some(nat) = unsafe { SERVER_ENDPOINTS.get(&endpoint) } {
            // SAFETY: as above.
            let nat = if nat.shared == 0 { Some(nat) } else { unsafe { REVERSE_NAT.get(&pkt.key) } };
            if let Some(nat) = nat {
                // A reply of a terminated flow is answered with a reset: that
                // resizes the frame, so it takes the packet whole.
                return to_client(ctx, &mut pkt, nat).or_else(|refusal| refused(ctx, pkt, refusal));
            }
        }
        Err(Outcome::PassNotForUs)
    }

    /// Time for flow bookkeeping and the next-hop cache: the agent's clock
    /// (`lb-userspace/src/datapath/clock.rs`, 10 ms resolution, far below any
    /// timeout), one load where a helper call cost +0.03 of the reflector's
    /// packet rate.
    #[inline(always)]
    fn now() -> u64 {
        CLOCK.get(0).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn check_ttl(pkt: &Packet) -> Result<(), Outcome> {
        if pkt.ip().ttl <= 1 {
            return Err(Outcome::PassTtlExpired);
        }
        Ok(())
    }

    /// A packet that is not forwarded: counted, or answered with a reset.
    #[inline(always)]
    fn refused(ctx: &XdpContext, pkt: Packet, refusal: Refusal) -> Result<(Outcome, u32), Outcome> {
        match refusal {
            Refusal::Outcome(outcome) => Err(outcome),
            Refusal::Reset(other_end) => {
                events::reset_sent(&pkt.key);
                reset::reset_sender(ctx, pkt, &other_end)
            }
        }
    }

    /// Client -> VIP: rewrite the destination to the flow's server.
    #[inline(always)]
    fn to_server(ctx: &XdpContext, pkt: &mut Packet, a: Assignment, now: u64) -> Result<(Outcome, u32), Outcome> {
        let hop = forward::next_hop_to_server(ctx, pkt, a.server_id, a.server.addr, now)?;
        if let Some(existing) = a.flow {
            flow::touch(existing, pkt, now, true);
        }
        // Destination NAT, and the TTL decrement of any router.
        nat::rewrite_destination(pkt, a.server.addr, a.server.port);
        count_to_server(a.server_id, pkt.len, a.new_flow);
        let verdict = forward::send(ctx, pkt, &hop);
        let outcome = match hop {
            forward::NextHop::Unresolved => Outcome::PassNeighbourUnresolved,
            _ if a.new_flow => Outcome::ForwardNewFlow,
            _ => Outcome::ForwardFlow,
        };
        Ok((outcome, verdict))
    }

    /// Server -> client: rewrite the source back to the VIP.
    #[inline(always)]
    fn to_client(ctx: &XdpContext, pkt: &mut Packet, nat: &ReverseNat) -> Result<(Outcome, u32), Refusal> {
        check_ttl(pkt)?;
        let existing = flow::reply(pkt, nat)?;
        let (hop, _mtu) = forward::next_hop(ctx, pkt, nat.vip, pkt.key.dst_addr)?;
        flow::touch(existing.slot, pkt, now(), false);
        let server_id = existing.flow.server_id;
        nat::rewrite_source(pkt, nat.vip, nat.port);
        count_from_server(server_id, pkt.len);
        let verdict = forward::send(ctx, pkt, &hop);
        let outcome = match hop {
            forward::NextHop::Unresolved => Outcome::PassNeighbourUnresolved,
            _ => Outcome::ForwardReply,
        };
        Ok((outcome, verdict))
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        loop {}
    }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
