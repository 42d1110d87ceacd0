//! Pools changed while the agent runs: `lb reload` (and SIGHUP) with real
//! TCP connections through the real agent. Servers added, weights changed,
//! servers removed by their pool's `graceful_disable_timeout`, servers
//! disabled from the config and who wins over whom, a config with problems,
//! and steady new connections through 20 reloads.

use std::{
    io::ErrorKind,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_userspace::model::{EventKind, ServerState, ServerView, Source, Subject, Why};
use testbed::{
    agent::lb_bin,
    bed::{Bed, EVERY_100MS, bed_of, wait_for},
    config_file::ConfigFile,
    load::{assert_ran_through, steady_connections},
    servers::Session,
    topology::{Topology, VIP},
};

/// A server line of pool p7: its name, weight and `enabled`.
type Line = (&'static str, u32, bool);

/// The echo service (VIP:7) on pool p7 with `servers`, and the pool's
/// `graceful_disable_timeout` when one is given.
fn config(t: &Topology, timeout: Option<&str>, servers: &[Line]) -> ConfigFile {
    let mut config = t.config(&[]).service(VIP, 7, "tcp", "p7");
    if let Some(timeout) = timeout {
        config = config.set("pools.p7.graceful_disable_timeout", timeout);
    }
    for &(name, weight, enabled) in servers {
        config = t.with_server(config, "p7", name, 7007).server_set("p7", name, "weight", weight);
        if !enabled {
            config = config.server_set("p7", name, "enabled", false);
        }
    }
    config
}

/// Writes `text` as the agent's config and runs `lb reload args...`;
/// returns (success, stdout, stderr).
/// `config`: a [`ConfigFile`], or a file's text as it is (a malformed one).
fn reload(b: &Bed, config: impl std::fmt::Display, args: &[&str]) -> (bool, String, String) {
    std::fs::write(&b.agent.config_path, config.to_string()).expect("write the config");
    let mut command = vec!["reload"];
    command.extend_from_slice(args);
    b.agent.lb(&command)
}

fn reloaded(b: &Bed, config: &ConfigFile) -> String {
    let (ok, stdout, stderr) = reload(b, config, &[]);
    assert!(ok, "reload failed: {stderr}\n--- agent log ---\n{}", b.agent.log());
    stdout
}

/// The pool's servers as `lb pool show` lists them.
fn servers(b: &Bed) -> Vec<ServerView> {
    b.agent.pool("p7").servers
}

fn listed(b: &Bed, name: &str) -> Option<ServerView> {
    servers(b).into_iter().find(|s| s.name == name)
}

const ALL: [Line; 3] = [("s1", 1, true), ("s2", 1, true), ("s3", 1, true)];

fn alive(session: &Session, what: &str) {
    let before = session.exchanges();
    wait_for(what, Duration::from_secs(3), || session.exchanges() > before + 2);
    assert!(session.ended().is_none(), "{what}: the session ended: {:?}", session.ended());
}

#[test]
fn servers_added_and_weights_changed_by_reload_leave_existing_connections_alone() {
    let b = bed_of(3, |t| config(t, None, &ALL[..2]));
    let sessions: Vec<Session> = ["s1", "s2"].iter().map(|s| Session::start(b.connect_to(s), s, EVERY_100MS)).collect();
    assert!(!b.new_connections(40).iter().any(|s| s == "s3"), "s3 is not in the config yet");

    let out = reloaded(&b, &config(&b.topology, None, &ALL));
    assert!(out.contains("p7/s3 added"), "{out}");
    assert!(b.new_connections(60).iter().any(|s| s == "s3"), "new connections reach the added server");
    assert_eq!(b.state("p7", "s3"), "ENABLED");

    // Weights 1:1:4: s3 takes two thirds of the new flows.
    let out = reloaded(&b, &config(&b.topology, None, &[("s1", 1, true), ("s2", 1, true), ("s3", 4, true)]));
    assert!(out.contains("p7/s3 weight 1 -> 4"), "{out}");
    let reached = b.new_connections(300);
    let share = reached.iter().filter(|s| *s == "s3").count() as f64 / reached.len() as f64;
    eprintln!("s3's share of new connections at weights 1:1:4: {share:.2}");
    assert!((0.55..0.78).contains(&share), "s3 took {share:.2} of the new connections, not about 0.67");
    for session in &sessions {
        alive(session, &format!("the connection on {}", session.server));
    }
    let events: Vec<EventKind> = b.events().iter().map(|e| e.kind).collect();
    assert!(events.contains(&EventKind::Added) && events.contains(&EventKind::Reloaded), "{events:?}");
}

#[test]
fn a_removed_server_is_taken_out_by_its_pools_graceful_disable_timeout() {
    let b = bed_of(3, |t| config(t, Some("3s"), &ALL));

    // "3s": its connection works for 3 s, then both ends are reset; then it is gone.
    let session = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    let removed_at = Instant::now();
    let out = reloaded(&b, &config(&b.topology, Some("3s"), &ALL[..2]));
    assert!(out.contains("p7/s3 removed"), "{out}");
    let s3 = listed(&b, "s3").expect("listed while it is removed");
    assert_eq!((s3.removing, s3.state), (true, ServerState::Draining));
    assert!(s3.active_flows <= 1, "{s3:?}");
    alive(&session, "the removed server's connection before its deadline");
    wait_for("the reset at the deadline", Duration::from_secs(6), || session.ended().is_some());
    let ended = session.ended().unwrap();
    let at = ended.at - removed_at;
    assert_eq!(ended.kind, ErrorKind::ConnectionReset);
    assert!(at >= Duration::from_millis(2900) && at < Duration::from_millis(4500), "reset after {at:?}");
    wait_for("s3 gone from pool show", Duration::from_secs(2), || listed(&b, "s3").is_none());
    assert!(b.echo[2].resets() > 0, "the server's end was reset too");
    assert!(!b.new_connections(30).iter().any(|s| s == "s3"));

    // "infinite": removing until its last connection ends.
    reloaded(&b, &config(&b.topology, Some("infinite"), &ALL));
    let session = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    reloaded(&b, &config(&b.topology, Some("infinite"), &ALL[..2]));
    std::thread::sleep(Duration::from_secs(2));
    let s3 = listed(&b, "s3").expect("still listed");
    assert_eq!((s3.removing, s3.why), (true, Some(Why::UntilDrained)));
    alive(&session, "the connection of a server removed with no deadline");
    drop(session.finish());
    wait_for("s3 gone once its last flow ended", Duration::from_secs(15), || listed(&b, "s3").is_none());

    // "0": at once.
    reloaded(&b, &config(&b.topology, Some("0"), &ALL));
    let session = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    let removed_at = Instant::now();
    reloaded(&b, &config(&b.topology, Some("0"), &ALL[..2]));
    wait_for("the reset at once", Duration::from_secs(2), || session.ended().is_some());
    assert!(session.ended().unwrap().at - removed_at < Duration::from_secs(1));
    assert!(listed(&b, "s3").is_none(), "gone at once");
    let kinds = b.event_kinds_of("s3");
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Removed).count(), 3, "{kinds:?}");
}

