//! The owner's loop, and the typed handle the API uses to reach it.
//!
//! The owner runs on a thread of its own (with a single-threaded tokio
//! runtime for its timers), so its blocking work (flow-table walks, purges,
//! sending resets) never holds up the API's workers. It waits for the first
//! of: a command, the earliest drain deadline, cut or ramp step (a timer),
//! the next sweep (a timer), or shutdown; after each it lets queued
//! maintenance go where a place freed (`rolling`) and publishes a snapshot.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    sync::{mpsc, oneshot, watch},
    time::{Instant, sleep, sleep_until},
};

use super::{
    owner::{ControlError, Owner},
    reload::ReloadOptions,
    shared::{Decision, Others, StoredState},
    snapshot::Snapshot,
};
use crate::{
    config::Config,
    datapath::ops::DatapathOps,
    health::tally::Change as HealthChange,
    model::{ApiError, Change, DisableMode, ErrorCode, ReloadReport},
    servers::Source,
};

/// Milliseconds since the Unix epoch: the owner's clock.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

type Reply<T = Vec<Change>> = oneshot::Sender<Result<T, ApiError>>;

/// A change asked of the owner, with where to send its answer.
pub enum Command {
    Disable {
        pool: String,
        servers: Vec<String>,
        mode: DisableMode,
        force: bool,
        reply: Reply,
    },
    Enable {
        pool: String,
        servers: Vec<String>,
        force: bool,
        reply: Reply,
    },
    /// A verdict of the health monitors (no answer).
    Health {
        pool: String,
        server: String,
        identity: u64,
        change: HealthChange,
    },
    /// Re-read the config file (the API's `reload`, or SIGHUP).
    Reload {
        options: ReloadOptions,
        reply: Reply<ReloadReport>,
    },
    /// In a cluster: plan an operator's change, to be recorded in the store
    /// (nothing is applied yet).
    Decide {
        intent: Intent,
        reply: Reply<Decision>,
    },
    /// In a cluster: the states the store holds, as of a revision.
    ApplyShared {
        states: Vec<StoredState>,
        revision: i64,
    },
    /// In a cluster: the other nodes' live flows (none: not known).
    Others(Option<Others>),
    /// In a cluster: something the operator must know (an event).
    Note(String),
    /// Proposals the store did not record: another server of their pool
    /// changed first.
    NotRecorded(crate::servers::Batch),
    /// In a cluster: every live node has applied the last fleet reload.
    FleetReloaded,
}

/// An operator's change of servers' states.
#[derive(Clone, Debug)]
pub enum Intent {
    Disable { pool: String, servers: Vec<String>, mode: DisableMode, force: bool },
    Enable { pool: String, servers: Vec<String>, force: bool },
}

/// How the API reaches the owner. Changes queue in order; reads never come
/// here (they use the snapshot).
#[derive(Clone)]
pub struct OwnerHandle {
    commands: mpsc::Sender<Command>,
}

impl OwnerHandle {
    pub fn new(commands: mpsc::Sender<Command>) -> OwnerHandle {
        OwnerHandle { commands }
    }

    pub async fn disable(
        &self,
        pool: String,
        servers: Vec<String>,
        mode: DisableMode,
        force: bool,
    ) -> Result<Vec<Change>, ApiError> {
        self.ask(|reply| Command::Disable { pool, servers, mode, force, reply }).await
    }

    pub async fn enable(&self, pool: String, servers: Vec<String>, force: bool) -> Result<Vec<Change>, ApiError> {
        self.ask(|reply| Command::Enable { pool, servers, force, reply }).await
    }

    /// Tells the owner what the monitors found (in order; waits only if the
    /// owner's queue is full).
    pub async fn health(&self, pool: String, server: String, identity: u64, change: HealthChange) {
        let _ = self.commands.send(Command::Health { pool, server, identity, change }).await;
    }

    pub async fn reload(&self, force: bool, dry_run: bool) -> Result<ReloadReport, ApiError> {
        self.ask(|reply| Command::Reload { options: ReloadOptions { force, dry_run, fleet: false }, reply }).await
    }

