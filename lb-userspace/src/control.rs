//! The agent's runtime: it owns the datapath and the tables, executes the
//! operators' changes (disable, enable) as one change each, keeps the events
//! and the flow counts, and answers the API's questions.
//!
//! Order of writes in a change: a server coming back is marked ENABLED
//! before the Maglev rows point at it; a draining server leaves the Maglev
//! rows before it is marked DRAINING (no new flow is lost); a terminated
//! server is marked DISABLED first (its traffic stops with that one write),
//! then leaves the Maglev rows; its flows are reset and purged last.

use std::{
    collections::{BTreeSet, HashMap, HashSet, VecDeque},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::{
    config::Config,
    datapath::Datapath,
    duration::format_time_left,
    server_state::{self, AdminState, DisableMode, DisableReason, Transition, now_ms},
    state_file, stats,
    tables::{AdminStates, Tables, TablesError},
    tcp_reset::ResetSender,
    terminate,
};

const MAX_EVENTS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown pool \"{pool}\"")]
    UnknownPool { pool: String },
    #[error("unknown server \"{server}\" in pool \"{pool}\"")]
    UnknownServer { pool: String, server: String },
    #[error("name at least one server")]
    NoServers,
    #[error(
        "refused: pool \"{pool}\" would be left with no enabled server (disabling {servers}); \
         add --force to do it anyway"
    )]
    LastServer { pool: String, servers: String },
    #[error("cannot update the datapath")]
    Tables(#[from] TablesError),
    #[error("cannot terminate flows")]
    Terminate(#[source] std::io::Error),
    #[error("cannot save the state")]
    StateFile(#[from] state_file::StateFileError),
}

/// Something that happened to a server, for the log and the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub time_ms: u64,
    pub pool: String,
    pub server: String,
    /// draining, disabled, enabled, deadline, drained
    pub kind: String,
    pub message: String,
}

/// What a command did to one server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub pool: String,
    pub server: String,
    pub from: String,
    pub to: String,
    /// Live TCP flows reset (when the server was terminated).
    pub flows_reset: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSummary {
    pub pool: String,
    pub services: Vec<String>,
    pub servers: usize,
    pub enabled: usize,
    pub draining: usize,
    pub disabled: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    pub name: String,
    pub address: String,
    pub weight: u32,
    /// ENABLED, DRAINING, DISABLED
    pub state: String,
    /// "until drained", "deadline", "immediate", "drained", or none.
    pub why: Option<String>,
    /// Live flows: TCP not yet closed by both sides or reset, UDP not idle out.
    pub active_flows: u64,
    pub deadline_left_ms: Option<u64>,
    pub packets_to: u64,
    pub bytes_to: u64,
    pub packets_from: u64,
    pub bytes_from: u64,
    pub new_flows: u64,
}

/// Every packet the datapath saw, by outcome: what it forwarded, passed,
/// dropped, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub outcomes: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolView {
    pub pool: String,
    pub services: Vec<String>,
    pub servers: Vec<ServerView>,
    /// How old the flow counts are.
    pub counted_ms_ago: u64,
}

/// Live flows per server, from the last walk of the flow table.
#[derive(Default)]
pub struct FlowCounts {
    /// When the walk started.
    pub taken: Option<Instant>,
    pub took: Duration,
    pub active: HashMap<u32, u64>,
}

pub struct Control {
    pub config: Config,
    pub dp: Datapath,
    pub tables: Tables,
    pub(crate) resets: ResetSender,
    pub(crate) counts: FlowCounts,
    pub(crate) last_progress_log: Instant,
    events: VecDeque<Event>,
    next_event: u64,
}

impl Control {
    pub fn new(config: Config, dp: Datapath, tables: Tables, resets: ResetSender) -> Control {
        Control {
            config,
            dp,
            tables,
            resets,
            counts: FlowCounts::default(),
            last_progress_log: Instant::now(),
            events: VecDeque::new(),
            next_event: 1,
        }
    }

    /// Disables `servers` of `pool` in one change.
    pub fn disable(
        &mut self,
        pool: &str,
        servers: &[String],
        mode: DisableMode,
        force: bool,
    ) -> Result<Vec<Change>, ControlError> {
        let now = now_ms();
        let plan = self.plan(pool, servers, |state| server_state::disable(state, mode, now))?;
        let before: Vec<(AdminState, u32)> = self.members(pool).map(|s| (s.admin, s.weight)).collect();
        let after: Vec<(AdminState, u32)> = self
            .members(pool)
            .map(|s| {
                let t = plan.iter().find(|(name, _)| *name == s.name).map(|(_, t)| *t).unwrap_or(Transition::Unchanged);
                (server_state::apply(&s.admin, t, now), s.weight)
            })
            .collect();
        if !force && server_state::leaves_pool_without_server(&before, &after) {
            let names: Vec<&str> = plan.iter().map(|(n, _)| n.as_str()).collect();
            return Err(ControlError::LastServer { pool: pool.to_owned(), servers: names.join(", ") });
        }
        self.execute(pool, &plan, now)
    }

