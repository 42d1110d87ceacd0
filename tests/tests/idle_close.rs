//! `idle_close`, through the real agent with real TCP clients: a graceful
//! drain closes a server's idle keep-alive connections with a FIN (their
//! clients read a clean end, not a reset) while busy ones go on, a quiet
//! one whose request is being served included; clients that send at any
//! moment, as keep-alive HTTP clients do, retry a request that met the
//! close on a new connection and lose none. Without it, the idle
//! connections are reset at the deadline.

use std::{
    io::ErrorKind,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use lb_userspace::model::EventKind;
use testbed::{
    bed::{ECHO, EVERY_100MS, bed_with, wait_for},
    keep_alive::{Counts, end_of, keep_alive_client},
    servers::{EchoClient, Session},
    topology::VIP,
};

#[test]
fn a_graceful_drain_closes_idle_connections_cleanly_and_no_request_is_lost() {
    let b = bed_with(3, |c| c.set("pools.p7.idle_close", "1s"));
    let mut idle: Vec<EchoClient> = (0..20).map(|_| b.connect_to("s1")).collect();
    let busy: Vec<Session> = (0..3).map(|_| Session::start(b.connect_to("s1"), "s1", EVERY_100MS)).collect();
    let racing: Vec<EchoClient> = (0..10).map(|_| b.connect_to("s1")).collect();
    let stop = AtomicBool::new(false);
    let counts = Counts::default();
    std::thread::scope(|scope| {
        for (i, first) in racing.into_iter().enumerate() {
            let (b, stop, counts) = (&b, &stop, &counts);
            scope.spawn(move || {
                keep_alive_client(&b.topology.client, (VIP.into(), ECHO), first, i as u64 + 1, stop, counts)
            });
        }
        std::thread::sleep(Duration::from_millis(1500));
        let asked = Instant::now();
        b.lb(&["server", "disable", "p7", "s1", "--graceful"]);
        // Each idle client reads a clean end within the quiet period and a
        // count or two (measured from the command, so a slow machine only
        // takes longer to get there).
        for (i, client) in idle.iter_mut().enumerate() {
            let left = Duration::from_secs(10).saturating_sub(asked.elapsed());
            assert_eq!(end_of(client, left), Ok(true), "idle connection {i}: a clean close, not a reset");
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

/// A connection whose request its server is still working on is not idle,
/// however long the work takes: the answer arrives, and the connection is
/// closed cleanly once it rests. The proof that the closer looked at it
/// while it was quiet: a connection that spoke right after the request was
/// sent is closed first, and the request is held as long again after that
/// (the server's delayed ACK of the request may come a moment later than
/// the other's last word; a slow machine only holds it longer).
#[test]
fn a_request_being_served_is_answered_before_its_connection_is_closed() {
    let b = bed_with(3, |c| c.set("pools.p7.idle_close", "1s"));
    let mut working = b.connect_to("s1");
    working.send("hold").expect("send the request");
    let mut resting = b.connect_to("s1");
    let asked = Instant::now();
    b.lb(&["server", "disable", "p7", "s1", "--graceful"]);
    assert_eq!(end_of(&mut resting, Duration::from_secs(10)), Ok(true), "the resting connection closes cleanly");
    std::thread::sleep(asked.elapsed());
    b.echo[0].release_held();
    let answer = working.answer("hold", Duration::from_secs(10)).map_err(|e| e.to_string());
    assert_eq!(answer.as_deref(), Ok("s1"), "the request in progress is answered, its connection left open");
    assert_eq!(end_of(&mut working, Duration::from_secs(10)), Ok(true), "then closed cleanly once it rests");
    b.wait_state("p7", "s1", "DISABLED (drained)", Duration::from_secs(10));
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
