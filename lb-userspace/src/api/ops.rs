//! The API's operations, whatever the transport: reads answer from the
//! owner's latest snapshot and the datapath's counters at once (never
//! waiting for the owner); changes go to the owner, in order.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::watch;

use super::history;
use crate::model::{
    ApiError, Change, CheckResult, CheckView, ErrorCode, Event, FlowTableUse, HealthStatus, HealthView,
    LeavingServiceView, NodesView, PoolHistory, PoolSummary, PoolView, Request, ServerHistory, ServerState, ServerView,
    Startup, Stats,
};
use crate::{
    agent::{
        runtime::{Intent, OwnerHandle},
        snapshot::{ServerSnapshot, Snapshot},
    },
    cluster::{Cluster, Refused},
    datapath::counters::Counters,
    health::{Checks, LastCheck, ServerChecks, probe::Outcome, tally::Verdict},
    servers::{health::Health, state::time_left},
};

pub struct Ops {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    checks: watch::Receiver<Arc<Checks>>,
    counters: Counters,
    owner: OwnerHandle,
    startup: Startup,
    /// In a cluster: where changes are recorded (none: one node).
    cluster: Option<Cluster>,
    /// Each server's recent past, for the dashboard's charts.
    history: history::History,
}

impl Ops {
    pub fn new(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        checks: watch::Receiver<Arc<Checks>>,
        counters: Counters,
        owner: OwnerHandle,
        startup: Startup,
    ) -> Ops {
        Ops { snapshots, checks, counters, owner, startup, cluster: None, history: Default::default() }
    }

    /// Records changes in the cluster's store from now on.
    pub fn in_cluster(mut self, cluster: Cluster) -> Ops {
        self.cluster = Some(cluster);
        self
    }

    /// Answers one request.
    pub async fn handle(&self, request: Request) -> Result<Value, ApiError> {
        match request {
            Request::PoolList => json(self.pool_list()),
            Request::PoolShow { pool } => json(self.pool_show(&pool)?),
            Request::PoolHistory { pool } => json(self.pool_history(&pool)?),
            Request::Disable { pool, servers, mode, force } => match &self.cluster {
                None => json(self.owner.disable(pool, servers, mode, force).await?),
                Some(cluster) => json(self.decide(cluster, Intent::Disable { pool, servers, mode, force }).await?),
            },
            Request::Enable { pool, servers, force } => match &self.cluster {
                None => json(self.owner.enable(pool, servers, force).await?),
                Some(cluster) => json(self.decide(cluster, Intent::Enable { pool, servers, force }).await?),
            },
            Request::Nodes => json(self.nodes()?),
            Request::NodeDisable { node, mode, force } => json(self.cluster()?.node_disable(&node, mode, force).await?),
            Request::NodeEnable { node } => json(self.cluster()?.node_enable(&node).await?),
            Request::Events { since } => json(self.events(since)),
            Request::Stats => json(self.stats()?),
            Request::Reload { force, dry_run, this_node } => match &self.cluster {
                Some(cluster) if !dry_run && !this_node => json(self.reload_fleet(cluster, force).await?),
                _ => json(self.owner.reload(force, dry_run).await?),
            },
        }
    }

