//! Reloads with a fake datapath and a made-up clock: the order of writes,
//! removals by the pool's rule, the config's `enabled` lines and who wins
//! over whom, the guard, the refusals, dry runs. No root, no kernel.

use super::{
    fake_datapath::{FakeDatapath, T0, Write, names, owner_of, state, take_writes, web_config},
    owner::{ControlError, Owner},
    reload::ReloadOptions,
    state_file,
};
use crate::{
    config::Config,
    model::{EventKind, ServerState, Source, Subject},
    servers::plan::{Previous, Tables},
    servers::{AdminState, DisableMode, DisableReason},
};

const APPLY: ReloadOptions = ReloadOptions { force: false, dry_run: false, fleet: false };
const ABC: [(&str, &str); 3] = [("a", ""), ("b", ""), ("c", "")];

fn web(test: &str, rule: &str, servers: &[(&str, &str)]) -> Config {
    web_config(test, rule, servers, &[80])
}

fn kinds(owner: &Owner<FakeDatapath>) -> Vec<(String, EventKind)> {
    let name = |subject: &Subject| match subject {
        Subject::Server { server, .. } => server.clone(),
        Subject::Service { service, .. } => service.clone(),
        Subject::Pool { .. } | Subject::Agent => String::new(),
    };
    owner.snapshot(T0).events.iter().map(|e| (name(&e.subject), e.kind)).collect()
}

fn source(owner: &Owner<FakeDatapath>, server: &str) -> Source {
    owner.servers().find("web", server).unwrap().source
}

#[test]
fn a_server_added_is_written_before_the_hash_table_points_at_it() {
    let mut owner = owner_of(web("add", "", &ABC));
    let report = owner.reload(web("add", "", &[("a", ""), ("b", ""), ("c", ""), ("d", "")]), APPLY, T0).unwrap();
    assert_eq!(report.changes, ["web/d added (10.0.0.4:80, weight 1)"]);
    assert_eq!(
        take_writes(&mut owner),
        [
            Write::NewServer("d", ServerState::Enabled),
            Write::Layout(vec!["10.100.0.1:80/tcp".into()]),
            Write::Maglev(vec!["a", "b", "c", "d"]),
        ]
    );
    assert!(kinds(&owner).contains(&("d".into(), EventKind::Added)));
    let saved = state_file::load(&owner.config().state_file).unwrap();
    assert!(saved.servers.contains_key(&("web".into(), "d".into())), "saved");
    // The same config again changes nothing.
    let again = owner.reload(web("add", "", &[("a", ""), ("b", ""), ("c", ""), ("d", "")]), APPLY, T0).unwrap();
    assert!(again.changes.is_empty() && take_writes(&mut owner).is_empty());
}

#[test]
fn a_server_a_fleet_reload_adds_takes_new_flows_once_every_node_has_it() {
    // Another node may not have reloaded yet: the router may send the new
    // server's replies through it, and it could not rewrite them.
    let mut owner = owner_of(web("fleet-add", "", &ABC));
    let fleet = ReloadOptions { fleet: true, ..APPLY };
    let abcd = [("a", ""), ("b", ""), ("c", ""), ("d", "")];
    owner.reload(web("fleet-add", "", &abcd), fleet, T0).unwrap();
    assert_eq!(
        take_writes(&mut owner),
        [Write::NewServer("d", ServerState::Enabled), Write::Layout(vec!["10.100.0.1:80/tcp".into()])],
        "known to the datapath (its replies rewritten here); the rows unchanged"
    );
    let d = || owner_view(&owner, "d");
    assert!(d().awaiting_fleet && !d().takes_new_flows);
    // A reload meanwhile keeps it waiting.
    owner.reload(web("fleet-add", "", &abcd), fleet, T0 + 1).unwrap();
    assert!(owner.servers().find("web", "d").unwrap().awaiting_fleet);
    owner.fleet_reloaded(T0 + 2);
    assert_eq!(take_writes(&mut owner), [Write::Maglev(vec!["a", "b", "c", "d"])]);
    let d = owner_view(&owner, "d");
    assert!(!d.awaiting_fleet && d.takes_new_flows);
    // Alone (SIGHUP, or `lb reload` without a cluster): in the rows at once.
    let mut alone = owner_of(web("fleet-add-alone", "", &ABC));
    alone.reload(web("fleet-add-alone", "", &abcd), APPLY, T0).unwrap();
    assert_eq!(take_writes(&mut alone).last(), Some(&Write::Maglev(vec!["a", "b", "c", "d"])));
}

fn owner_view(owner: &Owner<FakeDatapath>, server: &str) -> crate::agent::snapshot::ServerSnapshot {
    let snapshot = owner.snapshot(T0);
    let pool = snapshot.pools.iter().find(|p| p.name == "web").expect("pool web");
    pool.servers.iter().find(|s| s.name == server).expect("the server").clone()
}

