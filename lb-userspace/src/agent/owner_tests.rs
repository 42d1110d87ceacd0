//! The owner's logic with a fake datapath and a made-up clock: the order of
//! writes in each change, deadlines, drained detection, the guard. No root,
//! no kernel.

use std::time::Duration;

use super::{
    fake_datapath::{FakeDatapath, T0, Write, names, owner_of, state, take_writes, web_config},
    owner::{ControlError, Owner},
};
use crate::{
    model::{EventKind, ServerState, Why},
    servers::{AdminState, DisableMode, DisableReason},
};

/// A pool "web" of a, b, c (ids 0, 1, 2) behind one service.
fn owner(test: &str) -> Owner<FakeDatapath> {
    owner_of(web_config(test, "", &[("a", ""), ("b", ""), ("c", "")], &[80]))
}

#[test]
fn a_drain_leaves_the_hash_table_before_its_state_is_written() {
    let mut owner = owner("drain-order");
    let graceful = DisableMode::Graceful { timeout_ms: None };
    let changes = owner.disable("web", &names(&["a"]), graceful, false, T0).unwrap();
    assert_eq!(changes[0].to.to_string(), "DRAINING (until drained)");
    // No moment where a slot sends new flows to a DRAINING server (they
    // would be dropped): the row goes first.
    assert_eq!(take_writes(&mut owner), [Write::Maglev(vec!["b", "c"]), Write::Server("a", ServerState::Draining)]);
}

#[test]
fn an_immediate_disable_stops_traffic_first_and_purges_last() {
    let mut owner = owner("immediate-order");
    owner.dp_mut().live_tcp.insert(1, 7);
    let changes = owner.disable("web", &names(&["b"]), DisableMode::Immediate, false, T0).unwrap();
    assert_eq!(changes[0].flows_reset, Some(7));
    assert_eq!(
        take_writes(&mut owner),
        [Write::Server("b", ServerState::Disabled), Write::Maglev(vec!["a", "c"]), Write::Terminate(vec!["b"])]
    );
    let event = owner.snapshot(T0).events.back().cloned().unwrap();
    assert_eq!((event.kind, event.subject.server_name().unwrap_or_default()), (EventKind::Disabled, "b"));
    assert!(event.message.contains("7 live TCP flow(s) reset"), "{}", event.message);
}

#[test]
fn readers_see_a_terminated_servers_flows_as_being_reset_until_they_are() {
    let mut owner = owner("resetting");
    let (snapshots, reader) = tokio::sync::watch::channel(std::sync::Arc::new(owner.snapshot(T0)));
    owner.publish_to(snapshots);
    owner.dp_mut().live.insert(1, 7);
    owner.sweep(T0);
    // What a reader sees while the purge and the resets run: b is DISABLED
    // (it gets no packet any more) and its 7 flows are the ones going.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    owner.dp_mut().during_terminate = Some(Box::new({
        let (seen, reader) = (seen.clone(), reader.clone());
        move || {
            let snapshot = reader.borrow();
            let b = &snapshot.pool("web").unwrap().servers[1];
            *seen.lock().unwrap() = Some((b.label.state, b.resetting, b.active_flows));
        }
    }));
    owner.disable("web", &names(&["b"]), DisableMode::Immediate, false, T0 + 10).unwrap();
    assert_eq!(*seen.lock().unwrap(), Some((ServerState::Disabled, true, 7)));
    // Once done: no flow left, none being reset.
    owner.publish(T0 + 10);
    let snapshot = reader.borrow();
    let b = &snapshot.pool("web").unwrap().servers[1];
    assert_eq!((b.label.state, b.resetting, b.active_flows), (ServerState::Disabled, false, 0));
}

#[test]
fn an_enable_is_written_before_the_hash_table_points_at_the_server() {
    let mut owner = owner("enable-order");
    owner.disable("web", &names(&["a", "b"]), DisableMode::Immediate, false, T0).unwrap();
    take_writes(&mut owner);
    owner.enable("web", &names(&["a", "b"]), false, T0 + 1).unwrap();
    assert_eq!(
        take_writes(&mut owner),
        [
            Write::Server("a", ServerState::Enabled),
            Write::Server("b", ServerState::Enabled),
            Write::Maglev(vec!["a", "b", "c"]),
        ]
    );
}