    /// Puts `servers` of `pool` back in service, in one change.
    pub fn enable(&mut self, pool: &str, servers: &[String]) -> Result<Vec<Change>, ControlError> {
        let plan = self.plan(pool, servers, server_state::enable)?;
        self.execute(pool, &plan, now_ms())
    }

    fn members<'a>(&'a self, pool: &'a str) -> impl Iterator<Item = &'a crate::tables::ServerSlot> {
        self.tables.servers.values().filter(move |s| s.pool == pool)
    }

    /// Checks every name before anything changes.
    fn plan(
        &self,
        pool: &str,
        servers: &[String],
        transition: impl Fn(&AdminState) -> Transition,
    ) -> Result<Vec<(String, Transition)>, ControlError> {
        if !self.config.pools.contains_key(pool) {
            return Err(ControlError::UnknownPool { pool: pool.to_owned() });
        }
        if servers.is_empty() {
            return Err(ControlError::NoServers);
        }
        let names: BTreeSet<&String> = servers.iter().collect();
        names
            .into_iter()
            .map(|name| {
                let slot = self
                    .tables
                    .server(pool, name)
                    .ok_or_else(|| ControlError::UnknownServer { pool: pool.to_owned(), server: name.clone() })?;
                Ok((name.clone(), transition(&slot.admin)))
            })
            .collect()
    }

    /// Carries out a plan on `pool` (see the module's note on order).
    pub(crate) fn execute(
        &mut self,
        pool: &str,
        plan: &[(String, Transition)],
        now: u64,
    ) -> Result<Vec<Change>, ControlError> {
        let key = |name: &str| (pool.to_owned(), name.to_owned());
        let mut changes = Vec::new();
        let mut terminated = HashSet::new();
        let mut changed = false;
        for (name, transition) in plan {
            let slot = self.tables.servers.get(&key(name)).expect("planned server exists");
            let from = slot.admin;
            let to = server_state::apply(&from, *transition, now);
            if let Transition::Terminate(_) = transition {
                terminated.insert(slot.id);
            }
            changed |= to != from;
            changes.push(Change {
                pool: pool.to_owned(),
                server: name.clone(),
                from: from.describe(),
                to: to.describe(),
                flows_reset: None,
            });
            let slot = self.tables.servers.get_mut(&key(name)).expect("planned server exists");
            slot.admin = to;
            // Coming back: ENABLED before the hash table points at it.
            // Terminated: DISABLED at once, the one write that stops its
            // traffic, whatever the number of flows (SYNs that hash to it
            // meanwhile are dropped until its slots move, a few ms).
            if matches!(transition, Transition::Enable | Transition::Terminate(_)) {
                let slot = slot.clone();
                self.tables.write_server(&mut self.dp, &slot)?;
            }
        }
        if !changed {
            return Ok(changes);
        }
        let services: Vec<_> = self.tables.services_of(pool).cloned().collect();
        for service in &services {
            self.tables.write_maglev_row(&self.dp, service)?;
        }
        // Draining: only once no slot sends it new flows, so none is dropped.
        for (name, transition) in plan {
            if matches!(transition, Transition::Drain(_)) {
                let slot = self.tables.servers[&key(name)].clone();
                self.tables.write_server(&mut self.dp, &slot)?;
            }
        }
        if !terminated.is_empty() {
            let started = Instant::now();
            let done = terminate::terminate(&mut self.dp, &self.tables, &terminated, &self.resets)
                .map_err(ControlError::Terminate)?;
            log::debug!("purged {} flows in {:?}", done.flows, started.elapsed());
            for change in &mut changes {
                let id = self.tables.servers[&key(&change.server)].id;
                if terminated.contains(&id) {
                    change.flows_reset = Some(done.reset_by_server.get(&id).copied().unwrap_or(0));
                }
            }
            for id in &terminated {
                self.counts.active.remove(id);
            }
        }
        self.save_states()?;
        for change in &changes {
            if change.from != change.to {
                let slot = &self.tables.servers[&key(&change.server)];
                let (kind, message) = event_of(&slot.admin, change);
                self.event(pool, &change.server, kind, message);
            }
        }
        Ok(changes)
    }

    pub fn admin_states(&self) -> AdminStates {
        self.tables.servers.iter().map(|(k, s)| (k.clone(), s.admin)).collect()
    }

