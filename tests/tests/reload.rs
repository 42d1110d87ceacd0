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

use lb_userspace::model::{EventKind, Source, Subject};
use serde_json::Value;
use testbed::{
    bed::{Bed, EVERY_100MS, bed_of, wait_for},
    load::steady_connections,
    servers::Session,
    topology::{Topology, VIP},
};

/// A config for the echo service (VIP:7, pool p7) with `servers` (name,
/// weight, more lines such as `enabled = false`), pool p7's `rule` lines,
/// then `extra`.
fn config(t: &Topology, rule: &str, servers: &[(&str, u32, &str)], extra: &str) -> String {
    let mut text = t.config(&[], "");
    text.push_str(&format!("[[services]]\nvip = \"{VIP}\"\nport = 7\nprotocol = \"tcp\"\npool = \"p7\"\n"));
    text.push_str(&format!("[pools.p7]\n{rule}\n"));
    for (name, weight, more) in servers {
        let addr = t.server(name).addr;
        text.push_str(&format!(
            "[[pools.p7.servers]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = 7007\nweight = {weight}\n{more}\n"
        ));
    }
    text.push_str(extra);
    text
}

/// Writes `text` as the agent's config and runs `lb reload args...`;
/// returns (success, stdout, stderr).
fn reload(b: &Bed, text: &str, args: &[&str]) -> (bool, String, String) {
    std::fs::write(&b.agent.config_path, text).expect("write the config");
    let mut command = vec!["reload"];
    command.extend_from_slice(args);
    b.agent.lb(&command)
}

fn reloaded(b: &Bed, text: &str) -> String {
    let (ok, stdout, stderr) = reload(b, text, &[]);
    assert!(ok, "reload failed: {stderr}\n--- agent log ---\n{}", b.agent.log());
    stdout
}

/// The pool's servers as `lb pool show --json` lists them.
fn servers(b: &Bed) -> Vec<Value> {
    b.agent.lb_json(&["pool", "show", "p7"])["servers"].as_array().unwrap().clone()
}

fn listed(b: &Bed, name: &str) -> Option<Value> {
    servers(b).into_iter().find(|s| s["name"] == name)
}

const ALL: [(&str, u32, &str); 3] = [("s1", 1, ""), ("s2", 1, ""), ("s3", 1, "")];

fn alive(session: &Session, what: &str) {
    let before = session.exchanges();
    wait_for(what, Duration::from_secs(3), || session.exchanges() > before + 2);
    assert!(session.ended().is_none(), "{what}: the session ended: {:?}", session.ended());
}

