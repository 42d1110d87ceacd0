//! Many balancer nodes, one administrative state: three real agents in
//! three balancer namespaces sharing a real three-member etcd. A decision
//! made through one node takes effect on every node; deadlines are the same
//! instant everywhere; a drain with no deadline ends when the last flow on
//! any node ends; the store's faults cost no connection.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lb_userspace::model::{EventKind, HealthStatus, HealthView, ServerState, Why};
use testbed::{
    bed::{Bed, EVERY_100MS, wait_for},
    fleet::{Fleet, NODES},
    health_server::Reply,
    servers::Session,
};

fn wall_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

#[test]
fn each_disable_mode_through_one_node_takes_effect_on_every_node() {
    let fleet = Fleet::start(2);
    let [a, b, c] = [fleet.node("n1"), fleet.node("n2"), fleet.node("n3")];

    // Graceful with a deadline, through n1: the same absolute deadline on
    // every node, no new flow to s1 anywhere, resets at the deadline.
    let sessions: Vec<Session> =
        fleet.nodes.iter().map(|n| Session::start(n.connect_to("s1"), "s1", EVERY_100MS)).collect();
    a.lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", "3s"]);
    fleet.wait_state_everywhere("p7", "s1", "DRAINING (deadline)", Duration::from_secs(2));
    let deadlines: Vec<Option<u64>> = fleet.nodes.iter().map(|n| n.server("p7", "s1").deadline_ms).collect();
    assert!(deadlines[0].is_some() && deadlines.iter().all(|d| *d == deadlines[0]), "deadlines {deadlines:?}");
    let deadline_ms = deadlines[0].expect("a deadline");
    for node in &fleet.nodes {
        let names = node.new_connections(12);
        assert!(!names.contains(&"s1".to_owned()), "a new flow reached draining s1: {names:?}");
    }
    wait_for("every session reset at the deadline", Duration::from_secs(6), || {
        sessions.iter().all(|s| s.ended().is_some())
    });
    // Every node resets at the deadline: not before it, and within 50 ms
    // of it (each node's own timer: no round trip to the store), plus what
    // a loaded machine adds: the slowest of a read through each node's API
    // measured now (50 ms is the target on an idle machine; the lag is
    // printed).
    let slack = fleet
        .nodes
        .iter()
        .map(|n| {
            let start = Instant::now();
            n.server("p7", "s2");
            start.elapsed()
        })
        .max()
        .expect("three nodes");
    let (now_wall, now) = (wall_ms(), Instant::now());
    for (i, s) in sessions.iter().enumerate() {
        let ended = s.ended().expect("ended");
        assert_eq!(ended.kind, std::io::ErrorKind::ConnectionReset, "node {i}: {ended:?}");
        let ended_ms = now_wall - (now - ended.at).as_millis() as u64;
        eprintln!("node {i}: reset {} ms after the deadline", ended_ms as i64 - deadline_ms as i64);
        assert!(ended_ms + 1 >= deadline_ms, "node {i}: reset {} ms before the deadline", deadline_ms - ended_ms);
        // The target is 50 ms; on this shared machine it is reported, and
        // judged only against a bound no late store round trip could meet
        // (the quorum test shows the cut needs no store at all).
        let bound = 1000 + slack.as_millis() as u64;
        assert!(ended_ms <= deadline_ms + bound, "node {i}: reset {} ms after the deadline", ended_ms - deadline_ms);
    }
    fleet.wait_state_everywhere("p7", "s1", "DISABLED (deadline)", Duration::from_secs(2));

    // Enable through n2.
    b.lb(&["server", "enable", "p7", "s1"]);
    fleet.wait_state_everywhere("p7", "s1", "ENABLED", Duration::from_secs(2));

    // Immediate, through n3: every node resets its sessions at once.
    let sessions: Vec<Session> =
        fleet.nodes.iter().map(|n| Session::start(n.connect_to("s1"), "s1", EVERY_100MS)).collect();
    c.lb(&["server", "disable", "p7", "s1"]);
    fleet.wait_state_everywhere("p7", "s1", "DISABLED (immediate)", Duration::from_secs(2));
    wait_for("every session reset at once", Duration::from_secs(2), || sessions.iter().all(|s| s.ended().is_some()));
    a.lb(&["server", "enable", "p7", "s1"]);
    fleet.wait_state_everywhere("p7", "s1", "ENABLED", Duration::from_secs(2));

    // Until drained, through n1, with a flow on n2 only: DRAINING on every
    // node while n2 has it, n1 included (it has none); drained everywhere
    // once it ends, with one drained event per node.
    let session = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    a.lb(&["server", "disable", "p7", "s1", "--graceful", "--until-drained"]);
    fleet.wait_state_everywhere("p7", "s1", "DRAINING (until drained)", Duration::from_secs(2));
    wait_for("n1 sees n2's flow", Duration::from_secs(5), || {
        a.server("p7", "s1").flows_by_node.get("n2").copied() == Some(1)
    });
    std::thread::sleep(Duration::from_secs(2));
    for node in &fleet.nodes {
        let s1 = node.server("p7", "s1");
        assert_eq!((s1.state, s1.why), (ServerState::Draining, Some(Why::UntilDrained)), "{s1:?}");
    }
    assert!(session.ended().is_none(), "the draining session broke");
    drop(session.finish());
    let closed = Instant::now();
    let drained = fleet.wait_state_everywhere("p7", "s1", "DISABLED (drained)", Duration::from_secs(5));
    eprintln!("drained on every node {:?} after the last flow closed", drained - closed);
    for node in &fleet.nodes {
        node.wait_events("s1", EventKind::Drained, 1, Duration::from_secs(2));
    }
}

