//! Where the config changes while the agent runs: `lb reload` and SIGHUP.
//! A new config (validated whole by `Config::load`) is compared with what
//! runs, and the difference is applied as one change, in a safe order:
//!
//! 1. servers new to their slot are written (a server disabled in the
//!    config is written DISABLED: it never takes a flow), and the flows of
//!    servers whose endpoint is about to serve several services get their
//!    own return paths;
//! 2. the return paths, the filter and the VIPs of every service and
//!    server, leaving ones included (their flows go on); leaving services
//!    take no new flow from here;
//! 3. the Maglev rows whose members or weights changed, then the new
//!    services that use them;
//! 4. the config's `enabled` lines and the removals, each an ordinary
//!    change of states (drain or terminate, by the pool's
//!    `graceful_disable_timeout`), with its events.
//!
//! A removed server or service stays ("removing", "leaving") until its
//! flows are over, then is forgotten ([`Owner::forget_gone`]).
//!
//! **Who wins, the config or the operator.** The latest decision: an
//! operator's command, or a change of the server's `enabled` line. A
//! reload (or a restart) applies a server's line only when it differs from
//! the one the agent applied last (kept in the state file), or when the
//! server is new; a line that did not change leaves the server as the
//! operator set it. `lb pool show` says which one set each state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::owner::{ControlError, Owner, Plan, dp_err};
use crate::{
    config::{Config, format_duration},
    datapath::ops::DatapathOps,
    model::{Change, EventKind, ReloadReport, Subject},
    servers::plan::{Previous, Tables},
    servers::{
        self, AdminState, DisableMode, Leaving, LeavingId, LeavingService, ServerSlot, ServerTable, ServiceSlot,
        Source, Transition,
    },
};

/// How a reload is asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadOptions {
    /// Even if it leaves a pool with no server taking new flows.
    pub force: bool,
    /// Say what would change; change nothing.
    pub dry_run: bool,
    /// A fleet reload (asked through the store, every node re-reads its
    /// file): the servers it adds await the fleet
    /// ([`ServerSlot::awaiting_fleet`]).
    pub fleet: bool,
}

/// A reload worked out before anything is written.
struct Target {
    tables: Tables,
    /// The state changes by pool: the config's lines, then the removals.
    lines: BTreeMap<String, Plan>,
    removals: BTreeMap<String, Plan>,
    /// Servers staying at a new address or port: their flows are cut.
    moved: HashSet<u32>,
    /// What changes, for people.
    changes: Vec<String>,
}

impl<D: DatapathOps> Owner<D> {
    /// Applies `new` in place of the running config (see the module's note).
    pub fn reload(&mut self, new: Config, options: ReloadOptions, now_ms: u64) -> Result<ReloadReport, ControlError> {
        let restart = self.config.restart_needed(&new);
        if !restart.is_empty() {
            return Err(ControlError::RestartNeeded { settings: restart.join("; ") });
        }
        let mut target = self.target(&new, now_ms)?;
        if options.fleet {
            self.hold_added(&mut target.tables);
        }
        if !options.force {
            self.guard_reload(&target, &new, now_ms)?;
        }
        target.changes.extend(settings_changed(&self.config, &new));
        let changes = target.changes.clone();
        if options.dry_run || changes.is_empty() {
            return Ok(ReloadReport { applied: !options.dry_run, changes, nodes: Vec::new() });
        }
        // A change that cannot be saved is not made.
        drop(super::state_file::prepare(&self.config.state_file, &self.saved()).map_err(ControlError::NotSaved)?);
        let started = std::time::Instant::now();
        let result = self.apply(new, target, now_ms);
        self.events.push(now_ms, Subject::Agent, EventKind::Reloaded, reload_message(&changes, result.is_ok()));
        log::info!("config reloaded in {:?}: {}", started.elapsed(), changes.join("; "));
        result.map(|()| ReloadReport { applied: true, changes, nodes: Vec::new() })
    }

