//! The owner in a cluster. The store holds the fleet's decision about each
//! server; a node applies what the store says (`apply_shared`), in the
//! store's order, and never decides alone what the fleet must agree on:
//! an operator's change is planned here and recorded in the store
//! (`decide`), then applied by every node, this one included, from the
//! store's watch. Two things a node does on its own, because they must not
//! wait for the store: a drain's deadline is enforced by every node at the
//! same instant (it is absolute), then recorded; and the end of a drain
//! with no deadline is proposed once no node has a live flow of the server
//! left (the fleet's count, published by every node under its lease).

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use tokio::sync::mpsc;

use super::{
    health::HealthVerdict,
    owner::{ControlError, Owner, Plan, decided_by},
};
use crate::{
    datapath::ops::DatapathOps,
    model::{Change, EventKind, Subject},
    servers::{
        self, AdminState, Batch, Guard, Proposal, ServerSlot, SharedState, Source, health::DownReason, shared::toward,
    },
};

/// The most servers one decision changes: its transaction compares each
/// one's key and its pool's keys, and etcd takes at most 128 comparisons
/// in a transaction (`--max-txn-ops`, by default). Beyond, the store would
/// refuse it with an error that reads as a store fault.
const MAX_SERVERS_AT_ONCE: usize = 127;

/// A server, by (pool, name).
pub type ServerKey = (String, String);

/// What the owner keeps of the store in a cluster.
pub struct Shared {
    pub node: String,
    /// The store's revision last applied.
    pub revision: i64,
    /// Each server's key's revision in the store, and the state it held,
    /// when last applied.
    records: HashMap<ServerKey, (i64, AdminState)>,
    /// What the other live nodes published (none until known, or while
    /// the store does not answer).
    others: Option<Others>,
    /// Where the owner's own proposals (a deadline's cut, a fleet drained)
    /// go to be recorded in the store.
    outbox: mpsc::UnboundedSender<Batch>,
    /// Proposals already sent, by the revision they were based on.
    proposed: HashSet<(ServerKey, i64)>,
    /// The maintenance reply behind each maintenance drain proposed (what
    /// matched, the drain it announced), to plan it again if the store
    /// refuses it ([`Owner::not_recorded`]).
    replies: HashMap<ServerKey, (String, Option<Duration>)>,
}

/// The other live nodes' flows and health verdicts, as they last
/// published them.
#[derive(Clone, Debug, Default)]
pub struct Others {
    /// How many other nodes are live (their record is under a live lease).
    pub live: usize,
    pub by_server: HashMap<ServerKey, u64>,
    /// The oldest of their counts (ms since the Unix epoch): a drain is
    /// over only once every node counted after it began.
    pub counted_ms: u64,
    /// The servers some of them find DOWN: how many, and one's reason.
    pub down: HashMap<ServerKey, (usize, DownReason)>,
}

impl Shared {
    pub fn new(node: String, outbox: mpsc::UnboundedSender<Batch>) -> Shared {
        Shared {
            node,
            revision: 0,
            records: HashMap::new(),
            others: None,
            outbox,
            proposed: HashSet::new(),
            replies: HashMap::new(),
        }
    }
}

/// An operator's change, planned, to be recorded in the store.
pub struct Decision {
    pub proposals: Vec<Proposal>,
    /// The pool as the plan saw it.
    pub guards: Vec<Guard>,
    pub changes: Vec<Change>,
}

/// One server's state as the store holds it, with its key's revision.
pub struct StoredState {
    pub pool: String,
    pub server: String,
    pub state: SharedState,
    pub revision: i64,
}

impl<D: DatapathOps> Owner<D> {
    pub fn join_cluster(&mut self, shared: Shared) {
        self.shared = Some(shared);
    }

    pub fn shared_revision(&self) -> Option<i64> {
        self.shared.as_ref().map(|s| s.revision)
    }

    /// Plans `plan` of `pool` as a change of the fleet: the new states, each
    /// to be recorded if its key is as this node last saw it.
    pub fn decide(&self, pool: &str, plan: &Plan, source: Source, now_ms: u64) -> Result<Decision, ControlError> {
        let shared = self.shared.as_ref().expect("decide is for a cluster");
        if plan.len() > MAX_SERVERS_AT_ONCE {
            return Err(ControlError::TooManyAtOnce { servers: plan.len(), max: MAX_SERVERS_AT_ONCE });
        }
        let mut decision = Decision { proposals: Vec::new(), guards: Vec::new(), changes: Vec::new() };
        for (name, transition) in plan {
            let slot = self.servers.find(pool, name).expect("planned server exists");
            let admin = servers::state::apply(&slot.admin, *transition, now_ms);
            let mut to = slot.clone();
            to.admin = admin;
            decision.changes.push(Change {
                pool: pool.to_owned(),
                server: name.clone(),
                from: slot.label(),
                to: to.label(),
                flows_reset: None,
            });
            let key = (pool.to_owned(), name.clone());
            decision.proposals.push(Proposal {
                pool: pool.to_owned(),
                server: name.clone(),
                state: SharedState {
                    admin,
                    source: decided_by(Some(source), admin != slot.admin, slot.source),
                    by: shared.node.clone(),
                },
                expected_revision: shared.records.get(&key).map_or(0, |(revision, _)| *revision),
                // The store's state, not this node's: a node that cut a
                // drain at its deadline is ahead of the store until its
                // cut is recorded.
                from: shared.records.get(&key).map_or(slot.admin, |(_, admin)| *admin),
            });
        }
        // Only a server taken out of service meets a pool's limits: the end
        // of a drain or a return is recorded whatever else changed.
        let takes_out = |p: &Proposal| p.from == AdminState::Enabled && p.state.admin != AdminState::Enabled;
        if decision.proposals.iter().any(takes_out) {
            decision.guards.push(Guard { pool: pool.to_owned(), revision: shared.revision });
        }
        Ok(decision)
    }

