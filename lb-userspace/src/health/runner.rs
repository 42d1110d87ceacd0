//! The checks' schedule: each monitor of each server checked every
//! `interval` (the first check of a server at once, spread over a moment),
//! at most [`MAX_CHECKS_IN_FLIGHT`] at a time. Results are tallied here (the
//! one writer of checks' results); what changes a verdict goes to the owner
//! of the state, which alone changes what the datapath does.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use tokio::{
    sync::{Semaphore, mpsc, watch},
    time::{Instant, interval, sleep_until},
};

use super::{
    CheckPlan, CheckTarget, Checks, LastCheck, ServerChecks,
    probe::{self, Outcome},
    tally::{self, Tally, Verdict},
};
use crate::{
    agent::{
        runtime::{OwnerHandle, now_ms, stopped},
        snapshot::Snapshot,
    },
    api::model::Source,
    servers::AdminState,
};

/// Checks running at once, at most: the rest wait their turn.
pub const MAX_CHECKS_IN_FLIGHT: usize = 256;
/// First checks are spread over this long (or the interval, if shorter).
const FIRST_CHECKS_WITHIN: Duration = Duration::from_millis(500);
/// How often the checks' results are published for `pool show`.
const PUBLISH_EVERY: Duration = Duration::from_millis(200);

type Key = (String, String);

/// A server being checked: its target, one tally per monitor, and what the
/// owner was last told.
struct Checked {
    target: CheckTarget,
    /// Bumped when the target changes: results of older checks are dropped.
    generation: u64,
    tallies: Vec<Tally>,
    running: Vec<bool>,
    reported: (Verdict, bool),
    last: Option<LastCheck>,
}

/// A check's result.
struct Done {
    key: Key,
    generation: u64,
    monitor: usize,
    outcome: Outcome,
    took: Duration,
}

/// What the runner reads and where it reports.
pub struct Runner {
    pub plan: watch::Receiver<Arc<CheckPlan>>,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    pub owner: OwnerHandle,
    pub view: watch::Sender<Arc<Checks>>,
}

impl Runner {
    /// Checks until `shutdown`.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let limit = Arc::new(Semaphore::new(MAX_CHECKS_IN_FLIGHT));
        let (done_tx, mut done_rx) = mpsc::channel::<Done>(1024);
        let mut checked: HashMap<Key, Checked> = HashMap::new();
        let mut due: BinaryHeap<Reverse<(Instant, Key, usize)>> = BinaryHeap::new();
        let mut skipped = not_checked(&self.snapshots.borrow());
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
                Ok(()) = self.snapshots.changed() => {
                    let now_skipped = not_checked(&self.snapshots.borrow_and_update());
                    // Back in service: checked at once, its first check deciding.
                    for key in skipped.difference(&now_skipped) {
                        if let Some(c) = checked.get_mut(key) {
                            c.tallies.iter_mut().for_each(|t| *t = Tally::fresh(t.maintenance));
                            (0..c.tallies.len()).for_each(|m| due.push(Reverse((Instant::now(), key.clone(), m))));
                        }
                    }
                    skipped = now_skipped;
                }
                Some(done) = done_rx.recv() => {
                    self.take(&mut checked, done).await;
                    dirty = true;
                }
                () = sleep_until(next.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600))), if next.is_some() => {
                    let Some(Reverse((at, key, monitor))) = due.pop() else { continue };
                    let Some(c) = checked.get_mut(&key) else { continue };
                    let Some(m) = c.target.monitors.get(monitor) else { continue };
                    due.push(Reverse((at + m.interval, key.clone(), monitor)));
                    if skipped.contains(&key) || c.running[monitor] {
                        continue;
                    }
                    c.running[monitor] = true;
                    spawn_check(c, key, monitor, Arc::clone(&limit), done_tx.clone());
                }
                _ = publish.tick(), if dirty => {
                    self.view.send_replace(Arc::new(view(&checked)));
                    dirty = false;
                }
            }
        }
    }

    /// Tallies a result; tells the owner what it changed.
    async fn take(&self, checked: &mut HashMap<Key, Checked>, done: Done) {
        let Some(c) = checked.get_mut(&done.key).filter(|c| c.generation == done.generation) else { return };
        c.running[done.monitor] = false;
        let monitor = &c.target.monitors[done.monitor];
        c.tallies[done.monitor].take(&done.outcome, monitor.rise, monitor.fall);
        c.last =
            Some(LastCheck { at_ms: now_ms(), kind: monitor.kind(), outcome: done.outcome.clone(), took: done.took });
        let now = tally::combined(&c.tallies);
        let changes = tally::changes(&c.reported, &now, &done.outcome);
        c.reported = now;
        for change in changes {
            let (pool, server) = done.key.clone();
            self.owner.health(pool, server, c.target.identity, change).await;
        }
    }
}

