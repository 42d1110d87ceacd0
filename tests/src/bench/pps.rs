//! Section 2, packets per second on one core: frames generated in the kernel
//! (BPF_PROG_TEST_RUN live-frames mode) on a veth, for an existing flow,
//! against the trivial XDP_TX reflector on the same pair in the same run.
//!
//! Two topologies. One-armed (the target's): client and server behind the
//! same veth pair, so the balancer sends with XDP_TX like the reflector (and
//! like the reference balancer, which always does); only the programs' own
//! costs differ. Routed: the server behind a second pair, so the balancer
//! redirects, which costs more than XDP_TX whatever the program.
//!
//! The peers that receive the frames run `restore`: live mode recycles pages
//! without resetting them, so a program that rewrote a frame (ours does:
//! destination, TTL, MACs) would see its own output on a later run; restore
//! puts the original frame back and drops it. Both contenders pay for it.
//!
//! IPv6 beside IPv4: the same flow in IPv6, one-armed, its rate against the
//! reflector's in its own rounds, then as a ratio to IPv4's.
//!
//! Beside them, in IPv4, the least NAT any balancer does (`nat_floor`: the
//! same rewrite, one array read, no flow table), checked to send the very
//! frame the balancer sends: how close to the reflector a balancer can get.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    Ebpf,
    maps::Array,
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode},
};
use lb_common::Outcome;
use lb_userspace::datapath::load_test_program;

use super::{Report, Target, median, pin_to_cpu};
use crate::{
    config_file::ConfigFile,
    fixture::{FixtureBed, XDP_DROP, XDP_PASS, XDP_REDIRECT, XDP_TX, ifindex},
    netns::{NetNs, must, unique_prefix},
    packet::{ACK, Mac, Pkt, SYN},
};

const SECTION: &str = "2. Packets per second on one core (veth, live frames, existing flow)";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// The server when it sits behind the client's own veth (one-armed).
const SERVER_ONE_ARMED: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
/// The server behind a second veth pair (routed).
const SERVER_ROUTED: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2);
const SERVER6_ONE_ARMED: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 3);
const SERVER6_ROUTED: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
const CLIENT_MAC: Mac = [2, 0, 0, 0, 0, 2];
const LBC_MAC: Mac = [2, 0, 0, 0, 0, 1];
/// Frames per live-frames batch: small, so that the receivers (which run
/// between batches, on the same core) keep their rings from overflowing.
const LIVE_BATCH: u32 = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Topology {
    OneArmed,
    Routed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    /// The client and the VIP.
    fn ends(self) -> (IpAddr, IpAddr) {
        match self {
            Family::V4 => (CLIENT.into(), VIP.into()),
            Family::V6 => (CLIENT6.into(), VIP6.into()),
        }
    }
}

impl Topology {
    fn server(self, family: Family) -> IpAddr {
        match (self, family) {
            (Topology::OneArmed, Family::V4) => SERVER_ONE_ARMED.into(),
            (Topology::Routed, Family::V4) => SERVER_ROUTED.into(),
            (Topology::OneArmed, Family::V6) => SERVER6_ONE_ARMED.into(),
            (Topology::Routed, Family::V6) => SERVER6_ROUTED.into(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Topology::OneArmed => "one-armed (XDP_TX)",
            Topology::Routed => "routed to a second veth (redirect)",
        }
    }
}

fn config(vip: IpAddr, server: IpAddr) -> ConfigFile {
    ConfigFile::new().set("interfaces", vec!["lbc"]).service(vip, 80, "tcp", "web").server("web", "s1", server, 8080)
}

/// Loads `restore` with `frame` as the original and `verdict` to end with,
/// attached to `interface` of `ns`.
fn attach_restore(ns: &NetNs, interface: &str, frame: &[u8], verdict: u32) -> Ebpf {
    let mut ebpf = load_test_program("restore").expect("restore program");
    let mut stored = [0u8; 128];
    stored[..4].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    stored[4..4 + frame.len()].copy_from_slice(frame);
    stored[127] = verdict as u8;
    let mut map: Array<_, [u8; 128]> = Array::try_from(ebpf.map_mut("ORIGINAL_FRAME").expect("map")).expect("array");
    map.set(0, stored, 0).expect("store the frame");
    let program: &mut Xdp = ebpf.program_mut("restore").unwrap().try_into().unwrap();
    ns.run(|| program.attach(interface, XdpMode::default())).expect("attach restore");
    ebpf
}

/// Runs `program` on `frame` `repeat` times in live-frames mode, as if it
/// arrived on `ingress`; returns packets per second.
fn live_rate(program: &Xdp, frame: &[u8], ingress: u32, repeat: u32) -> f64 {
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ingress.to_ne_bytes());
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.ctx_in = Some(&ctx);
    opts.repeat = repeat;
    opts.attrs = TestRunAttrs::new().xdp_live_frames(LIVE_BATCH);
    let started = std::time::Instant::now();
    // Some kernels refuse this mode outright (EPERM even to root, as on
    // 2026-12-06's hosts): the section cannot be measured there, and says why.
    let result = program.test_run(opts).unwrap_or_else(|e| {
        let chain: Vec<String> =
            std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source()).map(|e| e.to_string()).collect();
        panic!("a live-frames test run (BPF_F_TEST_XDP_LIVE_FRAMES), which section 2 needs: {}", chain.join(": "))
    });
    // The kernel reports the mean time per run; fall back on the wall clock.
    let ns = if result.duration.as_nanos() > 0 {
        result.duration.as_nanos() as f64
    } else {
        started.elapsed().as_nanos() as f64 / repeat as f64
    };
    1e9 / ns
}

