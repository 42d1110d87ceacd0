//! Where the config becomes the servers and services the agent serves:
//! each server keeps the id it had (by its identity, a hash of pool and
//! name) or takes a free one, each service keeps its Maglev row or takes a
//! free one, a server's restored state comes from its saved record, and
//! servers and services on their way out are kept until they are out. Pure:
//! the datapath writes what this plans (`datapath::tables`).

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
};

use super::{
    AdminState, DisableReason, Saved, ServerRecord, ServerSlot, ServerTable, ServiceId, ServiceSlot, Source, maglev,
    ramp::Ramp,
};
use crate::config::{Config, Protocol, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("the server table is full ({max} slots)")]
    ServerTableFull { max: u32 },
}

/// The servers and services the agent serves, with their ids and rows.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub servers: ServerTable,
    pub services: Vec<ServiceSlot>,
}

/// What the servers and services had before: each server's id and
/// endpoint by identity, each service's Maglev row by key, and the saved
/// records (states, removals).
#[derive(Clone, Debug, Default)]
pub struct Previous {
    pub servers: HashMap<u64, PreviousServer>,
    pub services: HashMap<ServiceId, u32>,
    pub saved: Saved,
}

/// A server as the tables had it: its id and endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PreviousServer {
    pub id: u32,
    pub address: IpAddr,
    pub address6: Option<Ipv6Addr>,
    pub port: u16,
}

impl Previous {
    /// What the running agent has (the starting point of a reload).
    pub fn of(servers: &ServerTable, services: &[ServiceSlot], saved: Saved) -> Previous {
        Previous {
            servers: servers
                .iter()
                .map(|s| {
                    let (id, address, address6, port) = (s.id, s.address, s.address6, s.port);
                    (s.identity, PreviousServer { id, address, address6, port })
                })
                .collect(),
            services: services.iter().filter(|s| s.leaving.is_none()).map(|s| (s.key(), s.index)).collect(),
            saved,
        }
    }
}

impl Tables {
    /// The servers and services of `config` (each server with its previous
    /// id or a free one, each service with its previous row or a free one),
    /// with the servers and services still on their way out.
    pub fn plan(config: &Config, previous: &Previous, now_ms: u64) -> Result<Tables, PlanError> {
        let mut tables = Tables::default();
        let mut ids = FreeIds::new(config.max_servers, previous.servers.values().map(|s| s.id));
        for (pool, p) in &config.pools {
            for server in &p.servers {
                let identity = maglev::identity(pool, &server.name);
                let id = match previous.servers.get(&identity) {
                    Some(s) => s.id,
                    None => ids.take().ok_or(PlanError::ServerTableFull { max: config.max_servers })?,
                };
                let key = (pool.clone(), server.name.clone());
                let record = previous.saved.servers.get(&key);
                let mut slot = member(pool, server, id, identity, record, now_ms);
                // A ramp under way when the last agent stopped goes on, if
                // the pool still ramps.
                let ramps = p.ramp_up.is_some() && slot.admin == AdminState::Enabled;
                slot.ramp = record.and_then(|r| r.ramp).filter(|_| ramps).and_then(|r| Ramp::resumed(r, now_ms));
                tables.servers.insert(slot);
            }
        }
        // Gone from the config (now, or while no agent ran), not yet out:
        // kept until DISABLED.
        for ((pool, name), record) in &previous.saved.servers {
            let identity = maglev::identity(pool, name);
            let Some(&PreviousServer { id, address, address6, port }) = previous.servers.get(&identity) else {
                continue;
            };
            if tables.servers.find(pool, name).is_some() {
                continue;
            }
            tables.servers.insert(ServerSlot {
                id,
                pool: pool.clone(),
                name: name.clone(),
                address,
                address6,
                port,
                weight: 0,
                identity,
                admin: record.admin,
                shared_endpoint: false,
                source: record.source,
                config_enabled: record.config_enabled.unwrap_or(true),
                removing: true,
                health: Default::default(),
                in_rows: false,
                awaiting_fleet: false,
                ramp: None,
            });
        }
        tables.services = services(config, previous);
        tables.mark_shared();
        Ok(tables)
    }

    /// Marks the servers with an endpoint (address in a service's family,
    /// port, protocol) serving several services: their flows need return
    /// paths of their own.
    pub fn mark_shared(&mut self) {
        let mut vips: HashMap<(IpAddr, u16, Protocol), Vec<(IpAddr, u16)>> = HashMap::new();
        for service in &self.services {
            for slot in self.servers.pool(&service.pool) {
                let Some(address) = slot.address_for(service.vip) else { continue };
                let vip = vips.entry((address, slot.port, service.protocol)).or_default();
                if !vip.contains(&(service.vip, service.port)) {
                    vip.push((service.vip, service.port));
                }
            }
        }
        let shared = |slot: &ServerSlot| {
            let mine = |address: &IpAddr| *address == slot.address || Some(*address) == slot.address6.map(IpAddr::V6);
            vips.iter().any(|((address, port, _), v)| v.len() > 1 && mine(address) && *port == slot.port)
        };
        let ids: Vec<u32> = self.servers.iter().filter(|s| shared(s)).map(|s| s.id).collect();
        for slot in self.servers.iter_mut() {
            slot.shared_endpoint = ids.contains(&slot.id);
        }
    }
}

