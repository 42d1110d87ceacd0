//! `lb-profile PATH SECONDS`: runs one path of bench section 1 through the
//! real balancer (BPF_PROG_TEST_RUN, pinned to CPU 0) over and over, so that
//! a sampling profiler sees where the JIT-compiled program spends its time.
//! These VMs have no PMU; `tests/probes/profile.sh` samples with `perf`'s
//! cpu-clock and maps the samples onto the program's machine code.
//! Paths: `hot` (one IPv4 flow's ACK), `hot6` (the same in IPv6), `random`
//! (ACKs at random among 1e6 flows), `new` (SYNs of new flows), `new6`
//! (the same in IPv6).
//! `two`: no profile, the cache-hot ACK timed on CPU 0 alone and on CPUs 0
//! and 1 at once (each its own flow), net of the trivial program run in
//! alternating chunks beside it, round after round: bench section 1's
//! two-CPU figure with many more rounds (`tests/probes/two_cpu_cost.c`
//! times small programs that share nothing the same way).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use testbed::{
    bench::{
        client,
        datapath_cost::{FLOWS_1E6, VIP, VIP6, config, mean, net_per_cpu, rotated},
        fill_flows, pin_to_cpu,
    },
    fixture::{CLIENT_MAC, FixtureBed, TOCLIENT_MAC, fixture_netns, ifindex, test_run},
    packet::{ACK, Pkt, SYN},
};

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().unwrap_or_default();
    let seconds: u64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    if !["hot", "hot6", "random", "new", "new6", "new6udp", "two"].contains(&path.as_str()) {
        eprintln!("usage: lb-profile hot|hot6|random|new|new6|new6udp|two [SECONDS]");
        std::process::exit(2);
    }
    // Stopped early (Ctrl-C, or `profile.sh` killing it), it removes its
    // namespace all the same.
    testbed::netns::clean_up_on_signals();
    let net = fixture_netns();
    // The benchmark's clients sit behind the fixture's client, as in the bench.
    net.ns.ip(&["route", "add", "11.0.0.0/8", "via", "10.0.0.2"]);
    net.ns.ip(&["-6", "route", "add", "fd00:b::/32", "via", "fd00::2"]);
    if path == "two" {
        net.run(|| two_cpus(Duration::from_secs(seconds)));
    } else {
        net.run(|| profile(&path, Duration::from_secs(seconds)));
    }
}

/// The cache-hot ACK alone, on two CPUs at once on one balancer, and on
/// two CPUs each on a balancer of its own, timed as bench section 1 does
/// (`net_per_cpu`), in rounds until `length` has passed: the medians and
/// the medians of each round's ratios.
fn two_cpus(length: Duration) {
    pin_to_cpu(0);
    let beds = [FixtureBed::load(&config()), FixtureBed::load(&config())];
    let trivial = lb_userspace::datapath::load_test_program("pass").expect("trivial program");
    let trivial: &aya::programs::Xdp = trivial.program("pass").unwrap().try_into().unwrap();
    let tcp = |c: Ipv4Addr, flags| Pkt::tcp((c, 40000), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(flags);
    let acks: Vec<Vec<Vec<u8>>> = [5000, 9000]
        .iter()
        .map(|&n| {
            let c = client(FLOWS_1E6 + n);
            for bed in &beds {
                bed.run_frame(&tcp(c, SYN).build(), "toclient");
            }
            vec![tcp(c, ACK).seq(1000, 1).build(); 5000]
        })
        .collect();
    let toclient = ifindex("toclient");
    let (ours, theirs) = (beds[0].dp().program(), beds[1].dp().program());
    let frames: [&[Vec<u8>]; 2] = [&acks[0], &acks[1]];
    let mut figures: [Vec<f64>; 5] = Default::default();
    let started = Instant::now();
    for pair in 0.. {
        if started.elapsed() >= length {
            break;
        }
        let [one, shared, apart] = rotated(
            pair,
            [
                &mut || mean(&net_per_cpu(&[ours], trivial, &frames[..1], toclient)),
                &mut || mean(&net_per_cpu(&[ours, ours], trivial, &frames, toclient)),
                &mut || mean(&net_per_cpu(&[ours, theirs], trivial, &frames, toclient)),
            ],
        );
        for (figure, value) in figures.iter_mut().zip([one, shared, apart, shared / one, shared / apart]) {
            figure.push(value);
        }
    }
    let pairs = figures[0].len();
    let [one, shared, apart, two_one, shared_apart] = figures.map(|mut v| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    });
    println!(
        "{pairs} pairs: alone {one:.1} ns, both CPUs on one balancer {shared:.1} ns, each on its own {apart:.1} ns; \
         two / one {two_one:.2}, one balancer / each its own {shared_apart:.2} (medians of the pairs' ratios)",
    );
}

