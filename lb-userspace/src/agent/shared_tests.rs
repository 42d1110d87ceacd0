//! The owner in a cluster, with a fake datapath and a made-up clock: a
//! decision changes nothing until the store's state comes back; the
//! fleet's drain ends only when no node has a flow left, and is proposed,
//! not applied alone; a deadline is cut here at once, then proposed.

use tokio::sync::mpsc;

use super::{
    fake_datapath::{FakeDatapath, T0, names, owner_of, web_config},
    owner::Owner,
    shared::{OthersFlows, Shared, StoredState},
};
use crate::servers::{AdminState, DisableMode, DisableReason, Proposal, Source};

fn clustered(test: &str) -> (Owner<FakeDatapath>, mpsc::UnboundedReceiver<Vec<Proposal>>) {
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
    let others = |n| Some(OthersFlows { by_server: [(key.clone(), n)].into(), counted_ms: T0 + 400 });
    owner.set_others_flows(others(1));
    owner.sweep(T0 + 600);
    assert!(proposals.try_recv().is_err());
    // None left anywhere: proposed once (with the key's revision), not applied here alone.
    owner.set_others_flows(others(0));
    owner.sweep(T0 + 800);
    owner.sweep(T0 + 1000);
    let proposed = proposals.try_recv().expect("the end of the drain proposed");
    assert_eq!(proposed[0].expected_revision, 7);
    assert!(matches!(proposed[0].state.admin, AdminState::Disabled { reason: DisableReason::Drained, .. }));
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
    assert_eq!(proposed[0].expected_revision, 3);
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
}