#[test]
fn a_weight_change_rewrites_the_row_and_nothing_else() {
    let mut owner = owner_of(web("weight", "", &ABC));
    let report = owner.reload(web("weight", "", &[("a", "weight = 3"), ("b", ""), ("c", "")]), APPLY, T0).unwrap();
    assert_eq!(report.changes, ["web/a weight 1 -> 3"]);
    assert_eq!(
        take_writes(&mut owner),
        [Write::Layout(vec!["10.100.0.1:80/tcp".into()]), Write::Maglev(vec!["a", "b", "c"])]
    );
    assert_eq!(owner.servers().find("web", "a").unwrap().weight, 3);
}

#[test]
fn a_removed_server_drains_until_its_deadline_then_is_forgotten() {
    let rule = "graceful_disable_timeout = \"3s\"";
    let mut owner = owner_of(web("remove-3s", rule, &ABC));
    let report = owner.reload(web("remove-3s", rule, &ABC[..2]), APPLY, T0).unwrap();
    assert_eq!(report.changes, ["web/c removed: taken out within 3s, then gone"]);
    let writes = take_writes(&mut owner);
    let rows_without_c = writes.iter().position(|w| *w == Write::Maglev(vec!["a", "b"])).expect("rows rewritten");
    let draining = writes.iter().position(|w| *w == Write::Server("c", ServerState::Draining)).expect("drains");
    assert!(rows_without_c < draining, "no new flow lost: {writes:?}");
    let c = owner.servers().find("web", "c").unwrap();
    assert!(c.removing && c.admin == AdminState::Draining { since_ms: T0, deadline_ms: Some(T0 + 3000) });
    assert_eq!(c.source, Source::Config);
    assert_eq!(owner.next_deadline(), Some(T0 + 3000));

    owner.enforce_deadlines(T0 + 3000);
    let writes = take_writes(&mut owner);
    assert_eq!(writes[0], Write::Server("c", ServerState::Disabled));
    assert!(writes.contains(&Write::Terminate(vec!["c"])) && writes.contains(&Write::Forget("c")), "{writes:?}");
    assert!(owner.servers().find("web", "c").is_none(), "gone");
    let c_events: Vec<EventKind> = kinds(&owner).into_iter().filter(|(s, _)| s == "c").map(|(_, k)| k).collect();
    assert_eq!(c_events, [EventKind::Draining, EventKind::Deadline, EventKind::Removed]);
    let saved = state_file::load(&owner.config().state_file).unwrap();
    assert!(!saved.servers.contains_key(&("web".into(), "c".into())), "forgotten in the state file too");
}

#[test]
fn a_removed_server_with_no_deadline_stays_removing_until_its_last_flow_ends() {
    let mut owner = owner_of(web("remove-inf", "", &ABC));
    owner.reload(web("remove-inf", "", &ABC[..2]), APPLY, T0).unwrap();
    let c = owner.servers().find("web", "c").unwrap().id;
    owner.dp_mut().live.insert(c, 1);
    owner.sweep(T0 + 1000);
    assert!(owner.servers().find("web", "c").is_some_and(|s| s.removing), "kept while a flow lives");
    owner.dp_mut().live.clear();
    owner.sweep(T0 + 2000);
    assert!(owner.servers().find("web", "c").is_none(), "gone once drained");
    assert!(take_writes(&mut owner).contains(&Write::Forget("c")));
}

#[test]
fn a_removed_server_with_rule_zero_is_terminated_and_forgotten_at_once() {
    let rule = "graceful_disable_timeout = \"0\"";
    let mut owner = owner_of(web("remove-0", rule, &ABC));
    owner.reload(web("remove-0", rule, &ABC[..2]), APPLY, T0).unwrap();
    let writes = take_writes(&mut owner);
    let cut = writes.iter().position(|w| *w == Write::Server("c", ServerState::Disabled)).unwrap();
    let terminate = writes.iter().position(|w| *w == Write::Terminate(vec!["c"])).unwrap();
    let forget = writes.iter().position(|w| *w == Write::Forget("c")).unwrap();
    assert!(cut < terminate && terminate < forget, "{writes:?}");
    assert!(owner.servers().find("web", "c").is_none());
}

