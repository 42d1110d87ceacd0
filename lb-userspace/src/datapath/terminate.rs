//! Terminating servers' sessions: the flows and their return-path entries
//! are purged in batches, then both ends of every live TCP flow get a
//! reset. The caller has already written DISABLED into the server table,
//! which is what stops the traffic at once (one map write); this is the
//! clean-up and the courtesy to both ends.

use std::{
    collections::{HashMap, HashSet},
    io,
    time::{Duration, Instant},
};

use lb_common::{Flow, flow_seen, flow_state};

use super::{
    Datapath, bpf_batch,
    family::{Family, FlowEnds, Key, V4, V6},
    purge, sweep,
    tcp_reset::{Endpoint, Reset, ResetSender, Sent},
};
use crate::servers::{LeavingId, ServerSlot, ServerTable};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Termination {
    /// Flows purged.
    pub flows: usize,
    /// Live TCP flows reset, by server id.
    pub reset_by_server: HashMap<u32, usize>,
    /// Time to walk the flow table and purge.
    pub purge_time: Duration,
    /// Resets sent (two per live TCP flow), and the time it took.
    pub resets_sent: usize,
    pub reset_time: Duration,
}

/// The two resets of a live TCP flow: to the client as from the VIP, and to
/// the server as from the client, each with the receiver's next sequence
/// number (only for the directions whose sequence is known), added to
/// `resets`. A client that has seen nothing of the server (its handshake
/// in flight) takes a reset that acknowledges its SYN: it learns at once,
/// rather than waiting to send its SYN again (a second, then a stall).
pub fn add_resets(resets: &mut Vec<Reset>, ends: &FlowEnds, flow: &Flow, server: Endpoint) {
    let client = Endpoint { addr: ends.client.ip(), port: ends.client.port() };
    let vip = Endpoint { addr: ends.vip.ip(), port: ends.vip.port() };
    if flow.seen & flow_seen::SERVER_SEQ != 0 {
        resets.push(Reset { src: vip, dst: client, seq: flow.server_next_seq, ack: None, fin: false });
    } else if flow.seen & flow_seen::CLIENT_SEQ != 0 {
        resets.push(Reset { src: vip, dst: client, seq: 0, ack: Some(flow.client_next_seq), fin: false });
    }
    if flow.seen & flow_seen::CLIENT_SEQ != 0 {
        resets.push(Reset { src: client, dst: server, seq: flow.client_next_seq, ack: None, fin: false });
    }
}

/// Purges every flow of the servers with ids in `servers` (in the kernel,
/// see `purge`), with their return-path entries, and resets both ends of
/// those that were live TCP connections (in batches of packets, after each
/// batch of the purge).
pub fn terminate(
    dp: &mut Datapath,
    table: &ServerTable,
    servers: &HashSet<u32>,
    sender: &ResetSender,
) -> io::Result<Termination> {
    let started = Instant::now();
    let mut done = Termination::default();
    let mut outbox = Outbox { sender, resets: Vec::new(), gathered: 0, sent: Sent::default(), time: Duration::ZERO };
    // The servers' slots, looked up once rather than per flow.
    let slots: HashMap<u32, &ServerSlot> = servers.iter().filter_map(|&id| Some((id, table.get(id)?))).collect();
    let purged = purge_family::<V4>(dp, &slots, servers, &mut outbox, &mut done.reset_by_server)
        .and_then(|four| Ok(four + purge_family::<V6>(dp, &slots, servers, &mut outbox, &mut done.reset_by_server)?));
    outbox.sent.warn_unsent(outbox.gathered, "resets");
    done.flows = purged?;
    done.purge_time = started.elapsed().saturating_sub(outbox.time);
    (done.resets_sent, done.reset_time) = (outbox.sent.count, outbox.time);
    Ok(done)
}

/// The resets of a purge's flows, sent after each batch of the purge: the
/// first ends learn at once, and the agent holds one batch's resets at a
/// time (56 bytes each), not a million flows' (two million resets: with
/// that list growing, the agent's share of a purge took as long as the
/// kernel's).
struct Outbox<'a> {
    sender: &'a ResetSender,
    resets: Vec<Reset>,
    /// Resets gathered and sent so far, and the time sending them took.
    gathered: usize,
    sent: Sent,
    time: Duration,
}

impl Outbox<'_> {
    fn send(&mut self) {
        let started = Instant::now();
        self.gathered += self.resets.len();
        self.sent.add(self.sender.send_all(&self.resets));
        self.resets.clear();
        self.time += started.elapsed();
    }
}

