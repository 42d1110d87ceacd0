//! Balancer nodes behind a router's ECMP, over real BGP (BIRD, BFD on):
//! a node lost, or a server added and then a node lost (katran#155), costs
//! no connection, because every node holds every flow (replication).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use testbed::{
    bed::EVERY_100MS,
    ecmp::{EcmpBed, TCP_PORT, UDP_PORT, VIP},
    netns::NetNs,
    servers::{EchoClient, Session, udp_exchange_on},
};

/// Long-lived TCP sessions (a line every 100 ms) and UDP flows (a datagram
/// every 100 ms on one socket each), opened through the router.
struct Load {
    sessions: Vec<Session>,
    udp: Vec<JoinHandle<Result<u64, String>>>,
    stop: Arc<AtomicBool>,
    /// A steady stream of new connections: (slowest connect, failures).
    churn: Option<JoinHandle<(Duration, Vec<String>)>>,
}

impl Load {
    fn start(client: &NetNs, sessions: usize, udp_flows: usize) -> Load {
        let sessions = (0..sessions)
            .map(|i| {
                let mut c =
                    client.run(|| EchoClient::connect(VIP, TCP_PORT)).unwrap_or_else(|e| panic!("session {i}: {e}"));
                let server = c.exchange("hello").expect("a first exchange");
                Session::start(c, &server, EVERY_100MS)
            })
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let udp = (0..udp_flows)
            .map(|i| {
                let socket = client.run(|| std::net::UdpSocket::bind("0.0.0.0:0")).expect("a UDP socket");
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut first: Option<String> = None;
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let server = udp_exchange_on(&socket, VIP, UDP_PORT, &format!("flow {i} datagram {n}"))
                            .map_err(|e| format!("UDP flow {i}, datagram {n}: {e}"))?;
                        // A flow stays on its server.
                        if *first.get_or_insert_with(|| server.clone()) != server {
                            return Err(format!("UDP flow {i} moved from {first:?} to {server}"));
                        }
                        n += 1;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    Ok(n)
                })
            })
            .collect();
        let churn = {
            let stop = Arc::clone(&stop);
            let client = client.name.clone();
            Some(std::thread::spawn(move || churn(&client, &stop)))
        };
        Load { sessions, udp, stop, churn }
    }

    /// Stops the load; every session must still be open and every UDP
    /// flow must have had every answer, on its own server.
    fn check(mut self) -> (Duration, usize) {
        self.stop.store(true, Ordering::Relaxed);
        let (slowest, failures) = self.churn.take().expect("churn").join().expect("churn thread");
        let ended: Vec<String> = (self.sessions.iter().enumerate())
            .filter_map(|(i, s)| s.ended().map(|e| format!("session {i} on {}: {:?} at {:?}", s.server, e.kind, e.at)))
            .collect();
        assert!(ended.is_empty(), "sessions ended (now {:?}): {ended:#?}", Instant::now());
        for (i, flow) in self.udp.drain(..).enumerate() {
            let datagrams = flow.join().expect("UDP thread").unwrap_or_else(|e| panic!("{e}"));
            assert!(datagrams > 0, "UDP flow {i} exchanged nothing");
        }
        assert!(failures.is_empty(), "new connections failed: {failures:?}");
        (slowest, self.sessions.len())
    }
}

/// New connections one after another (connect, one line, close) until
/// stopped: the slowest connect, and every failure.
fn churn(client: &str, stop: &AtomicBool) -> (Duration, Vec<String>) {
    let ns = std::fs::File::open(format!("/run/netns/{client}")).expect("client netns");
    // SAFETY: setns on this thread only; the file is a namespace's.
    assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) }, 0);
    let (mut slowest, mut failures) = (Duration::ZERO, Vec::new());
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let start = Instant::now();
        match EchoClient::connect(VIP, TCP_PORT).and_then(|mut c| c.exchange("new")) {
            Ok(_) => slowest = slowest.max(start.elapsed()),
            Err(e) => failures.push(format!("connection {i}: {e}")),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (slowest, failures)
}

#[test]
fn nodes_lost_cost_no_connection_and_the_router_drops_a_silent_one_within_bfds_time() {
    let bed = EcmpBed::start(3, 3, 3);
    let load = Load::start(&bed.client, 24, 6);
    std::thread::sleep(Duration::from_millis(500));
    // n2 lost: its link cut. r's end loses its carrier: the path goes at once.
    bed.node("n2").ns.ip(&["link", "set", "dev", "uplink", "down"]);
    let dropped = bed.wait_paths(&[1, 3], Duration::from_secs(10));
    eprintln!("r stopped using n2 {} ms after its link was cut", dropped.as_millis());
    std::thread::sleep(Duration::from_millis(500));
    // n3 hung: its BIRD frozen, its sessions open and silent. BFD (100 ms
    // x 3) tells r; the hold timer (240 s by default) would take minutes.
    // Meanwhile n3's XDP still forwards what reaches it.
    bed.node("n3").bird.freeze();
    let dropped = bed.wait_paths(&[1], Duration::from_secs(30));
    eprintln!("r stopped using n3 {} ms after its BIRD froze (BFD target: 300 ms)", dropped.as_millis());
    assert!(dropped < Duration::from_secs(5), "BFD did not drop the silent node: {dropped:?}");
    std::thread::sleep(Duration::from_secs(1));
    let (slowest, sessions) = load.check();
    eprintln!("{sessions} sessions kept; slowest new connection {} ms", slowest.as_millis());
    assert!(slowest < Duration::from_secs(1), "a new connection took {slowest:?}");
}

#[test]
fn a_server_added_then_a_node_lost_moves_no_flow_to_another_server() {
    // katran#155: the pools change (s3 added, on every node), then a node
    // is lost. Its flows reach nodes whose Maglev rows now differ: without
    // their replicated copies, a third of them would go to s3, which
    // resets them.
    let mut bed = EcmpBed::start(3, 3, 2);
    let load = Load::start(&bed.client, 30, 6);
    std::thread::sleep(Duration::from_millis(300));
    bed.add_server(3, "n1");
    std::thread::sleep(Duration::from_millis(500));
    bed.node("n3").ns.ip(&["link", "set", "dev", "uplink", "down"]);
    bed.wait_paths(&[1, 2], Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let (slowest, sessions) = load.check();
    eprintln!("{sessions} sessions kept; slowest new connection {} ms", slowest.as_millis());
    assert!(slowest < Duration::from_secs(1), "a new connection took {slowest:?}");
}