/// What [`measure`] found, medians over its rounds.
struct Rates {
    ours: f64,
    reflector: f64,
    /// Ours / the reflector's, round by round.
    ratio: f64,
    /// The share of frames that took the existing-flow path.
    on_path: f64,
    /// Rounds discarded because the receivers overflowed.
    discarded: usize,
    /// The least NAT any balancer does (`nat_floor`) / the reflector, where
    /// it was timed (IPv4).
    floor_ratio: Option<f64>,
}

/// Rates of the balancer and the reflector, and the median ratio, with the
/// receiving peers ending each frame with `receiver_verdict`.
fn measure(family: Family, topology: Topology, rounds: usize, repeat: u32, receiver_verdict: u32) -> Rates {
    let prefix = unique_prefix();
    let lb = NetNs::create(&format!("{prefix}-plb"));
    let client = NetNs::create(&format!("{prefix}-pc"));
    let server = NetNs::create(&format!("{prefix}-ps"));
    lb.sysctl("net.ipv4.ip_forward", "1");
    lb.sysctl("net.ipv6.conf.all.forwarding", "1");
    let pairs = [
        (
            "lbc",
            "c0",
            &client,
            ["10.0.0.1/24", "fd00::1/64"],
            ["10.0.0.2/24", "fd00::2/64"],
            "02:00:00:00:00:01",
            "02:00:00:00:00:02",
        ),
        (
            "lbs1",
            "s0",
            &server,
            ["10.0.1.1/24", "fd00:1::1/64"],
            ["10.0.1.2/24", "fd00:1::2/64"],
            "02:00:00:00:01:01",
            "02:00:00:00:01:02",
        ),
    ];
    let used = if topology == Topology::OneArmed { 1 } else { 2 };
    for &(name, peer, peer_ns, addr, peer_addr, mac, peer_mac) in &pairs[..used] {
        lb.ip(&[
            "link",
            "add",
            name,
            "address",
            mac,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "address",
            peer_mac,
            "netns",
            &peer_ns.name,
        ]);
        for (addr, peer_addr) in addr.iter().zip(peer_addr) {
            // No duplicate address detection: the addresses serve at once.
            lb.ip(&["addr", "add", addr, "dev", name, "nodad"]);
            peer_ns.ip(&["addr", "add", peer_addr, "dev", peer, "nodad"]);
        }
        for (ns, dev) in [(&lb, name), (peer_ns, peer)] {
            must(ns.command("ethtool").args(["-K", dev, "tx", "off"]));
            ns.ip(&["link", "set", dev, "up"]);
        }
    }
    let (client_addr, vip) = family.ends();
    let server_addr = topology.server(family);
    // The veth delivers to the client's peer whatever the MAC: one-armed,
    // its restore program receives the server's frames too.
    let (server_mac, server_dev) = match topology {
        Topology::OneArmed => ("02:00:00:00:00:03", "lbc"),
        Topology::Routed => ("02:00:00:00:01:02", "lbs1"),
    };
    for (addr, mac, dev) in [(client_addr, "02:00:00:00:00:02", "lbc"), (server_addr, server_mac, server_dev)] {
        lb.ip(&["neigh", "replace", &addr.to_string(), "lladdr", mac, "dev", dev, "nud", "permanent"]);
    }

    let frame = Pkt::tcp((client_addr, 40000), (vip, 80)).macs(CLIENT_MAC, LBC_MAC).flags(ACK).seq(1000, 1).build();
    let mut _restores = vec![attach_restore(&client, "c0", &frame, receiver_verdict)];
    if topology == Topology::Routed {
        _restores.push(attach_restore(&server, "s0", &frame, receiver_verdict));
    }
    lb.run(|| {
        pin_to_cpu(0);
        // The ingress and egress veths need an XDP program of their own for
        // live frames and redirects; the balancer runs by test run.
        let devs = &["lbc", "lbs1"][..used];
        let mut pass: Vec<Ebpf> = devs.iter().map(|_| load_test_program("pass").unwrap()).collect();
        for (ebpf, dev) in pass.iter_mut().zip(devs) {
            let p: &mut Xdp = ebpf.program_mut("pass").unwrap().try_into().unwrap();
            p.attach(dev, XdpMode::default()).expect("attach pass");
        }
        let bed = FixtureBed::load(&config(vip, server_addr));
        let syn = Pkt::tcp((client_addr, 40000), (vip, 80)).macs(CLIENT_MAC, LBC_MAC).flags(SYN).seq(999, 0).build();
        let sent = if topology == Topology::OneArmed { XDP_TX } else { XDP_REDIRECT };
        assert_eq!(bed.run_frame(&syn, "lbc").0, sent, "the flow is created, and sent as the topology expects");
        let reflect = load_test_program("reflect").unwrap();
        let reflect: &Xdp = reflect.program("reflect").unwrap().try_into().unwrap();
        // The floor, where the frame is IPv4: to the same server, out of the
        // same interface, checked to send the very frame the balancer does.
        let floor = (family == Family::V4).then(|| {
            let (server_mac, lb_mac, out) = match topology {
                Topology::OneArmed => ([2, 0, 0, 0, 0, 3], LBC_MAC, 0),
                Topology::Routed => ([2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 1, 1], ifindex("lbs1")),
            };
            let IpAddr::V4(server) = server_addr else { unreachable!("an IPv4 family's server") };
            let mut target = [0u8; 24];
            target[0..4].copy_from_slice(&server.octets());
            target[4..6].copy_from_slice(&8080u16.to_be_bytes());
            target[6..12].copy_from_slice(&server_mac);
            target[12..18].copy_from_slice(&lb_mac);
            target[20..24].copy_from_slice(&out.to_ne_bytes());
            let mut ebpf = load_test_program("nat_floor").expect("nat_floor program");
            let mut map: Array<_, [u8; 24]> =
                Array::try_from(ebpf.map_mut("FLOOR_TARGET").expect("map")).expect("array");
            map.set(0, target, 0).expect("the floor's target");
            let program: &Xdp = ebpf.program("nat_floor").unwrap().try_into().unwrap();
            let (verdict, out, _) = crate::fixture::test_run(program, &frame, ifindex("lbc"));
            assert_eq!((verdict, out), bed.run_frame(&frame, "lbc"), "nat_floor sends what the balancer sends");
            ebpf
        });
        let floor = floor.as_ref().map(|ebpf| -> &Xdp { ebpf.program("nat_floor").unwrap().try_into().unwrap() });
        let lbc = ifindex("lbc");
        let (mut ours, mut theirs, mut ratios, mut on_path) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut floor_ratios = Vec::new();
        let mut discarded = 0;
        while ours.len() < rounds {
            let reflected = live_rate(reflect, &frame, lbc, repeat);
            let floor_rate = floor.map(|floor| live_rate(floor, &frame, lbc, repeat));
            let before = bed.outcomes()[Outcome::ForwardFlow.label()];
            let balanced = live_rate(bed.dp().program(), &frame, lbc, repeat);
            let forwarded = bed.outcomes()[Outcome::ForwardFlow.label()] - before;
            // A frame the receiver's ring had no room for goes back to the page
            // pool unrestored, and a later run sees it rewritten (and passes it
            // to the stack, which costs more). A round where that was more than
            // marginal measured something else: it is discarded and run again.
            if (forwarded as f64) < 0.99 * repeat as f64 {
                discarded += 1;
                assert!(
                    discarded <= 2 * rounds,
                    "receivers overflowed in {discarded} rounds; last: {forwarded} of {repeat}"
                );
                continue;
            }
            // Kept with the round: a discarded round's floor goes with it.
            floor_ratios.extend(floor_rate.map(|rate| rate / reflected));
            on_path.push(forwarded as f64 / repeat as f64);
            ours.push(balanced);
            theirs.push(reflected);
            ratios.push(balanced / reflected);
        }
        Rates {
            ours: median(&mut ours),
            reflector: median(&mut theirs),
            ratio: median(&mut ratios),
            on_path: median(&mut on_path),
            discarded,
            floor_ratio: (!floor_ratios.is_empty()).then(|| median(&mut floor_ratios)),
        }
    })
}