#[test]
fn without_quorum_nodes_forward_cut_at_the_deadlines_they_know_refuse_changes_then_resync() {
    let mut fleet = Fleet::start(2);
    let spared: Vec<Session> =
        fleet.nodes.iter().map(|n| Session::start(n.connect_to("s2"), "s2", EVERY_100MS)).collect();
    let cut: Vec<Session> = fleet.nodes.iter().map(|n| Session::start(n.connect_to("s1"), "s1", EVERY_100MS)).collect();
    fleet.node("n1").lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", "4s"]);
    fleet.wait_state_everywhere("p7", "s1", "DRAINING (deadline)", Duration::from_secs(2));
    let deadline_ms = fleet.node("n1").server("p7", "s1").deadline_ms.expect("a deadline");

    // Two of three members stopped: no quorum. The refused change is a
    // drain: a request the store did not answer may still be recorded
    // once quorum is back (etcd commits what its leader had taken; the
    // refusal says so), and s2's sessions must outlive that too.
    fleet.store.kill_member(0);
    fleet.store.kill_member(1);
    let refused = ["server", "disable", "p7", "s2", "--graceful", "--timeout", "1h", "--force"];
    let (ok, _, err) = fleet.node("n2").agent.lb(&refused);
    assert!(!ok, "a change without quorum was accepted");
    eprintln!("refused: {err}");
    assert!(err.contains("the cluster store is unreachable; nothing was changed"), "{err}");
    for node in &fleet.nodes {
        assert_eq!(node.state("p7", "s2"), "ENABLED", "a refused change moved a state");
        let names = node.new_connections(6);
        assert!(names.iter().all(|n| n == "s2"), "new flows go on, to s2 only: {names:?}");
        wait_for("the node says the store is unreachable", Duration::from_secs(10), || {
            !Fleet::nodes_view(node).store_reachable
        });
    }
    // The deadline every node knew is enforced without the store.
    wait_for("s1's sessions reset at the deadline", Duration::from_secs(8), || cut.iter().all(|s| s.ended().is_some()));
    assert!(wall_ms() >= deadline_ms);
    fleet.wait_state_everywhere("p7", "s1", "DISABLED (deadline)", Duration::from_secs(2));
    assert!(spared.iter().all(|s| s.ended().is_none()), "a session on s2 was hurt");

    // Quorum back: the nodes resync on their own, and changes are taken again.
    fleet.store.start_member(0);
    fleet.store.start_member(1);
    fleet.store.wait_healthy(Duration::from_secs(30));
    for node in &fleet.nodes {
        wait_for("the node syncs again", Duration::from_secs(15), || Fleet::nodes_view(node).store_reachable);
    }
    fleet.node("n3").lb(&["server", "enable", "p7", "s1"]);
    fleet.wait_state_everywhere("p7", "s1", "ENABLED", Duration::from_secs(2));
    // s2 as the store has it on every node: ENABLED, or draining if the
    // refused request was recorded late.
    let s2 = fleet.node("n1").state("p7", "s2");
    assert!(s2 == "ENABLED" || s2 == "DRAINING (deadline)", "s2 is {s2}");
    fleet.wait_state_everywhere("p7", "s2", &s2, Duration::from_secs(2));
    assert!(spared.iter().all(|s| s.ended().is_none()), "a session on s2 was hurt");
}

