//! The pool members and services the agent serves: each server by its id
//! (the index the datapath's server table and flows use), found in O(1) by
//! id for the sweep and the purge, and by (pool, name) for commands.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use super::{
    health::Health,
    ramp::{self, Ramp},
    saved::{Leaving, LeavingService, RampRecord, ServerRecord},
    state::{AdminState, Source, StateLabel, Why},
};
use crate::config::Protocol;

/// A pool member as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSlot {
    pub id: u32,
    pub pool: String,
    pub name: String,
    /// Its address as its line names it (either family), and its IPv6
    /// address beside an IPv4 one (see [`ServerConfig`](crate::config::ServerConfig)).
    pub address: IpAddr,
    pub address6: Option<Ipv6Addr>,
    pub port: u16,
    pub weight: u32,
    /// A hash of (pool, name): how a restarted agent finds the member's id
    /// in the pinned server table, and its Maglev permutation.
    pub identity: u64,
    /// The operator's state: the one source of the code the datapath reads.
    pub admin: AdminState,
    /// Its endpoint serves several services: its flows have per-flow
    /// return-path entries.
    pub shared_endpoint: bool,
    /// Who set `admin`.
    pub source: Source,
    /// The config's `enabled` as the agent last applied it.
    pub config_enabled: bool,
    /// Gone from the config: it takes no new flow, and is forgotten once
    /// DISABLED (drained, its deadline reached, or at once).
    pub removing: bool,
    /// What its health monitors found (the owner's view).
    pub health: Health,
    /// Whether the hash rows as last written give it slots.
    pub in_rows: bool,
    /// Its share of new flows ramping up (the pool's `ramp_up`).
    pub ramp: Option<Ramp>,
    /// Added by a fleet reload, and not every node has it yet: it takes
    /// no new flow until they have (`Owner::fleet_reloaded`). A node that
    /// has not reloaded could not rewrite its replies, which the router
    /// may send through any node: the client would wait for its SYN's
    /// retransmission.
    pub awaiting_fleet: bool,
}

impl ServerSlot {
    /// Its address in the family of `vip`, if it has one.
    pub fn address_for(&self, vip: IpAddr) -> Option<IpAddr> {
        crate::config::server_address_for(self.address, self.address6, vip)
    }

    /// Its IPv6 address, if it has one.
    pub fn ipv6(&self) -> Option<Ipv6Addr> {
        match self.address {
            IpAddr::V6(a) => Some(a),
            IpAddr::V4(_) => self.address6,
        }
    }

    /// Whether the server may take new flows (and so has Maglev slots).
    /// Its weight in the hash rows: its weight, in `ramp::STEPS` parts, of
    /// which a ramping server has only its step's.
    pub fn hash_weight(&self) -> u32 {
        self.weight.saturating_mul(self.ramp.map_or(ramp::STEPS, |r| r.step))
    }

    pub fn takes_new_flows(&self) -> bool {
        self.admin == AdminState::Enabled
            && self.weight > 0
            && !self.removing
            && !self.awaiting_fleet
            && self.health.serves()
    }

    /// Its state and why, as people read it: a drain a monitor began (a
    /// maintenance reply) reads "maintenance".
    pub fn label(&self) -> StateLabel {
        let label = self.admin.label();
        match (self.source, self.admin) {
            (Source::Monitor, AdminState::Draining { .. }) => StateLabel { why: Some(Why::Maintenance), ..label },
            _ => label,
        }
    }

    /// The code the datapath reads: its administrative state, as its health
    /// bends it (see [`Health::code`]).
    pub fn code(&self) -> u8 {
        self.health.code(&self.admin)
    }

    /// What the state file keeps of it.
    pub fn record(&self) -> ServerRecord {
        ServerRecord {
            admin: self.admin,
            source: self.source,
            config_enabled: Some(self.config_enabled),
            removing: self.removing,
            ramp: self.ramp.map(|r| RampRecord { since_ms: r.since_ms, until_ms: r.until_ms }),
        }
    }
}

/// A virtual service and the pool that serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSlot {
    /// Its row in the datapath's Maglev table.
    pub index: u32,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub pool: String,
    /// Gone from the config: no new flows; its flows go on until `deadline`,
    /// if any, and it is forgotten once none is left.
    pub leaving: Option<Leaving>,
}

