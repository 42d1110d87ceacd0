//! Many balancer nodes, one administrative state: three real agents in
//! three balancer namespaces sharing a real three-member etcd. A decision
//! made through one node takes effect on every node; deadlines are the same
//! instant everywhere; a drain with no deadline ends when the last flow on
//! any node ends; the store's faults cost no connection.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use lb_userspace::model::{EventKind, ServerState, Why};
use testbed::{
    bed::{EVERY_100MS, wait_for},
    fleet::Fleet,
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
    // of it (each node's own timer: no round trip to the store).
    let (now_wall, now) = (wall_ms(), Instant::now());
    for (i, s) in sessions.iter().enumerate() {
        let ended = s.ended().expect("ended");
        assert_eq!(ended.kind, std::io::ErrorKind::ConnectionReset, "node {i}: {ended:?}");
        let ended_ms = now_wall - (now - ended.at).as_millis() as u64;
        eprintln!("node {i}: reset {} ms after the deadline", ended_ms as i64 - deadline_ms as i64);
        assert!(ended_ms + 1 >= deadline_ms, "node {i}: reset {} ms before the deadline", deadline_ms - ended_ms);
        assert!(ended_ms <= deadline_ms + 50, "node {i}: reset {} ms after the deadline", ended_ms - deadline_ms);
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
        let drained = node.event_kinds_of("s1").iter().filter(|k| **k == EventKind::Drained).count();
        assert_eq!(drained, 1, "{:?}", node.events());
    }
}
