//! Active health monitors: `probe` (one check: TCP, HTTP or UDP, from the
//! balancer host to a server's own address), `tally` (where results become
//! verdicts: rise, fall, maintenance). The schedule, bounded concurrency and
//! the verdicts sent to the owner of the state: `agent/monitors.rs`. What a
//! verdict does to a server is the owner's: `agent/health.rs`.

pub mod probe;
pub mod tally;

use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::config::Monitor;

/// A server to check, and how.
#[derive(Clone, Debug, PartialEq)]
pub struct CheckTarget {
    pub pool: String,
    pub server: String,
    pub identity: u64,
    pub address: std::net::IpAddr,
    pub port: u16,
    pub monitors: Arc<Vec<Monitor>>,
    /// The owner has it in maintenance (from a monitor, before a restart).
    pub in_maintenance: bool,
}

/// Every server to check (the owner publishes it at start and on reloads).
pub type CheckPlan = Vec<CheckTarget>;

/// The last check of a server, as `pool show` says it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastCheck {
    pub at_ms: u64,
    pub kind: &'static str,
    pub outcome: probe::Outcome,
    pub took: Duration,
}

/// What the checks found of a server (by default: not checked yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerChecks {
    pub verdict: tally::Verdict,
    pub maintenance: bool,
    pub last: Option<LastCheck>,
}

/// The checks' results by (pool, server).
pub type Checks = HashMap<(String, String), ServerChecks>;
