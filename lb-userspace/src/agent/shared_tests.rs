//! The owner in a cluster, with a fake datapath and a made-up clock: a
//! decision changes nothing until the store's state comes back; the
//! fleet's drain ends only when no node has a flow left, and is proposed,
//! not applied alone; a deadline is cut here at once, then proposed.

use tokio::sync::mpsc;

use super::{
    fake_datapath::{FakeDatapath, T0, names, owner_of, web_config, web_config_text},
    owner::Owner,
    shared::{Others, Shared, StoredState},
};
use crate::{
    health::tally::Change,
    model::EventKind,
    servers::{AdminState, Batch, DisableMode, DisableReason, Source, health::DownReason},
};

fn clustered(test: &str) -> (Owner<FakeDatapath>, mpsc::UnboundedReceiver<Batch>) {
    let mut owner = owner_of(web_config(test, "", &[("a", ""), ("b", "")], &[80]));
    let (outbox, proposals) = mpsc::unbounded_channel();
    owner.join_cluster(Shared::new("n1".into(), outbox));
    (owner, proposals)
}

/// Plans a disable of `a` and feeds its proposal back as the store would.
fn decided(owner: &mut Owner<FakeDatapath>, mode: DisableMode, revision: i64) -> AdminState {
    let plan = owner.plan_disable("web", &names(&["a"]), mode, false, T0).unwrap();
    let decision = owner.decide("web", &plan, Source::Operator, T0).unwrap();
    assert_eq!(owner.servers().find("web", "a").unwrap().admin, AdminState::Enabled, "decided, not applied");
    let p = decision.proposals.into_iter().next().unwrap();
    assert_eq!(p.expected_revision, 0, "never written");
    let admin = p.state.admin;
    let stored = StoredState { pool: p.pool, server: p.server, state: p.state, revision };
    owner.apply_shared(vec![stored], revision, T0);
    admin
}

#[test]
fn a_drain_of_the_fleet_ends_when_no_node_has_a_flow_left() {
    let (mut owner, mut proposals) = clustered("fleet-drained");
    let draining = decided(&mut owner, DisableMode::Graceful { timeout_ms: None }, 7);
    assert_eq!(owner.servers().find("web", "a").unwrap().admin, draining);
    assert_eq!(owner.shared_revision(), Some(7));
    // No flow here, but the other nodes' counts are not known: it drains on.
    owner.sweep(T0 + 500);
    assert!(proposals.try_recv().is_err());
    // Another node still has one.
    let key = ("web".to_owned(), "a".to_owned());
    let others =
        |n| Some(Others { live: 1, by_server: [(key.clone(), n)].into(), counted_ms: T0 + 400, ..Others::default() });
    owner.set_others(others(1), T0);
    owner.sweep(T0 + 600);
    assert!(proposals.try_recv().is_err());
    // None left anywhere: proposed once (with the key's revision), not applied here alone.
    owner.set_others(others(0), T0);
    owner.sweep(T0 + 800);
    owner.sweep(T0 + 1000);
    let proposed = proposals.try_recv().expect("the end of the drain proposed");
    assert_eq!(proposed.proposals[0].expected_revision, 7);
    assert!(matches!(proposed.proposals[0].state.admin, AdminState::Disabled { reason: DisableReason::Drained, .. }));
    assert!(proposals.try_recv().is_err(), "proposed once");
    assert_eq!(owner.servers().find("web", "a").unwrap().admin, draining, "the store decides");
}

