//! The `[cluster]` section: this node's name, the etcd store its nodes
//! share, and how to reach it. Without the section the agent is one node on
//! its own, as before.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::checks::Validator;

/// The default key prefix of a cluster's records in the store.
pub const DEFAULT_PREFIX: &str = "/lb";
/// How long one request to the store may take before it counts as failed.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a node's record outlives its last keep-alive.
const DEFAULT_LEASE: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster.
    pub node: String,
    /// The store's members' client URLs (`http://host:2379`, or `https://`
    /// with `tls`).
    pub endpoints: Vec<String>,
    /// Where this cluster's keys live in the store (several clusters can
    /// share one store).
    pub prefix: String,
    pub tls: Option<ClusterTls>,
    pub timeout: Duration,
    /// A node's record (its flows, its view) vanishes this long after the
    /// node is gone.
    pub lease: Duration,
    /// Where this node receives the other nodes' new flows, and the address
    /// it gives them to send to (flow replication: any node can continue
    /// any flow). None: flows are not replicated.
    pub sync_address: Option<SocketAddr>,
}

/// TLS to the store: the CA that signed its members' certificates, and this
/// node's client certificate and key (when the store requires them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterTls {
    pub ca: PathBuf,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    node: Option<String>,
    #[serde(default)]
    endpoints: Vec<String>,
    prefix: Option<String>,
    ca_file: Option<PathBuf>,
    cert_file: Option<PathBuf>,
    key_file: Option<PathBuf>,
    timeout: Option<String>,
    lease: Option<String>,
    sync_address: Option<String>,
}

impl Validator {
    pub(super) fn cluster(&mut self, raw: RawCluster) -> ClusterConfig {
        let tls = self.cluster_tls(&raw);
        let node = self.name("cluster.node", raw.node, "node name");
        let scheme = if tls.is_some() { "https://" } else { "http://" };
        if raw.endpoints.is_empty() {
            self.problem("cluster.endpoints", "name at least one member of the store (\"http://host:2379\")");
        }
        for (i, endpoint) in raw.endpoints.iter().enumerate() {
            if !endpoint.starts_with(scheme) || endpoint.len() == scheme.len() {
                let why = if tls.is_some() {
                    "ca_file is set, so it must start with https://"
                } else {
                    "it must start with http:// (or https:// with ca_file)"
                };
                self.problem(format!("cluster.endpoints[{i}]"), format!("\"{endpoint}\": {why}"));
            }
        }
        let prefix = raw.prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_owned());
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            self.problem("cluster.prefix", format!("\"{prefix}\" must start with '/' and not end with one"));
        }
        let timeout = self.duration("cluster.timeout", raw.timeout, DEFAULT_TIMEOUT);
        let lease = self.duration_of_at_least("cluster.lease", raw.lease, DEFAULT_LEASE, Duration::from_secs(2));
        let sync_address = raw.sync_address.and_then(|text| match text.parse::<SocketAddr>() {
            Ok(addr) if !addr.ip().is_unspecified() && addr.port() != 0 => Some(addr),
            _ => {
                let why =
                    "must be this node's own address and a port, such as \"10.0.0.11:7946\" or \"[fd00::11]:7946\"";
                self.problem("cluster.sync_address", format!("\"{text}\" {why}"));
                None
            }
        });
        ClusterConfig { node, endpoints: raw.endpoints, prefix, tls, timeout, lease, sync_address }
    }

    fn cluster_tls(&mut self, raw: &RawCluster) -> Option<ClusterTls> {
        if raw.cert_file.is_some() != raw.key_file.is_some() {
            self.problem("cluster.cert_file", "cert_file and key_file go together (a client certificate and its key)");
        }
        match &raw.ca_file {
            Some(ca) => Some(ClusterTls { ca: ca.clone(), cert: raw.cert_file.clone(), key: raw.key_file.clone() }),
            None => {
                if raw.cert_file.is_some() {
                    self.problem("cluster.ca_file", "a client certificate needs the store's CA (ca_file)");
                }
                None
            }
        }
    }
}