#[test]
fn enabled_false_in_the_config_takes_a_server_out_and_the_latest_decision_wins() {
    let b = bed_of(3, |t| config(t, Some("2s"), &ALL));
    let source = |name: &str| b.server("p7", name).source.to_string();

    // A duration: DRAINING, its connection goes on, then is reset at the deadline.
    let session = Session::start(b.connect_to("s2"), "s2", EVERY_100MS);
    let s2_off = [("s1", 1, true), ("s2", 1, false), ("s3", 1, true)];
    let out = reloaded(&b, &config(&b.topology, Some("2s"), &s2_off));
    assert!(out.contains("p7/s2 enabled = false: out within 2s"), "{out}");
    assert_eq!((b.state("p7", "s2"), source("s2")), ("DRAINING (deadline)".to_owned(), "config".to_owned()));
    alive(&session, "s2's connection while it drains");
    b.wait_state("p7", "s2", "DISABLED (deadline)", Duration::from_secs(5));
    wait_for("s2's connection reset", Duration::from_secs(2), || session.ended().is_some());
    assert!(!b.new_connections(30).iter().any(|s| s == "s2"), "no new connection reaches s2");

    // The operator enables it: a reload with the same line leaves it enabled.
    b.lb(&["server", "enable", "p7", "s2"]);
    let out = reloaded(&b, &config(&b.topology, Some("2s"), &s2_off));
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!((b.state("p7", "s2"), source("s2")), ("ENABLED".to_owned(), "operator".to_owned()));
    // The other way: the operator disables s1; its line (enabled) did not change.
    b.lb(&["server", "disable", "p7", "s1"]);
    reloaded(&b, &config(&b.topology, Some("2s"), &s2_off));
    assert_eq!((b.state("p7", "s1"), source("s1")), ("DISABLED (immediate)".to_owned(), "operator".to_owned()));
    b.lb(&["server", "enable", "p7", "s1"]);
    // A changed line wins again: true (the line removed), then false.
    reloaded(&b, &config(&b.topology, Some("infinite"), &ALL));
    let session = Session::start(b.connect_to("s2"), "s2", EVERY_100MS);
    reloaded(&b, &config(&b.topology, Some("infinite"), &s2_off));
    assert_eq!((b.state("p7", "s2"), source("s2")), ("DRAINING (until drained)".to_owned(), "config".to_owned()));
    alive(&session, "s2's connection while it drains with no deadline");
    drop(session.finish());
    b.wait_state("p7", "s2", "DISABLED (drained)", Duration::from_secs(15));
    let show = b.lb(&["pool", "show", "p7"]);
    assert!(show.contains("SOURCE") && show.contains("config"), "{show}");

    // "0": at once.
    let session = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    let s3_off = [("s1", 1, true), ("s2", 1, false), ("s3", 1, false)];
    reloaded(&b, &config(&b.topology, Some("0"), &s3_off));
    assert_eq!(b.state("p7", "s3"), "DISABLED (immediate)");
    wait_for("s3's connection reset at once", Duration::from_secs(1), || session.ended().is_some());
    // Back: the line removed.
    reloaded(&b, &config(&b.topology, Some("0"), &ALL));
    assert!(["s1", "s2", "s3"].iter().all(|s| b.state("p7", s) == "ENABLED"));
}