/// Disables s1 (gracefully, with a deadline an hour away) or enables it
/// through `node`, until the store takes it: a request the store could not
/// confirm (its leader killed) is tried again only if its node does not
/// show it, so none is lost and none is applied twice.
fn change_until_taken(node: &testbed::bed::Bed, disable: bool) {
    let args: &[&str] = if disable {
        &["server", "disable", "p7", "s1", "--graceful", "--timeout", "1h"]
    } else {
        &["server", "enable", "p7", "s1"]
    };
    let want = if disable { "DRAINING (deadline)" } else { "ENABLED" };
    let start = Instant::now();
    loop {
        let (ok, _, err) = node.agent.lb(args);
        if ok {
            return;
        }
        eprintln!("refused after {:?}: {err}", start.elapsed());
        assert!(err.contains("the cluster store is unreachable"), "refused for another cause: {err}");
        std::thread::sleep(Duration::from_millis(300));
        if node.state("p7", "s1") == want {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the store took no change for 30 s: {err}");
    }
}

#[test]
fn the_stores_leader_killed_during_changes_loses_none_and_applies_none_twice() {
    let mut fleet = Fleet::start(2);
    let session = Session::start(fleet.node("n2").connect_to("s2"), "s2", EVERY_100MS);
    // A flow on s1 keeps each drain going (one with no flow left would end
    // on its own, drained, racing the next change).
    let _keeps_draining = Session::start(fleet.node("n1").connect_to("s1"), "s1", EVERY_100MS);
    const CHANGES: usize = 12;
    for i in 0..CHANGES {
        if i == 4 {
            let leader = fleet.store.leader();
            eprintln!("killing the store's leader, member {leader}");
            fleet.store.kill_member(leader);
        }
        change_until_taken(&fleet.nodes[i % 3], i % 2 == 0);
        // The next change is planned through another node, from what it
        // has applied: after a leader's death its watch may lag a moment,
        // and a change planned from before this one is refused as a
        // conflict, rightly. Each change is made once every node shows the
        // last one.
        let want = if i % 2 == 0 { "DRAINING (deadline)" } else { "ENABLED" };
        fleet.wait_state_everywhere("p7", "s1", want, Duration::from_secs(10));
    }
    fleet.wait_state_everywhere("p7", "s1", "ENABLED", Duration::from_secs(5));
    for node in &fleet.nodes {
        // The last change's event may follow its state by a moment.
        let moves = || {
            node.event_kinds_of("s1")
                .into_iter()
                .filter(|k| matches!(k, EventKind::Draining | EventKind::Enabled))
                .count()
        };
        wait_for("every change's event", Duration::from_secs(2), || moves() >= CHANGES);
        assert_eq!(moves(), CHANGES, "each change applied once on every node: {:?}", node.events());
    }
    assert!(session.ended().is_none(), "a session on s2 was hurt");
}

#[test]
fn a_starting_node_takes_the_stores_states_before_it_attaches_or_starts_stale_without_the_store() {
    let mut fleet = Fleet::start(2);
    fleet.nodes[2].agent.stop();
    fleet.node("n1").lb(&["server", "disable", "p7", "s1"]);
    fleet.nodes[2].agent.restart();
    // Its first answer already has the fleet's state: it was applied before
    // XDP was attached (the log says so in that order).
    let n3 = fleet.node("n3");
    assert_eq!(n3.state("p7", "s1"), "DISABLED (immediate)");
    let log = n3.agent.log();
    let (joined, attached) = (log.rfind("cluster: joined as node n3"), log.rfind("attached to"));
    assert!(joined.is_some() && joined < attached, "joined after attaching:\n{log}");
    let names = n3.new_connections(12);
    assert!(!names.contains(&"s1".to_owned()), "a new flow reached s1 on the joining node: {names:?}");

    // With the store unreachable, it starts from its state file and says
    // it is stale, until the store answers again.
    fleet.nodes[2].agent.stop();
    for member in 0..testbed::store::MEMBERS {
        fleet.store.kill_member(member);
    }
    fleet.nodes[2].agent.restart();
    let n3 = fleet.node("n3");
    assert_eq!(n3.state("p7", "s1"), "DISABLED (immediate)", "the state file's state");
    let view = Fleet::nodes_view(n3);
    assert!(view.stale && !view.store_reachable, "{view:?}");
    assert!(n3.agent.log().contains("the states may be stale"), "{}", n3.agent.log());
    for member in 0..testbed::store::MEMBERS {
        fleet.store.start_member(member);
    }
    fleet.store.wait_healthy(Duration::from_secs(30));
    wait_for("the node syncs and is stale no more", Duration::from_secs(15), || {
        let view = Fleet::nodes_view(fleet.node("n3"));
        view.store_reachable && !view.stale
    });
}

#[test]
fn a_node_killed_mid_drain_keeps_the_deadline_a_lost_nodes_flows_vanish_with_its_lease_and_a_node_cleaned_up_leaves() {
    let mut fleet = Fleet::start(2);
    let session = Session::start(fleet.node("n3").connect_to("s1"), "s1", EVERY_100MS);
    wait_for("n1 sees n3's flow", Duration::from_secs(5), || {
        fleet.node("n1").server("p7", "s1").flows_by_node.get("n3").copied() == Some(1)
    });
    fleet.node("n1").lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", "6s"]);
    fleet.wait_state_everywhere("p7", "s1", "DRAINING (deadline)", Duration::from_secs(2));
    let deadline_ms = fleet.node("n1").server("p7", "s1").deadline_ms.expect("a deadline");

    // n3's agent is killed and started again mid-drain: XDP forwarded on
    // meanwhile, and the restarted agent cuts at the same deadline.
    fleet.nodes[2].agent.kill();
    std::thread::sleep(Duration::from_millis(500));
    assert!(session.ended().is_none(), "the session broke with the agent");
    fleet.nodes[2].agent.restart();
    assert_eq!(fleet.node("n3").server("p7", "s1").deadline_ms, Some(deadline_ms));
    wait_for("the session reset at the deadline", Duration::from_secs(10), || session.ended().is_some());
    assert!(wall_ms() >= deadline_ms, "reset before the deadline");
    fleet.wait_state_everywhere("p7", "s1", "DISABLED (deadline)", Duration::from_secs(2));

    // n2 lost for good: its record, and its flows, vanish with its lease.
    let _flow = fleet.node("n2").connect_to("s2");
    wait_for("n1 sees n2's flow", Duration::from_secs(5), || {
        fleet.node("n1").server("p7", "s2").flows_by_node.get("n2").copied() == Some(1)
    });
    fleet.nodes[1].agent.kill();
    let killed = Instant::now();
    wait_for("n2 gone from n1's view", Duration::from_secs(15), || {
        let view = Fleet::nodes_view(fleet.node("n1"));
        view.nodes.iter().any(|n| n.node == "n2" && !n.up)
    });
    eprintln!("n2's record gone {:?} after it was killed (lease 5 s)", killed.elapsed());
    assert!(!fleet.node("n1").server("p7", "s2").flows_by_node.contains_key("n2"));

    // Taken out for good, `lb cleanup` on it: n2 leaves the cluster, and
    // the others no longer show it (they showed it lost, and alerted on it,
    // until each restarted).
    let n2 = &fleet.nodes[1].agent;
    let out = n2.lb_command().args(["cleanup", "--config"]).arg(&n2.config_path).output().expect("lb cleanup");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("node n2 left the cluster"), "{said}");
    let shows_n2 = |node: &str| Fleet::nodes_view(fleet.node(node)).nodes.iter().any(|n| n.node == "n2");
    for node in ["n1", "n3"] {
        wait_for(&format!("{node} no longer shows n2"), Duration::from_secs(5), || !shows_n2(node));
    }
    // Started again, it is back.
    fleet.nodes[1].agent.restart();
    wait_for("n1 sees n2 again", Duration::from_secs(10), || {
        Fleet::nodes_view(fleet.node("n1")).nodes.iter().any(|n| n.node == "n2" && n.up)
    });
}

