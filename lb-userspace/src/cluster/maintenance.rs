//! Where a balancer node's maintenance state changes, and where its drain
//! ends or its deadline is enforced. The state is the fleet's decision, in
//! the store (`<prefix>/node-admin/<node>`): an operator decides it through
//! any node (`lb node disable|enable`), and each node follows its own.
//!
//! - Immediately: the node withdraws its VIPs at once. The other nodes hold
//!   copies of its flows (replication), so the routers' rehash costs no
//!   connection; it may be stopped at once.
//! - Gracefully: the node first pushes every flow it forwards to the other
//!   nodes again (their copies fresh, none lost), then withdraws its VIPs,
//!   and keeps forwarding what still reaches it while the routers move its
//!   flows. Once none has reached it for [`SETTLE`], it is disabled
//!   (drained), or at the deadline if one was given.
//!
//! The node keeps forwarding whatever reaches it in every state: dropping a
//! packet the routers still send would cost the connection it belongs to.

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::{FlowSlot6, flow_time};
use tokio::sync::{mpsc, oneshot, watch};

use super::{
    Cluster,
    presence::Admins,
    replicate::{PushAll, forwarded_here},
    store::{Store, StoredNodeAdmin},
};
use crate::{
    agent::runtime::{now_ms, stopped},
    datapath::{clock::datapath_now_ns, flow_table::FlowTable},
    model::{ApiError, DisableMode, ErrorCode, NodeAdmin, NodeChange, NodeDisabled, NodesView},
};

/// A draining node is drained once no flow reached it for this long after
/// it withdrew its VIPs: the routers have moved them all.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How often a draining node counts the flows still reaching it.
const TICK: Duration = Duration::from_millis(250);
/// How long a push of every flow to the peers may take before the node
/// withdraws anyway.
const PUSH_WITHIN: Duration = Duration::from_secs(5);

/// How a drain ends, if it ends now: `arriving` flows reached the node in
/// the last [`SETTLE`], `withdrawn_for` since it withdrew its VIPs.
pub fn drain_end(
    arriving: u64,
    withdrawn_for: Duration,
    now_ms: u64,
    deadline_ms: Option<u64>,
) -> Option<NodeDisabled> {
    if arriving == 0 && withdrawn_for >= SETTLE {
        Some(NodeDisabled::Drained)
    } else if deadline_ms.is_some_and(|d| now_ms >= d) {
        Some(NodeDisabled::Deadline)
    } else {
        None
    }
}

/// The state a disable leads to, or why it is refused: an unknown node, or
/// (unless `force`) one whose VIPs no other node in service announces.
pub fn plan_disable(
    view: &NodesView,
    node: &str,
    mode: DisableMode,
    force: bool,
    now_ms: u64,
) -> Result<NodeAdmin, ApiError> {
    let Some(target) = view.nodes.iter().find(|n| n.node == node) else {
        let known: Vec<&str> = view.nodes.iter().map(|n| n.node.as_str()).collect();
        return Err(ApiError::new(
            ErrorCode::UnknownNode,
            format!("no node named \"{node}\" was seen (known: {})", known.join(", ")),
        ));
    };
    let others: BTreeSet<IpAddr> = view
        .nodes
        .iter()
        .filter(|n| n.node != node && n.up && n.admin == NodeAdmin::InService)
        .flat_map(|n| n.announced.iter().copied())
        .collect();
    let alone: Vec<String> =
        target.announced.iter().filter(|vip| !others.contains(vip)).map(ToString::to_string).collect();
    if !alone.is_empty() && !force {
        return Err(ApiError::new(
            ErrorCode::LastNode,
            format!(
                "no other node in service announces {}: disabling {node} would withdraw it from the routers \
                 (force overrides this)",
                alone.join(", ")
            ),
        ));
    }
    Ok(match mode {
        DisableMode::Immediate => NodeAdmin::Disabled { since_ms: now_ms, reason: NodeDisabled::Immediate },
        DisableMode::Graceful { timeout_ms } => {
            NodeAdmin::Draining { since_ms: now_ms, deadline_ms: timeout_ms.map(|t| now_ms + t) }
        }
    })
}

