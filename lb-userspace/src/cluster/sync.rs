//! Where a node follows the store: the states' watch feeds the owner, in
//! the store's order; a broken watch (a member lost, quorum lost, the
//! history compacted) is followed by a full read once the store answers
//! again, so a node resyncs without an operator. And where the owner's own
//! proposals (a deadline's cut, a fleet drained) are recorded.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::store::{Recorded, Store};
use crate::{
    agent::runtime::{OwnerHandle, stopped},
    servers::Proposal,
};

/// How long after a failure the store is tried again.
const RETRY: Duration = Duration::from_millis(200);

/// Follows the states from `revision` on until `shutdown`; `reachable`
/// says whether the store answers.
pub async fn follow_states(
    store: Store,
    owner: OwnerHandle,
    mut revision: Option<i64>,
    reachable: watch::Sender<bool>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let from = match revision {
            Some(r) => r,
            None => match store.states().await {
                Ok((states, r)) => {
                    log::info!("cluster: synced {} server state(s) at revision {r}", states.len());
                    owner.apply_shared(states, r).await;
                    r
                }
                Err(e) => {
                    reachable.send_replace(false);
                    log::debug!("cluster: cannot resync: {e}");
                    tokio::select! {
                        () = stopped(&mut shutdown) => return,
                        () = tokio::time::sleep(RETRY) => continue,
                    }
                }
            },
        };
        revision = Some(from);
        reachable.send_replace(true);
        match watch_from(&store, &owner, &mut revision, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => {
                log::warn!("cluster: the states' watch broke ({e}); resyncing once the store answers");
                revision = None;
            }
        }
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

/// Applies the watch's changes; returns Ok at shutdown, Err when it breaks.
async fn watch_from(
    store: &Store,
    owner: &OwnerHandle,
    revision: &mut Option<i64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let from = revision.unwrap_or(0);
    let mut stream = store.watch_states(from).await.map_err(|e| e.to_string())?;
    loop {
        let message = tokio::select! {
            () = stopped(shutdown) => return Ok(()),
            m = stream.message() => m,
        };
        let answer = match message {
            Ok(Some(answer)) => answer,
            Ok(None) => return Err("the store closed it".to_owned()),
            Err(e) => return Err(e.to_string()),
        };
        if answer.canceled() {
            return Err(format!("canceled: {}", answer.cancel_reason()));
        }
        let at = answer.header().map_or(from, |h| h.revision());
        let states = store.changed(&answer).map_err(|e| e.to_string())?;
        if !states.is_empty() {
            owner.apply_shared(states, at).await;
        }
        *revision = Some(at);
    }
}

/// Records the owner's proposals, each until it is recorded or overtaken
/// (another node recorded first, or a newer decision).
pub async fn record_proposals(
    store: Store,
    mut proposals: mpsc::UnboundedReceiver<Vec<Proposal>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let batch = tokio::select! {
            () = stopped(&mut shutdown) => return,
            batch = proposals.recv() => match batch { Some(b) => b, None => return },
        };
        loop {
            match store.record(&batch).await {
                Ok(Recorded::At(revision)) => {
                    let names: Vec<String> =
                        batch.iter().map(|p| format!("{}/{} {}", p.pool, p.server, p.state.admin.label())).collect();
                    log::info!("cluster: recorded {} at revision {revision}", names.join(", "));
                    break;
                }
                Ok(Recorded::Conflict(_)) => break,
                Err(e) => {
                    log::debug!("cluster: cannot record this node's proposal yet: {e}");
                    tokio::select! {
                        () = stopped(&mut shutdown) => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                }
            }
        }
    }
}
