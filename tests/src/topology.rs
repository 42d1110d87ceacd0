//! The test bed: a client namespace, the load balancer's namespace and N
//! server namespaces, wired with veth pairs.
//!
//! ```text
//!  client ns            lb ns                     server ns i
//!  c0 10.0.0.2 ---- lbc 10.0.0.1
//!                       lbs<i> 10.0.<i>.1 ---- s0 10.0.<i>.2
//! ```
//! The client reaches the VIP through the balancer; each server routes the
//! client subnet back through it (NAT mode: replies must pass the balancer).

use std::net::{Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    programs::{Xdp, XdpMode},
};

use crate::{
    config_file::ConfigFile,
    netns::{NetNs, must, unique_prefix},
};

pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
/// The IPv6 VIP (ULA), routed by the client to the balancer like [`VIP`].
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

pub fn server_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 0, i as u8, 2)
}

/// Server `i`'s IPv6 address (every host is dual stack: ULA beside IPv4).
pub fn server_addr6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, i as u16, 0, 0, 0, 0, 0, 2)
}

pub struct ServerHost {
    /// "s1", "s2", ...: also the server's name in the configs made here.
    pub name: String,
    pub addr: Ipv4Addr,
    pub addr6: Ipv6Addr,
    pub ns: NetNs,
}

pub struct Topology {
    /// Unique per topology: names the namespaces and the agent's instance.
    pub prefix: String,
    // Dropped first: the pass programs on the peers, then the namespaces.
    _pass_programs: Vec<Ebpf>,
    pub client: NetNs,
    pub lb: NetNs,
    pub servers: Vec<ServerHost>,
}

/// A service for [`Topology::config`]: a VIP port served by every server
/// host, with one weight per server.
pub struct ServiceSpec {
    pub port: u16,
    pub protocol: &'static str,
    pub server_port: u16,
    pub weights: Vec<u32>,
}

impl Topology {
    pub fn new(n_servers: usize) -> Topology {
        assert!((1..=250).contains(&n_servers));
        let prefix = unique_prefix();
        let client = NetNs::create(&format!("{prefix}-c"));
        let lb = NetNs::create(&format!("{prefix}-lb"));
        let mut topology =
            Topology { prefix: prefix.clone(), _pass_programs: Vec::new(), client, lb, servers: Vec::new() };
        // Before the interfaces exist, so they inherit it: the balancer
        // forwards packets whose source (a VIP) it has no route back to.
        topology.lb.sysctl("net.ipv4.ip_forward", "1");
        topology.lb.sysctl("net.ipv4.conf.all.rp_filter", "0");
        topology.lb.sysctl("net.ipv4.conf.default.rp_filter", "0");
        topology.lb.sysctl("net.ipv6.conf.all.forwarding", "1");

        link(&topology.lb, "lbc", "10.0.0.1/24", &topology.client, "c0", "10.0.0.2/24");
        link6(&topology.lb, "lbc", "fd00::1/64", &topology.client, "c0", "fd00::2/64");
        topology.client.ip(&["route", "add", &format!("{VIP}/32"), "via", "10.0.0.1"]);
        topology.client.ip(&["-6", "route", "add", &format!("{VIP6}/128"), "via", "fd00::1"]);
        for i in 1..=n_servers {
            let ns = NetNs::create(&format!("{prefix}-s{i}"));
            link(&topology.lb, &format!("lbs{i}"), &format!("10.0.{i}.1/24"), &ns, "s0", &format!("10.0.{i}.2/24"));
            link6(
                &topology.lb,
                &format!("lbs{i}"),
                &format!("fd00:{i:x}::1/64"),
                &ns,
                "s0",
                &format!("{}/64", server_addr6(i)),
            );
            ns.ip(&["route", "add", "10.0.0.0/24", "via", &format!("10.0.{i}.1")]);
            ns.ip(&["-6", "route", "add", "fd00::/64", "via", &format!("fd00:{i:x}::1")]);
            let (addr, addr6) = (server_addr(i), server_addr6(i));
            topology.servers.push(ServerHost { name: format!("s{i}"), addr, addr6, ns });
        }
        // Peers that receive frames the balancer redirects need an XDP program.
        let pass = attach_pass(&topology.client, "c0");
        topology._pass_programs.push(pass);
        for s in &topology.servers {
            let pass = attach_pass(&s.ns, "s0");
            topology._pass_programs.push(pass);
        }
        topology
    }

