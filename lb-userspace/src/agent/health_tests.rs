//! The owner's side of health verdicts, with a fake datapath and a made-up
//! clock: the order of writes when a server goes DOWN or UP, `on_down`,
//! fail-open, and maintenance with the operator's decision winning.

use std::time::Duration;

use super::fake_datapath::{T0, Write, names, owner_of, state, take_writes, web_config};
use crate::{
    health::tally::Change,
    model::{EventKind, ServerState, Source},
    servers::{AdminState, health::DownReason},
};

const ABC: [(&str, &str); 3] = [("a", ""), ("b", ""), ("c", "")];

fn owner(test: &str, rule: &str) -> super::owner::Owner<super::fake_datapath::FakeDatapath> {
    owner_of(web_config(test, rule, &ABC, &[80]))
}

fn identity(owner: &super::owner::Owner<super::fake_datapath::FakeDatapath>, name: &str) -> u64 {
    owner.servers().find("web", name).unwrap().identity
}

fn down(reason: DownReason) -> Change {
    Change::Down { reason }
}

#[test]
fn a_down_server_leaves_the_rows_before_it_drains_and_comes_back_before_them() {
    let mut owner = owner("health-order", "on_down = \"keep\"");
    let a = identity(&owner, "a");
    owner.apply_health("web", "a", a, down(DownReason::Refused), T0);
    assert_eq!(
        take_writes(&mut owner),
        [Write::Maglev(vec!["b", "c"]), Write::Server("a", ServerState::Draining)],
        "no new flow is lost: the rows first"
    );
    assert_eq!(state(&owner, "a"), AdminState::Enabled, "the operator's state is apart");
    owner.apply_health("web", "a", a, Change::Up, T0 + 1);
    assert_eq!(take_writes(&mut owner), [Write::Server("a", ServerState::Enabled), Write::Maglev(vec!["a", "b", "c"])]);
    let kinds: Vec<EventKind> = owner.snapshot(T0).events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Down, EventKind::Up]);
}

#[test]
fn on_down_terminate_cuts_at_once_and_a_duration_at_its_time() {
    let mut owner = owner("health-cut", "on_down = \"terminate\"");
    owner.apply_health("web", "a", identity(&owner, "a"), down(DownReason::TimedOut), T0);
    assert_eq!(owner.next_cut(), Some(T0));
    take_writes(&mut owner);
    owner.enforce_cuts(T0);
    assert_eq!(take_writes(&mut owner), [Write::Server("a", ServerState::Disabled), Write::Terminate(vec!["a"])]);

    let mut owner = super::fake_datapath::owner_of(web_config("health-after", "on_down = \"30s\"", &ABC, &[80]));
    owner.apply_health("web", "b", identity(&owner, "b"), down(DownReason::Refused), T0);
    assert_eq!(owner.next_cut(), Some(T0 + 30_000));
    take_writes(&mut owner);
    owner.enforce_cuts(T0 + 29_999);
    assert!(take_writes(&mut owner).is_empty());
    owner.enforce_cuts(T0 + 30_000);
    assert!(take_writes(&mut owner).contains(&Write::Terminate(vec!["b"])));
}

#[test]
fn when_every_server_is_down_all_serve() {
    let mut owner = owner("health-open", "");
    for name in ["a", "b"] {
        owner.apply_health("web", name, identity(&owner, name), down(DownReason::Refused), T0);
    }
    take_writes(&mut owner);
    owner.apply_health("web", "c", identity(&owner, "c"), down(DownReason::Refused), T0);
    let writes = take_writes(&mut owner);
    assert!(writes.contains(&Write::Maglev(vec!["a", "b", "c"])), "all serve again: {writes:?}");
    assert!(owner.servers().iter().all(|s| s.health.fail_open && s.takes_new_flows()));
    assert!(owner.snapshot(T0).events.iter().any(|e| e.kind == EventKind::FailOpen));
    owner.apply_health("web", "b", identity(&owner, "b"), Change::Up, T0 + 1);
    assert!(take_writes(&mut owner).contains(&Write::Maglev(vec!["b"])), "only the UP one once one is UP");
}