    /// In a cluster: plans a change here, records it in the store (every
    /// node applies it from there), and answers once this node has.
    /// A drain that ended by itself meanwhile (its deadline, its last flow),
    /// or a server already as asked (the same command through another
    /// node, or an earlier request recorded late), is no other operator's
    /// decision: the change is planned again from the store's state, up to
    /// a few times.
    async fn decide(&self, cluster: &Cluster, intent: Intent) -> Result<Vec<Change>, ApiError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let decision = self.owner.decide(intent.clone()).await?;
            match cluster.record(&decision.proposals, &decision.guards, &self.snapshots).await {
                Ok(_) => return Ok(decision.changes),
                Err(Refused::MovedOn(revision) | Refused::PoolChanged(revision)) if attempts < 3 => {
                    log::info!(
                        "cluster: a server moved on or the pool changed while {intent:?} was recorded: planned again"
                    );
                    cluster.applied_here(revision, &self.snapshots).await;
                }
                Err(Refused::MovedOn(_)) => {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "the servers kept moving meanwhile (drains ending, the same change through other nodes): \
                         ask again",
                    ));
                }
                Err(Refused::PoolChanged(_)) => {
                    return Err(ApiError::new(
                        ErrorCode::Conflict,
                        "the pool's other servers kept changing through other nodes meanwhile: nothing was changed; \
                         ask again",
                    ));
                }
                Err(Refused::Api(e)) => return Err(e),
            }
        }
    }

    /// In a cluster: this node's file is checked first (a dry run: refused
    /// here, nothing is asked of the fleet), then every node is asked to
    /// re-read its own file; the answer has each live node's outcome.
    async fn reload_fleet(&self, cluster: &Cluster, force: bool) -> Result<crate::model::ReloadReport, ApiError> {
        let planned = self.owner.reload(force, true).await?;
        let nodes = cluster.reload(force).await?;
        let here = nodes.iter().find(|n| n.node == cluster.node).and_then(|n| n.outcome.as_ref());
        Ok(crate::model::ReloadReport { applied: here.is_some_and(|o| o.ok), changes: planned.changes, nodes })
    }

    /// In a cluster: a server's live flows on each node that is up.
    fn flows_by_node(&self, pool: &str, server: &str) -> std::collections::BTreeMap<String, u64> {
        let Some(cluster) = &self.cluster else { return Default::default() };
        let key = format!("{pool}/{server}");
        let view = cluster.view.borrow();
        view.nodes
            .iter()
            .filter(|n| n.up)
            .map(|n| (n.node.clone(), n.flows_by_server.get(&key).copied().unwrap_or(0)))
            .collect()
    }

    /// In a cluster: what each live node's own monitors find of a server.
    fn health_by_node(&self, pool: &str, server: &str) -> std::collections::BTreeMap<String, String> {
        let Some(cluster) = &self.cluster else { return Default::default() };
        let key = format!("{pool}/{server}");
        let view = cluster.view.borrow();
        let label = |n: &crate::model::NodeView| match n.down.get(&key) {
            Some(reason) => format!("DOWN ({reason})"),
            None => "UP".to_owned(),
        };
        view.nodes.iter().filter(|n| n.up).map(|n| (n.node.clone(), label(n))).collect()
    }

    /// The cluster's nodes (refused without a `[cluster]` section).
    pub fn nodes(&self) -> Result<NodesView, ApiError> {
        let cluster = self.cluster()?;
        let mut view = NodesView::clone(&cluster.view.borrow());
        view.replication = cluster.replication.as_ref().map(|counts| counts.view());
        Ok(view)
    }

    fn cluster(&self) -> Result<&Cluster, ApiError> {
        self.cluster.as_ref().ok_or_else(|| {
            ApiError::new(ErrorCode::NotInCluster, "this agent runs alone: its config has no [cluster] section")
        })
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        Arc::clone(&self.snapshots.borrow())
    }

    pub fn pool_list(&self) -> Vec<PoolSummary> {
        let snapshot = self.snapshot();
        snapshot
            .pools
            .iter()
            .map(|pool| {
                let count = |state: ServerState| pool.servers.iter().filter(|s| s.label.state == state).count();
                let new_flows =
                    pool.servers.iter().map(|s| self.counters.server(s.id).map_or(0, |t| t.new_flows)).sum();
                PoolSummary {
                    pool: pool.name.clone(),
                    services: pool.services.clone(),
                    servers: pool.servers.len(),
                    in_service: pool.servers.iter().filter(|s| s.takes_new_flows).count(),
                    down: pool.servers.iter().filter(|s| s.health.down.is_some()).count(),
                    enabled: count(ServerState::Enabled),
                    draining: count(ServerState::Draining),
                    disabled: count(ServerState::Disabled),
                    active_flows: pool.servers.iter().map(|s| s.active_flows).sum(),
                    new_flows,
                }
            })
            .collect()
    }

    /// Each server of a pool: its live flows and new flows over the last
    /// minutes (`history`).
    pub fn pool_history(&self, name: &str) -> Result<PoolHistory, ApiError> {
        let snapshot = self.snapshot();
        let pool = snapshot
            .pool(name)
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownPool, format!("unknown pool \"{name}\"")))?;
        let servers = pool
            .servers
            .iter()
            .map(|s| ServerHistory { name: s.name.clone(), points: self.history.of(name, &s.name) })
            .collect();
        Ok(PoolHistory { pool: name.to_owned(), every_ms: history::EVERY.as_millis() as u64, servers })
    }

    /// Takes one sample of every server for the history.
    pub fn record_history(&self, now_ms: u64) {
        let snapshot = self.snapshot();
        let readings = snapshot.pools.iter().flat_map(|pool| {
            pool.servers.iter().map(|s| {
                let new_flows = self.counters.server(s.id).map_or(0, |c| c.new_flows);
                (pool.name.clone(), s.name.clone(), s.active_flows, new_flows)
            })
        });
        self.history.record(now_ms, readings.collect::<Vec<_>>());
    }

    /// A pool's servers with their states, live flow counts (as of the last
    /// count: `counted_ms_ago`) and traffic.
    pub fn pool_show(&self, name: &str) -> Result<PoolView, ApiError> {
        let snapshot = self.snapshot();
        let now = crate::agent::runtime::now_ms();
        let pool = snapshot
            .pool(name)
            .ok_or_else(|| ApiError::new(ErrorCode::UnknownPool, format!("unknown pool \"{name}\"")))?;
        let checks = Arc::clone(&self.checks.borrow());
        let servers = pool
            .servers
            .iter()
            .map(|s| {
                let traffic = self.counters.server(s.id).unwrap_or_default();
                ServerView {
                    name: s.name.clone(),
                    address: endpoints(s),
                    weight: s.weight,
                    state: s.label.state,
                    why: s.label.why,
                    active_flows: s.active_flows,
                    resetting: s.resetting,
                    deadline_left_ms: s.admin.deadline_ms().map(|d| time_left(d, now).as_millis() as u64),
                    deadline_ms: s.admin.deadline_ms(),
                    since_ms: s.admin.since_ms(),
                    flows_by_node: self.flows_by_node(&pool.name, &s.name),
                    source: s.source,
                    removing: s.removing,
                    takes_new_flows: s.takes_new_flows,
                    awaiting_fleet: s.awaiting_fleet,
                    ramp_up_percent: s.ramp.map(|r| r.percent()),
                    // A monitored server not yet in the checks' view (they
                    // are published twice a second) is unchecked so far.
                    health: s.monitored.then(|| {
                        let unchecked = ServerChecks::default();
                        let found = checks.get(&(name.to_owned(), s.name.clone())).unwrap_or(&unchecked);
                        HealthView {
                            by_node: self.health_by_node(&pool.name, &s.name),
                            queued: place_in_line(&pool.servers, s),
                            ..health_view(&s.health, found, now)
                        }
                    }),
                    packets_to: traffic.packets_to,
                    bytes_to: traffic.bytes_to,
                    packets_from: traffic.packets_from,
                    bytes_from: traffic.bytes_from,
                    new_flows: traffic.new_flows,
                }
            })
            .collect();
        Ok(PoolView {
            pool: pool.name.clone(),
            services: pool.services.clone(),
            servers,
            leaving_services: pool
                .leaving_services
                .iter()
                .map(|l| LeavingServiceView {
                    service: l.label.clone(),
                    active_flows: l.active_flows,
                    deadline_left_ms: l.deadline_ms.map(|d| time_left(d, now).as_millis() as u64),
                })
                .collect(),
            counted_ms_ago: snapshot.counted_at_ms.map_or(0, |at| now.saturating_sub(at)),
            min_in_service: pool.min_in_service,
            max_in_maintenance: pool.max_in_maintenance,
        })
    }

    pub fn events(&self, since: Option<u64>) -> Vec<Event> {
        let after = since.unwrap_or(0);
        self.snapshot().events.iter().filter(|e| e.id > after).cloned().collect()
    }

    /// Every snapshot as the owner publishes it (for live streams).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    pub fn stats(&self) -> Result<Stats, ApiError> {
        let outcomes = self
            .counters
            .outcomes()
            .map_err(|e| ApiError::new(ErrorCode::Failed, format!("cannot read the outcome counters: {e}")))?;
        let evictions = self
            .counters
            .evictions()
            .map_err(|e| ApiError::new(ErrorCode::Failed, format!("cannot read the eviction counters: {e}")))?;
        let snapshot = self.snapshot();
        Ok(Stats {
            outcomes: outcomes.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            flow_table: FlowTableUse {
                max_flows: snapshot.max_flows,
                flows: snapshot.flows_in_table,
                evictions: evictions.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            },
            reloads: snapshot.reloads,
            startup: self.startup.clone(),
        })
    }
}