    /// The balancer's interfaces, client side first.
    pub fn lb_interfaces(&self) -> Vec<String> {
        let mut names = vec!["lbc".to_owned()];
        names.extend((1..=self.servers.len()).map(|i| format!("lbs{i}")));
        names
    }

    pub fn instance(&self) -> &str {
        &self.prefix
    }

    /// The test's own directory for the agent's files (config, log, API
    /// socket, state file); the agent guard removes it.
    pub fn dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(&self.prefix)
    }

    /// An agent config for this topology: its instance, interfaces, socket
    /// and state file, then pool "p<port>" per service, with servers s1..sN.
    /// Services and settings are added to it with `ConfigFile`'s methods.
    pub fn config(&self, services: &[ServiceSpec]) -> ConfigFile {
        let dir = self.dir();
        let mut config = ConfigFile::new()
            .set("instance", self.instance())
            .set("interfaces", self.lb_interfaces())
            .set("api_socket", dir.join("api.sock").display().to_string())
            .set("state_file", dir.join("state.json").display().to_string());
        for s in services {
            let pool = format!("p{}", s.port);
            config = config.service(VIP, s.port, s.protocol, &pool);
            assert_eq!(s.weights.len(), self.servers.len(), "one weight per server");
            for (host, weight) in self.servers.iter().zip(&s.weights) {
                config = config
                    .server(&pool, &host.name, host.addr, s.server_port)
                    .server_set(&pool, &host.name, "weight", *weight);
            }
        }
        config
    }

    /// This topology's server `name`, in `pool` of `config`, at `port`.
    /// [`Topology::config`] in dual stack: every service also on [`VIP6`],
    /// every server also by its IPv6 address (`address6`), one state.
    pub fn config_dual_stack(&self, services: &[ServiceSpec]) -> ConfigFile {
        let mut config = self.config(services);
        for s in services {
            let pool = format!("p{}", s.port);
            config = config.service(VIP6, s.port, s.protocol, &pool);
            for host in &self.servers {
                config = config.server_set(&pool, &host.name, "address6", host.addr6.to_string());
            }
        }
        config
    }

    pub fn with_server(&self, config: ConfigFile, pool: &str, name: &str, port: u16) -> ConfigFile {
        config.server(pool, name, self.server(name).addr, port)
    }

    pub fn server(&self, name: &str) -> &ServerHost {
        self.servers.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no server host {name}"))
    }
}

/// IPv6 addresses on a linked pair (no duplicate detection: the test's own
/// namespaces, and usable at once).
fn link6(a: &NetNs, name_a: &str, addr_a: &str, b: &NetNs, name_b: &str, addr_b: &str) {
    a.ip(&["-6", "addr", "add", addr_a, "dev", name_a, "nodad"]);
    b.ip(&["-6", "addr", "add", addr_b, "dev", name_b, "nodad"]);
}

/// A veth pair from `a` (name_a, addr_a) to `b` (name_b, addr_b), both up,
/// with transmit checksum offload off: a frame redirected by XDP loses the
/// "checksum still to do" mark, so senders must fill checksums in (as a NIC
/// would have before the frame reached the wire).
pub fn link(a: &NetNs, name_a: &str, addr_a: &str, b: &NetNs, name_b: &str, addr_b: &str) {
    a.ip(&["link", "add", name_a, "type", "veth", "peer", "name", name_b, "netns", &b.name]);
    a.ip(&["addr", "add", addr_a, "dev", name_a]);
    b.ip(&["addr", "add", addr_b, "dev", name_b]);
    for (ns, name) in [(a, name_a), (b, name_b)] {
        must(ns.command("ethtool").args(["-K", name, "tx", "off"]));
        ns.ip(&["link", "set", "dev", name, "up"]);
    }
}

/// Attaches the trivial pass program; detached when the returned object drops.
pub fn attach_pass(ns: &NetNs, interface: &str) -> Ebpf {
    let mut ebpf = lb_userspace::datapath::load_test_program("pass").expect("load pass program");
    let program: &mut Xdp = ebpf.program_mut("pass").expect("pass program").try_into().expect("XDP program");
    ns.run(|| program.attach(interface, XdpMode::default()))
        .unwrap_or_else(|e| panic!("attach pass program to {interface} in {}: {e}", ns.name));
    ebpf
}