#[test]
fn a_reload_with_a_problem_changes_nothing_and_says_why() {
    let b = bed_of(3, |t| config(t, None, &ALL));
    let session = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let before = servers(&b);
    let good = config(&b.topology, None, &ALL);

    // Problems in the file: every one with its key path.
    let broken = config(&b.topology, Some("soon"), &[("s1", 70000, true), ("s2", 1, true)])
        .without_services_of("p7")
        .service(VIP, 7, "tcp", "nope");
    let (ok, _, stderr) = reload(&b, &broken, &[]);
    assert!(!ok, "a broken config is refused");
    for path in ["pools.p7.servers[0].weight", "pools.p7.graceful_disable_timeout", "services[0].pool"] {
        assert!(stderr.contains(path), "the message names {path}: {stderr}");
    }
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    // A setting that needs a restart.
    let (ok, _, stderr) =
        reload(&b, good.text().replace("interfaces = [", "[flows]\nmax = 4096\n[x]\ninterfaces = ["), &[]);
    assert!(!ok, "{stderr}");
    let (ok, _, stderr) = reload(&b, good.clone().set("flows.max", 4096), &[]);
    assert!(!ok && stderr.contains("restart") && stderr.contains("flows.max"), "{stderr}");
    // The guard: a reload that leaves the pool without a server.
    let none = [("s1", 1, false), ("s2", 1, false), ("s3", 1, false)];
    let (ok, _, stderr) = reload(&b, config(&b.topology, None, &none), &[]);
    assert!(!ok && stderr.contains("--force"), "{stderr}");
    // A dry run says what would change, and changes nothing.
    let (ok, stdout, stderr) = reload(&b, config(&b.topology, None, &ALL[..2]), &["--dry-run"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("dry run") && stdout.contains("p7/s3 removed"), "{stdout}");
    // SIGHUP with a broken file: refused in the log, nothing applied.
    std::fs::write(&b.agent.config_path, broken.text()).unwrap();
    // SAFETY: a signal to the agent this test started.
    assert_eq!(unsafe { libc::kill(b.agent.pid() as i32, libc::SIGHUP) }, 0);
    wait_for("the refusal in the agent's log", Duration::from_secs(3), || {
        b.agent.log().contains("reload refused, nothing applied")
    });

    assert_eq!(
        servers(&b).iter().map(|s| s.state).collect::<Vec<_>>(),
        before.iter().map(|s| s.state).collect::<Vec<_>>()
    );
    assert_eq!(servers(&b).len(), 3, "nothing added or removed");
    alive(&session, "a connection through the refused reloads");
    assert!(b.new_connections(30).iter().any(|s| s == "s3"), "the old config still serves");

    // Forced, the guard lets it through; SIGHUP applies a good file.
    let (ok, _, stderr) = reload(&b, config(&b.topology, None, &none), &["--force"]);
    assert!(ok, "{stderr}");
    assert!(["s1", "s2", "s3"].iter().all(|s| b.server("p7", s).state == ServerState::Draining));
    std::fs::write(&b.agent.config_path, good.text()).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(b.agent.pid() as i32, libc::SIGHUP) }, 0);
    wait_for("SIGHUP's reload", Duration::from_secs(3), || b.state("p7", "s1") == "ENABLED");
}