#[test]
fn a_deadline_terminates_what_is_left_when_it_comes_and_not_before() {
    let mut owner = owner("deadline");
    let timeout = DisableMode::Graceful { timeout_ms: Some(5_000) };
    owner.disable("web", &names(&["c"]), timeout, false, T0).unwrap();
    assert_eq!(owner.next_deadline(), Some(T0 + 5_000));
    take_writes(&mut owner);

    owner.enforce_deadlines(T0 + 4_999);
    assert!(take_writes(&mut owner).is_empty(), "nothing before the deadline");
    owner.enforce_deadlines(T0 + 5_000);
    assert_eq!(state(&owner, "c"), AdminState::Disabled { since_ms: T0 + 5_000, reason: DisableReason::Deadline });
    assert!(take_writes(&mut owner).contains(&Write::Terminate(vec!["c"])));
    assert_eq!(owner.next_deadline(), None);
    let kinds: Vec<EventKind> = owner.snapshot(T0).events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Draining, EventKind::Deadline]);
}

#[test]
fn a_draining_server_is_drained_by_the_first_count_that_finds_no_flow() {
    let mut owner = owner("drained");
    owner.dp_mut().live.insert(0, 2);
    owner.sweep(T0 - 100);
    owner.disable("web", &names(&["a"]), DisableMode::Graceful { timeout_ms: None }, false, T0).unwrap();
    owner.dp_mut().live.clear();
    // A count from a walk that began before the drain proves nothing.
    owner.sweep(T0 - 1);
    assert!(state(&owner, "a").is_draining(), "drained by a count older than the drain");

    owner.dp_mut().live.insert(0, 1);
    owner.sweep(T0 + 200);
    assert!(state(&owner, "a").is_draining(), "one flow left: still draining");
    assert_eq!(owner.snapshot(T0 + 200).pools[0].servers[0].active_flows, 1);
    owner.dp_mut().live.clear();
    owner.sweep(T0 + 400);
    assert_eq!(state(&owner, "a"), AdminState::Disabled { since_ms: T0 + 400, reason: DisableReason::Drained });
    let last = owner.snapshot(T0 + 400).events.back().cloned().unwrap();
    assert_eq!(last.kind, EventKind::Drained);
}

#[test]
fn a_new_deadline_for_a_draining_server_is_saved_and_told() {
    let mut owner = owner("new-deadline");
    let after = |ms| DisableMode::Graceful { timeout_ms: Some(ms) };
    owner.disable("web", &names(&["a"]), after(60_000), false, T0).unwrap();
    owner.disable("web", &names(&["a"]), after(5_000), false, T0 + 1_000).unwrap();
    assert_eq!(owner.next_deadline(), Some(T0 + 6_000));
    // What a restarted agent would fire.
    let saved = super::state_file::load(&owner.config().state_file).unwrap();
    assert_eq!(saved.servers[&("web".to_owned(), "a".to_owned())].admin.deadline_ms(), Some(T0 + 6_000));
    let kinds: Vec<EventKind> = owner.snapshot(T0).events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::Draining, EventKind::Draining], "the new deadline is an event");
}

#[test]
fn flows_are_counted_often_only_while_a_server_drains() {
    let mut owner = owner("interval");
    assert_eq!(owner.sweep_interval(), Duration::from_secs(1));
    owner.disable("web", &names(&["a"]), DisableMode::Graceful { timeout_ms: None }, false, T0).unwrap();
    assert_eq!(owner.sweep_interval(), Duration::from_millis(200));
    // A walk of 300 ms: at most a third of the time walking.
    owner.counts.took = Duration::from_millis(300);
    assert_eq!(owner.sweep_interval(), Duration::from_millis(600));
}

