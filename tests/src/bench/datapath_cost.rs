//! Section 1, the XDP program's own cost per packet, path by path, through
//! BPF_PROG_TEST_RUN: one call per fresh packet (the balancer rewrites
//! packets, so `repeat` would measure a different path after the first run),
//! the thread pinned to one CPU, minus a trivial program's cost measured the
//! same way in the same round. Each path is checked with the counters.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{FlowKey, Outcome, proto, server_state};
use lb_userspace::datapath::load_test_program;

use super::{Report, Target, client, fill_flows, median, pin_to_cpu};
use crate::{
    config_file::ConfigFile,
    fixture::{
        CLIENT_MAC, FixtureBed, SERVER1, SERVER1_6, SERVER2, SERVER2_6, TOCLIENT_MAC, fixture_netns, ifindex, test_run,
    },
    packet::{ACK, Pkt, SYN},
};

const SECTION: &str = "1. Datapath cost per packet (BPF_PROG_TEST_RUN, own cost = path - trivial program)";
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);
pub const FLOWS_1E6: u32 = 1_000_000;

/// Section 1's balancer: one service in each family on two servers, a
/// table sized for 2e6 flows (`lb-profile` runs the same).
pub fn config() -> ConfigFile {
    ConfigFile::new()
        .set("instance", "bench")
        .set("interfaces", vec!["toclient"])
        .set("flows.max", 2 * FLOWS_1E6)
        .service(VIP, 80, "tcp", "web")
        .service(VIP6, 80, "tcp", "web")
        .server("web", "s1", SERVER1, 8080)
        .server_set("web", "s1", "address6", SERVER1_6.to_string())
        .server("web", "s2", SERVER2, 8080)
        .server_set("web", "s2", "address6", SERVER2_6.to_string())
}

/// The benchmark's IPv6 clients (fd00:b::/32, behind the fixture's client).
fn client6(i: u32) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0xb, 0, 0, 0, 0, (i >> 16) as u16, i as u16)
}

