//! Writes the configuration into the datapath's tables: the server table, the
//! services, the VIP addresses, the filter and each service's Maglev row.
//!
//! Server ids are stable: each pool member keeps the id it had in the pinned
//! server table (found by its identity), so the flows of a previous agent stay
//! on their servers. Writes are ordered so the datapath never sees a Maglev
//! slot or a flow pointing at a server slot that is not written yet.

use std::{collections::HashMap, net::Ipv4Addr};

use aya::maps::MapError;
use lb_common::{
    EndpointKey, MAGLEV_TABLE_SIZE, NextHop, ReverseNat, Server, Service, ServiceKey, filter, server_flags,
    server_state,
};

use super::{
    Datapath, bpf_batch,
    maglev::{self, Member},
};
use crate::{
    config::{Config, ServerConfig},
    servers::{AdminState, DisableReason, Saved, ServerRecord, ServerSlot, ServerTable, ServiceSlot, Source},
};

#[derive(Debug, thiserror::Error)]
pub enum TablesError {
    #[error("cannot {action} map {map}")]
    Map {
        action: &'static str,
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("cannot write the Maglev row of service {service}")]
    Maglev {
        service: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write the traffic filter")]
    Filter {
        #[source]
        source: std::io::Error,
    },
    #[error("the server table is full ({max} slots)")]
    ServerTableFull { max: u32 },
}

fn map_err(action: &'static str, map: &'static str) -> impl FnOnce(MapError) -> TablesError {
    move |source| TablesError::Map { action, map, source }
}

/// What the agent wrote into the datapath.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    pub servers: ServerTable,
    pub services: Vec<ServiceSlot>,
}

/// The server table's record of a member.
fn server_entry(slot: &ServerSlot) -> Server {
    Server {
        addr: u32::from_ne_bytes(slot.address.octets()),
        port: slot.port.to_be(),
        state: slot.code(),
        flags: if slot.shared_endpoint { server_flags::SHARED_ENDPOINT } else { 0 },
        identity: slot.identity,
    }
}

/// Writes a server's record (its state code) into the server table.
pub fn write_server(dp: &mut Datapath, slot: &ServerSlot) -> Result<(), TablesError> {
    dp.maps.servers.set(slot.id, server_entry(slot), 0).map_err(map_err("write", "servers"))
}

/// Recomputes and writes a service's Maglev row from its pool's servers
/// that take new flows.
pub fn write_maglev_row(dp: &Datapath, service: &ServiceSlot, servers: &ServerTable) -> Result<(), TablesError> {
    let members: Vec<Member> = servers
        .pool(&service.pool)
        .filter(|s| s.takes_new_flows())
        .map(|s| Member { id: s.id, identity: s.identity, weight: s.weight })
        .collect();
    let row = maglev::build_table(&members);
    let base = service.index * MAGLEV_TABLE_SIZE;
    let keys: Vec<u32> = (base..base + MAGLEV_TABLE_SIZE).collect();
    bpf_batch::update_batch(dp.maps.maglev_map(), &keys, &row)
        .map_err(|source| TablesError::Maglev { service: service.label(), source })
}

/// What the servers and services had before: each server's id and
/// endpoint by identity, each service's Maglev row by key, and the saved
/// records (states, removals).
#[derive(Clone, Debug, Default)]
pub struct Previous {
    pub servers: HashMap<u64, (u32, Ipv4Addr, u16)>,
    pub services: HashMap<ServiceKey, u32>,
    pub saved: Saved,
}

impl Previous {
    /// What the running agent has (the starting point of a reload).
    pub fn of(servers: &ServerTable, services: &[ServiceSlot], saved: Saved) -> Previous {
        Previous {
            servers: servers.iter().map(|s| (s.identity, (s.id, s.address, s.port))).collect(),
            services: services.iter().filter(|s| s.leaving.is_none()).map(|s| (s.key(), s.index)).collect(),
            saved,
        }
    }
}