    pub fn save_states(&self) -> Result<(), ControlError> {
        state_file::save(&self.config.state_file, &self.admin_states())?;
        Ok(())
    }

    pub(crate) fn event(&mut self, pool: &str, server: &str, kind: &str, message: String) {
        log::info!("{pool}/{server} {kind}: {message}");
        self.events.push_back(Event {
            id: self.next_event,
            time_ms: now_ms(),
            pool: pool.to_owned(),
            server: server.to_owned(),
            kind: kind.to_owned(),
            message,
        });
        self.next_event += 1;
        while self.events.len() > MAX_EVENTS {
            self.events.pop_front();
        }
    }

    pub fn events(&self) -> Vec<Event> {
        self.events.iter().cloned().collect()
    }

    pub fn stats(&self) -> Result<Stats, ControlError> {
        let outcomes = stats::outcomes(&self.dp.maps)
            .map_err(|source| ControlError::Tables(TablesError::Map { action: "read", map: "outcomes", source }))?;
        Ok(Stats { outcomes: outcomes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect() })
    }

    pub fn pool_list(&self) -> Vec<PoolSummary> {
        self.config
            .pools
            .keys()
            .map(|pool| {
                let count = |code: u8| self.members(pool).filter(|s| s.admin.code() == code).count();
                PoolSummary {
                    pool: pool.clone(),
                    services: self.tables.services_of(pool).map(|s| s.label()).collect(),
                    servers: self.members(pool).count(),
                    enabled: count(lb_common::server_state::ENABLED),
                    draining: count(lb_common::server_state::DRAINING),
                    disabled: count(lb_common::server_state::DISABLED),
                }
            })
            .collect()
    }

    /// A pool's servers with their states and live flow counts (counted
    /// afresh when the last count is older than 200 ms).
    pub fn pool_show(&mut self, pool: &str) -> Result<PoolView, ControlError> {
        if !self.config.pools.contains_key(pool) {
            return Err(ControlError::UnknownPool { pool: pool.to_owned() });
        }
        if self.counts.taken.is_none_or(|t| t.elapsed() > Duration::from_millis(200)) {
            self.sweep();
        }
        let now = now_ms();
        let servers = self
            .members(pool)
            .map(|s| {
                let traffic = stats::server(&self.dp.maps, s.id).unwrap_or_default();
                let (why, deadline_left_ms) = match s.admin {
                    AdminState::Enabled => (None, None),
                    AdminState::Draining { deadline_ms: None, .. } => (Some("until drained".to_owned()), None),
                    AdminState::Draining { deadline_ms: Some(d), .. } => {
                        (Some("deadline".to_owned()), Some(server_state::time_left(d, now).as_millis() as u64))
                    }
                    AdminState::Disabled { reason, .. } => (Some(reason.label().to_owned()), None),
                };
                ServerView {
                    name: s.name.clone(),
                    address: format!("{}:{}", s.address, s.port),
                    weight: s.weight,
                    state: s.admin.label().to_owned(),
                    why,
                    active_flows: self.counts.active.get(&s.id).copied().unwrap_or(0),
                    deadline_left_ms,
                    packets_to: traffic.packets_to,
                    bytes_to: traffic.bytes_to,
                    packets_from: traffic.packets_from,
                    bytes_from: traffic.bytes_from,
                    new_flows: traffic.new_flows,
                }
            })
            .collect();
        Ok(PoolView {
            pool: pool.to_owned(),
            services: self.tables.services_of(pool).map(|s| s.label()).collect(),
            servers,
            counted_ms_ago: self.counts.taken.map(|t| t.elapsed().as_millis() as u64).unwrap_or(0),
        })
    }
}

fn event_of(state: &AdminState, change: &Change) -> (&'static str, String) {
    match state {
        AdminState::Enabled => ("enabled", format!("back in service (was {})", change.from)),
        AdminState::Draining { deadline_ms: None, .. } => {
            ("draining", "no new flows; existing flows may finish, no deadline".to_owned())
        }
        AdminState::Draining { deadline_ms: Some(d), .. } => (
            "draining",
            format!(
                "no new flows; flows left in {} will be terminated",
                format_time_left(server_state::time_left(*d, now_ms()))
            ),
        ),
        AdminState::Disabled { reason: DisableReason::Immediate, .. } => {
            ("disabled", format!("disabled at once: {} live TCP flow(s) reset", change.flows_reset.unwrap_or(0)))
        }
        AdminState::Disabled { reason: DisableReason::Deadline, .. } => {
            ("deadline", format!("drain deadline reached: {} live TCP flow(s) reset", change.flows_reset.unwrap_or(0)))
        }
        AdminState::Disabled { reason: DisableReason::Drained, .. } => {
            ("drained", "the last flow ended: disabled (drained)".to_owned())
        }
    }
}
