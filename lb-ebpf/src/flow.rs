//! Where a flow is created and tracked: the flow table keeps each flow on the
//! server it was given, and the server's state is checked on every hit.

use lb_common::{
    Flow, MAGLEV_TABLE_SIZE, NO_SERVER, Outcome, Server, Service, flow_seen, flow_state, flow_time, proto,
    server_flags, server_state,
};

use crate::{
    counters,
    family::{self, Family, Key, Nat},
    flow_table::{self, Found},
    maps::{MAGLEV, SERVERS},
    parse::{Packet, tcp_flag},
};

/// The server a packet goes to.
pub struct Assignment<F: Family> {
    pub server_id: u32,
    /// Its address in the packet's family.
    pub addr: F::Addr,
    pub port: u16,
    pub new_flow: bool,
    /// A new flow's slot number in the table (0 for an existing flow): it
    /// is shared from there (`flow_sync`) once the packet is on its way.
    pub new_slot: u32,
    /// The existing flow's slot, to be touched once the packet is on its way.
    pub flow: Option<*mut F::Slot>,
}

/// Why a packet is not forwarded.
pub enum Refusal<F: Family> {
    /// Passed or dropped, counted under this outcome.
    Outcome(Outcome),
    /// A packet of a terminated TCP flow: reset its sender, and ask the agent
    /// to send this reset to the other end.
    Reset(F::Reset),
}

impl<F: Family> From<Outcome> for Refusal<F> {
    fn from(outcome: Outcome) -> Refusal<F> {
        Refusal::Outcome(outcome)
    }
}

/// Packets of existing flows still go to ENABLED and DRAINING servers.
#[inline(always)]
fn serves_existing_flows(server: &Server) -> bool {
    server.state == server_state::ENABLED || server.state == server_state::DRAINING
}

#[inline(always)]
fn server(server_id: u32) -> Option<Server> {
    SERVERS.get(server_id).copied()
}

/// A packet of a flow whose server no longer serves it. TCP flows still in
/// use are reset at both ends; UDP, finished flows and resets are dropped.
#[inline(always)]
fn terminated<F: Family>(pkt: &Packet<F>, flow: &Flow, other_end: F::Reset) -> Refusal<F> {
    if pkt.is_udp() || pkt.is_rst() || flow_seen::ended(flow.seen) {
        return Refusal::Outcome(Outcome::DropServerUnavailable);
    }
    Refusal::Reset(other_end)
}

/// Client -> VIP: the server of the flow this packet belongs to, or `None`
/// when it belongs to none (and may start one: see [`create`]). Looked up
/// before the service: the flow key holds the VIP, so packets of existing
/// flows need no service lookup.
/// `hash` is the key's [`hash`], computed once per packet.
#[inline(always)]
pub fn existing<F: Family>(pkt: &Packet<F>, hash: u64) -> Result<Option<Assignment<F>>, Refusal<F>> {
    if let Some(Found { slot, flow }) = flow_table::lookup::<F>(&pkt.key, hash) {
        let server = server(flow.server()).unwrap_or_default();
        let addr = F::server_addr(flow.server(), &server);
        let serving = serves_existing_flows(&server) && addr.is_some();
        // A SYN on the 5-tuple of a closed or terminated connection (port
        // reuse) is a new connection: it gets a new flow.
        if !(pkt.is_syn() && (flow.state == flow_state::TCP_CLOSING || !serving)) {
            let addr = addr.unwrap_or_default();
            if !serving {
                let k = &pkt.key;
                let to_server = F::reset_request(k.src(), addr, k.src_port(), server.port, pkt.seq_end);
                return Err(terminated(pkt, &flow, to_server));
            }
            let (server_id, port) = (flow.server(), server.port);
            return Ok(Some(Assignment { server_id, addr, port, new_flow: false, new_slot: 0, flow: Some(slot) }));
        }
    }
    Ok(None)
}

