//! End to end through the real agent: real TCP and UDP clients and servers in
//! network namespaces, packets balanced by the XDP program.

use std::{
    collections::BTreeMap,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use testbed::{
    agent::Agent,
    servers::{EchoClient, Kind, Server, http_get, udp_exchange, udp_exchange_on},
    topology::{ServiceSpec, Topology, VIP},
};

const HTTP: u16 = 80;
const ECHO: u16 = 7;
const UDP: u16 = 53;

fn http(weights: &[u32]) -> ServiceSpec {
    ServiceSpec { port: HTTP, protocol: "tcp", server_port: 8080, weights: weights.to_vec() }
}

fn start_servers(topology: &Topology, kind: Kind, port: u16) -> Vec<Server> {
    topology.servers.iter().map(|s| Server::start(&s.ns, &s.name, kind, port)).collect()
}

/// `n` HTTP requests, each on a new connection; which server answered each.
fn spread(topology: &Topology, n: usize) -> BTreeMap<String, usize> {
    topology.client.run(|| {
        let mut counts = BTreeMap::new();
        for i in 0..n {
            let name = http_get(VIP, HTTP).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
            *counts.entry(name).or_insert(0) += 1;
        }
        counts
    })
}

#[test]
fn new_tcp_connections_spread_over_three_servers() {
    let topology = Topology::new(3);
    let _servers = start_servers(&topology, Kind::Http, 8080);
    let agent = Agent::start(&topology, topology.config(&[http(&[1, 1, 1])]));

    let counts = spread(&topology, 300);
    assert_eq!(counts.values().sum::<usize>(), 300, "every request answered: {counts:?}");
    // What the operator sees: every packet counted under an outcome, and
    // traffic per server.
    let stats = agent.stats().outcomes;
    let outcome = |name: &str| *stats.get(name).unwrap_or_else(|| panic!("no outcome {name}: {stats:?}"));
    assert!(outcome("forward_new_flow") + outcome("pass_neighbour_unresolved") >= 300, "{stats:?}");
    assert!(outcome("forward_reply") >= 300, "{stats:?}");
    assert_eq!(outcome("drop_no_server"), 0, "{stats:?}");
    for server in agent.pool("p80").servers {
        assert!(server.bytes_to > 0 && server.bytes_from > 0, "{server:?}");
    }
    assert_eq!(counts.len(), 3, "every server used: {counts:?}");
    for (server, n) in &counts {
        assert!((60..=141).contains(n), "{server} got {n} of 300 (want 20%..47%): {counts:?}");
    }
}

#[test]
fn weights_one_to_three_split_new_flows_near_one_to_three() {
    let topology = Topology::new(2);
    let _servers = start_servers(&topology, Kind::Http, 8080);
    let _agent = Agent::start(&topology, topology.config(&[http(&[1, 3])]));

    let counts = spread(&topology, 400);
    let s1 = counts.get("s1").copied().unwrap_or(0) as f64;
    let share = s1 / 400.0;
    assert!((0.17..=0.33).contains(&share), "s1 (weight 1) got {share:.2} of new flows, want ~0.25: {counts:?}");
}

#[test]
fn a_server_of_weight_zero_gets_no_new_flows() {
    let topology = Topology::new(3);
    let _servers = start_servers(&topology, Kind::Http, 8080);
    let _agent = Agent::start(&topology, topology.config(&[http(&[1, 0, 1])]));

    let counts = spread(&topology, 100);
    assert_eq!(counts.get("s2"), None, "weight 0 server got flows: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 100);
}

#[test]
fn a_long_lived_connection_stays_on_its_server_while_others_come_and_go() {
    let topology = Topology::new(3);
    let _echo = start_servers(&topology, Kind::LineEcho, 7007);
    let _http = start_servers(&topology, Kind::Http, 8080);
    let echo = ServiceSpec { port: ECHO, protocol: "tcp", server_port: 7007, weights: vec![1, 1, 1] };
    let _agent = Agent::start(&topology, topology.config(&[echo, http(&[1, 1, 1])]));

    let done = AtomicBool::new(false);
    let (first, names, churn) = std::thread::scope(|s| {
        // Short connections come and go on every server meanwhile.
        let churn = s.spawn(|| {
            let mut count = 0;
            while !done.load(Ordering::Relaxed) {
                topology.client.run(|| http_get(VIP, HTTP)).expect("short connection");
                count += 1;
            }
            count
        });
        let mut client = topology.client.run(|| EchoClient::connect(VIP, ECHO)).expect("connect");
        let first = client.exchange("hello").expect("first exchange");
        let mut names = Vec::new();
        let start = Instant::now();
        let mut i = 0;
        while start.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(100));
            names.push(client.exchange(&format!("message {i}")).unwrap_or_else(|e| panic!("exchange {i}: {e}")));
            i += 1;
        }
        done.store(true, Ordering::Relaxed);
        (first, names, churn.join().expect("churn thread"))
    });
    assert!(names.len() >= 40, "only {} exchanges in 5 s", names.len());
    assert!(names.iter().all(|n| *n == first), "connection moved off {first}: {names:?}");
    assert!(churn >= 20, "only {churn} short connections alongside");
}

#[test]
fn udp_request_reply_through_the_vip() {
    let topology = Topology::new(3);
    let _servers = start_servers(&topology, Kind::UdpEcho, 5353);
    let udp = ServiceSpec { port: UDP, protocol: "udp", server_port: 5353, weights: vec![1, 1, 1] };
    let _agent = Agent::start(&topology, topology.config(&[udp]));

    topology.client.run(|| {
        // One socket is one flow: it stays on one server.
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
        let first = udp_exchange_on(&socket, VIP, UDP, "ping 0").expect("first UDP reply");
        for i in 1..20 {
            let name = udp_exchange_on(&socket, VIP, UDP, &format!("ping {i}")).expect("UDP reply");
            assert_eq!(name, first, "UDP flow moved");
        }
        // New flows spread.
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..60 {
            seen.insert(udp_exchange(VIP, UDP, &format!("new {i}")).expect("UDP reply"));
        }
        assert_eq!(seen.len(), 3, "UDP flows reached {seen:?}");
    });
}
