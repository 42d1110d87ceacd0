//! Where a node shows itself to the others and sees them: it publishes its
//! record (its flows per server, its revision, its config hash, its clock)
//! under a lease, so that a dead node's record and counts vanish with it,
//! and reads every node's record a few times a second. From those the
//! owner learns the other nodes' flows (a drain with no deadline ends when
//! the fleet has none left) and readers get the Nodes view.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::sync::watch;

use super::{
    replicate::Peer,
    store::{NodeRecord, ReloadOutcome, Store, StoredNodeAdmin},
};
use crate::{
    agent::{
        runtime::{OwnerHandle, now_ms, stopped},
        shared::Others,
        snapshot::Snapshot,
    },
    health::{Checks, tally::Verdict},
    model::{NodeView, NodesView},
};

/// How often a node reads the others' records (and publishes its own if
/// it changed).
pub const TICK: Duration = Duration::from_millis(250);
/// A record unchanged this long is written again (its clock, for offsets).
const HEARTBEAT_MS: u64 = 5_000;

pub struct Presence {
    pub store: Store,
    pub node: String,
    pub lease_ttl: Duration,
    pub started_ms: u64,
    /// Started without the store (cleared once it syncs).
    pub stale: std::sync::atomic::AtomicBool,
    pub owner: OwnerHandle,
    pub snapshots: watch::Receiver<Arc<Snapshot>>,
    /// This node's monitors' verdicts (its own view, not the fleet's).
    pub checks: watch::Receiver<Arc<Checks>>,
    /// How this node fared with the last fleet reload.
    pub reload: watch::Receiver<Option<ReloadOutcome>>,
    pub reachable: watch::Receiver<bool>,
    pub view: watch::Sender<Arc<NodesView>>,
    /// Where this node receives replicated flows (none: not replicated).
    pub sync: Option<std::net::SocketAddr>,
    /// The other live nodes that receive replicated flows; none until the
    /// store first answered, then kept as last seen while it is
    /// unreachable (replication does not need it).
    pub peers: watch::Sender<Option<Vec<Peer>>>,
    /// Every node's administrative state, as last read.
    pub admins: watch::Sender<Admins>,
    /// What this node's BGP daemon announces now.
    pub announced: watch::Receiver<std::collections::BTreeSet<std::net::IpAddr>>,
    /// While this node drains: its flows still reaching it.
    pub still_arriving: watch::Receiver<Option<u64>>,
}

/// Every node's administrative state decided in the store, by node, with
/// its key's revision.
pub type Admins = BTreeMap<String, (StoredNodeAdmin, i64)>;

/// What this node keeps of the others between reads.
#[derive(Default)]
struct Seen {
    /// By node: its last record, when it changed, its clock offset.
    nodes: BTreeMap<String, (NodeRecord, u64, Option<i64>)>,
    up: Vec<String>,
    /// By node: its last clock samples (see [`ClockSamples`]).
    clocks: BTreeMap<String, ClockSamples>,
    /// Nodes whose config differs, already said so.
    told: Vec<String>,
}

impl Seen {
    /// Forgets the nodes that left the cluster for good (`lb cleanup` on
    /// them), but one whose record is back (it started again).
    fn forget(&mut self, left: &std::collections::BTreeSet<String>, records: &[NodeRecord]) {
        for node in left.iter().filter(|n| !records.iter().any(|r| &r.node == *n)) {
            if self.nodes.remove(node).is_some() {
                log::info!("cluster: node {node} left the cluster (lb cleanup on it): no longer shown");
            }
            self.clocks.remove(node);
            self.told.retain(|n| n != node);
        }
    }
}

