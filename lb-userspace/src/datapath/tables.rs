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
    EndpointKey, MAGLEV_TABLE_SIZE, NextHop, ReverseNat, Server, Service, filter, server_flags, server_state,
};

use super::{Datapath, bpf_batch};
use crate::{
    config::Config,
    servers::{
        Saved, ServerSlot, ServerTable, ServiceSlot,
        maglev::{self, Member},
        plan::{PlanError, Previous, Tables},
    },
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
    #[error(transparent)]
    Plan(#[from] PlanError),
}

fn map_err(action: &'static str, map: &'static str) -> impl FnOnce(MapError) -> TablesError {
    move |source| TablesError::Map { action, map, source }
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

/// What the datapath's side of the tables does: write them at start, and
/// the return paths, filter and VIPs they need.
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