#[test]
fn a_deadline_is_cut_here_at_once_and_the_store_is_told() {
    let (mut owner, mut proposals) = clustered("fleet-deadline");
    decided(&mut owner, DisableMode::Graceful { timeout_ms: Some(3000) }, 3);
    owner.enforce_deadlines(T0 + 3000);
    let a = owner.servers().find("web", "a").unwrap().admin;
    assert!(matches!(a, AdminState::Disabled { reason: DisableReason::Deadline, .. }), "{a:?}");
    let proposed = proposals.try_recv().expect("the cut proposed");
    assert_eq!(proposed.proposals[0].expected_revision, 3);
    // The store's record of the drain (the deadline past) keeps it cut.
    let stored = StoredState {
        pool: "web".into(),
        server: "a".into(),
        state: crate::servers::SharedState {
            admin: AdminState::Draining { since_ms: T0, deadline_ms: Some(T0 + 3000) },
            source: Source::Operator,
            by: "n2".into(),
        },
        revision: 3,
    };
    owner.apply_shared(vec![stored], 4, T0 + 3100);
    assert_eq!(owner.servers().find("web", "a").unwrap().admin, a);
    // An enable planned before the cut is recorded is planned from the
    // store's drain (so the cut's record is the drain's own end, not
    // another operator's decision: planned again, not refused).
    let plan = owner.plan_enable("web", &names(&["a"]), false).unwrap();
    let decision = owner.decide("web", &plan, Source::Operator, T0 + 3200).unwrap();
    let p = &decision.proposals[0];
    assert!(matches!(p.from, AdminState::Draining { .. }), "planned from {:?}", p.from);
    assert!(crate::servers::shared::ends(&p.from, &a));
}

/// A clustered owner whose pool has a monitor, and the others' view: `live`
/// other nodes, of which `down` find `a` DOWN.
fn monitored(test: &str) -> (Owner<FakeDatapath>, mpsc::UnboundedReceiver<Batch>) {
    let rule = "maintenance_timeout = \"30s\"\n[[pools.web.monitors]]\nkind = \"tcp\"";
    let mut owner = owner_of(web_config(test, rule, &[("a", ""), ("b", ""), ("c", "")], &[80]));
    let (outbox, proposals) = mpsc::unbounded_channel();
    owner.join_cluster(Shared::new("n1".into(), outbox));
    (owner, proposals)
}

fn others_finding_a_down(live: usize, down: usize) -> Option<Others> {
    let key = ("web".to_owned(), "a".to_owned());
    let down = (down > 0).then_some((key, (down, DownReason::Refused))).into_iter().collect();
    Some(Others { live, down, ..Others::default() })
}

fn is_down(owner: &Owner<FakeDatapath>, name: &str) -> bool {
    owner.servers().find("web", name).unwrap().health.down.is_some()
}

#[test]
fn a_server_is_down_for_the_fleet_when_a_majority_of_live_nodes_find_it_down() {
    let (mut owner, _proposals) = monitored("fleet-health");
    let a = owner.servers().find("web", "a").unwrap().identity;
    owner.set_others(others_finding_a_down(2, 0), T0);
    // This node alone finds it DOWN: 1 of 3, it stays UP (in the fleet and here).
    owner.apply_health("web", "a", a, Change::Down { reason: DownReason::TimedOut }, T0);
    assert!(!is_down(&owner, "a"), "one node of three took it out");
    // A second node agrees: 2 of 3, DOWN, with the count in the event.
    owner.set_others(others_finding_a_down(2, 1), T0 + 1);
    assert!(is_down(&owner, "a"));
    let said = owner.snapshot(T0).events.iter().rev().find(|e| e.kind == EventKind::Down).unwrap().message.clone();
    assert!(said.contains("2 of 3 nodes find it DOWN"), "{said}");
    // This node sees it UP again: 1 of 3, UP for the fleet.
    owner.apply_health("web", "a", a, Change::Up, T0 + 2);
    assert!(!is_down(&owner, "a"));
    // Two other nodes find it DOWN while this one does not: DOWN here too.
    owner.set_others(others_finding_a_down(2, 2), T0 + 3);
    assert!(is_down(&owner, "a"), "the fleet's verdict, not this node's");
    // Of two live nodes, one is a tie: UP.
    owner.set_others(others_finding_a_down(1, 1), T0 + 4);
    assert!(!is_down(&owner, "a"), "a tie keeps it UP");
    // Without the store, this node's own monitors decide.
    owner.set_others(others_finding_a_down(2, 0), T0 + 5);
    owner.apply_health("web", "a", a, Change::Down { reason: DownReason::Refused }, T0 + 5);
    assert!(!is_down(&owner, "a"));
    owner.set_others(None, T0 + 6);
    assert!(is_down(&owner, "a"), "alone, its own verdict");
}