#[test]
fn the_configs_enabled_line_takes_servers_out_by_the_pools_rule() {
    let rule = "graceful_disable_timeout = \"5m\"";
    let mut owner = owner_of(web("line", rule, &ABC));
    let report = owner.reload(web("line", rule, &[("a", ""), ("b", "enabled = false"), ("c", "")]), APPLY, T0).unwrap();
    assert_eq!(report.changes, ["web/b enabled = false: out within 5m"]);
    assert_eq!(state(&owner, "b"), AdminState::Draining { since_ms: T0, deadline_ms: Some(T0 + 300_000) });
    assert_eq!(source(&owner, "b"), Source::Config);
    // Removing the line (enabled by default) puts it back.
    owner.reload(web("line", rule, &ABC), APPLY, T0 + 1).unwrap();
    assert_eq!((state(&owner, "b"), source(&owner, "b")), (AdminState::Enabled, Source::Config));
    // Rule "0": at once.
    let now = "graceful_disable_timeout = \"0\"";
    owner.reload(web("line", now, &[("a", ""), ("b", "enabled = false"), ("c", "")]), APPLY, T0 + 2).unwrap();
    assert_eq!(state(&owner, "b"), AdminState::Disabled { since_ms: T0 + 2, reason: DisableReason::Immediate });
}

#[test]
fn the_latest_decision_wins_an_operators_command_or_a_changed_line() {
    let test = "precedence";
    let b_off = [("a", ""), ("b", "enabled = false"), ("c", "")];
    let mut owner = owner_of(web(test, "", &ABC));
    owner.reload(web(test, "", &b_off), APPLY, T0).unwrap();
    assert_eq!(state(&owner, "b").state(), ServerState::Draining);
    // The operator puts b back: a reload with the same line leaves it so.
    owner.enable("web", &names(&["b"]), false, T0 + 1).unwrap();
    let report = owner.reload(web(test, "", &b_off), APPLY, T0 + 2).unwrap();
    assert!(report.changes.is_empty(), "{:?}", report.changes);
    assert_eq!((state(&owner, "b"), source(&owner, "b")), (AdminState::Enabled, Source::Operator));
    // The line changes (true, then false again): the config wins again.
    owner.reload(web(test, "", &ABC), APPLY, T0 + 3).unwrap();
    owner.reload(web(test, "", &b_off), APPLY, T0 + 4).unwrap();
    assert_eq!((state(&owner, "b").state(), source(&owner, "b")), (ServerState::Draining, Source::Config));

    // The other way: the operator disables a; its line (enabled) did not change.
    owner.disable("web", &names(&["a"]), DisableMode::Immediate, false, T0 + 5).unwrap();
    owner.reload(web(test, "", &b_off), APPLY, T0 + 6).unwrap();
    assert_eq!((state(&owner, "a").state(), source(&owner, "a")), (ServerState::Disabled, Source::Operator));
}

#[test]
fn a_reload_is_held_to_the_pools_new_minimum_in_service() {
    let test = "minimum-reload";
    let mut owner = owner_of(web(test, "", &ABC));
    let a_off = [("a", "enabled = false"), ("b", ""), ("c", "")];
    let two_off = [("a", "enabled = false"), ("b", "enabled = false"), ("c", "")];
    // A new minimum of 2: a left out passes, b too is refused.
    owner.reload(web(test, "min_in_service = 2", &a_off), APPLY, T0).expect("2 left");
    let refused = owner.reload(web(test, "min_in_service = 2", &two_off), APPLY, T0 + 1).unwrap_err();
    assert!(matches!(refused, ControlError::LastServer { left: 1, min: 2, .. }), "{refused}");
    assert_eq!(state(&owner, "b"), AdminState::Enabled);
    // Raising it above what is in service takes nothing away: applied, and
    // held from then on.
    let report = owner.reload(web(test, "min_in_service = 3", &a_off), APPLY, T0 + 2).expect("nothing taken away");
    assert_eq!(report.changes, ["pool web: min_in_service changed"]);
    let refused = owner.disable("web", &names(&["c"]), DisableMode::Immediate, false, T0 + 3).unwrap_err();
    assert!(matches!(refused, ControlError::LastServer { left: 1, min: 3, .. }), "{refused}");
}

#[test]
fn the_guard_refuses_a_reload_that_leaves_a_pool_without_a_server_unless_forced() {
    let all_off = [("a", "enabled = false"), ("b", "enabled = false"), ("c", "enabled = false")];
    let mut owner = owner_of(web("guard-reload", "", &ABC));
    let refused = owner.reload(web("guard-reload", "", &all_off), APPLY, T0).unwrap_err();
    assert!(matches!(refused, ControlError::LastServer { .. }), "{refused}");
    assert!(take_writes(&mut owner).is_empty(), "nothing written");
    assert!(["a", "b", "c"].iter().all(|s| state(&owner, s) == AdminState::Enabled));
    let refused = owner.reload(web("guard-reload", "", &ABC[..0]), APPLY, T0).unwrap_err();
    assert!(matches!(refused, ControlError::LastServer { .. }), "removing them all is refused too");

    let forced = ReloadOptions { force: true, ..APPLY };
    owner.reload(web("guard-reload", "", &all_off), forced, T0).unwrap();
    assert!(["a", "b", "c"].iter().all(|s| state(&owner, s).state() == ServerState::Draining));
}

