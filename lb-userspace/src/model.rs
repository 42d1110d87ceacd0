//! The API's model: every type that crosses the agent's API, typed once.
//! The agent answers with these and the CLI reads them; nothing here knows
//! the agent's runtime or the datapath.
//!
//! On the wire (one JSON line each way): a [`Request`], then
//! `{"ok":true,"data":...}` or `{"ok":false,"error":"...","code":"..."}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::servers::{
    health::DownReason,
    state::{DisableMode, DisableReason, ServerState, Source, StateLabel, Why},
};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    PoolList,
    PoolShow {
        pool: String,
    },
    /// Each server's live flows and new flows over the last minutes.
    PoolHistory {
        pool: String,
    },
    Disable {
        pool: String,
        servers: Vec<String>,
        mode: DisableMode,
        #[serde(default)]
        force: bool,
    },
    Enable {
        pool: String,
        servers: Vec<String>,
        /// Even a server whose monitor says it is in maintenance.
        #[serde(default)]
        force: bool,
    },
    /// The event log, oldest first; only events after id `since` if given.
    Events {
        #[serde(default)]
        since: Option<u64>,
    },
    Stats,
    /// Re-reads the agent's config file and applies the difference.
    Reload {
        #[serde(default)]
        force: bool,
        #[serde(default)]
        dry_run: bool,
        /// In a cluster: only this node re-reads its file (as SIGHUP
        /// does), not every node. Sent only when set, so that a plain
        /// reload from a newer CLI still reaches an agent that predates it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        this_node: bool,
    },
    /// The cluster's nodes as this node sees them.
    Nodes,
    /// Takes a balancer node out of service: its VIPs withdrawn from its
    /// routers, its flows continued by the other nodes.
    NodeDisable {
        node: String,
        mode: DisableMode,
        /// Even if no other node in service announces its VIPs.
        #[serde(default)]
        force: bool,
    },
    /// Puts a balancer node back into service: its VIPs announced again.
    NodeEnable {
        node: String,
    },
}

/// A balancer node's administrative state, the fleet's decision (in the
/// store). Absent: in service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum NodeAdmin {
    /// Announces its VIPs (once it forwards them).
    #[default]
    InService,
    /// Withdrawn; its flows are moving to the other nodes (the routers
    /// rehash them; the other nodes hold copies). Disabled once none has
    /// reached it for a while, or at the deadline.
    Draining {
        since_ms: u64,
        #[serde(default)]
        deadline_ms: Option<u64>,
    },
    /// Withdrawn, and no longer carrying flows: it may be stopped.
    Disabled { since_ms: u64, reason: NodeDisabled },
}

/// A node's state changed by an operator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeChange {
    pub node: String,
    pub from: NodeAdmin,
    pub to: NodeAdmin,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeDisabled {
    /// Withdrawn at once, flows left to their copies.
    Immediate,
    /// No flow reached it for a while after it was withdrawn.
    Drained,
    /// Its drain's deadline passed while flows still reached it.
    Deadline,
}

impl NodeAdmin {
    pub fn label(&self) -> &'static str {
        match self {
            NodeAdmin::InService => "in service",
            NodeAdmin::Draining { .. } => "draining",
            NodeAdmin::Disabled { .. } => "disabled",
        }
    }
}

/// What a reload changed (or, for a dry run, would change), a line each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub applied: bool,
    pub changes: Vec<String>,
    /// In a cluster: how each live node fared with this reload (each
    /// re-reads its own config file).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeReload>,
}

/// How a node fared with a fleet reload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReload {
    pub node: String,
    /// None: it did not say within the store's timeout.
    pub outcome: Option<ReloadOutcome>,
}

/// What a node did with a fleet reload (the request's revision).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub request: i64,
    pub ok: bool,
    /// "applied 2 change(s)", "nothing to change", or why it was refused.
    pub message: String,
}