#[test]
fn a_maintenance_reply_is_proposed_to_the_fleet_not_applied_here_alone() {
    let (mut owner, mut proposals) = monitored("fleet-maintenance");
    let a = owner.servers().find("web", "a").unwrap().identity;
    owner.set_others(others_finding_a_down(2, 0), T0);
    let begins = Change::MaintenanceBegins { matched: "status 503".into(), announced: None };
    owner.apply_health("web", "a", a, begins.clone(), T0);
    assert_eq!(owner.servers().find("web", "a").unwrap().admin, AdminState::Enabled, "not alone");
    let batch = proposals.try_recv().expect("proposed");
    let p = &batch.proposals[0];
    assert_eq!(
        (p.state.source, p.state.admin),
        (Source::Monitor, AdminState::Draining { since_ms: T0, deadline_ms: Some(T0 + 30_000) })
    );
    // The store's record comes back: applied as the monitor's drain.
    let stored = StoredState { pool: p.pool.clone(), server: p.server.clone(), state: p.state.clone(), revision: 3 };
    owner.apply_shared(vec![stored], 3, T0 + 10);
    let slot = owner.servers().find("web", "a").unwrap();
    assert_eq!((slot.source, slot.admin.deadline_ms()), (Source::Monitor, Some(T0 + 30_000)));
    // Normal replies: the return is proposed too.
    owner.apply_health("web", "a", a, Change::MaintenanceEnds, T0 + 20);
    let batch = proposals.try_recv().expect("the end proposed");
    assert_eq!((batch.proposals[0].state.admin, batch.proposals[0].expected_revision), (AdminState::Enabled, 3));
    // Without the store, a node acts alone.
    owner.set_others(None, T0 + 30);
    owner.apply_health("web", "b", owner.servers().find("web", "b").unwrap().identity, begins, T0 + 30);
    assert!(matches!(owner.servers().find("web", "b").unwrap().admin, AdminState::Draining { .. }));
}

/// A decision that takes a server out carries its pool as the store last
/// had it (the revision applied), so that the store records it only if no
/// server of the pool changed meanwhile: the pool's limits were checked
/// against them. A return (or a drain's end) meets no limit: no guard.
#[test]
fn a_decision_is_guarded_by_its_pool_as_the_store_last_had_it() {
    let (mut owner, _proposals) = clustered("fleet-guards");
    let b = crate::servers::SharedState { admin: AdminState::Enabled, source: Source::Operator, by: "n2".into() };
    owner.apply_shared(vec![StoredState { pool: "web".into(), server: "b".into(), state: b, revision: 5 }], 5, T0);
    let plan = owner.plan_disable("web", &names(&["a"]), DisableMode::Immediate, false, T0).unwrap();
    let decision = owner.decide("web", &plan, Source::Operator, T0).unwrap();
    assert_eq!(decision.guards, vec![crate::servers::Guard { pool: "web".into(), revision: 5 }]);
    let p = decision.proposals.into_iter().next().unwrap();
    owner.apply_shared(vec![StoredState { pool: p.pool, server: p.server, state: p.state, revision: 6 }], 6, T0);
    let plan = owner.plan_enable("web", &names(&["a"]), false).unwrap();
    assert!(owner.decide("web", &plan, Source::Operator, T0).unwrap().guards.is_empty(), "a return is not guarded");
}

