//! Writes the configuration into the datapath's tables: the server table, the
//! services, the VIP addresses and each service's Maglev row.
//!
//! Server ids are stable: each pool member keeps the id it had in the pinned
//! server table (found by its identity), so the flows of a previous agent stay
//! on their servers. Writes are ordered so the datapath never sees a Maglev
//! slot or a flow pointing at a server slot that is not written yet.

use std::{collections::BTreeMap, collections::HashMap, net::Ipv4Addr};

use aya::maps::MapError;
use lb_common::{
    EndpointKey, MAGLEV_TABLE_SIZE, NextHop, ReverseNat, Server, Service, ServiceKey, filter, server_flags,
    server_state,
};

use crate::{
    bpf_batch,
    config::{Config, Protocol},
    datapath::Datapath,
    maglev::{self, Member},
    server_state::AdminState,
};

/// Administrative states by (pool, server), as saved in the state file.
pub type AdminStates = BTreeMap<(String, String), AdminState>;

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

/// A pool member as the agent knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerSlot {
    pub id: u32,
    pub pool: String,
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
    pub identity: u64,
    /// The operator's state: the one source of the code the datapath reads.
    pub admin: AdminState,
    /// Its endpoint serves several services: its flows have per-flow
    /// return-path entries (see `server_endpoints`).
    pub shared_endpoint: bool,
}

impl ServerSlot {
    fn entry(&self) -> Server {
        Server {
            addr: u32::from_ne_bytes(self.address.octets()),
            port: self.port.to_be(),
            state: self.admin.code(),
            flags: if self.shared_endpoint { server_flags::SHARED_ENDPOINT } else { 0 },
            identity: self.identity,
        }
    }

    /// Whether the server may take new flows (and so has Maglev slots).
    pub fn takes_new_flows(&self) -> bool {
        self.admin == AdminState::Enabled && self.weight > 0
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSlot {
    pub index: u32,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub pool: String,
}

impl ServiceSlot {
    pub fn key(&self) -> ServiceKey {
        ServiceKey {
            addr: u32::from_ne_bytes(self.vip.octets()),
            port: self.port.to_be(),
            proto: self.protocol.number(),
            _pad: 0,
        }
    }

    pub fn label(&self) -> String {
        format!("{}:{}/{}", self.vip, self.port, self.protocol)
    }
}

/// What the agent wrote into the datapath.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    /// By (pool, server name).
    pub servers: BTreeMap<(String, String), ServerSlot>,
    pub services: Vec<ServiceSlot>,
}

impl Tables {
    pub fn server(&self, pool: &str, name: &str) -> Option<&ServerSlot> {
        self.servers.get(&(pool.to_owned(), name.to_owned()))
    }

    pub fn server_by_id(&self, id: u32) -> Option<&ServerSlot> {
        self.servers.values().find(|s| s.id == id)
    }

    /// Writes a server's state code into the server table.
    pub fn write_server(&self, dp: &mut Datapath, slot: &ServerSlot) -> Result<(), TablesError> {
        dp.maps.servers.set(slot.id, slot.entry(), 0).map_err(map_err("write", "servers"))
    }

    /// The services served by `pool`.
    pub fn services_of(&self, pool: &str) -> impl Iterator<Item = &ServiceSlot> {
        self.services.iter().filter(move |s| s.pool == pool)
    }

