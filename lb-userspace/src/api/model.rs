//! The API's model: every type that crosses the agent's API, typed once.
//! The agent answers with these and the CLI reads them; nothing here knows
//! the agent's runtime or the datapath.
//!
//! On the wire (one JSON line each way): a [`Request`], then
//! `{"ok":true,"data":...}` or `{"ok":false,"error":"...","code":"..."}`.

use std::{collections::BTreeMap, fmt, str::FromStr};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    PoolList,
    PoolShow {
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
    },
}

/// What a reload changed (or, for a dry run, would change), a line each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadReport {
    pub applied: bool,
    pub changes: Vec<String>,
}

/// How an operator disables a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum DisableMode {
    /// Terminate every session now.
    Immediate,
    /// No new sessions; existing ones may finish, until `timeout_ms` if any.
    Graceful { timeout_ms: Option<u64> },
}

/// A server's administrative state, as the datapath reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ServerState {
    /// Takes new flows (if its weight is above 0).
    Enabled,
    /// No new flows; existing flows go on.
    Draining,
    /// No flows at all: their packets are answered with a reset or dropped.
    Disabled,
}

/// Who set a server's current state: the config (its `enabled` line, or its
/// removal) or an operator (a command through the CLI or the API). The
/// latest of the two wins (see `agent::reload`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Config,
    /// A health monitor (a server's maintenance reply).
    Monitor,
    /// What the state file of an older agent (before the config could
    /// disable servers) recorded.
    #[default]
    Operator,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::Config => "config",
            Source::Monitor => "monitor",
            Source::Operator => "operator",
        })
    }
}

/// Why a server is DISABLED.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DisableReason {
    /// Disabled at once by an operator: its sessions were terminated.
    Immediate,
    /// Its drain deadline came: the sessions left were terminated.
    Deadline,
    /// Its last session ended on its own.
    Drained,
}

/// Why a server is DRAINING or DISABLED, as people read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// DRAINING with no deadline.
    UntilDrained,
    /// DRAINING until a deadline, or DISABLED when it came.
    Deadline,
    Immediate,
    Drained,
    /// DRAINING because a health monitor's reply says it is in maintenance.
    Maintenance,
}

impl Why {
    pub fn label(self) -> &'static str {
        match self {
            Why::UntilDrained => "until drained",
            Why::Deadline => "deadline",
            Why::Immediate => "immediate",
            Why::Drained => "drained",
            Why::Maintenance => "maintenance (health monitor)",
        }
    }
}

impl From<DisableReason> for Why {
    fn from(reason: DisableReason) -> Why {
        match reason {
            DisableReason::Immediate => Why::Immediate,
            DisableReason::Deadline => Why::Deadline,
            DisableReason::Drained => Why::Drained,
        }
    }
}

impl fmt::Display for ServerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ServerState::Enabled => "ENABLED",
            ServerState::Draining => "DRAINING",
            ServerState::Disabled => "DISABLED",
        })
    }
}

/// A state with its reason: "ENABLED", "DRAINING (until drained)",
/// "DISABLED (immediate)". On the wire it is that string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateLabel {
    pub state: ServerState,
    pub why: Option<Why>,
}

impl fmt::Display for StateLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.why {
            Some(why) => write!(f, "{} ({})", self.state, why.label()),
            None => write!(f, "{}", self.state),
        }
    }
}

impl FromStr for StateLabel {
    type Err = String;
    fn from_str(text: &str) -> Result<StateLabel, String> {
        let (state, why) = match text.split_once(" (") {
            Some((state, rest)) => (state, Some(rest.strip_suffix(')').ok_or("unclosed reason")?)),
            None => (text, None),
        };
        let state = match state {
            "ENABLED" => ServerState::Enabled,
            "DRAINING" => ServerState::Draining,
            "DISABLED" => ServerState::Disabled,
            other => return Err(format!("unknown state {other:?}")),
        };
        let why = match why {
            None => None,
            Some(label) => Some(
                [Why::UntilDrained, Why::Deadline, Why::Immediate, Why::Drained, Why::Maintenance]
                    .into_iter()
                    .find(|w| w.label() == label)
                    .ok_or_else(|| format!("unknown reason {label:?}"))?,
            ),
        };
        Ok(StateLabel { state, why })
    }
}