/// Server -> client: the flow this reply belongs to (touch it once the
/// packet is on its way).
#[inline(always)]
pub fn reply<F: Family>(pkt: &Packet<F>, nat: &F::Nat) -> Result<Found<F>, Refusal<F>> {
    let k = &pkt.key;
    let key = F::Key::new(k.dst(), nat.vip(), k.dst_port(), nat.port(), k.proto());
    // No flow: not a reply of a balanced flow (the server talking to someone
    // else, such as the host's own health checks). Not ours.
    let found = flow_table::lookup::<F>(&key, family::hash::<F>(&key)).ok_or(Outcome::PassNotForUs)?;
    let flow = &found.flow;
    let server = server(flow.server()).ok_or(Outcome::DropServerUnavailable)?;
    // The 5-tuple may have been reused for a flow on another server since.
    if F::server_addr(flow.server(), &server) != Some(k.src()) || server.port != k.src_port() {
        return Err(Outcome::DropReplyWithoutFlow.into());
    }
    if !serves_existing_flows(&server) {
        let to_client = F::reset_request(nat.vip(), k.dst(), nat.port(), k.dst_port(), pkt.seq_end);
        return Err(terminated(pkt, flow, to_client));
    }
    Ok(found)
}

/// Client -> VIP, no flow yet: a new flow, on a server chosen by the
/// service's consistent-hash table.
#[inline(always)]
pub fn create<F: Family>(pkt: &Packet<F>, hash: u64, service: &Service, now: u64) -> Result<Assignment<F>, Outcome> {
    let mut server_id = choose_server(service, hash).ok_or(Outcome::DropNoServer)?;
    let mut server = server(server_id).ok_or(Outcome::DropNoServer)?;
    // The row only names servers that take new flows, but an operator's
    // disable writes the server's state (the one write that stops its
    // flows) a moment before the row is rewritten: a SYN of that moment
    // takes a server from the next slots rather than being dropped.
    if server.state != server_state::ENABLED {
        server_id = fallback_server(service.index, hash);
        server = self::server(server_id).ok_or(Outcome::DropNoServer)?;
        if server.state != server_state::ENABLED {
            return Err(Outcome::DropNoServer);
        }
    }
    let addr = F::server_addr(server_id, &server).ok_or(Outcome::DropNoServer)?;
    let mut flow = Flow {
        // Below the servers map's size, at most 65,536 (the agent's config).
        server_id: server_id as u16,
        state: if pkt.is_udp() { flow_state::UDP } else { flow_state::TCP_OPEN },
        last_seen: flow_time::tick(now),
        ..Flow::default()
    };
    if pkt.proto() == proto::TCP {
        track_tcp(&mut flow, pkt, true);
    }
    let placed = flow_table::insert::<F>(&pkt.key, hash, &flow).map_err(|_| Outcome::DropFlowSlotTaken)?;
    if let Some(kind) = placed.evicted {
        counters::count_eviction(kind);
    }
    // Replies find their VIP by the server's endpoint, unless it serves
    // several services: then by the flow.
    if server.flags & server_flags::SHARED_ENDPOINT != 0 && !remember_return_path::<F>(&pkt.key, &addr, server.port) {
        return Err(Outcome::Aborted);
    }
    Ok(Assignment { server_id, addr, port: server.port, new_flow: true, new_slot: placed.slot, flow: None })
}

/// The return path of a new flow on a shared endpoint (`addr`, `port`):
/// its replies' 5-tuple -> the VIP they come from. Out of line (a
/// BPF-to-BPF call): a rare path, whose keys would otherwise take stack
/// from every new flow's frame.
#[inline(never)]
fn remember_return_path<F: Family>(k: &F::Key, addr: &F::Addr, port: u16) -> bool {
    let reply_key = F::Key::new(*addr, k.src(), port, k.src_port(), k.proto());
    let nat = F::Nat::new(k.dst(), k.dst_port());
    F::reverse_nat().insert(&reply_key, &nat, 0).is_ok()
}

/// Records a packet of the flow that is being forwarded: its time, and for
/// TCP its sequence numbers and FIN or RST. Not for a packet that is then
/// dropped: the sequence numbers must stay the ones the ends have seen.
#[inline(always)]
pub fn touch<F: Family>(slot: *mut F::Slot, pkt: &Packet<F>, now: u64, from_client: bool) {
    // SAFETY: a slot of the flow map. Written in place, without its lock: if
    // another CPU rewrote it for a new flow this instant, that flow may get
    // this packet's time or sequence numbers (never its server), as with the
    // kernel's preallocated hash maps, whose elements are reused the same way.
    let flow = unsafe { &mut *<F::Slot as lb_common::TableSlot>::parts(slot).1 };
    // Skip stores when nothing changes: fewer dirty cache lines across CPUs.
    let now = flow_time::tick(now);
    if flow.last_seen != now {
        flow.last_seen = now;
        // Another node's copy, forwarded here in a tick after it was
        // written: this node's to count, judge idle and share from now on
        // (the agent's `forwarded_here`). Checked only as the tick changes:
        // packets within one tick pay nothing for it.
        if flow.seen & flow_seen::COPY != 0 {
            flow.seen &= !flow_seen::COPY;
        }
    }
    if pkt.proto() == proto::TCP {
        track_tcp(flow, pkt, from_client);
    }
}