#[test]
fn the_guard_refuses_to_leave_a_pool_without_a_server_and_nothing_changes() {
    let mut owner = owner("guard");
    let all = names(&["a", "b", "c"]);
    let refused = owner.disable("web", &all, DisableMode::Immediate, false, T0).unwrap_err();
    assert!(matches!(refused, ControlError::LastServer { .. }), "{refused}");
    assert!(take_writes(&mut owner).is_empty(), "nothing written");
    assert!(["a", "b", "c"].iter().all(|s| state(&owner, s) == AdminState::Enabled));

    owner.disable("web", &all, DisableMode::Immediate, true, T0).unwrap();
    assert!(["a", "b", "c"].iter().all(|s| state(&owner, s).state() == ServerState::Disabled));
}

#[test]
fn a_pools_minimum_in_service_is_kept_unless_forced_and_says_why() {
    let config = web_config("minimum", "min_in_service = 2", &[("a", ""), ("b", ""), ("c", "")], &[80]);
    let mut owner = owner_of(config);
    let graceful = DisableMode::Graceful { timeout_ms: None };
    owner.disable("web", &names(&["a"]), graceful, false, T0).expect("2 left in service");
    take_writes(&mut owner);
    let refused = owner.disable("web", &names(&["b"]), DisableMode::Immediate, false, T0).unwrap_err();
    assert!(matches!(refused, ControlError::LastServer { left: 1, min: 2, .. }), "{refused}");
    assert!(refused.to_string().contains("1 enabled server(s), fewer than its min_in_service (2)"), "{refused}");
    assert!(take_writes(&mut owner).is_empty(), "nothing written");
    assert_eq!(state(&owner, "b"), AdminState::Enabled);
    owner.disable("web", &names(&["b"]), DisableMode::Immediate, true, T0).expect("forced");
    assert_eq!(state(&owner, "b").state(), ServerState::Disabled);
}

#[test]
fn unknown_names_are_refused_before_anything_changes() {
    let mut owner = owner("unknown");
    let e = owner.disable("db", &names(&["a"]), DisableMode::Immediate, false, T0).unwrap_err();
    assert!(matches!(e, ControlError::UnknownPool { .. }));
    let e = owner.disable("web", &names(&["a", "zz"]), DisableMode::Immediate, false, T0).unwrap_err();
    assert_eq!(e.to_string(), "unknown server \"zz\" in pool \"web\"");
    assert!(take_writes(&mut owner).is_empty());
    assert_eq!(state(&owner, "a"), AdminState::Enabled);
}

#[test]
fn the_snapshot_shows_states_deadlines_and_counts_without_side_effects() {
    let mut owner = owner("snapshot");
    owner.disable("web", &names(&["b"]), DisableMode::Graceful { timeout_ms: Some(60_000) }, false, T0).unwrap();
    take_writes(&mut owner);
    let sweeps = owner.dp().sweeps;
    let snapshot = owner.snapshot(T0 + 10);
    let b = &snapshot.pool("web").unwrap().servers[1];
    assert_eq!((b.name.as_str(), b.admin.state(), b.admin.why()), ("b", ServerState::Draining, Some(Why::Deadline)));
    assert_eq!(b.admin.deadline_ms(), Some(T0 + 60_000));
    assert_eq!(snapshot.pool("web").unwrap().services, ["10.100.0.1:80/tcp"]);
    assert_eq!((owner.dp().sweeps, take_writes(&mut owner).len()), (sweeps, 0), "a read changes nothing");
}

#[test]
fn a_change_that_cannot_be_saved_is_not_made() {
    let mut owner = owner("unsaved");
    // A state file that cannot be written: nothing may change.
    owner.config_mut_for_tests().state_file = "/proc/lb-no-such-dir/state.json".into();
    for mode in [DisableMode::Immediate, DisableMode::Graceful { timeout_ms: None }] {
        let refused = owner.disable("web", &names(&["a"]), mode, false, T0);
        assert!(matches!(refused, Err(ControlError::NotSaved(_))), "{refused:?}");
        assert_eq!(state(&owner, "a"), AdminState::Enabled);
    }
    assert_eq!(owner.dp().writes, vec![], "the datapath was not touched");
    assert!(owner.snapshot(T0).events.is_empty());
}

