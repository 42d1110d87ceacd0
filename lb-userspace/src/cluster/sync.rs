//! Where a node follows the store: the states' watch feeds the owner, in
//! the store's order; a broken watch (a member lost, quorum lost, the
//! history compacted) is followed by a full read once the store answers
//! again, so a node resyncs without an operator. And where the owner's own
//! proposals (a deadline's cut, a fleet drained) are recorded, and where a
//! fleet reload reaches this node (it re-reads its own config file).

use std::{sync::Arc, time::Duration};

use tokio::sync::{mpsc, watch};

use super::store::{Recorded, ReloadOutcome, ReloadRequest, Store};
use crate::{
    agent::runtime::{OwnerHandle, stopped},
    model::NodesView,
    servers::Batch,
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
/// (another node recorded first, or a newer decision); those refused
/// because their pool changed first go back to the owner.
pub async fn record_proposals(
    store: Store,
    owner: OwnerHandle,
    mut proposals: mpsc::UnboundedReceiver<Batch>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let batch = tokio::select! {
            () = stopped(&mut shutdown) => return,
            batch = proposals.recv() => match batch { Some(b) => b, None => return },
        };
        loop {
            let names = || -> String {
                let names =
                    batch.proposals.iter().map(|p| format!("{}/{} {}", p.pool, p.server, p.state.admin.label()));
                names.collect::<Vec<_>>().join(", ")
            };
            match store.record(&batch.proposals, &batch.guards).await {
                Ok(Recorded::At(revision)) => {
                    log::info!("cluster: recorded {} at revision {revision}", names());
                    break;
                }
                Ok(Recorded::Conflict(_)) => break,
                // Another server of the pool changed first: this node
                // plans again once it applies that change (a maintenance
                // reply then waits its turn if the pool has its most out).
                Ok(Recorded::PoolChanged(revision)) => {
                    log::info!("cluster: not recorded, the pool changed first (revision {revision}): {}", names());
                    // Handed back after the watch has most likely brought
                    // the change: planned again from a stale view, it
                    // would only be refused again.
                    tokio::select! {
                        () = stopped(&mut shutdown) => return,
                        () = tokio::time::sleep(RETRY) => {}
                    }
                    owner.not_recorded(batch).await;
                    break;
                }
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

/// Where a fleet reload's outcome goes, and how this node learns that
/// every node has applied it.
pub struct ReloadLinks {
    /// This node's outcome, published with its record.
    pub outcome: watch::Sender<Option<ReloadOutcome>>,
    /// The nodes as last read (their outcomes with them).
    pub view: watch::Receiver<Arc<NodesView>>,
    /// The store's timeout: how long the others' outcomes are waited for.
    pub timeout: Duration,
}

/// Follows the fleet's reload requests until `shutdown`: each one asked
/// after this node started makes it re-read its own config file, and the
/// outcome goes to `links.outcome` (published with this node's record). A
/// request made while the watch was broken is found by the read that
/// follows.
pub async fn follow_reloads(store: Store, owner: OwnerHandle, links: ReloadLinks, mut shutdown: watch::Receiver<bool>) {
    // The config was read at start: the requests made before are done.
    let mut done: Option<i64> = None;
    loop {
        let from = match store.last_reload().await {
            Ok((last, revision)) => {
                let last = last.filter(|(at, _)| done.is_some_and(|d| *at > d));
                if let Some((at, request)) = last {
                    tokio::select! {
                        () = stopped(&mut shutdown) => return,
                        () = reload(&owner, at, &request, &links) => {}
                    }
                }
                revision
            }
            Err(e) => {
                log::debug!("cluster: cannot read the reload requests: {e}");
                tokio::select! {
                    () = stopped(&mut shutdown) => return,
                    () = tokio::time::sleep(RETRY) => continue,
                }
            }
        };
        done = Some(from);
        let stream = match store.watch_reloads(from).await {
            Ok(stream) => stream,
            Err(e) => {
                log::debug!("cluster: cannot watch the reload requests: {e}");
                continue;
            }
        };
        match watch_reloads(&store, stream, &owner, &links, &mut done, &mut shutdown).await {
            Ok(()) => return,
            Err(e) => log::debug!("cluster: the reloads' watch broke ({e})"),
        }
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            () = tokio::time::sleep(RETRY) => {}
        }
    }
}

async fn watch_reloads(
    store: &Store,
    mut stream: etcd_client::WatchStream,
    owner: &OwnerHandle,
    links: &ReloadLinks,
    done: &mut Option<i64>,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    loop {
        let message = tokio::select! {
            () = stopped(shutdown) => return Ok(()),
            m = stream.message() => m,
        };
        let answer = message.map_err(|e| e.to_string())?.ok_or("the store closed it")?;
        if answer.canceled() {
            return Err(format!("canceled: {}", answer.cancel_reason()));
        }
        for (at, request) in store.reloads(&answer).map_err(|e| e.to_string())? {
            // The wait for the other nodes (up to the store's timeout) must
            // not hold the agent's stop.
            tokio::select! {
                () = stopped(shutdown) => return Ok(()),
                () = reload(owner, at, &request, links) => {}
            }
            *done = Some(at);
        }
    }
}

/// Re-reads this node's config file for the fleet's request `at`; once
/// every live node has too (or the store's timeout is over), the servers it
/// added take new flows here (see [`ServerSlot::awaiting_fleet`]).
///
/// [`ServerSlot::awaiting_fleet`]: crate::servers::ServerSlot::awaiting_fleet
async fn reload(owner: &OwnerHandle, at: i64, request: &ReloadRequest, links: &ReloadLinks) {
    let (ok, message) = match owner.reload_for_fleet(request.force).await {
        Ok(report) if report.changes.is_empty() => (true, "nothing to change".to_owned()),
        Ok(report) => (true, format!("applied {} change(s)", report.changes.len())),
        Err(e) => (false, e.message),
    };
    let how = if ok { "done" } else { "refused" };
    log::info!("cluster: reload asked through node {} (revision {at}): {how}: {message}", request.by);
    links.outcome.send_replace(Some(ReloadOutcome { request: at, ok, message }));
    if !ok {
        return;
    }
    let nodes = super::every_node_reloaded(&links.view, at, links.timeout).await;
    let without: Vec<String> = (nodes.iter())
        .filter_map(|n| match &n.outcome {
            None => Some(format!("{} (no outcome within {:?})", n.node, links.timeout)),
            Some(o) if !o.ok => Some(format!("{} (refused it)", n.node)),
            Some(_) => None,
        })
        .collect();
    if !without.is_empty() {
        let message = format!(
            "the fleet reload of revision {at} is not applied on {}: the servers it added take new flows here all \
             the same, and that node's replies of their flows cannot be rewritten",
            without.join(", ")
        );
        log::warn!("cluster: {message}");
        owner.note(message).await;
    }
    owner.fleet_reloaded().await;
}
