//! Terminating servers' sessions: the flows and their return-path entries
//! are purged in batches, then both ends of every live TCP flow get a
//! reset. The caller has already written DISABLED into the server table,
//! which is what stops the traffic at once (one map write); this is the
//! clean-up and the courtesy to both ends.

use std::{
    collections::{HashMap, HashSet},
    io,
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use lb_common::{Flow, FlowKey, ReverseNat, flow_seen, flow_state, purge::Purged};

use super::{
    Datapath, bpf_batch, purge, sweep,
    tcp_reset::{Endpoint, Reset, ResetSender},
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

fn endpoint(addr: u32, port: u16) -> Endpoint {
    Endpoint { addr: Ipv4Addr::from(addr.to_ne_bytes()), port: u16::from_be(port) }
}

/// The two resets of a live TCP flow: to the client as from the VIP, and to
/// the server as from the client, each with the receiver's next sequence
/// number (only for the directions whose sequence is known), added to
/// `resets`.
pub fn add_resets(resets: &mut Vec<Reset>, key: &FlowKey, flow: &Flow, server: Endpoint) {
    let client = endpoint(key.src_addr, key.src_port);
    let vip = endpoint(key.dst_addr, key.dst_port);
    if flow.seen & flow_seen::SERVER_SEQ != 0 {
        resets.push(Reset { src: vip, dst: client, seq: flow.server_next_seq });
    }
    if flow.seen & flow_seen::CLIENT_SEQ != 0 {
        resets.push(Reset { src: client, dst: server, seq: flow.client_next_seq });
    }
}

/// Purges every flow of the servers with ids in `servers` (in the kernel,
/// see `purge`), with their return-path entries, then resets both ends of
/// those that were live TCP connections (in batches of packets).
pub fn terminate(
    dp: &mut Datapath,
    table: &ServerTable,
    servers: &HashSet<u32>,
    sender: &ResetSender,
) -> io::Result<Termination> {
    let started = Instant::now();
    let mut done = Termination::default();
    let mut resets = Vec::new();
    // The servers' slots, looked up once rather than per flow.
    let slots: HashMap<u32, &ServerSlot> = servers.iter().filter_map(|&id| Some((id, table.get(id)?))).collect();
    let mut replies = Vec::new();
    let purged = purge::purge_servers(dp, servers, |maps, batch| {
        replies.clear();
        resets.reserve(2 * batch.len());
        for Purged { key, flow } in batch {
            let Some(server) = slots.get(&flow.server_id) else { continue };
            if flow.state != flow_state::UDP && !flow_seen::ended(flow.seen) {
                add_resets(&mut resets, key, flow, Endpoint { addr: server.address, port: server.port });
                *done.reset_by_server.entry(flow.server_id).or_default() += 1;
            }
            if server.shared_endpoint {
                replies.push(sweep::reply_key(key, server.address, server.port));
            }
        }
        bpf_batch::delete_batch(maps.reverse_nat_map(), &replies).map(|_| ())
    })?;
    done.flows = purged;
    done.purge_time = started.elapsed();
    let sending = Instant::now();
    done.resets_sent = sender.send_all(&resets);
    done.reset_time = sending.elapsed();
    if done.resets_sent < resets.len() {
        log::warn!("{} of {} resets could not be sent", resets.len() - done.resets_sent, resets.len());
    }
    Ok(done)
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
    let (_, removed) = sweep::remove_flows_where(&dp.maps, table, |key, flow| {
        if (key.dst_addr, key.dst_port, key.proto) != (key_of.addr, key_of.port, key_of.proto) {
            return false;
        }
        let Some(server) = table.get(flow.server_id).filter(|s| s.pool == *pool) else { return false };
        if flow.state != flow_state::UDP && !flow_seen::ended(flow.seen) {
            add_resets(&mut resets, key, flow, Endpoint { addr: server.address, port: server.port });
            *done.reset_by_server.entry(flow.server_id).or_default() += 1;
        }
        true
    })?;
    done.flows = removed;
    done.purge_time = started.elapsed();
    let sending = Instant::now();
    done.resets_sent = sender.send_all(&resets);
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
    let mut paths: Vec<(FlowKey, ReverseNat)> = Vec::new();
    dp.maps.flows.remove_where(|key, flow| {
        if let Some(server) = table.get(flow.server_id).filter(|_| ids.contains(&flow.server_id)) {
            let nat = ReverseNat { vip: key.dst_addr, port: key.dst_port, ..ReverseNat::default() };
            paths.push((sweep::reply_key(key, server.address, server.port), nat));
        }
        false
    })?;
    if paths.is_empty() {
        return Ok(0);
    }
    let keys: Vec<FlowKey> = paths.iter().map(|(k, _)| *k).collect();
    let values: Vec<ReverseNat> = paths.iter().map(|(_, v)| *v).collect();
    bpf_batch::update_batch(dp.maps.reverse_nat_map(), &keys, &values)?;
    Ok(paths.len())
}
