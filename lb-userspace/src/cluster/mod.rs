//! Many nodes, one administrative state: with a `[cluster]` section, the
//! servers' states live in a shared store (etcd), and every node applies
//! them. This module is the node's side of it: joining (the states read
//! before XDP is attached), following the store (`sync`), publishing this
//! node and seeing the others (`presence`), and recording operators'
//! decisions (`Cluster::record`). The owner stays the one writer of this
//! node's state and maps; the store is the one source of the fleet's
//! decisions. Without `[cluster]` none of this runs.

pub mod announce;
pub mod maintenance;
pub mod presence;
pub mod replicate;
pub mod store;
pub mod sync;

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use self::store::{Current, Recorded, ReloadRequest, Store, StoreError};
use crate::{
    agent::{shared::StoredState, snapshot::Snapshot},
    config::ClusterConfig,
    model::{ApiError, ErrorCode, NodeReload, NodeView, NodesView},
    servers::{AdminState, Guard, Proposal},
};

/// What a starting node got from the store.
pub struct Joined {
    pub store: Store,
    /// The states and their revision; none if the store did not answer
    /// (the node starts from its state file, and says it is stale).
    pub states: Option<(Vec<StoredState>, i64)>,
}

/// Connects and reads the states, within the config's timeout.
pub async fn join(config: &ClusterConfig) -> Result<Joined, StoreError> {
    let store = Store::connect(config).await?;
    let states = match tokio::time::timeout(config.timeout, store.states()).await {
        Ok(Ok(states)) => Some(states),
        Ok(Err(e)) => {
            log::warn!("cluster: {e}; starting from the state file: the states may be stale until it answers");
            None
        }
        Err(_) => {
            log::warn!(
                "cluster: the store did not answer within {:?}; starting from the state file: the states may \
                 be stale until it answers",
                config.timeout
            );
            None
        }
    };
    Ok(Joined { store, states })
}

/// The API's way to the cluster: records decisions, shows the nodes.
pub struct Cluster {
    pub store: Store,
    /// This node's name.
    pub node: String,
    pub timeout: Duration,
    pub view: watch::Receiver<Arc<NodesView>>,
    /// Every node's administrative state, as last read.
    pub admins: watch::Receiver<presence::Admins>,
    /// This node's flow replication (none: off).
    pub replication: Option<Arc<replicate::SyncCounts>>,
}

impl Cluster {
    /// Records an operator's decision in the store, then waits (within the
    /// store's timeout) until this node applies it, so that the answer's
    /// reader sees it here.
    pub async fn record(
        &self,
        proposals: &[Proposal],
        guards: &[Guard],
        snapshots: &watch::Receiver<Arc<Snapshot>>,
    ) -> Result<i64, Refused> {
        let revision = self.record_within_timeout(proposals, guards).await?;
        self.applied_here(revision, snapshots).await;
        Ok(revision)
    }

    /// Waits (within the store's timeout) until this node applies `revision`.
    pub async fn applied_here(&self, revision: i64, snapshots: &watch::Receiver<Arc<Snapshot>>) {
        let mut snapshots = snapshots.clone();
        let applied = snapshots.wait_for(|s| s.shared_revision.is_some_and(|r| r >= revision));
        if tokio::time::timeout(self.timeout, applied).await.is_err() {
            log::warn!("cluster: revision {revision} is recorded but not applied here yet");
        }
    }
}

impl Cluster {
    /// Asks every node to re-read its own config file, then waits (within
    /// the store's timeout) until every live node says how it fared.
    pub async fn reload(&self, force: bool) -> Result<Vec<NodeReload>, ApiError> {
        let request = ReloadRequest { by: self.node.clone(), force };
        let asked = tokio::time::timeout(self.timeout, self.store.request_reload(&request)).await;
        let revision = match asked {
            Ok(Ok(revision)) => revision,
            Ok(Err(e)) => return Err(unreachable(&late(&e.to_string()))),
            Err(_) => return Err(unreachable(&late(&format!("no answer within {:?}", self.timeout)))),
        };
        Ok(every_node_reloaded(&self.view, revision, self.timeout).await)
    }
}

