//! Health monitors with real servers in namespaces and real replies: a
//! server whose health endpoint stops answering goes DOWN and its flows
//! follow `on_down`; maintenance replies (a status, a string, an announced
//! drain) drain it and normal replies put it back; the operator's decision
//! wins; a restarted agent keeps what it knew; checks are never balanced;
//! a pool whose servers are all DOWN keeps serving (fail-open).

use std::{
    io::ErrorKind,
    time::{Duration, Instant},
};

use lb_userspace::model::{CheckResult, DownReason, EventKind, HealthStatus, HealthView, Source};
use testbed::{
    bed::{Bed, EVERY_100MS, bed_of, wait_for},
    config_file::ConfigFile,
    health_server::{HealthServer, Reply},
    servers::Session,
    topology::{Topology, VIP},
};
use toml::Value;

const HEALTH_PORT: u16 = 8080;

/// An http monitor that reads a 503 as "in maintenance".
fn maintenance_by_503() -> [(&'static str, Value); 2] {
    [("kind", "http".into()), ("maintenance_codes", vec![503].into())]
}
/// Settings as the config file names them: `[("kind", "http".into())]`.
type Settings<'a> = &'a [(&'a str, Value)];

/// Checks every 300 ms, 200 ms to answer, rise 2, fall 2: DOWN within
/// about 0.8 s of the first failure.
fn monitor_defaults() -> Vec<(&'static str, Value)> {
    vec![
        ("interval", "300ms".into()),
        ("timeout", "200ms".into()),
        ("rise", 2.into()),
        ("fall", 2.into()),
        ("port", i64::from(HEALTH_PORT).into()),
    ]
}

/// The echo service (VIP:7, pool p7 of every server) with `pool` settings
/// (on_down, ...) and one monitor with `monitor` settings (kind, ...).
fn config(t: &Topology, pool: Settings, monitor: Settings) -> ConfigFile {
    let mut config = t.config(&[]).service(VIP, 7, "tcp", "p7");
    for (key, value) in pool {
        config = config.set(&format!("pools.p7.{key}"), value.clone());
    }
    config = config.monitor("p7", monitor_defaults().into_iter().chain(monitor.iter().cloned()));
    for s in &t.servers {
        config = config.server("p7", &s.name, s.addr, 7007);
    }
    config
}

/// A bed whose servers each have a health endpoint, answering before the
/// agent starts.
fn health_bed(n: usize, pool: Settings, monitor: Settings) -> (Bed, Vec<HealthServer>) {
    let mut health = Vec::new();
    let b = bed_of(n, |t| {
        health = t.servers.iter().map(|s| HealthServer::start(&s.ns, HEALTH_PORT)).collect();
        config(t, pool, monitor)
    });
    (b, health)
}

fn health_of(b: &Bed, name: &str) -> HealthView {
    b.server("p7", name).health.unwrap_or_else(|| panic!("{name} is not monitored"))
}

/// The health a test waits for.
#[derive(Debug)]
enum Want {
    Up,
    Down,
    DownFor(DownReason),
    /// DOWN, and serving all the same (fail-open).
    DownServing(DownReason),
}

impl Want {
    fn seen_in(&self, h: &HealthView) -> bool {
        let down = h.status == HealthStatus::Down;
        match self {
            Want::Up => h.status == HealthStatus::Up,
            Want::Down => down,
            Want::DownFor(reason) => down && h.reason.as_ref() == Some(reason) && !h.fail_open,
            Want::DownServing(reason) => down && h.reason.as_ref() == Some(reason) && h.fail_open,
        }
    }
}

fn wait_health(b: &Bed, name: &str, want: Want, timeout: Duration) -> Instant {
    let start = Instant::now();
    loop {
        let health = health_of(b, name);
        if want.seen_in(&health) {
            return Instant::now();
        }
        assert!(start.elapsed() < timeout, "{name} is {}, not {want:?}, after {timeout:?}", health.label());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// How often the agent checks `server` here, as measured over three checks
/// (a busy machine stretches the configured 300 ms).
fn check_period(server: &HealthServer) -> Duration {
    let mut seen = server.answered();
    wait_for("a check", Duration::from_secs(3), || server.answered() > seen);
    seen = server.answered();
    let start = Instant::now();
    wait_for("three checks", Duration::from_secs(5), || server.answered() >= seen + 3);
    start.elapsed() / 3
}

fn time_of<T>(f: impl FnOnce() -> T) -> Duration {
    let start = Instant::now();
    f();
    start.elapsed()
}

fn alive(session: &Session, what: &str) {
    let before = session.exchanges();
    wait_for(what, Duration::from_secs(3), || session.exchanges() > before + 2);
    assert!(session.ended().is_none(), "{what}: the session ended: {:?}", session.ended());
}

fn avoided(b: &Bed, name: &str) {
    let reached = b.new_connections(40);
    assert!(!reached.iter().any(|s| s == name), "new connections avoid {name}: {reached:?}");
}

fn reached(b: &Bed, name: &str) {
    wait_for(&format!("a new connection on {name}"), Duration::from_secs(3), || {
        b.new_connections(20).iter().any(|s| s == name)
    });
}

#[test]
fn a_server_whose_monitor_fails_goes_down_and_its_flows_follow_on_down() {
    let (b, health) = health_bed(3, &[("on_down", "keep".into())], &[("kind", "tcp".into())]);
    wait_health(&b, "s1", Want::Up, Duration::from_secs(3));

    // keep: its connection goes on; no new connection reaches it.
    let session = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let (period, read) = (check_period(&health[0]), time_of(|| health_of(&b, "s1")));
    let failed = Instant::now();
    health[0].set(Reply::Off);
    let down = wait_health(&b, "s1", Want::DownFor(DownReason::Refused), Duration::from_secs(3));
    // The first failing check comes within a period, the second (fall 2)
    // one period later; then a read of the API sees it.
    let bound = period * 3 + Duration::from_millis(200) + read * 2 + Duration::from_millis(20);
    eprintln!(
        "DOWN {:?} after the endpoint stopped listening (checked every {period:?}; bound {bound:?})",
        down - failed
    );
    assert!(down - failed < bound, "fall x interval + timeout");
    avoided(&b, "s1");
    let p7 = b.agent.pools().into_iter().find(|p| p.pool == "p7").expect("p7");
    assert_eq!((p7.in_service, p7.down, p7.servers), (2, 1, 3), "a DOWN server is not in service");
    assert!(!b.server("p7", "s1").takes_new_flows);
    alive(&session, "a DOWN server's connection (on_down keep)");
    assert_eq!(b.state("p7", "s1"), "ENABLED", "the operator's state is apart");
    // It listens again: UP, and new connections reach it.
    health[0].set(Reply::Ok);
    wait_health(&b, "s1", Want::Up, Duration::from_secs(3));
    reached(&b, "s1");

    // terminate: its connections are reset at once.
    let terminate = config(&b.topology, &[("on_down", "terminate".into())], &[("kind", "tcp".into())]);
    std::fs::write(&b.agent.config_path, terminate.text()).unwrap();
    b.lb(&["reload"]);
    let session = Session::start(b.connect_to("s2"), "s2", EVERY_100MS);
    health[1].set(Reply::Off);
    let down = wait_health(&b, "s2", Want::Down, Duration::from_secs(3));
    wait_for("s2's connection reset", Duration::from_secs(2), || session.ended().is_some());
    assert_eq!(session.ended().unwrap().kind, ErrorKind::ConnectionReset);
    assert!(session.ended().unwrap().at - down < Duration::from_millis(500));
    health[1].set(Reply::Ok);

    // A duration: its connections go on until then.
    let after = config(&b.topology, &[("on_down", "1500ms".into())], &[("kind", "tcp".into())]);
    std::fs::write(&b.agent.config_path, after.text()).unwrap();
    b.lb(&["reload"]);
    let session = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    health[2].set(Reply::Off);
    let down = wait_health(&b, "s3", Want::Down, Duration::from_secs(3));
    alive(&session, "a DOWN server's connection before on_down's deadline");
    wait_for("s3's connection reset at on_down's deadline", Duration::from_secs(4), || session.ended().is_some());
    let at = session.ended().unwrap().at - down;
    assert!(at > Duration::from_millis(1200) && at < Duration::from_millis(2500), "reset {at:?} after DOWN");
    let kinds = b.event_kinds_of("s1");
    assert!(kinds.contains(&EventKind::Down) && kinds.contains(&EventKind::Up), "{kinds:?}");
}

#[test]
fn maintenance_replies_drain_a_server_and_normal_replies_put_it_back() {
    let pool = [("maintenance_timeout", "3s".into())];
    let monitor = [
        ("kind", "http".into()),
        ("path", "/health".into()),
        ("maintenance_codes", vec![503].into()),
        ("maintenance_string", "maintenance".into()),
    ];
    let (b, health) = health_bed(3, &pool, &monitor);
    wait_health(&b, "s1", Want::Up, Duration::from_secs(3));

    // 503: DRAINING (maintenance), its connection goes on until the timeout.
    let session = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let asked = Instant::now();
    health[0].set(Reply::Status(503));
    b.wait_state("p7", "s1", "DRAINING (maintenance (health monitor))", Duration::from_secs(2));
    assert_eq!(b.server("p7", "s1").source, Source::Monitor);
    assert_eq!(health_of(&b, "s1").status, HealthStatus::Up, "in maintenance, not DOWN");
    avoided(&b, "s1");
    alive(&session, "the connection of a server in maintenance");
    wait_for("the reset at maintenance_timeout", Duration::from_secs(5), || session.ended().is_some());
    let at = session.ended().unwrap().at - asked;
    assert!(at > Duration::from_millis(2900) && at < Duration::from_millis(4500), "reset after {at:?}");
    assert_eq!(b.state("p7", "s1"), "DISABLED (deadline)");
    // Normal replies: ENABLED again, by itself.
    health[0].set(Reply::Ok);
    b.wait_state("p7", "s1", "ENABLED", Duration::from_secs(3));
    reached(&b, "s1");

    // The maintenance string in the body does the same (a connection keeps
    // it draining).
    let _on_s2 = Session::start(b.connect_to("s2"), "s2", EVERY_100MS);
    health[1].set(Reply::Body("down for maintenance".into()));
    b.wait_state("p7", "s2", "DRAINING (maintenance (health monitor))", Duration::from_secs(2));
    // The operator wins: disabled meanwhile, normal replies leave it so.
    b.lb(&["server", "disable", "p7", "s2"]);
    health[1].set(Reply::Ok);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(b.state("p7", "s2"), "DISABLED (immediate)", "an operator's decision wins over the monitor's");
    assert_eq!(b.server("p7", "s2").source, Source::Operator);

    // An operator's enable of a server that says it is in maintenance.
    health[2].set(Reply::Status(503));
    b.wait_state("p7", "s3", "DRAINING (maintenance (health monitor))", Duration::from_secs(2));
    let (ok, _, stderr) = b.agent.lb(&["server", "enable", "p7", "s3"]);
    assert!(!ok && stderr.contains("maintenance") && stderr.contains("--force"), "{stderr}");
    assert_ne!(b.state("p7", "s3"), "ENABLED", "refused: nothing changed");
    b.lb(&["server", "enable", "p7", "s3", "--force"]);
    assert_eq!(b.state("p7", "s3"), "ENABLED");
    let events = b.events();
    let maintenance: Vec<&str> =
        events.iter().filter(|e| e.kind == EventKind::Maintenance).map(|e| e.message.as_str()).collect();
    assert!(maintenance.iter().any(|m| m.contains("status 503")), "the reply that caused it: {maintenance:?}");
    assert!(maintenance.iter().any(|m| m.contains("\"maintenance\"")), "{maintenance:?}");
}

/// A server that said it was in maintenance and was then disabled by an
/// operator is still checked: once it answers normally again, a plain
/// enable is not refused (the refusal rests on what it says now).
#[test]
fn a_disabled_server_whose_maintenance_is_over_can_be_enabled_without_force() {
    let (b, health) = health_bed(2, &[], &maintenance_by_503());
    wait_health(&b, "s1", Want::Up, Duration::from_secs(3));
    // A connection keeps it draining (with none it would be drained at once).
    let _on_s1 = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    health[0].set(Reply::Status(503));
    b.wait_state("p7", "s1", "DRAINING (maintenance (health monitor))", Duration::from_secs(2));
    b.lb(&["server", "disable", "p7", "s1"]);
    let (ok, _, stderr) = b.agent.lb(&["server", "enable", "p7", "s1"]);
    assert!(!ok && stderr.contains("maintenance"), "still in maintenance: refused ({stderr})");

    health[0].set(Reply::Ok);
    let normal_again = || {
        b.events().iter().any(|e| {
            e.subject.server_name() == Some("s1")
                && e.kind == EventKind::Maintenance
                && e.message.contains("normal replies")
        })
    };
    wait_for("the monitor to see s1's normal replies", Duration::from_secs(5), normal_again);
    assert_eq!(b.state("p7", "s1"), "DISABLED (immediate)", "the operator's decision stands meanwhile");
    let (ok, _, stderr) = b.agent.lb(&["server", "enable", "p7", "s1"]);
    assert!(ok, "its maintenance is over: the enable is not refused ({stderr})");
    assert_eq!(b.state("p7", "s1"), "ENABLED");
}

#[test]
fn an_announced_drain_is_honoured_within_the_pools_maximum() {
    let (b, health) = health_bed(3, &[("max_maintenance_timeout", "2s".into())], &maintenance_by_503());
    wait_health(&b, "s2", Want::Up, Duration::from_secs(3));
    // Connections keep them draining (with none, they would be drained at once).
    let _sessions =
        [Session::start(b.connect_to("s1"), "s1", EVERY_100MS), Session::start(b.connect_to("s2"), "s2", EVERY_100MS)];
    health[0].set(Reply::WithHeader(503, "Drain-Timeout: 1".into()));
    health[1].set(Reply::WithHeader(503, "Drain-Timeout: 600".into()));
    b.wait_state("p7", "s1", "DRAINING (maintenance (health monitor))", Duration::from_secs(2));
    b.wait_state("p7", "s2", "DRAINING (maintenance (health monitor))", Duration::from_secs(2));
    let left = |name: &str| b.server("p7", name).deadline_left_ms.expect("a deadline");
    assert!(left("s1") <= 1000, "s1 announced 1 s: {} ms left", left("s1"));
    assert!(left("s2") <= 2000 && left("s2") > 1000, "s2 announced 600 s, bounded to 2 s: {} ms", left("s2"));
    let events = b.events();
    assert!(events.iter().any(|e| e.message.contains("bounded to 2s")), "{events:?}");
}

#[test]
fn a_restarted_agent_keeps_a_server_in_maintenance_and_healthy_ones_in_service() {
    let (mut b, health) = health_bed(3, &[], &maintenance_by_503());
    wait_health(&b, "s3", Want::Up, Duration::from_secs(3));
    let on_s1 = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    health[0].set(Reply::Status(503));
    b.wait_state("p7", "s1", "DRAINING (maintenance (health monitor))", Duration::from_secs(2));
    let on_s2 = Session::start(b.connect_to("s2"), "s2", EVERY_100MS);
    b.agent.stop();
    b.agent.restart();
    // At once: s1 still in maintenance (no new connection), s2 and s3 serve.
    assert_eq!(b.state("p7", "s1"), "DRAINING (maintenance (health monitor))");
    let reached = b.new_connections(40);
    assert!(!reached.iter().any(|s| s == "s1") && reached.iter().any(|s| s == "s3"), "{reached:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        ["s2", "s3"].iter().all(|s| health_of(&b, s).status == HealthStatus::Up),
        "healthy servers stay in service"
    );
    alive(&on_s2, "a connection across the restart");
    alive(&on_s1, "the connection of the server in maintenance, across the restart");
    health[0].set(Reply::Ok);
    b.wait_state("p7", "s1", "ENABLED", Duration::from_secs(3));
}

#[test]
fn checks_are_neither_balanced_nor_counted_as_flows() {
    let (b, health) = health_bed(2, &[], &[("kind", "http".into())]);
    wait_health(&b, "s1", Want::Up, Duration::from_secs(3));
    let stats = |b: &Bed| b.agent.stats();
    let new_flows = |b: &Bed| -> u64 { ["s1", "s2"].iter().map(|s| b.server("p7", s).new_flows).sum() };
    let (before, answered) = (stats(&b), health[0].answered());
    let flows_before = new_flows(&b);
    std::thread::sleep(Duration::from_secs(2));
    let after = stats(&b);
    assert!(health[0].answered() >= answered + 5, "the checks ran");
    assert_eq!(new_flows(&b), flows_before, "no check became a flow");
    for outcome in ["forward_new_flow", "forward_flow", "forward_reply"] {
        assert_eq!(after.outcomes[outcome], before.outcomes[outcome], "{outcome} did not move");
    }
    assert_eq!(after.flow_table.flows.unwrap_or(0), 0, "the flow table holds no check");
    assert!(after.outcomes["pass_not_for_us"] > before.outcomes["pass_not_for_us"]);
}

#[test]
fn a_pool_whose_servers_are_all_down_keeps_serving_with_all_of_them() {
    let (b, health) = health_bed(2, &[], &[("kind", "tcp".into())]);
    wait_health(&b, "s1", Want::Up, Duration::from_secs(3));
    health[0].set(Reply::Off);
    wait_health(&b, "s1", Want::Down, Duration::from_secs(3));
    health[1].set(Reply::Off);
    wait_health(&b, "s2", Want::DownServing(DownReason::Refused), Duration::from_secs(3));
    let reached = b.new_connections(40);
    assert!(["s1", "s2"].iter().all(|s| reached.iter().any(|r| r == s)), "both serve: {reached:?}");
    let events = b.events();
    assert!(events.iter().any(|e| e.kind == EventKind::FailOpen), "said loudly: {events:?}");
    assert!(b.agent.log().contains("fail-open"), "and in the log");
    health[1].set(Reply::Ok);
    wait_health(&b, "s2", Want::Up, Duration::from_secs(3));
    wait_health(&b, "s1", Want::DownFor(DownReason::Refused), Duration::from_secs(1));
    avoided(&b, "s1");
}

#[test]
fn a_udp_monitor_checks_a_dns_like_service() {
    let mut health = Vec::new();
    let mut b = bed_of(2, |t| {
        health = t.servers.iter().map(|s| HealthServer::start(&s.ns, HEALTH_PORT)).collect::<Vec<_>>();
        let monitor = [
            ("kind", "udp".into()),
            ("interval", "300ms".into()),
            ("timeout", "200ms".into()),
            ("send", "which".into()),
            ("expect", "s".into()),
        ];
        let mut config = t.config(&[]).service(VIP, 53, "udp", "p53").monitor("p53", monitor);
        for s in &t.servers {
            config = config.server("p53", &s.name, s.addr, 5353);
        }
        config
    });
    let udp_health = |b: &Bed, name: &str| b.server("p53", name).health.expect("monitored");
    wait_for("s1 UP by UDP", Duration::from_secs(3), || udp_health(&b, "s1").status == HealthStatus::Up);
    b.udp[0].stop();
    let down = || udp_health(&b, "s1").status == HealthStatus::Down;
    wait_for("s1 DOWN once its UDP server stops", Duration::from_secs(3), down);
    assert_eq!(udp_health(&b, "s2").status, HealthStatus::Up);
    // The last check's detail is published twice a second, after the verdict.
    let failed = || {
        udp_health(&b, "s1").last_check.is_some_and(|c| (c.monitor.as_str(), c.result) == ("udp", CheckResult::Fail))
    };
    wait_for("s1's last check: a failed UDP exchange", Duration::from_secs(2), failed);
}

/// Rise 2, fall 2: a server that fails every other check never goes DOWN;
/// once DOWN, one that passes every other check never comes back UP.
#[test]
fn a_flapping_server_obeys_rise_and_fall() {
    let (b, health) = health_bed(2, &[], &[("kind", "http".into())]);
    wait_health(&b, "s1", Want::Up, Duration::from_secs(3));
    let checks = health[0].answered();
    health[0].set(Reply::Flapping);
    wait_for("ten checks", Duration::from_secs(6), || health[0].answered() >= checks + 10);
    assert_eq!(health_of(&b, "s1").status, HealthStatus::Up, "never two failures in a row");
    health[0].set(Reply::Status(500));
    wait_health(&b, "s1", Want::DownFor(DownReason::WrongStatus { status: 500 }), Duration::from_secs(3));
    let checks = health[0].answered();
    health[0].set(Reply::Flapping);
    wait_for("ten checks", Duration::from_secs(6), || health[0].answered() >= checks + 10);
    assert_eq!(health_of(&b, "s1").status, HealthStatus::Down, "never two successes in a row");
    let downs = b.event_kinds_of("s1").iter().filter(|k| **k == EventKind::Down).count();
    assert_eq!(downs, 1, "one transition, not one per flap");
    health[0].set(Reply::Ok);
    wait_health(&b, "s1", Want::Up, Duration::from_secs(3));
}

/// Rolling maintenance (`max_in_maintenance = 1`): three servers announce
/// maintenance together; one goes, the other two keep serving, queued in
/// line, and each goes when the one before is back. Never more than one is
/// out, as sampled throughout.
#[test]
fn servers_announcing_maintenance_together_go_one_at_a_time() {
    let (b, health) = health_bed(4, &[("max_in_maintenance", 1.into())], &maintenance_by_503());
    for name in ["s1", "s2", "s3", "s4"] {
        wait_health(&b, name, Want::Up, Duration::from_secs(3));
    }
    let three = ["s1", "s2", "s3"];
    // Each from one view of the pool (one snapshot), so that a turn passing
    // between two reads is not taken for two servers out.
    let out = |b: &Bed| -> Vec<String> {
        let view = b.agent.pool("p7");
        view.servers.iter().filter(|s| s.label().to_string() != "ENABLED").map(|s| s.name.clone()).collect()
    };
    let queued = |b: &Bed| -> Vec<String> {
        let view = b.agent.pool("p7");
        let queued = view.servers.iter().filter(|s| s.health.as_ref().is_some_and(|h| h.queued.is_some()));
        queued.map(|s| s.name.clone()).collect()
    };
    // Bounds from the checks' measured period (a busy machine stretches
    // it): a verdict takes `fall` or `rise` (2) checks.
    let period = check_period(&health[0]);
    let verdict = (period * 6 + Duration::from_secs(1)).max(Duration::from_secs(5));
    for h in &health[..3] {
        h.set(Reply::Status(503));
    }
    wait_for("one out, two queued", verdict, || out(&b).len() == 1 && queued(&b).len() == 2);
    let mut gone = Vec::new();
    for turn in 0..3 {
        let first = out(&b);
        assert_eq!(first.len(), 1, "turn {turn}: one at a time: {first:?}");
        let waiting = queued(&b);
        assert_eq!(waiting.len(), 2 - turn, "turn {turn}: the others wait: {waiting:?}");
        if let Some(next) = waiting.iter().find(|n| health_of(&b, n).queued == Some(1)) {
            let shown = b.lb(&["pool", "show", "p7"]);
            assert!(shown.contains("UP, queued for maintenance (1 in line)"), "{shown}");
            reached(&b, next);
        }
        gone.push(first[0].clone());
        // Its maintenance is over: back in service, and the next one goes.
        let index = three.iter().position(|n| *n == first[0]).unwrap();
        health[index].set(Reply::Ok);
        let back = first[0].clone();
        let start = Instant::now();
        while b.state("p7", &back) != "ENABLED" || (turn < 2 && out(&b).is_empty()) {
            assert!(out(&b).len() <= 1, "never more than one out: {:?}", out(&b));
            assert!(start.elapsed() < verdict, "{back} back and the next one out within {verdict:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(out(&b).len() <= 1, "never more than one out: {:?}", out(&b));
    }
    gone.sort();
    assert_eq!(gone, three, "each had its turn");
    let events = b.events();
    assert!(events.iter().any(|e| e.message.contains("its turn came after")), "{events:?}");
}

/// A reload does not bring a DOWN server back: the monitors keep their
/// tallies across it (and do not say DOWN again), so the agent keeps what
/// they found. Before, any reload put a DOWN server back in the hash rows
/// until its health next changed.
#[test]
fn a_down_server_stays_out_across_a_reload() {
    let (b, health) = health_bed(3, &[], &[("kind", "tcp".into())]);
    wait_health(&b, "s1", Want::Up, Duration::from_secs(3));
    health[0].set(Reply::Off);
    wait_health(&b, "s1", Want::DownFor(DownReason::Refused), Duration::from_secs(3));
    let changed = config(&b.topology, &[("min_in_service", 2.into())], &[("kind", "tcp".into())]);
    std::fs::write(&b.agent.config_path, changed.text()).unwrap();
    let said = b.lb(&["reload"]);
    assert!(said.contains("min_in_service"), "the reload changed something: {said}");
    assert_eq!(health_of(&b, "s1").status, HealthStatus::Down, "still DOWN after the reload");
    assert!(!b.server("p7", "s1").takes_new_flows);
    avoided(&b, "s1");
}