/// Runs one check on the runtime, within the limit.
fn spawn_check(c: &Checked, key: Key, monitor: usize, limit: Arc<Semaphore>, done: mpsc::Sender<Done>) {
    let (monitors, address, port, generation) =
        (Arc::clone(&c.target.monitors), c.target.address, c.target.port, c.generation);
    tokio::spawn(async move {
        let Ok(_permit) = limit.acquire_owned().await else { return };
        let started = Instant::now();
        let outcome = probe::check(&monitors[monitor], address, port).await;
        let _ = done.send(Done { key, generation, monitor, outcome, took: started.elapsed() }).await;
    });
}

/// Takes a new plan: servers that stay keep their tallies (if their
/// monitors are the same); new ones are checked at once, spread a little.
fn adopt(
    plan: &CheckPlan,
    checked: &mut HashMap<Key, Checked>,
    due: &mut BinaryHeap<Reverse<(Instant, Key, usize)>>,
    generation: &mut u64,
) {
    let keys: HashSet<Key> = plan.iter().map(|t| (t.pool.clone(), t.server.clone())).collect();
    checked.retain(|key, _| keys.contains(key));
    let now = Instant::now();
    let count = plan.len().max(1) as u32;
    for (i, target) in plan.iter().enumerate() {
        let key = (target.pool.clone(), target.server.clone());
        if checked.get(&key).is_some_and(|c| same_checks(&c.target, target)) {
            continue;
        }
        *generation += 1;
        let monitors = target.monitors.len();
        // A server its owner knows to be in maintenance stays so until its
        // replies are normal `rise` times.
        let tally = Tally::fresh(target.in_maintenance);
        checked.insert(
            key.clone(),
            Checked {
                target: target.clone(),
                generation: *generation,
                tallies: vec![tally; monitors],
                running: vec![false; monitors],
                reported: (Verdict::Unknown, target.in_maintenance),
                last: None,
            },
        );
        for (m, monitor) in target.monitors.iter().enumerate() {
            let spread = FIRST_CHECKS_WITHIN.min(monitor.interval) * (i as u32) / count;
            due.push(Reverse((now + spread, key.clone(), m)));
        }
    }
}

fn same_checks(a: &CheckTarget, b: &CheckTarget) -> bool {
    (a.address, a.port, a.identity) == (b.address, b.port, b.identity) && a.monitors == b.monitors
}

/// Servers an operator took out of service are not checked.
fn not_checked(snapshot: &Snapshot) -> HashSet<Key> {
    snapshot
        .pools
        .iter()
        .flat_map(|p| {
            p.servers
                .iter()
                .filter(|s| s.source == Source::Operator && matches!(s.admin, AdminState::Disabled { .. }))
                .map(|s| (p.name.clone(), s.name.clone()))
        })
        .collect()
}

fn view(checked: &HashMap<Key, Checked>) -> Checks {
    checked
        .iter()
        .map(|(key, c)| {
            let (verdict, maintenance) = tally::combined(&c.tallies);
            (key.clone(), ServerChecks { verdict, maintenance, last: c.last.clone() })
        })
        .collect()
}