    /// The config given at start-up runs from `now_ms`.
    pub fn started_at(&mut self, now_ms: u64) {
        self.reloads.last_success_ms = now_ms;
    }

    /// Counts a reload (not a dry run): applied, or refused.
    pub fn note_reload(&mut self, applied: bool, now_ms: u64) {
        self.reloads.last_successful = applied;
        if applied {
            self.reloads.applied += 1;
            self.reloads.last_success_ms = now_ms;
        } else {
            self.reloads.refused += 1;
        }
    }

    /// The tables `new` asks for, from what runs now, with the state
    /// changes it makes.
    fn target(&self, new: &Config, now_ms: u64) -> Result<Target, ControlError> {
        let mut saved = self.saved();
        for slot in self.servers.iter().filter(|s| new.server(&s.pool, &s.name).is_none()) {
            saved.servers.get_mut(&(slot.pool.clone(), slot.name.clone())).expect("saved").removing = true;
        }
        let mut changes = Vec::new();
        saved.leaving_services.extend(self.leaving_services(new, &mut changes, now_ms));
        let previous = Previous::of(&self.servers, &self.services, saved);
        let mut tables = Tables::plan(new, &previous, now_ms)
            .map_err(|e| ControlError::Datapath { step: "place the new servers", source: Box::new(e) })?;
        self.keep_what_runs(new, &mut tables);
        let mut target =
            Target { tables, lines: BTreeMap::new(), removals: BTreeMap::new(), moved: HashSet::new(), changes };
        self.describe_services(&mut target);
        let slots: Vec<ServerSlot> = target.tables.servers.iter().cloned().collect();
        for slot in &slots {
            self.plan_server(new, slot, &mut target, now_ms);
        }
        Ok(target)
    }

    /// What runs of each server that stays: whether the rows give it slots
    /// and its ramp; and what the monitors found of it if it stays as it
    /// was (same member, endpoint and monitors): the monitors keep their
    /// tallies across a reload and do not tell it again, so the owner keeps
    /// it too (a DOWN server must not take new flows because of a reload).
    fn keep_what_runs(&self, new: &Config, tables: &mut Tables) {
        let monitors = |config: &Config, pool: &str| config.pools.get(pool).map(|p| p.health.monitors.clone());
        for slot in tables.servers.iter_mut() {
            let Some(old) = self.servers.get(slot.id).filter(|o| o.identity == slot.identity) else { continue };
            (slot.in_rows, slot.ramp, slot.awaiting_fleet) = (old.in_rows, old.ramp, old.awaiting_fleet);
            let same = (old.address, old.port) == (slot.address, slot.port)
                && monitors(&self.config, &slot.pool) == monitors(new, &slot.pool);
            if same {
                slot.health = old.health.clone();
            }
        }
    }

    /// A fleet reload: the servers it adds take no new flow until every
    /// node has them ([`Owner::fleet_reloaded`]).
    fn hold_added(&self, tables: &mut Tables) {
        for slot in tables.servers.iter_mut() {
            if self.servers.get(slot.id).is_none_or(|old| old.identity != slot.identity) {
                slot.awaiting_fleet = true;
            }
        }
    }

    /// Every live node has applied the fleet's reload (or the wait for
    /// them is over): the servers it added take new flows, their pools'
    /// rows rewritten.
    pub fn fleet_reloaded(&mut self, now_ms: u64) {
        let held: Vec<(String, String)> =
            self.servers.iter().filter(|s| s.awaiting_fleet).map(|s| (s.pool.clone(), s.name.clone())).collect();
        let pools: BTreeSet<String> = held.iter().map(|(pool, _)| pool.clone()).collect();
        for slot in self.servers.iter_mut() {
            slot.awaiting_fleet = false;
        }
        for pool in &pools {
            if let Err(e) = self.write_rows(pool, now_ms) {
                log::error!("cannot give the servers added to pool {pool} their rows: {e}");
            }
        }
        for (pool, server) in held {
            let message = "every node has it: it takes new flows".to_owned();
            self.events.push(now_ms, Subject::server(&pool, &server), EventKind::Added, message);
        }
    }

