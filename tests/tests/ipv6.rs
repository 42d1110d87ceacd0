//! IPv6 and dual stack end to end, through the real agent and CLI, with real
//! TCP clients and servers over ULA addresses inside the test's own
//! namespaces: every echo service is on an IPv4 and an IPv6 VIP, every
//! server reached by its IPv4 and its IPv6 address, with one state.

use std::{
    io::ErrorKind,
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_userspace::model::{EventKind, HealthStatus, ServerState, Why};
use testbed::{
    bed::{Bed, EVERY_100MS, bed_of, echo_services, wait_for},
    config_file::ConfigFile,
    health_server::{HealthServer, Reply},
    keep_alive::end_of,
    servers::{EchoClient, Session, udp_exchange_on},
    topology::{Topology, VIP, VIP6},
};

fn dual_stack_bed(n: usize) -> Bed {
    bed_of(n, |topology| topology.config_dual_stack(&echo_services(n)))
}

fn assert_reset(session: &Session, what: &str, not_after: Instant) {
    let ended = session.ended().unwrap_or_else(|| panic!("{what}: no reset seen"));
    assert_eq!(ended.kind, ErrorKind::ConnectionReset, "{what}: ended by {:?}, not a reset", ended.kind);
    assert!(ended.at <= not_after, "{what}: reset {:?} too late", ended.at - not_after);
}

#[test]
fn an_immediate_disable_resets_the_servers_sessions_of_both_families() {
    let b = dual_stack_bed(2);
    let vip6 = IpAddr::V6(VIP6);
    let six = Session::start(b.connect_via(vip6, "s1"), "s1", EVERY_100MS);
    let idle6 = Session::start(b.connect_via(vip6, "s1"), "s1", None);
    let four = Session::start(b.connect_via(VIP.into(), "s1"), "s1", EVERY_100MS);
    let other6 = Session::start(b.connect_via(vip6, "s2"), "s2", EVERY_100MS);
    // UDP over IPv6 (its checksum is mandatory: the kernels at both ends check it).
    let udp6 = b.topology.client.run(|| std::net::UdpSocket::bind("[::]:0")).expect("bind");
    let name = udp_exchange_on(&udp6, VIP6, 53, "which").expect("a UDP answer through the IPv6 VIP");
    assert!(name == "s1" || name == "s2", "{name}");
    std::thread::sleep(Duration::from_millis(300));
    assert!(six.exchanges() > 0 && four.exchanges() > 0, "sessions of both families run");
    wait_for("the sweep counts s1's flows of both families", Duration::from_secs(3), || {
        b.server("p7", "s1").active_flows == 3
    });

    let host = b.topology.server("s1");
    let shown = b.server("p7", "s1").address;
    assert_eq!(shown, format!("{}:7007, [{}]:7007", host.addr, host.addr6), "both endpoints shown");

    let out = b.lb(&["server", "disable", "p7", "s1"]);
    let returned = Instant::now();
    assert!(out.contains("p7/s1: ENABLED -> DISABLED (immediate), 3 live TCP flow(s) reset"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_reset(&six, "IPv6 client", returned + Duration::from_millis(200));
    assert_reset(&idle6, "idle IPv6 client", returned + Duration::from_millis(200));
    assert_reset(&four, "IPv4 client", returned + Duration::from_millis(200));
    wait_for("s1's three sockets closed by a reset", Duration::from_secs(1), || b.echo[0].resets() == 3);
    assert!(other6.ended().is_none(), "s2's IPv6 session was hurt: {:?}", other6.ended());

    // No new flow of either family reaches s1; enable puts it back in both.
    for vip in [vip6, VIP.into()] {
        for _ in 0..20 {
            let mut c = b.topology.client.run(|| EchoClient::connect(vip, 7)).expect("connect");
            assert_eq!(c.exchange("which").expect("exchange"), "s2", "a new flow to {vip} reached disabled s1");
        }
    }
    b.lb(&["server", "enable", "p7", "s1"]);
    let _ = b.connect_via(vip6, "s1");
    let _ = b.connect_via(VIP.into(), "s1");
}

#[test]
fn a_graceful_disable_with_a_deadline_lets_sessions_of_both_families_run_then_resets_them_at_it() {
    let b = dual_stack_bed(2);
    let vip6 = IpAddr::V6(VIP6);
    let six = Session::start(b.connect_via(vip6, "s1"), "s1", EVERY_100MS);
    let idle6 = Session::start(b.connect_via(vip6, "s1"), "s1", None);
    let four = Session::start(b.connect_via(VIP.into(), "s1"), "s1", EVERY_100MS);
    let issued = Instant::now();
    b.lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", "2s"]);
    let returned = Instant::now();
    assert_eq!(b.state("p7", "s1"), "DRAINING (deadline)");
    let during = six.exchanges();
    for _ in 0..10 {
        let mut c = b.topology.client.run(|| EchoClient::connect(vip6, 7)).expect("connect");
        assert_eq!(c.exchange("which").expect("exchange"), "s2", "a new IPv6 flow reached draining s1");
    }

    // Reset at the deadline (the agent set it 2 s after it took the
    // command): not before, and within a second of it.
    wait_for("every session reset", Duration::from_secs(5), || {
        [&six, &idle6, &four].iter().all(|s| s.ended().is_some())
    });
    for (session, what) in [(&six, "IPv6 client"), (&idle6, "idle IPv6 client"), (&four, "IPv4 client")] {
        assert_reset(session, what, returned + Duration::from_secs(3));
        let at = session.ended().expect("ended").at;
        assert!(
            at >= issued + Duration::from_secs(2),
            "{what}: reset {:?} before the deadline",
            issued + Duration::from_secs(2) - at
        );
    }
    assert!(six.exchanges() > during, "the IPv6 session did not run while s1 drained");
    wait_for("s1's three sockets closed by a reset", Duration::from_secs(1), || b.echo[0].resets() == 3);
    assert_eq!(b.state("p7", "s1"), "DISABLED (deadline)");
    b.wait_events("s1", EventKind::Deadline, 1, Duration::from_secs(2));
}

#[test]
fn a_drain_until_drained_waits_for_the_last_session_of_either_family() {
    let b = dual_stack_bed(2);
    let six = Session::start(b.connect_via(IpAddr::V6(VIP6), "s1"), "s1", EVERY_100MS);
    let four = Session::start(b.connect_via(VIP.into(), "s1"), "s1", EVERY_100MS);
    b.lb(&["server", "disable", "p7", "s1", "--graceful", "--until-drained"]);
    wait_for("both sessions counted", Duration::from_secs(3), || b.server("p7", "s1").active_flows == 2);

    // The IPv4 session ends: the IPv6 one still holds the drain.
    drop(four.finish().expect("IPv4 session open"));
    wait_for("one session left", Duration::from_secs(3), || b.server("p7", "s1").active_flows == 1);
    let s1 = b.server("p7", "s1");
    assert_eq!((s1.state, s1.why), (ServerState::Draining, Some(Why::UntilDrained)), "{s1:?}");
    assert!(six.ended().is_none(), "the draining IPv6 session broke: {:?}", six.ended());

    drop(six.finish().expect("IPv6 session open"));
    b.wait_state("p7", "s1", "DISABLED (drained)", Duration::from_secs(3));
    b.wait_events("s1", EventKind::Drained, 1, Duration::from_secs(2));
}

/// `idle_close` in both families: a graceful drain closes the resting
/// connections of either family with a FIN (a clean end for their
/// clients), while a busy one goes on.
#[test]
fn a_graceful_drain_closes_resting_connections_of_both_families_cleanly() {
    let b = bed_of(2, |t| t.config_dual_stack(&echo_services(2)).set("pools.p7.idle_close", "1s"));
    let mut resting: Vec<(&str, EchoClient)> = [(IpAddr::V6(VIP6), "IPv6"), (VIP.into(), "IPv4")]
        .into_iter()
        .flat_map(|(vip, family)| (0..3).map(move |_| (vip, family)))
        .map(|(vip, family)| (family, b.connect_via(vip, "s1")))
        .collect();
    let busy6 = Session::start(b.connect_via(IpAddr::V6(VIP6), "s1"), "s1", EVERY_100MS);
    // Resting for longer than the quiet period.
    std::thread::sleep(Duration::from_millis(1500));
    let asked = Instant::now();
    b.lb(&["server", "disable", "p7", "s1", "--graceful"]);
    for (i, (family, client)) in resting.iter_mut().enumerate() {
        let left = Duration::from_secs(10).saturating_sub(asked.elapsed());
        assert_eq!(end_of(client, left), Ok(true), "{family} connection {i}: a clean close, not a reset");
    }
    assert!(busy6.ended().is_none(), "the busy IPv6 connection goes on: {:?}", busy6.ended());
    assert_eq!(b.state("p7", "s1"), "DRAINING (until drained)");
    drop(busy6.finish().expect("the busy IPv6 connection is open"));
    b.wait_state("p7", "s1", "DISABLED (drained)", Duration::from_secs(10));
}

/// The echo service on the IPv6 VIP only, its servers by their IPv6
/// addresses alone (`servers` of them), with an http monitor that reads 503
/// as maintenance.
fn ipv6_only(t: &Topology, servers: usize) -> ConfigFile {
    let monitor = [
        ("kind", "http".into()),
        ("maintenance_codes", vec![503].into()),
        ("interval", "300ms".into()),
        ("timeout", "200ms".into()),
        ("rise", 2.into()),
        ("fall", 2.into()),
        ("port", 8080.into()),
    ];
    let mut config = t.config(&[]).service(VIP6, 7, "tcp", "p7").monitor("p7", monitor);
    for s in &t.servers[..servers] {
        config = config.server("p7", &s.name, s.addr6, 7007);
    }
    config
}

/// The servers new connections to the IPv6 VIP reach.
fn reached(b: &Bed, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let mut c = b.topology.client.run(|| EchoClient::connect(VIP6, 7)).expect("connect");
            c.exchange("which").expect("exchange")
        })
        .collect()
}

#[test]
fn health_monitors_check_servers_by_their_ipv6_addresses() {
    let mut health = Vec::new();
    let b = bed_of(2, |t| {
        health = t.servers.iter().map(|s| HealthServer::start(&s.ns, 8080)).collect();
        ipv6_only(t, 2)
    });
    wait_for("both servers UP by their IPv6 addresses", Duration::from_secs(5), || {
        ["s1", "s2"].iter().all(|s| b.server("p7", s).health.is_some_and(|h| h.status == HealthStatus::Up))
    });
    health[0].set(Reply::Status(503));
    b.wait_state("p7", "s1", "DRAINING (maintenance (health monitor))", Duration::from_secs(3));
    assert!(!reached(&b, 20).contains(&"s1".to_owned()), "a new connection reached s1 in maintenance");
    health[0].set(Reply::Ok);
    b.wait_state("p7", "s1", "ENABLED", Duration::from_secs(3));
    drop(health.pop());
    wait_for("s2 DOWN when its health endpoint stops", Duration::from_secs(5), || {
        b.server("p7", "s2").health.is_some_and(|h| h.status == HealthStatus::Down)
    });
}

#[test]
fn tcp_and_udp_monitors_check_servers_by_their_ipv6_addresses() {
    let mut b = bed_of(2, |t| {
        let timing = [("interval", "300ms".into()), ("timeout", "200ms".into())];
        let tcp = [[("kind", "tcp".into())].as_slice(), &timing].concat();
        let udp =
            [[("kind", "udp".into()), ("send", "which".into()), ("expect", "s".into())].as_slice(), &timing].concat();
        let mut config = t.config(&[]).service(VIP6, 7, "tcp", "p7").monitor("p7", tcp);
        config = config.service(VIP6, 53, "udp", "p53").monitor("p53", udp);
        for s in &t.servers {
            config = config.server("p7", &s.name, s.addr6, 7007).server("p53", &s.name, s.addr6, 5353);
        }
        config
    });
    let status = |b: &Bed, pool: &str, name: &str| b.server(pool, name).health.expect("monitored").status;
    let every = [("p7", "s1"), ("p7", "s2"), ("p53", "s1"), ("p53", "s2")];
    wait_for("every server UP by TCP and by UDP over IPv6", Duration::from_secs(5), || {
        every.iter().all(|(pool, name)| status(&b, pool, name) == HealthStatus::Up)
    });
    b.echo[0].stop();
    b.udp[0].stop();
    wait_for("s1 DOWN by both monitors once its servers stop", Duration::from_secs(5), || {
        status(&b, "p7", "s1") == HealthStatus::Down && status(&b, "p53", "s1") == HealthStatus::Down
    });
    assert_eq!((status(&b, "p7", "s2"), status(&b, "p53", "s2")), (HealthStatus::Up, HealthStatus::Up));
}

#[test]
fn a_reload_adds_an_ipv6_server_and_refuses_the_first_ipv6_service_of_an_ipv4_node() {
    let b = bed_of(3, |t| ipv6_only(t, 2));
    let session = Session::start(b.connect_via(IpAddr::V6(VIP6), "s1"), "s1", EVERY_100MS);
    let more = ipv6_only(&b.topology, 3);
    b.write_config(&more);
    let out = b.lb(&["reload"]);
    assert!(out.contains("s3"), "{out}");
    wait_for("a new IPv6 connection reaches s3", Duration::from_secs(5), || reached(&b, 10).contains(&"s3".to_owned()));
    assert!(session.ended().is_none(), "the reload broke an IPv6 session: {:?}", session.ended());

    // An IPv4-only node cannot take its first IPv6 service without a restart.
    let four = testbed::bed::bed(1);
    four.write_config(&four.topology.config_dual_stack(&echo_services(1)));
    let (ok, _, stderr) = four.agent.lb(&["reload"]);
    assert!(!ok, "refused: {stderr}");
    assert!(stderr.contains("IPv6 services: none -> some"), "{stderr}");
}

#[test]
fn ipv6_sessions_survive_a_killed_agent_and_the_restarted_one_still_drains_them() {
    let mut b = dual_stack_bed(2);
    let six = Session::start(b.connect_via(IpAddr::V6(VIP6), "s1"), "s1", EVERY_100MS);
    b.agent.kill();
    let during = six.exchanges();
    std::thread::sleep(Duration::from_millis(500));
    assert!(six.exchanges() > during, "the IPv6 session stalled while no agent ran");
    b.agent.restart();
    assert!(six.ended().is_none(), "the restart broke the IPv6 session: {:?}", six.ended());

    // The restarted agent finds the flow in the pinned IPv6 table: it holds
    // a drain, and ends it when it closes.
    b.lb(&["server", "disable", "p7", "s1", "--graceful", "--until-drained"]);
    wait_for("the pinned IPv6 flow counted", Duration::from_secs(3), || b.server("p7", "s1").active_flows == 1);
    assert_eq!(b.server("p7", "s1").state, ServerState::Draining);
    drop(six.finish().expect("IPv6 session open"));
    b.wait_state("p7", "s1", "DISABLED (drained)", Duration::from_secs(3));
}