/// Waits (within `timeout`) until every live node says how it fared with
/// the fleet reload asked at `revision`; each live node's outcome, none for
/// those that did not answer in time.
pub async fn every_node_reloaded(
    view: &watch::Receiver<Arc<NodesView>>,
    revision: i64,
    timeout: Duration,
) -> Vec<NodeReload> {
    let mut view = view.clone();
    let answered = |v: &NodesView| v.nodes.iter().filter(|n| n.up).all(|n| reloaded(n, revision).is_some());
    let _ = tokio::time::timeout(timeout, view.wait_for(|v| answered(v))).await;
    let view = view.borrow();
    let nodes = view.nodes.iter().filter(|n| n.up);
    nodes.map(|n| NodeReload { node: n.node.clone(), outcome: reloaded(n, revision) }).collect()
}

/// A node's outcome of the reload asked at `revision` (or of a later one).
fn reloaded(node: &NodeView, revision: i64) -> Option<crate::model::ReloadOutcome> {
    node.reload.clone().filter(|r| r.request >= revision)
}

/// How long an attempt to record may take before it is made again (a
/// member gone, a leader being elected: another member may answer).
const ATTEMPT: Duration = Duration::from_millis(700);
/// The pause between two attempts.
const RETRY: Duration = Duration::from_millis(100);