fn ack_from(client: Ipv4Addr, port: u16) -> Vec<u8> {
    Pkt::tcp((client, port), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(ACK).seq(1000, 1).build()
}

fn key(client: Ipv4Addr, port: u16) -> FlowKey {
    crate::fixture::flow_key((client, port), (VIP, 80), proto::TCP)
}

/// Total kernel-timed run of `program` over `frames`, ns.
fn total_ns(program: &aya::programs::Xdp, frames: &[Vec<u8>], ifindex: u32) -> u128 {
    frames.iter().map(|frame| test_run(program, frame, ifindex).2.as_nanos()).sum()
}

/// Medians by path name.
type Results = Vec<(&'static str, f64)>;

/// Section 1's paths that Katran's harness times too: (label, Katran's
/// name of the path, ours, goal of ours / Katran, Katran's reference figure
/// in ns). Katran sends every packet it forwards back out of the interface
/// it came in on (XDP_TX: it is a one-armed balancer), so ours is timed
/// sending the same way: the packet arrives on the servers' interface.
/// Ours redirected to another interface (a two-armed balancer, as the
/// fixture's client and servers are) is reported beside it.
const PATHS: [(&str, &str, &str, f64, f64); 5] = [
    ("packet not for a VIP, passed", "not_for_vip", "not_for_vip", 0.25, 59.0),
    ("SYN creating a new flow (unique 5-tuples)", "new_flow", "new_flow_tx", 0.5, 620.0),
    ("ACK of an existing flow, cache-hot", "hot", "hot_tx", 0.30, 152.0),
    ("ACK at random among 1e6 established flows", "random_1e6", "random_1e6_tx", 0.5, 623.0),
    ("SYN creating a new flow, 1e6 flows in the table", "new_flow_1e6", "new_flow_1e6_tx", 0.5, 815.0),
];

/// Our trivial program's cost per call in a run beside the one that gave
/// `PATHS`' Katran figures (2026-12-05, Katran 19f08fec82fb, clang-19, this
/// kind of machine). Without Katran in the run, a path's goal against the trivial
/// program is its goal against Katran times Katran's reference cost in
/// trivial calls: the same goal, on a yardstick every run measures.
const REFERENCE_TRIVIAL_NS: f64 = 87.0;

pub fn run(report: &mut Report, quick: bool) {
    let (rounds, calls) = if quick { (3, 5_000) } else { (7, 20_000) };
    let katran = super::katran::Katran::build(&super::output_dir().join("katran"));
    // Katran before and after ours: a host that slows down during the run
    // slows both.
    let mut katran_runs = Vec::new();
    let time_katran = |runs: &mut Vec<super::katran::Figures>| {
        if let Ok(k) = &katran {
            match k.measure(rounds, calls) {
                Ok(figures) => runs.push(figures),
                Err(why) => eprintln!("bench: Katran: {why}"),
            }
        }
    };
    time_katran(&mut katran_runs);
    let net = fixture_netns();
    // The benchmark's clients (11.0.0.0/8) sit behind the fixture's client.
    net.ns.ip(&["route", "add", "11.0.0.0/8", "via", "10.0.0.2"]);
    net.ns.ip(&["-6", "route", "add", "fd00:b::/32", "via", "fd00::2"]);
    let results: Results = net.run(|| measure_paths(rounds, calls));
    time_katran(&mut katran_runs);

    let ours = Measured { results, rounds, calls };
    report_katrans_paths(report, &ours, &katran, &katran_runs);
    for (label, name) in [
        ("server reply on the return path", "reply"),
        ("packet of a flow whose server is DISABLED (reset)", "disabled"),
    ] {
        report.add(SECTION, label, ours.get(name), "ns", None, ours.note("; Katran has no such path"));
    }
    report.add(SECTION, "trivial program's call (the yardstick)", ours.get("trivial"), "ns", None, ours.note(""));
    report_two_cpus(report, &ours);
    report_ipv6_and_sharing(report, &ours);
}

/// Section 1's figures, by name (medians over the rounds).
struct Measured {
    results: Results,
    rounds: usize,
    calls: usize,
}

impl Measured {
    fn get(&self, name: &str) -> f64 {
        self.results.iter().find(|(n, _)| *n == name).unwrap().1
    }

    /// How a figure was taken, and `extra`.
    fn note(&self, extra: &str) -> String {
        format!("median of {} rounds x {} calls{extra}", self.rounds, self.calls)
    }
}

/// The paths Katran has too (`PATHS`): ours, and ours / Katran's from the
/// runs beside ours (or, without Katran's tree, against the trivial call).
fn report_katrans_paths(
    report: &mut Report,
    ours: &Measured,
    katran: &Result<super::katran::Katran, String>,
    katran_runs: &[super::katran::Figures],
) {
    let katran_of = |name: &str| {
        let runs: Vec<f64> = katran_runs.iter().filter_map(|r| r.get(name).copied()).collect();
        (runs.len() == katran_runs.len() && !runs.is_empty()).then(|| (median(&mut runs.clone()), runs))
    };
    for (label, name, ours_name, goal, reference_ns) in PATHS {
        let (cost, katran) = (ours.get(ours_name), katran_of(name));
        let sent = if ours_name == name { "" } else { ", sent with XDP_TX" };
        report.add(
            SECTION,
            format!("{label}{sent}"),
            cost,
            "ns",
            None,
            match &katran {
                Some((k, _)) => ours.note(&format!("; Katran: {k:.0} ns")),
                None => ours.note(""),
            },
        );
        match &katran {
            Some((k, runs)) => {
                let each = runs.iter().map(|v| format!("{v:.0}")).collect::<Vec<_>>().join(", ");
                let how = if sent.is_empty() { String::new() } else { format!("{sent}, as Katran's are") };
                let detail =
                    format!("ours {cost:.0} ns{how}; Katran {k:.0} ns (its runs before and after ours: {each})");
                let name = format!("ours / Katran: {label}");
                report.add(SECTION, name, cost / k, "x", Some(Target::AtMost(goal)), detail);
            }
            None => {
                let trivial = ours.get("trivial");
                let goal = goal * reference_ns / REFERENCE_TRIVIAL_NS;
                let detail = format!(
                    "ours {cost:.0} ns{sent}, trivial program {trivial:.0} ns; goal: {goal:.2} = ours / Katran's goal \
                     times Katran's reference cost in trivial calls ({reference_ns:.0} / {REFERENCE_TRIVIAL_NS:.0} ns)"
                );
                let name = format!("own cost / trivial program's call: {label}");
                report.add(SECTION, name, cost / trivial, "x", Some(Target::AtMost(goal)), detail);
            }
        }
        if ours_name != name {
            let redirected = ours.get(name);
            let against = katran.map(|(k, _)| format!("; / Katran {:.2}", redirected / k)).unwrap_or_default();
            let detail = format!(
                "from the clients' interface to the servers' (bpf_redirect, a helper call Katran's path does not \
                 make): {:+.0} ns against XDP_TX in the same rounds{against}; {}",
                redirected - cost,
                ours.note("")
            );
            report.add(SECTION, format!("{label}, redirected"), redirected, "ns", None, detail);
        }
    }
    match katran {
        Ok(k) if katran_runs.len() == 2 => {
            let detail = format!("tree {}; built with clang-19 as Katran's Makefile-bpf does", k.tree.display());
            report.add(SECTION, "Katran timed in this run (runs)", 2.0, "", None, detail);
        }
        Ok(_) => report.failed(SECTION, "Katran timed in this run", "its harness failed (see above)"),
        Err(why) => report.add(SECTION, "Katran timed in this run (runs)", 0.0, "", None, why.clone()),
    }
}

/// Two receiving cores (issue 24): the cost per packet stays flat (no line
/// of the tables written by both per packet), and new flows created on both
/// at once lose no slot to each other.
fn report_two_cpus(report: &mut Report, ours: &Measured) {
    for (label, path) in [("ACK of an existing flow, cache-hot", "hot"), ("SYN creating a new flow", "new_flow")] {
        let name = |what: &str| format!("{path}_{what}");
        let (one, shared, apart) = (ours.get(&name("one_cpu")), ours.get(&name("two_cpus")), ours.get(&name("apart")));
        let pairs = ours.rounds * TWO_CPU_PAIRS;
        let detail = format!(
            "{shared:.0} ns with both CPUs on one balancer's tables (each its own flows), {apart:.0} ns with each on a \
             balancer of its own (the same program, no map shared: what the host does to two busy CPUs); each net \
             of the trivial program run in alternating chunks beside it; median of {pairs} pairs' ratios"
        );
        let figure = format!("{label}: 2 CPUs on 1 balancer / 1 each");
        report.add(SECTION, figure, ours.get(&name("shared_ratio")), "x", Some(Target::AtMost(1.1)), detail);
        let detail = format!(
            "{shared:.0} ns with both CPUs receiving, {one:.0} ns alone; the host's share of it is the figure above's \
             balancers apart (this VM's two CPUs slow each other by 1.1-1.5x in some runs, balancers apart alike); \
             median of {pairs} pairs' ratios"
        );
        let figure = format!("{label}: 2 CPUs at once / 1");
        report.add(SECTION, figure, ours.get(&name("two_cpus_ratio")), "x", None, detail);
    }
    let created = 2 * ours.rounds * TWO_CPU_PAIRS * ours.calls;
    report.add(
        SECTION,
        "new flows on two CPUs at once: slots lost to the other CPU",
        ours.get("slots_taken_two_cpus"),
        "",
        Some(Target::AtMost(0.0)),
        format!("drop_flow_slot_taken over {created} new flows created on CPUs 0 and 1 at once"),
    );
}

/// IPv6 beside IPv4, the same paths in the same rounds: the ratio of their
/// own costs (issue target: at most 1.1); and flow replication (a cluster
/// with cluster.sync_address: each new flow is also handed to the ring),
/// within 10 % of without.
fn report_ipv6_and_sharing(report: &mut Report, ours: &Measured) {
    let six: [(&str, &str, &str); 4] = [
        ("IPv6 / IPv4 cost: packet not for a VIP", "not_for_vip6", "not_for_vip"),
        ("IPv6 / IPv4 cost: SYN creating a new flow", "new_flow6", "new_flow"),
        ("IPv6 / IPv4 cost: ACK of an existing flow, cache-hot", "hot6", "hot"),
        ("IPv6 / IPv4 cost: server reply on the return path", "reply6", "reply"),
    ];
    for (label, v6, v4) in six {
        let detail = format!("IPv6 {:.0} ns, IPv4 {:.0} ns; {}", ours.get(v6), ours.get(v4), ours.note(""));
        report.add(SECTION, label, ours.get(v6) / ours.get(v4), "x", Some(Target::AtMost(1.1)), detail);
    }
    let (on, off) = (ours.get("new_flow_shared"), ours.get("new_flow_unshared"));
    let detail = format!(
        "with sharing on {on:.0} ns, off {off:.0} ns, in alternating slices of each round (the table fills alike); {}",
        ours.note("")
    );
    let figure = "new flow cost with flow replication on / off";
    report.add(SECTION, figure, on / off, "x", Some(Target::AtMost(1.1)), detail);
}

/// Runs inside the fixture namespace: phase 1 on a table holding only the
/// benchmark's own flows, then two receiving CPUs, then phase 2 after
/// filling the table with 1e6 established flows.
fn measure_paths(rounds: usize, calls: usize) -> Results {
    pin_to_cpu(0);
    let trivial = load_test_program("pass").expect("trivial program");
    let trivial: &aya::programs::Xdp = trivial.program("pass").unwrap().try_into().unwrap();
    let mut run = Run::new(trivial, calls);
    let bed_apart = run.balancer_apart();
    for round in 0..rounds {
        run.phase1_round(round);
    }
    // Two receiving CPUs, in rounds of their own: their pairs create 50
    // batches of new flows a round and their `forget`s walk two whole
    // tables, which leaves the caches as no packet path would (the first
    // new flows after such work cost up to 1.8x the next ones, see
    // `WARM_UP_FRAMES`), so the paths above, like Katran's in its harness,
    // are never timed right after them.
    for _ in 0..rounds {
        run.two_cpus_round(&bed_apart);
    }
    run.phase2(rounds);
    let slots_taken = run.slots_taken;
    let mut results = run.samples.medians();
    // A count of events: their total over the rounds, not a median.
    results.push(("slots_taken_two_cpus", slots_taken));
    results
}

/// Each figure's samples over the rounds, by name.
#[derive(Default)]
struct Samples(Vec<(&'static str, Vec<f64>)>);

impl Samples {
    fn record(&mut self, name: &'static str, ns: f64) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(ns),
            None => self.0.push((name, vec![ns])),
        }
    }

    fn medians(self) -> Results {
        self.0.into_iter().map(|(name, mut v)| (name, median(&mut v))).collect()
    }
}

/// SYNs of clients never seen before, `calls` at a time.
struct NewSyns {
    calls: usize,
    last: u32,
    v6: bool,
}

impl NewSyns {
    fn batch(&mut self) -> Vec<Vec<u8>> {
        (0..self.calls)
            .map(|_| {
                self.last += 1;
                if self.v6 {
                    Pkt::tcp((client6(self.last), 40000), (VIP6, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build()
                } else {
                    Pkt::tcp((client(self.last), 40000), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build()
                }
            })
            .collect()
    }
}

/// The frames of the paths timed on one flow each.
struct Frames {
    not_for_us: Vec<Vec<u8>>,
    hot_ack: Vec<Vec<u8>>,
    /// CPU 1's own hot flow, for the two-CPU figures: a receiving core
    /// sees flows of its own (the NIC spreads flows, not packets).
    hot_ack_b: Vec<Vec<u8>>,
    reply: Vec<Vec<u8>>,
    not_for_us6: Vec<Vec<u8>>,
    hot_ack6: Vec<Vec<u8>>,
    reply6: Vec<Vec<u8>>,
}

/// Section 1's balancer, what it is timed on, and what was measured.
struct Run<'a> {
    bed: FixtureBed,
    trivial: &'a aya::programs::Xdp,
    toclient: u32,
    toserver: u32,
    calls: usize,
    frames: Frames,
    hot_b: Ipv4Addr,
    syns: NewSyns,
    syns6: NewSyns,
    samples: Samples,
    /// New flows on CPU 1 that lost their slot to CPU 0 or the reverse.
    slots_taken: f64,
}

impl<'a> Run<'a> {
    fn new(trivial: &'a aya::programs::Xdp, calls: usize) -> Run<'a> {
        let bed = FixtureBed::load(&config());
        let (toclient, toserver) = (ifindex("toclient"), ifindex("toserver"));
        let s1 = bed.server_id("web", "s1");
        // s2 gets disabled: the hot flows are on s1.
        let hot = hot_flow(&bed, FLOWS_1E6 + 5000, s1);
        let hot_b = hot_flow(&bed, FLOWS_1E6 + 9000, s1);
        let hot6 = hot_flow6(&bed, s1);
        let hot_ack = vec![ack_from(hot, 40000)];
        // The two ways a forwarded packet is sent (see `PATHS`).
        assert_eq!(test_run(bed.dp().program(), &hot_ack[0], toserver).0, crate::fixture::XDP_TX);
        assert_eq!(test_run(bed.dp().program(), &hot_ack[0], toclient).0, crate::fixture::XDP_REDIRECT);
        let from_server = |src, dst| Pkt::tcp(src, dst).macs([2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 1, 1]).flags(ACK).build();
        let to = |c, vip| Pkt::tcp((c, 40000), vip).macs(CLIENT_MAC, TOCLIENT_MAC);
        let frames = Frames {
            not_for_us: vec![to(hot, (Ipv4Addr::new(10, 0, 9, 9), 80)).build()],
            hot_ack,
            hot_ack_b: vec![ack_from(hot_b, 40000)],
            reply: vec![from_server((SERVER1, 8080), (hot, 40000))],
            not_for_us6: vec![
                Pkt::tcp((hot6, 40000), ("fd00:9::9".parse::<Ipv6Addr>().unwrap(), 80))
                    .macs(CLIENT_MAC, TOCLIENT_MAC)
                    .build(),
            ],
            hot_ack6: vec![
                Pkt::tcp((hot6, 40000), (VIP6, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(ACK).seq(1000, 1).build(),
            ],
            reply6: vec![
                Pkt::tcp((SERVER1_6, 8080), (hot6, 40000))
                    .macs([2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 1, 1])
                    .flags(ACK)
                    .build(),
            ],
        };
        Run {
            bed,
            trivial,
            toclient,
            toserver,
            calls,
            frames,
            hot_b,
            syns: NewSyns { calls, last: 0x80_0000, v6: false },
            syns6: NewSyns { calls, last: 0x10_0000, v6: true },
            samples: Samples::default(),
            slots_taken: 0.0,
        }
    }

    /// `frames` repeated to a batch of `calls`.
    fn cycle(&self, frames: &[Vec<u8>]) -> Vec<Vec<u8>> {
        (0..self.calls).map(|i| frames[i % frames.len()].clone()).collect()
    }

    /// The trivial program's cost per call this round: the yardstick.
    fn base(&mut self) -> f64 {
        let frames = self.cycle(&self.frames.hot_ack);
        let base = total_ns(self.trivial, &frames, self.toclient) as f64 / self.calls as f64;
        self.samples.record("trivial", base);
        base
    }

    /// The paths' own cost per packet net of `base`, checked by `expect`.
    fn time(&mut self, frames: &[Vec<u8>], ingress: u32, expect: Outcome, base: f64) -> f64 {
        measure(&mut self.bed, frames, ingress, expect) - base
    }

    /// Paths compared with Katran are timed sent both ways (`PATHS`): with
    /// XDP_TX (the packet arrives on the servers' interface), and
    /// redirected there from the clients'. Which goes first alternates by
    /// round; each way with its ingress.
    fn ways(&self, round: usize) -> [(bool, u32); 2] {
        let way = |tx: bool| (tx, if tx { self.toserver } else { self.toclient });
        [way(round.is_multiple_of(2)), way(!round.is_multiple_of(2))]
    }

    fn phase1_round(&mut self, round: usize) {
        let base = self.base();
        let not_for_us = self.cycle(&self.frames.not_for_us);
        let cost = self.time(&not_for_us, self.toclient, Outcome::PassNotForUs, base);
        self.samples.record("not_for_vip", cost);
        warm_up(&mut self.bed, &mut || self.syns.batch(), self.toclient, Outcome::ForwardNewFlow);
        for (tx, ingress) in self.ways(round) {
            let syns = self.syns.batch();
            let cost = self.time(&syns, ingress, Outcome::ForwardNewFlow, base);
            self.samples.record(if tx { "new_flow_tx" } else { "new_flow" }, cost);
        }
        let syns = self.syns.batch();
        let (off, on) = measure_sharing(&mut self.bed, &syns, self.toclient);
        self.samples.record("new_flow_unshared", off - base);
        self.samples.record("new_flow_shared", on - base);
        let hot_ack = self.cycle(&self.frames.hot_ack);
        for (tx, ingress) in self.ways(round) {
            let cost = self.time(&hot_ack, ingress, Outcome::ForwardFlow, base);
            self.samples.record(if tx { "hot_tx" } else { "hot" }, cost);
        }
        let reply = self.cycle(&self.frames.reply);
        let cost = self.time(&reply, self.toserver, Outcome::ForwardReply, base);
        self.samples.record("reply", cost);
        self.phase1_round6(base);
    }

    /// Phase 1's IPv6 paths, in the same round.
    fn phase1_round6(&mut self, base: f64) {
        let not_for_us6 = self.cycle(&self.frames.not_for_us6);
        let cost = self.time(&not_for_us6, self.toclient, Outcome::PassNotForUs, base);
        self.samples.record("not_for_vip6", cost);
        warm_up(&mut self.bed, &mut || self.syns6.batch(), self.toclient, Outcome::ForwardNewFlow);
        let syns6 = self.syns6.batch();
        let cost = self.time(&syns6, self.toclient, Outcome::ForwardNewFlow, base);
        self.samples.record("new_flow6", cost);
        let hot_ack6 = self.cycle(&self.frames.hot_ack6);
        let cost = self.time(&hot_ack6, self.toclient, Outcome::ForwardFlow, base);
        self.samples.record("hot6", cost);
        let reply6 = self.cycle(&self.frames.reply6);
        let cost = self.time(&reply6, self.toserver, Outcome::ForwardReply, base);
        self.samples.record("reply6", cost);
    }

    /// A balancer of its own for CPU 1 (the two-CPU figures): the same
    /// program and config, maps apart, holding CPU 1's hot flow.
    fn balancer_apart(&self) -> FixtureBed {
        let bed = FixtureBed::load(&config());
        let syn = Pkt::tcp((self.hot_b, 40000), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build();
        assert_eq!(bed.run_frame(&syn, "toclient").0, crate::fixture::XDP_REDIRECT);
        bed
    }

    /// Two receiving CPUs (issue 24), in pairs of runs (`net_per_cpu`): one
    /// CPU alone; two CPUs on this balancer's tables, each with flows of its
    /// own; and two CPUs each on a balancer of its own (`apart`: the same
    /// program, no map shared), which pays whatever the host does to two
    /// busy CPUs (these VMs' two CPUs slow each other in some runs,
    /// 1.1-1.5x, a balancer apart on each as much) and nothing else. Flat if
    /// no line of the tables is written by both per packet. Several pairs a
    /// round: one pair's ratios move with the host.
    fn two_cpus_round(&mut self, apart: &FixtureBed) {
        let (mut two_cpu_syns, mut apart_syns, lost_before) = (Vec::new(), Vec::new(), self.slots_taken);
        let hot_acks = [self.cycle(&self.frames.hot_ack), self.cycle(&self.frames.hot_ack_b)];
        for pair in 0..TWO_CPU_PAIRS {
            self.two_cpus_hot(pair, apart, &hot_acks);
            let syns = [self.syns.batch(), self.syns.batch(), self.syns.batch(), self.syns.batch(), self.syns.batch()];
            self.two_cpus_new(pair, apart, &syns);
            let [a, b, c, d, e] = syns;
            two_cpu_syns.extend([a, b, c, d]);
            apart_syns.push(e);
        }
        // The balancer apart forgets its flows as well: every round's pairs
        // find its table as the first round's did.
        assert_eq!(forget(apart, apart_syns.iter().flatten()), apart_syns.len() * self.calls);
        // These flows only time a path: the table is left as it was, so that
        // phase 2's holds what it held before these pairs existed.
        let lost = self.slots_taken - lost_before;
        let forgotten = forget(&self.bed, two_cpu_syns.iter().flatten()) as f64;
        assert_eq!(forgotten + lost, (two_cpu_syns.len() * self.calls) as f64);
        self.bed.take_reset_requests();
    }

    /// One pair of runs of the cache-hot ACK on one and two CPUs, each
    /// CPU on its own flow (`hot_acks`).
    fn two_cpus_hot(&mut self, pair: usize, apart: &FixtureBed, hot_acks: &[Vec<Vec<u8>>; 2]) {
        let (ours, theirs, trivial, toclient) =
            (self.bed.dp().program(), apart.dp().program(), self.trivial, self.toclient);
        let frames: [&[Vec<u8>]; 2] = [&hot_acks[0], &hot_acks[1]];
        let [one, shared, apart] = rotated(
            pair,
            [
                &mut || mean(&net_per_cpu(&[ours], trivial, &frames[..1], toclient)),
                &mut || mean(&net_per_cpu(&[ours, ours], trivial, &frames, toclient)),
                &mut || mean(&net_per_cpu(&[ours, theirs], trivial, &frames, toclient)),
            ],
        );
        self.samples.record("hot_one_cpu", one);
        self.samples.record("hot_two_cpus", shared);
        self.samples.record("hot_apart", apart);
        self.samples.record("hot_two_cpus_ratio", shared / one);
        self.samples.record("hot_shared_ratio", shared / apart);
    }

    /// One pair of runs of new flows on one and two CPUs, from five fresh
    /// batches of SYNs (one CPU alone, two on this balancer, two apart).
    fn two_cpus_new(&mut self, pair: usize, apart: &FixtureBed, syns: &[Vec<Vec<u8>>; 5]) {
        let (bed, calls) = (&self.bed, self.calls);
        let (ours, theirs, trivial, toclient) = (bed.dp().program(), apart.dp().program(), self.trivial, self.toclient);
        let mut lost = 0.0;
        let [one, shared, apart] = rotated(
            pair,
            [
                &mut || mean(&net_per_cpu(&[ours], trivial, &[&syns[0]], toclient)),
                &mut || {
                    let before = bed.outcomes();
                    let ns = mean(&net_per_cpu(&[ours, ours], trivial, &[&syns[1], &syns[2]], toclient));
                    let after = bed.outcomes();
                    let delta = |o: Outcome| (after[o.label()] - before[o.label()]) as f64;
                    let created = delta(Outcome::ForwardNewFlow);
                    assert_eq!(created + delta(Outcome::DropFlowSlotTaken), 2.0 * calls as f64);
                    lost = delta(Outcome::DropFlowSlotTaken);
                    ns
                },
                &mut || mean(&net_per_cpu(&[ours, theirs], trivial, &[&syns[3], &syns[4]], toclient)),
            ],
        );
        self.slots_taken += lost;
        self.samples.record("new_flow_one_cpu", one);
        self.samples.record("new_flow_two_cpus", shared);
        self.samples.record("new_flow_apart", apart);
        self.samples.record("new_flow_two_cpus_ratio", shared / one);
        self.samples.record("new_flow_shared_ratio", shared / apart);
    }

    /// Phase 2: 1e6 established flows on s1; 1000 on s2, out of the hash
    /// table (as a drain does) then DISABLED before its flows are purged:
    /// the window the disabled-flow path serves. Phase 1's flows go first,
    /// as in Katran's harness: the table holds what the figures' labels say.
    fn phase2(&mut self, rounds: usize) {
        let (s1, s2) = (self.bed.server_id("web", "s1"), self.bed.server_id("web", "s2"));
        self.bed.dp().maps.flows.remove_where(|_, _| true).expect("empty the table");
        fill_flows(&self.bed.dp().maps.flows, 0..FLOWS_1E6, (VIP, 80), |_| s1);
        fill_flows(&self.bed.dp().maps.flows, FLOWS_1E6..FLOWS_1E6 + 1000, (VIP, 80), |_| s2);
        let graceful = lb_userspace::model::DisableMode::Graceful { timeout_ms: None };
        self.bed.disable("web", &["s2"], graceful, false).expect("drain s2");
        self.bed.write_server_state("web", "s2", server_state::DISABLED);
        let disabled: Vec<Vec<u8>> = (0..1000).map(|i| ack_from(client(FLOWS_1E6 + i), 40000)).collect();
        let mut acks = RandomAcks { calls: self.calls, rng: 0x2545_f491_4f6c_dd1d };
        for round in 0..rounds {
            let base = self.base();
            warm_up(&mut self.bed, &mut || acks.batch(), self.toclient, Outcome::ForwardFlow);
            for (tx, ingress) in self.ways(round) {
                let cost = self.time(&acks.batch(), ingress, Outcome::ForwardFlow, base);
                self.samples.record(if tx { "random_1e6_tx" } else { "random_1e6" }, cost);
            }
            // No warm-up of their own: the random ACKs just before have read
            // the same table (and new flows here would fill it further).
            for (tx, ingress) in self.ways(round) {
                let syns = self.syns.batch();
                let cost = self.time(&syns, ingress, Outcome::ForwardNewFlow, base);
                self.samples.record(if tx { "new_flow_1e6_tx" } else { "new_flow_1e6" }, cost);
            }
            let disabled = self.cycle(&disabled);
            let cost = self.time(&disabled, self.toclient, Outcome::ResetTerminatedFlow, base);
            self.samples.record("disabled", cost);
        }
    }
}

/// ACKs of flows drawn at random among phase 2's million, `calls` at a time.
struct RandomAcks {
    calls: usize,
    rng: u64,
}

impl RandomAcks {
    fn batch(&mut self) -> Vec<Vec<u8>> {
        (0..self.calls)
            .map(|_| {
                self.rng ^= self.rng << 13;
                self.rng ^= self.rng >> 7;
                self.rng ^= self.rng << 17;
                ack_from(client((self.rng % FLOWS_1E6 as u64) as u32), 40000)
            })
            .collect()
    }
}

/// The first client from `first` on whose flow lands on `server`.
fn hot_flow(bed: &FixtureBed, first: u32, server: u32) -> Ipv4Addr {
    let syn = |c| Pkt::tcp((c, 40000), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build();
    (first..)
        .map(client)
        .find(|&c| {
            assert_eq!(bed.run_frame(&syn(c), "toclient").0, crate::fixture::XDP_REDIRECT);
            bed.dp().maps.flows.get(&key(c, 40000)).unwrap().unwrap().server() == server
        })
        .unwrap()
}

/// [`hot_flow`] in IPv6, from the first of [`client6`].
fn hot_flow6(bed: &FixtureBed, server: u32) -> Ipv6Addr {
    let syn = |c| Pkt::tcp((c, 40000), (VIP6, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build();
    (0..)
        .map(client6)
        .find(|&c| {
            assert_eq!(bed.run_frame(&syn(c), "toclient").0, crate::fixture::XDP_REDIRECT);
            let key = lb_common::FlowKey6::new(
                lb_userspace::datapath::family::addr6(c),
                lb_userspace::datapath::family::addr6(VIP6),
                40000u16.to_be(),
                80u16.to_be(),
                proto::TCP,
            );
            bed.dp().maps.flows6.get(&key).unwrap().unwrap().server() == server
        })
        .unwrap()
}

/// Frames of a path run untimed before its timed batches in a round, for
/// new flows (phase 1) and random ACKs, as Katran's harness does before its
/// own (`WARM_UP_FRAMES` there): the figure is the path's steady cost. The
/// first new flows after other work find the caches as that work left them
/// (most likely the lines of the page tables that map the table, which
/// random ACKs warm as well): in a quick run here the first 5000 after the
/// IPv6 paths cost 1.3-1.8x the fifth 5000, and the first 5000 in a new
/// table 3.2 us each.
const WARM_UP_FRAMES: usize = 20_000;

fn warm_up(bed: &mut FixtureBed, frames: &mut impl FnMut() -> Vec<Vec<u8>>, ingress: u32, expect: Outcome) {
    let mut done = 0;
    while done < WARM_UP_FRAMES {
        let batch = frames();
        measure(bed, &batch, ingress, expect);
        done += batch.len();
    }
}

/// Removes the flows of these frames (IPv4, from a client to the VIP) from
/// the table, in one walk of it; how many it removed. (A SYN that lost its
/// slot to the other CPU left no flow.)
fn forget<'a>(bed: &FixtureBed, frames: impl Iterator<Item = &'a Vec<u8>>) -> usize {
    let keys: std::collections::HashSet<FlowKey> =
        frames.map(|f| key(Ipv4Addr::new(f[26], f[27], f[28], f[29]), u16::from_be_bytes([f[34], f[35]]))).collect();
    bed.dp().maps.flows.remove_where(|key, _| keys.contains(key)).expect("remove the bench's flows").1
}

/// Pairs of one-CPU and two-CPU runs per round.
const TWO_CPU_PAIRS: usize = 10;

/// The own cost per call of `programs[i]` on CPU `i`, all CPUs starting
/// together, each running its frames in chunks of 64, each chunk through
/// the trivial program and then through its program: the trivial program
/// shares every moment of the run with it, so what the host does to one it
/// does to the other. (Timed in separate blocks, the trivial program's own
/// cost on two CPUs moved from block to block by more than the balancer's
/// cost: 1.1-1.7x in turns for the same program.) ns, by CPU.
pub fn net_per_cpu(
    programs: &[&aya::programs::Xdp],
    trivial: &aya::programs::Xdp,
    frames: &[&[Vec<u8>]],
    ifindex: u32,
) -> Vec<f64> {
    let barrier = std::sync::Barrier::new(frames.len());
    std::thread::scope(|s| {
        let threads: Vec<_> = frames
            .iter()
            .zip(programs)
            .enumerate()
            .map(|(cpu, (&frames, &program))| {
                let barrier = &barrier;
                s.spawn(move || {
                    pin_to_cpu(cpu);
                    barrier.wait();
                    let (mut ours, mut base) = (0, 0);
                    for chunk in frames.chunks(64) {
                        base += total_ns(trivial, chunk, ifindex);
                        ours += total_ns(program, chunk, ifindex);
                    }
                    (ours as f64 - base as f64) / frames.len() as f64
                })
            })
            .collect();
        threads.into_iter().map(|t| t.join().expect("a test-run thread")).collect()
    })
}

pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Runs `runs` in an order that rotates with `pair` (the host's state
/// moves between runs, and none may always take the same place); their
/// results in `runs`' order.
pub fn rotated<const N: usize>(pair: usize, runs: [&mut dyn FnMut() -> f64; N]) -> [f64; N] {
    let mut results = [0.0; N];
    for k in 0..N {
        let i = (k + pair) % N;
        results[i] = runs[i]();
    }
    results
}

/// The new flow's cost with flow sharing off and on, measured in slices of
/// `syns` in the order off, on, on, off, ...: the table fills as they run,
/// and neither pays more for it.
fn measure_sharing(bed: &mut FixtureBed, syns: &[Vec<u8>], ingress: u32) -> (f64, f64) {
    let (mut total, mut count) = ([0.0; 2], [0usize; 2]);
    for (i, slice) in syns.chunks(512).enumerate() {
        let on = matches!(i % 4, 1 | 2);
        bed.dp_mut().maps.share_new_flows(on).expect("sharing on or off");
        total[usize::from(on)] += measure(bed, slice, ingress, Outcome::ForwardNewFlow) * slice.len() as f64;
        count[usize::from(on)] += slice.len();
    }
    bed.dp_mut().maps.share_new_flows(false).expect("sharing off");
    (total[0] / count[0] as f64, total[1] / count[1] as f64)
}

/// Average kernel-timed cost of the balancer over `frames`, checking with
/// the counters that every frame took the path that `expect` counts.
fn measure(bed: &mut FixtureBed, frames: &[Vec<u8>], ingress: u32, expect: Outcome) -> f64 {
    let count = |bed: &FixtureBed| bed.outcomes()[expect.label()];
    let before = count(bed);
    // In chunks, emptying the reset ring between them: a full ring would make
    // the reset path cheaper than it is.
    let mut total = 0;
    for chunk in frames.chunks(1024) {
        total += total_ns(bed.dp().program(), chunk, ingress);
        bed.take_reset_requests();
    }
    assert_eq!(count(bed) - before, frames.len() as u64, "path not taken every time ({})", expect.label());
    total as f64 / frames.len() as f64
}
