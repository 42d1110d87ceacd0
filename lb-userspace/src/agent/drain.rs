//! Where drains end: drain deadlines are enforced (what is left is
//! terminated), and servers whose last flow is gone are found by the sweep
//! (drained). The runtime calls these when a deadline's timer fires and when
//! a sweep is due ([`Owner::sweep_interval`]).

use std::{
    collections::{BTreeMap, HashMap},
    time::Duration,
};

use super::owner::{Owner, Plan};
use crate::{
    config::{format_duration, format_time_left},
    datapath::ops::DatapathOps,
    model::{EventKind, Subject},
    servers::{AdminState, DisableReason, LeavingId, ServerSlot, ServiceSlot, Transition, state::time_left},
};

/// While a server drains, its flows are counted at least this often, so it
/// is reported drained promptly (and `pool show` is this fresh).
pub const DRAIN_COUNT_INTERVAL: Duration = Duration::from_millis(200);
/// How often the agent logs the progress of each drain.
const PROGRESS_LOG_MS: u64 = 10_000;

impl<D: DatapathOps> Owner<D> {
    fn draining(&self) -> impl Iterator<Item = &ServerSlot> {
        self.servers.iter().filter(|s| s.admin.is_draining())
    }

    /// The earliest drain deadline (ms since the Unix epoch), if any: of a
    /// draining server, or of a service leaving the config.
    pub fn next_deadline(&self) -> Option<u64> {
        let services = self.services.iter().filter_map(|s| s.leaving?.deadline_ms);
        self.draining().filter_map(|s| s.admin.deadline_ms()).chain(services).min()
    }

    /// Whether anything drains: servers, or services leaving the config.
    fn drains(&self) -> bool {
        self.draining().next().is_some() || self.services.iter().any(|s| s.leaving.is_some())
    }

    /// How long after the last sweep began the next one is due: the
    /// config's `sweep_interval`, or often while a server drains, but never
    /// spending more than a third of the time walking a large table.
    pub fn sweep_interval(&self) -> Duration {
        let interval = self.config.flows.sweep_interval;
        if !self.drains() {
            return interval;
        }
        interval.min(DRAIN_COUNT_INTERVAL.max(self.counts.took * 2))
    }

    /// How long the last sweep held the owner (a deadline must not fall
    /// within the next one: see `runtime::sweep_at`).
    pub fn sweep_took(&self) -> Duration {
        self.counts.took
    }

    /// Terminates, as an immediate disable would, what is left on servers
    /// whose deadline has come, and of services leaving the config whose
    /// deadline has come.
    pub fn enforce_deadlines(&mut self, now_ms: u64) {
        // Idle connections are closed cleanly first: only busy ones are reset.
        self.close_idle(now_ms);
        let due: Vec<&ServerSlot> =
            self.draining().filter(|s| s.admin.deadline_ms().is_some_and(|d| d <= now_ms)).collect();
        // In a cluster every node cuts the fleet's drains at the deadline on
        // its own (it is the same instant everywhere), then records the
        // cut: the first node's record stands.
        let fleets = by_pool(due.iter().copied().filter(|s| self.fleets(s)).collect(), DisableReason::Deadline);
        let due = by_pool(due, DisableReason::Deadline);
        for (pool, plan) in fleets {
            self.propose(&pool, &plan, None, now_ms);
        }
        self.end_drains(due, now_ms);
        let due: Vec<LeavingId> = self
            .services
            .iter()
            .filter(|s| s.leaving.is_some_and(|l| l.deadline_ms.is_some_and(|d| d <= now_ms)))
            .map(ServiceSlot::leaving_id)
            .collect();
        for id in &due {
            let why = match self.dp.terminate_service(&self.servers, id) {
                Ok(done) => format!(
                    "its deadline came: {} live TCP flow(s) reset",
                    done.reset_by_server.values().sum::<usize>()
                ),
                Err(e) => {
                    log::error!("cannot terminate the flows of a removed service: {e}");
                    "its deadline came (its flows could not all be reset)".to_owned()
                }
            };
            self.end_service(id, &why, now_ms);
        }
        if !due.is_empty() {
            self.write_layout();
        }
        self.forget_gone(now_ms);
    }

