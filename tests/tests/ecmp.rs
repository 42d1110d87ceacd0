//! Balancer nodes behind a router's ECMP, over real BGP (BIRD, BFD on):
//! a node lost, taken out for maintenance (gracefully or at once) and put
//! back, or added, and a server added then a node lost (katran#155), cost
//! no connection, because every node holds every flow (replication, and a
//! joining node's push).

use std::{
    net::IpAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use lb_userspace::model::{NodeAdmin, NodeDisabled, NodesView, ServerState};
use testbed::{
    bed::EVERY_100MS,
    ecmp::{EcmpBed, Options, SHARED_PORT, TCP_PORT, UDP_PORT, VIP, VIP6},
    netns::NetNs,
    servers::{EchoClient, Session},
};

/// Long-lived TCP sessions (a line every 100 ms) and UDP flows (a datagram
/// every 100 ms on one socket each), opened through the router.
struct Load {
    sessions: Vec<Session>,
    udp: Vec<JoinHandle<Result<u64, String>>>,
    stop: Arc<AtomicBool>,
    /// Steady streams of new connections.
    churns: Vec<JoinHandle<Churn>>,
    timeline: Timeline,
}

/// What the stream of new connections met.
#[derive(Default)]
struct Churn {
    failures: Vec<String>,
    landed: Vec<Connection>,
}

/// A new connection made: when it began, how long it took (connect and a
/// line's round trip), of which the connect, its server.
struct Connection {
    began: Instant,
    took: Duration,
    connected: Duration,
    server: String,
}

/// What the load met, once stopped: every session kept.
struct Outcome {
    sessions: usize,
    landed: Vec<Connection>,
    timeline: Timeline,
}

/// What the test did and when, to tell where a slow connection fell.
#[derive(Clone)]
struct Timeline {
    start: Instant,
    events: Arc<std::sync::Mutex<Vec<(Instant, String)>>>,
}

impl Timeline {
    fn mark(&self, what: &str) {
        self.events.lock().expect("timeline").push((Instant::now(), what.to_owned()));
    }

    fn ms(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.start).as_millis()
    }

    /// The events, each at its millisecond since the load began.
    fn show(&self) -> String {
        let events = self.events.lock().expect("timeline");
        events.iter().map(|(at, what)| format!("{} ms {what}", self.ms(*at))).collect::<Vec<_>>().join("; ")
    }
}

/// One datagram to the VIP and its answer within 2 s: the name of the
/// server that echoed it. A late answer to a datagram before (one that was
/// sent again) is skipped.
fn udp_ask(socket: &std::net::UdpSocket, text: &str) -> std::io::Result<String> {
    let vip = std::net::SocketAddr::new(VIP.into(), UDP_PORT);
    socket.send_to(text.as_bytes(), vip)?;
    let until = Instant::now() + Duration::from_secs(2);
    let mut buf = [0u8; 2048];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        socket.set_read_timeout(Some(left))?;
        let (n, from) = socket.recv_from(&mut buf)?;
        if from != vip {
            return Err(std::io::Error::other(format!("reply from {from}, not from the VIP")));
        }
        let reply = String::from_utf8_lossy(&buf[..n]);
        match reply.split_once(' ') {
            Some((name, echoed)) if echoed == text => return Ok(name.to_owned()),
            _ => continue,
        }
    }
}

impl Load {
    fn start(client: &NetNs, sessions: usize, udp_flows: usize) -> Load {
        Load::start_on(client, (VIP.into(), TCP_PORT), sessions, udp_flows)
    }

    /// With its TCP sessions and new connections to `service`.
    fn start_on(client: &NetNs, service: (IpAddr, u16), sessions: usize, udp_flows: usize) -> Load {
        Load::start_with(client, service, sessions, udp_flows, 1)
    }