#[test]
fn maintenance_drains_by_the_announced_time_within_the_maximum_and_ends_unless_an_operator_decided() {
    let mut owner = owner("health-maint", "max_maintenance_timeout = \"2m\"");
    let begins =
        |secs| Change::MaintenanceBegins { matched: "status 503".into(), announced: Some(Duration::from_secs(secs)) };
    owner.apply_health("web", "a", identity(&owner, "a"), begins(600), T0);
    assert_eq!(state(&owner, "a"), AdminState::Draining { since_ms: T0, deadline_ms: Some(T0 + 120_000) });
    assert_eq!(owner.servers().find("web", "a").unwrap().source, Source::Monitor);
    let refused = owner.enable("web", &names(&["a"]), false, T0 + 1);
    assert!(matches!(refused, Err(super::owner::ControlError::InMaintenance { .. })), "{refused:?}");
    owner.apply_health("web", "a", identity(&owner, "a"), Change::MaintenanceEnds, T0 + 2);
    assert_eq!(state(&owner, "a"), AdminState::Enabled, "back by itself");

    owner.apply_health("web", "b", identity(&owner, "b"), begins(10), T0 + 3);
    let changes = owner.disable("web", &names(&["b"]), crate::servers::DisableMode::Immediate, false, T0 + 4).unwrap();
    let labels: Vec<String> = changes.iter().map(|c| format!("{} -> {}", c.from, c.to)).collect();
    assert_eq!(
        labels,
        ["DRAINING (maintenance (health monitor)) -> DISABLED (immediate)"],
        "the change says what the operator saw"
    );
    owner.apply_health("web", "b", identity(&owner, "b"), Change::MaintenanceEnds, T0 + 5);
    assert_eq!(state(&owner, "b").state(), ServerState::Disabled, "the operator's decision wins");
}

/// Rolling maintenance: three servers announce maintenance together, one
/// goes at a time; the others keep serving, queued in order, and go as
/// places free; one whose maintenance ends while queued leaves the queue.
#[test]
fn with_max_in_maintenance_servers_announcing_maintenance_together_go_one_at_a_time() {
    let abcd = [("a", ""), ("b", ""), ("c", ""), ("d", "")];
    let mut owner = owner_of(web_config("health-rolling", "max_in_maintenance = 1", &abcd, &[80]));
    let begins = Change::MaintenanceBegins { matched: "status 503".into(), announced: None };
    for (i, name) in ["b", "a", "c"].into_iter().enumerate() {
        owner.apply_health("web", name, identity(&owner, name), begins.clone(), T0 + i as u64);
        owner.admit_queued(T0 + i as u64);
    }
    let draining = |owner: &super::owner::Owner<_>| -> Vec<String> {
        owner.servers().pool("web").filter(|s| s.admin.is_draining()).map(|s| s.name.clone()).collect()
    };
    let queued = |owner: &super::owner::Owner<_>| -> Vec<String> {
        owner.servers().pool("web").filter(|s| s.health.queued.is_some()).map(|s| s.name.clone()).collect()
    };
    assert_eq!(draining(&owner), ["b"], "the first to announce goes");
    assert_eq!(queued(&owner), ["a", "c"], "the others wait, ENABLED");
    assert!(owner.servers().find("web", "a").unwrap().takes_new_flows(), "a queued server keeps serving");
    let said: Vec<String> = owner.snapshot(T0).events.iter().map(|e| e.message.clone()).collect();
    assert!(said.iter().any(|m| m.contains("queued (2 in line)")), "{said:?}");

    // b's maintenance is over: back in service, and a (next in line) goes.
    owner.apply_health("web", "b", identity(&owner, "b"), Change::MaintenanceEnds, T0 + 10);
    owner.admit_queued(T0 + 10);
    assert_eq!(draining(&owner), ["a"]);
    assert_eq!(queued(&owner), ["c"]);
    // c's maintenance ends while it waits: it leaves the queue.
    owner.apply_health("web", "c", identity(&owner, "c"), Change::MaintenanceEnds, T0 + 11);
    assert!(queued(&owner).is_empty());
    // An operator's disable counts as out too: a's place is not freed by
    // its own end while d is disabled.
    owner.disable("web", &names(&["d"]), crate::servers::DisableMode::Immediate, true, T0 + 12).unwrap();
    owner.apply_health("web", "a", identity(&owner, "a"), Change::MaintenanceEnds, T0 + 13);
    owner.apply_health("web", "b", identity(&owner, "b"), begins.clone(), T0 + 14);
    owner.admit_queued(T0 + 14);
    assert_eq!(queued(&owner), ["b"], "d is out: b waits");
    owner.enable("web", &names(&["d"]), false, T0 + 15).unwrap();
    owner.admit_queued(T0 + 15);
    assert_eq!(draining(&owner), ["b"], "d back: b's turn");
    let said: Vec<String> = owner.snapshot(T0).events.iter().map(|e| e.message.clone()).collect();
    assert!(said.iter().any(|m| m.contains("its turn came after")), "{said:?}");
}

