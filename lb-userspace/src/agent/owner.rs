//! The owner of the balancer's state: the only writer of server states and
//! of the datapath's maps. It executes the operators' changes (disable,
//! enable) as one change each, and publishes snapshots for the readers.
//! Time comes in as an argument (`now_ms`, ms since the Unix epoch), so its
//! logic runs in unit tests with a fake datapath and a made-up clock.
//!
//! Order of writes in a change: the new states are written beside the state
//! file first (a change that cannot be saved is not made); a server coming
//! back is marked ENABLED before the Maglev rows point at it; a draining
//! server leaves the Maglev rows before it is marked DRAINING (no new flow
//! is lost); a terminated server is marked DISABLED first (its traffic stops
//! with that one write), then leaves the Maglev rows (a SYN of that moment
//! takes the next slots' server in the datapath); the states are then made
//! durable, and the flows are reset and purged last. A failed step rolls
//! the change back.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::sync::watch;

use super::{
    events::EventLog,
    snapshot::{LeavingSnapshot, PoolSnapshot, ServerSnapshot, Snapshot},
    state_file,
};
use crate::{
    config::{Config, format_time_left},
    datapath::ops::DatapathOps,
    model::{ApiError, Change, ErrorCode, EventKind, ReloadStatus, Subject},
    servers::{self, AdminState, DisableMode, DisableReason, Saved, ServerTable, ServiceSlot, Source, Transition},
};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("unknown pool \"{pool}\"")]
    UnknownPool { pool: String },
    #[error("unknown server \"{server}\" in pool \"{pool}\"")]
    UnknownServer { pool: String, server: String },
    #[error("name at least one server")]
    NoServers,
    #[error(
        "refused: pool \"{pool}\" would be left with {} (disabling {servers}); force the change to make it anyway",
        left_in_service(*left, *min)
    )]
    LastServer { pool: String, servers: String, left: usize, min: usize },
    #[error("cannot {step}")]
    Datapath {
        step: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("cannot save the state")]
    StateFile(#[from] state_file::StateFileError),
    #[error("cannot save the new states, so nothing was changed")]
    NotSaved(#[source] state_file::StateFileError),
    #[error("{pool}/{server} is being removed from the config: add it back to the config to enable it")]
    Removing { pool: String, server: String },
    #[error("refused, nothing applied: a restart is needed to change {settings}")]
    RestartNeeded { settings: String },
    #[error("{0}")]
    InvalidConfig(String),
    #[error(
        "refused: {pool}/{server} says it is in maintenance (its health monitor's replies); \
         force the change to enable it anyway"
    )]
    InMaintenance { pool: String, server: String },
    #[error(
        "refused, nothing changed: a cluster records a change of at most {max} servers at once (the \
         store's operations per transaction); change these {servers} in smaller groups"
    )]
    TooManyAtOnce { servers: usize, max: usize },
}