impl Serialize for StateLabel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for StateLabel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<StateLabel, D::Error> {
        String::deserialize(deserializer)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for Why {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.label())
    }
}

impl<'de> Deserialize<'de> for Why {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Why, D::Error> {
        let label = String::deserialize(deserializer)?;
        [Why::UntilDrained, Why::Deadline, Why::Immediate, Why::Drained, Why::Maintenance]
            .into_iter()
            .find(|w| w.label() == label)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown reason {label:?}")))
    }
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
        }
    }
}

/// Something that happened to a server, for the log and the API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub id: u64,
    pub time_ms: u64,
    pub pool: String,
    pub server: String,
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
    /// Servers that take new flows (ENABLED, weight above 0).
    pub in_service: usize,
    pub enabled: usize,
    pub draining: usize,
    pub disabled: usize,
    /// Live flows of its servers, at the last count.
    pub active_flows: u64,
    /// New flows its servers were given since the datapath was loaded.
    pub new_flows: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerView {
    pub name: String,
    pub address: String,
    pub weight: u32,
    pub state: ServerState,
    pub why: Option<Why>,
    /// Live flows: TCP not yet closed by both sides or reset, UDP not idle out.
    pub active_flows: u64,
    pub deadline_left_ms: Option<u64>,
    /// Who set its state: the config or an operator.
    #[serde(default)]
    pub source: Source,
    /// Gone from the config: taken out, then forgotten.
    #[serde(default)]
    pub removing: bool,
    /// Its operational state as its pool's monitors found it: "UP", "DOWN
    /// (refused)", "UNCHECKED" (none if the pool has no monitor).
    #[serde(default)]
    pub health: Option<String>,
    /// The last check: when, which monitor, what it found, how long it took.
    #[serde(default)]
    pub last_check: Option<String>,
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub outcomes: BTreeMap<String, u64>,
    pub flow_table: FlowTableUse,
    #[serde(default)]
    pub reloads: ReloadStatus,
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
    fn state_labels_round_trip_as_strings() {
        for text in ["ENABLED", "DRAINING (until drained)", "DRAINING (deadline)", "DISABLED (immediate)"] {
            let label: StateLabel = text.parse().unwrap();
            assert_eq!(label.to_string(), text);
            assert_eq!(serde_json::to_string(&label).unwrap(), format!("\"{text}\""));
        }
        assert!("RUNNING".parse::<StateLabel>().is_err());
        assert!("DISABLED (tired)".parse::<StateLabel>().is_err());
    }

    #[test]
    fn the_wire_keeps_its_shape() {
        let request: Request =
            serde_json::from_str(r#"{"op":"disable","pool":"web","servers":["a"],"mode":{"mode":"immediate"}}"#)
                .unwrap();
        assert_eq!(
            request,
            Request::Disable {
                pool: "web".into(),
                servers: vec!["a".into()],
                mode: DisableMode::Immediate,
                force: false
            }
        );
        let view = ServerView {
            name: "a".into(),
            address: "10.0.0.1:80".into(),
            weight: 1,
            state: ServerState::Draining,
            why: Some(Why::UntilDrained),
            active_flows: 3,
            deadline_left_ms: None,
            source: Source::Operator,
            removing: false,
            health: None,
            last_check: None,
            packets_to: 0,
            bytes_to: 0,
            packets_from: 0,
            bytes_from: 0,
            new_flows: 0,
        };
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!((json["state"].as_str(), json["why"].as_str()), (Some("DRAINING"), Some("until drained")));
        let error = serde_json::to_value(ApiError::new(ErrorCode::LastServer, "refused")).unwrap();
        assert_eq!(error, serde_json::json!({"code": "last_server", "error": "refused"}));
    }
}