/// Ramp-up: a server back in service (an operator's enable, health UP)
/// starts at a tenth of its weight in the rows, climbs a step each tenth
/// of `ramp_up` (one rewrite of the rows each), and ends at full weight;
/// a server alone, or a pool without `ramp_up`, takes its share at once.
#[test]
fn a_server_back_in_service_ramps_up_its_share_a_step_at_a_time() {
    use crate::servers::{DisableMode, ramp::STEPS};
    let mut owner = owner("ramp", "ramp_up = \"9s\"");
    let weight = |owner: &super::owner::Owner<_>, name: &str| owner.servers().find("web", name).unwrap().hash_weight();
    assert_eq!(weight(&owner, "a"), STEPS, "no ramp at start: the whole pool starts together");
    owner.disable("web", &names(&["a"]), DisableMode::Immediate, false, T0).unwrap();
    take_writes(&mut owner);
    owner.enable("web", &names(&["a"]), false, T0 + 1).unwrap();
    assert!(take_writes(&mut owner).contains(&Write::Maglev(vec!["a", "b", "c"])));
    assert_eq!((weight(&owner, "a"), weight(&owner, "b")), (1, STEPS), "a tenth of its weight");
    assert_eq!(owner.next_ramp_step(), Some(T0 + 1 + 1_000));
    owner.climb_ramps(T0 + 1 + 999);
    assert!(take_writes(&mut owner).is_empty(), "not yet");
    owner.climb_ramps(T0 + 1 + 1_000);
    assert_eq!(take_writes(&mut owner), [Write::Maglev(vec!["a", "b", "c"])], "one rewrite per step");
    assert_eq!(weight(&owner, "a"), 2);
    owner.climb_ramps(T0 + 1 + 5_500);
    assert_eq!(weight(&owner, "a"), 6, "a late timer climbs to the step due");
    owner.climb_ramps(T0 + 1 + 8_999);
    assert_eq!(weight(&owner, "a"), 9, "the last step before full weight");
    owner.climb_ramps(T0 + 1 + 9_000);
    assert_eq!(weight(&owner, "a"), STEPS, "over: its full weight");
    assert_eq!(owner.next_ramp_step(), None);
    let said: Vec<String> =
        owner.snapshot(T0).events.iter().filter(|e| e.kind == EventKind::RampUp).map(|e| e.message.clone()).collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert!(said[0].contains("ramps up over 9s"), "{said:?}");

    // Health UP again ramps too.
    let b = identity(&owner, "b");
    owner.apply_health("web", "b", b, down(DownReason::Refused), T0 + 20_000);
    owner.apply_health("web", "b", b, Change::Up, T0 + 21_000);
    assert_eq!(weight(&owner, "b"), 1, "UP again: ramping");
    // A server leaving the rows mid-ramp ends its ramp.
    owner.disable("web", &names(&["b"]), DisableMode::Immediate, false, T0 + 22_000).unwrap();
    assert!(owner.servers().find("web", "b").unwrap().ramp.is_none());

    // The only server coming back gets everything at once: nobody to share with.
    let mut alone = owner_of(web_config("ramp-alone", "ramp_up = \"10s\"\nmin_in_service = 0", &[("a", "")], &[80]));
    alone.disable("web", &names(&["a"]), DisableMode::Immediate, false, T0).unwrap();
    alone.enable("web", &names(&["a"]), false, T0 + 1).unwrap();
    assert!(alone.servers().find("web", "a").unwrap().ramp.is_none());
    // Without ramp_up, at once.
    let mut off = owner_of(web_config("ramp-off", "", &ABC, &[80]));
    off.disable("web", &names(&["a"]), DisableMode::Immediate, false, T0).unwrap();
    off.enable("web", &names(&["a"]), false, T0 + 1).unwrap();
    assert!(off.servers().find("web", "a").unwrap().ramp.is_none());
}
