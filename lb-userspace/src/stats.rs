//! Reading the datapath's counters (per CPU in the kernel, summed here).

use std::collections::BTreeMap;

use aya::maps::MapError;
use lb_common::{Outcome, ServerStats};

use crate::datapath::Maps;

/// Packets per outcome, by label.
pub fn outcomes(maps: &Maps) -> Result<BTreeMap<&'static str, u64>, MapError> {
    let mut out = BTreeMap::new();
    for &outcome in Outcome::ALL {
        let per_cpu = maps.outcomes.get(&(outcome as u32), 0)?;
        out.insert(outcome.label(), per_cpu.iter().sum());
    }
    Ok(out)
}

/// Traffic counters of one server, summed over CPUs.
pub fn server(maps: &Maps, server_id: u32) -> Result<ServerStats, MapError> {
    let per_cpu = maps.server_stats.get(&server_id, 0)?;
    Ok(per_cpu.iter().fold(ServerStats::default(), |mut sum, s| {
        sum.packets_to += s.packets_to;
        sum.bytes_to += s.bytes_to;
        sum.packets_from += s.packets_from;
        sum.bytes_from += s.bytes_from;
        sum.new_flows += s.new_flows;
        sum
    }))
}