/// A leaving service: its key and the pool whose flows it still has (a
/// service whose pool changed leaves its old pool while it serves the new).
pub type LeavingId = (ServiceId, String);

/// A service as the datapath finds it: VIP (either family), port and
/// protocol number, host order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ServiceId {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: u8,
}

impl ServiceSlot {
    /// What the state file keeps of it, if it is leaving.
    pub fn saved(&self) -> Option<LeavingService> {
        Some(LeavingService {
            vip: self.vip,
            port: self.port,
            protocol: self.protocol,
            pool: self.pool.clone(),
            leaving: self.leaving?,
        })
    }

    pub fn leaving_id(&self) -> LeavingId {
        (self.key(), self.pool.clone())
    }

    pub fn key(&self) -> ServiceId {
        ServiceId { vip: self.vip, port: self.port, proto: self.protocol.number() }
    }

    /// "10.100.0.1:80/tcp", "[fd00::1]:80/tcp"
    pub fn label(&self) -> String {
        format!("{}/{}", std::net::SocketAddr::new(self.vip, self.port), self.protocol)
    }
}

/// Servers by id, with an index by (pool, name).
#[derive(Clone, Debug, Default)]
pub struct ServerTable {
    by_id: Vec<Option<ServerSlot>>,
    by_name: HashMap<(String, String), u32>,
}

impl ServerTable {
    pub fn insert(&mut self, slot: ServerSlot) {
        let id = slot.id as usize;
        if self.by_id.len() <= id {
            self.by_id.resize(id + 1, None);
        }
        self.by_name.insert((slot.pool.clone(), slot.name.clone()), slot.id);
        self.by_id[id] = Some(slot);
    }

    pub fn get(&self, id: u32) -> Option<&ServerSlot> {
        self.by_id.get(id as usize)?.as_ref()
    }

    pub fn get_mut(&mut self, id: u32) -> Option<&mut ServerSlot> {
        self.by_id.get_mut(id as usize)?.as_mut()
    }

    pub fn find(&self, pool: &str, name: &str) -> Option<&ServerSlot> {
        // Borrowed lookups of a tuple key need owned parts; commands are rare.
        self.get(*self.by_name.get(&(pool.to_owned(), name.to_owned()))?)
    }

    /// Every server, by id.
    pub fn iter(&self) -> impl Iterator<Item = &ServerSlot> {
        self.by_id.iter().flatten()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut ServerSlot> {
        self.by_id.iter_mut().flatten()
    }

    /// The members of `pool`, by name.
    pub fn pool<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a ServerSlot> {
        let mut members: Vec<&ServerSlot> = self.iter().filter(|s| s.pool == pool).collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members.into_iter()
    }

    /// Forgets a server (its id is free again).
    pub fn remove(&mut self, id: u32) -> Option<ServerSlot> {
        let slot = self.by_id.get_mut(id as usize)?.take()?;
        self.by_name.remove(&(slot.pool.clone(), slot.name.clone()));
        Some(slot)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(id: u32, pool: &str, name: &str) -> ServerSlot {
        ServerSlot {
            id,
            pool: pool.into(),
            name: name.into(),
            address: std::net::Ipv4Addr::new(10, 0, 0, id as u8).into(),
            address6: None,
            port: 80,
            weight: 1,
            identity: id as u64,
            admin: AdminState::Enabled,
            shared_endpoint: false,
            source: Source::Config,
            config_enabled: true,
            removing: false,
            health: Health::default(),
            in_rows: false,
            awaiting_fleet: false,
            ramp: None,
        }
    }

    #[test]
    fn servers_are_found_by_id_and_by_name() {
        let mut table = ServerTable::default();
        for (id, name) in [(7, "b"), (2, "a"), (4, "c")] {
            table.insert(slot(id, "web", name));
        }
        table.insert(slot(0, "db", "a"));
        assert_eq!(table.get(7).map(|s| s.name.as_str()), Some("b"));
        assert!(table.get(3).is_none() && table.get(100).is_none());
        assert_eq!(table.find("web", "a").map(|s| s.id), Some(2));
        assert_eq!(table.find("db", "a").map(|s| s.id), Some(0));
        assert!(table.find("web", "z").is_none());
        let names: Vec<&str> = table.pool("web").map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(table.len(), 4);
    }
}