/// Keeps each side's next sequence number (so the agent can reset both ends
/// in-window, idle connections included), which side sent data last (so it
/// can tell a resting connection from one whose request is being served),
/// and what closed the connection.
#[inline(always)]
fn track_tcp<F: Family>(flow: &mut Flow, pkt: &Packet<F>, from_client: bool) {
    let (fin_bit, seq_bit) = if from_client {
        (flow_seen::FIN_FROM_CLIENT, flow_seen::CLIENT_SEQ)
    } else {
        (flow_seen::FIN_FROM_SERVER, flow_seen::SERVER_SEQ)
    };
    let next = if from_client { &mut flow.client_next_seq } else { &mut flow.server_next_seq };
    // A reset carries no data; its sequence number need not be in order.
    if !pkt.is_rst() && (flow.seen & seq_bit == 0 || (pkt.seq_end.wrapping_sub(*next) as i32) > 0) {
        *next = pkt.seq_end;
        // New data: which end spoke last (one store, as before: `seen` was
        // written here anyway). Pure ACKs and retransmissions change nothing.
        let seen = flow.seen | seq_bit;
        flow.seen = if from_client { seen | flow_seen::AWAITING_SERVER } else { seen & !flow_seen::AWAITING_SERVER };
    }
    // The client's first ACK completes the handshake: until then the flow is
    // half-open, and the first to give way in a full table.
    if from_client && flow.seen & flow_seen::CLIENT_ACK == 0 && pkt.tcp_flags & tcp_flag::ACK != 0 {
        flow.seen |= flow_seen::CLIENT_ACK;
    }
    if pkt.tcp_flags & (tcp_flag::FIN | tcp_flag::RST) != 0 {
        flow.seen |= if pkt.is_rst() { flow_seen::RST } else { fin_bit };
        flow.state = flow_state::TCP_CLOSING;
    }
}

/// Consistent hashing: the flow's hash picks a slot of the service's Maglev row.
#[inline(always)]
fn choose_server(service: &Service, hash: u64) -> Option<u32> {
    let id = *MAGLEV.get(service.index * MAGLEV_TABLE_SIZE + maglev_slot(hash))?;
    if id == NO_SERVER { None } else { Some(id) }
}

/// Maps the hash onto 0..MAGLEV_TABLE_SIZE by a multiply and a shift (no
/// division): hash32 * size / 2^32.
#[inline(always)]
fn maglev_slot(hash: u64) -> u32 {
    (((hash >> 32) * MAGLEV_TABLE_SIZE as u64) >> 32) as u32
}

/// Slots tried after a flow's own when its server no longer takes new flows.
/// Maglev spreads a server's slots, so with one of n servers out each try
/// misses with odds 1/n: 16 tries leave 1 in 65536 SYNs to drop with two.
const FALLBACK_SLOTS: u32 = 16;

/// The first server after the flow's slot that takes new flows, or
/// NO_SERVER. Out of line (a BPF-to-BPF call): it runs only in the moment
/// a row is being rewritten, and inlined it would make the packet path too
/// large for LLVM to inline whole.
#[inline(never)]
fn fallback_server(service_index: u32, hash: u64) -> u32 {
    let first = maglev_slot(hash);
    for step in 1..=FALLBACK_SLOTS {
        let mut slot = first + step;
        if slot >= MAGLEV_TABLE_SIZE {
            slot -= MAGLEV_TABLE_SIZE;
        }
        let Some(&id) = MAGLEV.get(service_index * MAGLEV_TABLE_SIZE + slot) else { return NO_SERVER };
        if id != NO_SERVER && server(id).is_some_and(|s| s.state == server_state::ENABLED) {
            return id;
        }
    }
    NO_SERVER
}
