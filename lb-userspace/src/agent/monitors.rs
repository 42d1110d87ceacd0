//! The health monitors' task, the checks' schedule: each monitor of each server checked every
//! `interval` (the first check of a server at once, spread over a moment),
//! at most [`MAX_CHECKS_IN_FLIGHT`] at a time. Results are tallied here (the
//! one writer of checks' results); what changes a verdict goes to the owner
//! of the state, which alone changes what the datapath does.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{Semaphore, mpsc, watch},
    time::{Instant, interval, sleep_until},
};

use super::runtime::{OwnerHandle, now_ms, stopped};
use crate::health::{
    CheckPlan, CheckTarget, Checks, LastCheck, ServerChecks,
    probe::{self, Outcome},
    tally::{self, Tally, Verdict},
};

/// Checks running at once, at most: the rest wait their turn.
pub const MAX_CHECKS_IN_FLIGHT: usize = 256;
/// First checks are spread over this long (or the interval, if shorter).
const FIRST_CHECKS_WITHIN: Duration = Duration::from_millis(500);
/// How often the checks' results are published for `pool show` (what the
/// owner applies is published at once: this is the last check's detail).
const PUBLISH_EVERY: Duration = Duration::from_millis(500);

type Key = (String, String);

/// A server being checked: its target, one tally per monitor, and what the
/// owner was last told.
struct Checked {
    key: Key,
    target: CheckTarget,
    /// Results of checks begun before the last plan are dropped.
    generation: u64,
    tallies: Vec<Tally>,
    running: Vec<bool>,
    reported: (Verdict, bool),
    last: Option<LastCheck>,
}

/// A check's result (by the server's place in the list).
struct Done {
    at: usize,
    generation: u64,
    monitor: usize,
    outcome: Outcome,
    took: Duration,
}

/// When each monitor of each server (by place) is next due.
type Due = BinaryHeap<Reverse<(Instant, usize, usize)>>;

/// What the runner reads and where it reports. Every server of the plan is
/// checked, those an operator took out of service too: what they say now
/// (in maintenance or not, UP or DOWN) is what an enable is judged by, and
/// the owner lets it change nothing else of their state.
pub struct Runner {
    pub plan: watch::Receiver<Arc<CheckPlan>>,
    pub owner: OwnerHandle,
    pub view: watch::Sender<Arc<Checks>>,
}

impl Runner {
    /// Checks until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let limit = Arc::new(Semaphore::new(MAX_CHECKS_IN_FLIGHT));
        let (done_tx, mut done_rx) = mpsc::channel::<Done>(1024);
        let mut checked: Vec<Checked> = Vec::new();
        let mut due = Due::new();
        let mut generation = 0;
        adopt(&self.plan.borrow().clone(), &mut checked, &mut due, &mut generation);
        let mut publish = interval(PUBLISH_EVERY);
        let mut dirty = true;
        loop {
            let next = due.peek().map(|Reverse((at, ..))| *at);
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                Ok(()) = self.plan.changed() => {
                    let plan = self.plan.borrow_and_update().clone();
                    adopt(&plan, &mut checked, &mut due, &mut generation);
                    dirty = true;
                }
                Some(done) = done_rx.recv() => {
                    self.take(&mut checked, done).await;
                    dirty = true;
                }
                () = sleep_until(next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if next.is_some() => {
                    let Some(Reverse((at, i, monitor))) = due.pop() else { continue };
                    let Some(c) = checked.get_mut(i) else { continue };
                    due.push(Reverse((at + c.target.monitors[monitor].interval, i, monitor)));
                    if c.running[monitor] {
                        continue;
                    }
                    c.running[monitor] = true;
                    spawn_check(c, i, monitor, Arc::clone(&limit), done_tx.clone());
                }
                _ = publish.tick(), if dirty => {
                    self.view.send_replace(Arc::new(view(&checked)));
                    dirty = false;
                }
            }
        }
    }

    /// Tallies a result; tells the owner what it changed.
    async fn take(&self, checked: &mut [Checked], done: Done) {
        let Some(c) = checked.get_mut(done.at).filter(|c| c.generation == done.generation) else { return };
        c.running[done.monitor] = false;
        let monitor = &c.target.monitors[done.monitor];
        c.tallies[done.monitor].take(&done.outcome, monitor.rise, monitor.fall);
        let now = tally::combined(&c.tallies);
        let changes = tally::changes(&c.reported, &now, &done.outcome);
        c.last = Some(LastCheck { at_ms: now_ms(), kind: monitor.kind(), outcome: done.outcome, took: done.took });
        c.reported = now;
        for change in changes {
            let (pool, server) = c.key.clone();
            self.owner.health(pool, server, c.target.identity, change).await;
        }
    }
}

/// Runs one check on the runtime, within the limit.
fn spawn_check(c: &Checked, at: usize, monitor: usize, limit: Arc<Semaphore>, done: mpsc::Sender<Done>) {
    let (monitors, address, port, generation) =
        (Arc::clone(&c.target.monitors), c.target.address, c.target.port, c.generation);
    tokio::spawn(async move {
        let Ok(_permit) = limit.acquire_owned().await else { return };
        let started = Instant::now();
        let outcome = probe::check(&monitors[monitor], address, port).await;
        let _ = done.send(Done { at, generation, monitor, outcome, took: started.elapsed() }).await;
    });
}

/// Takes a new plan: servers that stay keep their tallies (if their
/// monitors are the same); every check is scheduled anew, spread over a
/// moment (a server's first check comes at once).
fn adopt(plan: &CheckPlan, checked: &mut Vec<Checked>, due: &mut Due, generation: &mut u64) {
    let mut kept: HashMap<Key, Checked> = checked.drain(..).map(|c| (c.key.clone(), c)).collect();
    *generation += 1;
    due.clear();
    let now = Instant::now();
    let count = plan.len().max(1) as u32;
    for (i, target) in plan.iter().enumerate() {
        let key = (target.pool.clone(), target.server.clone());
        let monitors = target.monitors.len();
        let c = match kept.remove(&key).filter(|c| same_checks(&c.target, target)) {
            Some(c) => Checked { generation: *generation, running: vec![false; monitors], ..c },
            // A server its owner knows to be in maintenance stays so until
            // its replies are normal `rise` times.
            None => Checked {
                key,
                target: target.clone(),
                generation: *generation,
                tallies: vec![Tally::fresh(target.in_maintenance); monitors],
                running: vec![false; monitors],
                reported: (Verdict::Unknown, target.in_maintenance),
                last: None,
            },
        };
        for (m, monitor) in target.monitors.iter().enumerate() {
            let spread = FIRST_CHECKS_WITHIN.min(monitor.interval) * (i as u32) / count;
            due.push(Reverse((now + spread, i, m)));
        }
        checked.push(c);
    }
}

fn same_checks(a: &CheckTarget, b: &CheckTarget) -> bool {
    (a.address, a.port, a.identity) == (b.address, b.port, b.identity) && a.monitors == b.monitors
}

fn view(checked: &[Checked]) -> Checks {
    checked
        .iter()
        .map(|c| {
            let (verdict, maintenance) = tally::combined(&c.tallies);
            (c.key.clone(), ServerChecks { verdict, maintenance, last: c.last.clone() })
        })
        .collect()
}