    /// The services gone from the config, or from their pool (a service
    /// whose pool changed leaves its old one: its flows there go on by the
    /// old pool's rule), as leaving services.
    fn leaving_services(&self, new: &Config, changes: &mut Vec<String>, now_ms: u64) -> Vec<LeavingService> {
        let mut leaving = Vec::new();
        for service in self.services.iter().filter(|s| s.leaving.is_none()) {
            let key = (service.vip, service.port, service.protocol);
            let moved_to = new.services.iter().find(|n| (n.vip, n.port, n.protocol) == key).map(|n| n.pool.as_str());
            if moved_to == Some(service.pool.as_str()) {
                continue;
            }
            let mode = self.removal_mode(new, &service.pool);
            let deadline_ms = match mode {
                DisableMode::Immediate => Some(now_ms),
                DisableMode::Graceful { timeout_ms } => timeout_ms.map(|t| now_ms + t),
            };
            let (label, old, how) = (service.label(), &service.pool, how(mode));
            changes.push(match moved_to {
                None => format!("service {label} removed: no new flows; its flows end {how}"),
                Some(pool) => format!("service {label}: new flows go to pool {pool}; those on pool {old} end {how}"),
            });
            leaving.push(LeavingService {
                vip: service.vip,
                port: service.port,
                protocol: service.protocol,
                pool: service.pool.clone(),
                leaving: Leaving { since_ms: now_ms, deadline_ms },
            });
        }
        leaving
    }

    /// The pool rule for taking a server or service of `pool` out: the new
    /// config's, or the old one's if the pool is gone.
    fn removal_mode(&self, new: &Config, pool: &str) -> DisableMode {
        let pools = new.pools.get(pool).or_else(|| self.config.pools.get(pool));
        pools.map_or(DisableMode::Graceful { timeout_ms: None }, |p| p.graceful_disable_timeout)
    }

    fn describe_services(&self, target: &mut Target) {
        for service in target.tables.services.iter().filter(|s| s.leaving.is_none()) {
            let same_key = |s: &&ServiceSlot| s.key() == service.key();
            match self.services.iter().filter(same_key).find(|s| s.pool == service.pool || s.leaving.is_none()) {
                None => target.changes.push(format!("service {} added (pool {})", service.label(), service.pool)),
                Some(old) if old.leaving.is_some() => target.changes.push(format!(
                    "service {} back in the config (pool {})",
                    service.label(),
                    service.pool
                )),
                // A pool change is said with the old pool's leaving.
                Some(_) => {}
            }
        }
    }

    /// What happens to one server of the target: added, changed, its line
    /// applied, or its removal begun.
    fn plan_server(&self, new: &Config, slot: &ServerSlot, target: &mut Target, now_ms: u64) {
        let name = format!("{}/{}", slot.pool, slot.name);
        let old = self.servers.get(slot.id).filter(|o| o.identity == slot.identity);
        let mode = self.removal_mode(new, &slot.pool);
        if slot.removing {
            if !old.is_some_and(|o| o.removing) {
                target.changes.push(format!("{name} removed: taken out {}, then gone", how(mode)));
                let transition = servers::state::removal(&slot.admin, mode, now_ms);
                target.removals.entry(slot.pool.clone()).or_default().push((slot.name.clone(), transition));
            }
            return;
        }
        let Some(line) = new.server(&slot.pool, &slot.name) else { return };
        let Some(old) = old else {
            let disabled = if line.enabled { "" } else { ", DISABLED (enabled = false)" };
            let (address, port, weight) = (slot.address, slot.port, slot.weight);
            target.changes.push(format!("{name} added ({address}:{port}, weight {weight}{disabled})"));
            return;
        };
        if old.removing {
            target.changes.push(format!("{name} back in the config: no longer removed"));
        }
        if old.weight != slot.weight {
            target.changes.push(format!("{name} weight {} -> {}", old.weight, slot.weight));
        }
        if (old.address, old.port) != (slot.address, slot.port) {
            let (from, to) = (format!("{}:{}", old.address, old.port), format!("{}:{}", slot.address, slot.port));
            target.changes.push(format!("{name} moved {from} -> {to}: its live flows are reset"));
            target.moved.insert(slot.id);
        }
        // Its line, if it changed since the agent applied it last.
        if slot.config_enabled != line.enabled {
            let (transition, what) = if line.enabled {
                (servers::state::enable(&slot.admin), "enabled = true".to_owned())
            } else {
                (servers::state::disable(&slot.admin, mode, now_ms), format!("enabled = false: out {}", how(mode)))
            };
            target.changes.push(format!("{name} {what}"));
            target.lines.entry(slot.pool.clone()).or_default().push((slot.name.clone(), transition));
        }
    }