/// What happened to a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Began draining (or got a new deadline).
    Draining,
    /// Disabled at once by an operator.
    Disabled,
    /// Back in service.
    Enabled,
    /// Its drain deadline came: what was left was terminated.
    Deadline,
    /// Its last flow ended: disabled.
    Drained,
    /// Added to its pool by a reload.
    Added,
    /// Gone from the config and from the balancer: its flows ended or were
    /// terminated. A service's removal names the service as the server.
    Removed,
    /// A reload applied a new config: what it changed.
    Reloaded,
    /// Its health monitors found it DOWN (and, with `on_down`, its flows cut).
    Down,
    /// Its health monitors found it UP again.
    Up,
    /// A maintenance reply began or ended its maintenance.
    Maintenance,
    /// Every server of a pool in service is DOWN: all serve (fail-open).
    FailOpen,
    /// A server back in service began its ramp-up, or ended it.
    RampUp,
    /// A draining server's idle connections were closed cleanly.
    IdleClosed,
    /// The cluster: its store lost or found again, a decision about a
    /// server this node does not know, a node whose config differs.
    Cluster,
}

impl EventKind {
    /// As on the wire: "draining", "deadline", ...
    pub fn label(self) -> &'static str {
        match self {
            EventKind::Draining => "draining",
            EventKind::Disabled => "disabled",
            EventKind::Enabled => "enabled",
            EventKind::Deadline => "deadline",
            EventKind::Drained => "drained",
            EventKind::Added => "added",
            EventKind::Removed => "removed",
            EventKind::Reloaded => "reloaded",
            EventKind::Down => "down",
            EventKind::Up => "up",
            EventKind::Maintenance => "maintenance",
            EventKind::FailOpen => "fail_open",
            EventKind::RampUp => "ramp_up",
            EventKind::IdleClosed => "idle_closed",
            EventKind::Cluster => "cluster",
        }
    }
}

/// What an event is about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    Server {
        pool: String,
        server: String,
    },
    /// A service ("VIP:port/protocol") of a pool.
    Service {
        pool: String,
        service: String,
    },
    Pool {
        pool: String,
    },
    /// The agent itself (a reload).
    Agent,
}

impl Subject {
    pub fn server(pool: &str, server: &str) -> Subject {
        Subject::Server { pool: pool.to_owned(), server: server.to_owned() }
    }

    /// The pool it concerns, if any.
    pub fn pool(&self) -> Option<&str> {
        match self {
            Subject::Server { pool, .. } | Subject::Service { pool, .. } | Subject::Pool { pool } => Some(pool),
            Subject::Agent => None,
        }
    }

    /// The server it concerns, if it is one.
    pub fn server_name(&self) -> Option<&str> {
        match self {
            Subject::Server { server, .. } => Some(server),
            _ => None,
        }
    }
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Server { pool, server } => write!(f, "{pool}/{server}"),
            Subject::Service { pool, service } => write!(f, "{pool}: service {service}"),
            Subject::Pool { pool } => write!(f, "pool {pool}"),
            Subject::Agent => f.write_str("agent"),
        }
    }
}

/// Something that happened, for the log and the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub time_ms: u64,
    pub subject: Subject,
    pub kind: EventKind,
    pub message: String,
}

/// What a command did to one server.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    pub pool: String,
    pub server: String,
    pub from: StateLabel,
    pub to: StateLabel,
    /// Live TCP flows reset (when the server was terminated).
    pub flows_reset: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolSummary {
    pub pool: String,
    pub services: Vec<String>,
    pub servers: usize,
    /// Servers that take new flows (ENABLED, weight above 0, not DOWN).
    pub in_service: usize,
    /// Servers its monitors find DOWN.
    #[serde(default)]
    pub down: usize,
    pub enabled: usize,
    pub draining: usize,
    pub disabled: usize,
    /// Live flows of its servers, at the last count.
    pub active_flows: u64,
    /// New flows its servers were given since the datapath was loaded.
    pub new_flows: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerView {
    pub name: String,
    /// "10.0.1.2:8080"; a dual-stack server's IPv6 endpoint follows,
    /// "10.0.1.2:8080, [fd00:1::2]:8080".
    pub address: String,
    pub weight: u32,
    pub state: ServerState,
    pub why: Option<Why>,
    /// Live flows: TCP not yet closed by both sides or reset, UDP not idle out.
    pub active_flows: u64,
    /// Its flows are being purged and reset now (an immediate disable or a
    /// deadline; a million take seconds): `active_flows` are those going.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub resetting: bool,
    pub deadline_left_ms: Option<u64>,
    /// The drain's deadline (ms since the Unix epoch): in a cluster, the
    /// same instant on every node.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// When it went DRAINING or DISABLED (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// In a cluster: its live flows on each node, by node (this one's too).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub flows_by_node: BTreeMap<String, u64>,
    /// Who set its state: the config or an operator.
    #[serde(default)]
    pub source: Source,
    /// Gone from the config: taken out, then forgotten.
    #[serde(default)]
    pub removing: bool,
    /// Whether it is given new flows now: ENABLED, weight above 0, not
    /// being removed, not awaiting the fleet, and not DOWN (unless its
    /// pool fails open).
    #[serde(default)]
    pub takes_new_flows: bool,
    /// In a cluster: added by a fleet reload that not every node has
    /// applied yet; it takes new flows once they have.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub awaiting_fleet: bool,
    /// Ramping up after it came back (the pool's `ramp_up`): the part of
    /// its weight the hash rows give it now, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp_up_percent: Option<u32>,
    /// Its operational state as its pool's monitors found it (none if the
    /// pool has no monitor).
    #[serde(default)]
    pub health: Option<HealthView>,
    pub packets_to: u64,
    pub bytes_to: u64,
    pub packets_from: u64,
    pub bytes_from: u64,
    pub new_flows: u64,
}

impl ServerView {
    pub fn label(&self) -> StateLabel {
        StateLabel { state: self.state, why: self.why }
    }
}

/// A server's operational state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    /// Not checked yet: it serves, and its first check decides.
    Unchecked,
    Up,
    Down,
}

