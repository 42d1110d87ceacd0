//! Where a server's share of new flows ramps up after it comes back into
//! service (a pool's `ramp_up`): cold caches and JIT warm-up do not get
//! the full share at once. Its weight in the Maglev rows grows in `STEPS`
//! steps evenly over the ramp, from a tenth of its weight at its start to
//! all of it at its end (when the ramp is over).
//!
//! A step rewrites the rows; a flow already in the flow table keeps its
//! server whatever the rows say, so no step moves a live flow: only the
//! share of new flows changes. Pure logic: the owner keeps the clock.

use std::time::Duration;

use super::{RampRecord, ServerTable};

/// Steps of a ramp: the first gives a tenth of the weight.
pub const STEPS: u32 = 10;

/// A ramp in progress, and the step the rows give the server now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ramp {
    pub since_ms: u64,
    pub until_ms: u64,
    /// 1..=STEPS: its weight in the rows is `weight * step / STEPS`.
    pub step: u32,
}

impl Ramp {
    pub fn new(now_ms: u64, over: Duration) -> Ramp {
        Ramp { since_ms: now_ms, until_ms: now_ms + over.as_millis() as u64, step: 1 }
    }

    /// The step due at `now_ms`: 1 at the start, `STEPS` (full weight: the
    /// ramp is over) at its end, the others evenly between.
    pub fn due(&self, now_ms: u64) -> u32 {
        let length = self.until_ms.saturating_sub(self.since_ms).max(1);
        let done = now_ms.saturating_sub(self.since_ms).min(length);
        (1 + done * u64::from(STEPS - 1) / length) as u32
    }

    /// When the next step is due (the last one ends the ramp).
    pub fn next_ms(&self) -> u64 {
        let length = self.until_ms.saturating_sub(self.since_ms);
        self.since_ms + (length * u64::from(self.step)).div_ceil(u64::from(STEPS - 1))
    }

    /// A ramp an earlier agent saved, at the step due now; none if it is
    /// over.
    pub fn resumed(saved: RampRecord, now_ms: u64) -> Option<Ramp> {
        let ramp = Ramp { since_ms: saved.since_ms, until_ms: saved.until_ms, step: 1 };
        let step = ramp.due(now_ms);
        (now_ms < saved.until_ms && step < STEPS).then_some(Ramp { step, ..ramp })
    }

    pub fn percent(&self) -> u32 {
        self.step * 100 / STEPS
    }
}

/// Before `pool`'s rows are written: a server about to be in them that is
/// not in them now starts its ramp, if the pool has one and others serve
/// already (not at start, not when the whole pool comes back, not in
/// fail-open: there is no share to take from anyone); a server leaving
/// the rows ends its ramp. Returns the names of the servers starting one.
pub fn before_rows(servers: &mut ServerTable, pool: &str, over: Option<Duration>, now_ms: u64) -> Vec<String> {
    let serving_already = servers.pool(pool).any(|s| s.in_rows && s.takes_new_flows() && !s.health.fail_open);
    let starting: Vec<u32> =
        servers.pool(pool).filter(|s| s.takes_new_flows() && !s.in_rows && !s.health.fail_open).map(|s| s.id).collect();
    let mut started = Vec::new();
    for slot in servers.iter_mut().filter(|s| s.pool == pool) {
        if !slot.takes_new_flows() {
            slot.ramp = None;
        } else if let (true, Some(over)) = (starting.contains(&slot.id) && serving_already, over) {
            slot.ramp = Some(Ramp::new(now_ms, over));
            started.push(slot.name.clone());
        }
    }
    started.sort();
    started
}

/// After `pool`'s rows were written: who is in them.
pub fn after_rows(servers: &mut ServerTable, pool: &str) {
    for slot in servers.iter_mut().filter(|s| s.pool == pool) {
        slot.in_rows = slot.takes_new_flows();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ramp_climbs_a_tenth_at_a_time_and_says_when_next() {
        let ramp = Ramp::new(1_000, Duration::from_secs(9));
        assert_eq!(ramp.due(1_000), 1);
        assert_eq!(ramp.next_ms(), 2_000, "the second step after a ninth of the ramp");
        assert_eq!(ramp.due(1_999), 1);
        assert_eq!(ramp.due(2_000), 2);
        assert_eq!(ramp.due(9_999), 9);
        assert_eq!(ramp.due(10_000), STEPS, "full weight at the end");
        assert_eq!(ramp.due(50_000), STEPS);
        assert_eq!(Ramp { step: 9, ..ramp }.next_ms(), 10_000, "the last step is the end");
        assert_eq!(Ramp { step: 3, ..ramp }.percent(), 30);
    }

    #[test]
    fn a_saved_ramp_resumes_at_the_step_due_and_not_once_over() {
        let saved = RampRecord { since_ms: 1_000, until_ms: 10_000 };
        let resumed = |now_ms| Ramp::resumed(saved, now_ms).map(|r| r.step);
        assert_eq!(resumed(1_500), Some(1), "restarted within its first step");
        assert_eq!(resumed(5_000), Some(5));
        assert_eq!(resumed(9_999), Some(9));
        assert_eq!(resumed(10_000), None, "over: full weight");
        assert_eq!(resumed(500), Some(1), "a clock set back reads as the start");
        let odd = Ramp::new(0, Duration::from_millis(1_000));
        assert_eq!(odd.due(odd.next_ms()), 2, "a step is due when said, not a millisecond later");
    }
}