/// A queued server's place in its pool's line for maintenance (1: next).
fn place_in_line(servers: &[ServerSnapshot], server: &ServerSnapshot) -> Option<usize> {
    let since = |s: &ServerSnapshot| s.health.queued.as_ref().map(|q| (q.since_ms, s.name.clone()));
    let mine = since(server)?;
    Some(1 + servers.iter().filter_map(since).filter(|other| *other < mine).count())
}

/// What applies (the owner's view) and what the checks found.
fn health_view(applied: &Health, checks: &ServerChecks, now_ms: u64) -> HealthView {
    let status = match (&applied.down, &checks.verdict) {
        (Some(_), _) => HealthStatus::Down,
        (None, Verdict::Unknown) => HealthStatus::Unchecked,
        (None, _) => HealthStatus::Up,
    };
    HealthView {
        status,
        reason: applied.down.as_ref().map(|d| d.reason.clone()),
        fail_open: applied.fail_open && applied.down.is_some(),
        maintenance: applied.maintenance,
        queued: None,
        last_check: checks.last.as_ref().map(|last| check_view(last, now_ms)),
        by_node: Default::default(),
    }
}

fn check_view(last: &LastCheck, now_ms: u64) -> CheckView {
    let (result, status, reason, maintenance, announced) = match &last.outcome {
        Outcome::Pass { status } => (CheckResult::Pass, *status, None, None, None),
        Outcome::Fail(reason) => (CheckResult::Fail, None, Some(reason.clone()), None, None),
        Outcome::Maintenance { matched, announced } => {
            (CheckResult::Maintenance, None, None, Some(matched.clone()), announced.map(|d| d.as_millis() as u64))
        }
    };
    CheckView {
        monitor: last.kind.to_owned(),
        result,
        status,
        reason,
        maintenance,
        announced_ms: announced,
        latency_ms: last.took.as_secs_f64() * 1e3,
        ago_ms: now_ms.saturating_sub(last.at_ms),
    }
}

fn json(value: impl Serialize) -> Result<Value, ApiError> {
    serde_json::to_value(value).map_err(|e| ApiError::new(ErrorCode::Failed, format!("cannot encode the answer: {e}")))
}

/// A server's endpoints as people read them: "10.0.1.2:8080", with its
/// IPv6 one beside it in dual stack ("10.0.1.2:8080, [fd00:1::2]:8080").
fn endpoints(s: &ServerSnapshot) -> String {
    let first = std::net::SocketAddr::new(s.address, s.port).to_string();
    match s.address6 {
        Some(six) => format!("{first}, {}", std::net::SocketAddr::new(six.into(), s.port)),
        None => first,
    }
}