/// What a server's monitors found, as the owner applied it, and the last
/// check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthView {
    pub status: HealthStatus,
    /// Why it is DOWN.
    pub reason: Option<DownReason>,
    /// Every server of its pool in service is DOWN: it serves all the same.
    pub fail_open: bool,
    /// Its replies say it is in maintenance.
    pub maintenance: bool,
    /// Its maintenance waits its turn (rolling maintenance): its place in
    /// line (1: next). It keeps serving meanwhile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queued: Option<usize>,
    pub last_check: Option<CheckView>,
    /// In a cluster: what each live node's own monitors find ("UP",
    /// "DOWN (refused)"); the status above is the fleet's (see
    /// docs/cluster.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_node: BTreeMap<String, String>,
}

impl HealthView {
    /// "UP", "DOWN (refused)", "DOWN (refused), serving: every server is
    /// down", "UNCHECKED".
    pub fn label(&self) -> String {
        match (self.status, &self.reason) {
            (HealthStatus::Down, Some(reason)) if self.fail_open => {
                format!("DOWN ({reason}), serving: every server is down")
            }
            (HealthStatus::Down, Some(reason)) => format!("DOWN ({reason})"),
            (HealthStatus::Down, None) => "DOWN".to_owned(),
            (HealthStatus::Up, _) => match self.queued {
                Some(place) => format!("UP, queued for maintenance ({place} in line)"),
                None => "UP".to_owned(),
            },
            (HealthStatus::Unchecked, _) => "UNCHECKED".to_owned(),
        }
    }
}

/// What one check found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckResult {
    Pass,
    Fail,
    Maintenance,
}

/// A server's last check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckView {
    /// The monitor's kind: "tcp", "http", "udp".
    pub monitor: String,
    pub result: CheckResult,
    /// Its HTTP status, if it answered HTTP.
    pub status: Option<u16>,
    /// Why it failed.
    pub reason: Option<DownReason>,
    /// What said it is in maintenance ("status 503", "\"maintenance\""), and
    /// the drain it announced.
    pub maintenance: Option<String>,
    pub announced_ms: Option<u64>,
    pub latency_ms: f64,
    /// How long ago it was made, when the answer was given.
    pub ago_ms: u64,
}

