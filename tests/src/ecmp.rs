//! Balancer nodes behind a router that spreads a VIP's flows over them by
//! ECMP, learnt over real BGP sessions (BIRD 2, BFD on) from the nodes'
//! own BIRDs, which the agents drive (`[bgp]`). The nodes share a real
//! three-member etcd and replicate their flows to each other.
//!
//! ```text
//!  client c 10.240.9.2 ── r 10.240.9.1
//!                         r 10.240.k.1 ── node nk 10.240.k.2 (one interface "uplink": XDP in and out)
//!                         r 10.240.2j.1 ── server sj 10.240.2j.2 (j = 1, 2, ...)
//! ```
//! Return path: the servers' default route is r; r looks up their packets
//! (an `ip rule` per server interface) in table 100, where the default
//! routes the nodes announce make one ECMP route: a reply reaches any live
//! node, which rewrites it back to the VIP (it has the flow, its own or a
//! replicated one) and sends it to the client through r.

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use aya::Ebpf;

use crate::{
    agent::{Agent, Place},
    config_file::ConfigFile,
    netns::{NetNs, unique_prefix},
    servers::{Kind, Server},
    store::Store,
    topology::{attach_pass, link},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 240, 100, 1);
/// The IPv6 VIP (with [`Options::ipv6`]): the same TCP service.
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x240, 0x100, 0, 0, 0, 0, 1);
pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 240, 9, 2);
/// The services' ports: line echo over TCP, datagram echo over UDP.
pub const TCP_PORT: u16 = 7000;
pub const UDP_PORT: u16 = 7001;
/// A second TCP service on the same pool (with [`EcmpBed::start_shared`]):
/// the servers' endpoints then serve two services.
pub const SHARED_PORT: u16 = 7002;
/// The nodes' port for replicated flows.
pub const SYNC_PORT: u16 = 7946;

fn node_addr(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 240, k as u8, 2)
}

/// Node k's `cluster.sync_address`.
pub fn sync_address(k: usize) -> std::net::SocketAddr {
    (node_addr(k), SYNC_PORT).into()
}

fn server_addr(j: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 240, 20 + j as u8, 2)
}

/// The IPv6 network of link `n` (`k` for node k, `9` the client, `2j` server j).
fn net6(n: usize) -> String {
    format!("fd00:240:{n}::")
}

/// IPv6 addresses on a linked pair, usable at once (no duplicate detection:
/// the test's own namespaces).
fn link6(a: &NetNs, name_a: &str, b: &NetNs, name_b: &str, n: usize) {
    a.ip(&["-6", "addr", "add", &format!("{}1/64", net6(n)), "dev", name_a, "nodad"]);
    b.ip(&["-6", "addr", "add", &format!("{}2/64", net6(n)), "dev", name_b, "nodad"]);
}

/// A BIRD daemon of the test's, in a namespace, stopped by its id on drop.
pub struct Bird {
    child: Child,
    pub socket: PathBuf,
    ns: String,
    dir: PathBuf,
}

impl Bird {
    fn start(ns: &NetNs, dir: &std::path::Path, config: &str) -> Bird {
        std::fs::create_dir_all(dir).expect("BIRD's directory");
        let (conf, socket) = (dir.join("bird.conf"), dir.join("bird.ctl"));
        std::fs::write(&conf, config).expect("BIRD's config");
        let log = std::fs::File::create(dir.join("bird.out")).expect("BIRD's output");
        let child = ns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start bird");
        Bird { child, socket, ns: ns.name.clone(), dir: dir.to_owned() }
    }