#[test]
fn servers_added_and_weights_changed_by_reload_leave_existing_connections_alone() {
    let b = bed_of(3, |t| config(t, "", &ALL[..2], ""));
    let sessions: Vec<Session> = ["s1", "s2"].iter().map(|s| Session::start(b.connect_to(s), s, EVERY_100MS)).collect();
    assert!(!b.new_connections(40).iter().any(|s| s == "s3"), "s3 is not in the config yet");

    let out = reloaded(&b, &config(&b.topology, "", &ALL, ""));
    assert!(out.contains("p7/s3 added"), "{out}");
    assert!(b.new_connections(60).iter().any(|s| s == "s3"), "new connections reach the added server");
    assert_eq!(b.state("p7", "s3"), "ENABLED");

    // Weights 1:1:4: s3 takes two thirds of the new flows.
    let out = reloaded(&b, &config(&b.topology, "", &[("s1", 1, ""), ("s2", 1, ""), ("s3", 4, "")], ""));
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
    let b = bed_of(3, |t| config(t, "graceful_disable_timeout = \"3s\"", &ALL, ""));
    let rule = |r: &str| format!("graceful_disable_timeout = \"{r}\"");

    // "3s": its connection works for 3 s, then both ends are reset; then it is gone.
    let session = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    let removed_at = Instant::now();
    let out = reloaded(&b, &config(&b.topology, &rule("3s"), &ALL[..2], ""));
    assert!(out.contains("p7/s3 removed"), "{out}");
    let s3 = listed(&b, "s3").expect("listed while it is removed");
    assert_eq!((s3["removing"].as_bool(), s3["state"].as_str()), (Some(true), Some("DRAINING")));
    assert_eq!(s3["active_flows"].as_u64().map(|n| n <= 1), Some(true));
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
    reloaded(&b, &config(&b.topology, &rule("infinite"), &ALL, ""));
    let session = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    reloaded(&b, &config(&b.topology, &rule("infinite"), &ALL[..2], ""));
    std::thread::sleep(Duration::from_secs(2));
    let s3 = listed(&b, "s3").expect("still listed");
    assert_eq!((s3["removing"].as_bool(), s3["why"].as_str()), (Some(true), Some("until drained")));
    alive(&session, "the connection of a server removed with no deadline");
    drop(session.finish());
    wait_for("s3 gone once its last flow ended", Duration::from_secs(15), || listed(&b, "s3").is_none());

    // "0": at once.
    reloaded(&b, &config(&b.topology, &rule("0"), &ALL, ""));
    let session = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    let removed_at = Instant::now();
    reloaded(&b, &config(&b.topology, &rule("0"), &ALL[..2], ""));
    wait_for("the reset at once", Duration::from_secs(2), || session.ended().is_some());
    assert!(session.ended().unwrap().at - removed_at < Duration::from_secs(1));
    assert!(listed(&b, "s3").is_none(), "gone at once");
    let kinds = b.event_kinds_of("s3");
    assert_eq!(kinds.iter().filter(|k| **k == EventKind::Removed).count(), 3, "{kinds:?}");
}

#[test]
fn enabled_false_in_the_config_takes_a_server_out_and_the_latest_decision_wins() {
    let rule = |r: &str| format!("graceful_disable_timeout = \"{r}\"");
    let b = bed_of(3, |t| config(t, &rule("2s"), &ALL, ""));
    let source = |name: &str| b.server("p7", name).source.to_string();

    // A duration: DRAINING, its connection goes on, then is reset at the deadline.
    let session = Session::start(b.connect_to("s2"), "s2", EVERY_100MS);
    let s2_off = [("s1", 1, ""), ("s2", 1, "enabled = false"), ("s3", 1, "")];
    let out = reloaded(&b, &config(&b.topology, &rule("2s"), &s2_off, ""));
    assert!(out.contains("p7/s2 enabled = false: out within 2s"), "{out}");
    assert_eq!((b.state("p7", "s2"), source("s2")), ("DRAINING (deadline)".to_owned(), "config".to_owned()));
    alive(&session, "s2's connection while it drains");
    b.wait_state("p7", "s2", "DISABLED (deadline)", Duration::from_secs(5));
    wait_for("s2's connection reset", Duration::from_secs(2), || session.ended().is_some());
    assert!(!b.new_connections(30).iter().any(|s| s == "s2"), "no new connection reaches s2");

    // The operator enables it: a reload with the same line leaves it enabled.
    b.lb(&["server", "enable", "p7", "s2"]);
    let out = reloaded(&b, &config(&b.topology, &rule("2s"), &s2_off, ""));
    assert!(out.contains("nothing to change"), "{out}");
    assert_eq!((b.state("p7", "s2"), source("s2")), ("ENABLED".to_owned(), "operator".to_owned()));
    // The other way: the operator disables s1; its line (enabled) did not change.
    b.lb(&["server", "disable", "p7", "s1"]);
    reloaded(&b, &config(&b.topology, &rule("2s"), &s2_off, ""));
    assert_eq!((b.state("p7", "s1"), source("s1")), ("DISABLED (immediate)".to_owned(), "operator".to_owned()));
    b.lb(&["server", "enable", "p7", "s1"]);
    // A changed line wins again: true (the line removed), then false.
    reloaded(&b, &config(&b.topology, &rule("infinite"), &ALL, ""));
    let session = Session::start(b.connect_to("s2"), "s2", EVERY_100MS);
    reloaded(&b, &config(&b.topology, &rule("infinite"), &s2_off, ""));
    assert_eq!((b.state("p7", "s2"), source("s2")), ("DRAINING (until drained)".to_owned(), "config".to_owned()));
    alive(&session, "s2's connection while it drains with no deadline");
    drop(session.finish());
    b.wait_state("p7", "s2", "DISABLED (drained)", Duration::from_secs(15));
    let show = b.lb(&["pool", "show", "p7"]);
    assert!(show.contains("SOURCE") && show.contains("config"), "{show}");

    // "0": at once.
    let session = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    let s3_off = [("s1", 1, ""), ("s2", 1, "enabled = false"), ("s3", 1, "enabled = false")];
    reloaded(&b, &config(&b.topology, &rule("0"), &s3_off, ""));
    assert_eq!(b.state("p7", "s3"), "DISABLED (immediate)");
    wait_for("s3's connection reset at once", Duration::from_secs(1), || session.ended().is_some());
    // Back: the line removed.
    reloaded(&b, &config(&b.topology, &rule("0"), &ALL, ""));
    assert!(["s1", "s2", "s3"].iter().all(|s| b.state("p7", s) == "ENABLED"));
}

