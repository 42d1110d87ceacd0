//! A server's state as a cluster's nodes share it: the decision the store
//! records (one key per server), and the transition that brings a node's
//! own copy to it. Pure logic, like the rest of `servers`.

use serde::{Deserialize, Serialize};

use super::state::{AdminState, Source, Transition};

/// The fleet's decision about one server, as the store holds it. Deadlines
/// in it are absolute (ms since the Unix epoch): every node cuts at the
/// same instant, its clock kept by NTP.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedState {
    #[serde(flatten)]
    pub admin: AdminState,
    pub source: Source,
    /// The node through which it was decided.
    pub by: String,
}

/// A decision's pool as the decision saw it: the store's revision its
/// planner had applied. A pool's limits (`min_in_service`,
/// `max_in_maintenance`) are checked against all its servers, so a
/// decision is recorded only if none of the pool's keys changed after that
/// revision (one comparison over the pool's keys, whatever their number):
/// two nodes taking two servers of one pool out at once cannot both pass
/// a limit that only one of them may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Guard {
    pub pool: String,
    pub revision: i64,
}

/// What a node sends to be recorded: its proposals, under its guards.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub proposals: Vec<Proposal>,
    pub guards: Vec<Guard>,
}

/// A decision to record: the new state of (pool, server), if the store's
/// key still has the revision the decision was made from (0: never
/// written), so that of two concurrent decisions one wins, by the store's
/// order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    pub pool: String,
    pub server: String,
    pub state: SharedState,
    pub expected_revision: i64,
    /// The state it was planned from (as the store held it then).
    pub from: AdminState,
}

/// Whether the store's `now` is the end of the drain `from` (its deadline
/// came, or its last flow ended): the drain's own course, no one else's
/// decision, so a decision planned from `from` is planned again rather
/// than refused as a conflict.
pub fn ends(from: &AdminState, now: &AdminState) -> bool {
    use super::DisableReason::{Deadline, Drained};
    matches!((from, now), (AdminState::Draining { .. }, AdminState::Disabled { reason: Deadline | Drained, .. }))
}

/// What brings a node's state `current` to the fleet's `target` at
/// `now_ms`. A drain whose deadline has passed is over: a node that already
/// cut it keeps it DISABLED (its deadline fired here first).
pub fn toward(current: &AdminState, target: &AdminState, now_ms: u64) -> Transition {
    match (current, target) {
        _ if current == target => Transition::Unchanged,
        (_, AdminState::Enabled) => Transition::Enable,
        (AdminState::Disabled { .. }, AdminState::Draining { deadline_ms: Some(d), .. }) if *d <= now_ms => {
            Transition::Unchanged
        }
        (_, AdminState::Draining { .. }) => Transition::Drain(*target),
        (AdminState::Disabled { .. }, AdminState::Disabled { .. }) => Transition::Unchanged,
        (_, AdminState::Disabled { reason, .. }) => Transition::Terminate(*reason),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::servers::DisableReason;

    const NOW: u64 = 1_000_000;

    #[test]
    fn a_node_takes_the_fleets_state() {
        let draining = AdminState::Draining { since_ms: 5, deadline_ms: Some(NOW + 10) };
        let disabled = AdminState::Disabled { since_ms: 5, reason: DisableReason::Immediate };
        assert_eq!(toward(&AdminState::Enabled, &draining, NOW), Transition::Drain(draining));
        assert_eq!(toward(&draining, &disabled, NOW), Transition::Terminate(DisableReason::Immediate));
        assert_eq!(toward(&disabled, &AdminState::Enabled, NOW), Transition::Enable);
        assert_eq!(toward(&draining, &draining, NOW), Transition::Unchanged);
    }

    #[test]
    fn a_drain_cut_here_at_its_deadline_stays_cut() {
        let cut = AdminState::Disabled { since_ms: NOW, reason: DisableReason::Deadline };
        let past = AdminState::Draining { since_ms: 5, deadline_ms: Some(NOW) };
        assert_eq!(toward(&cut, &past, NOW), Transition::Unchanged);
        // A new drain decided after the cut is taken.
        let later = AdminState::Draining { since_ms: NOW, deadline_ms: Some(NOW + 60_000) };
        assert_eq!(toward(&cut, &later, NOW), Transition::Drain(later));
    }

    #[test]
    fn disabled_for_another_reason_is_still_disabled() {
        let drained = AdminState::Disabled { since_ms: 1, reason: DisableReason::Drained };
        let deadline = AdminState::Disabled { since_ms: 2, reason: DisableReason::Deadline };
        assert_eq!(toward(&drained, &deadline, NOW), Transition::Unchanged);
    }
}
