//! The bed most end-to-end tests share: a client, the real agent and N
//! servers, each running a TCP line echo (VIP port 7) and a UDP echo (VIP
//! port 53), balanced by pools "p7" and "p53"; with ways to place a
//! connection on a given server and to read states through the CLI.

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use lb_userspace::model::{Event, EventKind, ServerView};

use crate::{
    agent::Agent,
    config_file::ConfigFile,
    servers::{EchoClient, Kind, Server, udp_exchange_on},
    topology::{ServiceSpec, Topology, VIP},
};

pub const ECHO: u16 = 7;
/// The port the bed's echo servers listen on (the VIP's is [`ECHO`]).
pub const ECHO_SERVER_PORT: u16 = 7007;
pub const UDP: u16 = 53;
pub const EVERY_100MS: Option<Duration> = Some(Duration::from_millis(100));

/// Fields drop in order: the agent first, then the servers, then the namespaces.
pub struct Bed {
    pub agent: Agent,
    /// The config the agent was started with (a test changes a copy and
    /// writes it for a reload).
    pub config: ConfigFile,
    pub echo: Vec<Server>,
    pub udp: Vec<Server>,
    pub topology: Topology,
}

/// N servers (s1..sN, weight 1) behind the echo services (pools p7, p53).
pub fn bed(n: usize) -> Bed {
    bed_with(n, |config| config)
}

/// As [`bed`], its config changed by `configure` (a setting, a monitor).
pub fn bed_with(n: usize, configure: impl FnOnce(ConfigFile) -> ConfigFile) -> Bed {
    bed_prepared(n, configure, |_| {})
}

/// As [`bed_with`], with `prepare` run on the topology before the agent
/// starts (to make its directory's mounts, say).
pub fn bed_prepared(
    n: usize,
    configure: impl FnOnce(ConfigFile) -> ConfigFile,
    prepare: impl FnOnce(&Topology),
) -> Bed {
    bed_of(n, |topology| {
        prepare(topology);
        configure(topology.config(&echo_services(n)))
    })
}

/// The echo services: TCP line echo on port 7 (pool p7), UDP on 53 (p53).
pub fn echo_services(n: usize) -> [ServiceSpec; 2] {
    [
        ServiceSpec { port: ECHO, protocol: "tcp", server_port: ECHO_SERVER_PORT, weights: vec![1; n] },
        ServiceSpec { port: UDP, protocol: "udp", server_port: 5353, weights: vec![1; n] },
    ]
}

/// N servers running both echoes, and the agent on the config `config`
/// writes for the topology.
pub fn bed_of(n: usize, config: impl FnOnce(&Topology) -> ConfigFile) -> Bed {
    let topology = Topology::new(n);
    let config = config(&topology);
    let text = config.text();
    let echo =
        topology.servers.iter().map(|s| Server::start(&s.ns, &s.name, Kind::LineEcho, ECHO_SERVER_PORT)).collect();
    let udp = topology.servers.iter().map(|s| Server::start(&s.ns, &s.name, Kind::UdpEcho, 5353)).collect();
    let agent = Agent::start(&topology, text);
    Bed { agent, config, echo, udp, topology }
}

impl Bed {
    /// A new TCP connection that landed on `server`.
    pub fn connect_to(&self, server: &str) -> EchoClient {
        self.connect_via(VIP.into(), server)
    }

    /// A new TCP connection to `vip` (IPv4 or IPv6) that landed on `server`.
    pub fn connect_via(&self, vip: std::net::IpAddr, server: &str) -> EchoClient {
        for _ in 0..300 {
            let mut client = self.topology.client.run(|| EchoClient::connect(vip, ECHO)).expect("connect");
            if client.exchange("which").expect("first exchange") == server {
                return client;
            }
        }
        panic!("no connection landed on {server}");
    }

    /// Servers reached by `n` new TCP connections.
    pub fn new_connections(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let mut c = self.topology.client.run(|| EchoClient::connect(VIP, ECHO)).expect("connect");
                c.exchange("new").expect("exchange")
            })
            .collect()
    }

    /// A UDP socket (one flow) whose datagrams land on `server`.
    pub fn udp_flow_to(&self, server: &str) -> UdpSocket {
        for _ in 0..300 {
            let socket = self.topology.client.run(|| UdpSocket::bind("0.0.0.0:0")).expect("bind");
            if udp_exchange_on(&socket, VIP, UDP, "which").expect("UDP reply") == server {
                return socket;
            }
        }
        panic!("no UDP flow landed on {server}");
    }

    /// Writes `config` as the agent's config file (for `lb reload`).
    pub fn write_config(&self, config: &ConfigFile) {
        std::fs::write(&self.agent.config_path, config.text()).expect("write the config");
    }

    pub fn lb(&self, args: &[&str]) -> String {
        let (ok, stdout, stderr) = self.agent.lb(args);
        assert!(ok, "lb {args:?} failed: {stderr}\n--- agent log ---\n{}", self.agent.log());
        stdout
    }

    pub fn server(&self, pool: &str, name: &str) -> ServerView {
        let view = self.agent.pool(pool);
        view.servers.into_iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no server {name} in {pool}"))
    }

    /// Its state and why, as `lb pool show` writes it: "DRAINING (deadline)".
    pub fn state(&self, pool: &str, name: &str) -> String {
        self.server(pool, name).label().to_string()
    }

    /// Waits up to `timeout` for `name`'s state; returns when it was seen.
    pub fn wait_state(&self, pool: &str, name: &str, want: &str, timeout: Duration) -> Instant {
        let start = Instant::now();
        loop {
            let state = self.state(pool, name);
            if state == want {
                return Instant::now();
            }
            assert!(start.elapsed() < timeout, "{pool}/{name} is {state}, not {want}, after {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.agent.events()
    }

    /// The kinds of `server`'s events, oldest first.
    pub fn event_kinds_of(&self, server: &str) -> Vec<EventKind> {
        self.events().into_iter().filter(|e| e.subject.server_name() == Some(server)).map(|e| e.kind).collect()
    }

    /// Waits up to `timeout` until `server` has `count` events of `kind`,
    /// then checks it has no more. A change's event follows its state: a
    /// termination's carries the number of flows reset, known only once
    /// the purge that follows the published state is done.
    pub fn wait_events(&self, server: &str, kind: EventKind, count: usize, timeout: Duration) {
        let seen = || self.event_kinds_of(server).iter().filter(|k| **k == kind).count();
        wait_for(&format!("{count} {kind:?} event(s) of {server}"), timeout, || seen() >= count);
        assert_eq!(seen(), count, "{kind:?} events of {server}: {:?}", self.events());
    }
}

/// Waits up to `timeout` for `condition`.
pub fn wait_for(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
