//! The XDP load balancer: forwards each packet of a virtual service to a
//! server of its pool (destination NAT), and rewrites the servers' replies
//! back to the VIP. See the files by concern: `parse` (headers), `flow`
//! (flows: creation, server choice, server state), `flow_table` (finding and
//! placing flows), `family` (what differs between IPv4 and IPv6: the code
//! is generic over it), `nat` (rewrite), `forward`
//! (FIB, redirect), `reset` (answering terminated flows), `icmp` (errors
//! about balanced flows, sent on to their servers), `maps`, `counters`.
//! IPv6 packets go on by a tail call to `lb6` (the same code, generic over
//! `family`), so IPv4's path stays inline in `lb`. And `purge`: a program
//! the agent runs (never attached) to free servers' flows in the kernel.
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
mod family;
#[cfg(target_arch = "bpf")]
mod flow;
#[cfg(target_arch = "bpf")]
mod flow_sync;
#[cfg(target_arch = "bpf")]
mod flow_table;
#[cfg(target_arch = "bpf")]
mod forward;
#[cfg(target_arch = "bpf")]
mod icmp;
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
    use lb_common::{Outcome, Service, filter};

    use crate::{
        counters::{count, count_from_server, count_to_server},
        family::{self, Family, Key, Nat, V4, V6},
        flow::{self, Assignment, Refusal},
        flow_sync, forward, icmp,
        maps::{CLOCK, FAMILY_PROGRAMS, FILTER, IPV6_OTHER_PROGRAM, IPV6_PROGRAM},
        nat,
        parse::{self, ETH_P_IPV4, ETH_P_IPV6, Packet},
        reset::{self, Resets},
    };

    #[xdp]
    pub fn lb(ctx: XdpContext) -> u32 {
        let (outcome, verdict) = match parse::ether_type(&ctx) {
            Some(ETH_P_IPV4) => match parse::parse4(&ctx).and_then(|pkt| handle(&ctx, pkt)) {
                Ok(done) => done,
                Err(Outcome::PassOtherProtocol) => unpack(icmp4(&ctx)),
                Err(outcome) => (outcome, verdict_of(outcome)),
            },
            Some(ETH_P_IPV6) => {
                // SAFETY: the context the kernel passed this run. A tail call
                // does not return when it succeeds: `lb6` counts the packet.
                unsafe { FAMILY_PROGRAMS.tail_call(&ctx, IPV6_PROGRAM) };
                // No IPv6 program in the array (an agent that set none).
                (Outcome::PassNotForUs, xdp_action::XDP_PASS)
            }
            _ => (Outcome::PassNotIp, xdp_action::XDP_PASS),
        };
        count(outcome);
        verdict
    }

    /// IPv6 packets, entered from `lb` by a tail call: a program of its own,
    /// so IPv4's path stays inline in `lb`, as before IPv6 existed, and each
    /// family has the verifier's 512 bytes of stack to itself. Packets of
    /// established flows and servers' replies are settled here, inline; the
    /// rest (new flows, refusals, ICMPv6, extension headers) goes on to
    /// [`lb6_other`] by a tail call. IPv6's whole path does not fit in one
    /// program (the verifier's limits), and the BPF-to-BPF call it takes
    /// there costs 6-7 ns on these hosts (its return goes through the
    /// kernel's return thunk), a tail call 2.
    #[xdp]
    pub fn lb6(ctx: XdpContext) -> u32 {
        // The host's own traffic, told apart before the parse.
        let early = parse::ipv6_filter(&ctx);
        if early == Some(0) {
            count(Outcome::PassNotForUs);
            return xdp_action::XDP_PASS;
        }
        if let Some((outcome, verdict)) = established6(&ctx, early) {
            count(outcome);
            return verdict;
        }
        // SAFETY: the context the kernel passed this run. A tail call does
        // not return when it succeeds: `lb6_other` counts the packet.
        unsafe { FAMILY_PROGRAMS.tail_call(&ctx, IPV6_OTHER_PROGRAM) };
        // Not in the array (an agent that set none).
        count(Outcome::PassNotForUs);
        xdp_action::XDP_PASS
    }

    /// An IPv6 packet of an established flow (not a SYN) or a server's
    /// reply, forwarded. `None` for anything else, having written nothing:
    /// [`lb6_other`] then takes the packet from the start. (The lookups
    /// before a refusal write nothing; the next-hop caches they may fill
    /// are filled alike again.)
    #[inline(always)]
    fn established6(ctx: &XdpContext, early: Option<u8>) -> Option<(Outcome, u32)> {
        let mut pkt = parse::parse6(ctx, early).ok()?;
        let done = match pkt.filter {
            filter::SERVICE if !pkt.is_syn() && check_ttl(&pkt).is_ok() => {
                let a = flow::existing(&pkt, family::hash::<V6>(&pkt.key)).ok()??;
                to_server(ctx, &mut pkt, a, now())
            }
            filter::SERVER_PORT => {
                let nat = reply_nat(&pkt)?;
                Ok(to_client(ctx, &mut pkt, nat).ok()?)
            }
            _ => return None,
        };
        Some(done.unwrap_or_else(|outcome| (outcome, verdict_of(outcome))))
    }

    /// The rest of IPv6's packets, from [`lb6`] by a tail call: a SYN or a
    /// UDP datagram opening a flow in one call ([`opening6`]), anything
    /// else in [`handle6`] (and a new flow of another packet in
    /// [`new_flow6`]).
    #[xdp]
    pub fn lb6_other(ctx: XdpContext) -> u32 {
        // As in `lb6` (which settled the host's own traffic already).
        let early = parse::ipv6_filter(&ctx);
        if early == Some(0) {
            count(Outcome::PassNotForUs);
            return xdp_action::XDP_PASS;
        }
        if early == Some(filter::SERVICE) {
            let opened = opening6(&ctx);
            if opened != 0 {
                let (outcome, verdict) = unpack(opened);
                count(outcome);
                return verdict;
            }
        }
        let (outcome, verdict) = match unpack(handle6(&ctx, early_arg(early))) {
            (Outcome::ForwardNewFlow, verdict) if verdict & NEW_FLOW != 0 => {
                unpack(new_flow6(&ctx, verdict & !NEW_FLOW, early_arg(early)))
            }
            (Outcome::PassOtherProtocol, _) => unpack(icmp6(&ctx)),
            done => done,
        };
        count(outcome);
        verdict
    }

    /// An IPv6 SYN or UDP datagram to a service, without extension
    /// headers (the filter read early), that opens a flow: the flow
    /// created in this one call, the service looked up first and the flow
    /// inserted right after its lookup missed, as in IPv4's `handle`.
    /// Measured: IPv6's new flow 502 -> 360 ns; IPv4's costs 552 ns
    /// instead of 370 when split the way [`new_flow6`] splits it (the
    /// insert in a call of its own, after the lookup's call returned and a
    /// second parse). 0, having written nothing, for anything else:
    /// [`handle6`] takes the packet from the start (a packet of an existing
    /// flow, to no service at its port, or refused by the parse). Other new
    /// flows (a SYN with extension headers, a TCP packet that is not a SYN)
    /// still take the split path: every packet to a service in one call
    /// takes `lb6_other` past the verifier's million instructions.
    #[inline(never)]
    fn opening6(ctx: &XdpContext) -> u64 {
        let Ok(mut pkt) = parse::parse6(ctx, Some(filter::SERVICE)) else { return 0 };
        if !(pkt.is_syn() || pkt.is_udp()) || check_ttl(&pkt).is_err() {
            return 0;
        }
        let k = &pkt.key;
        let service_key = V6::service_key(k.dst(), k.dst_port(), k.proto());
        // SAFETY: the value (an index) is copied out at once, as in `handle`.
        let Some(service) = (unsafe { V6::services().get(&service_key) }) else { return 0 };
        let index = service.index;
        let now = now();
        let hash = family::hash::<V6>(k);
        match flow::existing(&pkt, hash) {
            Ok(None) => pack(create_flow(ctx, &mut pkt, hash, &Service { index }, now)),
            // A SYN of an existing flow (a retransmission, rare), or a
            // datagram that `lb6` did not find on its flow a moment ago.
            _ => 0,
        }
    }

    /// IPv6's path, out of line (a BPF-to-BPF call), and a new flow (but a
    /// SYN's or a UDP datagram's, see [`opening6`]) is created in a second
    /// call ([`new_flow6`]), so the two paths' stacks never add up: IPv6's
    /// keys are larger, and both in one frame did not fit. The outcome and
    /// verdict come back packed in one register.
    #[inline(never)]
    fn handle6(ctx: &XdpContext, early: u32) -> u64 {
        pack(parse::parse6(ctx, early_of(early)).and_then(|pkt| handle(ctx, pkt)))
    }

    /// The early filter ([`parse::ipv6_filter`]) passed to a call as one
    /// register: as an `Option`, LLVM may hand the callee an unset register
    /// for `None`, which the verifier refuses.
    #[inline(always)]
    fn early_arg(early: Option<u8>) -> u32 {
        early.map_or(u32::MAX, u32::from)
    }

    /// [`early_arg`] undone, in the callee.
    #[inline(always)]
    fn early_of(arg: u32) -> Option<u8> {
        u8::try_from(arg).ok()
    }

    /// In the verdict of a `ForwardNewFlow` answer: not sent yet, the flow
    /// is to be created on the service whose row the other bits hold
    /// (no XDP verdict has this bit).
    const NEW_FLOW: u32 = 1 << 31;

    /// An IPv6 packet's new flow, on the service [`handle6`] found. The
    /// packet is parsed again (it is unchanged).
    #[inline(never)]
    fn new_flow6(ctx: &XdpContext, index: u32, early: u32) -> u64 {
        let create = |mut pkt: Packet<V6>| {
            let now = now();
            let hash = family::hash::<V6>(&pkt.key);
            create_flow(ctx, &mut pkt, hash, &Service { index }, now)
        };
        pack(parse::parse6(ctx, early_of(early)).and_then(create))
    }

    /// ICMP to a VIP (neither TCP nor UDP): an error about a balanced flow
    /// goes to its server (`icmp`). Out of line: rare, and kept out of the
    /// TCP and UDP paths' code.
    #[inline(never)]
    fn icmp4(ctx: &XdpContext) -> u64 {
        pack(icmp::too_big::<V4>(ctx))
    }

    /// [`icmp4`] for ICMPv6 (NDP and the rest pass to the kernel).
    #[inline(never)]
    fn icmp6(ctx: &XdpContext) -> u64 {
        pack(icmp::too_big::<V6>(ctx))
    }

    /// A packet's answer in one register: never 0, which [`opening6`] returns
    /// for a packet it leaves to [`handle6`] (outcome 0, `PassNotIp`, is
    /// only ever passed: XDP_PASS, 2).
    #[inline(always)]
    fn pack(done: Result<(Outcome, u32), Outcome>) -> u64 {
        let (outcome, verdict) = match done {
            Ok(done) => done,
            Err(outcome) => (outcome, verdict_of(outcome)),
        };
        (outcome as u64) << 32 | verdict as u64
    }

    #[inline(always)]
    fn unpack(packed: u64) -> (Outcome, u32) {
        let outcome = Outcome::from_index((packed >> 32) as u32).unwrap_or(Outcome::Aborted);
        (outcome, packed as u32)
    }

    /// The verdict for a packet that is not forwarded.
    #[inline(always)]
    fn verdict_of(outcome: Outcome) -> u32 {
        match outcome {
            Outcome::PassNotIp
            | Outcome::PassNotForUs
            | Outcome::PassOtherProtocol
            | Outcome::PassTtlExpired
            | Outcome::PassNeighbourUnresolved => xdp_action::XDP_PASS,
            Outcome::Aborted => xdp_action::XDP_ABORTED,
            _ => xdp_action::XDP_DROP,
        }
    }

    #[inline(always)]
    fn handle<F: Resets>(ctx: &XdpContext, mut pkt: Packet<F>) -> Result<(Outcome, u32), Outcome> {
        let k = &pkt.key;
        if pkt.filter & filter::SERVICE != 0 {
            check_ttl(&pkt)?;
            let now = now();
            let service_key = F::service_key(k.dst(), k.dst_port(), k.proto());
            // SAFETY: the value (an index) is copied out at once; the agent
            // writes services only before it points traffic at them.
            let service = || unsafe { F::services().get(&service_key) };
            // Packets of existing flows need no service lookup: the flow key
            // holds the VIP. A SYN nearly always opens a flow, so its service
            // is looked up first. (Measured: a new flow costs about 100 ns
            // more when the service lookup comes between the flow-table miss
            // and the insert.)
            let syn_service = if pkt.is_syn() { service() } else { None };
            let hash = family::hash::<F>(k);
            match flow::existing(&pkt, hash) {
                Ok(Some(a)) => return to_server(ctx, &mut pkt, a, now),
                Ok(None) => {}
                Err(refusal) => return refused(ctx, pkt, refusal),
            }
            if let Some(service) = if pkt.is_syn() { syn_service } else { service() } {
                if F::SPLIT_FRAMES {
                    return Ok((Outcome::ForwardNewFlow, NEW_FLOW | service.index));
                }
                return create_flow(ctx, &mut pkt, hash, service, now);
            }
        }
        // The parse read the source port's bit only for a packet that no
        // service may be at.
        let from_server = match pkt.filter {
            filter::SERVICE => FILTER.get(k.src_port() as u32).copied().unwrap_or(0) & filter::SERVER_PORT != 0,
            bits => bits & filter::SERVER_PORT != 0,
        };
        if !from_server {
            return Err(Outcome::PassNotForUs);
        }
        // From a server endpoint: a reply to rewrite back to the VIP.
        let nat = reply_nat(&pkt).ok_or(Outcome::PassNotForUs)?;
        // A reply of a terminated flow is answered with a reset: that resizes
        // the frame, so it takes the packet whole.
        to_client(ctx, &mut pkt, nat).or_else(|refusal| refused(ctx, pkt, refusal))
    }

    /// How to rewrite a packet from a server endpoint back to its VIP:
    /// the endpoint's own, or for an endpoint several services share, the
    /// flow's. `None`: not from a server endpoint.
    #[inline(always)]
    fn reply_nat<F: Family>(pkt: &Packet<F>) -> Option<&'static F::Nat> {
        let k = &pkt.key;
        let endpoint = F::service_key(k.src(), k.src_port(), k.proto());
        // SAFETY (both lookups): the values are read at once, and the agent
        // writes an entry whole before traffic can use it.
        let nat = unsafe { F::endpoints().get(&endpoint) }?;
        // SAFETY: as above.
        if !nat.shared() { Some(nat) } else { unsafe { F::reverse_nat().get(&pkt.key) } }
    }

    /// Client -> VIP, no flow yet: a flow on a server of `service`, and the
    /// packet on its way to it.
    #[inline(always)]
    fn create_flow<F: Family>(
        ctx: &XdpContext,
        pkt: &mut Packet<F>,
        hash: u64,
        service: &Service,
        now: u64,
    ) -> Result<(Outcome, u32), Outcome> {
        let a = flow::create(pkt, hash, service, now).inspect_err(|outcome| {
            if *outcome == Outcome::DropFlowSlotTaken {
                F::log_flow_slot_lost(&pkt.key);
            }
        })?;
        let slot = a.new_slot;
        let done = to_server(ctx, pkt, a, now);
        // Shared last, once the packet is on its way: stores made on a new
        // flow's path any earlier cost it 70-100 ns (see `flow_sync`).
        flow_sync::share::<F>(slot);
        done
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
    fn check_ttl<F: Family>(pkt: &Packet<F>) -> Result<(), Outcome> {
        if F::hop_limit(pkt.ip()) <= 1 {
            return Err(Outcome::PassTtlExpired);
        }
        Ok(())
    }

    /// A packet that is not forwarded: counted, or answered with a reset.
    #[inline(always)]
    fn refused<F: Resets>(ctx: &XdpContext, pkt: Packet<F>, refusal: Refusal<F>) -> Result<(Outcome, u32), Outcome> {
        match refusal {
            Refusal::Outcome(outcome) => Err(outcome),
            Refusal::Reset(other_end) => {
                F::log_reset_sent(&pkt.key);
                reset::reset_sender(ctx, pkt, &other_end)
            }
        }
    }

    /// Client -> VIP: rewrite the destination to the flow's server.
    #[inline(always)]
    fn to_server<F: Family>(
        ctx: &XdpContext,
        pkt: &mut Packet<F>,
        a: Assignment<F>,
        now: u64,
    ) -> Result<(Outcome, u32), Outcome> {
        let hop = forward::next_hop_to_server(ctx, pkt, a.server_id, a.addr, now)?;
        if let Some(existing) = a.flow {
            flow::touch(existing, pkt, now, true);
        }
        // Destination NAT, and the TTL decrement of any router.
        nat::rewrite_destination(pkt, a.addr, a.port);
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
    fn to_client<F: Family>(ctx: &XdpContext, pkt: &mut Packet<F>, nat: &F::Nat) -> Result<(Outcome, u32), Refusal<F>> {
        check_ttl(pkt)?;
        let existing = match flow::reply(pkt, nat) {
            Ok(found) => Some(found),
            // With flow replication, a reply may reach this node before the
            // copy of its flow (another node's) does: its server's own
            // endpoint names its VIP (`nat` is not a shared endpoint's).
            Err(Refusal::Outcome(Outcome::PassNotForUs)) if flow_sync::on() => None,
            Err(refusal) => return Err(refusal),
        };
        let now = now();
        let hop = match forward::next_hop_to_client(ctx, pkt, nat.vip(), pkt.key.dst(), now) {
            // Without a flow, a packet to this node itself (its health
            // checks' answers) or to nowhere is not ours.
            Err(Outcome::DropNoRoute) if existing.is_none() => return Err(Outcome::PassNotForUs.into()),
            hop => hop?,
        };
        if let Some(existing) = existing {
            flow::touch(existing.slot, pkt, now, false);
            count_from_server(existing.flow.server(), pkt.len);
        }
        nat::rewrite_source(pkt, nat.vip(), nat.port());
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