impl Cluster {
    /// Records a node's new state; answers once this node has read it back.
    async fn set_node(&self, node: &str, to: NodeAdmin) -> Result<NodeChange, ApiError> {
        let (from, expected) = self.admins.borrow().get(node).map_or((NodeAdmin::InService, 0), |(a, r)| (a.admin, *r));
        let stored = StoredNodeAdmin { admin: to, by: self.node.clone() };
        let put = tokio::time::timeout(self.timeout, self.store.put_node_admin(node, &stored, expected)).await;
        let revision = match put {
            Ok(Ok(Some(revision))) => revision,
            Ok(Ok(None)) => {
                return Err(ApiError::new(
                    ErrorCode::Conflict,
                    format!("{node} was changed meanwhile through another node: nothing was changed (see lb nodes)"),
                ));
            }
            Ok(Err(e)) => return Err(unreachable(&e.to_string())),
            Err(_) => return Err(unreachable(&format!("no answer within {:?}", self.timeout))),
        };
        // Answered once this node's view shows it: a reader of `lb nodes`
        // right after sees the change.
        let mut view = self.view.clone();
        let seen = view.wait_for(|v| v.nodes.iter().any(|n| n.node == node && n.admin_revision >= revision));
        let _ = tokio::time::timeout(self.timeout, seen).await;
        log::info!("node {node}: {} -> {} (through {})", from.label(), to.label(), self.node);
        Ok(NodeChange { node: node.to_owned(), from, to })
    }

    pub async fn node_disable(&self, node: &str, mode: DisableMode, force: bool) -> Result<NodeChange, ApiError> {
        if !self.view.borrow().store_reachable {
            return Err(unreachable("not answering this node now"));
        }
        let to = plan_disable(&self.view.borrow(), node, mode, force, now_ms())?;
        self.set_node(node, to).await
    }

    pub async fn node_enable(&self, node: &str) -> Result<NodeChange, ApiError> {
        let view = Arc::clone(&self.view.borrow());
        if !view.nodes.iter().any(|n| n.node == node) && !self.admins.borrow().contains_key(node) {
            return Err(ApiError::new(ErrorCode::UnknownNode, format!("no node named \"{node}\" was seen")));
        }
        self.set_node(node, NodeAdmin::InService).await
    }
}

fn unreachable(why: &str) -> ApiError {
    ApiError::new(ErrorCode::StoreUnreachable, format!("the cluster store is unreachable; nothing was changed ({why})"))
}

/// This node's side: follows its own state, withdraws and announces, ends
/// its drains.
pub struct Maintenance {
    pub node: String,
    pub store: Store,
    pub admins: watch::Receiver<Admins>,
    /// Set once the node has its peers' flows (see `replicate`).
    pub joined: watch::Receiver<bool>,
    /// The replicator, to push every flow before withdrawing (none without
    /// replication).
    pub push_all: Option<mpsc::Sender<PushAll>>,
    pub tables: (FlowTable, FlowTable<FlowSlot6>),
    /// Whether the VIPs are to be announced; none until decided (the
    /// announcer leaves BIRD as it is until then: a restarted agent must
    /// not withdraw a node in service while it joins).
    pub in_service: watch::Sender<Option<bool>>,
    pub still_arriving: watch::Sender<Option<u64>>,
}

