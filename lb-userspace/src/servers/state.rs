//! Where a server's state changes: the administrative states of a pool
//! member, the transitions an operator's command makes, and the guard that
//! keeps a pool from losing its last server by accident.

use std::time::Duration;

use std::fmt;

use lb_common::server_state;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// How a server is taken out: a word of the config file's vocabulary (a
/// pool's `graceful_disable_timeout`) as well as of an operator's command.
pub use crate::config::DisableMode;

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

/// A state with its reason. On the wire: `{"state":"DRAINING","why":"deadline"}`;
/// for people: "DRAINING (deadline)".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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

/// A pool member's administrative state. Instants are milliseconds since
/// the Unix epoch: deadlines are wall-clock instants, so a restarted agent
/// fires them at the same moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum AdminState {
    Enabled,
    /// No new flows; existing ones go on, until `deadline_ms` if any.
    Draining {
        since_ms: u64,
        deadline_ms: Option<u64>,
    },
    Disabled {
        since_ms: u64,
        reason: DisableReason,
    },
}

impl AdminState {
    /// The code the datapath reads.
    pub fn code(&self) -> u8 {
        match self {
            AdminState::Enabled => server_state::ENABLED,
            AdminState::Draining { .. } => server_state::DRAINING,
            AdminState::Disabled { .. } => server_state::DISABLED,
        }
    }

    pub fn state(&self) -> ServerState {
        match self {
            AdminState::Enabled => ServerState::Enabled,
            AdminState::Draining { .. } => ServerState::Draining,
            AdminState::Disabled { .. } => ServerState::Disabled,
        }
    }

    pub fn why(&self) -> Option<Why> {
        match self {
            AdminState::Enabled => None,
            AdminState::Draining { deadline_ms: None, .. } => Some(Why::UntilDrained),
            AdminState::Draining { deadline_ms: Some(_), .. } => Some(Why::Deadline),
            AdminState::Disabled { reason, .. } => Some(Why::from(*reason)),
        }
    }

    /// "DISABLED (drained)", "DRAINING (until drained)", ...
    pub fn label(&self) -> StateLabel {
        StateLabel { state: self.state(), why: self.why() }
    }

    pub fn is_draining(&self) -> bool {
        matches!(self, AdminState::Draining { .. })
    }

    /// When it went out of service (drained or disabled), if it is out.
    pub fn since_ms(&self) -> Option<u64> {
        match self {
            AdminState::Enabled => None,
            AdminState::Draining { since_ms, .. } | AdminState::Disabled { since_ms, .. } => Some(*since_ms),
        }
    }

    /// The drain deadline, if it drains with one.
    pub fn deadline_ms(&self) -> Option<u64> {
        match self {
            AdminState::Draining { deadline_ms, .. } => *deadline_ms,
            _ => None,
        }
    }
}

/// What a command does to one server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Already there (disabling a disabled server changes nothing).
    Unchanged,
    /// Into (or within) DRAINING, with this state.
    Drain(AdminState),
    /// To DISABLED now, its live sessions terminated.
    Terminate(DisableReason),
    Enable,
}

/// The transition `mode` makes from `current` at `now_ms`.
pub fn disable(current: &AdminState, mode: DisableMode, now_ms: u64) -> Transition {
    match (current, mode) {
        (AdminState::Disabled { .. }, _) => Transition::Unchanged,
        (_, DisableMode::Immediate) => Transition::Terminate(DisableReason::Immediate),
        (AdminState::Enabled, DisableMode::Graceful { timeout_ms }) => {
            Transition::Drain(AdminState::Draining { since_ms: now_ms, deadline_ms: timeout_ms.map(|t| now_ms + t) })
        }
        // A graceful disable of a draining server sets its deadline anew.
        (AdminState::Draining { since_ms, .. }, DisableMode::Graceful { timeout_ms }) => {
            Transition::Drain(AdminState::Draining { since_ms: *since_ms, deadline_ms: timeout_ms.map(|t| now_ms + t) })
        }
    }
}

pub fn enable(current: &AdminState) -> Transition {
    match current {
        AdminState::Enabled => Transition::Unchanged,
        _ => Transition::Enable,
    }
}

/// How a removal from the config takes a server out, by its pool's `mode`:
/// an enabled one as a disable would; a draining one is cut if the rule
/// says at once, and drains on otherwise; a disabled one is already out.
pub fn removal(current: &AdminState, mode: DisableMode, now_ms: u64) -> Transition {
    match (current, mode) {
        (AdminState::Enabled, _) | (AdminState::Draining { .. }, DisableMode::Immediate) => {
            disable(current, mode, now_ms)
        }
        _ => Transition::Unchanged,
    }
}

/// The state after a transition (`Terminate` gives DISABLED with its reason).
pub fn apply(current: &AdminState, transition: Transition, now_ms: u64) -> AdminState {
    match transition {
        Transition::Unchanged => *current,
        Transition::Drain(state) => state,
        Transition::Terminate(reason) => AdminState::Disabled { since_ms: now_ms, reason },
        Transition::Enable => AdminState::Enabled,
    }
}

/// The guard: a change must not leave a pool with fewer servers taking new
/// flows than its minimum (`min_in_service`, 1 by default: the last
/// server), unless it had fewer already and the change takes none away.
/// `before` and `after` are (state, weight) of every member. The servers
/// left in service if it would.
pub fn falls_below_minimum(before: &[(AdminState, u32)], after: &[(AdminState, u32)], min: usize) -> Option<usize> {
    let serving = |members: &[(AdminState, u32)]| {
        members.iter().filter(|(state, weight)| takes_new_flows(state, *weight)).count()
    };
    let (was, left) = (serving(before), serving(after));
    (left < min && left < was).then_some(left)
}

