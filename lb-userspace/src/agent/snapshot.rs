//! What the owner publishes after every change, deadline and sweep: the
//! pools, their servers' states and live flow counts, and the events. Reads
//! (`pool list`, `pool show`, `events`) answer from the latest snapshot at
//! once, whatever the owner is doing.

use std::{collections::VecDeque, sync::Arc};

use crate::{
    model::{Event, ReloadStatus, Source, StateLabel},
    servers::AdminState,
};

#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// When it was taken (ms since the Unix epoch).
    pub taken_ms: u64,
    pub instance: String,
    /// The flow table's size (`flows.max`).
    pub max_flows: u32,
    /// Flows in the table after the last walk, if one has run.
    pub flows_in_table: Option<u64>,
    /// Pools by name.
    pub pools: Vec<PoolSnapshot>,
    /// When the walk that counted the flows started, if one has.
    pub counted_at_ms: Option<u64>,
    pub events: Arc<VecDeque<Event>>,
    pub reloads: ReloadStatus,
    /// The hash of the config's services and pools (`Config::fleet_hash`).
    pub config_hash: String,
    /// In a cluster: the store's revision whose states it shows.
    pub shared_revision: Option<i64>,
    /// The config's VIPs (what a node announces to its routers), each with
    /// whether one of its services has a server taking new flows.
    pub vips: std::collections::BTreeMap<std::net::IpAddr, bool>,
}

#[derive(Clone, Debug)]
pub struct PoolSnapshot {
    pub name: String,
    /// Its services, "VIP:port/protocol".
    pub services: Vec<String>,
    /// Its servers, by name.
    pub servers: Vec<ServerSnapshot>,
    /// Its services gone from the config whose flows are not over yet.
    pub leaving_services: Vec<LeavingSnapshot>,
    /// Its `min_in_service` and `max_in_maintenance` (the capacity it keeps).
    pub min_in_service: usize,
    pub max_in_maintenance: Option<usize>,
}

#[derive(Clone, Debug)]
pub struct LeavingSnapshot {
    pub label: String,
    pub active_flows: u64,
    pub deadline_ms: Option<u64>,
}

#[derive(Clone, Debug)]
pub struct ServerSnapshot {
    pub id: u32,
    pub name: String,
    pub address: std::net::IpAddr,
    /// Its IPv6 address beside an IPv4 `address` (dual stack).
    pub address6: Option<std::net::Ipv6Addr>,
    pub port: u16,
    pub weight: u32,
    pub admin: AdminState,
    /// Its state and why, as people read it (a drain a monitor began reads
    /// "maintenance").
    pub label: StateLabel,
    /// Whether it is given new flows now (its state, weight, health).
    pub takes_new_flows: bool,
    /// Its ramp-up, if its share of new flows is still climbing.
    pub ramp: Option<crate::servers::ramp::Ramp>,
    /// Live flows at the last count.
    pub active_flows: u64,
    /// Its flows are being purged and reset now (`active_flows`: those
    /// going).
    pub resetting: bool,
    pub source: Source,
    pub removing: bool,
    /// Added by a fleet reload that not every node has applied yet.
    pub awaiting_fleet: bool,
    /// Its endpoint serves several services: replies find their VIP by
    /// flow (`reverse_nat`), not by endpoint.
    pub shared_endpoint: bool,
    /// Its pool has health monitors.
    pub monitored: bool,
    pub health: crate::servers::health::Health,
}

impl Snapshot {
    pub fn pool(&self, name: &str) -> Option<&PoolSnapshot> {
        self.pools.iter().find(|p| p.name == name)
    }
}
