//! Section 7, balancer nodes behind a router's ECMP (the ECMP test bed:
//! real BGP with BFD, each node's agent driving its BIRD, flow replication
//! on): new connections per second end to end through 3 nodes, then 2 and
//! 1 (the others taken out with `lb node disable --force`), and the ratios
//! to 1 node. On a machine of few cores the client, the router, the nodes
//! and the servers share them: the ratios then show what the path through
//! more nodes costs, not how far it scales.

use std::{
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use super::{Report, Target};
use crate::{
    ecmp::{EcmpBed, TCP_PORT, VIP},
    servers::EchoClient,
};

const SECTION: &str = "7. Nodes behind ECMP (BGP, replication on)";
/// Clients connecting at once.
const CLIENTS: usize = 4;

pub fn run(report: &mut Report, quick: bool) {
    let seconds = if quick { 2 } else { 4 };
    let bed = EcmpBed::start(3, 3, 3);
    let mut rates = Vec::new();
    for (nodes, out) in [(3, None), (2, Some("n3")), (1, Some("n2"))] {
        if let Some(node) = out {
            let (ok, stdout, stderr) = bed.node("n1").agent.lb(&["node", "disable", node, "--force"]);
            assert!(ok, "lb node disable {node}: {stdout}{stderr}");
            let paths: Vec<usize> = (1..=nodes).collect();
            bed.wait_paths(&paths, Duration::from_secs(10));
        }
        let rate = connections_per_second(&bed, Duration::from_secs(seconds));
        eprintln!("bench: ecmp through {nodes} node(s): {rate:.0} new connections/s");
        rates.push((nodes, rate));
    }
    let one = rates.iter().find(|(n, _)| *n == 1).map_or(0.0, |(_, r)| *r);
    let note = |n: usize| {
        format!(
            "{CLIENTS} clients for {seconds} s, connect + one line + close, through {n} node(s); 2 cores shared by \
             client, router, nodes and servers"
        )
    };
    report.add(SECTION, "new connections/s through 1 node", one, "conn/s", None, note(1));
    for (nodes, rate) in rates.iter().rev().filter(|(n, _)| *n > 1) {
        let label = format!("new connections/s through {nodes} nodes / through 1");
        report.add(SECTION, label, rate / one, "x", None::<Target>, format!("{rate:.0} conn/s; {}", note(*nodes)));
    }
}

/// Completed connections per second from the bed's client, `CLIENTS` at once.
fn connections_per_second(bed: &EcmpBed, during: Duration) -> f64 {
    let (done, failed, stop) = (AtomicU64::new(0), AtomicU64::new(0), AtomicBool::new(false));
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..CLIENTS {
            s.spawn(|| {
                bed.client.run(|| {
                    while !stop.load(Ordering::Relaxed) {
                        let made = EchoClient::connect(VIP, TCP_PORT).and_then(|mut c| c.exchange("x"));
                        let counter = if made.is_ok() { &done } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            });
        }
        std::thread::sleep(during);
        stop.store(true, Ordering::Relaxed);
    });
    let failed = failed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "connections failed through the nodes");
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}
