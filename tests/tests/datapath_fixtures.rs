//! The XDP program, packet by packet: a table of fixtures run in order through
//! BPF_PROG_TEST_RUN, with control-plane steps between phases.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use lb_common::{Outcome::*, flow_seen, flow_state, flow_time, proto, server_state};
use lb_userspace::datapath::clock::datapath_now_ns;
use testbed::{
    config_file::ConfigFile,
    fixture::{
        CLIENT, CLIENT_MAC, CLIENT6, Case, Count, Expect, FixtureBed, SERVER_UNRESOLVED, SERVER1, SERVER1_6,
        SERVER1_MAC, SERVER2, SERVER2_MAC, TOCLIENT_MAC, TOSERVER_MAC, XDP_DROP, XDP_PASS, XDP_REDIRECT, at_client,
        drop, fixture_netns, flow_key, forward, icmp_to_server, pass, reply,
    },
    packet::{ACK, FIN, PSH, Pkt, SYN, arp_request, ipv6_frame, too_big},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);

fn config(web_weights: (u32, u32)) -> ConfigFile {
    ConfigFile::new()
        .set("instance", "fixture")
        .set("interfaces", vec!["toclient", "toserver"])
        .set("flows.max", 4096)
        .set("flows.tcp_closing_timeout", "10s")
        .set("flows.udp_idle_timeout", "30s")
        .set("flows.tcp_idle_timeout", "300s")
        .service(VIP, 80, "tcp", "web")
        .service(VIP, 53, "udp", "dns")
        .service(VIP, 8443, "tcp", "far")
        .service(VIP, 9999, "tcp", "empty")
        .server("web", "s1", SERVER1, 8080)
        .server_set("web", "s1", "weight", web_weights.0)
        .server("web", "s2", SERVER2, 8080)
        .server_set("web", "s2", "weight", web_weights.1)
        .server("dns", "d1", SERVER1, 5353)
        .server("far", "f1", SERVER_UNRESOLVED, 8443)
        .server("empty", "e1", SERVER1, 9999)
        .server_set("empty", "e1", "weight", 0)
}

/// A frame from the client, as it arrives on `toclient`.
fn client_tcp(port: u16, vport: u16) -> Pkt {
    Pkt::tcp((CLIENT, port), (VIP, vport)).macs(CLIENT_MAC, TOCLIENT_MAC)
}