impl Tables {
    /// Writes `config` into the datapath at start-up, reusing the server
    /// ids and Maglev rows found in its (possibly pinned) maps; servers get
    /// their saved states, and the saved removals go on.
    pub fn apply(dp: &mut Datapath, config: &Config, saved: Saved, now_ms: u64) -> Result<Tables, TablesError> {
        let pinned = read_server_table(dp, config.max_servers)?;
        let previous = Previous {
            servers: pinned
                .iter()
                .map(|(id, s)| (s.identity, (*id, Ipv4Addr::from(s.addr.to_ne_bytes()), u16::from_be(s.port))))
                .collect(),
            services: dp.maps.services.iter().filter_map(Result::ok).map(|(k, v)| (k, v.index)).collect(),
            saved,
        };
        let tables = Tables::plan(config, &previous, now_ms)?;
        let endpoints = tables.endpoints();
        // 1. Servers first: everything below may point at them. Their cached
        // next hops go: an address may have changed.
        for slot in tables.servers.iter() {
            write_server(dp, slot)?;
            dp.maps.next_hops.set(slot.id, NextHop::default(), 0).map_err(map_err("clear", "next_hops"))?;
        }
        // Where replies come from, and the filter, before any service sends
        // traffic there.
        tables.write_routes(dp, &endpoints)?;
        // 2. Maglev rows, then the services that use them.
        for service in tables.services.iter().filter(|s| s.leaving.is_none()) {
            write_maglev_row(dp, service, &tables.servers)?;
            write_service(dp, service)?;
        }
        // 3. What the config no longer has.
        tables.remove_stale(dp, &endpoints)?;
        for (id, old) in &pinned {
            if tables.servers.get(*id).is_none() {
                forget_server(dp, *id, old)?;
            }
        }
        Ok(tables)
    }

    /// The servers and services of `config` (each server with its previous
    /// id or a free one, each service with its previous row or a free one),
    /// with the servers and services still on their way out.
    pub fn plan(config: &Config, previous: &Previous, now_ms: u64) -> Result<Tables, TablesError> {
        let mut tables = Tables::default();
        let mut ids = FreeIds::new(config.max_servers, previous.servers.values().map(|(id, ..)| *id));
        for (pool, p) in &config.pools {
            for server in &p.servers {
                let identity = maglev::identity(pool, &server.name);
                let id = match previous.servers.get(&identity) {
                    Some((id, ..)) => *id,
                    None => ids.take().ok_or(TablesError::ServerTableFull { max: config.max_servers })?,
                };
                let key = (pool.clone(), server.name.clone());
                let record = previous.saved.servers.get(&key);
                tables.servers.insert(member(pool, server, id, identity, record, now_ms));
            }
        }
        // Gone from the config (now, or while no agent ran), not yet out:
        // kept until DISABLED.
        for ((pool, name), record) in &previous.saved.servers {
            let identity = maglev::identity(pool, name);
            let Some((id, address, port)) = previous.servers.get(&identity) else { continue };
            if tables.servers.find(pool, name).is_some() {
                continue;
            }
            tables.servers.insert(ServerSlot {
                id: *id,
                pool: pool.clone(),
                name: name.clone(),
                address: *address,
                port: *port,
                weight: 0,
                identity,
                admin: record.admin,
                shared_endpoint: false,
                source: record.source,
                config_enabled: record.config_enabled.unwrap_or(true),
                removing: true,
                health: Default::default(),
            });
        }
        tables.services = services(config, previous);
        tables.mark_shared();
        Ok(tables)
    }

    /// Marks the servers whose endpoint serves several services.
    pub fn mark_shared(&mut self) {
        let endpoints = self.endpoints();
        for slot in self.servers.iter_mut() {
            let addr = u32::from_ne_bytes(slot.address.octets());
            slot.shared_endpoint =
                endpoints.iter().any(|(key, nat)| nat.shared != 0 && key.addr == addr && key.port == slot.port.to_be());
        }
    }

    /// Every server endpoint with the VIP its replies come from; an endpoint
    /// serving several services is marked shared.
    pub fn endpoints(&self) -> HashMap<EndpointKey, ReverseNat> {
        let mut endpoints: HashMap<EndpointKey, ReverseNat> = HashMap::new();
        for service in &self.services {
            let vip = service.key();
            for slot in self.servers.pool(&service.pool) {
                let key = EndpointKey {
                    addr: u32::from_ne_bytes(slot.address.octets()),
                    port: slot.port.to_be(),
                    proto: vip.proto,
                    _pad: 0,
                };
                let nat = ReverseNat { vip: vip.addr, port: vip.port, shared: 0, _pad: 0 };
                endpoints
                    .entry(key)
                    .and_modify(|known| {
                        if (known.vip, known.port) != (nat.vip, nat.port) {
                            known.shared = 1;
                        }
                    })
                    .or_insert(nat);
            }
        }
        endpoints
    }