impl Maintenance {
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        tokio::select! {
            () = stopped(&mut shutdown) => return,
            _ = self.joined.wait_for(|joined| *joined) => {}
        }
        loop {
            let (admin, revision) = self.own();
            match admin {
                NodeAdmin::InService | NodeAdmin::Disabled { .. } => {
                    self.still_arriving.send_replace(None);
                    self.in_service.send_replace(Some(admin == NodeAdmin::InService));
                    tokio::select! {
                        () = stopped(&mut shutdown) => return,
                        _ = self.admins.changed() => {}
                    }
                }
                NodeAdmin::Draining { deadline_ms, .. } => {
                    if !self.drain(revision, deadline_ms, &mut shutdown).await {
                        return;
                    }
                }
            }
        }
    }

    /// This node's state and its key's revision.
    fn own(&mut self) -> (NodeAdmin, i64) {
        self.admins.borrow_and_update().get(&self.node).map_or((NodeAdmin::InService, 0), |(a, r)| (a.admin, *r))
    }

    /// Pushes, withdraws, then counts the flows still arriving until none
    /// did for [`SETTLE`] or the deadline passed, and records the end.
    /// Returns when the state changed (false: the agent stops).
    async fn drain(&mut self, revision: i64, deadline_ms: Option<u64>, shutdown: &mut watch::Receiver<bool>) -> bool {
        if let Some(push_all) = &self.push_all {
            let (asked, answer) = oneshot::channel();
            let pushed = async {
                push_all.send(asked).await.ok()?;
                answer.await.ok()
            };
            match tokio::time::timeout(PUSH_WITHIN, pushed).await {
                Ok(Some(n)) => log::info!("node drain: {n} flow(s) pushed to the other nodes before withdrawing"),
                _ => log::warn!("node drain: the push to the other nodes did not finish; withdrawing anyway"),
            }
        }
        self.in_service.send_replace(Some(false));
        let (withdrawn_at, withdrawn_ns) = (Instant::now(), datapath_now_ns());
        let mut every = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = stopped(shutdown) => return false,
                _ = self.admins.changed() => {
                    if self.own().1 != revision {
                        return true;
                    }
                }
                _ = every.tick() => {}
            }
            let since = withdrawn_ns.max(datapath_now_ns().saturating_sub(SETTLE.as_nanos() as u64));
            let arriving = self.arriving_since(since);
            self.still_arriving.send_replace(Some(arriving));
            let Some(reason) = drain_end(arriving, withdrawn_at.elapsed(), now_ms(), deadline_ms) else { continue };
            let to =
                StoredNodeAdmin { admin: NodeAdmin::Disabled { since_ms: now_ms(), reason }, by: self.node.clone() };
            match self.store.put_node_admin(&self.node, &to, revision).await {
                Ok(Some(_)) => log::info!("node drain: {reason:?}; {arriving} flow(s) still arriving"),
                Ok(None) => log::info!("node drain: changed meanwhile by an operator"),
                Err(e) => log::warn!("node drain: cannot record its end ({e}); trying again"),
            }
        }
    }

    /// Flows this node forwarded at `since_ns` or later.
    fn arriving_since(&self, since_ns: u64) -> u64 {
        let mut arriving = 0;
        let mut count = |f: &lb_common::Flow| {
            arriving += u64::from(forwarded_here(f) && flow_time::at_or_after(f.last_seen, flow_time::tick(since_ns)));
            false
        };
        let walked = self.tables.0.remove_where(|_, f| count(f)).and(self.tables.1.remove_where(|_, f| count(f)));
        if let Err(e) = walked {
            log::warn!("node drain: cannot read the flow table: {e}");
        }
        arriving
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeView;

    fn node(name: &str, announced: &[&str], admin: NodeAdmin) -> NodeView {
        let announced = announced.iter().map(|a| a.parse().unwrap()).collect();
        NodeView { node: name.into(), up: true, announced, admin, ..NodeView::default() }
    }

    #[test]
    fn a_node_whose_vips_no_other_node_in_service_announces_is_kept_unless_forced() {
        let draining = NodeAdmin::Draining { since_ms: 1, deadline_ms: None };
        let view = NodesView {
            nodes: vec![
                node("n1", &["10.0.0.1", "10.0.0.2"], NodeAdmin::InService),
                node("n2", &["10.0.0.1"], NodeAdmin::InService),
                node("n3", &["10.0.0.2"], draining),
            ],
            ..NodesView::default()
        };
        let graceful = DisableMode::Graceful { timeout_ms: Some(30_000) };
        assert_eq!(
            plan_disable(&view, "n2", graceful, false, 1_000),
            Ok(NodeAdmin::Draining { since_ms: 1_000, deadline_ms: Some(31_000) })
        );
        let refused = plan_disable(&view, "n1", DisableMode::Immediate, false, 5).unwrap_err();
        assert_eq!(refused.code, ErrorCode::LastNode);
        assert!(refused.message.contains("10.0.0.2") && !refused.message.contains("10.0.0.1,"), "{refused}");
        assert_eq!(
            plan_disable(&view, "n1", DisableMode::Immediate, true, 5),
            Ok(NodeAdmin::Disabled { since_ms: 5, reason: NodeDisabled::Immediate })
        );
        let unknown = plan_disable(&view, "n9", DisableMode::Immediate, true, 5).unwrap_err();
        assert_eq!(unknown.code, ErrorCode::UnknownNode);
        assert!(unknown.message.contains("n1, n2, n3"), "{unknown}");
        let mut gone = view.clone();
        gone.nodes[1].up = false;
        assert_eq!(plan_disable(&gone, "n1", DisableMode::Immediate, false, 5).unwrap_err().code, ErrorCode::LastNode);
    }

    #[test]
    fn a_drain_ends_once_nothing_arrived_for_a_while_or_at_its_deadline() {
        let settled = SETTLE + Duration::from_millis(1);
        assert_eq!(drain_end(0, settled, 10, None), Some(NodeDisabled::Drained));
        assert_eq!(drain_end(0, SETTLE / 2, 10, None), None, "the routers may not have moved them yet");
        assert_eq!(drain_end(3, settled, 10, None), None, "flows still arrive: no deadline, it waits");
        assert_eq!(drain_end(3, settled, 10, Some(11)), None);
        assert_eq!(drain_end(3, settled, 11, Some(11)), Some(NodeDisabled::Deadline));
        assert_eq!(drain_end(0, settled, 11, Some(11)), Some(NodeDisabled::Drained));
    }
}
