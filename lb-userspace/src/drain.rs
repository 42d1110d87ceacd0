//! Where drains end: each tick of the agent enforces drain deadlines
//! (terminating what is left), notices servers whose last flow is gone
//! (drained), sends the resets the datapath asked for, and walks the flow
//! table to age flows and count them per server.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use lb_common::ResetRequest;

use crate::{
    control::Control,
    duration::format_time_left,
    flow_aging,
    server_state::{self, AdminState, DisableReason, Transition, now_ms},
    tcp_reset::Reset,
};

/// While a server drains, its flows are counted at least this often, so it
/// is reported drained promptly.
const DRAIN_COUNT_INTERVAL: Duration = Duration::from_millis(200);
/// How often the agent logs the progress of each drain.
const PROGRESS_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl Control {
    /// One tick of the agent's loop.
    pub fn tick(&mut self) {
        self.send_requested_resets();
        self.enforce_deadlines();
        if self.sweep_due() {
            self.sweep();
            self.log_drain_progress();
        }
    }

    fn draining(&self) -> impl Iterator<Item = &crate::tables::ServerSlot> {
        self.tables.servers.values().filter(|s| matches!(s.admin, AdminState::Draining { .. }))
    }

    /// Terminates, as an immediate disable would, what is left on servers
    /// whose deadline has come.
    fn enforce_deadlines(&mut self) {
        let now = now_ms();
        let due: Vec<(String, String)> = self
            .draining()
            .filter(|s| matches!(s.admin, AdminState::Draining { deadline_ms: Some(d), .. } if d <= now))
            .map(|s| (s.pool.clone(), s.name.clone()))
            .collect();
        self.end_drains(due, DisableReason::Deadline);
    }

    /// Disables (drained) the draining servers that have no live flow left,
    /// as counted by a walk that started after they began draining.
    fn detect_drained(&mut self) {
        let Some(taken) = self.counts.taken else { return };
        let walk_started_ms = now_ms().saturating_sub(taken.elapsed().as_millis() as u64);
        let drained: Vec<(String, String)> = self
            .draining()
            .filter(|s| matches!(s.admin, AdminState::Draining { since_ms, .. } if since_ms <= walk_started_ms))
            .filter(|s| self.counts.active.get(&s.id).copied().unwrap_or(0) == 0)
            .map(|s| (s.pool.clone(), s.name.clone()))
            .collect();
        self.end_drains(drained, DisableReason::Drained);
    }

    fn end_drains(&mut self, servers: Vec<(String, String)>, reason: DisableReason) {
        let mut by_pool: BTreeMap<String, Vec<(String, Transition)>> = BTreeMap::new();
        for (pool, server) in servers {
            by_pool.entry(pool).or_default().push((server, Transition::Terminate(reason)));
        }
        for (pool, plan) in by_pool {
            if let Err(e) = self.execute(&pool, &plan, now_ms()) {
                log::error!("cannot end the drain of pool {pool}: {:#}", anyhow::Error::new(e));
            }
        }
    }

    fn sweep_due(&self) -> bool {
        let Some(taken) = self.counts.taken else { return true };
        let mut interval = self.config.flows.sweep_interval;
        if self.draining().next().is_some() {
            // Often while draining, but never spending more than a third of
            // the time walking a large table.
            interval = interval.min(DRAIN_COUNT_INTERVAL.max(self.counts.took * 2));
        }
        taken.elapsed() >= interval
    }

    /// Walks the flow table: ages flows out, counts live flows per server,
    /// and ends the drains that have none left.
    pub(crate) fn sweep(&mut self) {
        let started = Instant::now();
        match flow_aging::sweep(&self.dp.maps, &self.tables, &self.config.flows, flow_aging::datapath_now_ns()) {
            Ok(report) => {
                if report.expired > 0 {
                    log::debug!("flow sweep: {} flows, {} expired", report.scanned, report.expired);
                }
                self.counts.active = report.active_by_server;
                self.counts.taken = Some(started);
                self.counts.took = started.elapsed();
                // Whoever counted (the loop, or an API call that wanted
                // fresh counts), drains that just ended are seen at once.
                self.detect_drained();
            }
            Err(e) => log::warn!("flow sweep failed: {e}"),
        }
    }

    fn log_drain_progress(&mut self) {
        if self.last_progress_log.elapsed() < PROGRESS_LOG_INTERVAL {
            return;
        }
        self.last_progress_log = Instant::now();
        let now = now_ms();
        for s in self.draining() {
            let flows = self.counts.active.get(&s.id).copied().unwrap_or(0);
            let left = match s.admin {
                AdminState::Draining { deadline_ms: Some(d), .. } => {
                    format!("{} to the deadline", format_time_left(server_state::time_left(d, now)))
                }
                _ => "no deadline".to_owned(),
            };
            log::info!("{}/{} draining: {flows} live flow(s) left, {left}", s.pool, s.name);
        }
    }

    /// Sends the resets the datapath asked for (the other end of a
    /// terminated flow whose packet it answered).
    fn send_requested_resets(&mut self) {
        while let Some(item) = self.dp.maps.reset_requests.next() {
            if item.len() < size_of::<ResetRequest>() {
                continue;
            }
            let request: ResetRequest = bytemuck::pod_read_unaligned(&item[..size_of::<ResetRequest>()]);
            let reset = Reset::from_request(&request);
            if let Err(e) = self.resets.send(&reset) {
                log::warn!("cannot send reset {reset:?}: {e}");
            }
        }
    }
}