    /// A fleet reload's part on this node: the servers it adds await the
    /// fleet ([`OwnerHandle::fleet_reloaded`]).
    pub async fn reload_for_fleet(&self, force: bool) -> Result<ReloadReport, ApiError> {
        self.ask(|reply| Command::Reload { options: ReloadOptions { force, dry_run: false, fleet: true }, reply }).await
    }

    /// Every live node has applied the fleet's reload: the servers it
    /// added take new flows.
    pub async fn fleet_reloaded(&self) {
        let _ = self.commands.send(Command::FleetReloaded).await;
    }

    /// Plans an operator's change for the cluster's store.
    pub async fn decide(&self, intent: Intent) -> Result<Decision, ApiError> {
        self.ask(|reply| Command::Decide { intent, reply }).await
    }

    /// Hands the owner what the store holds (in order).
    pub async fn apply_shared(&self, states: Vec<StoredState>, revision: i64) {
        let _ = self.commands.send(Command::ApplyShared { states, revision }).await;
    }

    pub async fn others(&self, others: Option<Others>) {
        let _ = self.commands.send(Command::Others(others)).await;
    }

    pub async fn note(&self, message: String) {
        let _ = self.commands.send(Command::Note(message)).await;
    }

    /// Hands back the owner's proposals the store refused as planned from
    /// a pool that changed meanwhile, to be planned again.
    pub async fn not_recorded(&self, batch: crate::servers::Batch) {
        let _ = self.commands.send(Command::NotRecorded(batch)).await;
    }

    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> Command) -> Result<T, ApiError> {
        let gone = || ApiError::new(ErrorCode::Failed, "the agent is stopping");
        let (reply, answer) = oneshot::channel();
        self.commands.send(command(reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

/// Runs `owner` until `shutdown` turns true (or every handle is gone), then
/// hands it back (to detach the datapath).
pub async fn run_owner<D: DatapathOps>(
    mut owner: Owner<D>,
    config_path: PathBuf,
    mut commands: mpsc::Receiver<Command>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    mut shutdown: watch::Receiver<bool>,
) -> Owner<D> {
    owner.publish_to(snapshots);
    let mut last_sweep: Option<Instant> = None;
    loop {
        let deadline = [owner.next_deadline(), owner.next_cut(), owner.next_ramp_step()].into_iter().flatten().min();
        let planned = last_sweep.map_or_else(Instant::now, |at| at + owner.sweep_interval());
        let next_sweep = sweep_at(planned, deadline.map(instant_of), owner.sweep_took());
        tokio::select! {
            biased;
            () = stopped(&mut shutdown) => break,
            command = commands.recv() => match command {
                Some(command) => {
                    provoked_fault("owner");
                    handle(&mut owner, &config_path, command)
                }
                None => break,
            },
            () = until_wall(deadline) => {
                owner.enforce_deadlines(now_ms());
                owner.enforce_cuts(now_ms());
                owner.climb_ramps(now_ms());
            }
            () = sleep_until(next_sweep) => {
                last_sweep = Some(Instant::now());
                owner.sweep(now_ms());
            }
        }
        // Whatever happened may have freed a place for a queued maintenance.
        owner.admit_queued(now_ms());
        owner.save_new_ramps();
        owner.publish(now_ms());
    }
    owner
}

/// Debug builds only: with `LB_FAIL=<part>` in the agent's environment,
/// that part panics (the owner: at its first command), so that an
/// end-to-end test sees the agent stop with the cause while forwarding goes
/// on (`tests/tests/agent.rs`). A release build has no such hook.
fn provoked_fault(part: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("LB_FAIL").is_ok_and(|fail| fail == part) {
        panic!("LB_FAIL={part}: a fault provoked by a test");
    }
    #[cfg(not(debug_assertions))]
    let _ = part;
}

fn handle<D: DatapathOps>(owner: &mut Owner<D>, config_path: &Path, command: Command) {
    match command {
        Command::Disable { pool, servers, mode, force, reply } => {
            let result = owner.disable(&pool, &servers, mode, force, now_ms());
            answer_seen(owner, result, reply);
        }
        Command::Enable { pool, servers, force, reply } => {
            let result = owner.enable(&pool, &servers, force, now_ms());
            answer_seen(owner, result, reply);
        }
        Command::Health { pool, server, identity, change } => {
            owner.apply_health(&pool, &server, identity, change, now_ms())
        }
        Command::Reload { options, reply } => {
            let result = reload(owner, config_path, options);
            answer_seen(owner, result, reply);
        }
        Command::Decide { intent, reply } => answer(decide(owner, intent), reply),
        Command::ApplyShared { states, revision } => owner.apply_shared(states, revision, now_ms()),
        Command::Others(others) => owner.set_others(others, now_ms()),
        Command::Note(message) => owner.note(message, now_ms()),
        Command::NotRecorded(batch) => owner.not_recorded(batch, now_ms()),
        Command::FleetReloaded => owner.fleet_reloaded(now_ms()),
    }
}

/// Answers a change once readers can see all of it, and once the ramps it
/// began are saved (an agent that dies right after the answer goes on with
/// them when restarted): the snapshot is published first (a reload forgets
/// removed servers after its last change's own publication), so a read
/// that follows the answer, such as `lb pool show` after `lb reload`, sees
/// the change whole.
fn answer_seen<D: DatapathOps, T>(owner: &mut Owner<D>, result: Result<T, ControlError>, reply: Reply<T>) {
    owner.save_new_ramps();
    owner.publish(now_ms());
    answer(result, reply);
}

/// Reads and validates the config file, then applies it.
fn reload<D: DatapathOps>(
    owner: &mut Owner<D>,
    config_path: &Path,
    options: ReloadOptions,
) -> Result<ReloadReport, ControlError> {
    let result = Config::load(config_path)
        // With its cause ("No such file or directory"), as `lb agent
        // --check` says it.
        .map_err(|e| ControlError::InvalidConfig(format!("{:#}", anyhow::Error::from(e))))
        .and_then(|config| owner.reload(config, options, now_ms()));
    if !options.dry_run {
        owner.note_reload(result.is_ok(), now_ms());
    }
    result
}

fn decide<D: DatapathOps>(owner: &Owner<D>, intent: Intent) -> Result<Decision, ControlError> {
    let now = now_ms();
    match intent {
        Intent::Disable { pool, servers, mode, force } => {
            let plan = owner.plan_disable(&pool, &servers, mode, force, now)?;
            owner.decide(&pool, &plan, Source::Operator, now)
        }
        Intent::Enable { pool, servers, force } => {
            let plan = owner.plan_enable(&pool, &servers, force)?;
            owner.decide(&pool, &plan, Source::Operator, now)
        }
    }
}

fn answer<T>(result: Result<T, ControlError>, reply: Reply<T>) {
    let result = result.map_err(|e| ApiError::from(&e));
    if let Err(e) = &result {
        log::info!("change refused: {}", e.message);
    }
    // The asker may have gone: the change stands all the same.
    let _ = reply.send(result);
}

/// Returns once `shutdown` turns true (or its sender is gone).
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    // The guard wait_for returns is dropped here, not held across an await.
    let _ = shutdown.wait_for(|stop| *stop).await.is_ok();
}

/// When to sweep: as `planned`, unless the sweep (it holds the owner for
/// about `took`) would still run at `deadline`, an instant promised to
/// every node's flows: then right after it.
fn sweep_at(planned: Instant, deadline: Option<Instant>, took: Duration) -> Instant {
    match deadline {
        Some(at) if planned <= at && planned + took * 2 + Duration::from_millis(5) > at => {
            at + Duration::from_millis(1)
        }
        _ => planned,
    }
}

/// The monotonic instant of a wall-clock time (ms since the Unix epoch).
fn instant_of(at_ms: u64) -> Instant {
    let now = Instant::now();
    now + Duration::from_millis(at_ms.saturating_sub(now_ms()))
}

/// Sleeps until the wall-clock instant `at_ms`, or forever without one.
/// Woken early by a wall clock set back, the owner checks again.
async fn until_wall(at_ms: Option<u64>) {
    match at_ms {
        Some(at) => sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::fake_datapath::{owner_of, web_config_text};

    /// A reload that removes a server at once forgets it after its last
    /// change was published: the answer comes once a read sees it gone.
    #[test]
    fn a_reload_is_answered_once_a_read_sees_all_of_it() {
        let rule = "graceful_disable_timeout = \"0\"";
        let text = |servers: &[(&str, &str)]| web_config_text("answer-seen", rule, servers, &[80]);
        let path = std::env::temp_dir().join(format!("lb-runtime-answer-seen-{}.toml", std::process::id()));
        std::fs::write(&path, text(&[("a", ""), ("b", ""), ("c", "")])).unwrap();
        let mut owner = owner_of(Config::load(&path).unwrap());
        let (snapshots, seen) = watch::channel(Arc::new(owner.snapshot(now_ms())));
        owner.publish_to(snapshots);
        std::fs::write(&path, text(&[("a", ""), ("b", "")])).unwrap();
        let (reply, mut answer) = oneshot::channel();
        handle(&mut owner, &path, Command::Reload { options: ReloadOptions::default(), reply });
        let _ = std::fs::remove_file(&path);
        assert!(answer.try_recv().expect("answered").is_ok(), "the reload is taken");
        let listed: Vec<String> = seen.borrow().pools[0].servers.iter().map(|s| s.name.clone()).collect();
        assert_eq!(listed, ["a", "b"], "a read after the answer sees c gone");
    }

    /// An enable that begins a ramp is answered once the ramp is saved: an
    /// agent killed right after the answer goes on with it when restarted
    /// (a CI run killed one between the two, and it came back at 100%).
    #[test]
    fn a_ramp_a_change_begins_is_saved_before_the_change_is_answered() {
        let text = web_config_text("ramp-saved", "ramp_up = \"120s\"", &[("a", ""), ("b", ""), ("c", "")], &[80]);
        let mut owner = owner_of(Config::parse(&text, Path::new("ramp-saved.toml")).unwrap());
        let graceful = DisableMode::Graceful { timeout_ms: None };
        owner.disable("web", &["a".to_owned()], graceful, false, now_ms()).unwrap();
        let (reply, mut answer) = oneshot::channel();
        let enable = Command::Enable { pool: "web".into(), servers: vec!["a".into()], force: false, reply };
        handle(&mut owner, Path::new("unused.toml"), enable);
        assert!(answer.try_recv().expect("answered").is_ok(), "the enable is taken");
        let saved = crate::agent::state_file::load(&owner.config().state_file).expect("the state file");
        let a = &saved.servers[&("web".to_owned(), "a".to_owned())];
        assert!(a.ramp.is_some(), "the ramp is in the state file when the enable is answered: {a:?}");
    }

    /// The operator reads why the file could not be read, not only that.
    #[test]
    fn a_reload_of_a_config_file_gone_says_why_and_changes_nothing() {
        let text = web_config_text("reload-gone", "", &[("a", ""), ("b", "")], &[80]);
        let mut owner = owner_of(Config::parse(&text, Path::new("reload-gone.toml")).unwrap());
        let gone = std::env::temp_dir().join(format!("lb-runtime-gone-{}.toml", std::process::id()));
        let Err(ControlError::InvalidConfig(said)) = reload(&mut owner, &gone, ReloadOptions::default()) else {
            panic!("a file that is not there is no config")
        };
        assert!(
            said.starts_with("cannot read config") && said.ends_with("No such file or directory (os error 2)"),
            "{said}"
        );
        assert_eq!(owner.config().pools["web"].servers.len(), 2, "nothing changed");
    }

    #[test]
    fn a_sweep_that_would_hold_the_owner_at_a_deadline_waits_until_after_it() {
        let now = Instant::now();
        let took = Duration::from_millis(30);
        let deadline = now + Duration::from_millis(40);
        assert_eq!(sweep_at(now, Some(deadline), took), deadline + Duration::from_millis(1), "it would overlap");
        assert_eq!(sweep_at(now, Some(now + Duration::from_secs(1)), took), now, "far from the deadline");
        assert_eq!(sweep_at(now, None, took), now);
        let after = now + Duration::from_millis(50);
        assert_eq!(sweep_at(after, Some(deadline), took), after, "planned after the deadline");
    }
}