#[test]
fn three_nodes_give_every_server_the_same_id_and_build_the_same_maglev_rows() {
    let fleet = Fleet::start(3);
    // A state that stays put (a drain with no flow left ends, as drained,
    // maybe between two nodes' dumps).
    fleet.node("n2").lb(&["server", "disable", "p7", "s2"]);
    fleet.wait_state_everywhere("p7", "s2", "DISABLED (immediate)", Duration::from_secs(2));
    let tables: Vec<_> = fleet.nodes.iter().map(|n| testbed::fleet::tables_of(&n.agent.pin_dir())).collect();
    let (servers, rows) = &tables[0];
    assert!(servers.iter().filter(|s| s.state != lb_common::server_state::UNUSED).count() == 6, "{servers:?}");
    assert_eq!(rows.len(), 2, "two services");
    for (i, (other_servers, other_rows)) in tables.iter().enumerate().skip(1) {
        assert!(servers == other_servers, "node {i}'s server table differs from n1's:\n{servers:?}\n{other_servers:?}");
        assert!(rows == other_rows, "node {i}'s Maglev rows differ from n1's");
    }
    // The same config hash everywhere, and every node says so.
    for node in &fleet.nodes {
        let view = Fleet::nodes_view(node);
        assert!(view.nodes.iter().all(|n| n.same_config), "{view:?}");
    }
}

