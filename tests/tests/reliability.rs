//! No new connection is dropped or delayed by a change: new TCP connections
//! at 400 a second, through the real agent, while a server is disabled and
//! enabled 50 times in each mode.

use std::{
    io::ErrorKind,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use testbed::{
    bed::{Bed, ECHO, bed},
    servers::EchoClient,
    topology::VIP,
};

/// What became of one new connection.
struct Attempt {
    connect: Duration,
    /// The server that answered, or how the connection failed.
    outcome: Result<String, ErrorKind>,
}

/// Opens connections at `per_second` from the client until `stop`: each
/// connects, asks which server it reached, and closes.
fn steady_connections(b: &Bed, per_second: u32, stop: &AtomicBool, attempts: &Mutex<Vec<Attempt>>) {
    let every = Duration::from_secs(1) / per_second;
    b.topology.client.run(|| {
        let mut next = Instant::now();
        while !stop.load(Ordering::Relaxed) {
            next += every;
            let started = Instant::now();
            let attempt = match EchoClient::connect(VIP, ECHO) {
                Err(e) => Attempt { connect: started.elapsed(), outcome: Err(e.kind()) },
                Ok(mut client) => {
                    let connect = started.elapsed();
                    Attempt { connect, outcome: client.exchange("which").map_err(|e| e.kind()) }
                }
            };
            attempts.lock().unwrap().push(attempt);
            if let Some(wait) = next.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    });
}

fn dropped_syns(b: &Bed) -> u64 {
    b.agent.lb_json(&["stats"])["outcomes"]["drop_no_server"].as_u64().unwrap_or(0)
}

#[test]
fn no_new_connection_is_dropped_or_delayed_while_a_server_is_disabled_and_enabled() {
    let b = bed(3, "");
    let modes: [(&str, &[&str]); 3] = [
        ("immediate", &[]),
        ("graceful with a timeout", &["--graceful", "--timeout", "30s"]),
        ("graceful until drained", &["--graceful", "--until-drained"]),
    ];
    for (mode, args) in modes {
        let stop = AtomicBool::new(false);
        let attempts = Mutex::new(Vec::new());
        let cycles = std::thread::scope(|s| {
            s.spawn(|| steady_connections(&b, 400, &stop, &attempts));
            std::thread::sleep(Duration::from_millis(200));
            let started = Instant::now();
            for _ in 0..50 {
                let mut disable = vec!["server", "disable", "p7", "s1"];
                disable.extend_from_slice(args);
                b.lb(&disable);
                std::thread::sleep(Duration::from_millis(20));
                b.lb(&["server", "enable", "p7", "s1"]);
                std::thread::sleep(Duration::from_millis(20));
            }
            let took = started.elapsed();
            std::thread::sleep(Duration::from_millis(200));
            stop.store(true, Ordering::Relaxed);
            took
        });
        let attempts = Arc::new(attempts.into_inner().unwrap());
        let slowest = attempts.iter().map(|a| a.connect).max().unwrap();
        let failed: Vec<ErrorKind> = attempts.iter().filter_map(|a| a.outcome.clone().err()).collect();
        eprintln!(
            "{mode}: {} connections over 50 cycles ({cycles:?}), slowest connect {slowest:?}, {} reset",
            attempts.len(),
            failed.len()
        );
        assert!(attempts.len() as f64 >= 400.0 * cycles.as_secs_f64() * 0.8, "{mode}: the load fell short");
        assert_eq!(dropped_syns(&b), 0, "{mode}: SYNs dropped for want of a server");
        assert!(slowest < Duration::from_millis(500), "{mode}: a connection took {slowest:?} to open");
        match mode {
            // Only connections that lived on s1 when it was cut may be reset.
            "immediate" => assert!(failed.iter().all(|k| *k == ErrorKind::ConnectionReset), "{mode}: {failed:?}"),
            _ => assert!(failed.is_empty(), "{mode}: {failed:?}"),
        }
        let served: std::collections::BTreeSet<&str> =
            attempts.iter().filter_map(|a| a.outcome.as_deref().ok()).collect();
        assert_eq!(served.len(), 3, "{mode}: every server took connections: {served:?}");
    }
}
