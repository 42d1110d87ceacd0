//! Path MTU discovery through the balancer, end to end: a router on the
//! clients' side that cannot send a server's reply on answers the VIP "too
//! big"; the balancer sends the error on to the flow's server, whose kernel
//! takes it (its checksums, the quoted connection and sequence number all
//! check out) and lowers its path MTU towards that client. Real kernels at
//! both ends, in both families, inside the test's own namespaces. (The
//! router is played by the client's namespace: the error comes from the
//! client's address, as from a router on its side.)

use std::{
    net::{IpAddr, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use testbed::{
    bed::{Bed, ECHO, bed_of, echo_services, wait_for},
    netns::NetNs,
    packet::{ACK, PSH, Pkt, too_big},
    topology::{CLIENT_ADDR, VIP, VIP6},
};

/// The next hop's MTU the router reports (at least IPv6's minimum).
const MTU: u16 = 1280;

#[test]
fn a_too_big_error_about_a_reply_lowers_the_servers_path_mtu_towards_the_client_in_both_families() {
    let b: Bed = bed_of(1, |topology| topology.config_dual_stack(&echo_services(1)));
    let server = &b.topology.servers[0];
    let client6: IpAddr = "fd00::2".parse().unwrap();
    for (vip, client) in [(IpAddr::V4(VIP), IpAddr::V4(CLIENT_ADDR)), (IpAddr::V6(VIP6), client6)] {
        assert_eq!(route_mtu(&server.ns, client), None, "no path MTU known to {client} yet");
        let mut echo = b.connect_via(vip, "s1");
        echo.exchange("a reply to quote").expect("exchange");
        // The reply the router could not send on: from the VIP, carrying
        // the server's next sequence number (the kernel takes an error only
        // about a sequence number it has sent and not yet seen acknowledged).
        let port = echo.stream().local_addr().expect("local address").port();
        let quoted = Pkt::tcp((vip, ECHO), (client, port))
            .flags(ACK | PSH)
            .seq(server_next_seq(echo.stream()), 0)
            .payload(&[0x61; 1400]);
        let error = too_big(client, &quoted, MTU, 548);
        b.topology.client.run(|| send_icmp(vip, &error.payload));
        wait_for(&format!("s1's path MTU towards {client} lowered to {MTU}"), Duration::from_secs(3), || {
            route_mtu(&server.ns, client) == Some(MTU as u32)
        });
        echo.exchange("still connected").expect("the connection goes on");
    }
}

/// The path MTU the namespace's kernel has learnt for `dst`, if any (a
/// route exception: `ip route get` says `mtu N`).
fn route_mtu(ns: &NetNs, dst: IpAddr) -> Option<u32> {
    let out = ns.ip(&["route", "get", &dst.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    words.find(|w| *w == "mtu")?;
    words.next()?.parse().ok()
}

/// The peer's next sequence number as this end has received it (rcv_nxt),
/// read in TCP repair mode, which is left at once.
fn server_next_seq(stream: &TcpStream) -> u32 {
    const TCP_REPAIR_OFF: libc::c_int = 0;
    const TCP_REPAIR_ON: libc::c_int = 1;
    const TCP_RECV_QUEUE: libc::c_int = 1;
    let fd = stream.as_raw_fd();
    let set = |option, value: libc::c_int| {
        // SAFETY: a valid socket and a pointer to an int of the size given.
        let rc = unsafe { libc::setsockopt(fd, libc::SOL_TCP, option, &value as *const _ as *const libc::c_void, 4) };
        assert_eq!(rc, 0, "setsockopt {option}: {}", std::io::Error::last_os_error());
    };
    set(libc::TCP_REPAIR, TCP_REPAIR_ON);
    set(libc::TCP_REPAIR_QUEUE, TCP_RECV_QUEUE);
    let mut seq: u32 = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: a valid socket, and out-pointers to a u32 and its length.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_TCP, libc::TCP_QUEUE_SEQ, &mut seq as *mut u32 as *mut libc::c_void, &mut len)
    };
    assert_eq!(rc, 0, "getsockopt TCP_QUEUE_SEQ: {}", std::io::Error::last_os_error());
    set(libc::TCP_REPAIR, TCP_REPAIR_OFF);
    seq
}

/// Sends an ICMP (IPv4) or ICMPv6 `message` to `dst` from a raw socket of
/// the current namespace (for ICMPv6 the kernel fills in the checksum, over
/// the addresses it sends from).
fn send_icmp(dst: IpAddr, message: &[u8]) {
    let (family, protocol) = match dst {
        IpAddr::V4(_) => (libc::AF_INET, libc::IPPROTO_ICMP),
        IpAddr::V6(_) => (libc::AF_INET6, libc::IPPROTO_ICMPV6),
    };
    // SAFETY: plain integers.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, protocol) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    let addr = c_addr(dst);
    // SAFETY: a valid socket, the message's bytes, and an address of the
    // family's size.
    let sent = unsafe {
        libc::sendto(
            fd,
            message.as_ptr() as *const libc::c_void,
            message.len(),
            0,
            &addr.0 as *const libc::sockaddr_storage as *const libc::sockaddr,
            addr.1,
        )
    };
    let error = std::io::Error::last_os_error();
    // SAFETY: the socket made above, closed once.
    unsafe { libc::close(fd) };
    assert_eq!(sent, message.len() as isize, "sendto {dst}: {error}");
}

/// `dst` as a C socket address, and its length.
fn c_addr(dst: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: plain C structs of integers: all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match dst {
        IpAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any
            // socket address.
            let sin = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut storage as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_addr.s6_addr = a.octets();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}
