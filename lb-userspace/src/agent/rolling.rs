//! Rolling maintenance: where a server's maintenance reply waits its turn.
//! A pool's `max_in_maintenance` bounds how many of its servers are out of
//! service at once (draining or disabled, whoever took them out: capacity
//! is what it keeps); a server that announces maintenance beyond it stays
//! ENABLED and serving, queued, and goes (drains as its reply asked) when a
//! place frees: a server back in service, or removed. First come, first
//! served.

use std::time::Duration;

use super::owner::Owner;
use crate::{
    datapath::ops::DatapathOps,
    model::{EventKind, Subject},
    servers::{AdminState, health::Queued},
};

impl<D: DatapathOps> Owner<D> {
    /// Whether a maintenance reply of an ENABLED server must wait (the pool
    /// has its most servers out); if so it is queued, and said.
    pub(super) fn waits_its_turn(
        &mut self,
        pool: &str,
        id: u32,
        matched: &str,
        announced: Option<Duration>,
        now_ms: u64,
    ) -> bool {
        let Some(max) = self.config.pools.get(pool).and_then(|p| p.health.max_in_maintenance) else {
            return false;
        };
        let out = self.out_of_service(pool);
        if out < max {
            return false;
        }
        let place = self.servers.pool(pool).filter(|s| s.health.queued.is_some()).count() + 1;
        let slot = self.servers.get_mut(id).expect("found");
        slot.health.queued = Some(Queued { since_ms: now_ms, matched: matched.to_owned(), announced });
        let message = format!(
            "maintenance reply ({matched}): queued ({place} in line), {out} server(s) already out \
             (max_in_maintenance {max}); serving until a place frees"
        );
        log::info!("{pool}/{}: {message}", slot.name);
        let name = slot.name.clone();
        self.events.push(now_ms, Subject::server(pool, &name), EventKind::Maintenance, message);
        true
    }

    /// Its maintenance is over before its turn came: it leaves the queue.
    pub(super) fn leaves_queue(&mut self, pool: &str, id: u32, now_ms: u64) -> bool {
        let slot = self.servers.get_mut(id).expect("found");
        if slot.health.queued.take().is_none() {
            return false;
        }
        let name = slot.name.clone();
        let message = "normal replies again: no longer queued for maintenance".to_owned();
        self.events.push(now_ms, Subject::server(pool, &name), EventKind::Maintenance, message);
        true
    }

    /// Lets queued servers go where places are free (after any change: a
    /// server back in service, removed, an operator's decision, a reload
    /// that raised the limit). A queued server an operator took out
    /// meanwhile leaves the queue.
    pub fn admit_queued(&mut self, now_ms: u64) {
        let pools: Vec<String> =
            self.servers.iter().filter(|s| s.health.queued.is_some()).map(|s| s.pool.clone()).collect();
        for pool in pools {
            self.forget_stale(&pool);
            let max = self.config.pools.get(&pool).and_then(|p| p.health.max_in_maintenance).unwrap_or(usize::MAX);
            while self.out_of_service(&pool) < max {
                let Some((id, queued)) = self.first_in_line(&pool) else { break };
                self.servers.get_mut(id).expect("queued").health.queued = None;
                let waited = Duration::from_millis(now_ms.saturating_sub(queued.since_ms));
                let how = format!("its turn came after {}", crate::config::format_duration(waited));
                self.drain_for_maintenance(&pool, id, &queued.matched, queued.announced, &how, now_ms);
            }
        }
    }

    /// Queued servers no longer waiting: taken out by someone else, or gone.
    fn forget_stale(&mut self, pool: &str) {
        let stale: Vec<u32> = self
            .servers
            .pool(pool)
            .filter(|s| s.health.queued.is_some())
            .filter(|s| s.admin != AdminState::Enabled || s.removing || !s.health.maintenance)
            .map(|s| s.id)
            .collect();
        for id in stale {
            self.servers.get_mut(id).expect("queued").health.queued = None;
        }
    }

    fn first_in_line(&self, pool: &str) -> Option<(u32, Queued)> {
        self.servers
            .pool(pool)
            .filter_map(|s| s.health.queued.clone().map(|q| (s.id, q)))
            .min_by_key(|(_, q)| q.since_ms)
    }

    /// The servers of `pool` out of service by an administrative state, or
    /// (in a cluster) about to be: a drain proposed and not yet recorded.
    fn out_of_service(&self, pool: &str) -> usize {
        self.servers
            .pool(pool)
            .filter(|s| !s.removing && (s.admin != AdminState::Enabled || self.proposed_out(s)))
            .count()
    }
}
