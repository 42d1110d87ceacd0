//! Section 5, the agent's start with its pins already there (a restart or
//! an upgrade: forwarding goes on meanwhile, but every operator waits on
//! it): from the process's start until its API answers, and until a change
//! asked at once is applied, with the agent's own breakdown by phase.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use lb_userspace::{
    api::client,
    model::{DisableMode, Request, Startup, Stats},
};

use super::{Report, Target, median};
use crate::{
    agent::Agent,
    topology::{ServiceSpec, Topology},
};

const SECTION: &str = "5. Agent start-up (pins in place: a restart)";
pub struct StartTimes {
    pub until_api: Duration,
    pub until_change: Duration,
    pub breakdown: Startup,
}

/// Stops the agent and starts it again, timing both ends from the spawn.
pub fn restart_timed(agent: &mut Agent) -> StartTimes {
    let _ = agent.stop();
    let socket = agent.socket();
    let spawned = Instant::now();
    agent.restart_unwaited();
    let stats = loop {
        if let Ok(data) = client::call(&socket, &Request::Stats) {
            break serde_json::from_value::<Stats>(data).expect("stats");
        }
        assert!(spawned.elapsed() < Duration::from_secs(60), "the agent's API never answered:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(1));
    };
    let until_api = spawned.elapsed();
    let disable = Request::Disable {
        pool: "p80".into(),
        servers: vec!["s1".into()],
        mode: DisableMode::Graceful { timeout_ms: None },
        force: false,
    };
    client::call(&socket, &disable).expect("a graceful disable");
    let until_change = spawned.elapsed();
    client::call(&socket, &Request::Enable { pool: "p80".into(), servers: vec!["s1".into()], force: false })
        .expect("enable");
    agent.wait_ready();
    StartTimes { until_api, until_change, breakdown: stats.startup }
}

pub fn run(report: &mut Report, quick: bool, lb: &Path) {
    let rounds = if quick { 3 } else { 9 };
    let topology = Topology::new(3);
    let specs = [
        ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1; 3] },
        ServiceSpec { port: 53, protocol: "udp", server_port: 5353, weights: vec![1; 3] },
    ];
    // The configuration's shape: two services over 3 servers, a flow table
    // sized for a million flows (the default).
    let config = topology.config(&specs).set("flows.max", 1_048_576);
    let mut agent = Agent::start_with(lb.to_owned(), &topology, config);
    let starts: Vec<StartTimes> = (0..rounds).map(|_| restart_timed(&mut agent)).collect();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let note = format!("median of {rounds} restarts (SIGTERM, then a start), 2 services, 3 servers, flows.max 1048576");
    let mut api: Vec<f64> = starts.iter().map(|s| ms(s.until_api)).collect();
    let mut change: Vec<f64> = starts.iter().map(|s| ms(s.until_change)).collect();
    report.add(SECTION, "start until the API answers", median(&mut api), "ms", Some(Target::AtMost(300.0)), &note);
    report.add(
        SECTION,
        "start until a change is applied",
        median(&mut change),
        "ms",
        Some(Target::AtMost(300.0)),
        &note,
    );
    // The agent's own breakdown, phase by phase (medians).
    let phases = &starts[0].breakdown.phases;
    for (i, phase) in phases.iter().enumerate() {
        let mut v: Vec<f64> = starts.iter().filter_map(|s| s.breakdown.phases.get(i)).map(|p| p.ms).collect();
        report.add(
            SECTION,
            format!("  of which: {}", phase.phase),
            median(&mut v),
            "ms",
            None,
            "the agent's own clock",
        );
    }
}
