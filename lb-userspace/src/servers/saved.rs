//! What survives the agent (the state file's content): each server's state,
//! who set it, what the config last said of it, and the servers and
//! services on their way out of the config.

use serde::{Deserialize, Serialize};

use super::state::{AdminState, Source};
use crate::config::Protocol;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Saved {
    pub servers: Records,
    pub leaving_services: Vec<LeavingService>,
}

/// What survives the agent of each server, by (pool, server): the state
/// file's records.
pub type Records = std::collections::BTreeMap<(String, String), ServerRecord>;

/// A server's state, who set it, and what the config last said of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerRecord {
    #[serde(flatten)]
    pub admin: AdminState,
    #[serde(default)]
    pub source: Source,
    /// The config's `enabled` when the agent last applied it (none in the
    /// state file of an older agent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_enabled: Option<bool>,
    /// Gone from the config: taken out, then forgotten once DISABLED.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
    /// Its ramp-up, if one was under way: an agent restarted during it
    /// goes on with it rather than give the server its full share at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ramp: Option<RampRecord>,
}

/// A ramp-up as the state file keeps it: when it began and ends (the
/// owner's clock, milliseconds since the epoch).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RampRecord {
    pub since_ms: u64,
    pub until_ms: u64,
}

impl ServerRecord {
    pub fn operator(admin: AdminState) -> ServerRecord {
        ServerRecord { admin, source: Source::Operator, config_enabled: None, removing: false, ramp: None }
    }
}

/// A service gone from the config whose flows are not over yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeavingService {
    pub vip: std::net::IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub pool: String,
    #[serde(flatten)]
    pub leaving: Leaving,
}

/// A service on its way out, as the state file keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaving {
    pub since_ms: u64,
    pub deadline_ms: Option<u64>,
}
