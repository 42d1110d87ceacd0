//! Section 4, the control plane at scale: an immediate disable of a server
//! holding a quarter of 1e5 and 1e6 flows. How long until no packet of its
//! flows is forwarded (a probe on the other CPU runs one of its packets
//! through the program again and again and notes when the verdict turns into
//! a reset), and how fast its entries are purged. Then the agent's memory
//! with 1e6 flows in its table.

use std::{
    collections::HashSet,
    os::fd::{AsFd, AsRawFd},
    path::Path,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_userspace::{
    datapath::{flow_table::FlowTable, tcp_reset::ResetSender, terminate},
    model::DisableMode,
};

use super::{Report, Target, client, fill_flows, median, pin_to_cpu};
use crate::{
    agent::Agent,
    config_file::ConfigFile,
    fixture::{CLIENT_MAC, FixtureBed, TOCLIENT_MAC, XDP_TX, fixture_netns, ifindex},
    packet::{ACK, Pkt},
    topology::{ServiceSpec, Topology},
};

const SECTION: &str = "4. Control plane at scale";
const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 100, 0, 1);

fn config(max_flows: u32) -> ConfigFile {
    let config = ConfigFile::new().set("interfaces", vec!["toclient"]).set("flows.max", max_flows);
    (1..=4u8).fold(config.service(VIP, 80, "tcp", "web"), |c, i| {
        c.server("web", &format!("s{i}"), std::net::Ipv4Addr::new(10, 0, i, 2), 8080)
    })
}

/// BPF_PROG_TEST_RUN straight through the syscall, so that a probe thread
/// can run the program (by a duplicate of its fd) while the control plane
/// owns the datapath.
fn raw_test_run(prog_fd: i32, frame: &[u8], ctx: &[u8; 24]) -> u32 {
    #[repr(C)]
    #[derive(Default)]
    struct TestAttr {
        prog_fd: u32,
        retval: u32,
        data_size_in: u32,
        data_size_out: u32,
        data_in: u64,
        data_out: u64,
        repeat: u32,
        duration: u32,
        ctx_size_in: u32,
        ctx_size_out: u32,
        ctx_in: u64,
        ctx_out: u64,
        flags: u32,
        cpu: u32,
        batch_size: u32,
        _pad: u32,
    }
    let mut attr = TestAttr {
        prog_fd: prog_fd as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        ..TestAttr::default()
    };
    const BPF_PROG_TEST_RUN: libc::c_long = 10;
    // SAFETY: attr points at live buffers for the duration of the call.
    let rc = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestAttr, std::mem::size_of::<TestAttr>())
    };
    assert!(rc == 0, "BPF_PROG_TEST_RUN: {}", std::io::Error::last_os_error());
    attr.retval
}

struct Scale {
    effect: Duration,
    purge_rate: f64,
    purged: usize,
    reset_rate: f64,
}