impl CheckView {
    /// "http: status 200, 1.2 ms, 0.4 s ago"
    pub fn describe(&self) -> String {
        let found = match (self.result, &self.reason, &self.maintenance) {
            (CheckResult::Fail, Some(reason), _) => reason.to_string(),
            (CheckResult::Maintenance, _, Some(matched)) => match self.announced_ms {
                Some(ms) => format!("maintenance ({matched}, announces {}s)", ms / 1000),
                None => format!("maintenance ({matched})"),
            },
            _ => self.status.map_or_else(|| "answered".to_owned(), |s| format!("status {s}")),
        };
        format!("{}: {found}, {:.1} ms, {:.1} s ago", self.monitor, self.latency_ms, self.ago_ms as f64 / 1000.0)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolView {
    pub pool: String,
    pub services: Vec<String>,
    pub servers: Vec<ServerView>,
    /// Its services gone from the config whose flows are not over yet.
    #[serde(default)]
    pub leaving_services: Vec<LeavingServiceView>,
    /// How old the flow counts are (see `agent::drain` for how often they
    /// are taken).
    pub counted_ms_ago: u64,
    /// The fewest servers in service a change may leave (`min_in_service`).
    #[serde(default)]
    pub min_in_service: usize,
    /// Rolling maintenance: the most servers out at once (none: no limit).
    #[serde(default)]
    pub max_in_maintenance: Option<usize>,
}

/// What the dashboard draws of a pool: each server's recent past.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PoolHistory {
    pub pool: String,
    /// How often a point is taken.
    pub every_ms: u64,
    pub servers: Vec<ServerHistory>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServerHistory {
    pub name: String,
    /// Oldest first.
    pub points: Vec<HistoryPoint>,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// Live flows at the last count before it.
    pub flows: u64,
    /// New flows given to the server per second, since the point before.
    pub new_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeavingServiceView {
    /// "VIP:port/protocol".
    pub service: String,
    pub active_flows: u64,
    pub deadline_left_ms: Option<u64>,
}

/// Every packet the datapath saw, by outcome: what it forwarded, passed,
/// dropped, and why.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    pub outcomes: BTreeMap<String, u64>,
    pub flow_table: FlowTableUse,
    #[serde(default)]
    pub reloads: ReloadStatus,
    /// Where the agent's start-up took its time.
    #[serde(default)]
    pub startup: Startup,
}

/// The cluster as this node sees it (`lb nodes`, `GET /api/v1/nodes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodesView {
    /// This node's name.
    pub node: String,
    /// Whether the store answers this node now.
    pub store_reachable: bool,
    /// The store's revision whose states this node applies.
    pub revision: Option<i64>,
    /// This node started while the store was unreachable and has not
    /// synced since: its states came from its state file and may be stale.
    #[serde(default)]
    pub stale: bool,
    /// Every node seen since this one started, by name.
    pub nodes: Vec<NodeView>,
    /// This node's flow replication, since its agent started (none: off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<ReplicationCounts>,
}

/// What a node's flow replication did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicationCounts {
    /// Flows sent to the other nodes (new ones, pushes, refreshes).
    pub sent: u64,
    /// Other nodes' flows written into this node's tables.
    pub received: u64,
    /// Datagrams refused (unknown sender, malformed, unknown server).
    pub refused: u64,
    /// New flows the datapath could not hand over (its ring was full).
    pub lost: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    pub node: String,
    /// Its record is in the store (its lease lives).
    pub up: bool,
    /// When its record last changed, as this node saw it.
    pub last_sync_ms: Option<u64>,
    pub revision: i64,
    pub config_hash: String,
    /// Its config hash is this node's.
    pub same_config: bool,
    /// Its live flows.
    pub flows: u64,
    /// Its live flows by "pool/server".
    pub flows_by_server: BTreeMap<String, u64>,
    /// The servers its own monitors find DOWN, by "pool/server".
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub down: BTreeMap<String, DownReason>,
    /// How it fared with the last fleet reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<ReloadOutcome>,
    /// Its clock minus this node's, estimated from its last records' clocks
    /// (the largest of the last samples: each is seen late by up to the
    /// store's polling interval, a quarter second, never early).
    pub clock_offset_ms: Option<i64>,
    /// It started from its state file while the store was unreachable.
    pub stale: bool,
    pub started_ms: u64,
    /// Its administrative state (node maintenance), and who decided it.
    #[serde(default)]
    pub admin: NodeAdmin,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_by: Option<String>,
    /// The store's revision of that state (0: never decided).
    #[serde(default)]
    pub admin_revision: i64,
    /// The VIPs its BGP daemon announces now (none without `[bgp]`).
    #[serde(default)]
    pub announced: Vec<std::net::IpAddr>,
    /// While it drains: its flows that still reached it in the last
    /// seconds (the router has not moved them yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub still_arriving: Option<u64>,
}

/// How long the agent's start took, phase by phase, from the process's
/// start until its API answered.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Startup {
    pub phases: Vec<StartupPhase>,
    pub total_ms: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StartupPhase {
    pub phase: String,
    pub ms: f64,
}

impl Startup {
    /// "1.2 ms config, 80.3 ms program load, ..."
    pub fn summary(&self) -> String {
        let phases: Vec<String> = self.phases.iter().map(|p| format!("{:.1} ms {}", p.ms, p.phase)).collect();
        format!("{:.1} ms ({})", self.total_ms, phases.join(", "))
    }
}

