//! Many nodes, one administrative state: with a `[cluster]` section, the
//! servers' states live in a shared store (etcd), and every node applies
//! them. This module is the node's side of it: joining (the states read
//! before XDP is attached), following the store (`sync`), publishing this
//! node and seeing the others (`presence`), and recording operators'
//! decisions (`Cluster::record`). The owner stays the one writer of this
//! node's state and maps; the store is the one source of the fleet's
//! decisions. Without `[cluster]` none of this runs.

pub mod presence;
pub mod store;
pub mod sync;

use std::{sync::Arc, time::Duration};

use tokio::sync::watch;

use self::store::{Recorded, ReloadRequest, Store, StoreError};
use crate::{
    agent::{shared::StoredState, snapshot::Snapshot},
    config::ClusterConfig,
    model::{ApiError, ErrorCode, NodeReload, NodeView, NodesView},
    servers::Proposal,
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
}

impl Cluster {
    /// Records an operator's decision in the store, then waits (within the
    /// store's timeout) until this node applies it, so that the answer's
    /// reader sees it here.
    pub async fn record(
        &self,
        proposals: &[Proposal],
        snapshots: &watch::Receiver<Arc<Snapshot>>,
    ) -> Result<i64, ApiError> {
        let recorded = tokio::time::timeout(self.timeout, self.store.record(proposals)).await;
        let revision = match recorded {
            Ok(Ok(Recorded::At(revision))) => revision,
            Ok(Ok(Recorded::Conflict(now))) => return Err(conflict(&now)),
            Ok(Err(e)) => return Err(unreachable(&late(&e.to_string()))),
            Err(_) => return Err(unreachable(&late(&format!("no answer within {:?}", self.timeout)))),
        };
        let mut snapshots = snapshots.clone();
        let applied = snapshots.wait_for(|s| s.shared_revision.is_some_and(|r| r >= revision));
        if tokio::time::timeout(self.timeout, applied).await.is_err() {
            log::warn!("cluster: revision {revision} is recorded but not applied here yet");
        }
        Ok(revision)
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
        let mut view = self.view.clone();
        let answered = |v: &NodesView| v.nodes.iter().filter(|n| n.up).all(|n| reloaded(n, revision).is_some());
        let _ = tokio::time::timeout(self.timeout, view.wait_for(|v| answered(v))).await;
        let view = view.borrow();
        let nodes = view.nodes.iter().filter(|n| n.up);
        Ok(nodes.map(|n| NodeReload { node: n.node.clone(), outcome: reloaded(n, revision) }).collect())
    }
}

/// A node's outcome of the reload asked at `revision` (or of a later one).
fn reloaded(node: &NodeView, revision: i64) -> Option<crate::model::ReloadOutcome> {
    node.reload.clone().filter(|r| r.request >= revision)
}

fn unreachable(why: &str) -> ApiError {
    ApiError::new(ErrorCode::StoreUnreachable, format!("the cluster store is unreachable; nothing was changed ({why})"))
}

/// A request that timed out may still be recorded by a store that lost
/// its leader mid-commit: said, so the operator reads before retrying.
fn late(why: &str) -> String {
    format!("{why}; should the store record it late, every node applies it then: read the state before retrying")
}

fn conflict(now: &[(String, String, Option<crate::servers::SharedState>)]) -> ApiError {
    let states: Vec<String> = now
        .iter()
        .map(|(pool, server, state)| match state {
            Some(s) => format!("{pool}/{server} is {} (through node {})", s.admin.label(), s.by),
            None => format!("{pool}/{server}"),
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
