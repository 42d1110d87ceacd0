//! The owner's logic with a fake datapath and a made-up clock: the order of
//! writes in each change, deadlines, drained detection, the guard. No root,
//! no kernel.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    path::Path,
    time::Duration,
};

use super::owner::{ControlError, Owner};
use crate::{
    api::model::{EventKind, ServerState, Why},
    config::{Config, FlowSettings},
    datapath::{
        ops::{DatapathOps, DatapathResult},
        sweep::SweepReport,
        tables::{Previous, Tables},
        terminate::Termination,
    },
    servers::{AdminState, DisableMode, DisableReason, LeavingId, ServerSlot, ServerTable, ServiceSlot},
};

/// What the fake datapath was asked, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Write {
    /// A server's record, with its state.
    Server(&'static str, ServerState),
    /// A service's Maglev row, with the servers it sends new flows to.
    Maglev(Vec<&'static str>),
    Terminate(Vec<&'static str>),
    /// A server written new to its slot (reload), with its state.
    NewServer(&'static str, ServerState),
    /// Return paths, filter and VIPs, for these services (leaving ones marked).
    Layout(Vec<String>),
    /// A service's entry written: it takes new flows.
    Service(String),
    Forget(&'static str),
    TerminateService(String),
}

#[derive(Default)]
pub(super) struct FakeDatapath {
    pub(super) writes: Vec<Write>,
    /// Live flows per server id, as the next sweep reports them.
    pub(super) live: HashMap<u32, u64>,
    /// Live TCP flows each terminated server had.
    live_tcp: HashMap<u32, usize>,
    /// Live flows per leaving service, as the next sweep reports them.
    pub(super) live_services: HashMap<LeavingId, u64>,
    sweeps: usize,
    state_file: std::path::PathBuf,
    /// Fail Maglev row writes (to test roll-backs).
    fail_maglev: bool,
}

/// The state the datapath would read: the code written.
fn written(server: &ServerSlot) -> ServerState {
    match server.code() {
        lb_common::server_state::ENABLED => ServerState::Enabled,
        lb_common::server_state::DRAINING => ServerState::Draining,
        _ => ServerState::Disabled,
    }
}

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

fn name(id: u32) -> &'static str {
    NAMES.get(id as usize).copied().unwrap_or("another")
}

impl DatapathOps for FakeDatapath {
    fn write_server(&mut self, server: &crate::servers::ServerSlot) -> DatapathResult<()> {
        self.writes.push(Write::Server(name(server.id), written(server)));
        Ok(())
    }

    fn write_maglev_row(&mut self, service: &ServiceSlot, servers: &ServerTable) -> DatapathResult<()> {
        if self.fail_maglev {
            return Err("the map is gone".into());
        }
        let members = servers.pool(&service.pool).filter(|s| s.takes_new_flows()).map(|s| name(s.id)).collect();
        self.writes.push(Write::Maglev(members));
        Ok(())
    }

    fn terminate(&mut self, _: &ServerTable, ids: &HashSet<u32>) -> DatapathResult<Termination> {
        let mut names: Vec<_> = ids.iter().map(|&id| name(id)).collect();
        names.sort();
        self.writes.push(Write::Terminate(names));
        let reset_by_server = ids.iter().map(|&id| (id, self.live_tcp.remove(&id).unwrap_or(0))).collect();
        self.live.retain(|id, _| !ids.contains(id));
        Ok(Termination { reset_by_server, ..Termination::default() })
    }

    fn sweep(&mut self, _: &ServerTable, _: &[ServiceSlot], _: &FlowSettings) -> DatapathResult<SweepReport> {
        self.sweeps += 1;
        Ok(SweepReport {
            active_by_server: self.live.clone(),
            active_by_leaving_service: self.live_services.clone(),
            ..SweepReport::default()
        })
    }

    fn write_new_server(&mut self, server: &ServerSlot) -> DatapathResult<()> {
        self.writes.push(Write::NewServer(name(server.id), written(server)));
        Ok(())
    }

    fn add_return_paths(&mut self, _: &ServerTable, ids: &HashSet<u32>) -> DatapathResult<usize> {
        Ok(ids.len())
    }

    fn write_layout(&mut self, _: &ServerTable, services: &[ServiceSlot]) -> DatapathResult<()> {
        let labels = services
            .iter()
            .map(|s| if s.leaving.is_some() { format!("{} (leaving)", s.label()) } else { s.label() })
            .collect();
        self.writes.push(Write::Layout(labels));
        Ok(())
    }

    fn write_service(&mut self, service: &ServiceSlot) -> DatapathResult<()> {
        self.writes.push(Write::Service(service.label()));
        Ok(())
    }

    fn forget_server(&mut self, server: &ServerSlot) -> DatapathResult<()> {
        self.writes.push(Write::Forget(name(server.id)));
        Ok(())
    }

    fn terminate_service(&mut self, _: &ServerTable, service: &LeavingId) -> DatapathResult<Termination> {
        let (key, pool) = service;
        let label = format!("{}:{} of {pool}", Ipv4Addr::from(key.addr.to_ne_bytes()), u16::from_be(key.port));
        self.writes.push(Write::TerminateService(label));
        self.live_services.remove(service);
        Ok(Termination::default())
    }
}

pub(super) const T0: u64 = 1_700_000_000_000;

/// A test's config: pool "web" with `servers` (name and extra lines such as
/// "weight = 2"; server "a" is at 10.0.0.1, "b" at 10.0.0.2, ...) and the
/// pool's `rule` lines, behind 10.100.0.1 on each of `ports`.
pub(super) fn web_config(test: &str, rule: &str, servers: &[(&str, &str)], ports: &[u16]) -> Config {
    let servers: String = servers
        .iter()
        .map(|(n, extra)| {
            let octet = NAMES.iter().position(|m| m == n).expect("a known name") + 1;
            format!("[[pools.web.servers]]\nname = \"{n}\"\naddress = \"10.0.0.{octet}\"\nport = 80\n{extra}\n")
        })
        .collect();
    let services: String = ports
        .iter()
        .map(|p| format!("[[services]]\nvip = \"10.100.0.1\"\nport = {p}\nprotocol = \"tcp\"\npool = \"web\"\n"))
        .collect();
    let text = format!(
        "interfaces = [\"eth0\"]\nstate_file = \"{}\"\n{services}[pools.web]\n{rule}\n{servers}",
        std::env::temp_dir().join(format!("lb-owner-{test}-{}.json", std::process::id())).display()
    );
    Config::parse(&text, Path::new("test.toml")).expect("test config")
}

/// An owner of `config`, as a first start writes it.
pub(super) fn owner_of(config: Config) -> Owner<FakeDatapath> {
    let tables = Tables::plan(&config, &Previous::default(), T0).expect("plan");
    let mut fake = FakeDatapath::default();
    fake.state_file = config.state_file.clone();
    Owner::new(config, fake, tables.servers, tables.services)
}

/// A pool "web" of a, b, c (ids 0, 1, 2) behind one service.
fn owner(test: &str) -> Owner<FakeDatapath> {
    owner_of(web_config(test, "", &[("a", ""), ("b", ""), ("c", "")], &[80]))
}

/// The fake goes with the owner: it removes the test's state file.
impl Drop for FakeDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.state_file);
    }
}

pub(super) fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub(super) fn state(owner: &Owner<FakeDatapath>, server: &str) -> AdminState {
    owner.servers().find("web", server).unwrap().admin
}

pub(super) fn take_writes(owner: &mut Owner<FakeDatapath>) -> Vec<Write> {
    std::mem::take(&mut owner.dp_mut().writes)
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