#[test]
fn a_reload_that_needs_a_restart_or_only_asks_changes_nothing() {
    let mut owner = owner_of(web("restart", "", &ABC));
    let mut bigger = web("restart", "", &ABC[..2]);
    bigger.flows.max_flows *= 2;
    bigger.max_servers = 10;
    let refused = owner.reload(bigger, APPLY, T0).unwrap_err();
    assert!(matches!(refused, ControlError::RestartNeeded { .. }), "{refused}");
    let text = refused.to_string();
    assert!(text.contains("flows.max") && text.contains("limits.max_servers"), "{text}");

    let dry = ReloadOptions { dry_run: true, ..APPLY };
    let report = owner.reload(web("restart", "", &[("a", ""), ("b", ""), ("d", "")]), dry, T0).unwrap();
    assert!(!report.applied);
    assert_eq!(
        report.changes,
        ["web/c removed: taken out when their last flow ends, then gone", "web/d added (10.0.0.4:80, weight 1)"]
    );
    assert!(take_writes(&mut owner).is_empty(), "nothing written");
    assert!(owner.servers().find("web", "d").is_none() && !owner.servers().find("web", "c").unwrap().removing);
    assert!(owner.snapshot(T0).events.is_empty());
}

#[test]
fn a_removed_service_takes_no_new_flow_and_its_flows_end_at_its_deadline() {
    let rule = "graceful_disable_timeout = \"3s\"";
    let mut owner = owner_of(web_config("service", rule, &ABC, &[80, 81]));
    let report = owner.reload(web_config("service", rule, &ABC, &[80]), APPLY, T0).unwrap();
    assert_eq!(report.changes, ["service 10.100.0.1:81/tcp removed: no new flows; its flows end within 3s"]);
    let leaving = vec!["10.100.0.1:80/tcp".to_owned(), "10.100.0.1:81/tcp (leaving)".to_owned()];
    assert_eq!(take_writes(&mut owner), [Write::Layout(leaving)]);
    assert_eq!(owner.snapshot(T0).pools[0].leaving_services[0].deadline_ms, Some(T0 + 3000));
    owner.enforce_deadlines(T0 + 3000);
    // Its servers' endpoints served both services: no longer shared, they
    // are written after the return paths that now name the one VIP left.
    let unshared = ["a", "b", "c"].map(|s| Write::Server(s, ServerState::Enabled));
    let mut expected =
        vec![Write::TerminateService("10.100.0.1:81 of web".into()), Write::Layout(vec!["10.100.0.1:80/tcp".into()])];
    expected.extend(unshared);
    assert_eq!(take_writes(&mut owner), expected);
    assert!(owner.snapshot(T0).pools[0].leaving_services.is_empty());
    assert!(kinds(&owner).contains(&("10.100.0.1:81/tcp".into(), EventKind::Removed)));
}

#[test]
fn a_restarted_agent_goes_on_with_a_removal() {
    let rule = "graceful_disable_timeout = \"3s\"";
    let mut owner = owner_of(web("restart-removal", rule, &ABC));
    owner.reload(web("restart-removal", rule, &ABC[..2]), APPLY, T0).unwrap();
    let saved = state_file::load(&owner.config().state_file).unwrap();
    let previous = Previous::of(owner.servers(), owner.services(), saved);
    let tables = Tables::plan(&web("restart-removal", rule, &ABC[..2]), &previous, T0 + 1000).unwrap();
    let c = tables.servers.find("web", "c").expect("still there after a restart");
    assert!(c.removing && c.admin.deadline_ms() == Some(T0 + 3000), "{c:?}");
    assert!(!c.takes_new_flows());
}

/// What the monitors found outlives a reload: a DOWN server stays DOWN
/// (out of the rows), a queued maintenance stays queued.
#[test]
fn a_reload_keeps_what_the_monitors_found() {
    let mut owner = owner_of(web("keeps-health", "", &ABC));
    let a = owner.servers().find("web", "a").unwrap().identity;
    let down = crate::health::tally::Change::Down { reason: crate::servers::health::DownReason::Refused };
    owner.apply_health("web", "a", a, down, T0);
    take_writes(&mut owner);
    owner.reload(web("keeps-health", "", &[("a", ""), ("b", ""), ("c", "weight = 2")]), APPLY, T0 + 1).unwrap();
    assert!(owner.servers().find("web", "a").unwrap().health.down.is_some(), "still DOWN after a reload");
    let rows: Vec<Write> = take_writes(&mut owner).into_iter().filter(|w| matches!(w, Write::Maglev(_))).collect();
    assert_eq!(rows, [Write::Maglev(vec!["b", "c"])], "a stays out of the rows");
}
