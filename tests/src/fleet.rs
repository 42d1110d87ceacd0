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
