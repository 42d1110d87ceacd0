//! Ramp-up (`ramp_up`), through the real agent with real TCP clients: a
//! server enabled again gets a share of new connections that climbs from a
//! tenth of its weight to all of it over the ramp, as the agent says at
//! each moment; connections already open are never moved by a step.
use lb_userspace::model::EventKind;
use testbed::{
    bed::{Bed, EVERY_100MS, bed_with},
    servers::Session,
};

/// The share of new connections a server at `percent` of its weight gets
/// beside two servers at full weight (Maglev shares follow weights).
fn expected_share(percent: u32) -> f64 {
    let w = f64::from(percent) / 100.0;
    w / (w + 2.0)
}

/// The part of its weight the agent says s1 has now (100: no ramp).
fn percent(b: &Bed) -> u32 {
    b.server("p7", "s1").ramp_up_percent.unwrap_or(100)
}

/// One batch of new connections, with what the agent said before and after.
struct Window {
    before: u32,
    after: u32,
    n: usize,
    hits: usize,
}

#[test]
fn a_re_enabled_servers_share_of_new_connections_follows_its_ramp() {
    let b = bed_with(3, |config| config.set("pools.p7.ramp_up", "20s"));
    let on_s1_before = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let on_s2 = Session::start(b.connect_to("s2"), "s2", EVERY_100MS);
    b.lb(&["server", "disable", "p7", "s1", "--graceful"]);
    b.lb(&["server", "enable", "p7", "s1"]);
    let shown = b.lb(&["pool", "show", "p7"]);
    assert!(shown.contains("ENABLED, ramping up"), "{shown}");
    assert!(percent(&b) <= 20, "it starts at a tenth: {}%", percent(&b));
    let began = b.events().iter().any(|e| e.kind == EventKind::RampUp && e.message.contains("ramps up over 20s"));
    assert!(began, "{:?}", b.events());

    // Batches of new connections until the ramp is over, each tagged with
    // the agent's percent around it (so a slow machine only makes the
    // batches span more of the ramp, not the test wrong).
    let mut windows = Vec::new();
    loop {
        let before = percent(&b);
        let reached = b.new_connections(20);
        let after = percent(&b);
        let hits = reached.iter().filter(|s| *s == "s1").count();
        windows.push(Window { before, after, n: reached.len(), hits });
        if before == 100 {
            break;
        }
    }
    let after_ramp: Vec<String> = b.new_connections(200);
    let late = after_ramp.iter().filter(|s| *s == "s1").count() as f64 / 200.0;

    let early: Vec<&Window> = windows.iter().filter(|w| w.after <= 30).collect();
    let (early_n, early_hits) = early.iter().fold((0, 0), |(n, h), w| (n + w.n, h + w.hits));
    let steps: std::collections::BTreeSet<u32> = windows.iter().map(|w| w.before).collect();
    eprintln!("early (at most 30%): {early_hits} of {early_n}; after the ramp: {late:.3}; percents seen: {steps:?}");
    assert!(early_n >= 100, "enough connections early in the ramp: {early_n}");
    let early_share = early_hits as f64 / early_n as f64;
    assert!(early_share < 0.2, "early in the ramp s1 gets a small part: {early_share:.3} (full: 0.333)");
    assert!(late > 0.22, "after the ramp s1 has its full share: {late:.3}");
    assert!(steps.len() >= 5, "the share climbs in steps: {steps:?}");

    // Over the whole ramp, the hits follow what the agent's percents say.
    let (mut expected, mut variance, mut hits) = (0.0, 0.0, 0);
    for w in &windows {
        let p = (expected_share(w.before) + expected_share(w.after)) / 2.0;
        expected += p * w.n as f64;
        variance += p * (1.0 - p) * w.n as f64;
        hits += w.hits;
    }
    let bound = 4.0 * variance.sqrt() + 3.0;
    assert!(
        (hits as f64 - expected).abs() <= bound,
        "s1 got {hits} new connections, the ramp says {expected:.1} ± {bound:.1}"
    );

    // No step moved a connection: those open before and through the ramp go on.
    assert!(on_s1_before.ended().is_none() && on_s2.ended().is_none(), "open connections are never moved");
    let ended = b.events().iter().any(|e| e.kind == EventKind::RampUp && e.message.contains("ramp-up over"));
    assert!(ended, "{:?}", b.events());
    assert_eq!(b.server("p7", "s1").ramp_up_percent, None);
}

/// An agent that dies during a ramp goes on with it when restarted: the
/// server does not get its full share at once (the ramp is in the state
/// file, with when it began).
#[test]
fn an_agent_restarted_during_a_ramp_goes_on_with_it() {
    // Long enough that even a slow restart finds the ramp in its first steps.
    let mut b = bed_with(3, |config| config.set("pools.p7.ramp_up", "120s"));
    b.lb(&["server", "disable", "p7", "s1", "--graceful"]);
    b.lb(&["server", "enable", "p7", "s1"]);
    assert!(percent(&b) <= 20, "it starts at a tenth: {}%", percent(&b));
    b.agent.kill();
    b.agent.restart();
    let resumed = percent(&b);
    assert!(resumed < 100, "the restarted agent goes on with the ramp: {resumed}%");
    let reached = b.new_connections(150);
    // Bounded by the percent the agent says after the batch (a slow
    // machine only lets the ramp climb further meanwhile).
    let after = percent(&b);
    let n = reached.len() as f64;
    let share = reached.iter().filter(|s| *s == "s1").count() as f64 / n;
    let p = expected_share(after);
    let bound = p + 4.0 * (p * (1.0 - p) / n).sqrt();
    assert!(share <= bound, "at {resumed}-{after}% s1 gets its ramp's part: {share:.3} (at most {bound:.3})");
    let shown = b.lb(&["pool", "show", "p7"]);
    assert!(shown.contains("ENABLED, ramping up"), "{shown}");
}