#[test]
fn a_reload_with_a_problem_changes_nothing_and_says_why() {
    let b = bed_of(3, |t| config(t, "", &ALL, ""));
    let session = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let before = servers(&b);
    let good = config(&b.topology, "", &ALL, "");

    // Problems in the file: every one with its key path.
    let broken = config(&b.topology, "graceful_disable_timeout = \"soon\"", &[("s1", 70000, ""), ("s2", 1, "")], "")
        .replace("pool = \"p7\"", "pool = \"nope\"");
    let (ok, _, stderr) = reload(&b, &broken, &[]);
    assert!(!ok, "a broken config is refused");
    for path in ["pools.p7.servers[0].weight", "pools.p7.graceful_disable_timeout", "services[0].pool"] {
        assert!(stderr.contains(path), "the message names {path}: {stderr}");
    }
    assert!(stderr.contains("nothing was applied"), "{stderr}");
    // A setting that needs a restart.
    let (ok, _, stderr) = reload(&b, &good.replace("interfaces = [", "[flows]\nmax = 4096\n[x]\ninterfaces = ["), &[]);
    assert!(!ok, "{stderr}");
    let (ok, _, stderr) = reload(&b, &format!("{good}\n[flows]\nmax = 4096\n"), &[]);
    assert!(!ok && stderr.contains("restart") && stderr.contains("flows.max"), "{stderr}");
    // The guard: a reload that leaves the pool without a server.
    let none = [("s1", 1, "enabled = false"), ("s2", 1, "enabled = false"), ("s3", 1, "enabled = false")];
    let (ok, _, stderr) = reload(&b, &config(&b.topology, "", &none, ""), &[]);
    assert!(!ok && stderr.contains("--force"), "{stderr}");
    // A dry run says what would change, and changes nothing.
    let (ok, stdout, stderr) = reload(&b, &config(&b.topology, "", &ALL[..2], ""), &["--dry-run"]);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("dry run") && stdout.contains("p7/s3 removed"), "{stdout}");
    // SIGHUP with a broken file: refused in the log, nothing applied.
    std::fs::write(&b.agent.config_path, &broken).unwrap();
    // SAFETY: a signal to the agent this test started.
    assert_eq!(unsafe { libc::kill(b.agent.pid() as i32, libc::SIGHUP) }, 0);
    wait_for("the refusal in the agent's log", Duration::from_secs(3), || {
        b.agent.log().contains("reload refused, nothing applied")
    });

    assert_eq!(
        servers(&b).iter().map(|s| &s["state"]).collect::<Vec<_>>(),
        before.iter().map(|s| &s["state"]).collect::<Vec<_>>()
    );
    assert_eq!(servers(&b).len(), 3, "nothing added or removed");
    alive(&session, "a connection through the refused reloads");
    assert!(b.new_connections(30).iter().any(|s| s == "s3"), "the old config still serves");

    // Forced, the guard lets it through; SIGHUP applies a good file.
    let (ok, _, stderr) = reload(&b, &config(&b.topology, "", &none, ""), &["--force"]);
    assert!(ok, "{stderr}");
    assert!(["s1", "s2", "s3"].iter().all(|s| b.state("p7", s).starts_with("DRAINING")));
    std::fs::write(&b.agent.config_path, &good).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(b.agent.pid() as i32, libc::SIGHUP) }, 0);
    wait_for("SIGHUP's reload", Duration::from_secs(3), || b.state("p7", "s1") == "ENABLED");
}