    /// With `churns` streams of new connections at once.
    fn start_with(client: &NetNs, service: (IpAddr, u16), sessions: usize, udp_flows: usize, churns: usize) -> Load {
        let sessions = (0..sessions)
            .map(|i| {
                let mut c = client
                    .run(|| EchoClient::connect(service.0, service.1))
                    .unwrap_or_else(|e| panic!("session {i}: {e}"));
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
                        // A datagram (or its answer) on a link at the moment
                        // it is cut is lost, on any network: sent again once
                        // after the 2 s wait, as a DNS client would. Twice
                        // lost fails.
                        let text = format!("flow {i} datagram {n}");
                        let server = udp_ask(&socket, &text)
                            .or_else(|e| {
                                eprintln!("UDP flow {i}, datagram {n}: {e}; sent again");
                                udp_ask(&socket, &text)
                            })
                            .map_err(|e| format!("UDP flow {i}, datagram {n}, sent twice: {e}"))?;
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
        let timeline = Timeline { start: Instant::now(), events: Arc::default() };
        let churns = (0..churns)
            .map(|_| {
                let stop = Arc::clone(&stop);
                let client = client.name.clone();
                std::thread::spawn(move || churn(&client, service, &stop))
            })
            .collect();
        Load { sessions, udp, stop, churns, timeline }
    }

    /// Notes a step of the test, for the report of a slow connection.
    fn mark(&self, what: &str) {
        self.timeline.mark(what);
    }

    /// Stops the load; every session must still be open and every UDP
    /// flow must have had every answer, on its own server.
    fn check(mut self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        let (mut failures, mut landed) = (Vec::new(), Vec::new());
        for churn in self.churns.drain(..) {
            let churn = churn.join().expect("churn thread");
            failures.extend(churn.failures);
            landed.extend(churn.landed);
        }
        let ended: Vec<String> = (self.sessions.iter().enumerate())
            .filter_map(|(i, s)| s.ended().map(|e| format!("session {i} on {}: {:?} at {:?}", s.server, e.kind, e.at)))
            .collect();
        assert!(ended.is_empty(), "sessions ended (now {:?}): {ended:#?}", Instant::now());
        for (i, flow) in self.udp.drain(..).enumerate() {
            let datagrams = flow.join().expect("UDP thread").unwrap_or_else(|e| panic!("{e}"));
            assert!(datagrams > 0, "UDP flow {i} exchanged nothing");
        }
        assert!(failures.is_empty(), "new connections failed: {failures:?}");
        let outcome = Outcome { sessions: self.sessions.len(), landed, timeline: self.timeline.clone() };
        eprintln!(
            "{} sessions kept; {} new connections, the slowest in {} ms",
            outcome.sessions,
            outcome.landed.len(),
            outcome.slowest(|_| true).as_millis()
        );
        outcome
    }
}

impl Outcome {
    /// The slowest of the new connections `pick` picks.
    fn slowest(&self, pick: impl Fn(&Connection) -> bool) -> Duration {
        self.landed.iter().filter(|c| pick(c)).map(|c| c.took).max().unwrap_or_default()
    }

    /// No new connection took a second (a lost SYN or SYN-ACK costs one).
    fn fast(self) -> Outcome {
        self.fast_outside(&[])
    }

    /// No new connection took a second but those begun while a link was
    /// cut and the router still used it (`cuts`: from just before the cut
    /// to just after the router dropped the path): a packet in flight on a
    /// cut link is lost, on any network, and a lost SYN or SYN-ACK costs
    /// the SYN's retransmission (1 s). Those are counted and said.
    fn fast_outside(self, cuts: &[(Instant, Instant)]) -> Outcome {
        let margin = Duration::from_millis(50);
        let during =
            |c: &Connection| cuts.iter().any(|(cut, dropped)| c.began + margin >= *cut && c.began <= *dropped + margin);
        let slowest = self.slowest(|c| !during(c));
        assert!(slowest < Duration::from_secs(1), "a new connection took {slowest:?}: {}", self.slow_ones());
        if !cuts.is_empty() {
            let count = self.landed.iter().filter(|c| during(c)).count();
            let slowest = self.slowest(during).as_millis();
            eprintln!("{count} new connection(s) began while a cut link was still used; the slowest took {slowest} ms");
        }
        self
    }

    /// The connections that took a second or more, each with its start
    /// and its connect's share, and the test's steps, in ms since the load
    /// began.
    fn slow_ones(&self) -> String {
        let ms = |at| self.timeline.ms(at);
        let slow: Vec<String> = (self.landed.iter().filter(|c| c.took >= Duration::from_secs(1)))
            .map(|c| {
                format!("began at {} ms, took {:?} (connect {:?}), on {}", ms(c.began), c.took, c.connected, c.server)
            })
            .collect();
        format!("{slow:?}; steps: {}", self.timeline.show())
    }
}

/// New connections one after another (connect, one line, close) until
/// stopped.
fn churn(client: &str, (vip, port): (IpAddr, u16), stop: &AtomicBool) -> Churn {
    let ns = std::fs::File::open(format!("/run/netns/{client}")).expect("client netns");
    // SAFETY: setns on this thread only; the file is a namespace's.
    assert_eq!(unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&ns), libc::CLONE_NEWNET) }, 0);
    let mut churn = Churn::default();
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let start = Instant::now();
        let mut connected = Duration::ZERO;
        let made = EchoClient::connect(vip, port).and_then(|mut c| {
            connected = start.elapsed();
            c.exchange("new")
        });
        match made {
            Ok(server) => churn.landed.push(Connection { began: start, took: start.elapsed(), connected, server }),
            Err(e) => churn.failures.push(format!("connection {i}: {e}")),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    churn
}

