//! Reading the datapath's counters (per CPU in the kernel, summed here).
//! Reads never reset them, and cost the packet path nothing.

use std::{collections::BTreeMap, io, os::fd::AsFd as _};

use aya::maps::{IterableMap as _, Map, MapData, MapError, PerCpuArray};
use lb_common::{Outcome, ServerStats};

use super::Maps;

/// Packets per outcome, by label.
pub fn outcomes(maps: &Maps) -> Result<BTreeMap<&'static str, u64>, MapError> {
    outcomes_of(&maps.outcomes)
}

/// Traffic counters of one server, summed over CPUs.
pub fn server(maps: &Maps, server_id: u32) -> Result<ServerStats, MapError> {
    server_of(&maps.server_stats, server_id)
}

fn outcomes_of(map: &PerCpuArray<MapData, u64>) -> Result<BTreeMap<&'static str, u64>, MapError> {
    let mut out = BTreeMap::new();
    for &outcome in Outcome::ALL {
        let per_cpu = map.get(&(outcome as u32), 0)?;
        out.insert(outcome.label(), per_cpu.iter().sum());
    }
    Ok(out)
}

/// Flows evicted from the full flow table, by kind.
fn evictions_of(map: &PerCpuArray<MapData, u64>) -> Result<BTreeMap<&'static str, u64>, MapError> {
    let mut out = BTreeMap::new();
    for (kind, name) in lb_common::eviction::NAMES.iter().enumerate() {
        out.insert(*name, map.get(&(kind as u32), 0)?.iter().sum());
    }
    Ok(out)
}

fn server_of(map: &PerCpuArray<MapData, ServerStats>, server_id: u32) -> Result<ServerStats, MapError> {
    let per_cpu = map.get(&server_id, 0)?;
    Ok(per_cpu.iter().fold(ServerStats::default(), |mut sum, s| {
        sum.packets_to += s.packets_to;
        sum.bytes_to += s.bytes_to;
        sum.packets_from += s.packets_from;
        sum.bytes_from += s.bytes_from;
        sum.new_flows += s.new_flows;
        sum
    }))
}

/// The counter maps, opened a second time (by duplicated descriptors) for
/// the API: readers never wait for the owner of the datapath.
pub struct Counters {
    outcomes: PerCpuArray<MapData, u64>,
    evictions: PerCpuArray<MapData, u64>,
    server_stats: PerCpuArray<MapData, ServerStats>,
}

impl Counters {
    pub fn open(maps: &Maps) -> io::Result<Counters> {
        fn reopen(map: &MapData) -> io::Result<Map> {
            let fd = map.fd().as_fd().try_clone_to_owned()?;
            Ok(Map::PerCpuArray(MapData::from_fd(fd).map_err(io::Error::other)?))
        }
        let typed = |e: MapError| io::Error::other(format!("counter map: {e}"));
        Ok(Counters {
            outcomes: PerCpuArray::try_from(reopen(maps.outcomes.map())?).map_err(typed)?,
            evictions: PerCpuArray::try_from(reopen(maps.evictions.map())?).map_err(typed)?,
            server_stats: PerCpuArray::try_from(reopen(maps.server_stats.map())?).map_err(typed)?,
        })
    }

    pub fn outcomes(&self) -> Result<BTreeMap<&'static str, u64>, MapError> {
        outcomes_of(&self.outcomes)
    }

    pub fn server(&self, server_id: u32) -> Result<ServerStats, MapError> {
        server_of(&self.server_stats, server_id)
    }

    pub fn evictions(&self) -> Result<BTreeMap<&'static str, u64>, MapError> {
        evictions_of(&self.evictions)
    }
}
