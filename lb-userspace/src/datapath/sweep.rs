//! The sweep: where flows are aged out and counted. The agent walks the
//! flow table and removes flows idle past their timeout (or of a server or
//! service no longer in service), with their return-path entries, and counts
//! the live flows of each server. Each flow's server is found by id in O(1).

use std::{collections::HashMap, io, time::Duration};

use lb_common::{Flow, FlowKey, ServiceKey, flow_seen, flow_state};

use super::{Maps, bpf_batch};
use crate::{
    config::FlowSettings,
    servers::{AdminState, LeavingId, ServerTable, ServiceSlot},
};

/// Return-path entries deleted per batch.
const CHUNK: usize = 4096;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Flows in the table before the sweep.
    pub scanned: usize,
    /// Flows removed (idle past their timeout, or of a server out of service).
    pub expired: usize,
    /// Live flows remaining, by server id: TCP flows not yet closed by both
    /// sides or reset, UDP flows not idle out.
    pub active_by_server: HashMap<u32, u64>,
    /// Live flows remaining of each leaving service (gone from the config,
    /// or from this pool), by [`ServiceSlot::leaving_id`].
    pub active_by_leaving_service: HashMap<LeavingId, u64>,
}

fn timeout(settings: &FlowSettings, flow: &Flow) -> Duration {
    match flow.state {
        flow_state::TCP_OPEN => settings.tcp_idle_timeout,
        flow_state::TCP_CLOSING => settings.tcp_closing_timeout,
        _ => settings.udp_idle_timeout,
    }
}

/// One pass over the flow table at time `now_ns`.
pub fn sweep(
    maps: &Maps,
    servers: &ServerTable,
    services: &[ServiceSlot],
    settings: &FlowSettings,
    now_ns: u64,
) -> io::Result<SweepReport> {
    let mut report = SweepReport::default();
    // Every service by key: its slots, usually one (a service whose pool
    // changed has its old pool's slot, leaving, beside the new one).
    let mut by_key: HashMap<ServiceKey, Vec<usize>> = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        by_key.entry(s.key()).or_default().push(i);
    }
    let mut leaving_flows = vec![0u64; services.len()];
    // Idle only since the datapath's clock has been running: a flow seen
    // while no agent ran carries the time the clock stood at, not the time
    // of its packets.
    let clock_since = maps.clock.since_ns();
    let (scanned, expired) = remove_flows_where(maps, servers, |key, flow| {
        let idle = Duration::from_nanos(now_ns.saturating_sub(flow.last_seen_ns.max(clock_since)));
        // A flow of a server removed from the config, or left on a disabled
        // one, is over: the datapath no longer forwards it.
        let Some(server) = servers.get(flow.server_id) else { return true };
        if matches!(server.admin, AdminState::Disabled { .. }) {
            return true;
        }
        // So is a flow of a service (of its server's pool) no longer in the
        // config: the datapath finds a packet's flow before its service, and
        // would forward it.
        let service = ServiceKey { addr: key.dst_addr, port: key.dst_port, proto: key.proto, _pad: 0 };
        let slot = by_key.get(&service).and_then(|slots| slots.iter().find(|&&i| services[i].pool == server.pool));
        let Some(&slot) = slot else { return true };
        if idle > timeout(settings, flow) {
            return true;
        }
        if flow.state == flow_state::UDP || !flow_seen::ended(flow.seen) {
            *report.active_by_server.entry(flow.server_id).or_default() += 1;
            leaving_flows[slot] += 1;
        }
        false
    })?;
    report.active_by_leaving_service = services
        .iter()
        .zip(leaving_flows)
        .filter(|(s, _)| s.leaving.is_some())
        .map(|(s, n)| (s.leaving_id(), n))
        .collect();
    report.scanned = scanned;
    report.expired = expired;
    Ok(report)
}

/// Walks the flow table (in memory order, a window at a time) and removes
/// the flows `remove` picks, with their return-path entries.
/// Returns how many flows were seen and how many removed.
pub fn remove_flows_where(
    maps: &Maps,
    servers: &ServerTable,
    mut remove: impl FnMut(&FlowKey, &Flow) -> bool,
) -> io::Result<(usize, usize)> {
    // Deleted a batch at a time, so the agent's memory stays bounded.
    let mut doomed_replies = Vec::with_capacity(CHUNK);
    let mut failed = None;
    let mut delete = |replies: &mut Vec<FlowKey>| {
        if let Err(e) = bpf_batch::delete_batch(maps.reverse_nat_map(), replies) {
            failed.get_or_insert(e);
        }
        replies.clear();
    };
    let (seen, removed) = maps.flows.remove_where(|key, flow| {
        if !remove(key, flow) {
            return false;
        }
        if let Some(reply) = return_path(servers, key, flow) {
            doomed_replies.push(reply);
            if doomed_replies.len() == CHUNK {
                delete(&mut doomed_replies);
            }
        }
        true
    })?;
    delete(&mut doomed_replies);
    match failed {
        Some(e) => Err(e),
        None => Ok((seen, removed)),
    }
}

/// The key of a flow's return-path entry, if it has one: only flows on an
/// endpoint shared by several services do.
pub fn return_path(servers: &ServerTable, key: &FlowKey, flow: &Flow) -> Option<FlowKey> {
    let server = servers.get(flow.server_id).filter(|s| s.shared_endpoint)?;
    Some(reply_key(key, server.address, server.port))
}

/// The return-path key of a flow on a server.
pub fn reply_key(flow: &FlowKey, address: std::net::Ipv4Addr, port: u16) -> FlowKey {
    FlowKey::new(u32::from_ne_bytes(address.octets()), flow.src_addr, port.to_be(), flow.src_port, flow.proto)
}
