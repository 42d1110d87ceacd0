//! Taking servers out of service, through the real agent and CLI, with real
//! TCP and UDP clients and servers: immediately, gracefully with a timeout,
//! gracefully until drained; enabling again; several at once; the last-server
//! guard; restarts; bad input.

use std::{
    io::ErrorKind,
    net::UdpSocket,
    time::{Duration, Instant},
};

use lb_userspace::model::{Change, EventKind, ServerState, Why};
use testbed::{
    bed::{Bed, EVERY_100MS, UDP, bed, bed_with, wait_for},
    servers::{Session, udp_exchange_on},
    topology::VIP,
};

fn assert_reset(session: &Session, what: &str, not_before: Instant, not_after: Instant) {
    let ended = session.ended().unwrap_or_else(|| panic!("{what}: no reset seen"));
    assert_eq!(ended.kind, ErrorKind::ConnectionReset, "{what}: ended by {:?}, not a reset", ended.kind);
    assert!(ended.at >= not_before, "{what}: reset {:?} too early", not_before - ended.at);
    assert!(ended.at <= not_after, "{what}: reset {:?} too late", ended.at - not_after);
}

#[test]
fn immediate_disable_resets_every_session_at_once_and_spares_the_others() {
    let b = bed(3);
    let busy: Vec<Session> = (0..3).map(|_| Session::start(b.connect_to("s1"), "s1", EVERY_100MS)).collect();
    let idle = Session::start(b.connect_to("s1"), "s1", None);
    let others =
        [Session::start(b.connect_to("s2"), "s2", EVERY_100MS), Session::start(b.connect_to("s3"), "s3", EVERY_100MS)];
    std::thread::sleep(Duration::from_millis(300));
    assert!(busy.iter().all(|s| s.ended().is_none() && s.exchanges() > 0));

    let issued = Instant::now();
    let out = b.lb(&["server", "disable", "p7", "s1"]);
    let returned = Instant::now();
    assert!(out.contains("p7/s1: ENABLED -> DISABLED (immediate), 4 live TCP flow(s) reset"), "{out}");

    std::thread::sleep(Duration::from_millis(300));
    for (i, s) in busy.iter().enumerate() {
        assert_reset(s, &format!("busy client {i}"), issued, returned + Duration::from_millis(200));
    }
    assert_reset(&idle, "idle client", issued, returned + Duration::from_millis(200));
    wait_for("s1's four sockets closed by a reset", Duration::from_secs(1), || b.echo[0].resets() == 4);

    // s1 gets no packet of those flows, nor any new one.
    let packets = b.server("p7", "s1").packets_to;
    let names = b.new_connections(30);
    assert!(!names.contains(&"s1".to_owned()), "a new connection reached s1: {names:?}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(b.server("p7", "s1").packets_to, packets, "s1's counters moved");

    for s in &others {
        assert!(s.ended().is_none(), "a connection on {} was hurt: {:?}", s.server, s.ended());
    }
    let before: Vec<u64> = others.iter().map(Session::exchanges).collect();
    std::thread::sleep(Duration::from_millis(400));
    for (s, n) in others.iter().zip(before) {
        assert!(s.exchanges() > n, "connection on {} stalled", s.server);
    }
    assert_eq!(b.state("p7", "s1"), "DISABLED (immediate)");
}

/// A client whose SYN reached s1 just before an immediate disable has seen
/// nothing of s1 yet (here s1's answers never come back): it is told at
/// once (a reset that acknowledges its SYN: "connection refused"), rather
/// than left to wait on its SYN's retransmissions.
#[test]
fn an_immediate_disable_refuses_at_once_a_handshake_in_flight_to_the_server() {
    let b = bed(1);
    b.topology.server("s1").ns.ip(&["route", "replace", "blackhole", "10.0.0.0/24"]);
    let (result, ended, disabled) = std::thread::scope(|s| {
        let connecting = s.spawn(|| {
            b.topology.client.run(|| {
                let to = std::net::SocketAddr::from((VIP, 7));
                let result = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(20));
                (result.map(drop).map_err(|e| e.kind()), Instant::now())
            })
        });
        wait_for("the handshake's flow on s1", Duration::from_secs(5), || b.server("p7", "s1").active_flows == 1);
        b.lb(&["server", "disable", "p7", "s1", "--force"]);
        let disabled = Instant::now();
        let (result, ended) = connecting.join().expect("the connecting thread");
        (result, ended, disabled)
    });
    assert_eq!(result, Err(ErrorKind::ConnectionRefused), "the handshake in flight was not refused");
    eprintln!("refused {:?} after the disable returned", ended.saturating_duration_since(disabled));
}

