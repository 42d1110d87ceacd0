//! The owner's side of ramp-up (`servers::ramp`): the one place the hash
//! rows of a pool are written, where a server coming into them starts its
//! ramp, and the timer that climbs each ramp a step at a time.

use super::owner::{ControlError, Owner, dp_err};
use crate::{
    config::format_duration,
    datapath::ops::DatapathOps,
    model::{EventKind, Subject},
    servers::ramp,
};

impl<D: DatapathOps> Owner<D> {
    /// Writes the hash rows of `pool`'s services. A server coming into them
    /// starts its ramp first, so that its very first rows give it only a
    /// tenth of its weight.
    pub(super) fn write_rows(&mut self, pool: &str, now_ms: u64) -> Result<(), ControlError> {
        let over = self.config.pools.get(pool).and_then(|p| p.ramp_up);
        for name in ramp::before_rows(&mut self.servers, pool, over, now_ms) {
            self.ramps_unsaved = true;
            let over = format_duration(over.expect("a ramp has a length"));
            let message = format!("back in service: its share of new flows ramps up over {over}, from a tenth");
            self.events.push(now_ms, Subject::server(pool, &name), EventKind::RampUp, message);
        }
        for service in self.services.iter().filter(|s| s.pool == pool && s.leaving.is_none()) {
            self.dp.write_maglev_row(service, &self.servers).map_err(dp_err("write a Maglev row"))?;
        }
        ramp::after_rows(&mut self.servers, pool);
        Ok(())
    }

    /// Writes the state file if a ramp began since it was last written, so
    /// that an agent restarted during the ramp goes on with it. Called
    /// before a change is answered and between commands: a change writes
    /// the file before its rows (and so before its ramps) are.
    pub fn save_new_ramps(&mut self) {
        if std::mem::take(&mut self.ramps_unsaved)
            && let Err(e) = self.save_states()
        {
            log::error!("cannot save the ramps begun: {e}");
        }
    }

    /// When a ramp next climbs (or ends), if any server ramps.
    pub fn next_ramp_step(&self) -> Option<u64> {
        self.servers.iter().filter_map(|s| s.ramp.map(|r| r.next_ms())).min()
    }

    /// Climbs the ramps whose step is due, rewriting their pools' rows;
    /// ends those whose time is over (full weight).
    pub fn climb_ramps(&mut self, now_ms: u64) {
        let mut pools = std::collections::BTreeSet::new();
        let mut ended = Vec::new();
        for slot in self.servers.iter_mut() {
            let Some(ramp) = &mut slot.ramp else { continue };
            if ramp.due(now_ms) >= ramp::STEPS {
                slot.ramp = None;
                ended.push((slot.pool.clone(), slot.name.clone()));
            } else if ramp.due(now_ms) != ramp.step {
                ramp.step = ramp.due(now_ms);
            } else {
                continue;
            }
            pools.insert(slot.pool.clone());
        }
        for pool in pools {
            if let Err(e) = self.write_rows(&pool, now_ms) {
                log::error!("cannot climb the ramps of pool {pool}: {e}");
            }
        }
        for (pool, name) in ended {
            let message = "ramp-up over: its full share of new flows".to_owned();
            self.events.push(now_ms, Subject::server(&pool, &name), EventKind::RampUp, message);
        }
    }
}
