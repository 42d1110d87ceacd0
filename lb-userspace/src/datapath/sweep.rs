//! The sweep: where flows are aged out and counted. The agent walks the
//! flow table and removes flows idle past their timeout (or of a server or
//! service no longer in service), with their return-path entries, and counts
//! the live flows of each server. Each flow's server is found by id in O(1).
//! Both families' tables are walked, each flow seen as its [`FlowEnds`].

use std::{collections::HashMap, io, time::Duration};

use lb_common::{Flow, flow_seen, flow_state, flow_time};

use super::{
    Maps, bpf_batch,
    family::{Family, FlowEnds, Key, V4, V6},
};
use crate::{
    config::FlowSettings,
    servers::{AdminState, LeavingId, ServerTable, ServiceId, ServiceSlot},
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
    let mut by_key: HashMap<ServiceId, Vec<usize>> = HashMap::new();
    for (i, s) in services.iter().enumerate() {
        by_key.entry(s.key()).or_default().push(i);
    }
    let mut leaving_flows = vec![0u64; services.len()];
    // Idle only since the datapath's clock has been running: a flow seen
    // while no agent ran carries the time the clock stood at, not the time
    // of its packets.
    let clock_since = maps.clock.since_ns();
    let (scanned, expired) = remove_flows_where(maps, servers, |ends, flow| {
        let idle =
            Duration::from_nanos(flow_time::age_ns(now_ns, flow.last_seen).min(now_ns.saturating_sub(clock_since)));
        // A flow of a server removed from the config, or left on a disabled
        // one, is over: the datapath no longer forwards it.
        let Some(server) = servers.get(flow.server()) else { return true };
        if matches!(server.admin, AdminState::Disabled { .. }) {
            return true;
        }
        // So is a flow of a service (of its server's pool) no longer in the
        // config: the datapath finds a packet's flow before its service, and
        // would forward it.
        let slot =
            by_key.get(&ends.service()).and_then(|slots| slots.iter().find(|&&i| services[i].pool == server.pool));
        let Some(&slot) = slot else { return true };
        if idle > timeout(settings, flow) {
            return true;
        }
        if flow.state == flow_state::UDP || !flow_seen::ended(flow.seen) {
            *report.active_by_server.entry(flow.server()).or_default() += 1;
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

/// Walks both flow tables (in memory order, a window at a time) and
/// removes the flows `remove` picks, with their return-path entries.
/// Returns how many flows were seen and how many removed.
pub fn remove_flows_where(
    maps: &Maps,
    servers: &ServerTable,
    mut remove: impl FnMut(&FlowEnds, &Flow) -> bool,
) -> io::Result<(usize, usize)> {
    let (seen4, removed4) = remove_family_flows_where::<V4>(maps, servers, &mut remove)?;
    let (seen6, removed6) = remove_family_flows_where::<V6>(maps, servers, &mut remove)?;
    Ok((seen4 + seen6, removed4 + removed6))
}

/// [`remove_flows_where`] in one family's table.
pub fn remove_family_flows_where<F: Family>(
    maps: &Maps,
    servers: &ServerTable,
    remove: &mut impl FnMut(&FlowEnds, &Flow) -> bool,
) -> io::Result<(usize, usize)> {
    // Deleted a batch at a time, so the agent's memory stays bounded.
    let mut doomed_replies = Vec::with_capacity(CHUNK);
    let mut failed = None;
    let mut delete = |replies: &mut Vec<Key<F>>| {
        if let Err(e) = bpf_batch::delete_batch(F::reverse_nat(maps), replies) {
            failed.get_or_insert(e);
        }
        replies.clear();
    };
    let (seen, removed) = F::table(maps).remove_where(|key, flow| {
        if !remove(&F::ends(key), flow) {
            return false;
        }
        if let Some(reply) = return_path::<F>(servers, key, flow) {
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
pub fn return_path<F: Family>(servers: &ServerTable, key: &Key<F>, flow: &Flow) -> Option<Key<F>> {
    let server = servers.get(flow.server()).filter(|s| s.shared_endpoint)?;
    reply_key::<F>(key, server)
}

/// The return-path key of a flow on `server`: its replies' 5-tuple, from
/// the server's address in the flow's family.
pub fn reply_key<F: Family>(key: &Key<F>, server: &crate::servers::ServerSlot) -> Option<Key<F>> {
    F::reply_key(key, server.address_for(F::ends(key).vip.ip())?, server.port)
}