/// `systemctl reload` runs the unit's ExecReload, as written in the unit
/// file: the CLI finds the agent from the instance's config file, and a
/// file the agent refuses fails the command, with why (after SIGHUP,
/// `systemctl reload` read as done and only the journal said otherwise).
#[test]
fn the_units_reload_finds_the_agent_from_its_config_and_fails_when_refused() {
    let b = bed_of(3, |t| config(t, None, &ALL));
    let unit = concat!(env!("CARGO_MANIFEST_DIR"), "/../lb-userspace/systemd/lb@.service");
    let unit = std::fs::read_to_string(unit).expect("the unit file");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecReload=")).expect("ExecReload");
    let mut words = exec.split_whitespace();
    assert_eq!(words.next(), Some("/usr/local/bin/lb"), "{exec}");
    let config_path = b.agent.config_path.to_str().expect("a UTF-8 path");
    let args: Vec<&str> = words.map(|w| if w == "/etc/lb/%i.toml" { config_path } else { w }).collect();
    assert!(args.contains(&config_path), "the instance's config in {exec}");
    // As systemd runs it: no LB_SOCKET, no --socket.
    let systemctl_reload = |text: String| {
        std::fs::write(&b.agent.config_path, text).expect("write the config");
        let out = std::process::Command::new(lb_bin()).args(&args).env_remove("LB_SOCKET").output().expect("lb");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };

    let broken = config(&b.topology, None, &[("s1", 70000, true), ("s2", 1, true)]);
    let (ok, said) = systemctl_reload(broken.text());
    assert!(!ok, "a refused config reads as reloaded: {said}");
    assert!(said.contains("pools.p7.servers[0].weight") && said.contains("nothing was applied"), "{said}");
    assert_eq!(b.server("p7", "s1").weight, 1);

    let (ok, said) =
        systemctl_reload(config(&b.topology, None, &[("s1", 1, true), ("s2", 2, true), ("s3", 1, true)]).text());
    assert!(ok && said.contains("applied"), "{said}");
    assert_eq!(b.server("p7", "s2").weight, 2, "applied when the command returned");
}