impl Presence {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut lease: Option<i64> = None;
        let mut last_put: Option<(NodeRecord, u64)> = None;
        let mut last_keep_alive_ms = 0;
        let mut seen = Seen::default();
        // The peers known before this node shows itself: a peer that sees
        // it pushes its flows at once, and they must not be refused as
        // from an unknown address.
        if let Ok(records) = self.store.nodes().await {
            self.see_peers(&records);
        }
        // Back after `lb cleanup` made this node leave: no longer marked so.
        if let Err(e) = self.store.rejoin(&self.node).await {
            log::debug!("cluster: cannot clear this node's mark of having left: {e}");
        }
        let mut every = tokio::time::interval(TICK);
        loop {
            tokio::select! {
                () = stopped(&mut shutdown) => return,
                _ = every.tick() => {}
            }
            let record = self.record();
            let now = now_ms();
            let published = self.publish(&record, &mut lease, &mut last_put, &mut last_keep_alive_ms, now).await;
            if published && let Ok(admins) = self.store.node_admins().await {
                self.admins.send_if_modified(|old| std::mem::replace(old, admins.clone()) != admins);
            }
            match self.store.nodes().await {
                Ok(records) if published => {
                    let others = others_of(&records, &self.node);
                    self.owner.others(Some(others)).await;
                    if let Ok(left) = self.store.left().await {
                        seen.forget(&left, &records);
                    }
                    self.see(&mut seen, records, &record, now).await;
                }
                Ok(_) | Err(_) => {
                    self.owner.others(None).await;
                    self.show(&seen, &record, false);
                }
            }
        }
    }

    /// This node's record, from the owner's latest snapshot.
    fn record(&self) -> NodeRecord {
        let snapshot = Arc::clone(&self.snapshots.borrow());
        let flows = snapshot
            .pools
            .iter()
            .flat_map(|p| p.servers.iter().map(move |s| (format!("{}/{}", p.name, s.name), s.active_flows)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let down = self
            .checks
            .borrow()
            .iter()
            .filter_map(|((pool, server), checks)| match &checks.verdict {
                Verdict::Down(reason) => Some((format!("{pool}/{server}"), reason.clone())),
                Verdict::Unknown | Verdict::Up => None,
            })
            .collect();
        NodeRecord {
            node: self.node.clone(),
            config_hash: snapshot.config_hash.clone(),
            revision: snapshot.shared_revision.unwrap_or(0),
            clock_ms: now_ms(),
            counted_at_ms: snapshot.counted_at_ms.unwrap_or(0),
            flows,
            down,
            reload: self.reload.borrow().clone(),
            started_ms: self.started_ms,
            stale: self.stale_now(),
            sync: self.sync,
            announced: self.announced.borrow().iter().copied().collect(),
            still_arriving: *self.still_arriving.borrow(),
        }
    }

    /// Started without the store, and not synced since.
    fn stale_now(&self) -> bool {
        if *self.reachable.borrow() {
            self.stale.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        self.stale.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes this node's record if it changed (or for the heartbeat), and
    /// keeps its lease alive; false if the store did not answer.
    async fn publish(
        &self,
        record: &NodeRecord,
        lease: &mut Option<i64>,
        last_put: &mut Option<(NodeRecord, u64)>,
        last_keep_alive_ms: &mut u64,
        now: u64,
    ) -> bool {
        let id = match *lease {
            Some(id) => id,
            None => match self.store.grant(self.lease_ttl.as_secs().max(1) as i64).await {
                Ok(id) => {
                    *lease = Some(id);
                    *last_put = None;
                    id
                }
                Err(e) => {
                    log::debug!("cluster: no lease yet: {e}");
                    return false;
                }
            },
        };
        let same = |(last, at): &(NodeRecord, u64)| {
            NodeRecord { clock_ms: record.clock_ms, ..last.clone() } == *record && now < at + HEARTBEAT_MS
        };
        if !last_put.as_ref().is_some_and(same) {
            if let Err(e) = self.store.put_node(record, id).await {
                log::debug!("cluster: cannot publish this node's record: {e}");
                *lease = None;
                return false;
            }
            *last_put = Some((record.clone(), now));
        }
        if now >= *last_keep_alive_ms + self.lease_ttl.as_millis() as u64 / 3 {
            match self.store.keep_alive(id).await {
                Ok(true) => *last_keep_alive_ms = now,
                Ok(false) | Err(_) => {
                    *lease = None;
                    return false;
                }
            }
        }
        true
    }

    async fn see(&self, seen: &mut Seen, records: Vec<NodeRecord>, this: &NodeRecord, now: u64) {
        seen.up = records.iter().map(|r| r.node.clone()).collect();
        self.see_peers(&records);
        for record in records {
            let changed = seen.nodes.get(&record.node).is_none_or(|(last, _, _)| *last != record);
            if changed {
                let sample = i64::try_from(record.clock_ms).unwrap_or(0) - i64::try_from(now).unwrap_or(0);
                let offset = (record.node != self.node)
                    .then(|| seen.clocks.entry(record.node.clone()).or_default().offset_with(sample));
                if record.config_hash != this.config_hash && !seen.told.contains(&record.node) {
                    let message = format!(
                        "node {} runs another config than this node (config hash {} here, {} there): \
                         their server ids and Maglev rows may differ",
                        record.node, this.config_hash, record.config_hash
                    );
                    self.owner.note(message).await;
                    seen.told.push(record.node.clone());
                }
                seen.nodes.insert(record.node.clone(), (record, now, offset));
            }
        }
        self.show(seen, this, true);
    }

    /// The other live nodes that receive replicated flows.
    fn see_peers(&self, records: &[NodeRecord]) {
        let peers: Vec<_> = records
            .iter()
            .filter(|r| r.node != self.node)
            .filter_map(|r| r.sync.map(|address| Peer { node: r.node.clone(), address, started_ms: r.started_ms }))
            .collect();
        let peers = Some(peers);
        self.peers.send_if_modified(|old| std::mem::replace(old, peers.clone()) != peers);
    }

    fn show(&self, seen: &Seen, this: &NodeRecord, reachable: bool) {
        let admins = self.admins.borrow();
        let nodes = seen
            .nodes
            .values()
            .map(|(r, at, offset)| NodeView {
                admin: admins.get(&r.node).map(|(a, _)| a.admin).unwrap_or_default(),
                admin_by: admins.get(&r.node).map(|(a, _)| a.by.clone()),
                admin_revision: admins.get(&r.node).map_or(0, |(_, revision)| *revision),
                announced: if r.node == self.node { this.announced.clone() } else { r.announced.clone() },
                still_arriving: if r.node == self.node { this.still_arriving } else { r.still_arriving },
                node: r.node.clone(),
                up: seen.up.contains(&r.node) && reachable || r.node == self.node,
                last_sync_ms: Some(*at),
                revision: if r.node == self.node { this.revision } else { r.revision },
                config_hash: r.config_hash.clone(),
                same_config: r.config_hash == this.config_hash,
                flows: r.flows.values().sum(),
                flows_by_server: r.flows.clone(),
                down: r.down.clone(),
                reload: r.reload.clone(),
                clock_offset_ms: *offset,
                stale: r.stale,
                started_ms: r.started_ms,
            })
            .collect();
        self.view.send_replace(Arc::new(NodesView {
            node: self.node.clone(),
            store_reachable: reachable,
            revision: Some(this.revision),
            stale: this.stale,
            nodes,
            // Filled in by the API from the replicator's counts.
            replication: None,
        }));
    }
}

/// How a node's clock is estimated from this one: each record carries its
/// writer's clock; seen `d` ms after it was written (0 to a tick, and a
/// first read may see one written seconds ago), a sample is the offset
/// minus `d`, never more than the offset. So the largest of the last
/// samples is the estimate: a few ms off once a sample was seen soon after
/// its write (one heartbeat in twelve or so, within a minute).
#[derive(Default)]
struct ClockSamples(std::collections::VecDeque<i64>);

/// Samples kept: a minute of heartbeats.
const CLOCK_SAMPLES: usize = 12;

impl ClockSamples {
    fn offset_with(&mut self, sample: i64) -> i64 {
        if self.0.len() == CLOCK_SAMPLES {
            self.0.pop_front();
        }
        self.0.push_back(sample);
        self.0.iter().copied().max().unwrap_or(sample)
    }
}

/// The other nodes' flows, the oldest of their counts, and how many of
/// them find each server DOWN.
fn others_of(records: &[NodeRecord], this: &str) -> Others {
    let key = |name: &str| name.split_once('/').map(|(pool, server)| (pool.to_owned(), server.to_owned()));
    let mut others = Others { counted_ms: u64::MAX, ..Others::default() };
    for record in records.iter().filter(|r| r.node != this) {
        others.live += 1;
        others.counted_ms = others.counted_ms.min(record.counted_at_ms);
        for (name, flows) in &record.flows {
            if let Some(key) = key(name) {
                *others.by_server.entry(key).or_insert(0) += flows;
            }
        }
        for (name, reason) in &record.down {
            if let Some(key) = key(name) {
                others.down.entry(key).or_insert((0, reason.clone())).0 += 1;
            }
        }
    }
    others
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::health::DownReason;

    #[test]
    fn the_fleets_flows_leave_this_node_out_and_wait_for_the_oldest_count() {
        let record = |node: &str, counted_at_ms, flows: &[(&str, u64)]| NodeRecord {
            node: node.to_owned(),
            counted_at_ms,
            flows: flows.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
            ..NodeRecord::default()
        };
        let records = [
            record("a", 500, &[("web/w1", 3)]),
            record("b", 200, &[("web/w1", 2), ("web/w2", 1)]),
            record("c", 900, &[("web/w1", 4)]),
        ];
        let others = others_of(&records, "a");
        assert_eq!(others.by_server[&("web".to_owned(), "w1".to_owned())], 6);
        assert_eq!(others.by_server[&("web".to_owned(), "w2".to_owned())], 1);
        assert_eq!(others.counted_ms, 200);
        assert_eq!(others_of(&records[..1], "a").counted_ms, u64::MAX, "alone: nobody to wait for");
        assert_eq!(others.live, 2);
    }

    #[test]
    fn a_clock_offset_is_the_largest_of_the_late_samples() {
        let mut clock = ClockSamples::default();
        // A true offset of +40 ms, each record seen 0 to 250 ms after its write.
        assert_eq!(clock.offset_with(40 - 4_000), -3_960, "a first read of an old record");
        assert_eq!(clock.offset_with(40 - 180), -140);
        assert_eq!(clock.offset_with(40 - 3), 37, "one seen soon after its write");
        assert_eq!(clock.offset_with(40 - 220), 37);
        for _ in 0..CLOCK_SAMPLES {
            clock.offset_with(-500);
        }
        assert_eq!(clock.offset_with(-500), -500, "a clock that moved shows within a minute");
    }

    #[test]
    fn the_others_verdicts_are_counted_per_server() {
        let record = |node: &str, down: &[&str]| NodeRecord {
            node: node.to_owned(),
            down: down.iter().map(|k| ((*k).to_owned(), DownReason::Refused)).collect(),
            ..NodeRecord::default()
        };
        let records = [record("a", &["web/w1"]), record("b", &["web/w1", "web/w2"]), record("c", &["web/w1"])];
        let others = others_of(&records, "a");
        assert_eq!(others.down[&("web".to_owned(), "w1".to_owned())], (2, DownReason::Refused));
        assert_eq!(others.down[&("web".to_owned(), "w2".to_owned())].0, 1);
        assert_eq!(others.live, 2);
    }
}
