//! Datapath fixtures in the Katran style: packets in, expected verdict and
//! exact packet out, expected counter changes, run in order through
//! BPF_PROG_TEST_RUN against the real XDP program, with control-plane steps
//! (the agent's own code) between phases.
//!
//! The fixture namespace has real interfaces, routes and neighbours, so the
//! program's FIB lookups give known interfaces and MAC addresses:
//! `toclient` 10.0.0.1 (client 10.0.0.2), `toserver` 10.0.1.1, 10.0.2.1,
//! 10.0.3.1 (servers 10.0.1.2 and 10.0.2.2 have neighbour entries, 10.0.3.2
//! has none).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use aya::programs::{TestRun, TestRunOptions};
use lb_common::{Flow, FlowKey, Outcome, ServerStats};
use lb_userspace::{
    agent::{
        owner::{ControlError, Owner},
        reload::ReloadOptions,
        runtime::now_ms,
    },
    config::Config,
    datapath::{
        Datapath, counters as stats,
        ops::Live,
        sweep::{self, SweepReport},
        tcp_reset::ResetSender,
    },
    model::{Change, DisableMode, ReloadReport},
    servers::{Saved, ServerTable, ServiceSlot, plan::Tables},
};

use crate::{
    config_file::ConfigFile,
    netns::NetNs,
    packet::{Mac, Pkt},
    topology::attach_pass,
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const XDP_TX: u32 = 3;
pub const XDP_REDIRECT: u32 = 4;

pub const TOCLIENT_MAC: Mac = [2, 0, 0, 0, 0, 1];
pub const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 2];
pub const TOSERVER_MAC: Mac = [2, 0, 0, 0, 1, 1];
pub const SERVER1_MAC: Mac = [2, 0, 0, 0, 1, 2];
pub const SERVER2_MAC: Mac = [2, 0, 0, 0, 2, 2];

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const SERVER1: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
pub const SERVER2: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
/// Routed, but no neighbour entry.
pub const SERVER_UNRESOLVED: Ipv4Addr = Ipv4Addr::new(10, 0, 3, 2);

/// The same hosts' IPv6 addresses (ULA), on the same interfaces.
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
pub const SERVER1_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
pub const SERVER2_6: Ipv6Addr = Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2);

/// The namespace fixtures run in.
pub struct FixtureNet {
    // Dropped before the namespace.
    _pass: Vec<aya::Ebpf>,
    pub ns: NetNs,
}

impl FixtureNet {
    /// Runs `f` inside the fixture namespace.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.ns.run(f)
    }
}

/// Builds the fixture namespace. Its interfaces carry a pass program: the
/// kernel takes a test run's ingress interface only if XDP is set up on it.
pub fn fixture_netns() -> FixtureNet {
    let ns = NetNs::create(&format!("{}-fix", crate::netns::unique_prefix()));
    ns.sysctl("net.ipv4.ip_forward", "1");
    // The FIB answers IPv6 lookups only where forwarding is on.
    ns.sysctl("net.ipv6.conf.all.forwarding", "1");
    ns.ip(&["link", "add", "toclient", "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", "clientpeer"]);
    ns.ip(&["link", "add", "toserver", "address", "02:00:00:00:01:01", "type", "veth", "peer", "name", "serverpeer"]);
    for dev in ["toclient", "clientpeer", "toserver", "serverpeer"] {
        ns.ip(&["link", "set", dev, "up"]);
    }
    ns.ip(&["addr", "add", "10.0.0.1/24", "dev", "toclient"]);
    for net in ["10.0.1.1/24", "10.0.2.1/24", "10.0.3.1/24"] {
        ns.ip(&["addr", "add", net, "dev", "toserver"]);
    }
    for (net, dev) in [("fd00::1/64", "toclient"), ("fd00:1::1/64", "toserver"), ("fd00:2::1/64", "toserver")] {
        ns.ip(&["-6", "addr", "add", net, "dev", dev, "nodad"]);
    }
    for (addr, mac, dev) in [
        ("10.0.0.2", "02:00:00:00:00:02", "toclient"),
        ("10.0.1.2", "02:00:00:00:01:02", "toserver"),
        ("10.0.2.2", "02:00:00:00:02:02", "toserver"),
        ("fd00::2", "02:00:00:00:00:02", "toclient"),
        ("fd00:1::2", "02:00:00:00:01:02", "toserver"),
        ("fd00:2::2", "02:00:00:00:02:02", "toserver"),
    ] {
        ns.ip(&["neigh", "replace", addr, "lladdr", mac, "dev", dev, "nud", "permanent"]);
    }
    let pass = ["toclient", "toserver"].iter().map(|dev| attach_pass(&ns, dev)).collect();
    FixtureNet { _pass: pass, ns }
}