#[test]
fn no_new_connection_is_dropped_or_delayed_by_twenty_reloads() {
    let b = bed_of(4, |t| config(t, "", &ALL, ""));
    let sessions: Vec<Session> = ["s1", "s2"].iter().map(|s| Session::start(b.connect_to(s), s, EVERY_100MS)).collect();
    let udp = format!(
        "[[services]]\nvip = \"{VIP}\"\nport = 53\nprotocol = \"udp\"\npool = \"p53\"\n[[pools.p53.servers]]\nname = \"s1\"\naddress = \"{}\"\nport = 5353\n",
        b.topology.server("s1").addr
    );
    // Twenty configs, each changing something: a server added or removed,
    // a weight, a line, a service added or removed.
    let steps: Vec<String> = (0..20)
        .map(|i| {
            let mut list: Vec<(&str, u32, &str)> = vec![("s1", 1 + (i % 3), ""), ("s2", 1, ""), ("s3", 1, "")];
            match i % 4 {
                0 => list.push(("s4", 1, "")),
                1 => list[2].2 = "enabled = false",
                2 => list.push(("s4", 2, "")),
                _ => {}
            }
            let extra = if i % 2 == 0 { udp.as_str() } else { "" };
            config(&b.topology, "", &list, extra)
        })
        .collect();
    let stop = AtomicBool::new(false);
    let attempts = Mutex::new(Vec::new());
    let took = std::thread::scope(|s| {
        s.spawn(|| steady_connections(&b.topology.client, 200, &stop, &attempts));
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        for step in &steps {
            reloaded(&b, step);
            std::thread::sleep(Duration::from_millis(150));
        }
        let took = started.elapsed();
        std::thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
        took
    });
    let attempts = attempts.into_inner().unwrap();
    let slowest = attempts.iter().map(|a| a.connect).max().unwrap();
    let failed: Vec<ErrorKind> = attempts.iter().filter_map(|a| a.outcome.clone().err()).collect();
    eprintln!("20 reloads in {took:?}: {} new connections, slowest connect {slowest:?}", attempts.len());
    assert!(attempts.len() as f64 >= 200.0 * took.as_secs_f64() * 0.8, "the load fell short");
    assert!(failed.is_empty(), "connections failed: {failed:?}");
    assert!(slowest < Duration::from_millis(300), "a connection took {slowest:?} to open");
    let stats = b.agent.lb_json(&["stats"]);
    assert_eq!(stats["outcomes"]["drop_no_server"].as_u64().unwrap_or(0), 0);
    for session in &sessions {
        alive(session, &format!("{}'s connection through 20 reloads", session.server));
    }
    let reloads = b.events().iter().filter(|e| e.kind == EventKind::Reloaded && e.subject == Subject::Agent).count();
    assert_eq!(reloads, 20, "each reload changed something and said so");
}

#[test]
fn a_service_added_to_a_pool_in_use_keeps_the_replies_of_its_connections() {
    let b = bed_of(2, |t| config(t, "", &ALL[..2], ""));
    let sessions: Vec<Session> = ["s1", "s2"].iter().map(|s| Session::start(b.connect_to(s), s, EVERY_100MS)).collect();
    // A second VIP port on the same pool: the servers' endpoints now serve two
    // services, and replies must find their VIP by connection.
    let second = format!("[[services]]\nvip = \"{VIP}\"\nport = 8\nprotocol = \"tcp\"\npool = \"p7\"\n");
    let out = reloaded(&b, &config(&b.topology, "", &ALL[..2], &second));
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
    let out = reloaded(&b, &config(&b.topology, "", &ALL[..2], ""));
    assert!(out.contains(&format!("service {VIP}:8/tcp removed")), "{out}");
    for session in &sessions {
        alive(session, &format!("{}'s connection after the second service left", session.server));
    }
    wait_for("the leaving service forgotten", Duration::from_secs(5), || {
        b.agent.lb_json(&["pool", "show", "p7"])["leaving_services"].as_array().unwrap().is_empty()
    });
    assert!(on(7).starts_with('s'));
}

