//! Section 1, the XDP program's own cost per packet, path by path, through
//! BPF_PROG_TEST_RUN: one call per fresh packet (the balancer rewrites
//! packets, so `repeat` would measure a different path after the first run),
//! the thread pinned to one CPU, minus a trivial program's cost measured the
//! same way in the same round. Each path is checked with the counters.

use std::net::Ipv4Addr;

use lb_common::{FlowKey, Outcome, proto, server_state};
use lb_userspace::datapath::load_test_program;

use super::{Report, Target, client, fill_flows, median, pin_to_cpu};
use crate::{
    config_file::ConfigFile,
    fixture::{CLIENT_MAC, FixtureBed, SERVER1, SERVER2, TOCLIENT_MAC, fixture_netns, ifindex, test_run},
    packet::{ACK, Pkt, SYN},
};

const SECTION: &str = "1. Datapath cost per packet (BPF_PROG_TEST_RUN, own cost = path - trivial program)";
const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const FLOWS_1E6: u32 = 1_000_000;

fn config() -> ConfigFile {
    ConfigFile::new()
        .set("instance", "bench")
        .set("interfaces", vec!["toclient"])
        .set("flows.max", 2 * FLOWS_1E6)
        .service(VIP, 80, "tcp", "web")
        .server("web", "s1", SERVER1, 8080)
        .server("web", "s2", SERVER2, 8080)
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

pub fn run(report: &mut Report, quick: bool) {
    let (rounds, calls) = if quick { (3, 5_000) } else { (7, 20_000) };
    let net = fixture_netns();
    // The benchmark's clients (11.0.0.0/8) sit behind the fixture's client.
    net.ns.ip(&["route", "add", "11.0.0.0/8", "via", "10.0.0.2"]);
    let results: Results = net.run(|| measure_paths(rounds, calls));

    let get = |name: &str| results.iter().find(|(n, _)| *n == name).unwrap().1;
    let note = |katran: &str| format!("median of {rounds} rounds x {calls} calls; reference XDP balancer: {katran}");
    let rows: [(&str, &str, Option<f64>, &str); 7] = [
        ("packet not for a VIP, passed", "not_for_vip", Some(40.0), "~50 ns"),
        ("SYN creating a new flow (unique 5-tuples)", "new_flow", Some(300.0), "350-450 ns"),
        ("ACK of an existing flow, cache-hot", "hot", Some(120.0), "140-160 ns"),
        ("ACK at random among 1e6 established flows", "random_1e6", Some(450.0), "440-570 ns"),
        ("SYN creating a new flow, 1e6 flows in the table", "new_flow_1e6", None, "n/a"),
        ("server reply on the return path", "reply", None, "n/a (no NAT return path)"),
        ("packet of a flow whose server is DISABLED (reset)", "disabled", None, "n/a"),
    ];
    for (label, name, target, reference) in rows {
        report.add(SECTION, label, get(name), "ns", target.map(Target::AtMost), note(reference));
    }
}

/// Runs inside the fixture namespace: phase 1 on a table holding only the
/// benchmark's own flows, phase 2 after filling it with 1e6 established flows.
fn measure_paths(rounds: usize, calls: usize) -> Results {
    pin_to_cpu(0);
    let mut bed = FixtureBed::load(&config());
    let trivial = load_test_program("pass").expect("trivial program");
    let trivial: &aya::programs::Xdp = trivial.program("pass").unwrap().try_into().unwrap();
    let toclient = ifindex("toclient");
    let toserver = ifindex("toserver");
    let s1 = bed.server_id("web", "s1");
    let s2 = bed.server_id("web", "s2");

    // The hot flow: the first client whose flow lands on s1 (s2 gets disabled).
    let hot = (FLOWS_1E6 + 5000..)
        .map(client)
        .find(|&c| {
            let syn = Pkt::tcp((c, 40000), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build();
            assert_eq!(bed.run_frame(&syn, "toclient").0, crate::fixture::XDP_REDIRECT);
            bed.dp().maps.flows.get(&key(c, 40000)).unwrap().unwrap().server_id == s1
        })
        .unwrap();
    let not_for_us =
        vec![Pkt::tcp((hot, 40000), (Ipv4Addr::new(10, 0, 9, 9), 80)).macs(CLIENT_MAC, TOCLIENT_MAC).build()];
    let hot_ack = vec![ack_from(hot, 40000)];
    let reply =
        vec![Pkt::tcp((SERVER1, 8080), (hot, 40000)).macs([2, 0, 0, 0, 1, 2], [2, 0, 0, 0, 1, 1]).flags(ACK).build()];
    let cycle = |v: &Vec<Vec<u8>>| (0..calls).map(|i| v[i % v.len()].clone()).collect::<Vec<_>>();
    let mut syn_counter = 0u32;
    let mut new_syns = || -> Vec<Vec<u8>> {
        (0..calls)
            .map(|_| {
                syn_counter += 1;
                Pkt::tcp((client(0x80_0000 + syn_counter), 40000), (VIP, 80))
                    .macs(CLIENT_MAC, TOCLIENT_MAC)
                    .flags(SYN)
                    .build()
            })
            .collect()
    };
    let mut samples: Vec<(&'static str, Vec<f64>)> = Vec::new();
    let mut record = |name: &'static str, ns: f64| match samples.iter_mut().find(|(n, _)| *n == name) {
        Some((_, v)) => v.push(ns),
        None => samples.push((name, vec![ns])),
    };

    for _ in 0..rounds {
        let base = total_ns(trivial, &cycle(&hot_ack), toclient) as f64 / calls as f64;
        record("not_for_vip", measure(&mut bed, &cycle(&not_for_us), toclient, Outcome::PassNotForUs) - base);
        record("new_flow", measure(&mut bed, &new_syns(), toclient, Outcome::ForwardNewFlow) - base);
        record("hot", measure(&mut bed, &cycle(&hot_ack), toclient, Outcome::ForwardFlow) - base);
        record("reply", measure(&mut bed, &cycle(&reply), toserver, Outcome::ForwardReply) - base);
    }

    // Phase 2: 1e6 established flows on s1; 1000 on s2, out of the hash
    // table (as a drain does) then DISABLED before its flows are purged: the
    // window the disabled-flow path serves.
    fill_flows(&bed.dp().maps.flows, 0..FLOWS_1E6, (VIP, 80), |_| s1);
    fill_flows(&bed.dp().maps.flows, FLOWS_1E6..FLOWS_1E6 + 1000, (VIP, 80), |_| s2);
    let graceful = lb_userspace::model::DisableMode::Graceful { timeout_ms: None };
    bed.disable("web", &["s2"], graceful, false).expect("drain s2");
    bed.write_server_state("web", "s2", server_state::DISABLED);
    let disabled: Vec<Vec<u8>> = (0..1000).map(|i| ack_from(client(FLOWS_1E6 + i), 40000)).collect();
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut random_acks = || -> Vec<Vec<u8>> {
        (0..calls)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                ack_from(client((rng % FLOWS_1E6 as u64) as u32), 40000)
            })
            .collect()
    };
    for _ in 0..rounds {
        let base = total_ns(trivial, &cycle(&hot_ack), toclient) as f64 / calls as f64;
        record("random_1e6", measure(&mut bed, &random_acks(), toclient, Outcome::ForwardFlow) - base);
        record("new_flow_1e6", measure(&mut bed, &new_syns(), toclient, Outcome::ForwardNewFlow) - base);
        record("disabled", measure(&mut bed, &cycle(&disabled), toclient, Outcome::ResetTerminatedFlow) - base);
    }
    samples.into_iter().map(|(name, mut v)| (name, median(&mut v))).collect()
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