#[test]
fn a_node_with_another_config_says_so_and_a_decision_about_a_server_it_lacks_is_reported() {
    let fleet = Fleet::start(2);
    // n3 gets a config without s2 (the two others keep theirs).
    let without = fleet.nodes[2].config.clone().without_server("p7", "s2");
    fleet.nodes[2].write_config(&without);
    fleet.nodes[2].lb(&["reload"]);
    let n3_hash = wait_hash_differs(&fleet);
    for node in &fleet.nodes {
        wait_for("every node sees n3's other config", Duration::from_secs(5), || {
            Fleet::nodes_view(node).nodes.iter().any(|n| n.node == "n3" && n.config_hash == n3_hash)
        });
    }
    let view = Fleet::nodes_view(fleet.node("n1"));
    let n3 = view.nodes.iter().find(|n| n.node == "n3").expect("n3");
    assert!(!n3.same_config, "{view:?}");
    let n1 = fleet.node("n1");
    let metrics = n1.topology.lb.run(|| testbed::http::get(testbed::http::LOCAL_API, "/metrics", &[])).body;
    assert!(metrics.contains("lb_cluster_config_mismatch 1"), "{metrics}");
    let said = |bed: &testbed::bed::Bed| {
        bed.events().iter().any(|e| e.kind == EventKind::Cluster && e.message.contains("node n3 runs another config"))
    };
    wait_for("n1 says n3's config differs", Duration::from_secs(5), || said(fleet.node("n1")));

    // n3's removal of s2 is its own: s2 stays ENABLED on the others.
    wait_for("s2 gone from n3", Duration::from_secs(5), || {
        fleet.node("n3").event_kinds_of("s2").contains(&EventKind::Removed)
    });
    for node in &fleet.nodes[..2] {
        assert_eq!(node.state("p7", "s2"), "ENABLED", "a node's own removal reached the fleet");
    }
    // A decision about s2, which n3 does not have: reported there.
    fleet.node("n1").lb(&["server", "disable", "p7", "s2", "--graceful", "--until-drained"]);
    wait_for("n3 reports the decision it cannot apply", Duration::from_secs(5), || {
        fleet.node("n3").events().iter().any(|e| {
            e.kind == EventKind::Cluster && e.subject.server_name() == Some("s2") && e.message.contains("does not have")
        })
    });
}

/// n3's config hash, once it differs from n1's.
fn wait_hash_differs(fleet: &Fleet) -> String {
    let mut hash = String::new();
    wait_for("n3's config hash changes", Duration::from_secs(5), || {
        let view = Fleet::nodes_view(fleet.node("n3"));
        let own = |name: &str| view.nodes.iter().find(|n| n.node == name).map(|n| n.config_hash.clone());
        hash = own("n3").unwrap_or_default();
        own("n1").is_some_and(|h| h != hash) && !hash.is_empty()
    });
    hash
}

/// A store of its own, and the cluster section a node on it has.
fn store_and_cluster() -> (testbed::store::Store, lb_userspace::config::ClusterConfig) {
    let store = testbed::store::Store::start();
    let config = lb_userspace::config::Config::parse(
        &format!("interfaces = [\"lo\"]\n[cluster]\nnode = \"n1\"\nendpoints = {:?}\n", store.endpoints()),
        std::path::Path::new("test.toml"),
    )
    .expect("a cluster config");
    (store, config.cluster.expect("the cluster section"))
}

#[test]
fn of_two_decisions_made_from_the_same_revision_the_store_takes_one_and_tells_the_other() {
    use lb_userspace::{
        cluster::store::{Recorded, Store as Client},
        servers::{AdminState, Proposal, SharedState, Source},
    };
    let (store, cluster) = store_and_cluster();
    let decision = |by: &str, admin| Proposal {
        pool: "p7".into(),
        server: "s1".into(),
        state: SharedState { admin, source: Source::Operator, by: by.into() },
        expected_revision: 0,
        from: AdminState::Enabled,
    };
    let draining = AdminState::Draining { since_ms: 1, deadline_ms: None };
    let cut = AdminState::Disabled { since_ms: 1, reason: lb_userspace::servers::DisableReason::Immediate };
    let (first, second) = store.ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let client = Client::connect(&cluster).await.expect("connect");
            let first = client.record(&[decision("n1", draining)], &[]).await.expect("an answer");
            let second = client.record(&[decision("n2", cut)], &[]).await.expect("an answer");
            (first, second)
        })
    });
    assert!(matches!(first, Recorded::At(_)), "the first decision is taken");
    let Recorded::Conflict(now) = second else { panic!("the second decision, made from the same revision, was taken") };
    assert_eq!(now.len(), 1);
    let state = &now[0].state;
    let state = state.as_ref().expect("the state that won");
    assert_eq!((state.admin, state.by.as_str()), (draining, "n1"), "told what won");
    assert!(store.get("/lb/states/p7/s1").contains("\"by\":\"n1\""));
}

