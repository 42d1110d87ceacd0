//! Where checks' results become verdicts: a monitor's consecutive results
//! against `rise` and `fall`, and whether a server says it is in
//! maintenance. Pure: no clock, no sockets.

use std::time::Duration;

use super::probe::Outcome;
use crate::servers::health::DownReason;

/// A server (or one monitor's view of it) as checks found it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Verdict {
    /// Not checked yet: it serves (a restarted agent does not take a
    /// healthy server out), and its first check decides at once.
    #[default]
    Unknown,
    Up,
    Down(DownReason),
}

/// What a result changed, for the owner of the state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Up,
    Down { reason: DownReason },
    MaintenanceBegins { matched: String, announced: Option<Duration> },
    MaintenanceEnds,
}

/// One monitor's running count for one server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub verdict: Verdict,
    /// Consecutive results against the verdict (failures while UP,
    /// successes while DOWN).
    against: u32,
    pub maintenance: bool,
    /// Consecutive normal replies while in maintenance.
    normal: u32,
}

impl Tally {
    /// Not checked yet, and in maintenance or not.
    pub fn fresh(maintenance: bool) -> Tally {
        Tally { maintenance, ..Tally::default() }
    }

    /// Takes one result (`rise` successes bring a server UP, `fall`
    /// failures take it DOWN; a maintenance reply is not a failure).
    pub fn take(&mut self, outcome: &Outcome, rise: u32, fall: u32) {
        let failed = match outcome {
            Outcome::Fail(reason) => Some(reason),
            Outcome::Pass { .. } | Outcome::Maintenance { .. } => None,
        };
        match (&self.verdict, failed) {
            (Verdict::Unknown, None) => self.verdict = Verdict::Up,
            (Verdict::Unknown, Some(reason)) => self.verdict = Verdict::Down(reason.clone()),
            (Verdict::Up, None) => self.against = 0,
            (Verdict::Down(_), Some(reason)) => {
                self.against = 0;
                self.verdict = Verdict::Down(reason.clone());
            }
            (Verdict::Up, Some(reason)) => {
                self.against += 1;
                if self.against >= fall {
                    self.verdict = Verdict::Down(reason.clone());
                    self.against = 0;
                }
            }
            (Verdict::Down(_), None) => {
                self.against += 1;
                if self.against >= rise {
                    self.verdict = Verdict::Up;
                    self.against = 0;
                }
            }
        }
        match outcome {
            Outcome::Maintenance { .. } => {
                self.maintenance = true;
                self.normal = 0;
            }
            Outcome::Pass { .. } if self.maintenance => {
                self.normal += 1;
                if self.normal >= rise {
                    self.maintenance = false;
                    self.normal = 0;
                }
            }
            _ => self.normal = 0,
        }
    }
}

/// A server's verdict over all its monitors: DOWN if one finds it down,
/// UP once all find it up.
pub fn combined(tallies: &[Tally]) -> (Verdict, bool) {
    let down = tallies.iter().find_map(|t| match &t.verdict {
        Verdict::Down(reason) => Some(Verdict::Down(reason.clone())),
        _ => None,
    });
    let verdict = down.unwrap_or_else(|| {
        if tallies.iter().all(|t| t.verdict == Verdict::Up) { Verdict::Up } else { Verdict::Unknown }
    });
    (verdict, tallies.iter().any(|t| t.maintenance))
}

/// What changed between two combined verdicts; `last` is the result that
/// made the change (for a maintenance reply: what matched).
pub fn changes(before: &(Verdict, bool), after: &(Verdict, bool), last: &Outcome) -> Vec<Change> {
    let mut out = Vec::new();
    match (&before.0, &after.0) {
        (Verdict::Down(_), Verdict::Up) => out.push(Change::Up),
        (Verdict::Up | Verdict::Unknown, Verdict::Down(reason)) => out.push(Change::Down { reason: reason.clone() }),
        _ => {}
    }
    match (before.1, after.1, last) {
        (false, true, Outcome::Maintenance { matched, announced }) => {
            out.push(Change::MaintenanceBegins { matched: matched.clone(), announced: *announced })
        }
        (false, true, _) => out.push(Change::MaintenanceBegins { matched: "a reply".to_owned(), announced: None }),
        (true, false, _) => out.push(Change::MaintenanceEnds),
        _ => {}
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass() -> Outcome {
        Outcome::Pass { status: Some(200) }
    }
    fn fail() -> Outcome {
        Outcome::Fail(DownReason::Refused)
    }

    #[test]
    fn the_first_check_decides_then_rise_and_fall_count() {
        let mut t = Tally::default();
        t.take(&fail(), 2, 3);
        assert_eq!(
            t.verdict,
            Verdict::Down(DownReason::Refused),
            "a server that does not answer at start is out at once"
        );
        t.take(&pass(), 2, 3);
        assert!(matches!(t.verdict, Verdict::Down(_)), "one success is not rise = 2");
        t.take(&pass(), 2, 3);
        assert_eq!(t.verdict, Verdict::Up);
        t.take(&fail(), 2, 3);
        t.take(&fail(), 2, 3);
        assert_eq!(t.verdict, Verdict::Up, "two failures are not fall = 3");
        t.take(&fail(), 2, 3);
        assert!(matches!(t.verdict, Verdict::Down(_)));
    }

    #[test]
    fn a_flapping_server_stays_where_it_is() {
        let mut t = Tally { verdict: Verdict::Up, ..Tally::default() };
        for _ in 0..10 {
            t.take(&fail(), 2, 2);
            t.take(&pass(), 2, 2);
        }
        assert_eq!(t.verdict, Verdict::Up, "never two failures in a row");
        t.take(&fail(), 2, 2);
        t.take(&fail(), 2, 2);
        for _ in 0..10 {
            t.take(&pass(), 2, 2);
            t.take(&fail(), 2, 2);
        }
        assert!(matches!(t.verdict, Verdict::Down(_)), "never two successes in a row");
    }

    #[test]
    fn maintenance_begins_at_once_and_ends_after_rise_normal_replies() {
        let maintenance = Outcome::Maintenance { matched: "status 503".into(), announced: None };
        let mut t = Tally { verdict: Verdict::Up, ..Tally::default() };
        let before = combined(std::slice::from_ref(&t));
        t.take(&maintenance, 2, 2);
        let after = combined(std::slice::from_ref(&t));
        assert_eq!(after, (Verdict::Up, true), "in maintenance, not down");
        assert_eq!(
            changes(&before, &after, &maintenance),
            [Change::MaintenanceBegins { matched: "status 503".into(), announced: None }]
        );
        t.take(&pass(), 2, 2);
        assert!(t.maintenance);
        t.take(&pass(), 2, 2);
        assert!(!t.maintenance);
    }

    #[test]
    fn a_server_is_down_if_one_monitor_says_so() {
        let up = Tally { verdict: Verdict::Up, ..Tally::default() };
        let down = Tally { verdict: Verdict::Down(DownReason::WrongStatus { status: 500 }), ..Tally::default() };
        assert_eq!(combined(&[up.clone(), down]).0, Verdict::Down(DownReason::WrongStatus { status: 500 }));
        assert_eq!(combined(&[up.clone(), Tally::default()]).0, Verdict::Unknown);
        assert_eq!(combined(&[up.clone(), up]).0, Verdict::Up);
    }
}
