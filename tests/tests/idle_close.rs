//! `idle_close`, through the real agent with real TCP clients: a graceful
//! drain closes a server's idle keep-alive connections with a FIN (their
//! clients read a clean end, not a reset) while busy ones go on; clients
//! that send at any moment, as keep-alive HTTP clients do, retry a request
//! that met the close on a new connection and lose none. Without it, the
//! idle connections are reset at the deadline.

use std::{
    io::{ErrorKind, Read},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_userspace::model::EventKind;
use testbed::{
    bed::{Bed, ECHO, EVERY_100MS, bed_with, wait_for},
    servers::{EchoClient, Session},
    topology::VIP,
};

/// How an idle connection ended, as its client reads it.
fn end_of(client: &mut EchoClient, within: Duration) -> Result<(), ErrorKind> {
    let stream = client.stream();
    stream.set_read_timeout(Some(within)).unwrap();
    let mut byte = [0u8; 1];
    match (&*stream).read(&mut byte) {
        Ok(0) => Ok(()),
        Ok(_) => Err(ErrorKind::InvalidData),
        Err(e) => Err(e.kind()),
    }
}

/// A keep-alive client: a request on its connection every 0.5-1.5 s (so
/// some cross the close); a request that fails on a reused connection is
/// sent again on a new one, as browsers and HTTP libraries do. Counts
/// requests, those retried, and those lost (failed again).
struct Counts {
    requests: AtomicU64,
    retried: AtomicU64,
    lost: AtomicU64,
}

fn keep_alive_client(b: &Bed, first: EchoClient, seed: u64, stop: &AtomicBool, counts: &Counts) {
    let mut conn = first;
    let mut n = seed;
    while !stop.load(Ordering::Relaxed) {
        n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(500 + (n >> 33) % 1000));
        counts.requests.fetch_add(1, Ordering::Relaxed);
        if conn.exchange("request").is_ok() {
            continue;
        }
        counts.retried.fetch_add(1, Ordering::Relaxed);
        let again = b.topology.client.run(|| EchoClient::connect(VIP, ECHO)).and_then(|mut c| {
            c.exchange("request")?;
            Ok(c)
        });
        match again {
            Ok(c) => conn = c,
            Err(_) => {
                counts.lost.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
    }
}

#[test]
fn a_graceful_drain_closes_idle_connections_cleanly_and_no_request_is_lost() {
    let b = bed_with(3, |c| c.set("pools.p7.idle_close", "1s"));
    let mut idle: Vec<EchoClient> = (0..20).map(|_| b.connect_to("s1")).collect();
    let busy: Vec<Session> = (0..3).map(|_| Session::start(b.connect_to("s1"), "s1", EVERY_100MS)).collect();
    let racing: Vec<EchoClient> = (0..10).map(|_| b.connect_to("s1")).collect();
    let stop = AtomicBool::new(false);
    let counts = Arc::new(Counts { requests: AtomicU64::new(0), retried: AtomicU64::new(0), lost: AtomicU64::new(0) });
    std::thread::scope(|scope| {
        for (i, first) in racing.into_iter().enumerate() {
            let (b, stop, counts) = (&b, &stop, &counts);
            scope.spawn(move || keep_alive_client(b, first, i as u64 + 1, stop, counts));
        }
        std::thread::sleep(Duration::from_millis(1500));
        let asked = Instant::now();
        b.lb(&["server", "disable", "p7", "s1", "--graceful"]);
        // Each idle client reads a clean end within the quiet period and a
        // count or two (measured from the command, so a slow machine only
        // takes longer to get there).
        for (i, client) in idle.iter_mut().enumerate() {
            let left = Duration::from_secs(10).saturating_sub(asked.elapsed());
            assert_eq!(end_of(client, left), Ok(()), "idle connection {i}: a clean close, not a reset");
        }
        eprintln!("20 idle connections closed cleanly within {:?} of the disable", asked.elapsed());
        std::thread::sleep(Duration::from_secs(3));
        assert!(busy.iter().all(|s| s.ended().is_none()), "busy connections go on");
        assert_eq!(b.state("p7", "s1"), "DRAINING (until drained)");
        stop.store(true, Ordering::Relaxed);
    });
    // The busy connections end: the drain is over.
    for session in busy {
        drop(session.finish());
    }
    b.wait_state("p7", "s1", "DISABLED (drained)", Duration::from_secs(10));
    let (requests, retried, lost) = (
        counts.requests.load(Ordering::Relaxed),
        counts.retried.load(Ordering::Relaxed),
        counts.lost.load(Ordering::Relaxed),
    );
    eprintln!("keep-alive clients: {requests} requests, {retried} met the close and were sent again, {lost} lost");
    assert_eq!(lost, 0, "no request is lost");
    assert!(retried >= 1, "the racing clients' connections were closed under them");
    let closed: Vec<String> =
        b.events().iter().filter(|e| e.kind == EventKind::IdleClosed).map(|e| e.message.clone()).collect();
    assert!(!closed.is_empty(), "the closes are said");
}

#[test]
fn without_idle_close_idle_connections_are_reset_at_the_deadline() {
    let b = bed_with(3, |c| c);
    let mut idle: Vec<EchoClient> = (0..5).map(|_| b.connect_to("s1")).collect();
    let asked = Instant::now();
    b.lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", "2s"]);
    for (i, client) in idle.iter_mut().enumerate() {
        let left = Duration::from_secs(10).saturating_sub(asked.elapsed());
        assert_eq!(end_of(client, left), Err(ErrorKind::ConnectionReset), "idle connection {i}");
    }
    assert!(asked.elapsed() >= Duration::from_secs(2), "reset at the deadline, not before");
    wait_for("s1 disabled at its deadline", Duration::from_secs(3), || b.state("p7", "s1") == "DISABLED (deadline)");
}