    /// Walks the flow table (started at `now_ms`): ages flows out, counts
    /// live flows per server, and ends the drains that have none left.
    pub fn sweep(&mut self, now_ms: u64) {
        let started = std::time::Instant::now();
        self.close_idle(now_ms);
        match self.dp.sweep(&self.servers, &self.services, &self.config.flows) {
            Ok(report) => {
                if report.expired > 0 {
                    log::debug!("flow sweep: {} flows, {} expired", report.scanned, report.expired);
                }
                self.counts.active = report.active_by_server;
                self.counts.leaving = report.active_by_leaving_service;
                self.counts.in_table = report.scanned.saturating_sub(report.expired) as u64;
                self.counts.at_ms = Some(now_ms);
                self.counts.took = started.elapsed();
                self.detect_drained(now_ms);
                self.forget_gone(now_ms);
                self.log_drain_progress(now_ms);
            }
            Err(e) => log::warn!("flow sweep failed: {e}"),
        }
    }

    /// Closes cleanly the idle TCP connections of the servers draining in
    /// pools with `idle_close` (`datapath::idle_close`), so that their
    /// clients see a close, not a reset at the deadline, and the drain ends
    /// sooner. Each close is said in an event.
    fn close_idle(&mut self, now_ms: u64) {
        let quiet: HashMap<u32, Duration> =
            self.draining().filter_map(|s| Some((s.id, self.config.pools.get(&s.pool)?.idle_close?))).collect();
        if quiet.is_empty() {
            return;
        }
        let closed = match self.dp.close_idle(&self.servers, &quiet) {
            Ok(closed) => closed,
            Err(e) => return log::warn!("cannot close idle connections: {e}"),
        };
        for (id, n) in closed {
            let Some(s) = self.servers.get(id) else { continue };
            let message = format!("{n} idle connection(s) closed cleanly (quiet for {})", format_duration(quiet[&id]));
            self.events.push(now_ms, Subject::server(&s.pool, &s.name), EventKind::IdleClosed, message);
        }
    }

    /// Disables (drained) the draining servers that have no live flow left,
    /// as counted by a walk that started after they began draining.
    fn detect_drained(&mut self, now_ms: u64) {
        let Some(walk_started_ms) = self.counts.at_ms else { return };
        let drained: Vec<&ServerSlot> = self
            .draining()
            .filter(|s| matches!(s.admin, AdminState::Draining { since_ms, .. } if since_ms <= walk_started_ms))
            .filter(|s| self.counts.active.get(&s.id).copied().unwrap_or(0) == 0)
            .collect();
        // The fleet's drains end when no node has a flow left: the store
        // records it once, and every node applies it from there.
        let (fleets, here): (Vec<&ServerSlot>, Vec<&ServerSlot>) = drained.into_iter().partition(|s| self.fleets(s));
        let fleets = by_pool(fleets.into_iter().filter(|s| self.fleet_drained(s)).collect(), DisableReason::Drained);
        let here = by_pool(here, DisableReason::Drained);
        for (pool, plan) in fleets {
            self.propose(&pool, &plan, None, now_ms);
        }
        self.end_drains(here, now_ms);
    }

    /// In a cluster: whether the other nodes, counting after the drain
    /// began, have no live flow of `server` either.
    fn fleet_drained(&self, server: &ServerSlot) -> bool {
        let AdminState::Draining { since_ms, .. } = server.admin else { return false };
        self.others_flows(&server.pool, &server.name, since_ms) == Some(0)
    }

    fn end_drains(&mut self, plans: BTreeMap<String, Plan>, now_ms: u64) {
        for (pool, plan) in plans {
            if let Err(e) = self.execute(&pool, &plan, None, now_ms) {
                log::error!("cannot end the drain of pool {pool}: {:#}", anyhow::Error::new(e));
            }
        }
    }

    fn log_drain_progress(&mut self, now_ms: u64) {
        if now_ms < self.last_progress_log_ms + PROGRESS_LOG_MS {
            return;
        }
        self.last_progress_log_ms = now_ms;
        for s in self.draining() {
            let flows = self.counts.active.get(&s.id).copied().unwrap_or(0);
            let left = match s.admin.deadline_ms() {
                Some(d) => format!("{} to the deadline", format_time_left(time_left(d, now_ms))),
                None => "no deadline".to_owned(),
            };
            log::info!("{}/{} draining: {flows} live flow(s) left, {left}", s.pool, s.name);
        }
    }
}

/// Plans, by pool, that terminate `servers` for `reason`.
fn by_pool(servers: Vec<&ServerSlot>, reason: DisableReason) -> BTreeMap<String, Plan> {
    let mut plans: BTreeMap<String, Plan> = BTreeMap::new();
    for s in servers {
        plans.entry(s.pool.clone()).or_default().push((s.name.clone(), Transition::Terminate(reason)));
    }
    plans
}