/// A decision is recorded only if the other servers of its pool are as it
/// saw them (its guards): a pool's limits were checked against them.
#[test]
fn a_decision_whose_pool_changed_meanwhile_is_not_recorded_and_says_from_when() {
    use lb_userspace::{
        cluster::store::{Recorded, Store as Client},
        servers::{AdminState, Guard, Proposal, SharedState, Source},
    };
    let (store, cluster) = store_and_cluster();
    let draining = AdminState::Draining { since_ms: 1, deadline_ms: None };
    let drain = |server: &str| Proposal {
        pool: "p7".into(),
        server: server.into(),
        state: SharedState { admin: draining, source: Source::Monitor, by: "n1".into() },
        expected_revision: 0,
        from: AdminState::Enabled,
    };
    // Each decided from the pool as it was before either.
    let guard = Guard { pool: "p7".into(), revision: 0 };
    let (first, second) = store.ns.run(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
        runtime.block_on(async {
            let client = Client::connect(&cluster).await.expect("connect");
            let first = client.record(&[drain("s1")], std::slice::from_ref(&guard)).await.expect("an answer");
            let second = client.record(&[drain("s2")], &[guard]).await.expect("an answer");
            (first, second)
        })
    });
    let Recorded::At(at) = first else { panic!("the first decision is taken") };
    let Recorded::PoolChanged(from) = second else { panic!("the second decision was taken past its guard") };
    assert!(from >= at, "planned again from the revision that changed the pool: {from} < {at}");
    assert!(store.get("/lb/states/p7/s1").contains("draining"));
    assert!(!store.get("/lb/states/p7/s2").contains("draining"), "s2 stays in service");
}

/// A pool's minimum in service holds across nodes: two operators taking
/// two servers out at once through two nodes, where only one may go, are
/// not both obeyed (the second is planned again and refused).
#[test]
fn two_operators_taking_two_servers_out_at_once_through_two_nodes_keep_the_pools_minimum() {
    let fleet = Fleet::start_with(3, &|c| c.set("pools.p7.min_in_service", 2));
    for round in 0..6 {
        let barrier = std::sync::Barrier::new(2);
        let (a, b) = std::thread::scope(|s| {
            let one = s.spawn(|| {
                barrier.wait();
                fleet.node("n1").agent.lb(&["server", "disable", "p7", "s1"])
            });
            let two = s.spawn(|| {
                barrier.wait();
                fleet.node("n2").agent.lb(&["server", "disable", "p7", "s2"])
            });
            (one.join().expect("n1's operator"), two.join().expect("n2's operator"))
        });
        assert!(!(a.0 && b.0), "round {round}: both servers were taken out, below the pool's minimum of 2");
        assert!(a.0 || b.0, "round {round}: neither was taken out: {} / {}", a.2, b.2);
        for (ok, _, err) in [&a, &b] {
            assert!(*ok || err.contains("min_in_service") || err.contains("changed"), "round {round}: {err}");
        }
        let out = if a.0 { "s1" } else { "s2" };
        fleet.wait_state_everywhere("p7", out, "DISABLED (immediate)", Duration::from_secs(2));
        fleet.node("n3").lb(&["server", "enable", "p7", out]);
        fleet.wait_state_everywhere("p7", out, "ENABLED", Duration::from_secs(2));
    }
}

#[test]
fn two_operators_changing_one_server_at_once_through_two_nodes_are_both_told_and_every_node_agrees() {
    let fleet = Fleet::start(2);
    let mut conflicts = 0;
    for round in 0..8 {
        let barrier = std::sync::Barrier::new(2);
        let (a, b) = std::thread::scope(|s| {
            let one = s.spawn(|| {
                barrier.wait();
                fleet.node("n1").agent.lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", "1h"])
            });
            let two = s.spawn(|| {
                barrier.wait();
                fleet.node("n2").agent.lb(&["server", "disable", "p7", "s1"])
            });
            (one.join().expect("n1's operator"), two.join().expect("n2's operator"))
        });
        for (ok, _, err) in [&a, &b] {
            assert!(*ok || err.contains("changed meanwhile through another node"), "round {round}: {err}");
        }
        assert!(a.0 || b.0, "round {round}: neither change was taken");
        conflicts += usize::from(!a.0) + usize::from(!b.0);
        // Whatever won, every node shows it.
        let want = fleet.node("n1").state("p7", "s1");
        fleet.wait_state_everywhere("p7", "s1", &want, Duration::from_secs(2));
        fleet.node("n3").lb(&["server", "enable", "p7", "s1"]);
        fleet.wait_state_everywhere("p7", "s1", "ENABLED", Duration::from_secs(2));
    }
    eprintln!("{conflicts} of 16 changes refused as concurrent");
}

