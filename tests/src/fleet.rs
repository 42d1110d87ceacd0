//! Many balancer nodes sharing one store: three beds (each its client, its
//! agent, its servers s1..sN with the same names and addresses, so the
//! three configs are the same) and a three-member etcd reachable from every
//! balancer namespace. A node is addressed directly, through its own bed's
//! client.

use std::time::{Duration, Instant};

use lb_userspace::model::NodesView;

use crate::{
    bed::{Bed, bed_prepared},
    config_file::ConfigFile,
    health_server::HealthServer,
    store::Store,
    topology::Topology,
};

/// The port of the servers' health endpoints in a monitored fleet.
pub const HEALTH_PORT: u16 = 8080;

/// Fields drop in order: the nodes (agents, servers, namespaces), then the store.
pub struct Fleet {
    pub nodes: Vec<Bed>,
    pub store: Store,
}

/// The node names.
pub const NODES: [&str; 3] = ["n1", "n2", "n3"];

impl Fleet {
    /// Three nodes of `n` servers each, on one store.
    pub fn start(n: usize) -> Fleet {
        Fleet::on(Store::start(), n, &|c| c, &mut |_| {})
    }

    /// Three nodes whose configs `extra` adds to (the same on each).
    pub fn start_with(n: usize, extra: &dyn Fn(ConfigFile) -> ConfigFile) -> Fleet {
        Fleet::on(Store::start(), n, extra, &mut |_| {})
    }

    /// Three nodes on a store that requires TLS client certificates.
    pub fn start_tls(n: usize) -> Fleet {
        Fleet::on(Store::start_tls(), n, &|c| c, &mut |_| {})
    }

    /// Three nodes whose pool p7 has an http monitor (every 300 ms, rise
    /// and fall 2, a 503 means maintenance, drained for at most 20 s), each
    /// server with its health endpoint: by node, by server.
    pub fn monitored(n: usize) -> (Fleet, Vec<Vec<HealthServer>>) {
        let mut health = Vec::new();
        let monitor = |c: ConfigFile| {
            let settings: [(&str, toml::Value); 7] = [
                ("kind", "http".into()),
                ("interval", "300ms".into()),
                ("timeout", "200ms".into()),
                ("rise", 2.into()),
                ("fall", 2.into()),
                ("port", i64::from(HEALTH_PORT).into()),
                ("maintenance_codes", vec![503].into()),
            ];
            c.set("pools.p7.maintenance_timeout", "20s").monitor("p7", settings)
        };
        let mut prepare = |t: &Topology| {
            health.push(t.servers.iter().map(|s| HealthServer::start(&s.ns, HEALTH_PORT)).collect());
        };
        let fleet = Fleet::on(Store::start(), n, &monitor, &mut prepare);
        (fleet, health)
    }

    fn on(
        mut store: Store,
        n: usize,
        extra: &dyn Fn(ConfigFile) -> ConfigFile,
        prepare: &mut dyn FnMut(&Topology),
    ) -> Fleet {
        let mut nodes = Vec::new();
        for node in NODES {
            let endpoints = store.endpoints();
            let tls = store.tls().cloned();
            let configure = |c: ConfigFile| {
                let c = c.set("cluster.node", node).set("cluster.endpoints", endpoints).set("cluster.timeout", "2s");
                match tls {
                    None => c,
                    Some(tls) => c
                        .set("cluster.ca_file", tls.ca.display().to_string())
                        .set("cluster.cert_file", tls.client_cert.display().to_string())
                        .set("cluster.key_file", tls.client_key.display().to_string()),
                }
            };
            let bed = bed_prepared(
                n,
                |c| extra(configure(c)),
                |t| {
                    store.link(&t.lb);
                    prepare(t);
                },
            );
            nodes.push(bed);
        }
        let fleet = Fleet { nodes, store };
        fleet.wait_all_see_each_other();
        fleet
    }

    pub fn node(&self, name: &str) -> &Bed {
        &self.nodes[NODES.iter().position(|n| *n == name).expect("a node's name")]
    }

    pub fn nodes_view(bed: &Bed) -> NodesView {
        bed.agent.lb_json(&["nodes"])
    }

    /// Every node's record is seen by every node.
    pub fn wait_all_see_each_other(&self) {
        let start = Instant::now();
        for bed in &self.nodes {
            loop {
                let view = Fleet::nodes_view(bed);
                if view.nodes.iter().filter(|n| n.up).count() == NODES.len() {
                    break;
                }
                assert!(start.elapsed() < Duration::from_secs(30), "{} sees only {:?}", view.node, view.nodes);
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Waits until `server` of `pool` reads `want` on every node; returns
    /// when the last one did.
    pub fn wait_state_everywhere(&self, pool: &str, server: &str, want: &str, timeout: Duration) -> Instant {
        let mut last = Instant::now();
        for bed in &self.nodes {
            last = bed.wait_state(pool, server, want, timeout);
        }
        last
    }
}

/// An instance's server table and its services' Maglev rows, as pinned.
pub fn tables_of(pin_dir: &std::path::Path) -> (Vec<lb_common::Server>, std::collections::BTreeMap<String, Vec<u32>>) {
    use aya::maps::{Array, HashMap, Map, MapData};
    let open = |name: &str| MapData::from_pin(pin_dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    let servers: Array<MapData, lb_common::Server> =
        Array::try_from(Map::Array(open(lb_common::map_name::SERVERS))).expect("the server table");
    let servers: Vec<lb_common::Server> = (0..servers.len()).map(|i| servers.get(&i, 0).expect("a server")).collect();
    let maglev: Array<MapData, u32> = Array::try_from(Map::Array(open(lb_common::map_name::MAGLEV))).expect("maglev");
    let services: HashMap<MapData, lb_common::ServiceKey, lb_common::Service> =
        HashMap::try_from(Map::HashMap(open(lb_common::map_name::SERVICES))).expect("services");
    let mut rows = std::collections::BTreeMap::new();
    for entry in services.iter() {
        let (key, service) = entry.expect("a service");
        let size = lb_common::MAGLEV_TABLE_SIZE;
        let row: Vec<u32> =
            (0..size).map(|i| maglev.get(&(service.index * size + i), 0).expect("a Maglev slot")).collect();
        rows.insert(format!("{key:?}"), row);
    }
    (servers, rows)
}

/// A node's pinned server table, opened once (read without the agent).
pub struct ServerTable(aya::maps::Array<aya::maps::MapData, lb_common::Server>);

impl ServerTable {
    pub fn open(pin_dir: &std::path::Path) -> ServerTable {
        use aya::maps::{Array, Map, MapData};
        let map = MapData::from_pin(pin_dir.join(lb_common::map_name::SERVERS)).expect("the pinned server table");
        ServerTable(Array::try_from(Map::Array(map)).expect("an array"))
    }

    /// The datapath's state code of server `id`.
    pub fn state(&self, id: u32) -> u8 {
        self.0.get(&id, 0).expect("a server").state
    }

    /// The id of the server at `address`:`port`.
    pub fn id_of(&self, address: std::net::Ipv4Addr, port: u16) -> u32 {
        (0..self.0.len())
            .find(|i| {
                let s = self.0.get(i, 0).expect("a server");
                std::net::Ipv4Addr::from(u32::from_be(s.addr)) == address && u16::from_be(s.port) == port
            })
            .expect("the server in the table")
    }
}