/// An expected counter change.
#[derive(Clone, Debug)]
pub enum Count {
    Outcome(Outcome, u64),
    /// (pool, server): flows created on it.
    NewFlows(&'static str, &'static str, u64),
    /// (pool, server): packets forwarded to it.
    ToServer(&'static str, &'static str, u64),
    /// (pool, server): its replies forwarded to clients.
    FromServer(&'static str, &'static str, u64),
}

#[derive(Clone, Debug)]
pub enum Expect {
    /// The frame must come out exactly as it went in.
    Unchanged,
    Packet(Vec<u8>),
}

#[derive(Clone, Debug)]
pub struct Case {
    pub name: &'static str,
    pub input: Vec<u8>,
    /// Interface the frame arrives on.
    pub ingress: &'static str,
    pub verdict: u32,
    pub output: Expect,
    /// Every outcome counter not listed must stay unchanged.
    pub counts: Vec<Count>,
}

/// The real program with private maps, driven by the agent's own owner of
/// the state (config, server states, terminations).
pub struct FixtureBed {
    pub owner: Owner<Live>,
}

impl FixtureBed {
    /// Must be called inside the fixture namespace (see [`fixture_netns`]).
    pub fn load(config: &ConfigFile) -> FixtureBed {
        let mut config = Config::parse(&config.text(), Path::new("fixture.toml")).expect("fixture config");
        config.state_file = state_file_path();
        let sizes = lb_userspace::daemon::map_sizes(&config);
        let mut dp = Datapath::load_unpinned(sizes).expect("load XDP program");
        let tables = Tables::apply(&mut dp, &config, Saved::default(), now_ms()).expect("apply config");
        let resets = ResetSender::new().expect("raw socket");
        FixtureBed { owner: Owner::new(config, Live::new(dp, resets), tables.servers, tables.services) }
    }

    pub fn dp(&self) -> &Datapath {
        &self.owner.dp().dp
    }

    pub fn dp_mut(&mut self) -> &mut Datapath {
        &mut self.owner.dp_mut().dp
    }

    pub fn servers(&self) -> &ServerTable {
        self.owner.servers()
    }

    pub fn services(&self) -> &[ServiceSlot] {
        self.owner.services()
    }

    pub fn config(&self) -> &Config {
        self.owner.config()
    }

    /// Control-plane step: reload another config, as the agent does
    /// (forced: the guard is not what these fixtures test).
    pub fn apply(&mut self, config: &ConfigFile) -> ReloadReport {
        let mut config = Config::parse(&config.text(), Path::new("fixture.toml")).expect("fixture config");
        config.state_file = self.config().state_file.clone();
        let options = ReloadOptions { force: true, ..ReloadOptions::default() };
        self.owner.reload(config, options, now_ms()).expect("reload")
    }

    /// The owner's sweep (which also forgets what a removal left behind).
    pub fn owner_sweep(&mut self) {
        self.owner.sweep(now_ms());
    }

    /// Control-plane step: an operator's disable, as the agent executes it.
    pub fn disable(
        &mut self,
        pool: &str,
        servers: &[&str],
        mode: DisableMode,
        force: bool,
    ) -> Result<Vec<Change>, ControlError> {
        let names: Vec<String> = servers.iter().map(|s| s.to_string()).collect();
        self.owner.disable(pool, &names, mode, force, now_ms())
    }

    /// One sweep of the flow table at `now_ns` on the datapath's clock.
    pub fn sweep(&self, now_ns: u64) -> SweepReport {
        sweep::sweep(&self.dp().maps, self.servers(), self.services(), &self.config().flows, now_ns).expect("sweep")
    }

    pub fn server_id(&self, pool: &str, server: &str) -> u32 {
        self.servers().find(pool, server).unwrap_or_else(|| panic!("no server {pool}/{server}")).id
    }

    pub fn server_stats(&self, pool: &str, server: &str) -> ServerStats {
        stats::server(&self.dp().maps, self.server_id(pool, server)).expect("server stats")
    }