#[test]
fn graceful_disable_with_timeout_lets_sessions_run_then_resets_them_at_the_deadline() {
    let b = bed(3);
    let busy = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let idle = Session::start(b.connect_to("s1"), "s1", None);

    let issued = Instant::now();
    b.lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", "3s"]);
    let returned = Instant::now();
    assert_eq!(b.state("p7", "s1"), "DRAINING (deadline)");
    let left = b.server("p7", "s1").deadline_left_ms.expect("a deadline");
    assert!((2500..=3000).contains(&left), "deadline in {left} ms");

    let names = b.new_connections(20);
    assert!(!names.contains(&"s1".to_owned()), "a new connection reached draining s1: {names:?}");
    std::thread::sleep(issued + Duration::from_millis(2900) - Instant::now());
    assert!(busy.ended().is_none() && idle.ended().is_none(), "a session ended before the deadline");
    let exchanged = busy.exchanges();
    assert!(exchanged >= 25, "only {exchanged} exchanges in 3 s of draining");

    let deadline = (issued + Duration::from_secs(3), returned + Duration::from_secs(3));
    wait_for("reset after the deadline", Duration::from_secs(3), || busy.ended().is_some() && idle.ended().is_some());
    assert_reset(&busy, "busy client", deadline.0, deadline.1 + Duration::from_secs(1));
    assert_reset(&idle, "idle client", deadline.0, deadline.1 + Duration::from_secs(1));
    wait_for("s1's two sockets closed by a reset", Duration::from_secs(1), || b.echo[0].resets() == 2);
    assert_eq!(b.state("p7", "s1"), "DISABLED (deadline)");
    b.wait_events("s1", EventKind::Deadline, 1, Duration::from_secs(2));
}

#[test]
fn graceful_disable_until_drained_waits_for_the_last_session_then_enable_restores_service() {
    let b = bed(3);
    let busy = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    b.lb(&["server", "disable", "p7", "s1", "--graceful", "--until-drained"]);

    for _ in 0..10 {
        std::thread::sleep(Duration::from_secs(1));
        let s1 = b.server("p7", "s1");
        assert_eq!((s1.state, s1.why), (ServerState::Draining, Some(Why::UntilDrained)));
        assert_eq!(s1.active_flows, 1, "{s1:?}");
        assert!(busy.ended().is_none(), "the draining session broke: {:?}", busy.ended());
    }
    assert!(busy.exchanges() >= 90, "only {} exchanges in 10 s", busy.exchanges());

    let client = busy.finish().expect("session still open");
    let closed = Instant::now();
    drop(client);
    let drained = b.wait_state("p7", "s1", "DISABLED (drained)", Duration::from_secs(2));
    assert!(drained - closed <= Duration::from_secs(1), "drained {:?} after the close", drained - closed);
    b.wait_events("s1", EventKind::Drained, 1, Duration::from_secs(2));

    // Enable: back in service, new connections reach it again.
    let out = b.lb(&["server", "enable", "p7", "s1"]);
    assert!(out.contains("p7/s1: DISABLED (drained) -> ENABLED"), "{out}");
    let names = b.new_connections(40);
    assert!(names.contains(&"s1".to_owned()), "no new connection reached s1 after enable: {names:?}");
}

#[test]
fn several_servers_change_in_one_command_and_the_last_server_is_guarded() {
    let b = bed(3);
    let changes: Vec<Change> = b.agent.lb_json(&["server", "disable", "p7", "s1", "s2", "--graceful"]);
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(b.state("p7", "s1"), "DRAINING (until drained)");
    assert_eq!(b.state("p7", "s2"), "DRAINING (until drained)");

    let (ok, _, stderr) = b.agent.lb(&["server", "disable", "p7", "s3"]);
    assert!(!ok, "disabling the last enabled server was allowed");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no enabled server") && stderr.contains("--force"), "{stderr}");
    assert_eq!(b.state("p7", "s3"), "ENABLED", "the refused change changed something");

    b.lb(&["server", "disable", "p7", "s3", "--force"]);
    assert_eq!(b.state("p7", "s3"), "DISABLED (immediate)");

    b.lb(&["server", "enable", "p7", "s1", "s2", "s3"]);
    for s in ["s1", "s2", "s3"] {
        assert_eq!(b.state("p7", s), "ENABLED");
    }
    let names = b.new_connections(60);
    for s in ["s1", "s2", "s3"] {
        assert!(names.contains(&s.to_owned()), "{s} got no new connection: {names:?}");
    }
    // Disabling an already disabled server is not an error and changes nothing.
    b.lb(&["server", "disable", "p7", "s1"]);
    let out = b.lb(&["server", "disable", "p7", "s1"]);
    assert!(out.contains("(unchanged)"), "{out}");
}

