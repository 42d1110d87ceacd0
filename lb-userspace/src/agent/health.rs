//! Where a health verdict changes what the datapath does (the owner's side
//! of `crate::health`): a server found DOWN takes no new flow and its flows
//! follow the pool's `on_down`; found UP again it takes new flows; a
//! maintenance reply drains it as an operator's graceful disable would, and
//! normal replies put it back unless an operator decided otherwise since.
//!
//! A pool whose servers in service are all DOWN keeps serving with all of
//! them (fail-open): a balancer whose monitor broke must not drop
//! everything. It says so loudly (an event, the log, `pool show`).

use std::{collections::HashSet, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::owner::{Owner, dp_err};
use crate::{
    config::{OnDown, format_duration},
    datapath::ops::DatapathOps,
    health::{CheckPlan, CheckTarget, tally::Change},
    model::{EventKind, Subject},
    servers::{
        AdminState, ServerSlot, Source, Transition,
        health::{Down, DownReason},
    },
};

/// Why a server is to be DOWN: one reason found, and in a cluster how many
/// of how many live nodes find it so.
pub struct HealthVerdict {
    pub reason: DownReason,
    pub seen_by: Option<(usize, usize)>,
}

/// A server's datapath code and whether it takes new flows.
type Written = Vec<(u32, u8, bool)>;

impl<D: DatapathOps> Owner<D> {
    /// Applies a verdict of the monitors on `pool`/`server` (the server of
    /// that identity: a reload may have replaced it).
    pub fn apply_health(&mut self, pool: &str, server: &str, identity: u64, change: Change, now_ms: u64) {
        let Some(slot) = self.servers.find(pool, server).filter(|s| s.identity == identity && !s.removing) else {
            return;
        };
        let id = slot.id;
        match change {
            Change::Down { reason } => {
                self.servers.get_mut(id).expect("found").health.seen_down = Some(reason);
                self.follow_health(pool, id, now_ms);
            }
            Change::Up => {
                self.servers.get_mut(id).expect("found").health.seen_down = None;
                self.follow_health(pool, id, now_ms);
            }
            Change::MaintenanceBegins { matched, announced } => {
                self.maintenance_begins(pool, id, &matched, announced, now_ms)
            }
            Change::MaintenanceEnds => self.maintenance_ends(pool, id, now_ms),
        }
    }

    /// Brings a server's applied health to the verdict: its own monitors'
    /// on a node alone, the fleet's rule in a cluster.
    pub(super) fn follow_health(&mut self, pool: &str, id: u32, now_ms: u64) {
        let Some(slot) = self.servers.get(id) else { return };
        match (self.health_verdict(slot), slot.health.down.is_some()) {
            (Some(verdict), false) => self.mark_down(pool, id, verdict, now_ms),
            (None, true) => self.mark_up(pool, id, now_ms),
            (Some(_), true) | (None, false) => {}
        }
    }

    fn mark_down(&mut self, pool: &str, id: u32, verdict: HealthVerdict, now_ms: u64) {
        let before = self.written(pool);
        let slot = self.servers.get_mut(id).expect("found");
        let reason = verdict.reason;
        slot.health.down = Some(Down { since_ms: now_ms, reason: reason.clone(), cut: false });
        let what = if slot.admin == AdminState::Enabled { "no new flows" } else { "it is out of service" };
        let fleet = verdict.seen_by.map(|(n, of)| format!(" ({n} of {of} nodes find it DOWN)")).unwrap_or_default();
        let (name, message) = (slot.name.clone(), format!("DOWN: {reason}{fleet}; {what}"));
        log::warn!("{pool}/{name} is {message}");
        self.events.push(now_ms, Subject::server(pool, &name), EventKind::Down, message);
        self.settle(pool, before, now_ms);
    }

    fn mark_up(&mut self, pool: &str, id: u32, now_ms: u64) {
        let before = self.written(pool);
        let slot = self.servers.get_mut(id).expect("found");
        slot.health.down = None;
        let name = slot.name.clone();
        let message = "UP: takes new flows again".to_owned();
        self.events.push(now_ms, Subject::server(pool, &name), EventKind::Up, message);
        log::info!("{pool}/{name} is UP");
        self.settle(pool, before, now_ms);
    }

    /// Each server of `pool`: its code, and whether it takes new flows.
    fn written(&self, pool: &str) -> Written {
        self.servers.pool(pool).map(|s| (s.id, s.code(), s.takes_new_flows())).collect()
    }

    /// Writes what a change of health did to `pool` (see the owner's note
    /// on order): servers coming back and servers cut first, then the
    /// hash rows, then servers that now only drain; the cut ones' flows are
    /// terminated last.
    fn settle(&mut self, pool: &str, before: Written, now_ms: u64) {
        self.mark_fail_open(pool, now_ms);
        let after = self.written(pool);
        let moved = |want: u8| -> Vec<u32> {
            before.iter().zip(&after).filter(|(b, a)| b.1 != a.1 && a.1 == want).map(|(_, a)| a.0).collect()
        };
        use lb_common::server_state::{DISABLED, DRAINING, ENABLED};
        let (first, cut, draining) = (moved(ENABLED), moved(DISABLED), moved(DRAINING));
        let result = (|| {
            for id in first.iter().chain(&cut) {
                self.dp.write_server(self.servers.get(*id).expect("in pool")).map_err(dp_err("write a server"))?;
            }
            if before.iter().map(|b| b.2).ne(after.iter().map(|a| a.2)) {
                self.write_rows(pool, now_ms)?;
            }
            for id in &draining {
                self.dp.write_server(self.servers.get(*id).expect("in pool")).map_err(dp_err("write a server"))?;
            }
            let cut: HashSet<u32> = cut.into_iter().collect();
            if !cut.is_empty() {
                let done = self.dp.terminate(&self.servers, &cut).map_err(dp_err("terminate flows"))?;
                for id in cut {
                    let s = self.servers.get(id).expect("in pool");
                    let reset = done.reset_by_server.get(&id).copied().unwrap_or(0);
                    let message = format!("DOWN and cut (on_down): {reset} live TCP flow(s) reset");
                    self.events.push(now_ms, Subject::server(pool, &s.name), EventKind::Down, message);
                }
            }
            Ok::<(), super::owner::ControlError>(())
        })();
        if let Err(e) = result {
            log::error!("cannot apply the health of pool {pool}: {e}");
        }
    }

    /// Sets each server's fail-open flag: on when every server of the pool
    /// in service is DOWN.
    fn mark_fail_open(&mut self, pool: &str, now_ms: u64) {
        let in_service: Vec<&ServerSlot> =
            self.servers.pool(pool).filter(|s| s.admin == AdminState::Enabled && s.weight > 0 && !s.removing).collect();
        let all_down = !in_service.is_empty() && in_service.iter().all(|s| s.health.down.is_some());
        let was = in_service.iter().any(|s| s.health.fail_open);
        let ids: Vec<u32> = self.servers.pool(pool).map(|s| s.id).collect();
        for id in ids {
            self.servers.get_mut(id).expect("in pool").health.fail_open = all_down;
        }
        if all_down && !was {
            let message = "every server in service is DOWN: serving with all of them (fail-open) until one is UP";
            log::error!("pool {pool}: {message}");
            self.events.push(now_ms, Subject::Pool { pool: pool.to_owned() }, EventKind::FailOpen, message.to_owned());
        } else if was && !all_down {
            self.events.push(
                now_ms,
                Subject::Pool { pool: pool.to_owned() },
                EventKind::FailOpen,
                "a server is UP again: fail-open over".to_owned(),
            );
        }
    }

    /// The earliest instant a DOWN server's flows are to be cut
    /// (`on_down` with a duration), if any.
    pub fn next_cut(&self) -> Option<u64> {
        self.servers.iter().filter_map(|s| self.cut_at(s)).min()
    }

    fn cut_at(&self, s: &ServerSlot) -> Option<u64> {
        let down = s.health.down.as_ref().filter(|d| !d.cut && !s.health.fail_open)?;
        match self.config.pools.get(&s.pool)?.health.on_down {
            OnDown::Terminate => Some(down.since_ms),
            OnDown::After(d) => Some(down.since_ms + d.as_millis() as u64),
            OnDown::Keep => None,
        }
    }

    /// Cuts the flows of DOWN servers whose time has come.
    pub fn enforce_cuts(&mut self, now_ms: u64) {
        let due: Vec<(String, u32)> = self
            .servers
            .iter()
            .filter(|s| self.cut_at(s).is_some_and(|at| at <= now_ms))
            .map(|s| (s.pool.clone(), s.id))
            .collect();
        for (pool, id) in due {
            let before = self.written(&pool);
            if let Some(down) = self.servers.get_mut(id).and_then(|s| s.health.down.as_mut()) {
                down.cut = true;
            }
            self.settle(&pool, before, now_ms);
        }
    }

    /// A maintenance reply: an ENABLED server drains, by the pool's
    /// `maintenance_timeout` or the drain it announced (within the pool's
    /// maximum), or waits its turn (`max_in_maintenance`, see `rolling`);
    /// a server an operator took out is left as it is.
    pub(super) fn maintenance_begins(
        &mut self,
        pool: &str,
        id: u32,
        matched: &str,
        announced: Option<Duration>,
        now_ms: u64,
    ) {
        let slot = self.servers.get_mut(id).expect("found");
        slot.health.maintenance = true;
        let (name, admin, source) = (slot.name.clone(), slot.admin, slot.source);
        if admin != AdminState::Enabled {
            let message = format!("maintenance reply ({matched}); left {} as the {source} set it", admin.label());
            self.events.push(now_ms, Subject::server(pool, &name), EventKind::Maintenance, message);
            return;
        }
        if !self.waits_its_turn(pool, id, matched, announced, now_ms) {
            self.drain_for_maintenance(pool, id, matched, announced, "", now_ms);
        }
    }

    /// Drains a server for its maintenance reply (`turn`: how it came to
    /// go, if it waited).
    pub(super) fn drain_for_maintenance(
        &mut self,
        pool: &str,
        id: u32,
        matched: &str,
        announced: Option<Duration>,
        turn: &str,
        now_ms: u64,
    ) {
        let Some(health) = self.config.pools.get(pool).map(|p| p.health.clone()) else { return };
        let name = self.servers.get(id).expect("found").name.clone();
        let timeout = announced.map(|a| a.min(health.max_maintenance_timeout)).or(health.maintenance_timeout);
        let how = match (announced, timeout) {
            (Some(a), Some(t)) if a > t => {
                format!("it announced {}, bounded to {}", format_duration(a), format_duration(t))
            }
            (Some(_), Some(t)) => format!("it announced {}", format_duration(t)),
            (None, Some(t)) => format!("for at most {}", format_duration(t)),
            (_, None) => "until drained".to_owned(),
        };
        let turn = if turn.is_empty() { String::new() } else { format!("; {turn}") };
        let message = format!("maintenance reply ({matched}): draining, {how}{turn}");
        log::info!("{pool}/{name}: {message}");
        self.events.push(now_ms, Subject::server(pool, &name), EventKind::Maintenance, message);
        let deadline_ms = timeout.map(|t| now_ms + t.as_millis() as u64);
        let plan = vec![(name.clone(), Transition::Drain(AdminState::Draining { since_ms: now_ms, deadline_ms }))];
        if self.with_fleet() {
            self.remember_reply(pool, &name, matched, announced);
            return self.propose(pool, &plan, Some(Source::Monitor), now_ms);
        }
        if let Err(e) = self.execute(pool, &plan, Some(Source::Monitor), now_ms) {
            log::error!("cannot drain {pool} for maintenance: {e}");
        }
    }

    /// Normal replies again: back in service if the maintenance put it out
    /// and nobody decided otherwise since.
    pub(super) fn maintenance_ends(&mut self, pool: &str, id: u32, now_ms: u64) {
        if self.leaves_queue(pool, id, now_ms) {
            self.servers.get_mut(id).expect("found").health.maintenance = false;
            return;
        }
        let slot = self.servers.get_mut(id).expect("found");
        slot.health.maintenance = false;
        let (name, admin, source) = (slot.name.clone(), slot.admin, slot.source);
        if source != Source::Monitor || admin == AdminState::Enabled {
            let message = format!("normal replies again; left {} as the {source} set it", admin.label());
            self.events.push(now_ms, Subject::server(pool, &name), EventKind::Maintenance, message);
            return;
        }
        self.events.push(
            now_ms,
            Subject::server(pool, &name),
            EventKind::Maintenance,
            "normal replies again: back in service".to_owned(),
        );
        let plan = vec![(name, Transition::Enable)];
        if self.with_fleet() {
            return self.propose(pool, &plan, Some(Source::Monitor), now_ms);
        }
        if let Err(e) = self.execute(pool, &plan, Some(Source::Monitor), now_ms) {
            log::error!("cannot put {pool} back after maintenance: {e}");
        }
    }

    /// What the monitors are to check: every server of a pool with monitors.
    pub fn check_plan(&self) -> CheckPlan {
        let mut plan = Vec::new();
        for (pool, config) in &self.config.pools {
            if config.health.monitors.is_empty() {
                continue;
            }
            let monitors = Arc::new(config.health.monitors.clone());
            for s in self.servers.pool(pool).filter(|s| !s.removing) {
                plan.push(CheckTarget {
                    pool: pool.clone(),
                    server: s.name.clone(),
                    identity: s.identity,
                    address: s.address,
                    port: s.port,
                    monitors: Arc::clone(&monitors),
                    in_maintenance: s.health.maintenance,
                });
            }
        }
        plan
    }

    /// Publishes what to check to `checks` from now on (and now).
    pub fn publish_checks_to(&mut self, checks: watch::Sender<Arc<CheckPlan>>) {
        checks.send_replace(Arc::new(self.check_plan()));
        self.checks = Some(checks);
    }

    pub(super) fn publish_checks(&self) {
        if let Some(checks) = &self.checks {
            checks.send_replace(Arc::new(self.check_plan()));
        }
    }

    /// At start: servers a monitor put in maintenance before the restart
    /// are known to be so (an operator's enable is guarded; normal replies
    /// put them back).
    pub fn resume_maintenance(&mut self) {
        for slot in self.servers.iter_mut() {
            slot.health.maintenance = slot.source == Source::Monitor && slot.admin != AdminState::Enabled;
        }
    }
}