impl Cluster {
    /// Tries to record `proposals` until the store answers or the timeout
    /// passes. Trying again is safe: each key's revision is checked, so an
    /// attempt whose answer was lost but which the store took shows, at the
    /// next attempt, as a "conflict" with exactly the states proposed, at
    /// their revision: taken once.
    async fn record_within_timeout(&self, proposals: &[Proposal], guards: &[Guard]) -> Result<i64, Refused> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let why = match tokio::time::timeout(left.min(ATTEMPT), self.store.record(proposals, guards)).await {
                Ok(Ok(Recorded::At(revision))) => return Ok(revision),
                Ok(Ok(Recorded::PoolChanged(revision))) => return Err(Refused::PoolChanged(revision)),
                Ok(Ok(Recorded::Conflict(now))) => match taken_before(proposals, &now) {
                    Some(revision) if attempts > 1 => return Ok(revision),
                    _ if moved_on(proposals, &now) => {
                        return Err(Refused::MovedOn(now.iter().map(|c| c.revision).max().unwrap_or(0)));
                    }
                    _ => return Err(conflict(&now).into()),
                },
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {:?}", left.min(ATTEMPT)),
            };
            if tokio::time::Instant::now() + RETRY >= deadline {
                let why = format!("{why}; {attempts} attempt(s) within {:?}", self.timeout);
                return Err(unreachable(&late(&why)).into());
            }
            log::debug!("cluster: recording a decision: {why}; trying again");
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// Why a decision was not recorded.
#[derive(Debug)]
pub enum Refused {
    /// Said to the operator.
    Api(ApiError),
    /// Servers it was planned from moved meanwhile (by this revision), but
    /// by no other decision against it: a drain ended by itself, or the
    /// server already is as asked (the same command through another node,
    /// or an earlier request the store recorded late after losing its
    /// leader). To be planned again from there: what is already so is then
    /// unchanged, and the rest is recorded.
    MovedOn(i64),
    /// Another server of the pool changed meanwhile (by this revision):
    /// to be planned again from there (the pool's limits checked anew).
    PoolChanged(i64),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Refused {
        Refused::Api(e)
    }
}

/// Whether every server that moved meanwhile only ended the drain the
/// decision was planned from, or already is as the decision asks.
fn moved_on(proposals: &[Proposal], now: &[Current]) -> bool {
    proposals.iter().zip(now).all(|(p, c)| {
        c.revision == p.expected_revision
            || c.state
                .as_ref()
                .is_some_and(|s| crate::servers::shared::ends(&p.from, &s.admin) || already(&p.state.admin, &s.admin))
    })
}

/// Whether `current` already is what `asked` makes a server, as a node
/// on its own plans it (`servers::state`): enabling an enabled server, or
/// disabling a disabled one, changes nothing. A drain is not: asked again,
/// it sets a new deadline.
fn already(asked: &AdminState, current: &AdminState) -> bool {
    matches!(
        (asked, current),
        (AdminState::Enabled, AdminState::Enabled) | (AdminState::Disabled { .. }, AdminState::Disabled { .. })
    )
}

/// If the store holds exactly what was proposed (an earlier attempt was
/// taken), the revision it was taken at.
fn taken_before(proposals: &[Proposal], now: &[Current]) -> Option<i64> {
    let same = proposals.len() == now.len()
        && proposals
            .iter()
            .zip(now)
            .all(|(p, c)| c.state.as_ref() == Some(&p.state) && c.revision > p.expected_revision);
    same.then(|| now.iter().map(|c| c.revision).max().unwrap_or(0))
}

fn unreachable(why: &str) -> ApiError {
    ApiError::new(ErrorCode::StoreUnreachable, format!("the cluster store is unreachable; nothing was changed ({why})"))
}

/// A request that timed out may still be recorded by a store that lost
/// its leader mid-commit: said, so the operator reads before retrying.
fn late(why: &str) -> String {
    format!("{why}; should the store record it late, every node applies it then: read the state before retrying")
}

fn conflict(now: &[Current]) -> ApiError {
    let states: Vec<String> = now
        .iter()
        .map(|c| match &c.state {
            Some(s) => format!("{}/{} is {} (through node {})", c.pool, c.server, s.admin.label(), s.by),
            None => format!("{}/{}", c.pool, c.server),
        })
        .collect();
    ApiError::new(
        ErrorCode::Conflict,
        format!(
            "changed meanwhile through another node, whose change came first in the store's order: {}; \
             nothing was changed by this request",
            states.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::{AdminState, DisableReason, SharedState, Source};

    fn proposal(from: AdminState, to: AdminState, expected_revision: i64) -> Proposal {
        let state = SharedState { admin: to, source: Source::Operator, by: "n1".into() };
        Proposal { pool: "web".into(), server: "a".into(), state, expected_revision, from }
    }

    fn current(admin: AdminState, revision: i64) -> Current {
        let state = Some(SharedState { admin, source: Source::Operator, by: "n2".into() });
        Current { pool: "web".into(), server: "a".into(), state, revision }
    }

    #[test]
    fn a_drain_that_ended_by_itself_or_the_state_asked_is_no_conflict_but_another_decision_is() {
        let draining = AdminState::Draining { since_ms: 1, deadline_ms: None };
        let drained = AdminState::Disabled { since_ms: 2, reason: DisableReason::Drained };
        let cut = AdminState::Disabled { since_ms: 2, reason: DisableReason::Immediate };
        let enable = [proposal(draining, AdminState::Enabled, 5)];
        assert!(moved_on(&enable, &[current(drained, 6)]), "the drain's own end: planned again");
        assert!(!moved_on(&enable, &[current(cut, 6)]), "another operator's disable: a conflict");
        assert!(!moved_on(&[proposal(AdminState::Enabled, cut, 5)], &[current(draining, 6)]));
        // The state asked, recorded meanwhile (the same command through
        // another node, or this one's earlier request recorded late): no
        // conflict, whoever recorded it and whenever.
        assert!(moved_on(&[proposal(cut, AdminState::Enabled, 5)], &[current(AdminState::Enabled, 6)]));
        assert!(moved_on(&[proposal(AdminState::Enabled, cut, 5)], &[current(drained, 6)]), "disabled already");
        let later = AdminState::Draining { since_ms: 1, deadline_ms: Some(9) };
        let drain = proposal(AdminState::Enabled, later, 5);
        assert!(!moved_on(&[drain], &[current(draining, 6)]), "another drain: its deadline is another decision");
        // Of two servers, one already as asked and one another operator's.
        let both = [proposal(cut, AdminState::Enabled, 5), proposal(AdminState::Enabled, cut, 5)];
        assert!(!moved_on(&both, &[current(AdminState::Enabled, 6), current(draining, 6)]));
        // An attempt whose answer was lost but which the store took.
        let taken = [proposal(draining, AdminState::Enabled, 5)];
        let now = [Current { state: Some(taken[0].state.clone()), ..current(AdminState::Enabled, 7) }];
        assert_eq!(taken_before(&taken, &now), Some(7));
        assert_eq!(taken_before(&taken, &[current(AdminState::Enabled, 7)]), None, "another node's state");
    }
}