#[test]
fn datapath_fixtures() {
    let ns = fixture_netns();
    ns.run(|| {
        let mut bed = FixtureBed::load(&config((1, 0)));
        let s1 = (SERVER1, 8080);
        let s2 = (SERVER2, 8080);

        // Phase 1: pool web has s1 only (s2 has weight 0).
        let syn = client_tcp(40000, 80).flags(SYN).seq(1000, 0);
        let syn_ack = Pkt::tcp(s1, (CLIENT, 40000)).macs(SERVER1_MAC, TOSERVER_MAC).flags(SYN | ACK).seq(7000, 1001);
        let data = client_tcp(40000, 80).flags(ACK | PSH).seq(1001, 7001).payload(b"GET / HTTP/1.1\r\n\r\n");
        let udp = Pkt::udp((CLIENT, 5000), (VIP, 53)).macs(CLIENT_MAC, TOCLIENT_MAC).payload(b"query");
        let udp_reply = Pkt::udp((SERVER1, 5353), (CLIENT, 5000)).macs(SERVER1_MAC, TOSERVER_MAC).payload(b"answer");
        let udp_no_csum =
            Pkt::udp((CLIENT, 5001), (VIP, 53)).macs(CLIENT_MAC, TOCLIENT_MAC).payload(b"q").no_udp_checksum();
        let far = client_tcp(40001, 8443).flags(SYN);
        bed.run(&[
            pass("ARP passes", arp_request(CLIENT_MAC, CLIENT, Ipv4Addr::new(10, 0, 0, 1)), PassNotIp),
            pass("IPv6 not for a VIP passes", ipv6_frame(CLIENT_MAC, TOCLIENT_MAC), PassNotForUs),
            // (A frame shorter than an Ethernet header cannot be tested: the
            // kernel refuses it as test input.)
            pass(
                "IPv4 not for a VIP passes",
                Pkt::tcp((CLIENT, 40000), (Ipv4Addr::new(10, 0, 9, 9), 80)).macs(CLIENT_MAC, TOCLIENT_MAC).build(),
                PassNotForUs,
            ),
            pass("a VIP port with no service passes", client_tcp(40000, 81).flags(SYN).build(), PassNotForUs),
            forward("SYN to the VIP creates a flow on s1, rewritten exactly", &syn, s1, SERVER1_MAC, "web", "s1", true),
            reply("the server's SYN-ACK is rewritten back to the VIP", &syn_ack, (VIP, 80), "web", "s1"),
            forward("the next packet of the flow goes to the same server", &data, s1, SERVER1_MAC, "web", "s1", false),
            drop(
                "a packet larger than the route's MTU drops (cached next hop)",
                client_tcp(40000, 80).flags(ACK).seq(1001, 7001).payload(&[0u8; 1500]).build(),
                DropMtuExceeded,
            ),
            forward("UDP to the VIP creates a flow", &udp, (SERVER1, 5353), SERVER1_MAC, "dns", "d1", true),
            reply("the UDP reply is rewritten back to the VIP", &udp_reply, (VIP, 53), "dns", "d1"),
            forward("a zero UDP checksum stays zero", &udp_no_csum, (SERVER1, 5353), SERVER1_MAC, "dns", "d1", true),
            Case {
                name: "a server whose MAC is unknown: rewritten whole, passed to the kernel to resolve",
                input: far.build(),
                ingress: "toclient",
                verdict: XDP_PASS,
                output: Expect::Packet(
                    far.clone().addresses((CLIENT, 40001), (SERVER_UNRESOLVED, 8443)).ttl(63).build(),
                ),
                counts: vec![Count::Outcome(PassNeighbourUnresolved, 1), Count::NewFlows("far", "f1", 1)],
            },
            drop(
                "a service with no server that takes new flows drops",
                client_tcp(40000, 9999).flags(SYN).build(),
                DropNoServer,
            ),
            pass(
                "TTL 1 is passed unchanged for the kernel's ICMP",
                client_tcp(40000, 80).ttl(1).build(),
                PassTtlExpired,
            ),
            // Malformed packets: dropped when meant for a VIP (any port once its IP header is in doubt, a
            // service's port once its ports are read), passed otherwise, never half-rewritten.
            drop("truncated IPv4 header drops", client_tcp(40000, 80).build()[..24].to_vec(), DropTruncated),
            drop("IHL below 5 drops", client_tcp(40000, 80).ihl(4).build(), DropBadIpHeader),
            drop("IP options to a VIP drop", client_tcp(40000, 80).options(&[1, 1, 1, 0]).build(), DropIpOptions),
            pass(
                "IP options to another host pass",
                Pkt::tcp((CLIENT, 1), (Ipv4Addr::new(10, 0, 9, 9), 80)).options(&[1, 1, 1, 0]).build(),
                PassNotForUs,
            ),
            drop("first fragment to a VIP drops", client_tcp(40000, 80).fragment(0, true).build(), DropFragment),
            drop("later fragment to a VIP drops", client_tcp(40000, 80).fragment(1480, false).build(), DropFragment),
            pass(
                "fragment to another host passes",
                Pkt::tcp((CLIENT, 1), (Ipv4Addr::new(10, 0, 9, 9), 80)).fragment(0, true).build(),
                PassNotForUs,
            ),
            drop(
                "total length beyond the frame drops",
                client_tcp(40000, 80).payload(b"abc").truncate(14 + 20 + 20).build(),
                DropTruncated,
            ),
            drop(
                "TCP header cut short drops",
                client_tcp(40000, 80).tot_len(30).truncate(14 + 30).build(),
                DropTruncated,
            ),
            drop("TCP data offset below 5 drops", client_tcp(40000, 80).data_offset(2).build(), DropTruncated),
            pass(
                "a malformed TCP header to a VIP's port of no service passes (the host's own port)",
                client_tcp(40000, 2222).data_offset(2).build(),
                PassNotForUs,
            ),
            drop(
                "UDP header cut short drops",
                Pkt::udp((CLIENT, 5000), (VIP, 53)).tot_len(24).truncate(14 + 24).build(),
                DropTruncated,
            ),
            pass(
                "ICMP to a VIP passes",
                Pkt::ip_protocol(1, CLIENT, VIP).payload(&[8, 0, 0, 0, 0, 0, 0, 0]).build(),
                PassOtherProtocol,
            ),
        ]);
        assert_eq!(bed.flow_count(), 4, "flows: web, 2 dns, far");
        let web_flow = bed.flow(&flow_key((CLIENT, 40000), (VIP, 80), proto::TCP)).expect("web flow");
        assert_eq!(
            (web_flow.client_next_seq, web_flow.server_next_seq),
            (1019, 7001),
            "tracked sequences are those of forwarded packets (the oversize one was dropped)"
        );
        assert_eq!(bed.reverse_nat_count(), 0, "no endpoint serves two services: replies find their VIP by endpoint");

        // FIN moves the flow to closing; it stays until the linger is over.
        let key = flow_key((CLIENT, 40000), (VIP, 80), proto::TCP);
        let fin = client_tcp(40000, 80).flags(FIN | ACK).seq(1020, 7001);
        bed.run(&[forward("FIN is forwarded to the flow's server", &fin, s1, SERVER1_MAC, "web", "s1", false)]);
        assert_eq!(bed.flow(&key).expect("flow").state, flow_state::TCP_CLOSING);
        let now = datapath_now_ns();
        let sweep = |at: Duration| bed.sweep(now + at.as_nanos() as u64);
        assert_eq!(sweep(Duration::from_secs(5)).expired, 0, "closing flow kept during its linger");
        let report = sweep(Duration::from_secs(11));
        assert_eq!(report.expired, 1, "closing flow removed after 10 s of linger");
        assert!(bed.flow(&key).is_none());

        // A SYN on a closing flow's 5-tuple starts a new flow at once.
        let again = client_tcp(40000, 80).flags(SYN).seq(9000, 0);
        let fin2 = client_tcp(40002, 80).flags(FIN | ACK);
        let syn2 = client_tcp(40002, 80).flags(SYN);
        bed.run(&[
            forward("after the linger, the same 5-tuple is a new flow", &again, s1, SERVER1_MAC, "web", "s1", true),
            forward("a FIN on an unknown flow creates it, closing", &fin2, s1, SERVER1_MAC, "web", "s1", true),
            forward("a SYN reusing a closing 5-tuple is a new flow", &syn2, s1, SERVER1_MAC, "web", "s1", true),
        ]);

        // Phase 2: control plane moves new flows to s2 (s1 weight 0, s2 weight 1).
        bed.apply(&config((0, 1)));
        let ack = client_tcp(40000, 80).flags(ACK).seq(9001, 1);
        let new_syn = client_tcp(40100, 80).flags(SYN);
        bed.run(&[
            forward(
                "an existing flow stays on s1: the flow table wins over the hash",
                &ack,
                s1,
                SERVER1_MAC,
                "web",
                "s1",
                false,
            ),
            forward("a new flow goes to s2", &new_syn, s2, SERVER2_MAC, "web", "s2", true),
        ]);

        // A server whose packet is not a reply of a flow it holds.
        let stale = Pkt::tcp(s2, (CLIENT, 40000)).macs(SERVER2_MAC, TOSERVER_MAC).flags(ACK);
        bed.run(&[Case {
            name: "a packet from a server for a flow on another server drops",
            input: stale.build(),
            ingress: "toserver",
            verdict: XDP_DROP,
            output: Expect::Unchanged,
            counts: vec![Count::Outcome(DropReplyWithoutFlow, 1)],
        }]);
        let removed = bed.dp().maps.flows.remove(&flow_key((CLIENT, 40100), (VIP, 80), proto::TCP));
        assert!(removed.expect("remove flow"), "the flow was there");
        let orphan = Pkt::tcp(s2, (CLIENT, 40100)).macs(SERVER2_MAC, TOSERVER_MAC).flags(SYN | ACK);
        bed.run(&[Case {
            name: "a packet from a server endpoint that belongs to no flow passes (e.g. the host's health checks)",
            input: orphan.build(),
            ingress: "toserver",
            verdict: XDP_PASS,
            output: Expect::Unchanged,
            counts: vec![Count::Outcome(PassNotForUs, 1)],
        }]);
        // A cluster node sharing its flows: the reply may be of another
        // node's flow whose copy is not here yet; its endpoint names its VIP.
        bed.dp_mut().maps.share_new_flows(true).expect("sharing on");
        bed.run(&[Case {
            name: "with flow sharing on, a reply ahead of its flow's copy is rewritten by its endpoint",
            input: orphan.build(),
            ingress: "toserver",
            verdict: XDP_REDIRECT,
            output: Expect::Packet(at_client(&orphan, (VIP, 80))),
            counts: vec![Count::Outcome(ForwardReply, 1)],
        }]);
        // A new flow is handed to the agent for the other nodes: its slot,
        // from which the agent reads it.
        let mut log = bed.dp().maps.flow_log().expect("the log of new flows");
        let shared = client_tcp(40200, 80).flags(SYN).seq(5000, 0);
        bed.run(&[forward("with flow sharing on, a new flow is shared", &shared, s2, SERVER2_MAC, "web", "s2", true)]);
        let new = log.poll();
        assert_eq!((new.v4.len(), new.v6.len(), new.lost), (1, 0, 0), "one record per new flow: {new:?}");
        let (key, flow) = new.v4[0];
        assert_eq!(key, flow_key((CLIENT, 40200), (VIP, 80), proto::TCP));
        assert_eq!(flow, bed.flow(&key).expect("the flow"), "the record is the flow in the table");
        assert_eq!(log.poll().v4.len(), 0, "each record is read once");
        // A flow freed before the agent reads its slot is not shared.
        let gone = Pkt::tcp((CLIENT, 40202), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build();
        assert_eq!(bed.run_frame(&gone, "toclient").0, XDP_REDIRECT);
        let removed = bed.dp().maps.flows.remove(&flow_key((CLIENT, 40202), (VIP, 80), proto::TCP));
        assert!(removed.expect("remove flow"), "the flow was there");
        let new = log.poll();
        assert_eq!((new.v4.len(), new.lost), (0, 0), "a freed slot shares nothing: {new:?}");
        // More new flows than a CPU's log holds between two reads: the
        // last lap (less the entry the CPU writes over next) is read, the
        // flows before it are counted lost. (On one CPU: each CPU has its
        // own part of the log.)
        testbed::bench::pin_to_cpu(0);
        let lap = lb_common::flow_sync::LOG_SLOTS as u16;
        for port in 0..lap + 5 {
            let syn = Pkt::tcp((CLIENT, 10_000 + port), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build();
            assert_eq!(bed.run_frame(&syn, "toclient").0, XDP_REDIRECT);
        }
        let new = log.poll();
        assert_eq!((new.v4.len(), new.lost), (usize::from(lap) - 1, 6), "a lapped log");
        assert_eq!(new.v4.last().map(|(k, _)| k.src_port), Some(u16::to_be(10_000 + lap + 4)), "the newest flow read");
        bed.dp_mut().maps.share_new_flows(false).expect("sharing off");
        let unshared = client_tcp(40201, 80).flags(SYN).seq(5000, 0);
        bed.run(&[forward("with flow sharing off, nothing is shared", &unshared, s2, SERVER2_MAC, "web", "s2", true)]);
        assert_eq!(log.poll().v4.len(), 0, "no record with sharing off");

        // Idle flows age out by their own timeouts: UDP after 30 s, TCP after 300 s.
        let udp_flows = |bed: &FixtureBed| {
            [5000, 5001].iter().filter(|p| bed.flow(&flow_key((CLIENT, **p), (VIP, 53), proto::UDP)).is_some()).count()
        };
        assert_eq!(udp_flows(&bed), 2);
        let now = datapath_now_ns();
        bed.sweep(now + 31_000_000_000);
        assert_eq!(udp_flows(&bed), 0, "idle UDP flows removed after 30 s");
        assert!(bed.flow(&key).is_some(), "an open TCP flow idle 31 s stays");
        bed.sweep(now + 301_000_000_000);
        assert_eq!(bed.flow_count(), 0, "every flow removed after 300 s idle");
        assert_eq!(bed.reverse_nat_count(), 0);
    });
}

/// Which end of a TCP flow sent data last: a client's request awaits its
/// answer until the server's data comes (a draining server's `idle_close`
/// leaves such a connection alone, however quiet); pure ACKs and
/// retransmissions change nothing.
#[test]
fn a_flow_records_whether_its_clients_request_awaits_an_answer() {
    let ns = fixture_netns();
    ns.run(|| {
        let bed = FixtureBed::load(&config((1, 0)));
        let s1 = (SERVER1, 8080);
        let key = flow_key((CLIENT, 40100), (VIP, 80), proto::TCP);
        let awaiting = || bed.flow(&key).expect("the flow").seen & flow_seen::AWAITING_SERVER != 0;
        let from_client = |flags, seq, ack| client_tcp(40100, 80).flags(flags).seq(seq, ack);
        let from_server =
            |flags, seq, ack| Pkt::tcp(s1, (CLIENT, 40100)).macs(SERVER1_MAC, TOSERVER_MAC).flags(flags).seq(seq, ack);
        let to_s1 = |name, pkt: &Pkt, new| forward(name, pkt, s1, SERVER1_MAC, "web", "s1", new);
        let back = |name, pkt: &Pkt| reply(name, pkt, (VIP, 80), "web", "s1");

        bed.run(&[to_s1("SYN", &from_client(SYN, 1000, 0), true)]);
        assert!(awaiting(), "a SYN awaits its SYN-ACK");
        bed.run(&[
            back("SYN-ACK", &from_server(SYN | ACK, 7000, 1001)),
            to_s1("ACK", &from_client(ACK, 1001, 7001), false),
        ]);
        assert!(!awaiting(), "the handshake done, the connection rests: a pure ACK is no request");
        let request = from_client(ACK | PSH, 1001, 7001).payload(b"GET / HTTP/1.1\r\n\r\n");
        bed.run(&[to_s1("a request", &request, false)]);
        assert!(awaiting(), "the request awaits its answer");
        let answer = from_server(ACK | PSH, 7001, 1019).payload(b"HTTP/1.1 200 OK\r\n\r\n");
        bed.run(&[
            back("the server's ACK of it", &from_server(ACK, 7001, 1019)),
            to_s1("its retransmission", &request, false),
        ]);
        assert!(awaiting(), "neither a pure ACK nor a retransmission answers it");
        bed.run(&[back("the answer", &answer), to_s1("the client's ACK of it", &from_client(ACK, 1019, 7020), false)]);
        assert!(!awaiting(), "answered: the connection rests");
    });
}

/// Another node's copy of a flow (flow replication) is this node's from the
/// first packet of it that this node forwards in a tick after the copy was
/// written: the datapath clears its mark, and the agent counts it, judges
/// it idle and shares it from then on. A copy no packet reached keeps it.
#[test]
fn a_copy_becomes_this_nodes_flow_with_the_first_packet_forwarded_here() {
    let ns = fixture_netns();
    ns.run(|| {
        let bed = FixtureBed::load(&config((1, 0)));
        let s1 = (SERVER1, 8080);
        let copy = |state| lb_common::Flow {
            server_id: bed.server_id("web", "s1") as u16,
            state,
            seen: flow_seen::COPY | flow_seen::CLIENT_ACK,
            // Written a tick ago.
            last_seen: flow_time::tick(datapath_now_ns()).wrapping_sub(1),
            ..Default::default()
        };
        let tcp = flow_key((CLIENT, 40300), (VIP, 80), proto::TCP);
        let unused = flow_key((CLIENT, 40301), (VIP, 80), proto::TCP);
        let flows = [(tcp, copy(flow_state::TCP_OPEN)), (unused, copy(flow_state::TCP_OPEN))];
        bed.dp().maps.flows.insert_all(flows).expect("insert the copies");
        let copied = |key| bed.flow(key).expect("the flow").seen & flow_seen::COPY != 0;

        let ack = client_tcp(40300, 80).flags(ACK).seq(5000, 9000);
        bed.run(&[forward("an ACK of the copy", &ack, s1, SERVER1_MAC, "web", "s1", false)]);
        assert!(!copied(&tcp), "forwarded here: this node's flow");
        assert!(copied(&unused), "no packet of it here: still the other node's copy");
    });
}

/// Path MTU discovery through the balancer: a router on the clients' side
/// that cannot send a server's reply on answers the VIP "fragmentation
/// needed"; the error reaches the flow's server as if the server's own
/// packet had drawn it (quoted source, port and every checksum as the
/// server sent it). Other ICMP, and errors about no flow, pass as before.
#[test]
fn fragmentation_needed_about_a_flow_reaches_its_server_as_if_its_own_packet_drew_it() {
    let ns = fixture_netns();
    ns.run(|| {
        let mut bed = FixtureBed::load(&config((1, 0)));
        let router = Ipv4Addr::new(10, 0, 0, 254);
        let s1 = (SERVER1, 8080);
        // The servers' large replies as they left s1, and as the router got
        // them: from the VIP, one hop further.
        let reply = Pkt::tcp(s1, (CLIENT, 40000)).flags(ACK | PSH).seq(7001, 1001).payload(&[0x61; 1400]).ttl(63);
        let from_vip = reply.clone().addresses((VIP, 80), (CLIENT, 40000));
        let udp_reply = Pkt::udp((SERVER1, 5353), (CLIENT, 5000)).payload(&[0x62; 1400]).ttl(63);
        let udp_from_vip = udp_reply.clone().addresses((VIP, 53), (CLIENT, 5000));
        let error = |quoted: &Pkt, quote: usize| too_big(router, quoted, 1280, quote).macs(CLIENT_MAC, TOCLIENT_MAC);
        let to_s1 = |quoted: &Pkt, quote: usize| too_big(router, quoted, 1280, quote);
        let udp = Pkt::udp((CLIENT, 5000), (VIP, 53)).macs(CLIENT_MAC, TOCLIENT_MAC);
        bed.run(&[
            forward("a TCP flow on s1", &client_tcp(40000, 80).flags(SYN), s1, SERVER1_MAC, "web", "s1", true),
            forward("a UDP flow on d1", &udp, (SERVER1, 5353), SERVER1_MAC, "dns", "d1", true),
            icmp_to_server(
                "fragmentation needed about a TCP reply reaches s1, quoting s1's own packet",
                &error(&from_vip, 548),
                &to_s1(&reply, 548),
                SERVER1_MAC,
            ),
            icmp_to_server(
                "a quote of the TCP header's first 8 bytes (no checksum in it) too",
                &error(&from_vip, 28),
                &to_s1(&reply, 28),
                SERVER1_MAC,
            ),
            icmp_to_server(
                "about a UDP reply, to its server",
                &error(&udp_from_vip, 548),
                &to_s1(&udp_reply, 548),
                SERVER1_MAC,
            ),
            pass(
                "about a packet of no flow: passed",
                error(&from_vip.clone().addresses((VIP, 80), (CLIENT, 40999)), 548).build(),
                PassOtherProtocol,
            ),
            pass(
                "quoting a packet that did not leave from the VIP: passed",
                to_s1(&reply, 548).addresses((router, 0), (VIP, 0)).macs(CLIENT_MAC, TOCLIENT_MAC).build(),
                PassOtherProtocol,
            ),
            pass("its quoted header cut short: passed untouched", error(&from_vip, 10).build(), PassOtherProtocol),
            pass(
                "an echo request to the VIP passes",
                Pkt::ip_protocol(1, CLIENT, VIP)
                    .macs(CLIENT_MAC, TOCLIENT_MAC)
                    .payload(&[8, 0, 0xf7, 0xff, 0, 0, 0, 0])
                    .build(),
                PassOtherProtocol,
            ),
        ]);
        // A terminated flow's server is sent nothing more.
        bed.write_server_state("web", "s1", server_state::DISABLED);
        bed.run(&[drop(
            "about a flow of a disabled server: dropped",
            error(&from_vip, 548).build(),
            DropServerUnavailable,
        )]);
    });
}

fn reset_request(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), seq: u32) -> lb_common::ResetRequest {
    lb_common::ResetRequest {
        src_addr: u32::from_ne_bytes(src.0.octets()),
        dst_addr: u32::from_ne_bytes(dst.0.octets()),
        src_port: src.1.to_be(),
        dst_port: dst.1.to_be(),
        seq,
    }
}

#[test]
fn maintenance_fixtures() {
    use lb_common::server_state::DISABLED;
    use lb_userspace::model::DisableMode;
    use testbed::{fixture::XDP_TX, packet::RST};

    let ns = fixture_netns();
    ns.run(|| {
        let mut bed = FixtureBed::load(&config((1, 0)));
        let s1 = (SERVER1, 8080);
        let s2 = (SERVER2, 8080);

        // Flows established on s1 (s2 has weight 0 for now).
        let syn = client_tcp(41000, 80).flags(SYN).seq(1000, 0);
        let syn_ack = Pkt::tcp(s1, (CLIENT, 41000)).macs(SERVER1_MAC, TOSERVER_MAC).flags(SYN | ACK).seq(7000, 1001);
        let other = client_tcp(41002, 80).flags(SYN).seq(3000, 0);
        let udp = Pkt::udp((CLIENT, 5002), (VIP, 53)).macs(CLIENT_MAC, TOCLIENT_MAC).payload(b"q");
        bed.run(&[
            forward("flow established: SYN", &syn, s1, SERVER1_MAC, "web", "s1", true),
            reply("flow established: SYN-ACK", &syn_ack, (VIP, 80), "web", "s1"),
            forward("another flow on s1", &other, s1, SERVER1_MAC, "web", "s1", true),
            forward("a UDP flow on d1", &udp, (SERVER1, 5353), SERVER1_MAC, "dns", "d1", true),
        ]);
        bed.apply(&config((1, 1)));

        // s1 DRAINING: its flows go on, new flows go elsewhere.
        bed.disable("web", &["s1"], DisableMode::Graceful { timeout_ms: None }, false).expect("drain");
        let ack = client_tcp(41000, 80).flags(ACK).seq(1001, 7001);
        let server_data = Pkt::tcp(s1, (CLIENT, 41000))
            .macs(SERVER1_MAC, TOSERVER_MAC)
            .flags(ACK | PSH)
            .seq(7001, 1001)
            .payload(b"hi");
        let new_syn = client_tcp(41001, 80).flags(SYN);
        bed.run(&[
            forward("draining: the flow's ACK is still forwarded to s1", &ack, s1, SERVER1_MAC, "web", "s1", false),
            reply("draining: s1's replies still reach the client", &server_data, (VIP, 80), "web", "s1"),
            forward("draining: a new SYN picks another server", &new_syn, s2, SERVER2_MAC, "web", "s2", true),
        ]);

        // s1 DISABLED (before the agent's purge): its flows' packets are answered with resets.
        bed.write_server_state("web", "s1", DISABLED);
        bed.write_server_state("dns", "d1", DISABLED);
        let data = client_tcp(41000, 80).flags(ACK | PSH).seq(1001, 7003).payload(b"more data");
        let reset_to_client = Pkt::tcp((VIP, 80), (CLIENT, 41000))
            .macs(TOCLIENT_MAC, CLIENT_MAC)
            .flags(RST)
            .seq(7003, 0)
            .ttl(64)
            .ip_id(0)
            .window(0);
        let from_s1 = Pkt::tcp(s1, (CLIENT, 41000)).macs(SERVER1_MAC, TOSERVER_MAC).flags(ACK).seq(7003, 1010);
        let reset_to_s1 = Pkt::tcp((CLIENT, 41000), s1)
            .macs(TOSERVER_MAC, SERVER1_MAC)
            .flags(RST)
            .seq(1010, 0)
            .ttl(64)
            .ip_id(0)
            .window(0);
        bed.run(&[Case {
            name: "disabled: a client packet is answered with a reset, nothing reaches s1",
            input: data.build(),
            ingress: "toclient",
            verdict: XDP_TX,
            output: Expect::Packet(reset_to_client.build()),
            counts: vec![Count::Outcome(ResetTerminatedFlow, 1), Count::ToServer("web", "s1", 0)],
        }]);
        assert_eq!(
            bed.take_reset_requests(),
            vec![reset_request((CLIENT, 41000), s1, 1010)],
            "the agent is asked to reset s1's end, at the client's next sequence number"
        );
        bed.run(&[
            Case {
                name: "disabled: a server packet is answered with a reset, nothing reaches the client",
                input: from_s1.build(),
                ingress: "toserver",
                verdict: XDP_TX,
                output: Expect::Packet(reset_to_s1.build()),
                counts: vec![Count::Outcome(ResetTerminatedFlow, 1), Count::FromServer("web", "s1", 0)],
            },
            drop(
                "disabled: a reset is not answered",
                client_tcp(41002, 80).flags(RST | ACK).seq(3001, 1).build(),
                DropServerUnavailable,
            ),
            drop("disabled: UDP packets of the flow are dropped", udp.build(), DropServerUnavailable),
            forward(
                "disabled: a SYN reusing the 5-tuple is a new connection, on s2",
                &client_tcp(41000, 80).flags(SYN).seq(50_000, 0),
                s2,
                SERVER2_MAC,
                "web",
                "s2",
                true,
            ),
        ]);
        assert_eq!(
            bed.take_reset_requests(),
            vec![reset_request((VIP, 80), (CLIENT, 41000), 7003)],
            "the agent is asked to reset the client's end, as from the VIP"
        );

        // The full immediate disable (state write, resets, purge) leaves none of s1's flows.
        let other_key = flow_key((CLIENT, 41002), (VIP, 80), proto::TCP);
        assert!(bed.flow(&other_key).is_some());
        bed.disable("web", &["s1"], DisableMode::Immediate, false).expect("disable");
        assert!(bed.flow(&other_key).is_none(), "s1's flow was not purged");
        let s2_flows = [41000, 41001]
            .iter()
            .filter(|p| bed.flow(&flow_key((CLIENT, **p), (VIP, 80), proto::TCP)).is_some())
            .count();
        assert_eq!(s2_flows, 2, "s2's flows are untouched");
    });
}

#[test]
fn an_endpoint_serving_two_services_finds_the_vip_per_flow() {
    const VIP2: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
    let config = ConfigFile::new()
        .set("interfaces", vec!["toclient"])
        .service(VIP, 80, "tcp", "web")
        .service(VIP2, 80, "tcp", "web")
        .server("web", "s1", SERVER1, 8080);
    let ns = fixture_netns();
    ns.run(|| {
        let bed = FixtureBed::load(&config);
        let s1 = (SERVER1, 8080);
        let to_vip1 = client_tcp(42000, 80).flags(SYN);
        let to_vip2 = Pkt::tcp((CLIENT, 42001), (VIP2, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN);
        let reply1 = Pkt::tcp(s1, (CLIENT, 42000)).macs(SERVER1_MAC, TOSERVER_MAC).flags(SYN | ACK);
        let reply2 = Pkt::tcp(s1, (CLIENT, 42001)).macs(SERVER1_MAC, TOSERVER_MAC).flags(SYN | ACK);
        bed.run(&[
            forward("a flow to the first VIP", &to_vip1, s1, SERVER1_MAC, "web", "s1", true),
            forward("a flow to the second VIP, same server endpoint", &to_vip2, s1, SERVER1_MAC, "web", "s1", true),
            reply("its reply comes back from the first VIP", &reply1, (VIP, 80), "web", "s1"),
            reply("its reply comes back from the second VIP", &reply2, (VIP2, 80), "web", "s1"),
        ]);
        assert_eq!(bed.reverse_nat_count(), 2, "one return-path entry per flow of the shared endpoint");
        let later = datapath_now_ns() + 301_000_000_000;
        bed.sweep(later);
        assert_eq!((bed.flow_count(), bed.reverse_nat_count()), (0, 0), "aged out with their flows");
    });
}

/// The filter folds a destination (address, port, protocol) into 16 bits,
/// so a server's reply to a client may land on a service's index: it is
/// still a reply (the parse reads the source port's bit only for packets
/// that no service may be at; the rest of the path reads it then).
#[test]
fn a_reply_whose_client_folds_onto_a_services_filter_index_is_still_a_reply() {
    let native = |a: Ipv4Addr| u32::from_ne_bytes(a.octets());
    let index = |a: Ipv4Addr, port: u16| lb_common::filter::service_index(native(a), port.to_be(), proto::TCP);
    // The client port whose index is the web service's (the fold is a xor).
    let port = u16::from_be((index(VIP, 80) ^ index(CLIENT, 0)) as u16);
    assert_eq!(index(CLIENT, port), index(VIP, 80));
    let ns = fixture_netns();
    ns.run(|| {
        let bed = FixtureBed::load(&config((1, 0)));
        let s1 = (SERVER1, 8080);
        let syn = client_tcp(port, 80).flags(SYN).seq(1000, 0);
        let syn_ack = Pkt::tcp(s1, (CLIENT, port)).macs(SERVER1_MAC, TOSERVER_MAC).flags(SYN | ACK).seq(7000, 1001);
        bed.run(&[
            forward("a flow from the colliding port", &syn, s1, SERVER1_MAC, "web", "s1", true),
            reply("its reply is rewritten back to the VIP", &syn_ack, (VIP, 80), "web", "s1"),
        ]);
    });
}

/// A server removed from the config is taken out by its pool's
/// `graceful_disable_timeout`: "infinite" (the default) lets its flow go on
/// while it is "removing"; "0" terminates the flow at once and forgets it.
#[test]
fn a_server_removed_from_the_config_is_taken_out_by_its_pools_rule() {
    let ns = fixture_netns();
    ns.run(|| {
        let mut bed = FixtureBed::load(&config((1, 1)));
        let to_far = client_tcp(43000, 8443).flags(SYN);
        let f1 = |name, new_flow| Case {
            name,
            input: to_far.build(),
            ingress: "toclient",
            verdict: XDP_PASS,
            output: Expect::Packet(
                to_far.clone().addresses((CLIENT, 43000), (SERVER_UNRESOLVED, 8443)).ttl(63).build(),
            ),
            counts: vec![Count::Outcome(PassNeighbourUnresolved, 1), Count::NewFlows("far", "f1", new_flow)],
        };
        bed.run(&[f1("a flow on f1", 1)]);
        let key = flow_key((CLIENT, 43000), (VIP, 8443), proto::TCP);

        // The config drops f1, the only server of pool far (the pool stays,
        // empty, so that its service stays valid).
        let without_f1 = config((1, 1)).without_server("far", "f1");
        let report = bed.apply(&without_f1);
        assert!(report.changes.iter().any(|c| c.starts_with("far/f1 removed")), "{:?}", report.changes);
        bed.owner_sweep();
        let f1_slot = bed.servers().find("far", "f1").expect("f1 stays while its flow lives");
        assert!(f1_slot.removing, "listed as removing");
        bed.run(&[f1("its flow goes on while it is removing", 0)]);
        assert!(bed.flow(&key).is_some());

        // The same removal with "0": at once.
        let at_once = |c: ConfigFile| c.set("pools.far.graceful_disable_timeout", "0");
        let mut bed = FixtureBed::load(&at_once(config((1, 1))));
        bed.run(&[f1("a flow on f1", 1)]);
        bed.apply(&at_once(without_f1));
        assert!(bed.flow(&key).is_none(), "the removed server's flow is terminated at once");
        assert!(bed.servers().find("far", "f1").is_none(), "and the server forgotten");
    });
}

/// A service removed from the config takes no new flow; its flows follow
/// its pool's `graceful_disable_timeout`: with "infinite" they go on, with
/// "0" they are terminated at once.
#[test]
fn a_service_removed_from_the_config_takes_no_new_flow_and_its_flows_follow_the_pools_rule() {
    let ns = fixture_netns();
    ns.run(|| {
        let mut bed = FixtureBed::load(&config((1, 0)));
        let syn = client_tcp(43001, 80).flags(SYN);
        bed.run(&[forward("a flow on s1", &syn, (SERVER1, 8080), SERVER1_MAC, "web", "s1", true)]);
        let key = flow_key((CLIENT, 43001), (VIP, 80), proto::TCP);
        assert!(bed.flow(&key).is_some());

        // The service moves to port 81; its pool and servers stay.
        let moved = config((1, 0)).without_services_of("web").service(VIP, 81, "tcp", "web");
        bed.apply(&moved);
        let ack = client_tcp(43001, 80).flags(ACK).seq(1, 1);
        let new_syn = client_tcp(43002, 80).flags(SYN).build();
        bed.run(&[
            forward("the leaving service's flow goes on", &ack, (SERVER1, 8080), SERVER1_MAC, "web", "s1", false),
            pass("a new connection to the removed service is not balanced", new_syn, PassNotForUs),
        ]);
        bed.owner_sweep();
        assert!(bed.flow(&key).is_some(), "its live flow is kept");

        // The same with "0": its flows end at once.
        let immediate = |c: ConfigFile| c.set("pools.web.graceful_disable_timeout", "0");
        let mut bed = FixtureBed::load(&immediate(config((1, 0))));
        bed.run(&[forward("a flow on s1", &syn, (SERVER1, 8080), SERVER1_MAC, "web", "s1", true)]);
        bed.apply(&immediate(moved));
        assert!(bed.flow(&key).is_none(), "the removed service's flow is terminated at once");
        bed.run(&[pass("a packet of the old service's flow", ack.build(), PassNotForUs)]);
    });
}

/// While no agent runs, the datapath's clock stands still and the flows it
/// forwards keep that time: an agent that starts counts their idle time
/// from when its clock runs, not from their last-seen time.
#[test]
fn idle_time_counts_from_when_the_clock_runs() {
    let ns = fixture_netns();
    ns.run(|| {
        let bed = FixtureBed::load(&config((1, 0)));
        let since = bed.dp().maps.clock.since_ns();
        let server_id = bed.server_id("web", "s1");
        // Last seen before this clock started, as a flow forwarded while no
        // agent ran would be: 400 s before (the TCP idle timeout is 300 s),
        // or at 0 on a machine that booted less than 400 s ago
        // (CLOCK_MONOTONIC starts near 0 at boot).
        const S: u64 = 1_000_000_000;
        let last_seen_ns = since.saturating_sub(400 * S);
        let key = flow_key((CLIENT, 45000), (VIP, 80), proto::TCP);
        let flow = lb_common::Flow {
            server_id: server_id as u16,
            state: flow_state::TCP_OPEN,
            last_seen: flow_time::tick(last_seen_ns),
            ..Default::default()
        };
        bed.dp().maps.flows.insert_all([(key, flow)]).expect("insert");
        let sweep = |at: u64| bed.sweep(at);

        // Over 300 s after its last-seen time, but under 300 s of this clock.
        let early = since.max(last_seen_ns + 301 * S) + S;
        sweep(early);
        assert!(bed.flow(&key).is_some(), "idle {} s by this clock: kept", (early - since) / S);
        sweep(since + 301 * S);
        assert!(bed.flow(&key).is_none(), "idle 301 s by this clock: aged out");
    });
}

#[test]
fn a_new_flow_whose_buckets_are_full_pushes_out_the_oldest_of_them() {
    let ns = fixture_netns();
    ns.run(|| {
        // The smallest table: 2048 slots.
        let small = config((1, 0)).set("flows.max", 1024);
        let bed = FixtureBed::load(&small);
        let now = datapath_now_ns();
        // Four times as many flows as slots (each bucket is offered 32 on
        // average: twice as many leaves one short now and then), each idle a
        // different time: every bucket fills up.
        let flows = (0..8192u32).map(|i| {
            let key = flow_key((Ipv4Addr::from(0x0b00_0000 | i), 40000), (VIP, 80), proto::TCP);
            // Idle times in ticks (about 1 ms), each flow's its own.
            let flow = lb_common::Flow {
                server_id: bed.server_id("web", "s1") as u16,
                state: flow_state::TCP_OPEN,
                last_seen: flow_time::tick(now).wrapping_sub(1 + (i * 7919) % 8192),
                ..Default::default()
            };
            (key, flow)
        });
        bed.dp().maps.flows.insert_all(flows).expect("fill");
        assert_eq!(bed.flow_count(), 2048, "the table is full");

        let key = flow_key((CLIENT, 44000), (VIP, 80), proto::TCP);
        let mut before = bed.dp().maps.flows.neighbours(&key).expect("neighbours");
        assert_eq!(before.len(), 8, "both buckets full");
        before.sort_by_key(|(_, flow)| std::cmp::Reverse(flow_time::age(flow_time::tick(now), flow.last_seen)));
        let syn = client_tcp(44000, 80).flags(SYN);
        bed.run(&[forward("a new flow in a full table", &syn, (SERVER1, 8080), SERVER1_MAC, "web", "s1", true)]);

        assert!(bed.flow(&key).is_some(), "the new flow is in");
        assert!(bed.flow(&before[0].0).is_none(), "the oldest of its buckets' flows made room");
        for (k, _) in &before[1..] {
            assert!(bed.flow(k).is_some(), "a younger flow was pushed out");
        }
        assert_eq!(bed.flow_count(), 2048);
    });
}

#[test]
fn a_new_flow_is_not_dropped_while_a_disabled_servers_hash_row_is_rewritten() {
    use lb_common::server_state::{DISABLED, DRAINING};

    let ns = fixture_netns();
    ns.run(|| {
        let mut bed = FixtureBed::load(&config((1, 1)));
        let s2 = (SERVER2, 8080);
        // The first step of an operator's disable of s1, as the agent takes
        // it: s1's state is written, its service's Maglev row (half its
        // slots name s1) not yet.
        for (state, what) in [(DISABLED, "disabled"), (DRAINING, "draining")] {
            bed.write_server_state("web", "s1", state);
            let cases: Vec<Case> = (0..64)
                .map(|i| {
                    let syn = client_tcp(42000 + i + 100 * u16::from(state), 80).flags(SYN).seq(5000, 0);
                    forward(
                        "a SYN whose slot names s1 (not in service yet in the row) goes to s2",
                        &syn,
                        s2,
                        SERVER2_MAC,
                        "web",
                        "s2",
                        true,
                    )
                })
                .collect();
            bed.run(&cases);
            assert_eq!(bed.outcomes().get("drop_no_server").copied().unwrap_or(0), 0, "s1 {what}: no SYN dropped");
        }
        // With no server in service at all, a SYN is still dropped.
        bed.write_server_state("web", "s2", DISABLED);
        let syn = client_tcp(43000, 80).flags(SYN).seq(5000, 0);
        bed.run(&[Case {
            name: "no server takes new flows: dropped",
            input: syn.build(),
            ingress: "toclient",
            verdict: testbed::fixture::XDP_DROP,
            output: Expect::Unchanged,
            counts: vec![Count::Outcome(DropNoServer, 1)],
        }]);
    });
}

#[test]
fn in_a_full_table_half_open_flows_give_way_before_connections_in_use() {
    use lb_common::{eviction, flow_seen};

    let ns = fixture_netns();
    ns.run(|| {
        let small = config((1, 0)).set("flows.max", 1024);
        let bed = FixtureBed::load(&small);
        let now = datapath_now_ns();
        // Every bucket full: established connections, idle longer than the
        // half-open flows (a flood of spoofed SYNs) among them.
        let established = flow_seen::CLIENT_SEQ | flow_seen::SERVER_SEQ | flow_seen::CLIENT_ACK;
        let flows = (0..8192u32).map(|i| {
            let key = flow_key((Ipv4Addr::from(0x0b00_0000 | i), 40000), (VIP, 80), proto::TCP);
            let in_use = i % 3 != 0;
            // Idle times in ticks (about 1 ms), each flow's its own.
            let idle = (1 + (i * 7919) % 8192) + if in_use { 60_000 } else { 0 };
            let flow = lb_common::Flow {
                server_id: bed.server_id("web", "s1") as u16,
                state: flow_state::TCP_OPEN,
                seen: if in_use { established } else { flow_seen::CLIENT_SEQ | flow_seen::SERVER_SEQ },
                last_seen: flow_time::tick(now).wrapping_sub(idle),
                ..Default::default()
            };
            (key, flow)
        });
        bed.dp().maps.flows.insert_all(flows).expect("fill");
        assert_eq!(bed.flow_count(), 2048, "the table is full");
        let evictions = |kind: u32| -> u64 { bed.dp().maps.evictions.get(&kind, 0).unwrap().iter().sum() };

        let mut evicted_in_use = 0;
        for port in 44000..44064u16 {
            let key = flow_key((CLIENT, port), (VIP, 80), proto::TCP);
            let mut before = bed.dp().maps.flows.neighbours(&key).expect("neighbours");
            assert_eq!(before.len(), 8, "both buckets full");
            before.sort_by_key(|(_, flow)| std::cmp::Reverse(flow_time::age(flow_time::tick(now), flow.last_seen)));
            let disposable: Vec<_> =
                before.iter().filter(|(_, f)| eviction::kind(f.state, f.seen) != eviction::IN_USE).collect();
            let victim = disposable.first().copied().unwrap_or(&before[0]);
            if disposable.is_empty() {
                evicted_in_use += 1;
            }
            let syn = client_tcp(port, 80).flags(SYN);
            bed.run(&[forward("a new flow in a full table", &syn, (SERVER1, 8080), SERVER1_MAC, "web", "s1", true)]);
            assert!(bed.flow(&key).is_some(), "the new flow is in");
            assert!(bed.flow(&victim.0).is_none(), "the half-open flow idle longest made room (else the oldest)");
            for (k, _) in before.iter().filter(|(k, _)| *k != victim.0) {
                assert!(bed.flow(k).is_some(), "another flow was pushed out");
            }
        }
        assert_eq!(evictions(eviction::IN_USE), evicted_in_use);
        assert_eq!(evictions(eviction::HALF_OPEN) + evictions(eviction::IN_USE), 64, "each counted once, by kind");
        assert!(evictions(eviction::HALF_OPEN) > 0);
    });
}

/// A server's reply goes by the FIB's answer for its client, cached on the
/// CPU for `NEXT_HOP_TTL_NS`, then looked up again: a client whose MAC
/// changes gets its replies at the new one within that time, not at once.
/// The cached answer keeps the route's MTU. In both families.
#[test]
fn a_reply_goes_by_its_clients_cached_next_hop_until_that_is_a_second_old() {
    let net = fixture_netns();
    let ns_name = net.ns.name.clone();
    net.run(|| {
        // The cache is per CPU: every frame must run on the same one.
        testbed::bench::pin_to_cpu(0);
        let vip6: std::net::Ipv6Addr = "fd00:100::1".parse().unwrap();
        let config = ConfigFile::new()
            .set("instance", "fixture-hops")
            .set("interfaces", vec!["toclient", "toserver"])
            .set("flows.max", 4096)
            .service(VIP, 80, "tcp", "web")
            .service(vip6, 80, "tcp", "web")
            .server("web", "s1", SERVER1, 8080)
            .server_set("web", "s1", "address6", SERVER1_6.to_string());
        let bed = FixtureBed::load(&config);
        for (client, vip, server) in [
            (IpAddr::from(CLIENT), IpAddr::from(VIP), IpAddr::from(SERVER1)),
            (CLIENT6.into(), vip6.into(), SERVER1_6.into()),
        ] {
            replies_use_the_cached_hop(&bed, &ns_name, client, (vip, 80), server);
        }
    });
}

fn replies_use_the_cached_hop(bed: &FixtureBed, ns: &str, client: IpAddr, vip: (IpAddr, u16), server: IpAddr) {
    const MOVED_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x99];
    let ttl = lb_common::NEXT_HOP_TTL_NS;
    let client_mac = |mac: [u8; 6]| {
        let mac = mac.map(|b| format!("{b:02x}")).join(":");
        let out = std::process::Command::new("ip")
            .args(["-n", ns, "neigh", "replace", &client.to_string(), "lladdr", &mac, "dev", "toclient"])
            .args(["nud", "permanent"])
            .output()
            .expect("run ip");
        assert!(out.status.success(), "ip neigh replace: {}", String::from_utf8_lossy(&out.stderr));
    };
    let syn = Pkt::tcp((client, 41000), vip).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).seq(1000, 0);
    let (verdict, _) = bed.run_frame(&syn.build(), "toclient");
    assert_eq!(verdict, XDP_REDIRECT, "{client}: the SYN goes to s1");
    let reply = Pkt::tcp((server, 8080), (client, 41000)).macs(SERVER1_MAC, TOSERVER_MAC).flags(SYN | ACK);
    let reply = reply.seq(7000, 1001);
    // The reply as the client gets it, sent to `mac`.
    let at = |mac: [u8; 6]| {
        let mut out = at_client(&reply, vip);
        out[..6].copy_from_slice(&mac);
        out
    };
    let larger_than_mtu = reply.clone().flags(ACK).payload(&[0u8; 1500]).build();
    // The cache's second must not run out between the first reply and the
    // checks: on a machine too slow for that, the attempt is made again.
    for attempt in 1.. {
        client_mac(CLIENT_MAC);
        std::thread::sleep(Duration::from_nanos(ttl)); // any earlier answer is stale
        let began = datapath_now_ns();
        let first = bed.run_frame(&reply.build(), "toserver");
        client_mac(MOVED_MAC);
        let second = bed.run_frame(&reply.build(), "toserver");
        let drops_before = bed.outcomes().get("drop_mtu_exceeded").copied().unwrap_or(0);
        let large = bed.run_frame(&larger_than_mtu, "toserver");
        let drops = bed.outcomes().get("drop_mtu_exceeded").copied().unwrap_or(0) - drops_before;
        if datapath_now_ns() - began >= ttl && attempt < 5 {
            continue;
        }
        assert_eq!(first, (XDP_REDIRECT, at(CLIENT_MAC)), "{client}: the first reply, by the FIB");
        assert_eq!(second, (XDP_REDIRECT, at(CLIENT_MAC)), "{client}: the next one, by the cached hop");
        assert_eq!((large.0, drops), (XDP_DROP, 1), "{client}: the cached hop keeps the route's MTU");
        break;
    }
    std::thread::sleep(Duration::from_nanos(ttl + ttl / 10));
    let later = bed.run_frame(&reply.build(), "toserver");
    assert_eq!(later, (XDP_REDIRECT, at(MOVED_MAC)), "{client}: a second on, the FIB is asked again");
}

