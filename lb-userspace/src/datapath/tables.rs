//! Writes the configuration into the datapath's tables: the server table, the
//! services, the VIP addresses, the filter and each service's Maglev row.
//!
//! Server ids are stable: each pool member keeps the id it had in the pinned
//! server table (found by its identity), so the flows of a previous agent stay
//! on their servers. Writes are ordered so the datapath never sees a Maglev
//! slot or a flow pointing at a server slot that is not written yet.

use std::{collections::HashMap, net::IpAddr};

use aya::maps::MapError;
use lb_common::{
    Addr6, EndpointKey, EndpointKey6, MAGLEV_TABLE_SIZE, NextHop, ReverseNat, ReverseNat6, Server, Service, ServiceKey,
    ServiceKey6, filter, server_flags, server_state,
};

use super::{
    Datapath,
    family::{addr4, addr6, ip4, ip6},
    mapped,
};
use crate::{
    config::Config,
    servers::{
        Saved, ServerSlot, ServerTable, ServiceId, ServiceSlot,
        maglev::{self, Member},
        plan::{PlanError, Previous, PreviousServer, Tables},
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

/// A service's key in its family's `services` map.
enum Key {
    V4(ServiceKey),
    V6(ServiceKey6),
}

fn service_key(id: &ServiceId) -> Key {
    let (port, proto) = (id.port.to_be(), id.proto);
    match id.vip {
        IpAddr::V4(a) => Key::V4(ServiceKey { addr: addr4(a), port, proto, _pad: 0 }),
        IpAddr::V6(a) => Key::V6(ServiceKey6 { addr: addr6(a), port, proto, _pad: 0 }),
    }
}

/// The server table's record of a member (its IPv4 address, 0 if it has
/// none; its IPv6 one is in `server_addrs6`).
fn server_entry(slot: &ServerSlot) -> Server {
    Server {
        addr: match slot.address {
            IpAddr::V4(a) => addr4(a),
            IpAddr::V6(_) => 0,
        },
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

/// Writes a new (or readdressed) server: its IPv6 address, then its record,
/// and forgets its cached next hops.
pub fn write_new_server(dp: &mut Datapath, slot: &ServerSlot) -> Result<(), TablesError> {
    let six = slot.ipv6().map(addr6).unwrap_or_default();
    dp.maps.server_addrs6.set(slot.id, six, 0).map_err(map_err("write", "server_addrs6"))?;
    write_server(dp, slot)?;
    clear_next_hop(dp, slot.id)
}

/// Recomputes and writes a service's Maglev row from its pool's servers
/// that take new flows.
pub fn write_maglev_row(dp: &Datapath, service: &ServiceSlot, servers: &ServerTable) -> Result<(), TablesError> {
    let members: Vec<Member> = servers
        .pool(&service.pool)
        .filter(|s| s.takes_new_flows())
        .map(|s| Member { id: s.id, identity: s.identity, weight: s.hash_weight() })
        .collect();
    let row = maglev::build_table(&members);
    mapped::write(dp.maps.maglev_map(), service.index * MAGLEV_TABLE_SIZE, &row)
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
            servers: pinned.iter().map(|(id, s, six)| (s.identity, previous_server(*id, s, *six))).collect(),
            services: pinned_services(dp),
            saved,
        };
        let tables = Tables::plan(config, &previous, now_ms)?;
        let endpoints = tables.endpoints();
        // 1. Servers first: everything below may point at them. Their cached
        // next hops go: an address may have changed.
        for slot in tables.servers.iter() {
            write_new_server(dp, slot)?;
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
        for (id, old, _) in &pinned {
            if tables.servers.get(*id).is_none() {
                forget_server(dp, *id, old)?;
            }
        }
        Ok(tables)
    }

    /// Every server endpoint with the VIP its replies come from, in each
    /// service's family; an endpoint serving several services is marked shared.
    pub fn endpoints(&self) -> Endpoints {
        let mut endpoints = Endpoints::default();
        for service in &self.services {
            let (port, proto) = (service.port.to_be(), service.protocol.number());
            for slot in self.servers.pool(&service.pool) {
                let server_port = slot.port.to_be();
                match (service.vip, slot.address_for(service.vip)) {
                    (IpAddr::V4(vip), Some(IpAddr::V4(a))) => {
                        let key = EndpointKey { addr: addr4(a), port: server_port, proto, _pad: 0 };
                        let nat = ReverseNat { vip: addr4(vip), port, ..ReverseNat::default() };
                        mark(&mut endpoints.v4, key, nat, |n| (n.vip, n.port), |n| n.shared = 1);
                    }
                    (IpAddr::V6(vip), Some(IpAddr::V6(a))) => {
                        let key = EndpointKey6 { addr: addr6(a), port: server_port, proto, _pad: 0 };
                        let nat = ReverseNat6 { vip: addr6(vip), port, ..ReverseNat6::default() };
                        mark(&mut endpoints.v6, key, nat, |n| (n.vip, n.port), |n| n.shared = 1);
                    }
                    // Refused by the config's checks.
                    _ => {}
                }
            }
        }
        endpoints
    }

    /// The return paths, the filter and the VIPs of every service and
    /// server, leaving ones included (their flows still pass): written
    /// before any service sends traffic to them.
    pub fn write_routes(&self, dp: &mut Datapath, endpoints: &Endpoints) -> Result<(), TablesError> {
        for (key, nat) in &endpoints.v4 {
            dp.maps.server_endpoints.insert(key, nat, 0).map_err(map_err("write", "server_endpoints"))?;
        }
        for (key, nat) in &endpoints.v6 {
            dp.maps.server_endpoints6.insert(key, nat, 0).map_err(map_err("write", "server_endpoints6"))?;
        }
        let mut bits = vec![0u8; filter::ENTRIES as usize];
        for service in &self.services {
            let index = match service_key(&service.key()) {
                Key::V4(k) => filter::service_index(k.addr, k.port, k.proto),
                Key::V6(k) => filter::service_index6(&k.addr, k.port, k.proto),
            };
            bits[index as usize] |= filter::SERVICE;
        }
        for port in endpoints.v4.keys().map(|k| k.port).chain(endpoints.v6.keys().map(|k| k.port)) {
            bits[port as usize] |= filter::SERVER_PORT;
        }
        mapped::write(dp.maps.filter_map(), 0, &bits).map_err(|source| TablesError::Filter { source })?;
        for service in &self.services {
            match service.vip {
                IpAddr::V4(a) => dp.maps.vip_addrs.insert(addr4(a), 0, 0).map_err(map_err("write", "vip_addrs"))?,
                IpAddr::V6(a) => dp.maps.vip_addrs6.insert(addr6(a), 0, 0).map_err(map_err("write", "vip_addrs6"))?,
            }
        }
        Ok(())
    }

    /// Removes the services (none leaving), VIPs and endpoints that are no
    /// longer in use.
    pub fn remove_stale(&self, dp: &mut Datapath, endpoints: &Endpoints) -> Result<(), TablesError> {
        let taking: Vec<ServiceId> =
            self.services.iter().filter(|s| s.leaving.is_none()).map(ServiceSlot::key).collect();
        let vips: Vec<IpAddr> = self.services.iter().map(|s| s.vip).collect();
        let m = &mut dp.maps;
        let stale = |k: &ServiceKey| !taking.contains(&service_id4(k));
        remove_where(&mut m.services, stale, "services")?;
        let stale = |k: &ServiceKey6| !taking.contains(&service_id6(k));
        remove_where(&mut m.services6, stale, "services6")?;
        remove_where(&mut m.vip_addrs, |a: &u32| !vips.contains(&ip4(*a).into()), "vip_addrs")?;
        remove_where(&mut m.vip_addrs6, |a: &Addr6| !vips.contains(&ip6(*a).into()), "vip_addrs6")?;
        remove_where(&mut m.server_endpoints, |k| !endpoints.v4.contains_key(k), "server_endpoints")?;
        remove_where(&mut m.server_endpoints6, |k| !endpoints.v6.contains_key(k), "server_endpoints6")?;
        Ok(())
    }
}

/// The server endpoints of both families, with the VIP each one's replies
/// come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Endpoints {
    pub v4: HashMap<EndpointKey, ReverseNat>,
    pub v6: HashMap<EndpointKey6, ReverseNat6>,
}

/// Records that `key`'s replies come from `nat`'s VIP, marking it shared
/// when another service's VIP is there already.
fn mark<K: std::hash::Hash + Eq, N, V: PartialEq>(
    map: &mut HashMap<K, N>,
    key: K,
    nat: N,
    vip: impl Fn(&N) -> V,
    share: impl Fn(&mut N),
) {
    match map.get_mut(&key) {
        Some(known) if vip(known) != vip(&nat) => share(known),
        Some(_) => {}
        None => {
            map.insert(key, nat);
        }
    }
}

/// Removes the entries of a hash map whose key `stale` picks.
fn remove_where<K: aya::Pod, V: aya::Pod>(
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    stale: impl Fn(&K) -> bool,
    name: &'static str,
) -> Result<(), TablesError> {
    let doomed: Vec<K> = map.keys().filter_map(Result::ok).filter(|k| stale(k)).collect();
    for key in doomed {
        map.remove(&key).map_err(map_err("clean", name))?;
    }
    Ok(())
}

fn service_id4(k: &ServiceKey) -> ServiceId {
    ServiceId { vip: ip4(k.addr).into(), port: u16::from_be(k.port), proto: k.proto }
}

fn service_id6(k: &ServiceKey6) -> ServiceId {
    ServiceId { vip: ip6(k.addr).into(), port: u16::from_be(k.port), proto: k.proto }
}

/// The services in the (possibly pinned) maps of both families, with their rows.
fn pinned_services(dp: &Datapath) -> HashMap<ServiceId, u32> {
    let four = dp.maps.services.iter().filter_map(Result::ok).map(|(k, v)| (service_id4(&k), v.index));
    let six = dp.maps.services6.iter().filter_map(Result::ok).map(|(k, v)| (service_id6(&k), v.index));
    four.chain(six).collect()
}

/// A pinned server's id and endpoint: its IPv4 address (0: none) and its IPv6 one.
fn previous_server(id: u32, s: &Server, six: Addr6) -> PreviousServer {
    let six = (six != [0; 4]).then(|| ip6(six));
    let (address, address6) = match (s.addr, six) {
        (0, Some(six)) => (IpAddr::V6(six), None),
        (four, six) => (IpAddr::V4(ip4(four)), six),
    };
    PreviousServer { id, address, address6, port: u16::from_be(s.port) }
}

/// Writes a service's entry (it takes new flows from now on).
pub fn write_service(dp: &mut Datapath, service: &ServiceSlot) -> Result<(), TablesError> {
    let row = Service { index: service.index };
    match service_key(&service.key()) {
        Key::V4(k) => dp.maps.services.insert(k, row, 0).map_err(map_err("write", "services")),
        Key::V6(k) => dp.maps.services6.insert(k, row, 0).map_err(map_err("write", "services6")),
    }
}

/// Removes a service's entry: it takes no new flows.
pub fn remove_service(dp: &mut Datapath, service: &ServiceSlot) -> Result<(), TablesError> {
    let removed = match service_key(&service.key()) {
        Key::V4(k) => dp.maps.services.remove(&k),
        Key::V6(k) => dp.maps.services6.remove(&k),
    };
    match removed {
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
    dp.maps.next_hops.set(id, NextHop::default(), 0).map_err(map_err("clear", "next_hops"))?;
    dp.maps.next_hops6.set(id, NextHop::default(), 0).map_err(map_err("clear", "next_hops6"))
}

/// The records in use in the (possibly pinned) server table, with each
/// one's IPv6 address.
fn read_server_table(dp: &Datapath, max_servers: u32) -> Result<Vec<(u32, Server, Addr6)>, TablesError> {
    let mut out = Vec::new();
    for id in 0..max_servers {
        let server = dp.maps.servers.get(&id, 0).map_err(map_err("read", "servers"))?;
        if server.state != server_state::UNUSED {
            let six = dp.maps.server_addrs6.get(&id, 0).map_err(map_err("read", "server_addrs6"))?;
            out.push((id, server, six));
        }
    }
    Ok(out)
}
