//! What the dashboard draws: each server's live flows and new flows over
//! the last minutes. A task samples the owner's snapshot and the
//! datapath's counters once a second (the one writer); reads copy a pool's
//! series. At most `KEEP` samples a server: about 7 KiB each.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::sync::watch;

use super::ops::Ops;
use crate::{
    agent::runtime::{now_ms, stopped},
    model::HistoryPoint,
};

/// How often a sample is taken, and how many are kept (5 minutes).
pub const EVERY: Duration = Duration::from_secs(1);
pub const KEEP: usize = 300;

#[derive(Clone, Copy, Debug)]
struct Sample {
    at_ms: u64,
    flows: u64,
    /// New flows given to the server so far (the datapath's counter).
    new_flows: u64,
}

/// One sample of a server: (pool, name, live flows, new flows so far).
pub type Reading = (String, String, u64, u64);

#[derive(Default)]
pub struct History {
    series: Mutex<HashMap<(String, String), VecDeque<Sample>>>,
}

impl History {
    /// Adds a sample of every server; forgets servers no longer there.
    pub fn record(&self, at_ms: u64, readings: impl IntoIterator<Item = Reading>) {
        let mut series = self.series.lock().expect("no sampler panics holding the history");
        let mut seen = HashSet::new();
        for (pool, name, flows, new_flows) in readings {
            let samples = series.entry((pool.clone(), name.clone())).or_default();
            if samples.len() == KEEP {
                samples.pop_front();
            }
            samples.push_back(Sample { at_ms, flows, new_flows });
            seen.insert((pool, name));
        }
        series.retain(|key, _| seen.contains(key));
    }

    /// A server's points, oldest first; new flows per second since the
    /// sample before (a counter that went back, the server being new in
    /// its slot, counts as none).
    pub fn of(&self, pool: &str, name: &str) -> Vec<HistoryPoint> {
        let series = self.series.lock().expect("no sampler panics holding the history");
        let Some(samples) = series.get(&(pool.to_owned(), name.to_owned())) else { return Vec::new() };
        let mut points = Vec::with_capacity(samples.len());
        let mut before: Option<Sample> = None;
        for s in samples {
            let new_per_s = before.map_or(0.0, |b| {
                let seconds = s.at_ms.saturating_sub(b.at_ms).max(1) as f64 / 1000.0;
                s.new_flows.saturating_sub(b.new_flows) as f64 / seconds
            });
            points.push(HistoryPoint { at_ms: s.at_ms, flows: s.flows, new_per_s });
            before = Some(*s);
        }
        points
    }
}

/// Samples every `EVERY` until shutdown.
pub async fn sample(ops: Arc<Ops>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            _ = tick.tick() => ops.record_history(now_ms()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_series_keeps_the_last_minutes_and_rates_new_flows_per_second() {
        let history = History::default();
        let reading = |flows, new_flows| ("web".to_owned(), "a".to_owned(), flows, new_flows);
        for i in 0..(KEEP as u64 + 5) {
            history.record(1_000 * i, [reading(i, 10 * i)]);
        }
        let points = history.of("web", "a");
        assert_eq!(points.len(), KEEP, "the oldest go");
        assert_eq!(points[0].at_ms, 5_000);
        assert_eq!(points[1].new_per_s, 10.0);
        history.record(1_000_000, [reading(1, 0)]);
        assert_eq!(history.of("web", "a").last().unwrap().new_per_s, 0.0, "a counter that went back");
        history.record(1_001_000, [("web".to_owned(), "b".to_owned(), 0, 0)]);
        assert!(history.of("web", "a").is_empty(), "a server gone is forgotten");
    }
}
