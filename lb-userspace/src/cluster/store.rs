//! The cluster's store (etcd): the only code that speaks to it. Its keys,
//! under the config's `cluster.prefix`:
//! - `<prefix>/states/<pool>/<server>`: the fleet's decision about a server
//!   (a [`SharedState`], JSON). Written by a transaction that checks the
//!   key's revision, so of two concurrent decisions one wins.
//! - `<prefix>/nodes/<node>`: what a node publishes (a [`NodeRecord`],
//!   JSON), under its lease: gone with the node.
//! - `<prefix>/node-admin/<node>`: the fleet's decision about a balancer
//!   node (a [`StoredNodeAdmin`], JSON; none: in service). Written by a
//!   transaction that checks the key's revision, as a server's state.
//! - `<prefix>/reload`: the last fleet reload asked for (a
//!   [`ReloadRequest`]); its revision identifies it. Every node re-reads
//!   its own config file when it changes.

use std::collections::BTreeMap;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp,
    TxnOpResponse, WatchOptions, WatchStream,
};
use serde::{Deserialize, Serialize};

use crate::{
    agent::shared::StoredState,
    config::ClusterConfig,
    model::NodeAdmin,
    servers::{Guard, Proposal, SharedState, health::DownReason},
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The cause is in the message and not a `source`: a chain printed
    // whole (`{:#}`) would say it twice.
    #[error("the cluster store is unreachable ({endpoints}): {cause}")]
    Unreachable { endpoints: String, cause: etcd_client::Error },
    #[error("cannot read the store's key {key}: {why}")]
    Malformed { key: String, why: String },
    #[error("cannot read the cluster's TLS file {path}: {cause}")]
    Tls { path: String, cause: std::io::Error },
}

/// What a node publishes about itself (under its lease).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub node: String,
    /// The hash of its pools and services (the same config gives the same
    /// server ids and Maglev rows on every node).
    pub config_hash: String,
    /// The store's revision whose states it applies.
    pub revision: i64,
    /// Its clock when it wrote this record (ms since the Unix epoch).
    pub clock_ms: u64,
    /// When its last count of flows started.
    pub counted_at_ms: u64,
    /// Its live flows, by "pool/server" (servers with none are left out).
    pub flows: BTreeMap<String, u64>,
    /// The servers its own monitors find DOWN, by "pool/server", and why.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub down: BTreeMap<String, DownReason>,
    pub started_ms: u64,
    /// Started while the store was unreachable: its states came from its
    /// state file, until it syncs.
    pub stale: bool,
    /// How it fared with the last fleet reload it followed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadOutcome>,
    /// Where it receives the other nodes' new flows (flow replication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<std::net::SocketAddr>,
    /// The VIPs its BGP daemon announces now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub announced: Vec<std::net::IpAddr>,
    /// While it drains: its flows still reaching it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub still_arriving: Option<u64>,
}

/// A balancer node's administrative state, and the node it was decided
/// through (or that ended its drain).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredNodeAdmin {
    pub admin: NodeAdmin,
    pub by: String,
}

/// A fleet reload: every node re-reads its own config file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadRequest {
    /// The node it was asked through.
    pub by: String,
    /// Taken past the guard (a pool left with no server in service).
    pub force: bool,
}

pub use crate::model::ReloadOutcome;

/// How a decision fared.
pub enum Recorded {
    /// Recorded at this revision.
    At(i64),
    /// A server was changed meanwhile: nothing was recorded. Each
    /// server's state now.
    Conflict(Vec<Current>),
    /// The servers are as the decision saw them, but another server of
    /// their pool changed (a [`Guard`]) by this revision: nothing was
    /// recorded; the decision is to be planned again from there.
    PoolChanged(i64),
}

/// A server's state in the store now, and its key's revision.
pub struct Current {
    pub pool: String,
    pub server: String,
    pub state: Option<SharedState>,
    pub revision: i64,
}

#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
    endpoints: String,
}