    /// Writes `config` into the datapath, reusing the server ids found in
    /// its (possibly pinned) server table; servers get their state from
    /// `states` (ENABLED when absent).
    pub fn apply(dp: &mut Datapath, config: &Config, states: &AdminStates) -> Result<Tables, TablesError> {
        let previous = read_server_table(dp, config.max_servers)?;
        let by_identity: HashMap<u64, u32> =
            previous.iter().filter(|(_, s)| s.state != server_state::UNUSED).map(|(id, s)| (s.identity, *id)).collect();

        // Ids: keep each member's previous id, give new members free ones.
        let mut tables = Tables::default();
        let mut taken: Vec<bool> = vec![false; config.max_servers as usize];
        let mut members = Vec::new();
        for (pool, pool_config) in &config.pools {
            for server in &pool_config.servers {
                let identity = maglev::identity(pool, &server.name);
                let id = by_identity.get(&identity).copied();
                if let Some(id) = id {
                    taken[id as usize] = true;
                }
                members.push((pool, server, identity, id));
            }
        }
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
            let slot = ServerSlot {
                id,
                pool: pool.clone(),
                name: server.name.clone(),
                address: server.address,
                port: server.port,
                weight: server.weight,
                identity,
                admin: states.get(&(pool.clone(), server.name.clone())).copied().unwrap_or(AdminState::Enabled),
                shared_endpoint: false,
            };
            tables.servers.insert((pool.clone(), server.name.clone()), slot);
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
        for slot in tables.servers.values_mut() {
            let addr = u32::from_ne_bytes(slot.address.octets());
            slot.shared_endpoint =
                endpoints.iter().any(|(key, nat)| nat.shared != 0 && key.addr == addr && key.port == slot.port.to_be());
        }

        // 1. Servers first: everything below may point at them. Their cached
        // next hops go: an address may have changed.
        for slot in tables.servers.values() {
            dp.maps.servers.set(slot.id, slot.entry(), 0).map_err(map_err("write", "servers"))?;
            dp.maps.next_hops.set(slot.id, NextHop::default(), 0).map_err(map_err("clear", "next_hops"))?;
        }
        // Where replies come from, before any service sends traffic there.
        for (key, nat) in &endpoints {
            dp.maps.server_endpoints.insert(key, nat, 0).map_err(map_err("write", "server_endpoints"))?;
        }
        // The filter, before the services and endpoints it lets through.
        let mut bits = vec![0u8; filter::ENTRIES as usize];
        for service in &tables.services {
            let key = service.key();
            bits[filter::service_index(key.addr, key.port, key.proto) as usize] |= filter::SERVICE;
        }
        for key in endpoints.keys() {
            bits[key.port as usize] |= filter::SERVER_PORT;
        }
        let indexes: Vec<u32> = (0..filter::ENTRIES).collect();
        bpf_batch::update_batch(dp.maps.filter_fd(), &indexes, &bits)
            .map_err(|source| TablesError::Filter { source })?;
        // 2. Maglev rows, then the services that use them.
        for service in &tables.services {
            tables.write_maglev_row(dp, service)?;
            dp.maps
                .services
                .insert(service.key(), Service { index: service.index }, 0)
                .map_err(map_err("write", "services"))?;
            dp.maps.vip_addrs.insert(service.key().addr, 0, 0).map_err(map_err("write", "vip_addrs"))?;
        }
        // 3. Remove what the config no longer has.
        let keep: Vec<ServiceKey> = tables.services.iter().map(ServiceSlot::key).collect();
        let stale: Vec<ServiceKey> =
            dp.maps.services.keys().filter_map(Result::ok).filter(|k| !keep.contains(k)).collect();
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
            if old.state != server_state::UNUSED && tables.server_by_id(id).is_none() {
                let unused = Server { state: server_state::UNUSED, ..old };
                dp.maps.servers.set(id, unused, 0).map_err(map_err("clean", "servers"))?;
            }
        }
        Ok(tables)
    }

    /// Every server endpoint with the VIP its replies come from; an endpoint
    /// serving several services is marked shared.
    fn endpoints(&self) -> HashMap<EndpointKey, ReverseNat> {
        let mut endpoints: HashMap<EndpointKey, ReverseNat> = HashMap::new();
        for service in &self.services {
            let vip = service.key();
            for slot in self.servers.values().filter(|s| s.pool == service.pool) {
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

    /// Recomputes and writes a service's Maglev row from its pool's servers
    /// that take new flows.
    pub fn write_maglev_row(&self, dp: &Datapath, service: &ServiceSlot) -> Result<(), TablesError> {
        let members: Vec<Member> = self
            .servers
            .values()
            .filter(|s| s.pool == service.pool && s.takes_new_flows())
            .map(|s| Member { id: s.id, identity: s.identity, weight: s.weight })
            .collect();
        let row = maglev::build_table(&members);
        let base = service.index * MAGLEV_TABLE_SIZE;
        let keys: Vec<u32> = (base..base + MAGLEV_TABLE_SIZE).collect();
        bpf_batch::update_batch(dp.maps.maglev_fd(), &keys, &row)
            .map_err(|source| TablesError::Maglev { service: service.label(), source })
    }
}

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