fn at_scale(flows: u32) -> Scale {
    let net = fixture_netns();
    // Clients (11.0.0.0/8) sit behind the fixture's client. The peers must not
    // forward the resets the agent sends back out (they would loop).
    net.ns.ip(&["route", "add", "11.0.0.0/8", "via", "10.0.0.2"]);
    for peer in ["clientpeer", "serverpeer"] {
        net.ns.sysctl(&format!("net.ipv4.conf.{peer}.forwarding"), "0");
    }
    // Servers s3 and s4 (the fixture has s1 and s2 ready).
    net.ns.ip(&["addr", "add", "10.0.4.1/24", "dev", "toserver"]);
    for i in 3..=4 {
        let addr = format!("10.0.{i}.2");
        net.ns.ip(&["neigh", "replace", &addr, "lladdr", "02:00:00:00:01:02", "dev", "toserver", "nud", "permanent"]);
    }
    net.run(|| {
        pin_to_cpu(0);
        let mut bed = FixtureBed::load(&config(2 * flows.max(1_000_000)));
        let ids: Vec<u32> = (1..=4).map(|i| bed.server_id("web", &format!("s{i}"))).collect();
        fill_flows(&bed.dp().maps.flows, 0..flows, (VIP, 80), |i| ids[i as usize % ids.len()]);

        // The probe: a packet of one of s1's flows (flow 0 is on s1).
        let probe =
            Pkt::tcp((client(0), 40000), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(ACK).seq(1000, 1).build();
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(probe.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex("toclient").to_ne_bytes());
        let prog = bed.dp().program().fd().expect("program fd").try_clone().expect("dup program fd");
        let prog_fd = prog.as_fd().as_raw_fd();
        assert_eq!(raw_test_run(prog_fd, &probe, &ctx), crate::fixture::XDP_REDIRECT, "probe flow forwarded before");

        let ready = AtomicBool::new(false);
        let (started, effect_at) = std::thread::scope(|s| {
            let prober = s.spawn(|| {
                pin_to_cpu(1);
                ready.store(true, Ordering::Release);
                let give_up = Instant::now() + Duration::from_secs(30);
                loop {
                    if raw_test_run(prog_fd, &probe, &ctx) == XDP_TX {
                        return Instant::now();
                    }
                    assert!(Instant::now() < give_up, "the disable never took effect");
                }
            });
            while !ready.load(Ordering::Acquire) {
                std::hint::spin_loop();
            }
            std::thread::sleep(Duration::from_millis(20));
            let started = Instant::now();
            bed.disable("web", &["s1"], DisableMode::Immediate, true).expect("disable s1");
            (started, prober.join().expect("probe"))
        });

        // The purge itself, measured apart on s2 (marked DISABLED first, as
        // a disable does): walk the table, delete its entries, send resets.
        bed.write_server_state("web", "s2", lb_common::server_state::DISABLED);
        let sender = ResetSender::new().expect("raw socket");
        let servers = bed.servers().clone();
        let done = terminate::terminate(bed.dp_mut(), &servers, &HashSet::from([ids[1]]), &sender).expect("purge");
        Scale {
            effect: effect_at.saturating_duration_since(started),
            purge_rate: done.flows as f64 / done.purge_time.as_secs_f64(),
            purged: done.flows,
            reset_rate: done.resets_sent as f64 / done.reset_time.as_secs_f64().max(1e-9),
        }
    })
}

pub fn run(report: &mut Report, quick: bool, lb: &Path) {
    let rounds = if quick { 1 } else { 3 };
    for flows in [100_000u32, 1_000_000] {
        let mut effects = Vec::new();
        let mut purges = Vec::new();
        let mut resets = Vec::new();
        let mut purged = 0;
        for _ in 0..rounds {
            let s = at_scale(flows);
            effects.push(s.effect.as_secs_f64() * 1e6);
            purges.push(s.purge_rate);
            resets.push(s.reset_rate);
            purged = s.purged;
        }
        let label = if flows == 100_000 { "1e5" } else { "1e6" };
        let note = format!("median of {rounds}; a quarter of the flows on the server");
        report.add(
            SECTION,
            format!("immediate disable, {label} flows: until no packet is forwarded"),
            median(&mut effects),
            "us",
            Some(Target::AtMost(1000.0)),
            note.clone(),
        );
        report.add(
            SECTION,
            format!("immediate disable, {label} flows: purge (walk + delete)"),
            median(&mut purges) / 1e6,
            "M entries/s",
            Some(Target::AtLeast(2.0)),
            format!("{purged} entries; {note}"),
        );
        report.add(
            SECTION,
            format!("immediate disable, {label} flows: resets to both ends"),
            median(&mut resets) / 1e6,
            "M packets/s",
            None,
            "raw socket, sendmmsg batches of 1024".to_owned(),
        );
    }
    sweep_cost(report, rounds);
    let reads = reads_during_purge(lb);
    report.add(
        SECTION,
        "pool show during an immediate disable of 1e6 flows (slowest)",
        reads.slowest.as_secs_f64() * 1e3,
        "ms",
        Some(Target::AtMost(50.0)),
        format!(
            "{} reads while the disable ran, {:.2} s (purge and 2e6 resets; release agent)",
            reads.reads,
            reads.took.as_secs_f64()
        ),
    );
    agent_memory(report, lb);
    super::health_cost::run(report, lb);
}

/// Reads of the API while the agent purged a million flows.
pub struct PurgeReads {
    /// How long the disable took (purge and resets).
    pub took: Duration,
    pub reads: usize,
    pub slowest: Duration,
    /// Whether a read showed the server DISABLED before the disable answered.
    pub saw_disabled: bool,
    /// Whether a read showed it DISABLED with its 1e6 flows being reset.
    pub saw_resetting: bool,
    /// The first read after the disable answered: whether its flows were
    /// still shown as being reset, and how many.
    pub after: (bool, u64),
    /// What the disable reported.
    pub flows_reset: u64,
    /// Flows left in the table afterwards.
    pub flows_left: usize,
    /// The agent's log lines about resets it could not send (the flows'
    /// clients are made up: no route leads to them).
    pub unsent_lines: Vec<String>,
}

/// The real agent `lb` with 1e6 live TCP flows on one of 4 servers: an
/// immediate disable of that server, and `pool show` asked again and again
/// (through the socket) until the disable answers.
pub fn reads_during_purge(lb: &Path) -> PurgeReads {
    use lb_userspace::{
        api::client,
        model::{Change, PoolView, Request, ServerState},
    };
    let topology = Topology::new(4);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1; 4] };
    let agent = Agent::start_with(lb.to_owned(), &topology, topology.config(&[spec]).set("flows.max", 2_000_000));
    // A fresh instance numbers its servers in config order: s1 is id 0.
    let flows = FlowTable::from_pins(&agent.pin_dir()).expect("pinned flow table");
    fill_flows(&flows, 0..1_000_000, (VIP, 80), |_| 0);
    let socket = agent.socket();
    let pool_show = || -> PoolView {
        let data = client::call(&socket, &Request::PoolShow { pool: "p80".into() }).expect("pool show");
        serde_json::from_value(data).expect("a pool view")
    };
    let counting = Instant::now();
    while pool_show().servers[0].active_flows != 1_000_000 {
        assert!(counting.elapsed() < Duration::from_secs(20), "the agent never counted the flows");
        std::thread::sleep(Duration::from_millis(50));
    }
    let started = Instant::now();
    let disable = std::thread::spawn({
        let socket = socket.clone();
        let request = Request::Disable {
            pool: "p80".into(),
            servers: vec!["s1".into()],
            mode: DisableMode::Immediate,
            force: false,
        };
        move || -> Vec<Change> {
            let answer = client::call(&socket, &request).expect("disable s1");
            serde_json::from_value(answer).expect("the changes")
        }
    });
    let (mut reads, mut slowest, mut saw_disabled, mut saw_resetting) = (0, Duration::ZERO, false, false);
    while !disable.is_finished() {
        let asked = Instant::now();
        let s1 = pool_show().servers.swap_remove(0);
        slowest = slowest.max(asked.elapsed());
        reads += 1;
        saw_disabled |= s1.state == ServerState::Disabled;
        saw_resetting |= s1.state == ServerState::Disabled && s1.resetting && s1.active_flows == 1_000_000;
        std::thread::sleep(Duration::from_millis(5));
    }
    let answer = disable.join().expect("disable thread");
    let s1 = pool_show().servers.swap_remove(0);
    PurgeReads {
        took: started.elapsed(),
        reads,
        slowest,
        saw_disabled,
        saw_resetting,
        after: (s1.resetting, s1.active_flows),
        flows_reset: answer[0].flows_reset.unwrap_or(0) as u64,
        flows_left: agent.flow_count(),
        unsent_lines: agent
            .log()
            .lines()
            .filter(|l| l.contains("not sent") || l.contains("could not be sent"))
            .map(String::from)
            .collect(),
    }
}