#[test]
fn nodes_lost_cost_no_connection_and_the_router_drops_a_silent_one_within_bfds_time() {
    let bed = EcmpBed::start(3, 3, 3);
    let load = Load::start(&bed.client, 24, 6);
    std::thread::sleep(Duration::from_millis(500));
    // n2 lost: its link cut. r's end loses its carrier: the path goes at once.
    let cut = Instant::now();
    bed.node("n2").ns.ip(&["link", "set", "dev", "uplink", "down"]);
    let dropped = bed.wait_paths(&[1, 3], Duration::from_secs(10));
    let n2_cut = (cut, Instant::now());
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
    load.check().fast_outside(&[n2_cut]);
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
    let cut = Instant::now();
    bed.node("n3").ns.ip(&["link", "set", "dev", "uplink", "down"]);
    bed.wait_paths(&[1, 2], Duration::from_secs(10));
    let n3_cut = (cut, Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    load.check().fast_outside(&[n3_cut]);

    // The nodes' starts cost no refused datagram (each pushed to the others
    // as it saw them, before they saw it: held until they did). Datagrams
    // from an address that is no node's: counted, and said once in the log
    // with why (the counter's alert alone does not say).
    let n1 = &bed.node("n1").agent;
    let refused = || n1.lb_json::<NodesView>(&["nodes"]).replication.expect("replication on").refused;
    assert_eq!(refused(), 0, "refused datagrams as the nodes started:\n{}", n1.log());
    bed.router.run(|| {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
        for _ in 0..3 {
            socket.send_to(b"not a flow", testbed::ecmp::sync_address(1)).expect("send");
        }
    });
    testbed::bed::wait_for("n1 counts the 3 datagrams", Duration::from_secs(30), || refused() == 3);
    let log = n1.log();
    let warned = log.lines().filter(|l| l.contains("WARN") && l.contains("ignored: not the cluster.sync_address"));
    assert_eq!(warned.count(), 1, "warned once:\n{log}");
}

#[test]
fn nodes_disabled_gracefully_or_at_once_then_enabled_cost_no_connection() {
    let bed = EcmpBed::start(3, 3, 3);
    let load = Load::start(&bed.client, 24, 6);
    std::thread::sleep(Duration::from_millis(500));
    let n1 = &bed.node("n1").agent;
    // Bad input changes nothing.
    let (ok, _, err) = n1.lb(&["node", "disable", "n9"]);
    assert!(!ok && err.contains("no node named \"n9\""), "{err}");
    let (ok, _, err) = n1.lb(&["node", "disable", "n2", "--timeout", "5s"]);
    assert!(!ok && err.contains("go with --graceful"), "{err}");
    assert_eq!(bed.paths(), [1, 2, 3]);

    // n2 gracefully, followed until drained: its flows' copies pushed, its
    // VIP and return route withdrawn, then disabled once none reached it.
    let (ok, out, err) = n1.lb(&["node", "disable", "n2", "--graceful", "--wait"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("n2: in service -> draining (withdrawn)"), "{out}");
    assert!(out.contains("flow(s) still arriving"), "the drain's progress: {out}");
    assert!(out.contains("n2: disabled (drained)"), "{out}");
    assert_eq!(bed.paths(), [1, 3], "withdrawn while draining");
    bed.wait_return_paths(2, Duration::from_secs(10));

    // n1 at once, through n3; n3 is then the last node announcing the VIP.
    let n3 = &bed.node("n3").agent;
    let (ok, out, err) = n3.lb(&["node", "disable", "n1"]);
    assert!(ok && out.contains("n1: in service -> disabled (withdrawn at once)"), "{out}{err}");
    bed.wait_paths(&[3], Duration::from_secs(10));
    let (ok, _, err) = n1.lb(&["node", "disable", "n3", "--graceful"]);
    assert!(!ok && err.contains("no other node in service announces 10.240.100.1"), "{err}");
    assert!(err.contains("--force"), "{err}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(bed.paths(), [3], "the refused disable changed nothing");

    // Each node's announcement and state, as every node sees them.
    let view: NodesView = n1.lb_json(&["node", "list"]);
    let state = |name: &str| view.nodes.iter().find(|n| n.node == name).expect("a node").clone();
    assert!(matches!(state("n1").admin, NodeAdmin::Disabled { reason: NodeDisabled::Immediate, .. }));
    assert!(matches!(state("n2").admin, NodeAdmin::Disabled { reason: NodeDisabled::Drained, .. }));
    assert_eq!(state("n3").admin, NodeAdmin::InService);
    assert!(state("n1").announced.is_empty() && state("n2").announced.is_empty());
    assert_eq!(state("n3").announced, [std::net::IpAddr::from(VIP)]);
    std::thread::sleep(Duration::from_millis(500));

    // Back into service.
    for node in ["n1", "n2"] {
        let (ok, out, err) = n3.lb(&["node", "enable", node]);
        assert!(ok && out.contains(&format!("{node}: disabled -> in service")), "{out}{err}");
    }
    bed.wait_paths(&[1, 2, 3], Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    load.check().fast();
}

#[test]
fn a_fourth_node_joins_under_load_with_the_live_flows_while_a_server_drains() {
    // The pools changed (s3 added) since the sessions began, and s1 is
    // drained (no deadline) as n4 joins: the flows the router moves to n4
    // are continued only if n4 received them before it was announced.
    let mut bed = EcmpBed::start(3, 3, 2);
    let load = Load::start(&bed.client, 30, 6);
    std::thread::sleep(Duration::from_millis(300));
    load.mark("s3 added");
    bed.add_server(3, "n1");
    load.mark("s3 in every pool");
    std::thread::sleep(Duration::from_millis(300));
    load.mark("s1 disabled gracefully");
    let (ok, out, err) = bed.node("n2").agent.lb(&["server", "disable", "echo", "s1", "--graceful"]);
    assert!(ok, "{out}{err}");
    // The decision is everywhere once every node shows it (measured, not
    // assumed: a slow machine applies it later).
    for node in &bed.nodes {
        testbed::bed::wait_for(&format!("s1 draining on {}", node.name), Duration::from_secs(10), || {
            node.agent.pool("echo").servers.iter().any(|s| s.name == "s1" && s.state == ServerState::Draining)
        });
    }
    let disabled = Instant::now();
    load.mark("s1 draining everywhere; n4 starts");
    let n4 = bed.add_node();
    load.mark("n4 in r's paths, every node sees it");
    // n4 follows the fleet's decision: s1 drains there too.
    let s1 = n4.agent.pool("echo").servers.into_iter().find(|s| s.name == "s1").expect("s1 on n4");
    assert_eq!(s1.state, ServerState::Draining, "s1 on n4");
    // It got the others' live flows (pushed) before it was announced.
    let view: NodesView = n4.agent.lb_json(&["nodes"]);
    let replication = view.replication.expect("replication on");
    assert!(replication.received >= 30, "the sessions' flows pushed to n4: {replication:?}");
    assert_eq!((replication.refused, replication.lost), (0, 0), "{replication:?}");
    std::thread::sleep(Duration::from_millis(1500));
    let outcome = load.check().fast();
    // No node sent a new connection to s1 once the decision was everywhere.
    let late: Vec<_> = outcome.landed.iter().filter(|c| c.began > disabled && c.server == "s1").collect();
    assert!(late.is_empty(), "{} new connection(s) went to the draining s1", late.len());
    assert!(outcome.landed.iter().any(|c| c.server == "s3"), "new connections use s3");
}

#[test]
fn a_server_added_while_a_node_reloads_late_costs_no_new_connection_its_syns_retransmission() {
    // A fleet reload reaches the nodes one after another. Until the last
    // has it, the router may send the new server's replies through a node
    // that does not know the server yet, and cannot rewrite them: the
    // client would wait for its SYN's retransmission (1 s). So the server
    // takes new flows only once every node has it. (A CI run met this
    // while s3 was added in the fourth-node test.)
    // The store's timeout (how long a reload waits for every node's
    // answer) well above the pause, even on a slow machine.
    let options = Options { store_timeout: Some("6s"), ..Options::default() };
    let mut bed = EcmpBed::start_with(3, 3, 2, options);
    let load = Load::start_with(&bed.client, (VIP.into(), TCP_PORT), 6, 0, 3);
    std::thread::sleep(Duration::from_millis(300));
    // n3's agent paused for a while (its datapath forwards on): it applies
    // the reload that long after the others. The thread resumes it even if
    // the test fails.
    let late = bed.node("n3").agent.pid() as libc::pid_t;
    // SAFETY: a signal to the agent process this test started.
    assert_eq!(unsafe { libc::kill(late, libc::SIGSTOP) }, 0, "pause n3's agent");
    let resume = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        // SAFETY: as above.
        unsafe { libc::kill(late, libc::SIGCONT) };
    });
    load.mark("s3 added; n3's agent paused 1.5 s");
    bed.add_server(3, "n1");
    load.mark("s3 takes new flows on every node");
    resume.join().expect("the thread that resumes n3's agent");
    std::thread::sleep(Duration::from_secs(1));
    let outcome = load.check().fast();
    assert!(outcome.landed.iter().any(|c| c.server == "s3"), "new connections use s3");
}

#[test]
fn flows_of_an_endpoint_serving_two_services_return_through_any_node_and_survive_a_node_lost() {
    // Each server serves two services (7000 and 7002): a reply finds its
    // VIP by its flow's return path, which every node must then hold too.
    let bed = EcmpBed::start_shared(3, 3, 3);
    let load = Load::start_on(&bed.client, (VIP.into(), SHARED_PORT), 24, 6);
    std::thread::sleep(Duration::from_millis(500));
    bed.node("n2").ns.ip(&["link", "set", "dev", "uplink", "down"]);
    bed.wait_paths(&[1, 3], Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    // Every session kept, every new connection made; but a new connection's
    // SYN-ACK may reach a node before its flow's copy, which cannot tell
    // the reply's service from the endpoint alone: it waits for the SYN's
    // retransmission (1 s). docs/cluster.md says so.
    let slowest = load.check().slowest(|_| true);
    assert!(slowest < Duration::from_millis(3500), "a new connection took {slowest:?}");
}

#[test]
fn a_vip_whose_servers_are_all_out_is_withdrawn_when_asked_and_announced_again_with_the_first_back() {
    let options = Options { withdraw_without_servers: true, ..Options::default() };
    let bed = EcmpBed::start_with(2, 1, 1, options);
    let n1 = &bed.node("n1").agent;
    // The VIP's TCP pool has no server left; its UDP pool still has s1.
    let (ok, out, err) = n1.lb(&["server", "disable", "echo", "s1", "--force"]);
    assert!(ok, "{out}{err}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(bed.paths(), [1, 2], "a service of the VIP still has a server");
    // None left: every node withdraws it.
    let (ok, out, err) = n1.lb(&["server", "disable", "uecho", "s1", "--force"]);
    assert!(ok, "{out}{err}");
    bed.wait_paths(&[], Duration::from_secs(10));
    // Each node's record says so (published within a tick).
    testbed::bed::wait_for("every node's record announcing nothing", Duration::from_secs(5), || {
        let view: NodesView = bed.node("n2").agent.lb_json(&["nodes"]);
        view.nodes.iter().all(|n| n.announced.is_empty())
    });
    // The first server back: announced again.
    let (ok, out, err) = bed.node("n2").agent.lb(&["server", "enable", "echo", "s1"]);
    assert!(ok, "{out}{err}");
    bed.wait_paths(&[1, 2], Duration::from_secs(10));
    let mut c = bed.client.run(|| EchoClient::connect(VIP, TCP_PORT)).expect("a connection to the VIP again");
    assert_eq!(c.exchange("back").expect("an answer"), "s1");
}

#[test]
fn ipv6_flows_are_replicated_too_and_survive_a_server_added_then_a_node_lost() {
    // Dual stack: BGP sessions for IPv6 too; the TCP service on the IPv6
    // VIP, on the same dual-stack servers. katran#155 in IPv6: its flows'
    // copies keep them on their servers.
    let options = Options { ipv6: true, ..Options::default() };
    let mut bed = EcmpBed::start_with(3, 3, 2, options);
    let load = Load::start_on(&bed.client, (VIP6.into(), TCP_PORT), 24, 0);
    std::thread::sleep(Duration::from_millis(300));
    bed.add_server(3, "n1");
    std::thread::sleep(Duration::from_millis(500));
    let cut = Instant::now();
    bed.node("n3").ns.ip(&["link", "set", "dev", "uplink", "down"]);
    testbed::bed::wait_for("r's IPv6 paths without n3", Duration::from_secs(10), || bed.paths6() == [1, 2]);
    let n3_cut = (cut, Instant::now());
    std::thread::sleep(Duration::from_secs(1));
    load.check().fast_outside(&[n3_cut]);
}