#[test]
fn no_new_connection_is_dropped_or_delayed_by_twenty_reloads() {
    let b = bed_of(4, |t| config(t, None, &ALL));
    let sessions: Vec<Session> = ["s1", "s2"].iter().map(|s| Session::start(b.connect_to(s), s, EVERY_100MS)).collect();
    // Twenty configs, each changing something: a server added or removed,
    // a weight, a line, a service added or removed.
    let steps: Vec<ConfigFile> = (0..20)
        .map(|i| {
            let mut list: Vec<Line> = vec![("s1", 1 + (i % 3), true), ("s2", 1, true), ("s3", 1, true)];
            match i % 4 {
                0 => list.push(("s4", 1, true)),
                1 => list[2].2 = false,
                2 => list.push(("s4", 2, true)),
                _ => {}
            }
            let config = config(&b.topology, None, &list);
            // Every other step, a UDP service comes (or goes).
            if i % 2 == 0 {
                b.topology.with_server(config.service(VIP, 53, "udp", "p53"), "p53", "s1", 5353)
            } else {
                config
            }
        })
        .collect();
    let stop = AtomicBool::new(false);
    let attempts = Mutex::new(Vec::new());
    let marks = std::thread::scope(|s| {
        s.spawn(|| steady_connections(&b.topology.client, 200, &stop, &attempts));
        std::thread::sleep(Duration::from_millis(300));
        let mut marks = Vec::new();
        for step in &steps {
            marks.push(Instant::now());
            reloaded(&b, step);
            std::thread::sleep(Duration::from_millis(150));
        }
        marks.push(Instant::now());
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        marks
    });
    let took = marks[marks.len() - 1] - marks[0];
    let attempts = attempts.into_inner().unwrap();
    let slowest = attempts.iter().map(|a| a.connect).max().unwrap();
    let failed: Vec<ErrorKind> = attempts.iter().filter_map(|a| a.outcome.clone().err()).collect();
    eprintln!("20 reloads in {took:?}: {} new connections, slowest connect {slowest:?}", attempts.len());
    assert_ran_through(&attempts, &marks, "20 reloads");
    assert!(failed.is_empty(), "connections failed: {failed:?}");
    assert!(slowest < Duration::from_millis(300), "a connection took {slowest:?} to open");
    assert_eq!(b.agent.stats().outcomes.get("drop_no_server").copied().unwrap_or(0), 0);
    for session in &sessions {
        alive(session, &format!("{}'s connection through 20 reloads", session.server));
    }
    let reloads = b.events().iter().filter(|e| e.kind == EventKind::Reloaded && e.subject == Subject::Agent).count();
    assert_eq!(reloads, 20, "each reload changed something and said so");
}

#[test]
fn a_service_added_to_a_pool_in_use_keeps_the_replies_of_its_connections() {
    let b = bed_of(2, |t| config(t, None, &ALL[..2]));
    let sessions: Vec<Session> = ["s1", "s2"].iter().map(|s| Session::start(b.connect_to(s), s, EVERY_100MS)).collect();
    // A second VIP port on the same pool: the servers' endpoints now serve two
    // services, and replies must find their VIP by connection.
    let out = reloaded(&b, &config(&b.topology, None, &ALL[..2]).service(VIP, 8, "tcp", "p7"));
    assert!(out.contains(&format!("service {VIP}:8/tcp added")), "{out}");
    for session in &sessions {
        alive(session, &format!("{}'s connection after its endpoint became shared", session.server));
    }
    let on = |port: u16| {
        b.topology.client.run(|| {
            let mut c = testbed::servers::EchoClient::connect(VIP, port).expect("connect");
            c.exchange("which").expect("exchange")
        })
    };
    assert!(on(8).starts_with('s') && on(7).starts_with('s'), "both services answer");
    // And back to one service: the leaving one's flows end, the other's go on.
    let out = reloaded(&b, &config(&b.topology, None, &ALL[..2]));
    assert!(out.contains(&format!("service {VIP}:8/tcp removed")), "{out}");
    for session in &sessions {
        alive(session, &format!("{}'s connection after the second service left", session.server));
    }
    wait_for("the leaving service forgotten", Duration::from_secs(5), || {
        b.agent.pool("p7").leaving_services.is_empty()
    });
    assert!(on(7).starts_with('s'));
}