/// The sweep (ageing and counting every flow) at 1e6 flows spread over
/// 1,000 servers: it finds each flow's server, so a lookup that grows with
/// the number of servers shows here.
/// The sweep of 1e6 flows on 1,000 servers, and reloads at that scale: one
/// server added, then a second service on the same pool (every flow then
/// gets a return path of its own before the service opens).
fn sweep_cost(report: &mut Report, rounds: usize) {
    // Pool web's `n` servers, and its services on `ports`.
    let config = |n: usize, ports: &[u16]| {
        let head = ConfigFile::new().set("interfaces", vec!["toclient"]).set("flows.max", 2_000_000);
        let with_services = ports.iter().fold(head, |c, port| c.service(VIP, *port, "tcp", "web"));
        (0..n).fold(with_services, |c, i| {
            let address = std::net::Ipv4Addr::new(10, 1, (i / 200) as u8, (i % 200 + 1) as u8);
            c.server("web", &format!("s{i}"), address, 8080)
        })
    };
    let first = config(1000, &[80]);
    let net = fixture_netns();
    let (mut times, add_ms, share_ms) = net.run(|| {
        let mut bed = FixtureBed::load(&first);
        let ids: Vec<u32> = (0..1000).map(|i| bed.server_id("web", &format!("s{i}"))).collect();
        fill_flows(&bed.dp().maps.flows, 0..1_000_000, (VIP, 80), |i| ids[i as usize % ids.len()]);
        let sweeps = (0..rounds)
            .map(|_| {
                let started = Instant::now();
                let swept = sweep_once(&bed);
                assert_eq!((swept.scanned, swept.expired), (1_000_000, 0), "every flow seen, none removed");
                started.elapsed().as_secs_f64() * 1e3
            })
            .collect::<Vec<f64>>();
        let timed = |bed: &mut FixtureBed, config: ConfigFile| {
            let started = Instant::now();
            let report = bed.apply(&config);
            assert!(!report.changes.is_empty());
            started.elapsed().as_secs_f64() * 1e3
        };
        let add = timed(&mut bed, config(1001, &[80]));
        let share = timed(&mut bed, config(1001, &[80, 81]));
        (sweeps, add, share)
    });
    report.add(
        SECTION,
        "sweep of 1e6 flows on 1,000 servers (age and count)",
        median(&mut times),
        "ms",
        None,
        format!("median of {rounds}; each flow's server found by id (a scan of the servers before: 797 ms)"),
    );
    report.add(
        SECTION,
        "reload adding a server to a pool of 1,000 (1e6 flows)",
        add_ms,
        "ms",
        None,
        "the whole reload: plan, server, return paths and filter, the pool's hash row, state file".to_owned(),
    );
    report.add(
        SECTION,
        "reload adding a second service to that pool (1e6 flows)",
        share_ms,
        "ms",
        None,
        "its endpoints become shared: 1e6 return paths written first (a walk of the table)".to_owned(),
    );
}