    /// What this BIRD says of its sessions, and what it printed: for a
    /// test's failure message (the bed's directory goes with the bed).
    fn report(&self) -> String {
        let protocols = Command::new("birdc")
            .arg("-s")
            .arg(&self.socket)
            .args(["show", "protocols"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("birdc: {e}"));
        let printed = std::fs::read_to_string(self.dir.join("bird.out")).unwrap_or_default();
        format!("--- BIRD in {}:\n{protocols}{printed}", self.ns)
    }

    /// SIGSTOP: a hung node's BIRD, its sessions open and silent (only
    /// BFD or the hold timer can tell).
    pub fn freeze(&self) {
        // SAFETY: signalling our own child by its id.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
    }

    /// SIGKILL: its BGP sessions' sockets close with it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bed's directory, removed last.
struct DirGuard(PathBuf);

impl Drop for DirGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Node {
    pub name: String,
    /// Its agent's config as written.
    pub config: ConfigFile,
    pub agent: Agent,
    pub bird: Bird,
    pub ns: NetNs,
}

/// What a bed's nodes run beside the defaults.
#[derive(Clone, Copy, Default)]
pub struct Options {
    /// A second TCP service on the pool ([`SHARED_PORT`]).
    pub shared: bool,
    /// `bgp.withdraw_without_servers`.
    pub withdraw_without_servers: bool,
    /// Dual stack: IPv6 on every link, BGP sessions for IPv6, and the TCP
    /// service on [`VIP6`] too (the servers dual-stack).
    pub ipv6: bool,
    /// `cluster.timeout` ("2s" if none): how long a fleet reload waits for
    /// every node's answer, among others.
    pub store_timeout: Option<&'static str>,
}

/// Fields drop in order: agents and BIRDs, then servers, then namespaces,
/// then the store.
pub struct EcmpBed {
    pub nodes: Vec<Node>,
    router_bird: Bird,
    pub servers: Vec<(Server, Server)>,
    pub client: NetNs,
    pub router: NetNs,
    _server_ns: Vec<NetNs>,
    pass: Vec<Ebpf>,
    pub store: Store,
    prefix: String,
    /// Server hosts in the pools of a node started now.
    configured: usize,
    options: Options,
    dir: DirGuard,
}

impl EcmpBed {
    /// `nodes` nodes, `servers` server hosts, the first `configured` of
    /// them in the pools; all up: the router has one path per node to the
    /// VIP, and every node sees the others.
    pub fn start(nodes: usize, servers: usize, configured: usize) -> EcmpBed {
        EcmpBed::start_with(nodes, servers, configured, Options::default())
    }

    /// As [`EcmpBed::start`], with a second TCP service ([`SHARED_PORT`])
    /// on the same pool: every server's endpoint serves two services, so
    /// its replies find their VIP by flow, not by endpoint.
    pub fn start_shared(nodes: usize, servers: usize, configured: usize) -> EcmpBed {
        EcmpBed::start_with(nodes, servers, configured, Options { shared: true, ..Options::default() })
    }

    pub fn start_with(nodes: usize, servers: usize, configured: usize, options: Options) -> EcmpBed {
        let prefix = unique_prefix();
        let dir = std::env::temp_dir().join(format!("{prefix}-ecmp"));
        std::fs::create_dir_all(&dir).expect("bed directory");
        let router = NetNs::create(&format!("{prefix}-r"));
        for (key, value) in [
            ("net.ipv4.ip_forward", "1"),
            ("net.ipv4.fib_multipath_hash_policy", "1"),
            ("net.ipv4.conf.all.rp_filter", "0"),
            ("net.ipv4.conf.default.rp_filter", "0"),
            ("net.ipv6.conf.all.forwarding", "1"),
            ("net.ipv6.fib_multipath_hash_policy", "1"),
        ] {
            router.sysctl(key, value);
        }
        let client = NetNs::create(&format!("{prefix}-c"));
        link(&router, "r-c", "10.240.9.1/30", &client, "c-r", "10.240.9.2/30");
        client.ip(&["route", "add", "default", "via", "10.240.9.1"]);
        if options.ipv6 {
            link6(&router, "r-c", &client, "c-r", 9);
            client.ip(&["-6", "route", "add", "default", "via", &format!("{}1", net6(9))]);
        }
        let pass = Vec::new();
        let mut server_ns = Vec::new();
        let mut echo = Vec::new();
        for j in 1..=servers {
            let ns = NetNs::create(&format!("{prefix}-s{j}"));
            let there = format!("r-s{j}");
            link(&router, &there, &format!("10.240.{}.1/30", 20 + j), &ns, "s-r", &format!("{}/30", server_addr(j)));
            ns.ip(&["route", "add", "default", "via", &format!("10.240.{}.1", 20 + j)]);
            // Replies go back through a node (table 100: the nodes' paths).
            router.ip(&["rule", "add", "iif", &there, "lookup", "100", "pref", "100"]);
            if options.ipv6 {
                link6(&router, &there, &ns, "s-r", 20 + j);
                ns.ip(&["-6", "route", "add", "default", "via", &format!("{}1", net6(20 + j))]);
                router.ip(&["-6", "rule", "add", "iif", &there, "lookup", "100", "pref", "100"]);
            }
            let name = format!("s{j}");
            echo.push((
                Server::start(&ns, &name, Kind::LineEcho, TCP_PORT),
                Server::start(&ns, &name, Kind::UdpEcho, UDP_PORT),
            ));
            server_ns.push(ns);
        }
        let store = Store::start();
        // One BGP session more than nodes: room for a node added later.
        let router_bird = Bird::start(&router, &dir.join("r"), &router_config(nodes + 1, options.ipv6));
        let mut bed = EcmpBed {
            nodes: Vec::new(),
            router_bird,
            servers: echo,
            client,
            router,
            _server_ns: server_ns,
            pass,
            store,
            prefix,
            configured,
            options,
            dir: DirGuard(dir),
        };
        for _ in 0..nodes {
            bed.start_node();
        }
        bed.wait_all_nodes();
        bed
    }

    /// Starts the next node (its namespace, link to r, BIRD and agent).
    fn start_node(&mut self) {
        let k = self.nodes.len() + 1;
        let prefix = &self.prefix;
        let ns = NetNs::create(&format!("{prefix}-n{k}"));
        ns.sysctl("net.ipv4.ip_forward", "1");
        ns.sysctl("net.ipv4.conf.all.rp_filter", "0");
        ns.sysctl("net.ipv4.conf.default.rp_filter", "0");
        let addr = format!("{}/30", node_addr(k));
        link(&self.router, &format!("r-n{k}"), &format!("10.240.{k}.1/30"), &ns, "uplink", &addr);
        ns.ip(&["route", "add", "default", "via", &format!("10.240.{k}.1")]);
        if self.options.ipv6 {
            ns.sysctl("net.ipv6.conf.all.forwarding", "1");
            link6(&self.router, &format!("r-n{k}"), &ns, "uplink", k);
            ns.ip(&["-6", "route", "add", "default", "via", &format!("{}1", net6(k))]);
        }
        self.store.link(&ns);
        // The node sends its packets back out to r by XDP_TX: r's end needs
        // an XDP program to take them (DATAPATH-FACTS).
        self.pass.push(attach_pass(&self.router, &format!("r-n{k}")));
        let node_dir = self.dir.0.join(format!("n{k}"));
        std::fs::create_dir_all(&node_dir).expect("node directory");
        let include = node_dir.join("lb-vips.conf");
        std::fs::write(&include, "").expect("an empty include file until the agent writes it");
        let bird = Bird::start(&ns, &node_dir.join("bird"), &node_config(k, &include, self.options.ipv6));
        let instance = format!("{prefix}-n{k}");
        let endpoints = self.store.endpoints();
        let mut config = node_agent_config(k, self.configured, &node_dir, &bird.socket, &include, &endpoints)
            .set("instance", instance.as_str());
        if self.options.shared {
            config = config.service(VIP, SHARED_PORT, "tcp", "echo");
        }
        if self.options.withdraw_without_servers {
            config = config.set("bgp.withdraw_without_servers", true);
        }
        if let Some(timeout) = self.options.store_timeout {
            config = config.set("cluster.timeout", timeout);
        }
        if self.options.ipv6 {
            config = config.service(VIP6, TCP_PORT, "tcp", "echo");
            for j in 1..=self.configured {
                config = config.server_set("echo", &format!("s{j}"), "address6", format!("{}2", net6(20 + j)));
            }
        }
        let place = Place {
            dir: node_dir.join("agent"),
            instance,
            interfaces: vec!["uplink".to_owned()],
            netns: ns.name.clone(),
        };
        let agent = Agent::start_at(place, config.text());
        self.nodes.push(Node { name: format!("n{k}"), config, agent, bird, ns });
    }

    /// Adds a node under way: started, announced once it has the others'
    /// flows; returns once r uses it and every node sees every other.
    pub fn add_node(&mut self) -> &Node {
        self.start_node();
        self.wait_all_nodes();
        self.nodes.last().expect("the node just added")
    }

    /// Waits until r has a path (and a return path) through every node,
    /// and every node sees every other (flows are replicated to the nodes
    /// a node has seen in the store).
    fn wait_all_nodes(&self) {
        let all: Vec<usize> = (1..=self.nodes.len()).collect();
        self.wait_paths(&all, Duration::from_secs(60));
        if self.options.ipv6 {
            crate::bed::wait_for("r's IPv6 paths through every node", Duration::from_secs(60), || self.paths6() == all);
        }
        self.wait_return_paths(self.nodes.len(), Duration::from_secs(60));
        for node in &self.nodes {
            crate::bed::wait_for(&format!("{} sees every node", node.name), Duration::from_secs(30), || {
                let view: lb_userspace::model::NodesView = node.agent.lb_json(&["nodes"]);
                view.nodes.iter().filter(|n| n.up).count() == self.nodes.len()
            });
        }
    }

    /// The nodes (1-based) r's route to the VIP goes through now.
    pub fn paths(&self) -> Vec<usize> {
        self.paths_to("-4", &format!("{VIP}/32"), '.')
    }

    /// The nodes (1-based) r's route to the IPv6 VIP goes through now.
    pub fn paths6(&self) -> Vec<usize> {
        self.paths_to("-6", &format!("{VIP6}/128"), ':')
    }

    /// The nodes of r's route to `route`: the third group of each next
    /// hop's address (groups split by `separator`) is its node's number.
    fn paths_to(&self, family: &str, route: &str, separator: char) -> Vec<usize> {
        let out = self.router.ip(&[family, "route", "show", route]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mut nodes: Vec<usize> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .filter_map(|w| w[1].split(separator).nth(2).and_then(|k| k.parse().ok()))
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// Waits until r's paths to the VIP are exactly `want`; how long it took.
    pub fn wait_paths(&self, want: &[usize], timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.paths() == want {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "r's paths to the VIP: {:?}, want {want:?} after {timeout:?}\n{}",
                self.paths(),
                self.birds()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn wait_return_paths(&self, count: usize, timeout: Duration) {
        let start = Instant::now();
        loop {
            let out = self.router.ip(&["-4", "route", "show", "table", "100"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if text.matches("via").count() == count {
                return;
            }
            assert!(start.elapsed() < timeout, "r's return paths (table 100): {text}\n{}", self.birds());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Adds server host `j` to both pools in every node's config, then has
    /// every node re-read its config (a fleet reload through `through`);
    /// returns once it takes new flows on every node.
    pub fn add_server(&mut self, j: usize, through: &str) {
        let name = format!("s{j}");
        for node in &mut self.nodes {
            let config = std::mem::take(&mut node.config);
            node.config =
                config.server("echo", &name, server_addr(j), TCP_PORT).server("uecho", &name, server_addr(j), UDP_PORT);
            if self.options.ipv6 {
                let config = std::mem::take(&mut node.config);
                node.config = config.server_set("echo", &name, "address6", format!("{}2", net6(20 + j)));
            }
            std::fs::write(&node.agent.config_path, node.config.text()).expect("rewrite a node's config");
        }
        self.configured = self.configured.max(j);
        let (ok, out, err) = self.node(through).agent.lb(&["reload"]);
        assert!(ok, "lb reload: {out}{err}");
        // Once every node has it, it takes new flows (on each node within
        // a read of the others' records).
        for node in &self.nodes {
            crate::bed::wait_for(&format!("{name} taking new flows on {}", node.name), Duration::from_secs(10), || {
                node.agent.pool("echo").servers.iter().any(|s| s.name == name && s.takes_new_flows)
            });
        }
    }

    /// Every BIRD's sessions and output, the router's first.
    fn birds(&self) -> String {
        let nodes = self.nodes.iter().map(|n| n.bird.report());
        std::iter::once(self.router_bird.report()).chain(nodes).collect::<Vec<_>>().join("\n")
    }

    pub fn node(&self, name: &str) -> &Node {
        self.nodes.iter().find(|n| n.name == name).expect("a node of the bed")
    }

    pub fn node_mut(&mut self, name: &str) -> &mut Node {
        self.nodes.iter_mut().find(|n| n.name == name).expect("a node of the bed")
    }
}

/// r: one eBGP session per node (BFD on); the VIPs' paths merged into one
/// ECMP route of the main table, the nodes' default routes into table 100.
/// BGP timers of every session of the bed. BIRD's defaults are for the
/// Internet: a failed connect is retried after 120 s, and a session that
/// failed on an error restarts after 60 s. So a session that failed once as
/// the bed started (a peer not listening yet, a BFD miss while the machine
/// was busy) stayed down past the bed's minute.
const LAB_TIMERS: &str = "connect retry time 1; error wait time 1, 5;";

fn router_config(nodes: usize, ipv6: bool) -> String {
    let mut text = String::from(
        "router id 10.240.9.1;\n\
         protocol device { scan time 10; }\n\
         protocol bfd { interface \"*\" { interval 100 ms; multiplier 3; }; }\n\
         protocol kernel vips { ipv4 { import none; export where net != 0.0.0.0/0; }; merge paths on; }\n\
         ipv4 table return_paths;\n\
         protocol pipe { table master4; peer table return_paths; import none; export where net = 0.0.0.0/0; }\n\
         protocol kernel to_nodes { kernel table 100; ipv4 { table return_paths; import none; export all; }; merge paths on; }\n\
         template bgp node { local as 65000; bfd on; LAB_TIMERS ipv4 { import all; export none; }; }\n",
    );
    for k in 1..=nodes {
        text += &format!("protocol bgp n{k} from node {{ neighbor 10.240.{k}.2 as {}; }}\n", 65000 + k);
    }
    if ipv6 {
        // The same for IPv6, over IPv6 sessions.
        text += "protocol kernel vips6 { ipv6 { import none; export where net != ::/0; }; merge paths on; }\n\
                 ipv6 table return_paths6;\n\
                 protocol pipe { table master6; peer table return_paths6; import none; export where net = ::/0; }\n\
                 protocol kernel to_nodes6 { kernel table 100; ipv6 { table return_paths6; import none; export all; }; merge paths on; }\n\
                 template bgp node6 { local as 65000; bfd on; LAB_TIMERS ipv6 { import all; export none; }; }\n";
        for k in 1..=nodes {
            text += &format!("protocol bgp n{k}v6 from node6 {{ neighbor {}2 as {}; }}\n", net6(k), 65000 + k);
        }
    }
    text.replace("LAB_TIMERS", LAB_TIMERS)
}

/// A node: its VIPs, and the default route for the servers' replies,
/// from the agent's include file (both withdrawn with the node).
fn node_config(k: usize, include: &std::path::Path, ipv6: bool) -> String {
    let up6 = if ipv6 {
        format!(
            "protocol bgp up6 {{\n  local {net}2 as {asn}; neighbor {net}1 as 65000; bfd on; LAB_TIMERS\n  \
             ipv6 {{ import none; export where proto = \"lb_vips6\" || proto = \"lb_return6\"; }};\n}}\n",
            net = net6(k),
            asn = 65000 + k
        )
    } else {
        String::new()
    };
    let node = format!(
        "router id 10.240.{k}.2;\n\
         protocol device {{ scan time 10; }}\n\
         protocol bfd {{ interface \"*\" {{ interval 100 ms; multiplier 3; }}; }}\n\
         include \"{}\";\n\
         protocol bgp up {{\n  local 10.240.{k}.2 as {}; neighbor 10.240.{k}.1 as 65000; bfd on; LAB_TIMERS\n  \
         ipv4 {{ import none; export where proto = \"lb_vips4\" || proto = \"lb_return4\"; }};\n}}\n",
        include.display(),
        65000 + k
    );
    (node + &up6).replace("LAB_TIMERS", LAB_TIMERS)
}

fn node_agent_config(
    k: usize,
    servers: usize,
    dir: &std::path::Path,
    bird_socket: &std::path::Path,
    include: &std::path::Path,
    endpoints: &[String],
) -> ConfigFile {
    let agent_dir = dir.join("agent");
    let mut config = ConfigFile::new()
        .set("interfaces", vec!["uplink".to_owned()])
        .set("api_socket", agent_dir.join("api.sock").display().to_string())
        .set("state_file", agent_dir.join("state.json").display().to_string())
        .service(VIP, TCP_PORT, "tcp", "echo")
        .service(VIP, UDP_PORT, "udp", "uecho")
        .set("cluster.node", format!("n{k}"))
        .set("cluster.endpoints", endpoints.to_vec())
        .set("cluster.timeout", "2s")
        .set("cluster.sync_address", sync_address(k).to_string())
        .set("bgp.bird_socket", bird_socket.display().to_string())
        .set("bgp.include_file", include.display().to_string())
        .set("bgp.return_route", true);
    for j in 1..=servers {
        config = config.server("echo", &format!("s{j}"), server_addr(j), TCP_PORT).server(
            "uecho",
            &format!("s{j}"),
            server_addr(j),
            UDP_PORT,
        );
    }
    config
}