#[test]
fn a_restarted_agent_goes_on_with_removals_and_applies_lines_changed_while_it_was_down() {
    let rule = Some("1m");
    let mut b = bed_of(3, |t| config(t, rule, &ALL));
    let on_s3 = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    let on_s2 = Session::start(b.connect_to("s2"), "s2", EVERY_100MS);
    reloaded(&b, &config(&b.topology, rule, &ALL[..2]));
    let deadline = listed(&b, "s3").unwrap().deadline_left_ms.expect("a deadline");

    // Stopped; meanwhile s2's line turns false; started again.
    b.agent.stop();
    let s2_off = [("s1", 1, true), ("s2", 1, false)];
    std::fs::write(&b.agent.config_path, config(&b.topology, rule, &s2_off).text()).unwrap();
    b.agent.restart();
    let s3 = listed(&b, "s3").expect("s3 is still being removed");
    assert_eq!((s3.removing, s3.state), (true, ServerState::Draining));
    let left = s3.deadline_left_ms.expect("a deadline");
    assert!(left <= deadline && left > deadline - 10_000, "the same deadline: {left} ms left (was {deadline})");
    assert_eq!(b.state("p7", "s2"), "DRAINING (deadline)", "the line changed while it was down is applied");
    assert_eq!(b.server("p7", "s2").source, Source::Config);
    alive(&on_s3, "the removed server's connection across the restart");
    alive(&on_s2, "s2's connection across the restart");
    assert!(b.new_connections(30).iter().all(|s| s == "s1"), "only s1 takes new connections");
}

/// Blue-green: the service moves from pool blue (s1, s2) to pool green (s3,
/// s4). New connections go to green at once; those on blue go on (blue's
/// rule: until drained), then blue's part of the service is forgotten.
#[test]
fn a_service_moved_to_another_pool_keeps_the_connections_on_the_old_one() {
    let pools = |t: &Topology, service_pool: &str| {
        let mut config = t.config(&[]).service(VIP, 7, "tcp", service_pool);
        for (pool, names) in [("blue", ["s1", "s2"]), ("green", ["s3", "s4"])] {
            for name in names {
                config = t.with_server(config, pool, name, 7007);
            }
        }
        config
    };
    let b = bed_of(4, |t| pools(t, "blue"));
    let on_blue = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let out = reloaded(&b, &pools(&b.topology, "green"));
    assert!(out.contains("new flows go to pool green; those on pool blue end when their last flow ends"), "{out}");
    let reached = b.new_connections(40);
    assert!(reached.iter().all(|s| s == "s3" || s == "s4"), "new connections go to green: {reached:?}");
    alive(&on_blue, "a connection on blue after the switch");
    let blue = b.agent.pool("blue");
    assert_eq!(blue.leaving_services[0].service, format!("{VIP}:7/tcp"), "{blue:?}");
    drop(on_blue.finish());
    wait_for("blue's part of the service forgotten", Duration::from_secs(10), || {
        b.agent.pool("blue").leaving_services.is_empty()
    });
    assert!(b.new_connections(20).iter().all(|s| s == "s3" || s == "s4"));
    // And back to blue at once: green's connections are reset (rule "0").
    let on_green = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    let back = pools(&b.topology, "blue").set("pools.green.graceful_disable_timeout", "0");
    let out = reloaded(&b, &back);
    assert!(out.contains("those on pool green end at once"), "{out}");
    wait_for("green's connection reset", Duration::from_secs(2), || on_green.ended().is_some());
    assert!(b.new_connections(20).iter().all(|s| s == "s1" || s == "s2"));
}