    /// The guard, for a reload: no pool of the new config is left with
    /// fewer servers taking new flows than its (new) `min_in_service`.
    fn guard_reload(&self, target: &Target, new: &Config, now_ms: u64) -> Result<(), ControlError> {
        let transitions: HashMap<(&str, &str), Transition> = target
            .lines
            .iter()
            .chain(&target.removals)
            .flat_map(|(pool, plan)| plan.iter().map(move |(name, t)| ((pool.as_str(), name.as_str()), *t)))
            .collect();
        let pools: HashSet<&str> =
            target.tables.services.iter().filter(|s| s.leaving.is_none()).map(|s| s.pool.as_str()).collect();
        for pool in pools {
            let before: Vec<(AdminState, u32)> =
                self.servers.pool(pool).filter(|s| !s.removing).map(|s| (s.admin, s.weight)).collect();
            let after: Vec<(AdminState, u32)> = target
                .tables
                .servers
                .pool(pool)
                .filter(|s| !s.removing)
                .map(|s| {
                    let t = transitions.get(&(pool, s.name.as_str())).copied().unwrap_or(Transition::Unchanged);
                    (servers::state::apply(&s.admin, t, now_ms), s.weight)
                })
                .collect();
            let min = new.pools.get(pool).map_or(1, |p| p.min_in_service);
            if let Some(left) = servers::state::falls_below_minimum(&before, &after, min) {
                let servers = "by this reload".to_owned();
                return Err(ControlError::LastServer { pool: pool.to_owned(), servers, left, min });
            }
        }
        Ok(())
    }

    /// Writes the target (see the module's note on order), then takes it
    /// as the agent's, then makes its state changes.
    fn apply(&mut self, new: Config, target: Target, now_ms: u64) -> Result<(), ControlError> {
        let Target { mut tables, lines, removals, moved, .. } = target;
        self.cut_moved(&moved)?;
        self.write_servers(&tables, &moved)?;
        self.dp.write_layout(&tables.servers, &tables.services).map_err(dp_err("write the return paths and filter"))?;
        self.write_services(&mut tables, &new, now_ms)?;
        self.adopt(new, tables, now_ms);
        self.save_states()?;
        for (pool, plan) in lines.into_iter().chain(removals) {
            self.execute(&pool, &plan, Some(Source::Config), now_ms)?;
        }
        self.enforce_deadlines(now_ms);
        self.forget_gone(now_ms);
        self.publish_checks();
        Ok(())
    }