    /// Applies the states the store holds (a watch's events, or all of them
    /// after a resync) as of `revision`, in one change per pool.
    pub fn apply_shared(&mut self, states: Vec<StoredState>, revision: i64, now_ms: u64) {
        let mut plans: std::collections::BTreeMap<String, (Plan, Vec<Source>)> = Default::default();
        for stored in states {
            let Some(slot) = self.servers.find(&stored.pool, &stored.server) else {
                self.unknown_server(&stored, now_ms);
                continue;
            };
            let transition = toward(&slot.admin, &stored.state.admin, now_ms);
            if let Some(shared) = &mut self.shared {
                let record = (stored.revision, stored.state.admin);
                shared.records.insert((stored.pool.clone(), stored.server.clone()), record);
            }
            let (plan, sources) = plans.entry(stored.pool).or_default();
            plan.push((stored.server, transition));
            sources.push(stored.state.source);
        }
        for (pool, (plan, sources)) in plans {
            // Grouped by who decided, so each server keeps its own source.
            for source in [Source::Operator, Source::Config, Source::Monitor] {
                let part: Plan =
                    plan.iter().zip(&sources).filter(|(_, s)| **s == source).map(|(p, _)| p.clone()).collect();
                if part.iter().all(|(_, t)| *t == servers::Transition::Unchanged) {
                    continue;
                }
                if let Err(e) = self.execute(&pool, &part, Some(source), now_ms) {
                    log::error!("cannot apply the cluster's states of pool {pool}: {:#}", anyhow::Error::new(e));
                }
            }
        }
        if let Some(shared) = &mut self.shared {
            shared.revision = shared.revision.max(revision);
        }
    }

    /// A decision about a server this node's config does not have: said,
    /// not dropped (its config differs from the fleet's).
    fn unknown_server(&mut self, stored: &StoredState, now_ms: u64) {
        let message = format!(
            "the cluster decided {} for {}/{} (through node {}), which this node's config does not have: \
             is its config the fleet's?",
            stored.state.admin.label(),
            stored.pool,
            stored.server,
            stored.state.by
        );
        log::warn!("{message}");
        self.events.push(now_ms, Subject::server(&stored.pool, &stored.server), EventKind::Cluster, message);
    }

    /// Something about the cluster the operator must know.
    pub fn note(&mut self, message: String, now_ms: u64) {
        log::warn!("cluster: {message}");
        self.events.push(now_ms, Subject::Agent, EventKind::Cluster, message);
    }

    /// What the other nodes last published: their flows (for the ends of
    /// drains) and their monitors' verdicts (for the fleet's health).
    pub fn set_others(&mut self, others: Option<Others>, now_ms: u64) {
        if let Some(shared) = &mut self.shared {
            shared.others = others;
            self.follow_fleet_health(now_ms);
        }
    }

    /// The health rule of a cluster: a server is DOWN for the fleet when
    /// more than half of the live nodes (this one included) find it DOWN.
    /// A tie keeps it UP: one node's broken path or monitor must not take a
    /// server out of the fleet, and the whole fleet flaps no more than its
    /// majority does. Alone, or while the store does not answer, this
    /// node's own monitors decide.
    pub(super) fn health_verdict(&self, slot: &ServerSlot) -> Option<HealthVerdict> {
        let own = slot.health.seen_down.clone();
        let Some(others) = self.shared.as_ref().and_then(|s| s.others.as_ref()) else {
            return own.map(|reason| HealthVerdict { reason, seen_by: None });
        };
        let theirs = others.down.get(&(slot.pool.clone(), slot.name.clone()));
        let seen_by = usize::from(own.is_some()) + theirs.map_or(0, |(n, _)| *n);
        let live = others.live + 1;
        let reason = own.or_else(|| theirs.map(|(_, r)| r.clone()))?;
        (2 * seen_by > live).then_some(HealthVerdict { reason, seen_by: Some((seen_by, live)) })
    }