#[test]
fn udp_flows_in_the_three_modes() {
    let b = bed_with(3, |c| c.set("flows.udp_idle_timeout", "1s").set("flows.sweep_interval", "200ms"));
    let served = |i: usize| b.udp[i].served();
    let exchange = |socket: &UdpSocket| b.topology.client.run(|| udp_exchange_on(socket, VIP, UDP, "ping"));

    // Immediate: s1 gets no more datagrams; a flow on s2 is untouched.
    let on_s1 = b.udp_flow_to("s1");
    let on_s2 = b.udp_flow_to("s2");
    b.lb(&["server", "disable", "p53", "s1"]);
    let before = served(0);
    for _ in 0..5 {
        if let Ok(name) = exchange(&on_s1) {
            assert_ne!(name, "s1", "a datagram reached disabled s1");
        }
        assert_eq!(exchange(&on_s2).expect("flow on s2"), "s2");
    }
    assert_eq!(served(0), before, "s1 received datagrams after an immediate disable");
    b.lb(&["server", "enable", "p53", "s1"]);

    // Graceful with a 2 s timeout: the flow keeps working until the deadline.
    let on_s1 = b.udp_flow_to("s1");
    let issued = Instant::now();
    b.lb(&["server", "disable", "p53", "s1", "--graceful", "--timeout", "2s"]);
    while issued.elapsed() < Duration::from_millis(1700) {
        assert_eq!(exchange(&on_s1).expect("draining UDP flow"), "s1");
        std::thread::sleep(Duration::from_millis(100));
    }
    for _ in 0..10 {
        let socket = b.topology.client.run(|| UdpSocket::bind("0.0.0.0:0")).unwrap();
        assert_ne!(exchange(&socket).expect("new UDP flow"), "s1", "a new UDP flow reached draining s1");
    }
    b.wait_state("p53", "s1", "DISABLED (deadline)", Duration::from_secs(2));
    let before = served(0);
    for _ in 0..3 {
        let _ = exchange(&on_s1);
    }
    assert_eq!(served(0), before, "s1 received datagrams after its deadline");
    b.lb(&["server", "enable", "p53", "s1"]);

    // Until drained: drained once the flow has been idle for the UDP timeout.
    let on_s1 = b.udp_flow_to("s1");
    b.lb(&["server", "disable", "p53", "s1", "--graceful", "--until-drained"]);
    for _ in 0..10 {
        assert_eq!(exchange(&on_s1).expect("draining UDP flow"), "s1");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(b.state("p53", "s1"), "DRAINING (until drained)");
    let last = Instant::now();
    let drained = b.wait_state("p53", "s1", "DISABLED (drained)", Duration::from_secs(4));
    assert!(drained - last >= Duration::from_millis(900), "drained before the flow idled out");
}

#[test]
fn a_drain_survives_an_agent_killed_and_restarted_and_its_deadline_fires_on_time() {
    let b = bed(3);
    let busy = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let issued = Instant::now();
    b.lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", "5s"]);
    let returned = Instant::now();

    std::thread::sleep(Duration::from_secs(1));
    let mut agent = b.agent;
    agent.kill();
    let at_kill = busy.exchanges();
    std::thread::sleep(Duration::from_millis(700));
    assert!(busy.exchanges() > at_kill + 4, "the session stalled while the agent was down");
    agent.restart();
    let b = Bed { agent, ..b };
    assert_eq!(b.state("p7", "s1"), "DRAINING (deadline)");
    assert!(busy.ended().is_none());

    wait_for("reset at the deadline", Duration::from_secs(6), || busy.ended().is_some());
    assert_reset(&busy, "session", issued + Duration::from_secs(5), returned + Duration::from_secs(6));
    assert_eq!(b.state("p7", "s1"), "DISABLED (deadline)");
}

#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let b = bed(2);
    let states = || (b.state("p7", "s1"), b.state("p7", "s2"));
    let before = states();
    for (args, expect) in [
        (&["server", "disable", "nope", "s1"][..], "unknown pool \"nope\""),
        (&["server", "disable", "p7", "nope"][..], "unknown server \"nope\" in pool \"p7\""),
        (&["server", "disable", "p7", "s1", "nope"][..], "unknown server \"nope\""),
        (&["server", "enable", "p7", "nope"][..], "unknown server \"nope\""),
        (&["server", "disable", "p7", "s1", "--graceful", "--timeout", "-5s"][..], "is negative"),
        (&["server", "disable", "p7", "s1", "--graceful", "--timeout", "abc"][..], "not a number followed by a unit"),
        (&["pool", "show", "nope"][..], "unknown pool \"nope\""),
    ] {
        let (ok, _, stderr) = b.agent.lb(args);
        assert!(!ok, "lb {args:?} succeeded");
        assert_eq!(stderr.trim().lines().count(), 1, "lb {args:?}: not one line: {stderr}");
        assert!(stderr.starts_with("lb: ") && stderr.contains(expect), "lb {args:?}: {stderr}");
    }
    assert_eq!(states(), before, "bad input changed a server");

    let out = std::process::Command::new(testbed::agent::lb_bin())
        .args(["--socket", "/nonexistent/lb.sock", "server", "disable", "p7", "s1"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot reach the agent at /nonexistent/lb.sock"), "{stderr}");
}

#[test]
fn wait_follows_a_drain_with_progress_until_the_server_is_disabled() {
    let b = bed(2);
    let _busy = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let started = Instant::now();
    let (ok, stdout, stderr) =
        b.agent.lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", "2s", "--wait"]);
    assert!(ok, "{stderr}");
    assert!(started.elapsed() >= Duration::from_secs(2), "--wait returned before the deadline");
    assert!(stderr.contains("draining p7: s1: 1 flow(s), "), "no progress line: {stderr}");
    assert!(stderr.contains("s left"), "no time left shown: {stderr}");
    assert!(stdout.ends_with("p7/s1: DISABLED (deadline)\n"), "{stdout}");
    // It returns once the flows left at the deadline are reset, not before:
    // none is left or being reset, and the deadline's event is told.
    let s1 = b.server("p7", "s1");
    assert_eq!((s1.active_flows, s1.resetting), (0, false), "flows and resetting right after --wait");
    assert!(b.event_kinds_of("s1").contains(&EventKind::Deadline), "{:?}", b.events());
    assert!(!stderr.contains('\r') && !stderr.contains("drained ·"), "no bar when not a terminal: {stderr}");

    // At a terminal: one line redrawn, with a bar of the flows drained.
    let _busy = [Session::start(b.connect_to("s2"), "s2", EVERY_100MS), Session::start(b.connect_to("s2"), "s2", None)];
    b.lb(&["server", "enable", "p7", "s1"]);
    let (ok, drawn) =
        b.agent.lb_in_terminal(&["server", "disable", "p7", "s2", "--graceful", "--timeout", "2s", "--wait"]);
    assert!(ok, "{drawn}");
    assert!(drawn.contains("draining p7 [--------------------]   0% drained · s2: 2 flow(s), "), "{drawn:?}");
    assert!(drawn.contains("\r\x1b[K"), "the line is redrawn in place: {drawn:?}");
    assert!(drawn.contains("p7/s2: DISABLED (deadline)"), "{drawn:?}");
}

#[test]
fn a_pools_minimum_in_service_refuses_a_disable_below_it_through_the_cli() {
    let b = bed_with(3, |config| config.set("pools.p7.min_in_service", 2));
    b.lb(&["server", "disable", "p7", "s1", "--graceful"]);
    let (ok, _, stderr) = b.agent.lb(&["server", "disable", "p7", "s2"]);
    assert!(!ok, "a disable below the pool's minimum was allowed");
    assert!(stderr.contains("1 enabled server(s), fewer than its min_in_service (2)"), "{stderr}");
    assert!(stderr.contains("--force"), "{stderr}");
    assert_eq!(b.state("p7", "s2"), "ENABLED", "the refused change changed something");
    b.lb(&["server", "disable", "p7", "s2", "--force"]);
    assert_eq!(b.state("p7", "s2"), "DISABLED (immediate)");
}