    /// Servers new to their slot (or moved) are written whole; servers whose
    /// endpoint starts or stops serving several services get their flag,
    /// and the flows of the first their own return paths.
    fn write_servers(&mut self, tables: &Tables, moved: &HashSet<u32>) -> Result<(), ControlError> {
        let mut newly_shared = HashSet::new();
        for slot in tables.servers.iter() {
            match self.servers.get(slot.id) {
                Some(old) if old.identity == slot.identity && !moved.contains(&slot.id) => {
                    if old.shared_endpoint != slot.shared_endpoint {
                        self.dp.write_server(slot).map_err(dp_err("write a server"))?;
                    }
                    if slot.shared_endpoint && !old.shared_endpoint {
                        newly_shared.insert(slot.id);
                    }
                }
                _ => self.dp.write_new_server(slot).map_err(dp_err("write a new server"))?,
            }
        }
        self.dp.add_return_paths(&tables.servers, &newly_shared).map_err(dp_err("add return paths"))?;
        Ok(())
    }

    /// The hash rows whose pool, members or weights changed, then the new
    /// services that use them.
    fn write_services(&mut self, tables: &mut Tables, new: &Config, now_ms: u64) -> Result<(), ControlError> {
        let pools: BTreeSet<String> = tables.servers.iter().map(|s| s.pool.clone()).collect();
        for pool in &pools {
            let over = new.pools.get(pool).and_then(|p| p.ramp_up);
            for name in servers::ramp::before_rows(&mut tables.servers, pool, over, now_ms) {
                let over = format_duration(over.expect("a ramp has a length"));
                let message = format!("in service: its share of new flows ramps up over {over}, from a tenth");
                self.events.push(now_ms, Subject::server(pool, &name), EventKind::RampUp, message);
            }
        }
        for service in tables.services.iter().filter(|s| s.leaving.is_none()) {
            let known = self.services.iter().find(|s| s.key() == service.key() && s.leaving.is_none());
            let same_row = known.is_some_and(|k| {
                k.pool == service.pool && row(&self.servers, &k.pool) == row(&tables.servers, &service.pool)
            });
            if !same_row {
                self.dp.write_maglev_row(service, &tables.servers).map_err(dp_err("write a Maglev row"))?;
            }
            if known.is_none() {
                self.dp.write_service(service).map_err(dp_err("write a service"))?;
            }
        }
        for pool in &pools {
            servers::ramp::after_rows(&mut tables.servers, pool);
        }
        Ok(())
    }

    /// Takes the new config and tables as the agent's; the config's lines
    /// as the ones applied; an event for each server added.
    fn adopt(&mut self, new: Config, tables: Tables, now_ms: u64) {
        let added: Vec<(String, String)> = tables
            .servers
            .iter()
            .filter(|s| self.servers.get(s.id).is_none_or(|o| o.identity != s.identity))
            .map(|s| (s.pool.clone(), s.name.clone()))
            .collect();
        self.servers = tables.servers;
        self.services = tables.services;
        self.config_hash = new.fleet_hash();
        self.config = new;
        for slot in self.servers.iter_mut().filter(|s| !s.removing) {
            slot.config_enabled = self.config.server(&slot.pool, &slot.name).is_none_or(|l| l.enabled);
        }
        for (pool, server) in added {
            let slot = self.servers.find(&pool, &server).expect("added");
            let held = if slot.awaiting_fleet { "; new flows once every node has it" } else { "" };
            let message = format!("added by a reload: {}{held}", slot.admin.label());
            self.events.push(now_ms, Subject::server(&pool, &server), EventKind::Added, message);
        }
    }

    /// Servers that stay at a new address: their flows, at the old one,
    /// cannot go on. Their state is written DISABLED at the old address
    /// (which stops the flows), then the flows are purged and reset.
    fn cut_moved(&mut self, moved: &HashSet<u32>) -> Result<(), ControlError> {
        if moved.is_empty() {
            return Ok(());
        }
        for &id in moved {
            let mut cut = self.servers.get(id).expect("moved server exists").clone();
            cut.admin = AdminState::Disabled { since_ms: 0, reason: servers::DisableReason::Immediate };
            self.dp.write_server(&cut).map_err(dp_err("stop a moved server's flows"))?;
        }
        let done = self.dp.terminate(&self.servers, moved).map_err(dp_err("terminate a moved server's flows"))?;
        log::info!("servers moved to a new address: {} flow(s) purged, {} reset", done.flows, done.resets_sent / 2);
        Ok(())
    }