    pub fn outcomes(&self) -> BTreeMap<&'static str, u64> {
        stats::outcomes(&self.dp().maps).expect("outcome counters")
    }

    pub fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.dp().maps.flows.get(key).expect("read the flow table")
    }

    pub fn flow_count(&self) -> usize {
        self.dp().maps.flows.len().expect("read the flow table")
    }

    pub fn reverse_nat_count(&self) -> usize {
        self.dp().maps.reverse_nat.keys().count()
    }

    /// Writes a server's state code straight into the server table: the
    /// first step of a disable without the flow purge that follows, so tests
    /// can see how the datapath treats the packets of its flows.
    pub fn write_server_state(&mut self, pool: &str, server: &str, code: u8) {
        let id = self.server_id(pool, server);
        let mut entry = self.dp().maps.servers.get(&id, 0).expect("server entry");
        entry.state = code;
        self.dp_mut().maps.servers.set(id, entry, 0).expect("write server entry");
    }

    /// The resets the datapath asked the agent to send, oldest first.
    pub fn take_reset_requests(&mut self) -> Vec<lb_common::ResetRequest> {
        let mut out = Vec::new();
        while let Some(item) = self.dp_mut().maps.reset_requests.next() {
            out.push(*bytemuck::from_bytes::<lb_common::ResetRequest>(&item[..16]));
        }
        out
    }

    /// The raw records of the resets the datapath asked for (IPv4 and
    /// IPv6 ones differ in size), oldest first.
    pub fn take_reset_request_records(&mut self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(item) = self.dp_mut().maps.reset_requests.next() {
            out.push(item.to_vec());
        }
        out
    }

    /// Runs one frame through the program; returns the verdict and the frame after it.
    pub fn run_frame(&self, frame: &[u8], ingress: &str) -> (u32, Vec<u8>) {
        // What the agent's clock thread does: the datapath sees the time now.
        self.dp().maps.clock.publish().expect("publish the datapath's clock");
        let (verdict, out, _) = test_run(self.dp().program(), frame, ifindex(ingress));
        (verdict, out)
    }

    /// Runs the cases in order; panics at the first one that fails, naming it.
    pub fn run(&self, cases: &[Case]) {
        for case in cases {
            let outcomes_before = self.outcomes();
            let servers_before = self.server_counters(&case.counts);
            let (verdict, out) = self.run_frame(&case.input, case.ingress);
            assert_eq!(
                verdict,
                case.verdict,
                "case '{}': verdict {}, expected {}",
                case.name,
                verdict_name(verdict),
                verdict_name(case.verdict)
            );
            let expected = match &case.output {
                Expect::Unchanged => &case.input,
                Expect::Packet(p) => p,
            };
            if &out != expected {
                panic!("case '{}': output packet differs\n{}", case.name, diff(expected, &out));
            }
            let outcomes_after = self.outcomes();
            for &outcome in Outcome::ALL {
                let delta = outcomes_after[outcome.label()] - outcomes_before[outcome.label()];
                let want: u64 = case
                    .counts
                    .iter()
                    .map(|c| match c {
                        Count::Outcome(o, n) if *o == outcome => *n,
                        _ => 0,
                    })
                    .sum();
                assert_eq!(
                    delta,
                    want,
                    "case '{}': counter {} changed by {delta}, expected {want}",
                    case.name,
                    outcome.label()
                );
            }
            let servers_after = self.server_counters(&case.counts);
            for ((count, before), after) in case.counts.iter().zip(servers_before).zip(servers_after) {
                let (Some(before), Some(after)) = (before, after) else {
                    continue;
                };
                let (pool, server, want, field, name) = match count {
                    Count::NewFlows(p, s, n) => (p, s, n, after.new_flows - before.new_flows, "new flows"),
                    Count::ToServer(p, s, n) => (p, s, n, after.packets_to - before.packets_to, "packets to"),
                    Count::FromServer(p, s, n) => (p, s, n, after.packets_from - before.packets_from, "packets from"),
                    Count::Outcome(..) => continue,
                };
                assert_eq!(
                    field, *want,
                    "case '{}': {name} {pool}/{server} changed by {field}, expected {want}",
                    case.name
                );
            }
        }
    }

    fn server_counters(&self, counts: &[Count]) -> Vec<Option<ServerStats>> {
        counts
            .iter()
            .map(|c| match c {
                Count::NewFlows(p, s, _) | Count::ToServer(p, s, _) | Count::FromServer(p, s, _) => {
                    Some(self.server_stats(p, s))
                }
                Count::Outcome(..) => None,
            })
            .collect()
    }
}

impl Drop for FixtureBed {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config().state_file);
    }
}

/// A state file of this fixture's own.
fn state_file_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-fixture-state.json", crate::netns::unique_prefix()))
}