/// In a cluster, a maintenance drain the store refused because another
/// server of the pool went out first is planned again from the pool as it
/// now is: with `max_in_maintenance = 1` it waits its turn (queued), and
/// goes when the other comes back.
#[test]
fn a_maintenance_drain_refused_because_the_pool_changed_first_waits_its_turn() {
    let rule = "maintenance_timeout = \"30s\"\nmax_in_maintenance = 1\n[[pools.web.monitors]]\nkind = \"tcp\"";
    let mut owner = owner_of(web_config("fleet-refused", rule, &[("a", ""), ("b", ""), ("c", "")], &[80]));
    let (outbox, mut proposals) = mpsc::unbounded_channel();
    owner.join_cluster(Shared::new("n1".into(), outbox));
    owner.set_others(others_finding_a_down(2, 0), T0);
    let a = owner.servers().find("web", "a").unwrap().identity;
    let begins = Change::MaintenanceBegins { matched: "status 503".into(), announced: None };
    owner.apply_health("web", "a", a, begins, T0);
    let batch = proposals.try_recv().expect("a's drain proposed");
    assert_eq!(batch.guards, vec![crate::servers::Guard { pool: "web".into(), revision: 0 }]);
    // Another node's drain of b came first (its monitor's), then the store
    // refuses a's: handed back.
    let b_out = crate::servers::SharedState {
        admin: AdminState::Draining { since_ms: T0, deadline_ms: Some(T0 + 30_000) },
        source: Source::Monitor,
        by: "n2".into(),
    };
    owner.apply_shared(vec![StoredState { pool: "web".into(), server: "b".into(), state: b_out, revision: 4 }], 4, T0);
    owner.not_recorded(batch, T0 + 100);
    let slot = owner.servers().find("web", "a").unwrap();
    assert_eq!(slot.admin, AdminState::Enabled, "a keeps serving");
    assert!(slot.health.queued.is_some(), "a waits its turn: {:?}", slot.health);
    assert!(proposals.try_recv().is_err(), "not proposed again while b is out");
    // b comes back: a's turn.
    let b_back = crate::servers::SharedState { admin: AdminState::Enabled, source: Source::Monitor, by: "n2".into() };
    owner.apply_shared(vec![StoredState { pool: "web".into(), server: "b".into(), state: b_back, revision: 5 }], 5, T0);
    owner.admit_queued(T0 + 200);
    let again = proposals.try_recv().expect("a's drain proposed again");
    assert_eq!((again.proposals[0].server.as_str(), again.guards[0].revision), ("a", 5), "{again:?}");
}

/// A change of more servers than one store transaction takes is refused
/// with its reason, before anything is sent (etcd would refuse it with an
/// error that reads as a store fault).
#[test]
fn a_change_of_more_servers_than_one_transaction_takes_is_refused_with_its_reason() {
    let names: Vec<String> = (0..130).map(|i| format!("s{i}")).collect();
    let mut text = web_config_text("fleet-many", "", &[("a", "")], &[80]);
    for (i, name) in names.iter().enumerate() {
        text += &format!("[[pools.web.servers]]\nname = \"{name}\"\naddress = \"10.0.1.{i}\"\nport = 80\n");
    }
    let config = crate::config::Config::parse(&text, std::path::Path::new("test.toml")).expect("test config");
    let mut owner = owner_of(config);
    let (outbox, _proposals) = mpsc::unbounded_channel();
    owner.join_cluster(Shared::new("n1".into(), outbox));
    let plan = owner.plan_disable("web", &names[..128], DisableMode::Immediate, false, T0).unwrap();
    let refused = owner.decide("web", &plan, Source::Operator, T0).err().expect("refused");
    assert_eq!(
        refused.to_string(),
        "refused, nothing changed: a cluster records a change of at most 127 servers at once (the store's \
         operations per transaction); change these 128 in smaller groups"
    );
    let plan = owner.plan_disable("web", &names[..127], DisableMode::Immediate, false, T0).unwrap();
    assert!(owner.decide("web", &plan, Source::Operator, T0).is_ok(), "127 at once are taken");
}