    /// Forgets the removed servers that are out of service (DISABLED), and
    /// the leaving services with no flow left (as counted by a walk begun
    /// after they started leaving); writes what that frees.
    pub fn forget_gone(&mut self, now_ms: u64) {
        let gone: Vec<ServerSlot> = self
            .servers
            .iter()
            .filter(|s| s.removing && matches!(s.admin, AdminState::Disabled { .. }))
            .cloned()
            .collect();
        let counted_at = self.counts.at_ms;
        let over: Vec<LeavingId> = self
            .services
            .iter()
            .filter(|s| {
                s.leaving.is_some_and(|l| counted_at.is_some_and(|at| at >= l.since_ms))
                    && self.counts.leaving.get(&s.leaving_id()).copied().unwrap_or(0) == 0
            })
            .map(ServiceSlot::leaving_id)
            .collect();
        if gone.is_empty() && over.is_empty() {
            return;
        }
        for slot in &gone {
            if let Err(e) = self.dp.forget_server(slot) {
                log::error!("cannot free the slot of {}/{}: {e}", slot.pool, slot.name);
            }
            self.servers.remove(slot.id);
            self.counts.active.remove(&slot.id);
            let message = format!("removed from the config and now out of service ({}): gone", slot.admin.label());
            self.events.push(now_ms, Subject::server(&slot.pool, &slot.name), EventKind::Removed, message);
        }
        for id in &over {
            self.end_service(id, "its last flow ended", now_ms);
        }
        self.write_layout();
    }

    /// Forgets a leaving service whose flows are over.
    pub(super) fn end_service(&mut self, id: &LeavingId, why: &str, now_ms: u64) {
        let leaving = |s: &ServiceSlot| s.leaving.is_some() && s.leaving_id() == *id;
        let Some(at) = self.services.iter().position(leaving) else { return };
        let service = self.services.remove(at);
        self.counts.leaving.remove(id);
        let message = format!("service removed from the config: {why}: gone");
        let subject = Subject::Service { pool: service.pool.clone(), service: service.label() };
        self.events.push(now_ms, subject, EventKind::Removed, message);
    }

    /// Writes the return paths and filter for what remains, then the
    /// servers whose endpoint is no longer shared (in that order: replies
    /// find their VIP by endpoint before new flows stop recording it by
    /// flow); saves the states.
    pub(super) fn write_layout(&mut self) {
        if let Err(e) = self.dp.write_layout(&self.servers, &self.services) {
            log::error!("cannot write the return paths and filter: {e}");
        }
        let mut tables = Tables { servers: self.servers.clone(), services: self.services.clone() };
        tables.mark_shared();
        for slot in tables.servers.iter() {
            let was = self.servers.get(slot.id).is_some_and(|o| o.shared_endpoint);
            if was != slot.shared_endpoint
                && let Err(e) = self.dp.write_server(slot)
            {
                log::error!("cannot write {}/{}: {e}", slot.pool, slot.name);
            }
        }
        self.servers = tables.servers;
        if let Err(e) = self.save_states() {
            log::error!("{e}");
        }
    }

    /// Begins taking out, at start-up, the servers the config no longer has
    /// (removed while no agent ran): by their pool's rule, as a reload would.
    pub fn begin_removals(&mut self, now_ms: u64) {
        let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
        for slot in self.servers.iter().filter(|s| s.removing) {
            let mode = self.removal_mode(&self.config, &slot.pool);
            let t = servers::state::removal(&slot.admin, mode, now_ms);
            plans.entry(slot.pool.clone()).or_default().push((slot.name.clone(), t));
        }
        for (pool, plan) in plans {
            if let Err(e) = self.execute(&pool, &plan, Some(Source::Config), now_ms) {
                log::error!("cannot take out the servers removed from pool {pool}: {e}");
            }
        }
        self.forget_gone(now_ms);
    }