fn profile(path: &str, length: Duration) {
    pin_to_cpu(0);
    // The bench's config, and a UDP service on the IPv6 VIP for `new6udp`.
    let bed = FixtureBed::load(&config().service(VIP6, 53, "udp", "web"));
    let frames = frames(&bed, path);
    let program = bed.dp().program();
    let toclient = ifindex("toclient");
    // The profiler starts on this line.
    println!("READY");
    let started = Instant::now();
    let (mut calls, mut kernel_ns) = (0u64, 0u128);
    // New flows run once through their frames: a SYN seen twice is no
    // longer a new flow.
    while started.elapsed() < length && !(path.starts_with("new") && calls > 0) {
        for frame in &frames {
            kernel_ns += test_run(program, frame, toclient).2.as_nanos();
            calls += 1;
        }
    }
    println!("{calls} calls, {} ns a call as the kernel timed them", kernel_ns / calls.max(1) as u128);
}

fn frames(bed: &FixtureBed, path: &str) -> Vec<Vec<u8>> {
    let tcp = |c: Ipv4Addr, flags| Pkt::tcp((c, 40000), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(flags);
    let hot = client(FLOWS_1E6 + 5000);
    bed.run_frame(&tcp(hot, SYN).build(), "toclient");
    let ack = |c| tcp(c, ACK).seq(1000, 1).build();
    match path {
        "hot" => vec![ack(hot); 4096],
        "hot6" => {
            let c6 = Ipv6Addr::new(0xfd00, 0xb, 0, 0, 0, 0, 0, 5);
            let tcp6 = |flags| Pkt::tcp((c6, 40000), (VIP6, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(flags);
            bed.run_frame(&tcp6(SYN).build(), "toclient");
            vec![tcp6(ACK).seq(1000, 1).build(); 4096]
        }
        "random" => {
            let s1 = bed.server_id("web", "s1");
            fill_flows(&bed.dp().maps.flows, 0..FLOWS_1E6, (VIP, 80), |_| s1);
            let mut rng = 0x2545_f491_4f6c_dd1du64;
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % FLOWS_1E6 as u64) as u32
            };
            (0..100_000).map(|_| ack(client(next()))).collect()
        }
        "new6" => (0..1_500_000)
            .map(|i| {
                let c6 = Ipv6Addr::new(0xfd00, 0xb, 1, 0, 0, 0, (i >> 16) as u16, i as u16);
                Pkt::tcp((c6, 40000), (VIP6, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build()
            })
            .collect(),
        "new6udp" => (0..1_500_000)
            .map(|i| {
                let c6 = Ipv6Addr::new(0xfd00, 0xb, 1, 0, 0, 0, (i >> 16) as u16, i as u16);
                Pkt::udp((c6, 40000), (VIP6, 53)).macs(CLIENT_MAC, TOCLIENT_MAC).payload(b"query").build()
            })
            .collect(),
        // Within the table's capacity (2e6 flows): no eviction.
        _ => (0..1_500_000).map(|i| tcp(client(0x80_0000 + i), SYN).build()).collect(),
    }
}