impl Store {
    /// Connects to the store's members (lazily: a member down is tried
    /// again at each request).
    pub async fn connect(config: &ClusterConfig) -> Result<Store, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.timeout)
            .with_timeout(config.timeout)
            .with_keep_alive(config.timeout / 2, config.timeout);
        if let Some(tls) = &config.tls {
            let read = |path: &std::path::Path| {
                std::fs::read(path).map_err(|cause| StoreError::Tls { path: path.display().to_string(), cause })
            };
            let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(read(&tls.ca)?));
            if let (Some(cert), Some(key)) = (&tls.cert, &tls.key) {
                t = t.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(t);
        }
        let endpoints = config.endpoints.join(",");
        let client = Client::connect(&config.endpoints, Some(options))
            .await
            .map_err(|cause| StoreError::Unreachable { endpoints: endpoints.clone(), cause })?;
        Ok(Store { client, prefix: config.prefix.clone(), endpoints })
    }

    fn unreachable(&self) -> impl FnOnce(etcd_client::Error) -> StoreError + '_ {
        |cause| StoreError::Unreachable { endpoints: self.endpoints.clone(), cause }
    }

    fn states_prefix(&self) -> String {
        format!("{}/states/", self.prefix)
    }

    fn state_key(&self, pool: &str, server: &str) -> String {
        format!("{}/states/{pool}/{server}", self.prefix)
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}/nodes/{node}", self.prefix)
    }

    /// Every server's state, and the store's revision they are as of.
    pub async fn states(&self) -> Result<(Vec<StoredState>, i64), StoreError> {
        let mut client = self.client.clone();
        let answer = client
            .get(self.states_prefix(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(self.unreachable())?;
        let revision = answer.header().map_or(0, |h| h.revision());
        let states = answer.kvs().iter().map(|kv| self.stored(kv)).collect::<Result<_, _>>()?;
        Ok((states, revision))
    }

    fn stored(&self, kv: &etcd_client::KeyValue) -> Result<StoredState, StoreError> {
        let key = String::from_utf8_lossy(kv.key()).into_owned();
        let malformed = |why: String| StoreError::Malformed { key: key.clone(), why };
        let rest = key.strip_prefix(&self.states_prefix()).ok_or_else(|| malformed("not a state's key".into()))?;
        let (pool, server) = rest.split_once('/').ok_or_else(|| malformed("not <pool>/<server>".into()))?;
        let state: SharedState = serde_json::from_slice(kv.value()).map_err(|e| malformed(e.to_string()))?;
        Ok(StoredState { pool: pool.to_owned(), server: server.to_owned(), state, revision: kv.mod_revision() })
    }

    /// Records a decision in one transaction: every server's key must still
    /// be at the revision the decision was made from, and each guarded
    /// pool's keys no newer than the guard's.
    pub async fn record(&self, proposals: &[Proposal], guards: &[Guard]) -> Result<Recorded, StoreError> {
        let keys: Vec<String> = proposals.iter().map(|p| self.state_key(&p.pool, &p.server)).collect();
        // No key of a guarded pool changed after the guard's revision.
        let guarded = guards.iter().map(|g| {
            let pool = format!("{}{}/", self.states_prefix(), g.pool);
            Compare::mod_revision(pool, CompareOp::Less, g.revision + 1).with_prefix()
        });
        let compares: Vec<Compare> = keys
            .iter()
            .zip(proposals)
            .map(|(key, p)| Compare::mod_revision(key.as_str(), CompareOp::Equal, p.expected_revision))
            .chain(guarded)
            .collect();
        let mut puts = Vec::new();
        for (key, p) in keys.iter().zip(proposals) {
            let value = serde_json::to_vec(&p.state).expect("a state serializes");
            puts.push(TxnOp::put(key.as_str(), value, None));
        }
        let gets: Vec<TxnOp> = keys.iter().map(|key| TxnOp::get(key.as_str(), None)).collect();
        let txn = Txn::new().when(compares).and_then(puts).or_else(gets);
        let mut client = self.client.clone();
        let answer = client.txn(txn).await.map_err(self.unreachable())?;
        if answer.succeeded() {
            return Ok(Recorded::At(answer.header().map_or(0, |h| h.revision())));
        }
        let mut now = Vec::new();
        for (p, response) in proposals.iter().zip(answer.op_responses()) {
            let TxnOpResponse::Get(get) = response else { continue };
            let kv = get.kvs().first();
            let state = kv.and_then(|kv| serde_json::from_slice(kv.value()).ok());
            let revision = kv.map_or(0, |kv| kv.mod_revision());
            now.push(Current { pool: p.pool.clone(), server: p.server.clone(), state, revision });
        }
        if proposals.iter().zip(&now).all(|(p, c)| c.revision == p.expected_revision) {
            return Ok(Recorded::PoolChanged(answer.header().map_or(0, |h| h.revision())));
        }
        Ok(Recorded::Conflict(now))
    }

    /// The states' changes after `revision`.
    pub async fn watch_states(&self, revision: i64) -> Result<WatchStream, StoreError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        client.watch(self.states_prefix(), Some(options)).await.map_err(self.unreachable())
    }

    /// The states a watch's answer carries (puts; a deleted key is no
    /// decision, and is logged).
    pub fn changed(&self, answer: &etcd_client::WatchResponse) -> Result<Vec<StoredState>, StoreError> {
        let mut states = Vec::new();
        for event in answer.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                etcd_client::EventType::Put => states.push(self.stored(kv)?),
                etcd_client::EventType::Delete => {
                    log::warn!(
                        "the store's key {} was deleted: its server keeps its state",
                        kv.key_str().unwrap_or("?")
                    );
                }
            }
        }
        Ok(states)
    }

    fn reload_key(&self) -> String {
        format!("{}/reload", self.prefix)
    }

    /// Asks every node to reload its config file; the request's revision.
    pub async fn request_reload(&self, request: &ReloadRequest) -> Result<i64, StoreError> {
        let mut client = self.client.clone();
        let value = serde_json::to_vec(request).expect("a request serializes");
        let answer = client.put(self.reload_key(), value, None).await.map_err(self.unreachable())?;
        Ok(answer.header().map_or(0, |h| h.revision()))
    }

    /// The last reload asked for (its revision), and the store's revision.
    pub async fn last_reload(&self) -> Result<(Option<(i64, ReloadRequest)>, i64), StoreError> {
        let mut client = self.client.clone();
        let answer = client.get(self.reload_key(), None).await.map_err(self.unreachable())?;
        let revision = answer.header().map_or(0, |h| h.revision());
        let last = answer.kvs().first().map(|kv| self.reload_of(kv)).transpose()?;
        Ok((last, revision))
    }

    fn reload_of(&self, kv: &etcd_client::KeyValue) -> Result<(i64, ReloadRequest), StoreError> {
        let request = serde_json::from_slice(kv.value())
            .map_err(|e| StoreError::Malformed { key: self.reload_key(), why: e.to_string() })?;
        Ok((kv.mod_revision(), request))
    }

    /// Reloads asked for after `revision`.
    pub async fn watch_reloads(&self, revision: i64) -> Result<WatchStream, StoreError> {
        let mut client = self.client.clone();
        let options = WatchOptions::new().with_start_revision(revision + 1);
        client.watch(self.reload_key(), Some(options)).await.map_err(self.unreachable())
    }

    /// The reload requests a watch's answer carries.
    pub fn reloads(&self, answer: &etcd_client::WatchResponse) -> Result<Vec<(i64, ReloadRequest)>, StoreError> {
        let puts = answer.events().iter().filter(|e| e.event_type() == etcd_client::EventType::Put);
        puts.filter_map(|e| e.kv()).map(|kv| self.reload_of(kv)).collect()
    }

    /// A lease for this node's record, of `ttl_s` seconds.
    pub async fn grant(&self, ttl_s: i64) -> Result<i64, StoreError> {
        let mut client = self.client.clone();
        Ok(client.lease_grant(ttl_s, None).await.map_err(self.unreachable())?.id())
    }

    /// Keeps `lease` alive once; false if it is gone (expired).
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        let mut client = self.client.clone();
        let (mut keeper, mut answers) = client.lease_keep_alive(lease).await.map_err(self.unreachable())?;
        keeper.keep_alive().await.map_err(self.unreachable())?;
        let answer = answers.message().await.map_err(self.unreachable())?;
        Ok(answer.is_some_and(|a| a.ttl() > 0))
    }

    pub async fn put_node(&self, record: &NodeRecord, lease: i64) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        let value = serde_json::to_vec(record).expect("a record serializes");
        client
            .put(self.node_key(&record.node), value, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(self.unreachable())?;
        Ok(())
    }

    fn node_admin_key(&self, node: &str) -> String {
        format!("{}/node-admin/{node}", self.prefix)
    }

    /// Every node's administrative state that was ever decided, with its
    /// key's revision (a node without one is in service).
    pub async fn node_admins(&self) -> Result<BTreeMap<String, (StoredNodeAdmin, i64)>, StoreError> {
        let mut client = self.client.clone();
        let prefix = self.node_admin_key("");
        let answer =
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await.map_err(self.unreachable())?;
        let mut admins = BTreeMap::new();
        for kv in answer.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let stored = serde_json::from_slice(kv.value())
                .map_err(|e| StoreError::Malformed { key: key.clone(), why: e.to_string() })?;
            let node = key.strip_prefix(&prefix).unwrap_or(&key).to_owned();
            admins.insert(node, (stored, kv.mod_revision()));
        }
        Ok(admins)
    }

    /// Sets a node's administrative state if its key is still at revision
    /// `expected` (0: never set): the revision it was set at, or none if it
    /// changed meanwhile.
    pub async fn put_node_admin(
        &self,
        node: &str,
        admin: &StoredNodeAdmin,
        expected: i64,
    ) -> Result<Option<i64>, StoreError> {
        let key = self.node_admin_key(node);
        let value = serde_json::to_vec(admin).expect("a node's state serializes");
        let txn = Txn::new()
            .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key.as_str(), value, None)]);
        let mut client = self.client.clone();
        let answer = client.txn(txn).await.map_err(self.unreachable())?;
        Ok(answer.succeeded().then(|| answer.header().map_or(0, |h| h.revision())))
    }

    fn left_key(&self, node: &str) -> String {
        format!("{}/left/{node}", self.prefix)
    }

    /// `node` leaves the cluster for good (`lb cleanup` on it, its agent
    /// stopped): its record goes now rather than with its lease, and the
    /// other nodes forget it (they showed it gone, and alerted on it, until
    /// each restarted).
    pub async fn leave(&self, node: &str) -> Result<(), StoreError> {
        let txn = Txn::new().and_then([
            TxnOp::delete(self.node_key(node), None),
            TxnOp::put(self.left_key(node), b"left".to_vec(), None),
        ]);
        let mut client = self.client.clone();
        client.txn(txn).await.map_err(self.unreachable())?;
        Ok(())
    }

    /// `node` is back: it left before, and its agent started again. (A live
    /// record counts over a mark left, so this is only tidiness.)
    pub async fn rejoin(&self, node: &str) -> Result<(), StoreError> {
        let mut client = self.client.clone();
        client.delete(self.left_key(node), None).await.map_err(self.unreachable())?;
        Ok(())
    }

    /// The nodes that left for good.
    pub async fn left(&self) -> Result<std::collections::BTreeSet<String>, StoreError> {
        let mut client = self.client.clone();
        let prefix = self.left_key("");
        let answer =
            client.get(prefix.as_str(), Some(GetOptions::new().with_prefix())).await.map_err(self.unreachable())?;
        Ok(answer
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).strip_prefix(&prefix).unwrap_or_default().to_owned())
            .collect())
    }

    /// Every live node's record.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, StoreError> {
        let mut client = self.client.clone();
        let prefix = format!("{}/nodes/", self.prefix);
        let answer = client.get(prefix, Some(GetOptions::new().with_prefix())).await.map_err(self.unreachable())?;
        answer
            .kvs()
            .iter()
            .map(|kv| {
                serde_json::from_slice(kv.value()).map_err(|e| StoreError::Malformed {
                    key: String::from_utf8_lossy(kv.key()).into_owned(),
                    why: e.to_string(),
                })
            })
            .collect()
    }
}