    /// Every monitored server's health, after the others' verdicts changed.
    fn follow_fleet_health(&mut self, now_ms: u64) {
        let monitored: Vec<(String, u32)> = self
            .servers
            .iter()
            .filter(|s| self.config.pools.get(&s.pool).is_some_and(|p| !p.health.monitors.is_empty()))
            .map(|s| (s.pool.clone(), s.id))
            .collect();
        for (pool, id) in monitored {
            self.follow_health(&pool, id, now_ms);
        }
    }

    /// In a cluster: the live flows of a server on the other nodes, if every
    /// one of them counted after `since_ms`.
    pub(super) fn others_flows(&self, pool: &str, server: &str, since_ms: u64) -> Option<u64> {
        let others = self.shared.as_ref()?.others.as_ref()?;
        (others.counted_ms >= since_ms)
            .then(|| others.by_server.get(&(pool.to_owned(), server.to_owned())).copied().unwrap_or(0))
    }

    /// Whether a server's state is the fleet's (as the store recorded it),
    /// so that the end of its drain is the fleet's too. A state this node
    /// set alone (its config's removal of the server, a maintenance reply)
    /// ends here, as on a node on its own.
    pub(super) fn fleets(&self, server: &ServerSlot) -> bool {
        let Some(shared) = &self.shared else { return false };
        let key = (server.pool.clone(), server.name.clone());
        shared.records.get(&key).is_some_and(|(_, admin)| *admin == server.admin)
    }

    /// In a cluster that this node sees: what its monitors find of a
    /// server's maintenance is proposed to the fleet, not applied here
    /// alone (without the store, it acts alone, as a node on its own).
    pub(super) fn with_fleet(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.others.is_some())
    }

    /// In a cluster: a change of `server` this node proposed and the store
    /// has not recorded yet (rolling maintenance counts it as out).
    pub(super) fn proposed_out(&self, server: &ServerSlot) -> bool {
        let Some(shared) = &self.shared else { return false };
        let key = (server.pool.clone(), server.name.clone());
        let revision = shared.records.get(&key).map_or(0, |(revision, _)| *revision);
        shared.proposed.contains(&(key, revision))
    }

    /// Asks the store to record a change this node found: the end of a
    /// drain (`source` none: it keeps who began it), a maintenance reply's
    /// drain or its end (the monitor). Each once per revision of its key;
    /// of several nodes proposing from one revision, the store takes the
    /// first.
    pub(super) fn propose(&mut self, pool: &str, plan: &Plan, source: Option<Source>, now_ms: u64) {
        let Ok(decision) = self.decide(pool, plan, source.unwrap_or(Source::Operator), now_ms) else { return };
        let shared = self.shared.as_mut().expect("propose is for a cluster");
        let fresh: Vec<Proposal> = decision
            .proposals
            .into_iter()
            .filter(|p| shared.proposed.insert(((p.pool.clone(), p.server.clone()), p.expected_revision)))
            .map(|mut p| {
                let slot = self.servers.find(&p.pool, &p.server).expect("planned server exists");
                p.state.source = source.unwrap_or(slot.source);
                p
            })
            .collect();
        if !fresh.is_empty() {
            let _ = shared.outbox.send(Batch { proposals: fresh, guards: decision.guards });
        }
    }

    /// Keeps the maintenance reply behind a drain about to be proposed.
    pub(super) fn remember_reply(&mut self, pool: &str, server: &str, matched: &str, announced: Option<Duration>) {
        if let Some(shared) = &mut self.shared {
            shared.replies.insert((pool.to_owned(), server.to_owned()), (matched.to_owned(), announced));
        }
    }

    /// Proposals the store refused because another server of their pool
    /// changed first (only those taking a server out carry a guard): no
    /// longer counted as proposed, and a monitor's maintenance drain among
    /// them is planned again from the pool as this node now sees it (it
    /// then waits its turn if the pool has its most servers out).
    pub fn not_recorded(&mut self, batch: Batch, now_ms: u64) {
        let Some(shared) = &mut self.shared else { return };
        for p in &batch.proposals {
            shared.proposed.remove(&((p.pool.clone(), p.server.clone()), p.expected_revision));
        }
        for p in batch.proposals.iter().filter(|p| p.state.source == Source::Monitor) {
            let Some(slot) = self.servers.find(&p.pool, &p.server) else { continue };
            let (id, admin, health) = (slot.id, slot.admin, &slot.health);
            let reply = self.shared.as_ref().and_then(|s| s.replies.get(&(p.pool.clone(), p.server.clone())).cloned());
            let waits = admin == AdminState::Enabled && health.maintenance && health.queued.is_none();
            if let (AdminState::Draining { .. }, Some((matched, announced)), true) = (p.state.admin, reply, waits) {
                self.maintenance_begins(&p.pool, id, &matched, announced, now_ms);
            }
        }
    }
}