/// Whether a server is given new flows: ENABLED, and a weight above 0.
pub fn takes_new_flows(state: &AdminState, weight: u32) -> bool {
    *state == AdminState::Enabled && weight > 0
}

/// Time left until a deadline, if it is ahead.
pub fn time_left(deadline_ms: u64, now_ms: u64) -> Duration {
    Duration::from_millis(deadline_ms.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_000_000;

    #[test]
    fn graceful_disable_drains_with_or_without_deadline() {
        let t = disable(&AdminState::Enabled, DisableMode::Graceful { timeout_ms: Some(3000) }, NOW);
        assert_eq!(t, Transition::Drain(AdminState::Draining { since_ms: NOW, deadline_ms: Some(NOW + 3000) }));
        let t = disable(&AdminState::Enabled, DisableMode::Graceful { timeout_ms: None }, NOW);
        assert_eq!(t, Transition::Drain(AdminState::Draining { since_ms: NOW, deadline_ms: None }));
    }

    #[test]
    fn disabling_a_disabled_server_changes_nothing() {
        let disabled = AdminState::Disabled { since_ms: 5, reason: DisableReason::Drained };
        assert_eq!(disable(&disabled, DisableMode::Immediate, NOW), Transition::Unchanged);
        assert_eq!(disable(&disabled, DisableMode::Graceful { timeout_ms: None }, NOW), Transition::Unchanged);
    }

    #[test]
    fn a_draining_server_gets_a_new_deadline_or_is_terminated() {
        let draining = AdminState::Draining { since_ms: 5, deadline_ms: Some(10) };
        assert_eq!(
            disable(&draining, DisableMode::Graceful { timeout_ms: Some(60_000) }, NOW),
            Transition::Drain(AdminState::Draining { since_ms: 5, deadline_ms: Some(NOW + 60_000) })
        );
        assert_eq!(disable(&draining, DisableMode::Immediate, NOW), Transition::Terminate(DisableReason::Immediate));
    }

    #[test]
    fn enable_from_any_state() {
        assert_eq!(enable(&AdminState::Enabled), Transition::Unchanged);
        assert_eq!(enable(&AdminState::Draining { since_ms: 1, deadline_ms: None }), Transition::Enable);
        let disabled = AdminState::Disabled { since_ms: 1, reason: DisableReason::Deadline };
        assert_eq!(apply(&disabled, enable(&disabled), NOW), AdminState::Enabled);
    }

    #[test]
    fn a_removal_keeps_a_drain_going_unless_the_rule_says_at_once() {
        let draining = AdminState::Draining { since_ms: 1, deadline_ms: Some(9) };
        let graceful = DisableMode::Graceful { timeout_ms: Some(60_000) };
        assert_eq!(removal(&draining, graceful, NOW), Transition::Unchanged, "its own deadline stands");
        assert_eq!(removal(&draining, DisableMode::Immediate, NOW), Transition::Terminate(DisableReason::Immediate));
        assert_eq!(removal(&AdminState::Enabled, graceful, NOW), disable(&AdminState::Enabled, graceful, NOW));
        let disabled = AdminState::Disabled { since_ms: 1, reason: DisableReason::Drained };
        assert_eq!(removal(&disabled, DisableMode::Immediate, NOW), Transition::Unchanged);
    }

    #[test]
    fn the_guard_protects_the_last_serving_server() {
        let draining = AdminState::Draining { since_ms: 1, deadline_ms: None };
        let e = AdminState::Enabled;
        let last = |before: &[(AdminState, u32)], after: &[(AdminState, u32)]| falls_below_minimum(before, after, 1);
        assert_eq!(last(&[(e, 1), (e, 1)], &[(draining, 1), (draining, 1)]), Some(0));
        assert_eq!(last(&[(e, 1), (e, 1)], &[(draining, 1), (e, 1)]), None);
        // Weight 0 takes no new flows: it does not count as serving.
        assert_eq!(last(&[(e, 1), (e, 0)], &[(draining, 1), (e, 0)]), Some(0));
        // Already without a serving server: nothing more to protect.
        assert_eq!(last(&[(draining, 1), (e, 0)], &[(draining, 1), (draining, 0)]), None);
    }

    #[test]
    fn a_pools_minimum_in_service_is_kept_and_a_pool_below_it_may_only_gain() {
        let draining = AdminState::Draining { since_ms: 1, deadline_ms: None };
        let e = AdminState::Enabled;
        let three = [(e, 1), (e, 1), (e, 1)];
        assert_eq!(falls_below_minimum(&three, &[(draining, 1), (e, 1), (e, 1)], 2), None, "2 left: enough");
        assert_eq!(falls_below_minimum(&three, &[(draining, 1), (draining, 1), (e, 1)], 2), Some(1));
        // Below it already (a server DOWN): a change that takes none away passes.
        let below = [(draining, 1), (e, 1), (draining, 1)];
        assert_eq!(falls_below_minimum(&below, &below, 2), None);
        assert_eq!(falls_below_minimum(&below, &[(e, 1), (e, 1), (draining, 1)], 3), None, "a gain");
        assert_eq!(falls_below_minimum(&below, &[(draining, 1); 3], 2), Some(0));
        // 0: no guard at all.
        assert_eq!(falls_below_minimum(&three, &[(draining, 1); 3], 0), None);
    }
}
