//! Writes the configuration into the datapath's tables: the server table, the
//! services, the VIP addresses, the filter and each service's Maglev row.
//!
//! Server ids are stable: each pool member keeps the id it had in the pinned
//! server table (found by its identity), so the flows of a previous agent stay
//! on their servers. Writes are ordered so the datapath never sees a Maglev
//! slot or a flow pointing at a server slot that is not written yet.

use std::collections::HashMap;

use aya::maps::MapError;
use lb_common::{
    EndpointKey, MAGLEV_TABLE_SIZE, NextHop, ReverseNat, Server, Service, filter, server_flags, server_state,
};

use super::{
    Datapath, bpf_batch,
    maglev::{self, Member},
};
use crate::{
    config::Config,
    servers::{AdminState, AdminStates, ServerSlot, ServerTable, ServiceSlot},
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
        state: slot.admin.code(),
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
    bpf_batch::update_batch(dp.maps.maglev_fd(), &keys, &row)
        .map_err(|source| TablesError::Maglev { service: service.label(), source })
}

impl Tables {
    /// Writes `config` into the datapath, reusing the server ids found in
    /// its (possibly pinned) server table; servers get their state from
    /// `states` (ENABLED when absent).
    pub fn apply(dp: &mut Datapath, config: &Config, states: &AdminStates) -> Result<Tables, TablesError> {
        let previous = read_server_table(dp, config.max_servers)?;
        let tables = Tables::plan(config, states, &previous)?;
        let endpoints = tables.endpoints();
        // 1. Servers first: everything below may point at them. Their cached
        // next hops go: an address may have changed.
        for slot in tables.servers.iter() {
            write_server(dp, slot)?;
            dp.maps.next_hops.set(slot.id, NextHop::default(), 0).map_err(map_err("clear", "next_hops"))?;
        }
        // Where replies come from, before any service sends traffic there.
        for (key, nat) in &endpoints {
            dp.maps.server_endpoints.insert(key, nat, 0).map_err(map_err("write", "server_endpoints"))?;
        }
        // The filter, before the services and endpoints it lets through.
        tables.write_filter(dp, &endpoints)?;
        // 2. Maglev rows, then the services that use them.
        for service in &tables.services {
            write_maglev_row(dp, service, &tables.servers)?;
            dp.maps
                .services
                .insert(service.key(), Service { index: service.index }, 0)
                .map_err(map_err("write", "services"))?;
            dp.maps.vip_addrs.insert(service.key().addr, 0, 0).map_err(map_err("write", "vip_addrs"))?;
        }
        // 3. What the config no longer has.
        tables.remove_stale(dp, &endpoints, &previous)?;
        Ok(tables)
    }

    /// The servers (each with its previous id, or a free one) and services
    /// of `config`.
    fn plan(config: &Config, states: &AdminStates, previous: &[(u32, Server)]) -> Result<Tables, TablesError> {
        let by_identity: HashMap<u64, u32> = previous.iter().map(|(id, s)| (s.identity, *id)).collect();
        let mut taken = vec![false; config.max_servers as usize];
        let members: Vec<_> = config
            .pools
            .iter()
            .flat_map(|(pool, p)| p.servers.iter().map(move |server| (pool, server)))
            .map(|(pool, server)| {
                let identity = maglev::identity(pool, &server.name);
                let id = by_identity.get(&identity).copied();
                id.inspect(|&id| taken[id as usize] = true);
                (pool, server, identity, id)
            })
            .collect();
        let mut tables = Tables::default();
        for (pool, server, identity, id) in members {
            let id = match id {
                Some(id) => id,
                None => {
                    let free = taken
                        .iter()
                        .position(|t| !t)
                        .ok_or(TablesError::ServerTableFull { max: config.max_servers })?;
                    taken[free] = true;
                    free as u32
                }
            };
            let key = (pool.clone(), server.name.clone());
            tables.servers.insert(ServerSlot {
                id,
                pool: pool.clone(),
                name: server.name.clone(),
                address: server.address,
                port: server.port,
                weight: server.weight,
                identity,
                admin: states.get(&key).copied().unwrap_or(AdminState::Enabled),
                shared_endpoint: false,
            });
        }
        tables.services = config
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| ServiceSlot {
                index: i as u32,
                vip: s.vip,
                port: s.port,
                protocol: s.protocol,
                pool: s.pool.clone(),
            })
            .collect();
        let endpoints = tables.endpoints();
        for slot in tables.servers.iter_mut() {
            let addr = u32::from_ne_bytes(slot.address.octets());
            slot.shared_endpoint =
                endpoints.iter().any(|(key, nat)| nat.shared != 0 && key.addr == addr && key.port == slot.port.to_be());
        }
        Ok(tables)
    }

    /// Every server endpoint with the VIP its replies come from; an endpoint
    /// serving several services is marked shared.
    fn endpoints(&self) -> HashMap<EndpointKey, ReverseNat> {
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

    /// The filter's bits: the services' folds and the endpoints' ports.
    fn write_filter(&self, dp: &Datapath, endpoints: &HashMap<EndpointKey, ReverseNat>) -> Result<(), TablesError> {
        let mut bits = vec![0u8; filter::ENTRIES as usize];
        for service in &self.services {
            let key = service.key();
            bits[filter::service_index(key.addr, key.port, key.proto) as usize] |= filter::SERVICE;
        }
        for key in endpoints.keys() {
            bits[key.port as usize] |= filter::SERVER_PORT;
        }
        let indexes: Vec<u32> = (0..filter::ENTRIES).collect();
        bpf_batch::update_batch(dp.maps.filter_fd(), &indexes, &bits).map_err(|source| TablesError::Filter { source })
    }

    /// Removes the services, VIPs, endpoints and servers that the config no
    /// longer has.
    fn remove_stale(
        &self,
        dp: &mut Datapath,
        endpoints: &HashMap<EndpointKey, ReverseNat>,
        previous: &[(u32, Server)],
    ) -> Result<(), TablesError> {
        let keep: Vec<_> = self.services.iter().map(ServiceSlot::key).collect();
        let stale: Vec<_> = dp.maps.services.keys().filter_map(Result::ok).filter(|k| !keep.contains(k)).collect();
        for key in stale {
            dp.maps.services.remove(&key).map_err(map_err("clean", "services"))?;
        }
        let stale: Vec<u32> =
            dp.maps.vip_addrs.keys().filter_map(Result::ok).filter(|a| !keep.iter().any(|k| k.addr == *a)).collect();
        for addr in stale {
            dp.maps.vip_addrs.remove(&addr).map_err(map_err("clean", "vip_addrs"))?;
        }
        let stale: Vec<EndpointKey> =
            dp.maps.server_endpoints.keys().filter_map(Result::ok).filter(|k| !endpoints.contains_key(k)).collect();
        for key in stale {
            dp.maps.server_endpoints.remove(&key).map_err(map_err("clean", "server_endpoints"))?;
        }
        for (id, old) in previous {
            if self.servers.get(*id).is_none() {
                let unused = Server { state: server_state::UNUSED, ..*old };
                dp.maps.servers.set(*id, unused, 0).map_err(map_err("clean", "servers"))?;
            }
        }
        Ok(())
    }
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