pub fn run(report: &mut Report, quick: bool) {
    let (rounds, repeat) = if quick { (3, 1_000_000) } else { (9, 1_000_000) };
    let note = |receiver: &str| format!("{receiver}; median of {rounds} rounds x {repeat} frames");
    // Receivers that take each frame into their stack, like a host (and like
    // the pass programs of the reference measurement).
    let v4 = measure(Family::V4, Topology::OneArmed, rounds, repeat, XDP_PASS);
    let n = format!(
        "{}; {:.1}% of frames on the path; {} rounds discarded (receiver overflow)",
        note("receivers pass frames to their stack"),
        v4.on_path * 100.0,
        v4.discarded
    );
    let one_armed = Topology::OneArmed.label();
    report.add(SECTION, format!("balancer, existing flow, {one_armed}"), v4.ours / 1e6, "Mpps", None, n.clone());
    report.add(SECTION, "trivial XDP_TX reflector", v4.reflector / 1e6, "Mpps", None, n.clone());
    report.add(
        SECTION,
        format!("balancer / reflector, {one_armed}"),
        v4.ratio,
        "x",
        // Issue 24: within 5% of the trivial reflector's rate.
        Some(Target::AtLeast(0.95)),
        format!("{n}; reference balancer (always XDP_TX): 0.65x"),
    );
    floor_figure(report, one_armed, &v4, &n);
    // The same flow in IPv6, one-armed: against the reflector in its own
    // rounds, then against IPv4's ratio (the host's speed cancels out).
    let v6 = measure(Family::V6, Topology::OneArmed, rounds, repeat, XDP_PASS);
    let n6 =
        format!("{}; {:.1}% of frames on the path", note("receivers pass frames to their stack"), v6.on_path * 100.0);
    report.add(
        SECTION,
        format!("IPv6 balancer / reflector, {one_armed}"),
        v6.ratio,
        "x",
        None,
        format!("{n6}; {:.2} vs {:.2} Mpps", v6.ours / 1e6, v6.reflector / 1e6),
    );
    report.add(
        SECTION,
        format!("IPv6 / IPv4 packets per second, {one_armed}, each against the reflector"),
        v6.ratio / v4.ratio,
        "x",
        Some(Target::AtLeast(0.95)),
        format!("each family's balancer / reflector ratio: {:.2} / {:.2}", v6.ratio, v4.ratio),
    );
    // The same receivers, the server behind a second veth: a redirect.
    let routed = measure(Family::V4, Topology::Routed, rounds, repeat, XDP_PASS);
    let n = format!(
        "{}; {:.1}% of frames on the path",
        note("receivers pass frames to their stack"),
        routed.on_path * 100.0
    );
    report.add(
        SECTION,
        format!("balancer / reflector, {}", Topology::Routed.label()),
        routed.ratio,
        "x",
        Some(Target::AtLeast(0.95)),
        format!("{n}; {:.2} vs {:.2} Mpps", routed.ours / 1e6, routed.reflector / 1e6),
    );
    floor_figure(report, Topology::Routed.label(), &routed, &n);
    // Receivers that drop at once: the balancer's own cost weighs more.
    let dropping = measure(Family::V4, Topology::OneArmed, rounds, repeat, XDP_DROP);
    let n = format!("{}; {:.1}% of frames on the path", note("receivers drop at once"), dropping.on_path * 100.0);
    report.add(
        SECTION,
        format!("balancer / reflector, {one_armed}, dropping receivers"),
        dropping.ratio,
        "x",
        None,
        format!("{n}; {:.2} vs {:.2} Mpps", dropping.ours / 1e6, dropping.reflector / 1e6),
    );
    floor_figure(report, &format!("{one_armed}, dropping receivers"), &dropping, &n);
}

/// The least NAT's rate against the reflector's, beside the balancer's.
fn floor_figure(report: &mut Report, topology: &str, rates: &Rates, note: &str) {
    let Some(floor) = rates.floor_ratio else { return };
    report.add(
        SECTION,
        format!("least NAT (nat_floor) / reflector, {topology}"),
        floor,
        "x",
        None,
        format!(
            "{note}; parse, one array read, rewrite, send, no flow table: the ceiling of any balancer's rate \
             here; the balancer / it {:.2}",
            rates.ratio / floor
        ),
    );
}