/// The same command through two nodes at once (or asked again after an
/// answer lost while the store changed leaders, and recorded late): the
/// server already is as asked, which is no conflict. Neither operator is
/// refused, and every node agrees.
#[test]
fn the_same_change_through_two_nodes_at_once_is_refused_to_neither() {
    let fleet = Fleet::start(2);
    let changes: [(&[&str], &str); 2] =
        [(&["server", "disable", "p7", "s1"], "DISABLED (immediate)"), (&["server", "enable", "p7", "s1"], "ENABLED")];
    for round in 0..8 {
        for (args, want) in changes {
            let barrier = std::sync::Barrier::new(2);
            let answers = std::thread::scope(|s| {
                let asks = ["n1", "n2"].map(|node| {
                    let barrier = &barrier;
                    let fleet = &fleet;
                    s.spawn(move || {
                        barrier.wait();
                        fleet.node(node).agent.lb(args)
                    })
                });
                asks.map(|ask| ask.join().expect("an operator"))
            });
            for (ok, _, err) in &answers {
                assert!(*ok, "round {round}: {args:?} refused: {err}");
            }
            fleet.wait_state_everywhere("p7", "s1", want, Duration::from_secs(2));
        }
    }
}

/// A server's state code in an instance's pinned server table.

#[test]
fn a_store_that_requires_tls_client_certificates_serves_nodes_that_present_theirs() {
    let fleet = Fleet::start_tls(2);
    // The store refuses a client without a certificate...
    let refused = fleet.store.etcdctl_without_certificate(&["get", "--prefix", "/lb"]).output().expect("etcdctl");
    assert!(!refused.status.success(), "a client without a certificate was served");
    // ...and the nodes, with theirs, share decisions through it.
    fleet.node("n2").lb(&["server", "disable", "p7", "s1", "--graceful", "--until-drained"]);
    fleet.wait_state_everywhere("p7", "s1", "DISABLED (drained)", Duration::from_secs(5));
    let stored = fleet.store.get("/lb/states/p7/s1");
    assert!(stored.contains("\"reason\":\"drained\""), "the store holds the fleet's end of the drain: {stored}");
    fleet.node("n3").lb(&["server", "enable", "p7", "s1"]);
    fleet.wait_state_everywhere("p7", "s1", "ENABLED", Duration::from_secs(2));
    for node in &fleet.nodes {
        let view = Fleet::nodes_view(node);
        assert!(view.store_reachable && !view.stale, "{view:?}");
    }
}

fn health_of(bed: &Bed, server: &str) -> HealthView {
    bed.server("p7", server).health.unwrap_or_else(|| panic!("{server} is not monitored"))
}

fn wait_health_everywhere(fleet: &Fleet, server: &str, want: HealthStatus) {
    wait_for(&format!("{server} {want:?} on every node"), Duration::from_secs(10), || {
        fleet.nodes.iter().all(|n| health_of(n, server).status == want)
    });
}

#[test]
fn a_server_is_down_for_the_fleet_when_most_live_nodes_find_it_down_and_each_nodes_view_is_shown() {
    let (fleet, health) = Fleet::monitored(2);
    wait_health_everywhere(&fleet, "s1", HealthStatus::Up);

    // n1's own monitors find s1 DOWN: one node of three, s1 stays UP on
    // every node, n1 included; each node shows n1's view.
    health[0][0].set(Reply::Off);
    wait_for("every node shows n1's view of s1", Duration::from_secs(10), || {
        fleet.nodes.iter().all(|n| health_of(n, "s1").by_node.get("n1").is_some_and(|v| v.starts_with("DOWN")))
    });
    for node in &fleet.nodes {
        let h = health_of(node, "s1");
        assert_eq!(h.status, HealthStatus::Up, "one node of three took s1 out: {h:?}");
        assert_eq!(h.by_node.get("n2").map(String::as_str), Some("UP"), "{h:?}");
    }
    let names = fleet.node("n1").new_connections(12);
    assert!(names.contains(&"s1".to_owned()), "n1 follows the fleet's verdict, not its own: {names:?}");

    // n2's too: two of three, DOWN on every node, n3 included (whose own
    // monitors find it UP); no new flow reaches it anywhere.
    health[1][0].set(Reply::Off);
    wait_health_everywhere(&fleet, "s1", HealthStatus::Down);
    for node in &fleet.nodes {
        let names = node.new_connections(12);
        assert!(!names.contains(&"s1".to_owned()), "a new flow reached s1, DOWN for the fleet: {names:?}");
    }
    let n3 = fleet.node("n3");
    assert_eq!(health_of(n3, "s1").by_node.get("n3").map(String::as_str), Some("UP"));
    let said: Vec<String> = n3.events().into_iter().filter(|e| e.kind == EventKind::Down).map(|e| e.message).collect();
    assert!(said.iter().any(|m| m.contains("2 of 3 nodes find it DOWN")), "{said:?}");

    // n1 finds it UP again: one of three, UP on every node.
    health[0][0].set(Reply::Ok);
    wait_health_everywhere(&fleet, "s1", HealthStatus::Up);
}