    /// The return paths, the filter and the VIPs of every service and
    /// server, leaving ones included (their flows still pass): written
    /// before any service sends traffic to them.
    pub fn write_routes(
        &self,
        dp: &mut Datapath,
        endpoints: &HashMap<EndpointKey, ReverseNat>,
    ) -> Result<(), TablesError> {
        for (key, nat) in endpoints {
            dp.maps.server_endpoints.insert(key, nat, 0).map_err(map_err("write", "server_endpoints"))?;
        }
        let mut bits = vec![0u8; filter::ENTRIES as usize];
        for service in &self.services {
            let key = service.key();
            bits[filter::service_index(key.addr, key.port, key.proto) as usize] |= filter::SERVICE;
        }
        for key in endpoints.keys() {
            bits[key.port as usize] |= filter::SERVER_PORT;
        }
        let indexes: Vec<u32> = (0..filter::ENTRIES).collect();
        bpf_batch::update_batch(dp.maps.filter_map(), &indexes, &bits)
            .map_err(|source| TablesError::Filter { source })?;
        for service in &self.services {
            dp.maps.vip_addrs.insert(service.key().addr, 0, 0).map_err(map_err("write", "vip_addrs"))?;
        }
        Ok(())
    }

    /// Removes the services (none leaving), VIPs and endpoints that are no
    /// longer in use.
    pub fn remove_stale(
        &self,
        dp: &mut Datapath,
        endpoints: &HashMap<EndpointKey, ReverseNat>,
    ) -> Result<(), TablesError> {
        let taking: Vec<_> = self.services.iter().filter(|s| s.leaving.is_none()).map(ServiceSlot::key).collect();
        let stale: Vec<_> = dp.maps.services.keys().filter_map(Result::ok).filter(|k| !taking.contains(k)).collect();
        for key in stale {
            dp.maps.services.remove(&key).map_err(map_err("clean", "services"))?;
        }
        let vips: Vec<u32> = self.services.iter().map(|s| s.key().addr).collect();
        let stale: Vec<u32> = dp.maps.vip_addrs.keys().filter_map(Result::ok).filter(|a| !vips.contains(a)).collect();
        for addr in stale {
            dp.maps.vip_addrs.remove(&addr).map_err(map_err("clean", "vip_addrs"))?;
        }
        let stale: Vec<EndpointKey> =
            dp.maps.server_endpoints.keys().filter_map(Result::ok).filter(|k| !endpoints.contains_key(k)).collect();
        for key in stale {
            dp.maps.server_endpoints.remove(&key).map_err(map_err("clean", "server_endpoints"))?;
        }
        Ok(())
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
        port: server.port,
        weight: server.weight,
        identity,
        admin,
        shared_endpoint: false,
        source,
        config_enabled,
        removing: false,
        health: Default::default(),
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

/// Writes a service's entry (it takes new flows from now on).
pub fn write_service(dp: &mut Datapath, service: &ServiceSlot) -> Result<(), TablesError> {
    dp.maps.services.insert(service.key(), Service { index: service.index }, 0).map_err(map_err("write", "services"))
}

/// Removes a service's entry: it takes no new flows.
pub fn remove_service(dp: &mut Datapath, service: &ServiceSlot) -> Result<(), TablesError> {
    match dp.maps.services.remove(&service.key()) {
        Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
        Err(e) => Err(map_err("clean", "services")(e)),
    }
}

/// Marks a server's slot unused (its id is free again).
pub fn forget_server(dp: &mut Datapath, id: u32, old: &Server) -> Result<(), TablesError> {
    let unused = Server { state: server_state::UNUSED, ..*old };
    dp.maps.servers.set(id, unused, 0).map_err(map_err("clean", "servers"))
}

/// Clears a server's cached next hop (its address changed, or it is new).
pub fn clear_next_hop(dp: &mut Datapath, id: u32) -> Result<(), TablesError> {
    dp.maps.next_hops.set(id, NextHop::default(), 0).map_err(map_err("clear", "next_hops"))
}

/// The records in use in the (possibly pinned) server table.
fn read_server_table(dp: &Datapath, max_servers: u32) -> Result<Vec<(u32, Server)>, TablesError> {
    let mut out = Vec::new();
    for id in 0..max_servers {
        let server = dp.maps.servers.get(&id, 0).map_err(map_err("read", "servers"))?;
        if server.state != server_state::UNUSED {
            out.push((id, server));
        }
    }
    Ok(out)
}