/// Routing rules may choose a reply's route by its source (a VIP): the
/// client's cached hop is kept per VIP, so replies from two VIPs to one
/// client, one after the other within the cache's second, each follow
/// their own route.
#[test]
fn a_clients_cached_hop_is_kept_per_vip_as_routing_rules_may_choose_by_source() {
    const VIP2: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 2);
    const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 3];
    let net = fixture_netns();
    // Replies from VIP2 reach the client through a gateway (10.0.0.3).
    net.ns.ip(&["neigh", "replace", "10.0.0.3", "lladdr", "02:00:00:00:00:03", "dev", "toclient", "nud", "permanent"]);
    net.ns.ip(&["route", "add", "10.0.0.2/32", "via", "10.0.0.3", "dev", "toclient", "table", "100"]);
    net.ns.ip(&["rule", "add", "from", "10.100.0.2", "lookup", "100"]);
    let config = ConfigFile::new()
        .set("instance", "fixture-rules")
        .set("interfaces", vec!["toclient", "toserver"])
        .service(VIP, 80, "tcp", "web")
        .service(VIP2, 80, "tcp", "web")
        .server("web", "s1", SERVER1, 8080);
    net.run(|| {
        // The cache is per CPU: every frame must run on the same one.
        testbed::bench::pin_to_cpu(0);
        let bed = FixtureBed::load(&config);
        let s1 = (SERVER1, 8080);
        for (port, vip) in [(42000, VIP), (42001, VIP2)] {
            let syn = Pkt::tcp((CLIENT, port), (vip, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build();
            assert_eq!(bed.run_frame(&syn, "toclient").0, XDP_REDIRECT, "the SYN to {vip} goes to s1");
        }
        let reply = |port: u16| Pkt::tcp(s1, (CLIENT, port)).macs(SERVER1_MAC, TOSERVER_MAC).flags(SYN | ACK);
        for round in 0..2 {
            for (port, vip, mac) in [(42000, VIP, CLIENT_MAC), (42001, VIP2, GATEWAY_MAC)] {
                let mut expected = at_client(&reply(port), (vip, 80));
                expected[..6].copy_from_slice(&mac);
                let out = bed.run_frame(&reply(port).build(), "toserver");
                assert_eq!(out, (XDP_REDIRECT, expected), "round {round}: the reply from {vip} by its own route");
            }
        }
    });
}

#[test]
fn new_flows_on_two_cpus_at_once_lose_no_slot() {
    use std::sync::Barrier;
    use testbed::{bench::pin_to_cpu, fixture::test_run};

    // Rounds of 128 new flows on each of two CPUs at once, in the smallest
    // table (512 buckets), emptied between rounds: now and then both claim
    // a slot of one bucket at the same instant, and the one that loses must
    // claim again (without that, two runs of this test lost 16 and 20 SYNs).
    const ROUNDS: u16 = 3000;
    const FLOWS: u8 = 128;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let ns = fixture_netns();
    ns.run(|| {
        let bed = FixtureBed::load(&config((1, 1)).set("flows.max", 1024));
        let toclient = testbed::fixture::ifindex("toclient");
        let syn = |cpu: u8, round: u16, i: u8| {
            Pkt::tcp((Ipv4Addr::new(11, cpu, 0, i), 1024 + round), (VIP, 80))
                .macs(CLIENT_MAC, TOCLIENT_MAC)
                .flags(SYN)
                .build()
        };
        let before = bed.outcomes();
        let barrier = Barrier::new(2);
        std::thread::scope(|s| {
            for cpu in 0..2u8 {
                let (bed, barrier) = (&bed, &barrier);
                s.spawn(move || {
                    pin_to_cpu(cpu as usize % cpus);
                    for round in 0..ROUNDS {
                        let frames: Vec<Vec<u8>> = (0..FLOWS).map(|i| syn(cpu, round, i)).collect();
                        barrier.wait();
                        for frame in &frames {
                            test_run(bed.dp().program(), frame, toclient);
                        }
                        barrier.wait();
                        if cpu == 0 {
                            bed.dp().maps.flows.remove_where(|_, _| true).expect("empty the table");
                        }
                    }
                });
            }
        });
        let after = bed.outcomes();
        let delta = |label: &str| after.get(label).copied().unwrap_or(0) - before.get(label).copied().unwrap_or(0);
        assert_eq!(delta("drop_flow_slot_taken"), 0, "new flows lost their slot to the other CPU");
        assert_eq!(delta("forward_new_flow"), 2 * ROUNDS as u64 * FLOWS as u64, "every SYN opened a flow");
    });
}

/// Each service's Maglev row, as the datapath reads it (element by element,
/// through the kernel), is the row the agent computed for its pool's
/// servers that take new flows: at start, and after a change rewrites
/// rows in place. (The agent writes rows through a mapping of the array,
/// whose elements the kernel lays out 8 bytes apart.)
#[test]
fn every_services_maglev_row_reads_in_the_datapath_as_computed() {
    use lb_userspace::{
        model::DisableMode,
        servers::maglev::{self, Member},
    };
    let ns = fixture_netns();
    ns.run(|| {
        let mut bed = FixtureBed::load(&config((1, 1)));
        let check = |bed: &FixtureBed, when: &str| {
            for service in bed.services() {
                let members: Vec<Member> = bed
                    .servers()
                    .pool(&service.pool)
                    .filter(|s| s.takes_new_flows())
                    .map(|s| Member { id: s.id, identity: s.identity, weight: s.hash_weight() })
                    .collect();
                let want = maglev::build_table(&members);
                let base = service.index * lb_common::MAGLEV_TABLE_SIZE;
                let maps = &bed.dp().maps;
                let found =
                    (0..want.len() as u32).find(|&i| maps.maglev.get(&(base + i), 0).ok() != Some(want[i as usize]));
                assert_eq!(
                    found,
                    None,
                    "{when}: service {} (row {}) differs at that slot",
                    service.label(),
                    service.index
                );
            }
        };
        assert!(bed.services().len() >= 4, "rows from several pages of the array");
        check(&bed, "at start");
        bed.disable("web", &["s1"], DisableMode::Graceful { timeout_ms: None }, false).expect("disable s1");
        check(&bed, "s1 draining");
    });
}