/// The purge of family `F`'s table: the return paths are deleted, and the
/// live TCP flows' resets (counted by server) sent, after each batch. How
/// many flows there were.
fn purge_family<F: Family>(
    dp: &mut Datapath,
    slots: &HashMap<u32, &ServerSlot>,
    servers: &HashSet<u32>,
    outbox: &mut Outbox,
    reset_by_server: &mut HashMap<u32, usize>,
) -> io::Result<usize> {
    let mut replies: Vec<Key<F>> = Vec::new();
    purge::purge_servers::<F>(dp, servers, |maps, batch| {
        replies.clear();
        let resets = &mut outbox.resets;
        for record in batch {
            let (key, flow) = F::purged_flow(record);
            let Some(server) = slots.get(&flow.server()) else { continue };
            let ends = F::ends(key);
            if flow.state != flow_state::UDP && !flow_seen::ended(flow.seen) {
                add_resets(resets, &ends, flow, server_endpoint(server, &ends));
                *reset_by_server.entry(flow.server()).or_default() += 1;
            }
            if server.shared_endpoint {
                replies.extend(sweep::reply_key::<F>(key, server));
            }
        }
        let deleted = bpf_batch::delete_batch(F::reverse_nat(maps), &replies).map(|_| ());
        outbox.send();
        deleted
    })
}

/// The server's end of a flow: its address in the flow's family.
fn server_endpoint(server: &ServerSlot, ends: &FlowEnds) -> Endpoint {
    Endpoint { addr: server.address_for(ends.vip.ip()).unwrap_or(server.address), port: server.port }
}

/// Removes every flow of the leaving service `service` on its pool's
/// servers (its deadline came, or it was removed at once), with their
/// return-path entries, and resets both ends of those that were live TCP
/// connections. A walk of the table in the agent: the purge program picks
/// flows by server, not by service.
pub fn terminate_service(
    dp: &mut Datapath,
    table: &ServerTable,
    service: &LeavingId,
    sender: &ResetSender,
) -> io::Result<Termination> {
    let started = Instant::now();
    let mut done = Termination::default();
    let mut resets = Vec::new();
    let (key_of, pool) = service;
    let (_, removed) = sweep::remove_flows_where(&dp.maps, table, |ends, flow| {
        if ends.service() != *key_of {
            return false;
        }
        let Some(server) = table.get(flow.server()).filter(|s| s.pool == *pool) else { return false };
        if flow.state != flow_state::UDP && !flow_seen::ended(flow.seen) {
            add_resets(&mut resets, ends, flow, server_endpoint(server, ends));
            *done.reset_by_server.entry(flow.server()).or_default() += 1;
        }
        true
    })?;
    done.flows = removed;
    done.purge_time = started.elapsed();
    let sending = Instant::now();
    let sent = sender.send_all(&resets);
    sent.warn_unsent(resets.len(), "resets");
    done.resets_sent = sent.count;
    done.reset_time = sending.elapsed();
    Ok(done)
}

/// Gives the flows of servers `ids` their own return-path entries: their
/// endpoint is about to serve several services, and replies will then find
/// their VIP by flow rather than by endpoint. Returns how many were added.
pub fn add_return_paths(dp: &Datapath, table: &ServerTable, ids: &HashSet<u32>) -> io::Result<usize> {
    if ids.is_empty() {
        return Ok(0);
    }
    Ok(add_family_return_paths::<V4>(dp, table, ids)? + add_family_return_paths::<V6>(dp, table, ids)?)
}

fn add_family_return_paths<F: Family>(dp: &Datapath, table: &ServerTable, ids: &HashSet<u32>) -> io::Result<usize> {
    let (mut keys, mut values): (Vec<Key<F>>, Vec<F::Nat>) = (Vec::new(), Vec::new());
    F::table(&dp.maps).remove_where(|key, flow| {
        let server = table.get(flow.server()).filter(|_| ids.contains(&flow.server()));
        if let Some(reply) = server.and_then(|server| sweep::reply_key::<F>(key, server)) {
            keys.push(reply);
            values.push(F::nat(key));
        }
        false
    })?;
    if !keys.is_empty() {
        bpf_batch::update_batch(F::reverse_nat(&dp.maps), &keys, &values)?;
    }
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resets_of(seen: u8) -> Vec<Reset> {
        let ends =
            FlowEnds { client: "10.0.0.2:40000".parse().unwrap(), vip: "10.100.0.1:80".parse().unwrap(), proto: 6 };
        let server = Endpoint { addr: "10.0.1.2".parse().unwrap(), port: 8080 };
        let flow = Flow { seen, client_next_seq: 1001, server_next_seq: 7001, ..Flow::default() };
        let mut resets = Vec::new();
        add_resets(&mut resets, &ends, &flow, server);
        resets
    }

    #[test]
    fn a_connection_is_reset_at_both_ends_at_their_next_sequence_numbers() {
        let resets = resets_of(flow_seen::CLIENT_SEQ | flow_seen::SERVER_SEQ | flow_seen::CLIENT_ACK);
        let seqs: Vec<(u16, u32, Option<u32>)> = resets.iter().map(|r| (r.dst.port, r.seq, r.ack)).collect();
        assert_eq!(seqs, [(40000, 7001, None), (8080, 1001, None)]);
    }

    #[test]
    fn a_handshake_in_flight_is_reset_at_the_client_by_acknowledging_its_syn() {
        let resets = resets_of(flow_seen::CLIENT_SEQ);
        let seqs: Vec<(u16, u32, Option<u32>)> = resets.iter().map(|r| (r.dst.port, r.seq, r.ack)).collect();
        assert_eq!(seqs, [(40000, 0, Some(1001)), (8080, 1001, None)]);
    }
}
