//! A server's operational state (what its health monitors found) beside its
//! administrative state (what an operator set), and the one code the
//! datapath reads that comes of both.

use std::fmt;

use lb_common::server_state;
use serde::{Deserialize, Serialize};

use super::state::AdminState;

/// Why a check failed, and so why a server is DOWN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DownReason {
    Refused,
    Reset,
    TimedOut,
    Unreachable,
    /// Its reply was not HTTP.
    NotHttp,
    /// An HTTP status the monitor does not accept.
    WrongStatus {
        status: u16,
    },
    /// The reply lacks the monitor's `expect` string.
    StringNotFound,
    /// Another error of the check's socket.
    Io {
        message: String,
    },
}

impl fmt::Display for DownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DownReason::Refused => f.write_str("refused"),
            DownReason::Reset => f.write_str("reset"),
            DownReason::TimedOut => f.write_str("timed out"),
            DownReason::Unreachable => f.write_str("unreachable"),
            DownReason::NotHttp => f.write_str("not an HTTP reply"),
            DownReason::WrongStatus { status } => write!(f, "wrong status {status}"),
            DownReason::StringNotFound => f.write_str("string not found"),
            DownReason::Io { message } => f.write_str(message),
        }
    }
}

impl From<&std::io::Error> for DownReason {
    fn from(e: &std::io::Error) -> DownReason {
        use std::io::ErrorKind::*;
        match e.kind() {
            ConnectionRefused => DownReason::Refused,
            ConnectionReset => DownReason::Reset,
            TimedOut => DownReason::TimedOut,
            HostUnreachable | NetworkUnreachable => DownReason::Unreachable,
            _ => DownReason::Io { message: e.to_string() },
        }
    }
}

/// What the monitors found, as the owner of the state applied it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Health {
    /// DOWN since this instant, with the reason (none: UP, or not checked
    /// yet, or not monitored).
    pub down: Option<Down>,
    /// What this node's own monitors find. Alone, `down` follows it; in a
    /// cluster, `down` follows the fleet's rule over every node's verdict.
    pub seen_down: Option<DownReason>,
    /// A monitor's reply says it is in maintenance.
    pub maintenance: bool,
    /// Its maintenance waits its turn (the pool's `max_in_maintenance`
    /// servers are out): it keeps serving until a place frees.
    pub queued: Option<Queued>,
    /// Every server of its pool that an operator left in service is DOWN:
    /// all of them serve (the monitors, not the servers, may be broken).
    pub fail_open: bool,
}

/// A maintenance reply held back by rolling maintenance, as it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queued {
    pub since_ms: u64,
    /// What in the reply said maintenance ("status 503").
    pub matched: String,
    /// The drain it announced.
    pub announced: Option<std::time::Duration>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Down {
    pub since_ms: u64,
    pub reason: DownReason,
    /// Its flows were terminated (`on_down` "terminate", or its deadline).
    pub cut: bool,
}

impl Health {
    /// Whether the monitors let it take new flows.
    pub fn serves(&self) -> bool {
        self.down.is_none() || self.fail_open
    }

    /// The code the datapath reads for a server in `admin`: the monitors
    /// never put a server back that an operator took out; a DOWN server
    /// takes no new flow (DRAINING), or none at all once cut (DISABLED).
    pub fn code(&self, admin: &AdminState) -> u8 {
        match (admin, &self.down) {
            (AdminState::Enabled, Some(down)) if !self.fail_open => {
                if down.cut {
                    server_state::DISABLED
                } else {
                    server_state::DRAINING
                }
            }
            _ => admin.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_code_comes_of_both_states() {
        let down =
            |cut| Health { down: Some(Down { since_ms: 1, reason: DownReason::Refused, cut }), ..Health::default() };
        let e = AdminState::Enabled;
        assert_eq!(Health::default().code(&e), server_state::ENABLED);
        assert_eq!(down(false).code(&e), server_state::DRAINING, "DOWN: its flows go on, no new ones");
        assert_eq!(down(true).code(&e), server_state::DISABLED, "cut");
        let open = Health { fail_open: true, ..down(false) };
        assert_eq!(open.code(&e), server_state::ENABLED);
        assert!(open.serves() && !down(false).serves());
        let disabled = AdminState::Disabled { since_ms: 1, reason: crate::servers::DisableReason::Immediate };
        assert_eq!(Health::default().code(&disabled), server_state::DISABLED, "the operator's decision stands");
    }
}
