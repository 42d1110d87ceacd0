//! A minute of the chaos soak (`testbed::soak`), on one node and on three
//! sharing a store: `cargo xtask soak` runs it longer.

use testbed::soak::{Mode, Report};

/// Runs the soak (`LB_SOAK_SECONDS`, 60 by default); no violation, and
/// enough chaos and traffic that the checks meant something.
fn soaked(seed: u64, mode: Mode) -> Report {
    let seconds: u64 = std::env::var("LB_SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(60);
    let report = testbed::soak::soak(std::time::Duration::from_secs(seconds), seed, mode);
    eprintln!("{report}");
    assert!(report.violations.is_empty(), "{report}");
    let busy = report.changes > seconds / 3 && report.agent_restarts > 0 && report.connections > 15 * seconds;
    assert!(busy, "the soak did too little: {report}");
    report
}

#[test]
fn a_minute_of_chaos_costs_no_connection_it_should_not() {
    soaked(0x5eed, Mode::Single);
}

#[test]
fn a_minute_of_chaos_on_three_nodes_and_their_store_costs_no_connection_it_should_not() {
    let report = soaked(0xc1a5, Mode::Cluster);
    assert!(report.member_kills > 0, "no store member was killed: {report}");
}