#[test]
fn a_maintenance_reply_seen_by_one_node_drains_the_server_on_every_node_with_one_deadline() {
    let (fleet, health) = Fleet::monitored(2);
    wait_health_everywhere(&fleet, "s1", HealthStatus::Up);
    // A live flow on every node keeps the drain going until its deadline.
    let sessions: Vec<Session> =
        fleet.nodes.iter().map(|n| Session::start(n.connect_to("s1"), "s1", EVERY_100MS)).collect();
    // Only n3 reaches s1's maintenance reply: the fleet drains it.
    health[2][0].set(Reply::Status(503));
    fleet.wait_state_everywhere("p7", "s1", "DRAINING (maintenance (health monitor))", Duration::from_secs(10));
    let deadlines: Vec<Option<u64>> = fleet.nodes.iter().map(|n| n.server("p7", "s1").deadline_ms).collect();
    assert!(deadlines[0].is_some() && deadlines.iter().all(|d| *d == deadlines[0]), "deadlines {deadlines:?}");
    let stored = fleet.store.get("/lb/states/p7/s1");
    assert!(stored.contains("\"source\":\"monitor\"") && stored.contains("\"by\":\"n3\""), "{stored}");
    assert!(sessions.iter().all(|s| s.ended().is_none()), "a draining session broke");
    // Normal replies: back in service on every node.
    health[2][0].set(Reply::Ok);
    fleet.wait_state_everywhere("p7", "s1", "ENABLED", Duration::from_secs(10));
    assert!(sessions.iter().all(|s| s.ended().is_none()), "a session broke");
}

/// Writes `weight` for p7/s2 into the config file of each node in `on`.
fn write_weight(fleet: &Fleet, on: &[&str], weight: i64) {
    for name in on {
        let bed = fleet.node(name);
        let config = bed.config.clone().server_set("p7", "s2", "weight", weight);
        std::fs::write(&bed.agent.config_path, config.text()).expect("write a node's config");
    }
}

fn weights(fleet: &Fleet) -> Vec<u32> {
    fleet.nodes.iter().map(|n| n.server("p7", "s2").weight).collect()
}

#[test]
fn a_reload_through_one_node_makes_every_node_reread_its_file_and_says_how_each_fared() {
    let fleet = Fleet::start(2);
    let [n1, n2] = [fleet.node("n1"), fleet.node("n2")];

    // The same new file on every node, one reload through n1.
    write_weight(&fleet, &NODES, 2);
    let out = n1.lb(&["reload"]);
    eprintln!("{out}");
    for node in NODES {
        assert!(out.lines().any(|l| l.trim_start().starts_with(node) && l.contains("applied 1 change(s)")), "{out}");
    }
    wait_for("every node has the new weight", Duration::from_secs(5), || weights(&fleet) == [2, 2, 2]);
    wait_for("every node has the same config hash", Duration::from_secs(5), || {
        Fleet::nodes_view(n1).nodes.iter().all(|n| n.same_config)
    });

    // n3's file is broken: n1 and n2 take theirs, n3 refuses and says so;
    // the operator is told, and n3 is shown with another config.
    write_weight(&fleet, &["n1", "n2"], 3);
    std::fs::write(&fleet.node("n3").agent.config_path, "this is not toml [").expect("write");
    let (ok, out, err) = n2.agent.lb(&["reload"]);
    eprintln!("{out}{err}");
    assert!(!ok, "a reload that did not take on n3 reads as done");
    assert!(out.lines().any(|l| l.contains("n3") && l.contains("REFUSED")), "{out}");
    assert!(err.contains("did not take on n3"), "{err}");
    wait_for("n1 and n2 have the new weight", Duration::from_secs(5), || weights(&fleet) == [3, 3, 2]);
    wait_for("n3's config is shown to differ", Duration::from_secs(5), || {
        Fleet::nodes_view(n1).nodes.iter().any(|n| n.node == "n3" && !n.same_config)
    });

    // A file the asking node refuses: nothing is asked of the fleet.
    write_weight(&fleet, &["n2"], 4);
    std::fs::write(&n1.agent.config_path, "neither is this [").expect("write");
    let (ok, _, err) = n1.agent.lb(&["reload"]);
    assert!(!ok && err.contains("lb.toml"), "{err}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(weights(&fleet), [3, 3, 2], "a reload refused where it was asked reached another node");

    // `--this-node` (systemd's reload, as SIGHUP): the node asked alone
    // re-reads its file.
    write_weight(&fleet, &NODES, 5);
    let (ok, out, err) = n2.agent.lb(&["reload", "--this-node"]);
    assert!(ok, "{out}{err}");
    assert_eq!(weights(&fleet), [3, 5, 2], "applied on n2 when it answered, and on n2 alone");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(weights(&fleet), [3, 5, 2], "another node re-read its file");
}