    /// Applies the config's `enabled` lines at start-up: those that changed
    /// since the agent last applied them (see the module's note).
    pub fn apply_config_lines(&mut self, now_ms: u64) -> Vec<Change> {
        let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
        for slot in self.servers.iter().filter(|s| !s.removing) {
            let Some(line) = self.config.server(&slot.pool, &slot.name) else { continue };
            if line.enabled == slot.config_enabled {
                continue;
            }
            let mode = self.config.pools[&slot.pool].graceful_disable_timeout;
            let t = if line.enabled {
                servers::state::enable(&slot.admin)
            } else {
                servers::state::disable(&slot.admin, mode, now_ms)
            };
            plans.entry(slot.pool.clone()).or_default().push((slot.name.clone(), t));
        }
        for slot in self.servers.iter_mut().filter(|s| !s.removing) {
            slot.config_enabled = self.config.server(&slot.pool, &slot.name).is_none_or(|l| l.enabled);
        }
        let mut changes = Vec::new();
        for (pool, plan) in plans {
            match self.execute(&pool, &plan, Some(Source::Config), now_ms) {
                Ok(c) => changes.extend(c),
                Err(e) => log::error!("cannot apply the config's enabled lines of pool {pool}: {e}"),
            }
        }
        changes
    }
}

/// The settings a reload changes beside servers and services: flow
/// timeouts, and each pool's rules and monitors.
fn settings_changed(old: &Config, new: &Config) -> Vec<String> {
    let mut changes = Vec::new();
    if old.flows != new.flows {
        changes.push("flow timeouts or sweep interval changed".to_owned());
    }
    for (name, pool) in &new.pools {
        let Some(was) = old.pools.get(name) else { continue };
        let mut what = Vec::new();
        if was.graceful_disable_timeout != pool.graceful_disable_timeout {
            what.push("graceful_disable_timeout");
        }
        if was.health.monitors != pool.health.monitors {
            what.push("monitors");
        }
        if was.health.on_down != pool.health.on_down {
            what.push("on_down");
        }
        if (was.health.maintenance_timeout, was.health.max_maintenance_timeout)
            != (pool.health.maintenance_timeout, pool.health.max_maintenance_timeout)
        {
            what.push("maintenance timeouts");
        }
        if was.min_in_service != pool.min_in_service {
            what.push("min_in_service");
        }
        if was.health.max_in_maintenance != pool.health.max_in_maintenance {
            what.push("max_in_maintenance");
        }
        if was.ramp_up != pool.ramp_up {
            what.push("ramp_up");
        }
        if was.idle_close != pool.idle_close {
            what.push("idle_close");
        }
        if !what.is_empty() {
            changes.push(format!("pool {name}: {} changed", what.join(", ")));
        }
    }
    changes
}

/// The members of a pool's Maglev row, to tell whether it must be rewritten.
fn row(servers: &ServerTable, pool: &str) -> Vec<(u32, u64, u32)> {
    servers.pool(pool).filter(|s| s.takes_new_flows()).map(|s| (s.id, s.identity, s.hash_weight())).collect()
}

/// "at once", "within 3s", "when its last flow ends".
fn how(mode: DisableMode) -> String {
    match mode {
        DisableMode::Immediate => "at once".to_owned(),
        DisableMode::Graceful { timeout_ms: Some(ms) } => {
            format!("within {}", format_duration(std::time::Duration::from_millis(ms)))
        }
        DisableMode::Graceful { timeout_ms: None } => "when their last flow ends".to_owned(),
    }
}

fn reload_message(changes: &[String], ok: bool) -> String {
    let outcome = if ok { "config reloaded" } else { "config reload failed partway" };
    format!("{outcome}: {}", changes.join("; "))
}