/// Runs `frame` once through `program` as if it arrived on `ingress_ifindex`;
/// returns the verdict, the frame after it, and the kernel's timing of the run.
pub fn test_run(
    program: &aya::programs::Xdp,
    frame: &[u8],
    ingress_ifindex: u32,
) -> (u32, Vec<u8>, std::time::Duration) {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
    let mut out = vec![0u8; frame.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(&mut out);
    opts.ctx_in = Some(&ctx);
    let result =
        program.test_run(opts).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN of a {}-byte frame: {e:?}", frame.len()));
    out.truncate(result.data_size_out as usize);
    (result.return_value, out, result.duration)
}

/// The same frame after the balancer: to `server`, out of `toserver`.
pub fn at_server(p: &Pkt, server: (impl Into<IpAddr>, u16), server_mac: [u8; 6]) -> Vec<u8> {
    p.clone().addresses((p.src, p.sport), server).macs(TOSERVER_MAC, server_mac).ttl(p.ttl - 1).build()
}

/// A server's reply, back at the client as if from the VIP.
pub fn at_client(p: &Pkt, vip: (impl Into<IpAddr>, u16)) -> Vec<u8> {
    p.clone().addresses(vip, (p.dst, p.dport)).macs(TOCLIENT_MAC, CLIENT_MAC).ttl(p.ttl - 1).build()
}

pub fn pass(name: &'static str, input: Vec<u8>, outcome: Outcome) -> Case {
    Case {
        name,
        input,
        ingress: "toclient",
        verdict: XDP_PASS,
        output: Expect::Unchanged,
        counts: vec![Count::Outcome(outcome, 1)],
    }
}

pub fn drop(name: &'static str, input: Vec<u8>, outcome: Outcome) -> Case {
    Case {
        name,
        input,
        ingress: "toclient",
        verdict: XDP_DROP,
        output: Expect::Unchanged,
        counts: vec![Count::Outcome(outcome, 1)],
    }
}

pub fn forward(
    name: &'static str,
    input: &Pkt,
    server: (impl Into<IpAddr>, u16),
    mac: [u8; 6],
    pool: &'static str,
    srv: &'static str,
    new: bool,
) -> Case {
    let outcome = if new { Outcome::ForwardNewFlow } else { Outcome::ForwardFlow };
    Case {
        name,
        input: input.build(),
        ingress: "toclient",
        verdict: XDP_REDIRECT,
        output: Expect::Packet(at_server(input, server, mac)),
        counts: vec![Count::Outcome(outcome, 1), Count::NewFlows(pool, srv, new as u64), Count::ToServer(pool, srv, 1)],
    }
}

pub fn reply(
    name: &'static str,
    input: &Pkt,
    vip: (impl Into<IpAddr>, u16),
    pool: &'static str,
    srv: &'static str,
) -> Case {
    Case {
        name,
        input: input.build(),
        ingress: "toserver",
        verdict: XDP_REDIRECT,
        output: Expect::Packet(at_client(input, vip)),
        counts: vec![Count::Outcome(Outcome::ForwardReply, 1), Count::FromServer(pool, srv, 1)],
    }
}

/// An ICMP error from the client's side (`error`) sent on to a flow's
/// server: out of `toserver` as `at_server` is (`expected`, addressed to
/// the server, one hop further, with the server's MAC).
pub fn icmp_to_server(name: &'static str, error: &Pkt, expected: &Pkt, server_mac: [u8; 6]) -> Case {
    Case {
        name,
        input: error.build(),
        ingress: "toclient",
        verdict: XDP_REDIRECT,
        output: Expect::Packet(expected.clone().macs(TOSERVER_MAC, server_mac).ttl(expected.ttl - 1).build()),
        counts: vec![Count::Outcome(Outcome::ForwardIcmpTooBig, 1)],
    }
}

/// The index of an interface of the current namespace.
pub fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: valid C string.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert!(index != 0, "no interface {name} in this namespace");
    index
}

pub fn verdict_name(v: u32) -> &'static str {
    match v {
        XDP_ABORTED => "XDP_ABORTED",
        XDP_DROP => "XDP_DROP",
        XDP_PASS => "XDP_PASS",
        XDP_TX => "XDP_TX",
        XDP_REDIRECT => "XDP_REDIRECT",
        _ => "unknown",
    }
}

fn diff(expected: &[u8], got: &[u8]) -> String {
    let first = expected.iter().zip(got).position(|(a, b)| a != b).unwrap_or(expected.len().min(got.len()));
    format!(
        "length expected {} got {}; first difference at byte {first}\nexpected: {}\n     got: {}",
        expected.len(),
        got.len(),
        hex(expected),
        hex(got)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.chunks(2).map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>()).collect::<Vec<_>>().join(" ")
}

/// The flow-table key of a client's flow to a VIP.
pub fn flow_key(client: (Ipv4Addr, u16), vip: (Ipv4Addr, u16), proto: u8) -> FlowKey {
    FlowKey::new(
        u32::from_ne_bytes(client.0.octets()),
        u32::from_ne_bytes(vip.0.octets()),
        client.1.to_be(),
        vip.1.to_be(),
        proto,
    )
}

/// [`flow_key`] in IPv6.
pub fn flow_key6(client: (Ipv6Addr, u16), vip: (Ipv6Addr, u16), proto: u8) -> lb_common::FlowKey6 {
    use lb_userspace::datapath::family::addr6;
    lb_common::FlowKey6::new(addr6(client.0), addr6(vip.0), client.1.to_be(), vip.1.to_be(), proto)
}
