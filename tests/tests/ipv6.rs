//! IPv6 and dual stack end to end, through the real agent and CLI, with real
//! TCP clients and servers over ULA addresses inside the test's own
//! namespaces: every echo service is on an IPv4 and an IPv6 VIP, every
//! server reached by its IPv4 and its IPv6 address, with one state.

use std::{
    io::ErrorKind,
    net::IpAddr,
    time::{Duration, Instant},
};

use lb_userspace::model::{EventKind, ServerState, Why};
use testbed::{
    bed::{Bed, EVERY_100MS, bed_of, echo_services, wait_for},
    servers::Session,
    topology::{VIP, VIP6},
};

fn dual_stack_bed(n: usize) -> Bed {
    bed_of(n, |topology| topology.config_dual_stack(&echo_services(n)))
}

fn assert_reset(session: &Session, what: &str, not_after: Instant) {
    let ended = session.ended().unwrap_or_else(|| panic!("{what}: no reset seen"));
    assert_eq!(ended.kind, ErrorKind::ConnectionReset, "{what}: ended by {:?}, not a reset", ended.kind);
    assert!(ended.at <= not_after, "{what}: reset {:?} too late", ended.at - not_after);
}

#[test]
fn an_immediate_disable_resets_the_servers_sessions_of_both_families() {
    let b = dual_stack_bed(2);
    let vip6 = IpAddr::V6(VIP6);
    let six = Session::start(b.connect_via(vip6, "s1"), "s1", EVERY_100MS);
    let idle6 = Session::start(b.connect_via(vip6, "s1"), "s1", None);
    let four = Session::start(b.connect_via(VIP.into(), "s1"), "s1", EVERY_100MS);
    let other6 = Session::start(b.connect_via(vip6, "s2"), "s2", EVERY_100MS);
    std::thread::sleep(Duration::from_millis(300));
    assert!(six.exchanges() > 0 && four.exchanges() > 0, "sessions of both families run");
    wait_for("the sweep counts s1's flows of both families", Duration::from_secs(3), || {
        b.server("p7", "s1").active_flows == 3
    });

    let out = b.lb(&["server", "disable", "p7", "s1"]);
    let returned = Instant::now();
    assert!(out.contains("p7/s1: ENABLED -> DISABLED (immediate), 3 live TCP flow(s) reset"), "{out}");
    std::thread::sleep(Duration::from_millis(300));
    assert_reset(&six, "IPv6 client", returned + Duration::from_millis(200));
    assert_reset(&idle6, "idle IPv6 client", returned + Duration::from_millis(200));
    assert_reset(&four, "IPv4 client", returned + Duration::from_millis(200));
    wait_for("s1's three sockets closed by a reset", Duration::from_secs(1), || b.echo[0].resets() == 3);
    assert!(other6.ended().is_none(), "s2's IPv6 session was hurt: {:?}", other6.ended());

    // No new flow of either family reaches s1; enable puts it back in both.
    for vip in [vip6, VIP.into()] {
        for _ in 0..20 {
            let mut c = b.topology.client.run(|| testbed::servers::EchoClient::connect(vip, 7)).expect("connect");
            assert_eq!(c.exchange("which").expect("exchange"), "s2", "a new flow to {vip} reached disabled s1");
        }
    }
    b.lb(&["server", "enable", "p7", "s1"]);
    let _ = b.connect_via(vip6, "s1");
    let _ = b.connect_via(VIP.into(), "s1");
}

#[test]
fn a_drain_until_drained_waits_for_the_last_session_of_either_family() {
    let b = dual_stack_bed(2);
    let six = Session::start(b.connect_via(IpAddr::V6(VIP6), "s1"), "s1", EVERY_100MS);
    let four = Session::start(b.connect_via(VIP.into(), "s1"), "s1", EVERY_100MS);
    b.lb(&["server", "disable", "p7", "s1", "--graceful", "--until-drained"]);
    wait_for("both sessions counted", Duration::from_secs(3), || b.server("p7", "s1").active_flows == 2);

    // The IPv4 session ends: the IPv6 one still holds the drain.
    drop(four.finish().expect("IPv4 session open"));
    wait_for("one session left", Duration::from_secs(3), || b.server("p7", "s1").active_flows == 1);
    let s1 = b.server("p7", "s1");
    assert_eq!((s1.state, s1.why), (ServerState::Draining, Some(Why::UntilDrained)), "{s1:?}");
    assert!(six.ended().is_none(), "the draining IPv6 session broke: {:?}", six.ended());

    drop(six.finish().expect("IPv6 session open"));
    b.wait_state("p7", "s1", "DISABLED (drained)", Duration::from_secs(3));
    assert!(b.event_kinds_of("s1").contains(&EventKind::Drained), "{:?}", b.events());
}