#[test]
fn a_change_whose_datapath_write_fails_is_rolled_back() {
    let mut owner = owner("rollback");
    owner.dp_mut().fail_maglev = true;
    let refused = owner.disable("web", &names(&["a"]), DisableMode::Immediate, false, T0);
    assert!(matches!(refused, Err(ControlError::Datapath { .. })), "{refused:?}");
    assert_eq!(state(&owner, "a"), AdminState::Enabled, "the state is put back");
    let writes = &owner.dp().writes;
    assert_eq!(
        writes,
        &vec![Write::Server("a", ServerState::Disabled), Write::Server("a", ServerState::Enabled)],
        "DISABLED written, then ENABLED again (the rows were never rewritten)"
    );
    let saved = super::state_file::load(&owner.config().state_file).unwrap();
    let record = saved.servers.get(&("web".to_owned(), "a".to_owned())).map(|r| r.admin);
    assert_eq!(record, Some(AdminState::Enabled), "the file is put back");
    assert!(owner.snapshot(T0).events.is_empty(), "no event for a change not made");
}

/// `idle_close`: while a server drains, its idle connections are closed at
/// each count (the drain ends when the busy ones end too); at the deadline
/// the idle ones are closed before the rest is terminated; a pool without
/// it never closes any.
#[test]
fn a_drain_closes_its_idle_connections_cleanly_with_idle_close() {
    let mut owner = owner_of(web_config("idle-close", "idle_close = \"2s\"", &[("a", ""), ("b", "")], &[80]));
    owner.dp_mut().live.insert(0, 5);
    owner.disable("web", &names(&["a"]), DisableMode::Graceful { timeout_ms: None }, false, T0).unwrap();
    owner.dp_mut().idle.insert(0, 3);
    owner.sweep(T0 + 200);
    assert_eq!(owner.snapshot(T0 + 200).pools[0].servers[0].active_flows, 2, "3 idle closed, 2 busy left");
    let said: Vec<String> = owner
        .snapshot(T0)
        .events
        .iter()
        .filter(|e| e.kind == EventKind::IdleClosed)
        .map(|e| e.message.clone())
        .collect();
    assert_eq!(said, ["3 idle connection(s) closed cleanly (quiet for 2s)"]);
    assert!(state(&owner, "a").is_draining());
    // The busy two go idle: closed, and the drain is over.
    owner.dp_mut().idle.insert(0, 2);
    owner.sweep(T0 + 400);
    assert_eq!(state(&owner, "a"), AdminState::Disabled { since_ms: T0 + 400, reason: DisableReason::Drained });

    // At the deadline: the idle one is closed, the busy one reset.
    owner.enable("web", &names(&["a"]), false, T0 + 500).unwrap();
    owner.dp_mut().live.insert(0, 2);
    owner.dp_mut().live_tcp.insert(0, 1);
    owner.disable("web", &names(&["a"]), DisableMode::Graceful { timeout_ms: Some(1_000) }, false, T0 + 600).unwrap();
    owner.dp_mut().idle.insert(0, 1);
    take_writes(&mut owner);
    owner.enforce_deadlines(T0 + 1_600);
    assert!(take_writes(&mut owner).contains(&Write::Terminate(vec!["a"])));
    let idle_closed = owner.snapshot(T0).events.iter().filter(|e| e.kind == EventKind::IdleClosed).count();
    assert_eq!(idle_closed, 3, "the deadline closed the idle one first");

    // Without idle_close, nothing is closed.
    let mut off = self::owner("idle-close-off");
    off.dp_mut().live.insert(0, 5);
    off.disable("web", &names(&["a"]), DisableMode::Graceful { timeout_ms: None }, false, T0).unwrap();
    off.dp_mut().idle.insert(0, 3);
    off.sweep(T0 + 200);
    assert_eq!(off.snapshot(T0 + 200).pools[0].servers[0].active_flows, 5);
}