/// The agent's resident memory with 1e6 flows in its (pinned) table, after
/// it has walked the table to age and count them.
fn agent_memory(report: &mut Report, lb: &Path) {
    let topology = Topology::new(4);
    let spec = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1; 4] };
    let agent = Agent::start_with(lb.to_owned(), &topology, topology.config(&[spec]).set("flows.max", 2_000_000));
    let pins = agent.pin_dir();
    let flows = FlowTable::from_pins(&pins).expect("pinned flow table");
    let servers: Vec<u32> = (0..4).collect();
    fill_flows(&flows, 0..1_000_000, (VIP, 80), |i| servers[i as usize % servers.len()]);
    // Let it sweep the full table a few times, and count flows for the API.
    std::thread::sleep(Duration::from_millis(3500));
    let counted: u64 = agent.pool("p80").servers.iter().map(|s| s.active_flows).sum();
    assert_eq!(counted, 1_000_000, "the agent counted {counted} flows");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("agent status");
    let field = |name: &str| -> f64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
            / 1024.0
    };
    let kernel_mib: f64 = lb_common::map_name::ALL
        .iter()
        .filter_map(|name| aya::maps::MapData::from_pin(pins.join(name)).ok())
        .map(|map| {
            let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", map.fd().as_fd().as_raw_fd()))
                .unwrap_or_default();
            fdinfo
                .lines()
                .find_map(|l| l.strip_prefix("memlock:"))
                .and_then(|v| v.trim().parse::<f64>().ok())
                .unwrap_or(0.0)
        })
        .sum::<f64>()
        / (1024.0 * 1024.0);
    report.add(
        SECTION,
        "agent resident memory with 1e6 flows (peak)",
        field("VmHWM:"),
        "MiB",
        Some(Target::AtMost(64.0)),
        format!("now {:.1} MiB; maps' kernel memory apart: {kernel_mib:.0} MiB", field("VmRSS:")),
    );
}

fn sweep_once(bed: &FixtureBed) -> lb_userspace::datapath::sweep::SweepReport {
    bed.sweep(lb_userspace::datapath::clock::datapath_now_ns())
}