impl From<&ControlError> for ApiError {
    fn from(e: &ControlError) -> ApiError {
        let code = match e {
            ControlError::UnknownPool { .. } => ErrorCode::UnknownPool,
            ControlError::UnknownServer { .. } => ErrorCode::UnknownServer,
            ControlError::NoServers => ErrorCode::BadRequest,
            ControlError::TooManyAtOnce { .. } => ErrorCode::BadRequest,
            ControlError::LastServer { .. } => ErrorCode::LastServer,
            ControlError::Removing { .. } => ErrorCode::BadRequest,
            ControlError::InMaintenance { .. } => ErrorCode::InMaintenance,
            ControlError::RestartNeeded { .. } => ErrorCode::RestartNeeded,
            ControlError::InvalidConfig(_) => ErrorCode::InvalidConfig,
            ControlError::Datapath { .. } | ControlError::StateFile(_) | ControlError::NotSaved(_) => ErrorCode::Failed,
        };
        // The error's own line and its causes, for the operator.
        ApiError::new(code, error_chain(e))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

pub(super) fn dp_err(step: &'static str) -> impl FnOnce(Box<dyn std::error::Error + Send + Sync>) -> ControlError {
    move |source| ControlError::Datapath { step, source }
}

/// Live flows per server, from the last walk of the flow table.
#[derive(Debug, Default)]
pub struct FlowCounts {
    /// When the walk started (ms since the Unix epoch).
    pub at_ms: Option<u64>,
    pub took: Duration,
    pub active: HashMap<u32, u64>,
    /// Flows left in the table after the walk (live, closing, idle).
    pub in_table: u64,
    /// Live flows of each leaving service.
    pub leaving: HashMap<servers::LeavingId, u64>,
    /// Servers whose flows are being purged and reset now (a million take
    /// seconds): readers see their counts from before, as flows going.
    pub resetting: HashSet<u32>,
}

/// A planned change of one server.
pub type Plan = Vec<(String, Transition)>;

/// What `mark` did: the changes, the ids of terminated servers, and the
/// names of the servers whose state moved.
type Marked = (Vec<Change>, HashSet<u32>, HashSet<String>);

pub struct Owner<D> {
    pub(super) config: Config,
    /// `config.fleet_hash()`, kept with it (snapshots carry it).
    pub(super) config_hash: String,
    pub(super) dp: D,
    pub(super) servers: ServerTable,
    pub(super) services: Vec<ServiceSlot>,
    pub(super) counts: FlowCounts,
    pub(super) events: EventLog,
    pub(super) last_progress_log_ms: u64,
    pub(super) reloads: ReloadStatus,
    /// Where the health monitors' plan goes (none in unit tests).
    pub(super) checks: Option<watch::Sender<Arc<crate::health::CheckPlan>>>,
    /// Where snapshots go (none in unit tests).
    snapshots: Option<watch::Sender<Arc<Snapshot>>>,
    /// In a cluster: the store's view of the servers' states (none: one
    /// node on its own).
    pub(super) shared: Option<super::shared::Shared>,
    /// A ramp began since the state file was last written
    /// ([`Owner::save_new_ramps`]).
    pub(super) ramps_unsaved: bool,
}

impl<D: DatapathOps> Owner<D> {
    /// An owner of `servers` and `services`, whose rows were written at
    /// start (so no server ramps up: the whole pool starts together).
    pub fn new(config: Config, dp: D, mut servers: ServerTable, services: Vec<ServiceSlot>) -> Owner<D> {
        for slot in servers.iter_mut() {
            slot.in_rows = slot.takes_new_flows();
        }
        Owner {
            config_hash: config.fleet_hash(),
            config,
            dp,
            servers,
            services,
            counts: FlowCounts::default(),
            events: EventLog::default(),
            last_progress_log_ms: 0,
            reloads: ReloadStatus { last_successful: true, ..ReloadStatus::default() },
            checks: None,
            snapshots: None,
            shared: None,
            ramps_unsaved: false,
        }
    }

    /// Publishes snapshots to `snapshots` from now on.
    pub fn publish_to(&mut self, snapshots: watch::Sender<Arc<Snapshot>>) {
        self.snapshots = Some(snapshots);
    }

    /// Publishes the state as it is now.
    pub fn publish(&self, now_ms: u64) {
        if let Some(snapshots) = &self.snapshots {
            snapshots.send_replace(Arc::new(self.snapshot(now_ms)));
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    #[cfg(test)]
    pub(super) fn config_mut_for_tests(&mut self) -> &mut Config {
        &mut self.config
    }

    pub fn servers(&self) -> &ServerTable {
        &self.servers
    }

    pub fn services(&self) -> &[ServiceSlot] {
        &self.services
    }

    pub fn dp(&self) -> &D {
        &self.dp
    }

    pub fn dp_mut(&mut self) -> &mut D {
        &mut self.dp
    }

    pub fn into_datapath(self) -> D {
        self.dp
    }

    /// Disables `names` of `pool` in one change.
    pub fn disable(
        &mut self,
        pool: &str,
        names: &[String],
        mode: DisableMode,
        force: bool,
        now_ms: u64,
    ) -> Result<Vec<Change>, ControlError> {
        let plan = self.plan_disable(pool, names, mode, force, now_ms)?;
        self.execute(pool, &plan, Some(Source::Operator), now_ms)
    }

    /// A disable's plan, checked (names, the guard) before anything changes.
    pub fn plan_disable(
        &self,
        pool: &str,
        names: &[String],
        mode: DisableMode,
        force: bool,
        now_ms: u64,
    ) -> Result<Plan, ControlError> {
        let plan = self.plan(pool, names, |state| servers::state::disable(state, mode, now_ms))?;
        if let Some(left) = self.falls_below_minimum(pool, &plan, now_ms).filter(|_| !force) {
            let names: Vec<&str> = plan.iter().map(|(n, _)| n.as_str()).collect();
            let min = self.min_in_service(pool);
            return Err(ControlError::LastServer { pool: pool.to_owned(), servers: names.join(", "), left, min });
        }
        Ok(plan)
    }

    /// Puts `names` of `pool` back in service, in one change (`force`: even
    /// servers whose monitor says they are in maintenance).
    pub fn enable(
        &mut self,
        pool: &str,
        names: &[String],
        force: bool,
        now_ms: u64,
    ) -> Result<Vec<Change>, ControlError> {
        let plan = self.plan_enable(pool, names, force)?;
        self.execute(pool, &plan, Some(Source::Operator), now_ms)
    }

    /// An enable's plan, checked (names, removals, maintenance).
    pub fn plan_enable(&self, pool: &str, names: &[String], force: bool) -> Result<Plan, ControlError> {
        let plan = self.plan(pool, names, servers::state::enable)?;
        let slots: Vec<&servers::ServerSlot> =
            plan.iter().filter_map(|(name, _)| self.servers.find(pool, name)).collect();
        if let Some(slot) = slots.iter().find(|s| s.removing) {
            return Err(ControlError::Removing { pool: pool.to_owned(), server: slot.name.clone() });
        }
        if let Some(slot) = slots.iter().find(|s| s.health.maintenance && !force) {
            return Err(ControlError::InMaintenance { pool: pool.to_owned(), server: slot.name.clone() });
        }
        Ok(plan)
    }

    /// The pool's `min_in_service` (1 for a pool the config no longer has).
    fn min_in_service(&self, pool: &str) -> usize {
        self.config.pools.get(pool).map_or(1, |p| p.min_in_service)
    }

    /// The guard, applied to the pool as the plan would leave it: the
    /// servers left in service if that is fewer than the pool's minimum.
    fn falls_below_minimum(&self, pool: &str, plan: &Plan, now_ms: u64) -> Option<usize> {
        let before: Vec<(AdminState, u32)> = self.servers.pool(pool).map(|s| (s.admin, s.weight)).collect();
        let after: Vec<(AdminState, u32)> = self
            .servers
            .pool(pool)
            .map(|s| {
                let t = plan.iter().find(|(name, _)| *name == s.name).map_or(Transition::Unchanged, |(_, t)| *t);
                (servers::state::apply(&s.admin, t, now_ms), s.weight)
            })
            .collect();
        servers::state::falls_below_minimum(&before, &after, self.min_in_service(pool))
    }

    /// Checks every name before anything changes.
    fn plan(
        &self,
        pool: &str,
        names: &[String],
        transition: impl Fn(&AdminState) -> Transition,
    ) -> Result<Plan, ControlError> {
        if !self.config.pools.contains_key(pool) && self.servers.pool(pool).next().is_none() {
            return Err(ControlError::UnknownPool { pool: pool.to_owned() });
        }
        if names.is_empty() {
            return Err(ControlError::NoServers);
        }
        let names: BTreeSet<&String> = names.iter().collect();
        names
            .into_iter()
            .map(|name| {
                let slot = self
                    .servers
                    .find(pool, name)
                    .ok_or_else(|| ControlError::UnknownServer { pool: pool.to_owned(), server: name.clone() })?;
                Ok((name.clone(), transition(&slot.admin)))
            })
            .collect()
    }

    fn id_of(&self, pool: &str, name: &str) -> u32 {
        self.servers.find(pool, name).expect("planned server exists").id
    }

    /// Carries out a plan on `pool` (see the module's note on order), set
    /// by `source` (none: the end of a drain, which keeps who began it).
    /// The new states are saved first: a change that cannot be saved is not
    /// made, and one whose datapath writes fail is rolled back.
    pub(super) fn execute(
        &mut self,
        pool: &str,
        plan: &Plan,
        source: Option<Source>,
        now_ms: u64,
    ) -> Result<Vec<Change>, ControlError> {
        let before: Vec<(u32, AdminState, Source)> = plan
            .iter()
            .map(|(name, _)| {
                let slot = self.servers.find(pool, name).expect("planned server exists");
                (slot.id, slot.admin, slot.source)
            })
            .collect();
        let mut after = self.saved();
        for (name, transition) in plan {
            let record = after.servers.get_mut(&(pool.to_owned(), name.clone())).expect("planned server is saved");
            let planned = servers::state::apply(&record.admin, *transition, now_ms);
            record.source = decided_by(source, planned != record.admin, record.source);
            record.admin = planned;
        }
        // Written beside the state file now (a full or read-only file system
        // fails here, before the datapath is touched), made durable after the
        // datapath's writes: its fsyncs take milliseconds, and an immediate
        // disable stops its server's traffic in microseconds.
        let pending = if after != self.saved() {
            Some(state_file::prepare(&self.config.state_file, &after).map_err(ControlError::NotSaved)?)
        } else {
            None
        };
        let written = self.write_change(pool, plan, source, now_ms);
        let saved = match (&written, pending) {
            (Ok(_), Some(pending)) => pending.commit().map_err(ControlError::NotSaved),
            _ => Ok(()),
        };
        let (mut changes, terminated, moved) = match (written, saved) {
            (Ok(written), Ok(())) => written,
            (Err(e), _) | (Ok(_), Err(e)) => {
                self.roll_back(pool, &before, now_ms);
                return Err(e);
            }
        };
        if moved.is_empty() {
            return Ok(changes);
        }
        // Readers see the new states before the slow part: a purge and the
        // resets of a million flows take seconds.
        self.counts.resetting.clone_from(&terminated);
        self.publish(now_ms);
        // The change is made; what follows cleans up after it (a flow the
        // purge missed is swept: its server is DISABLED).
        let cleaned = self.terminate(&terminated, &mut changes);
        self.record(changes.iter().filter(|c| moved.contains(&c.server)), now_ms);
        cleaned.map(|()| changes)
    }

    /// The datapath's part of a change: states, then Maglev rows, then the
    /// states of servers starting to drain.
    fn write_change(
        &mut self,
        pool: &str,
        plan: &Plan,
        source: Option<Source>,
        now_ms: u64,
    ) -> Result<Marked, ControlError> {
        let (changes, terminated, moved) = self.mark(pool, plan, source, now_ms)?;
        if moved.is_empty() {
            return Ok((changes, terminated, moved));
        }
        let cut = plan.iter().any(|(_, t)| matches!(t, Transition::Terminate(r) if *r != DisableReason::Drained));
        if cut {
            // DISABLED is written: from now on the datapath answers the
            // servers' live flows with resets, so readers must see it too
            // (the Maglev rows below take milliseconds; the events, with
            // the number of flows reset, follow the purge).
            self.publish(now_ms);
        }
        self.write_rows(pool, now_ms)?;
        // Draining: only once no slot sends it new flows, so none is dropped.
        for (name, transition) in plan {
            if matches!(transition, Transition::Drain(_)) {
                let slot = self.servers.get(self.id_of(pool, name)).expect("planned server exists");
                self.dp.write_server(slot).map_err(dp_err("write a server's state"))?;
            }
        }
        Ok((changes, terminated, moved))
    }

    /// Puts back the states a failed change had (in memory, in the datapath,
    /// in the state file), as far as it can; says what it could not.
    fn roll_back(&mut self, pool: &str, before: &[(u32, AdminState, Source)], now_ms: u64) {
        for (id, admin, source) in before {
            let slot = self.servers.get_mut(*id).expect("planned server exists");
            slot.admin = *admin;
            slot.source = *source;
            if let Err(e) = self.dp.write_server(slot) {
                log::error!("rolling back {pool}/{}: cannot write its state back: {e}", slot.name);
            }
        }
        // Enabled servers again first, then the rows that point at them.
        if let Err(e) = self.write_rows(pool, now_ms) {
            log::error!("rolling back pool {pool}: {e}");
        }
        if let Err(e) = self.save_states() {
            log::error!("rolling back pool {pool}: {e}");
        }
        self.publish(now_ms);
    }

    /// Sets each planned server's new state; writes it at once for those
    /// coming back (ENABLED before the hash table points at them) and those
    /// terminated (DISABLED: the one write that stops their traffic, whatever
    /// the number of flows). Returns the changes, the terminated ids, and
    /// the servers whose state moved (a new deadline moves it, though its
    /// label stays "DRAINING (deadline)").
    fn mark(&mut self, pool: &str, plan: &Plan, source: Option<Source>, now_ms: u64) -> Result<Marked, ControlError> {
        let mut changes = Vec::new();
        let mut terminated = HashSet::new();
        let mut moved = HashSet::new();
        for (name, transition) in plan {
            let id = self.id_of(pool, name);
            let slot = self.servers.get_mut(id).expect("planned server exists");
            let (from, from_label) = (slot.admin, slot.label());
            slot.admin = servers::state::apply(&from, *transition, now_ms);
            slot.source = decided_by(source, slot.admin != from, slot.source);
            if slot.admin != from {
                moved.insert(name.clone());
            }
            // As people read them: a drain a monitor began reads "maintenance".
            changes.push(Change {
                pool: pool.to_owned(),
                server: name.clone(),
                from: from_label,
                to: slot.label(),
                flows_reset: None,
            });
            if let Transition::Terminate(_) = transition {
                terminated.insert(id);
            }
            if matches!(transition, Transition::Enable | Transition::Terminate(_)) {
                self.dp.write_server(slot).map_err(dp_err("write a server's state"))?;
            }
        }
        Ok((changes, terminated, moved))
    }

    /// Purges the terminated servers' flows and resets their live TCP flows.
    fn terminate(&mut self, ids: &HashSet<u32>, changes: &mut [Change]) -> Result<(), ControlError> {
        if ids.is_empty() {
            return Ok(());
        }
        let done = self.dp.terminate(&self.servers, ids);
        self.counts.resetting.clear();
        let done = done.map_err(dp_err("terminate flows"))?;
        log::debug!("purged {} flows in {:?}", done.flows, done.purge_time);
        for change in changes.iter_mut() {
            let id = self.id_of(&change.pool, &change.server);
            if ids.contains(&id) {
                change.flows_reset = Some(done.reset_by_server.get(&id).copied().unwrap_or(0));
                self.counts.active.remove(&id);
            }
        }
        Ok(())
    }

    /// The events of the servers a change moved.
    fn record<'a>(&mut self, changes: impl Iterator<Item = &'a Change>, now_ms: u64) {
        for change in changes {
            let admin = self.servers.find(&change.pool, &change.server).expect("changed server exists").admin;
            let (kind, message) = event_of(&admin, change, now_ms);
            self.events.push(now_ms, Subject::server(&change.pool, &change.server), kind, message);
        }
    }

    /// What the state file keeps: every server's record, and the services
    /// on their way out.
    pub fn saved(&self) -> Saved {
        Saved {
            servers: self.servers.iter().map(|s| ((s.pool.clone(), s.name.clone()), s.record())).collect(),
            leaving_services: self.services.iter().filter_map(ServiceSlot::saved).collect(),
        }
    }

    pub fn save_states(&self) -> Result<(), ControlError> {
        state_file::save(&self.config.state_file, &self.saved())?;
        Ok(())
    }

    /// What readers see: pools, servers, live flow counts, events.
    pub fn snapshot(&self, now_ms: u64) -> Snapshot {
        // The config's pools, and those of servers and services on their way out.
        let names: BTreeSet<&str> = self
            .config
            .pools
            .keys()
            .map(String::as_str)
            .chain(self.servers.iter().map(|s| s.pool.as_str()))
            .chain(self.services.iter().map(|s| s.pool.as_str()))
            .collect();
        let pools = names.into_iter().map(|pool| self.pool_snapshot(pool)).collect();
        Snapshot {
            taken_ms: now_ms,
            instance: self.config.instance.clone(),
            max_flows: self.config.flows.max_flows,
            flows_in_table: self.counts.at_ms.map(|_| self.counts.in_table),
            pools,
            counted_at_ms: self.counts.at_ms,
            events: self.events.shared(),
            reloads: self.reloads,
            config_hash: self.config_hash.clone(),
            shared_revision: self.shared_revision(),
            vips: self.vips(),
        }
    }

    /// The config's VIPs, each with whether one of its services has a
    /// server taking new flows.
    fn vips(&self) -> std::collections::BTreeMap<std::net::IpAddr, bool> {
        let mut vips = std::collections::BTreeMap::new();
        for service in &self.config.services {
            let serving = self.servers.pool(&service.pool).any(|s| s.takes_new_flows());
            *vips.entry(service.vip).or_insert(false) |= serving;
        }
        vips
    }

    fn pool_snapshot(&self, pool: &str) -> PoolSnapshot {
        let services = self.services.iter().filter(|s| s.pool == pool);
        let config = self.config.pools.get(pool);
        PoolSnapshot {
            name: pool.to_owned(),
            min_in_service: self.min_in_service(pool),
            max_in_maintenance: config.and_then(|p| p.health.max_in_maintenance),
            services: services.clone().filter(|s| s.leaving.is_none()).map(ServiceSlot::label).collect(),
            leaving_services: services
                .filter_map(|s| {
                    Some(LeavingSnapshot {
                        label: s.label(),
                        active_flows: self.counts.leaving.get(&s.leaving_id()).copied().unwrap_or(0),
                        deadline_ms: s.leaving?.deadline_ms,
                    })
                })
                .collect(),
            servers: self
                .servers
                .pool(pool)
                .map(|s| ServerSnapshot {
                    id: s.id,
                    name: s.name.clone(),
                    address: s.address,
                    address6: s.address6,
                    port: s.port,
                    weight: s.weight,
                    admin: s.admin,
                    label: s.label(),
                    takes_new_flows: s.takes_new_flows(),
                    ramp: s.ramp,
                    active_flows: self.counts.active.get(&s.id).copied().unwrap_or(0),
                    resetting: self.counts.resetting.contains(&s.id),
                    source: s.source,
                    removing: s.removing,
                    awaiting_fleet: s.awaiting_fleet,
                    shared_endpoint: s.shared_endpoint,
                    monitored: config.is_some_and(|p| !p.health.monitors.is_empty()),
                    health: s.health.clone(),
                })
                .collect(),
        }
    }
}

/// How many servers a refused change would leave in service, as said.
pub fn left_in_service(left: usize, min: usize) -> String {
    if left == 0 {
        "no enabled server".to_owned()
    } else {
        format!("{left} enabled server(s), fewer than its min_in_service ({min})")
    }
}

/// Who a change leaves as the setter of a server's state: an operator's
/// command or a config line is a decision even when the state was already
/// so (disabling a server in maintenance keeps it out when its replies are
/// normal again); a monitor's only when it moved the state; the end of a
/// drain (no source) keeps who began it.
pub(super) fn decided_by(source: Option<Source>, moved: bool, was: Source) -> Source {
    match source {
        Some(Source::Monitor) if !moved => was,
        Some(source) => source,
        None => was,
    }
}

fn event_of(state: &AdminState, change: &Change, now_ms: u64) -> (EventKind, String) {
    let reset = change.flows_reset.unwrap_or(0);
    match state {
        AdminState::Enabled => (EventKind::Enabled, format!("back in service (was {})", change.from)),
        AdminState::Draining { deadline_ms: None, .. } => {
            (EventKind::Draining, "no new flows; existing flows may finish, no deadline".to_owned())
        }
        AdminState::Draining { deadline_ms: Some(d), .. } => (
            EventKind::Draining,
            format!(
                "no new flows; flows left in {} will be terminated",
                format_time_left(servers::state::time_left(*d, now_ms))
            ),
        ),
        AdminState::Disabled { reason: DisableReason::Immediate, .. } => {
            (EventKind::Disabled, format!("disabled at once: {reset} live TCP flow(s) reset"))
        }
        AdminState::Disabled { reason: DisableReason::Deadline, .. } => {
            (EventKind::Deadline, format!("drain deadline reached: {reset} live TCP flow(s) reset"))
        }
        AdminState::Disabled { reason: DisableReason::Drained, .. } => {
            (EventKind::Drained, "the last flow ended: disabled (drained)".to_owned())
        }
    }
}