#[test]
fn a_restarted_agent_goes_on_with_removals_and_applies_lines_changed_while_it_was_down() {
    let rule = "graceful_disable_timeout = \"1m\"";
    let mut b = bed_of(3, |t| config(t, rule, &ALL, ""));
    let on_s3 = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    let on_s2 = Session::start(b.connect_to("s2"), "s2", EVERY_100MS);
    reloaded(&b, &config(&b.topology, rule, &ALL[..2], ""));
    let deadline = listed(&b, "s3").unwrap()["deadline_left_ms"].as_u64().unwrap();

    // Stopped; meanwhile s2's line turns false; started again.
    b.agent.stop();
    let s2_off = [("s1", 1, ""), ("s2", 1, "enabled = false")];
    std::fs::write(&b.agent.config_path, config(&b.topology, rule, &s2_off, "")).unwrap();
    b.agent.restart();
    let s3 = listed(&b, "s3").expect("s3 is still being removed");
    assert_eq!((s3["removing"].as_bool(), s3["state"].as_str()), (Some(true), Some("DRAINING")));
    let left = s3["deadline_left_ms"].as_u64().unwrap();
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
        let mut text = t.config(&[], "");
        text.push_str(&format!(
            "[[services]]\nvip = \"{VIP}\"\nport = 7\nprotocol = \"tcp\"\npool = \"{service_pool}\"\n"
        ));
        for (pool, names) in [("blue", ["s1", "s2"]), ("green", ["s3", "s4"])] {
            for name in names {
                let addr = t.server(name).addr;
                text.push_str(&format!(
                    "[[pools.{pool}.servers]]\nname = \"{name}\"\naddress = \"{addr}\"\nport = 7007\n"
                ));
            }
        }
        text
    };
    let b = bed_of(4, |t| pools(t, "blue"));
    let on_blue = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let out = reloaded(&b, &pools(&b.topology, "green"));
    assert!(out.contains("new flows go to pool green; those on pool blue end when their last flow ends"), "{out}");
    let reached = b.new_connections(40);
    assert!(reached.iter().all(|s| s == "s3" || s == "s4"), "new connections go to green: {reached:?}");
    alive(&on_blue, "a connection on blue after the switch");
    let blue = b.agent.lb_json(&["pool", "show", "blue"]);
    assert_eq!(blue["leaving_services"][0]["service"], format!("{VIP}:7/tcp"), "{blue}");
    drop(on_blue.finish());
    wait_for("blue's part of the service forgotten", Duration::from_secs(10), || {
        b.agent.lb_json(&["pool", "show", "blue"])["leaving_services"].as_array().unwrap().is_empty()
    });
    assert!(b.new_connections(20).iter().all(|s| s == "s3" || s == "s4"));
    // And back to blue at once: green's connections are reset (rule "0").
    let on_green = Session::start(b.connect_to("s3"), "s3", EVERY_100MS);
    let back = pools(&b.topology, "blue").replace(
        "[[pools.green.servers]]\nname = \"s3\"",
        "[pools.green]\ngraceful_disable_timeout = \"0\"\n[[pools.green.servers]]\nname = \"s3\"",
    );
    let out = reloaded(&b, &back);
    assert!(out.contains("those on pool green end at once"), "{out}");
    wait_for("green's connection reset", Duration::from_secs(2), || on_green.ended().is_some());
    assert!(b.new_connections(20).iter().all(|s| s == "s1" || s == "s2"));
}