/// How the config's reloads went since the agent started (dry runs apart).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// Whether the last reload was applied (true before any): false means
    /// the file on disk is not what runs.
    pub last_successful: bool,
    /// When the config that runs was applied (the start, or the last reload
    /// applied), ms since the Unix epoch.
    pub last_success_ms: u64,
    pub applied: u64,
    pub refused: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTableUse {
    /// Flows the table is sized for (`flows.max`).
    pub max_flows: u32,
    /// Flows in it after the last walk (none before the first).
    pub flows: Option<u64>,
    /// Flows a new one took the place of in the full table, by kind
    /// (half_open, closed, in_use): half-open and closed flows go first.
    pub evictions: BTreeMap<String, u64>,
}

/// Why the agent refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed, too long, or incomplete request; a bad argument.
    BadRequest,
    UnknownPool,
    UnknownServer,
    /// The last-server guard: the change would leave a pool with no
    /// enabled server (`force` overrides it).
    LastServer,
    /// The agent has too many connections open: try again.
    Busy,
    /// A step of the change failed (a map write, the state file).
    Failed,
    /// HTTP only: the request carries no valid token.
    Unauthorized,
    /// A reload's config has problems (each with its key path).
    InvalidConfig,
    /// A reload changes a setting that only a restart can change.
    RestartNeeded,
    /// An enable of a server whose monitor says it is in maintenance
    /// (`force` overrides it).
    InMaintenance,
    /// Cluster: the server was changed through another node meanwhile (the
    /// store's order decided): nothing was changed by this request.
    Conflict,
    /// Cluster: the shared store cannot be reached (no quorum): nothing was
    /// changed.
    StoreUnreachable,
    /// Cluster: no node of that name was ever seen.
    UnknownNode,
    /// The last-node guard: no other node in service would announce the
    /// node's VIPs (`force` overrides it).
    LastNode,
    /// A cluster operation on an agent without `[cluster]`.
    NotInCluster,
}

/// A refusal: its kind, and a message naming what was wrong.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub code: ErrorCode,
    #[serde(rename = "error")]
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError { code, message: message.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_keeps_its_shape() {
        let view = ServerView {
            name: "a".into(),
            address: "10.0.0.1:80".into(),
            weight: 1,
            state: ServerState::Draining,
            why: Some(Why::UntilDrained),
            active_flows: 3,
            resetting: false,
            deadline_left_ms: None,
            deadline_ms: None,
            since_ms: None,
            flows_by_node: BTreeMap::new(),
            source: Source::Operator,
            removing: false,
            takes_new_flows: false,
            awaiting_fleet: false,
            ramp_up_percent: None,
            health: None,
            packets_to: 0,
            bytes_to: 0,
            packets_from: 0,
            bytes_from: 0,
            new_flows: 0,
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!((json["state"].as_str(), json["why"].as_str()), (Some("DRAINING"), Some("until drained")));
        assert!(json.get("resetting").is_none(), "said only while true");
        let health = HealthView {
            status: HealthStatus::Down,
            reason: Some(DownReason::WrongStatus { status: 500 }),
            fail_open: false,
            maintenance: false,
            queued: None,
            last_check: None,
            by_node: Default::default(),
        };
        let json = serde_json::to_value(&health).unwrap();
        assert_eq!((json["status"].as_str(), json["reason"]["kind"].as_str()), (Some("down"), Some("wrong_status")));
        assert_eq!(json["reason"]["status"], 500);
        assert_eq!(health.label(), "DOWN (wrong status 500)");
        let subjects = [Subject::server("web", "a"), Subject::Pool { pool: "web".into() }, Subject::Agent];
        let json = serde_json::to_value(&subjects).unwrap();
        assert_eq!(
            json,
            serde_json::json!([{"kind":"server","pool":"web","server":"a"},{"kind":"pool","pool":"web"},{"kind":"agent"}])
        );
        let label = StateLabel { state: ServerState::Draining, why: Some(Why::Deadline) };
        assert_eq!(serde_json::to_value(label).unwrap(), serde_json::json!({"state":"DRAINING","why":"deadline"}));
        assert_eq!(label.to_string(), "DRAINING (deadline)");
        let error = serde_json::to_value(ApiError::new(ErrorCode::LastServer, "refused")).unwrap();
        assert_eq!(error, serde_json::json!({"code": "last_server", "error": "refused"}));
    }
}