/// A pool member of the config, with its saved record if it has one.
fn member(
    pool: &str,
    server: &ServerConfig,
    id: u32,
    identity: u64,
    record: Option<&ServerRecord>,
    now_ms: u64,
) -> ServerSlot {
    let (admin, source, config_enabled) = match record {
        // New: it starts as its line says (a server disabled in the config
        // never takes a flow, so it needs no drain).
        None if server.enabled => (AdminState::Enabled, Source::Config, true),
        None => (AdminState::Disabled { since_ms: now_ms, reason: DisableReason::Immediate }, Source::Config, false),
        // Back in the config while on its way out: its line is applied anew.
        Some(r) if r.removing => (r.admin, r.source, !server.enabled),
        // An older agent's record does not know the line: `enabled = false`
        // is then applied (see `agent::reload`).
        Some(r) => (r.admin, r.source, r.config_enabled.unwrap_or(true)),
    };
    ServerSlot {
        id,
        pool: pool.to_owned(),
        name: server.name.clone(),
        address: server.address,
        address6: server.address6,
        port: server.port,
        weight: server.weight,
        identity,
        admin,
        shared_endpoint: false,
        source,
        config_enabled,
        removing: false,
        health: Default::default(),
        in_rows: false,
        awaiting_fleet: false,
        ramp: None,
    }
}

/// The services of `config`, each on its previous Maglev row or a free one
/// (a row in use is never given to another service while it may take
/// flows), then the saved leaving ones (a service whose pool changed has
/// one of each: the new pool's, and the old pool's, leaving).
fn services(config: &Config, previous: &Previous) -> Vec<ServiceSlot> {
    let mut rows = FreeIds::new(config.max_services, previous.services.values().copied());
    let mut services: Vec<ServiceSlot> = config
        .services
        .iter()
        .map(|s| {
            let mut slot = ServiceSlot {
                index: 0,
                vip: s.vip,
                port: s.port,
                protocol: s.protocol,
                pool: s.pool.clone(),
                leaving: None,
            };
            slot.index = match previous.services.get(&slot.key()) {
                Some(index) if *index < config.max_services => *index,
                // Validation bounds the services by max_services.
                _ => rows.take().unwrap_or(0),
            };
            slot
        })
        .collect();
    for leaving in &previous.saved.leaving_services {
        let mut slot = ServiceSlot {
            index: 0,
            vip: leaving.vip,
            port: leaving.port,
            protocol: leaving.protocol,
            pool: leaving.pool.clone(),
            leaving: Some(leaving.leaving),
        };
        // Back in the config with the same pool: it serves again.
        if services.iter().all(|s| s.key() != slot.key() || s.pool != slot.pool) {
            // Its row is unused: the service's entry names the live one's, or none.
            slot.index = u32::MAX;
            services.push(slot);
        }
    }
    services
}

/// Ids (or rows) not in use, lowest first.
struct FreeIds {
    taken: Vec<bool>,
}

impl FreeIds {
    fn new(max: u32, in_use: impl Iterator<Item = u32>) -> FreeIds {
        let mut taken = vec![false; max as usize];
        for id in in_use {
            if let Some(t) = taken.get_mut(id as usize) {
                *t = true;
            }
        }
        FreeIds { taken }
    }

    fn take(&mut self) -> Option<u32> {
        let free = self.taken.iter().position(|t| !t)?;
        self.taken[free] = true;
        Some(free as u32)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(servers: &[&str], ports: &[u16], max_servers: u32) -> Config {
        let mut text = format!("interfaces = [\"eth0\"]\n[limits]\nmax_servers = {max_servers}\n");
        for port in ports {
            text.push_str(&format!(
                "[[services]]\nvip = \"10.100.0.1\"\nport = {port}\nprotocol = \"tcp\"\npool = \"web\"\n"
            ));
        }
        for (i, name) in servers.iter().enumerate() {
            text.push_str(&format!(
                "[[pools.web.servers]]\nname = \"{name}\"\naddress = \"10.0.0.{}\"\nport = 80\n",
                i + 1
            ));
        }
        Config::parse(&text, Path::new("test.toml")).expect("config")
    }

    #[test]
    fn servers_keep_their_ids_and_new_ones_take_the_lowest_free_one() {
        let first = Tables::plan(&config(&["a", "b", "c"], &[80], 8), &Previous::default(), 1).unwrap();
        let id = |t: &Tables, name: &str| t.servers.find("web", name).unwrap().id;
        assert_eq!([id(&first, "a"), id(&first, "b"), id(&first, "c")], [0, 1, 2]);
        // b goes, d comes: a and c keep theirs, d takes b's.
        let mut saved = Saved::default();
        for name in ["a", "c"] {
            saved.servers.insert(("web".into(), name.into()), ServerRecord::operator(AdminState::Enabled));
        }
        let mut previous = Previous::of(&first.servers, &first.services, saved);
        previous.servers.retain(|_, s| s.id != 1);
        let next = Tables::plan(&config(&["a", "c", "d"], &[80], 8), &previous, 2).unwrap();
        assert_eq!([id(&next, "a"), id(&next, "c"), id(&next, "d")], [0, 2, 1]);
        // Every id still held by servers of before: no room for a new one.
        let mut held = Previous::default();
        for (id, name) in ["x", "y"].iter().enumerate() {
            let address = std::net::Ipv4Addr::new(10, 0, 9, 1).into();
            let server = PreviousServer { id: id as u32, address, address6: None, port: 80 };
            held.servers.insert(maglev::identity("web", name), server);
        }
        let full = Tables::plan(&config(&["a"], &[80], 2), &held, 1);
        assert!(matches!(full, Err(PlanError::ServerTableFull { max: 2 })));
    }

    #[test]
    fn an_endpoint_serving_two_services_is_shared() {
        let one = Tables::plan(&config(&["a", "b"], &[80], 8), &Previous::default(), 1).unwrap();
        assert!(one.servers.iter().all(|s| !s.shared_endpoint));
        let two = Tables::plan(&config(&["a", "b"], &[80, 443], 8), &Previous::default(), 1).unwrap();
        assert!(two.servers.iter().all(|s| s.shared_endpoint));
    }
}
