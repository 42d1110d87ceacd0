//! Where the agent's start-up takes its time: each phase timed as it ends,
//! logged once the API answers and served in `stats` (the bench reads it).

use std::time::Instant;

use crate::model::{Startup, StartupPhase};

pub struct StartupClock {
    began: Instant,
    last: Instant,
    phases: Vec<StartupPhase>,
}

impl StartupClock {
    /// From now (call it first thing in the process).
    pub fn begin() -> StartupClock {
        let now = Instant::now();
        StartupClock { began: now, last: now, phases: Vec::new() }
    }

    /// `phase` ended now (it began when the one before ended).
    pub fn mark(&mut self, phase: &str) {
        let now = Instant::now();
        self.phases.push(StartupPhase { phase: phase.to_owned(), ms: ms(now - self.last) });
        self.last = now;
    }

    pub fn finish(self) -> Startup {
        Startup { phases: self.phases, total_ms: ms(self.last - self.began) }
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
