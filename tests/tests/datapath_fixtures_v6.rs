//! The XDP program's IPv6 paths, packet by packet (as `datapath_fixtures`
//! for IPv4): new flows, replies, UDP, extension headers, fragments, ICMPv6,
//! malformed packets, resets of a disabled server's flows, and a dual-stack
//! pool whose server has one state for both families.

use std::net::{Ipv4Addr, Ipv6Addr};

use lb_common::{Outcome::*, flow_seen, proto, server_state};
use testbed::{
    config_file::ConfigFile,
    fixture::{
        CLIENT, CLIENT_MAC, CLIENT6, Case, Count, Expect, FixtureBed, SERVER1, SERVER1_6, SERVER1_MAC, TOCLIENT_MAC,
        XDP_TX, drop, fixture_netns, flow_key6, forward, icmp_to_server, pass, reply,
    },
    packet::{ACK, PSH, Pkt, RST, SYN, too_big},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);

/// Pool web is dual stack (s1 by 10.0.1.2 and fd00:1::2, one server),
/// behind an IPv4 and an IPv6 VIP; pool dns is IPv6 only.
fn config() -> ConfigFile {
    ConfigFile::new()
        .set("instance", "fixture6")
        .set("interfaces", vec!["toclient", "toserver"])
        .set("flows.max", 4096)
        .service(VIP, 80, "tcp", "web")
        .service(VIP6, 80, "tcp", "web")
        .service(VIP6, 53, "udp", "dns")
        .server("web", "s1", SERVER1, 8080)
        .server_set("web", "s1", "address6", SERVER1_6.to_string())
        .server("dns", "d1", SERVER1_6, 5353)
}

/// Not a VIP, but its words fold (xor) to VIP6's: the filter's index of
/// its port 80 is the web service's.
const FOLDS_ONTO_VIP6: Ipv6Addr = Ipv6Addr::new(0xfd09, 0x100, 0x9, 0, 0, 0, 0, 1);

fn client6(port: u16, vport: u16) -> Pkt {
    Pkt::tcp((CLIENT6, port), (VIP6, vport)).macs(CLIENT_MAC, TOCLIENT_MAC)
}

/// A destination-options or hop-by-hop header's body: one PadN option.
const PADDING: [u8; 6] = [1, 4, 0, 0, 0, 0];

#[test]
fn ipv6_fixtures() {
    let index = |a: Ipv6Addr| {
        lb_common::filter::service_index6(&lb_userspace::datapath::family::addr6(a), 80u16.to_be(), proto::TCP)
    };
    assert_eq!(index(FOLDS_ONTO_VIP6), index(VIP6));
    let ns = fixture_netns();
    ns.run(|| {
        let mut bed = FixtureBed::load(&config());
        let s1 = (SERVER1_6, 8080);
        let syn = client6(40000, 80).flags(SYN).seq(1000, 0);
        let syn_ack = Pkt::tcp(s1, (CLIENT6, 40000)).macs(SERVER1_MAC, TOCLIENT_MAC).flags(SYN | ACK).seq(7000, 1001);
        let syn_ack = syn_ack.macs(SERVER1_MAC, testbed::fixture::TOSERVER_MAC);
        let data = client6(40000, 80).flags(ACK | PSH).seq(1001, 7001).payload(b"GET / HTTP/1.1\r\n\r\n");
        let udp = Pkt::udp((CLIENT6, 5000), (VIP6, 53)).macs(CLIENT_MAC, TOCLIENT_MAC).payload(b"query");
        let with_options = client6(40001, 80).flags(SYN).ext_header(0, &PADDING).ext_header(60, &PADDING);
        let routed_here = client6(40002, 80).flags(SYN).ext_header(43, &[0, 0, 0, 0, 0, 0]);
        bed.run(&[
            forward(
                "IPv6 SYN to the VIP creates a flow on s1's IPv6 address",
                &syn,
                s1,
                SERVER1_MAC,
                "web",
                "s1",
                true,
            ),
            reply("the server's SYN-ACK is rewritten back to the IPv6 VIP", &syn_ack, (VIP6, 80), "web", "s1"),
            forward("the next packet goes to the same server", &data, s1, SERVER1_MAC, "web", "s1", false),
            forward("a retransmitted SYN stays on its flow", &syn, s1, SERVER1_MAC, "web", "s1", false),
            pass(
                "a SYN to a host whose address folds onto the VIP's filter index passes",
                Pkt::tcp((CLIENT6, 40020), (FOLDS_ONTO_VIP6, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build(),
                PassNotForUs,
            ),
            forward(
                "UDP to the IPv6 VIP, checksum over the 128-bit pseudo-header",
                &udp,
                (SERVER1_6, 5353),
                SERVER1_MAC,
                "dns",
                "d1",
                true,
            ),
            drop(
                "IPv6 UDP without a checksum to a VIP drops (RFC 8200)",
                Pkt::udp((CLIENT6, 5001), (VIP6, 53)).macs(CLIENT_MAC, TOCLIENT_MAC).no_udp_checksum().build(),
                DropUdpZeroChecksum,
            ),
            forward(
                "hop-by-hop and destination options are walked and kept",
                &with_options,
                s1,
                SERVER1_MAC,
                "web",
                "s1",
                true,
            ),
            forward(
                "a routing header with no segments left is walked",
                &routed_here,
                s1,
                SERVER1_MAC,
                "web",
                "s1",
                true,
            ),
            drop(
                "a routing header still routing drops",
                client6(40003, 80).flags(SYN).ext_header(43, &[0, 1, 0, 0, 0, 0]).build(),
                DropIpv6ExtensionHeaders,
            ),
            drop(
                "a fragment header to a VIP drops",
                client6(40004, 80).flags(SYN).ext_header(44, &[0, 1, 0, 0, 0, 1]).build(),
                DropFragment,
            ),
            drop(
                "more extension headers than the walk follows drop",
                (0..5).fold(client6(40005, 80).flags(SYN), |p, _| p.ext_header(60, &PADDING)).build(),
                DropIpv6ExtensionHeaders,
            ),
            pass(
                "ICMPv6 to the VIP passes (NDP, errors)",
                Pkt::ip_protocol(58, CLIENT6, VIP6)
                    .macs(CLIENT_MAC, TOCLIENT_MAC)
                    .payload(&[135, 0, 0, 0, 0, 0, 0, 0])
                    .build(),
                PassOtherProtocol,
            ),
            pass(
                "IPv6 to another host passes",
                Pkt::tcp((CLIENT6, 1), ("fd00:9::9".parse::<Ipv6Addr>().unwrap(), 80)).build(),
                PassNotForUs,
            ),
            pass("hop limit 1 passes for the kernel's ICMPv6", client6(40000, 80).ttl(1).build(), PassTtlExpired),
            drop("IPv6 header cut short drops", client6(40000, 80).build()[..40].to_vec(), DropTruncated),
            drop(
                "payload length beyond the frame drops",
                client6(40000, 80).payload(b"abc").truncate(14 + 40 + 20).build(),
                DropTruncated,
            ),
            drop("TCP header cut short drops", client6(40000, 80).tot_len(10).truncate(14 + 50).build(), DropTruncated),
            drop("TCP data offset below 5 drops", client6(40000, 80).data_offset(2).build(), DropTruncated),
            pass(
                "a malformed TCP header to a VIP's port of no service passes (the host's own port)",
                client6(40000, 2222).data_offset(2).build(),
                PassNotForUs,
            ),
            pass(
                "the same behind a destination-options header passes",
                client6(40000, 2222).ext_header(60, &PADDING).data_offset(2).build(),
                PassNotForUs,
            ),
            drop(
                "an extension header cut short drops",
                client6(40006, 80).ext_header(60, &PADDING).tot_len(4).truncate(14 + 44).build(),
                DropTruncated,
            ),
        ]);

        let web6 = flow_key6((CLIENT6, 40000), (VIP6, 80), proto::TCP);
        let seen = bed.dp().maps.flows6.get(&web6).expect("read").expect("the flow").seen;
        assert_ne!(seen & flow_seen::AWAITING_SERVER, 0, "the client's request awaits its answer, as in IPv4");

        // The same server by IPv4: one flow of each family on s1.
        let syn4 = Pkt::tcp((CLIENT, 41000), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).seq(500, 0);
        bed.run(&[forward(
            "IPv4 SYN to the same pool lands on s1 too",
            &syn4,
            (SERVER1, 8080),
            SERVER1_MAC,
            "web",
            "s1",
            true,
        )]);

        // One state for both families: s1 DISABLED stops both.
        bed.write_server_state("web", "s1", server_state::DISABLED);
        let reset_to_client = Pkt::tcp((VIP6, 80), (CLIENT6, 40000))
            .macs(TOCLIENT_MAC, CLIENT_MAC)
            .flags(RST)
            .seq(7001, 0)
            .ttl(64)
            .window(0);
        let data4 = Pkt::tcp((CLIENT, 41000), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(ACK).seq(501, 9001);
        let reset4 = Pkt::tcp((VIP, 80), (CLIENT, 41000))
            .macs(TOCLIENT_MAC, CLIENT_MAC)
            .flags(RST)
            .seq(9001, 0)
            .ttl(64)
            .ip_id(0)
            .window(0);
        bed.run(&[
            Case {
                name: "disabled: an IPv6 client packet is answered with an IPv6 reset",
                input: data.build(),
                ingress: "toclient",
                verdict: XDP_TX,
                output: Expect::Packet(reset_to_client.build()),
                counts: vec![Count::Outcome(ResetTerminatedFlow, 1), Count::ToServer("web", "s1", 0)],
            },
            Case {
                name: "disabled: the IPv4 flow of the same server is reset too",
                input: data4.build(),
                ingress: "toclient",
                verdict: XDP_TX,
                output: Expect::Packet(reset4.build()),
                counts: vec![Count::Outcome(ResetTerminatedFlow, 1), Count::ToServer("web", "s1", 0)],
            },
            drop("disabled: no new IPv6 flow goes to s1", client6(40010, 80).flags(SYN).build(), DropNoServer),
        ]);
        let requests = bed.take_reset_request_records();
        assert_eq!(requests.len(), 2, "one reset asked for per answered packet: {requests:?}");
        let six = requests.iter().find(|r| r.len() == size_of::<lb_common::ResetRequest6>()).expect("an IPv6 request");
        let six: lb_common::ResetRequest6 = bytemuck::pod_read_unaligned(six);
        assert_eq!(
            (six.dst_addr, u16::from_be(six.dst_port), six.seq),
            (lb_userspace::datapath::family::addr6(SERVER1_6), 8080, 1001 + 18),
            "the agent is asked to reset s1's IPv6 end at the client's next sequence number"
        );
    });
}

/// Path MTU discovery through the balancer, IPv6: a router on the clients'
/// side answers the VIP "packet too big" about a server's reply; the error
/// reaches the flow's server as if the server's own packet had drawn it
/// (the ICMPv6 checksum covers the pseudo-header: the new destination
/// counts). NDP and errors about no flow pass to the kernel.
#[test]
fn packet_too_big_about_a_flow_reaches_its_server_as_if_its_own_packet_drew_it() {
    let ns = fixture_netns();
    ns.run(|| {
        let mut bed = FixtureBed::load(&config());
        let router: Ipv6Addr = "fd00::fe".parse().unwrap();
        let s1 = (SERVER1_6, 8080);
        let reply = Pkt::tcp(s1, (CLIENT6, 40000)).flags(ACK | PSH).seq(7001, 1001).payload(&[0x61; 1400]).ttl(63);
        let from_vip = reply.clone().addresses((VIP6, 80), (CLIENT6, 40000));
        let udp_reply = Pkt::udp((SERVER1_6, 5353), (CLIENT6, 5000)).payload(&[0x62; 1400]).ttl(63);
        let udp_from_vip = udp_reply.clone().addresses((VIP6, 53), (CLIENT6, 5000));
        let error = |quoted: &Pkt, quote: usize| too_big(router, quoted, 1280, quote).macs(CLIENT_MAC, TOCLIENT_MAC);
        let to_s1 = |quoted: &Pkt, quote: usize| too_big(router, quoted, 1280, quote);
        let udp = Pkt::udp((CLIENT6, 5000), (VIP6, 53)).macs(CLIENT_MAC, TOCLIENT_MAC);
        bed.run(&[
            forward("a TCP flow on s1", &client6(40000, 80).flags(SYN), s1, SERVER1_MAC, "web", "s1", true),
            forward("a UDP flow on d1", &udp, (SERVER1_6, 5353), SERVER1_MAC, "dns", "d1", true),
            icmp_to_server(
                "packet too big about a TCP reply reaches s1, quoting s1's own packet",
                &error(&from_vip, 1232),
                &to_s1(&reply, 1232),
                SERVER1_MAC,
            ),
            icmp_to_server(
                "about a UDP reply, to its server",
                &error(&udp_from_vip, 1232),
                &to_s1(&udp_reply, 1232),
                SERVER1_MAC,
            ),
            icmp_to_server(
                "behind a destination-options header too",
                &error(&from_vip, 600).ext_header(60, &PADDING),
                &to_s1(&reply, 600).ext_header(60, &PADDING),
                SERVER1_MAC,
            ),
            pass(
                "about a packet of no flow: passed",
                error(&from_vip.clone().addresses((VIP6, 80), (CLIENT6, 40999)), 1232).build(),
                PassOtherProtocol,
            ),
            pass("its quoted header cut short: passed untouched", error(&from_vip, 30).build(), PassOtherProtocol),
        ]);
        bed.write_server_state("web", "s1", server_state::DISABLED);
        bed.run(&[drop(
            "about a flow of a disabled server: dropped",
            error(&from_vip, 1232).build(),
            DropServerUnavailable,
        )]);
    });
}

/// The flood rule in IPv6's own table: in a full table, a new flow pushes
/// out the half-open flow idle longest among its buckets' (the oldest flow
/// when there is none), never a connection in use first.
#[test]
fn in_a_full_ipv6_table_half_open_flows_give_way_before_connections_in_use() {
    use lb_common::{eviction, flow_state, flow_time};

    let ns = fixture_netns();
    ns.run(|| {
        let bed = FixtureBed::load(&config().set("flows.max", 1024));
        let now = lb_userspace::datapath::clock::datapath_now_ns();
        let slots = bed.dp().maps.flows6.slots() as usize;
        let established = flow_seen::CLIENT_SEQ | flow_seen::SERVER_SEQ | flow_seen::CLIENT_ACK;
        // Four times as many flows as slots: every bucket fills up, with
        // half-open flows (a flood of spoofed SYNs) idle less long than the
        // connections in use among them.
        let flows = (0..4 * slots as u32).map(|i| {
            let client = Ipv6Addr::new(0xfd00, 0xb, 0, 0, 0, 0, (i >> 16) as u16, i as u16);
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
            (flow_key6((client, 40000), (VIP6, 80), proto::TCP), flow)
        });
        bed.dp().maps.flows6.insert_all(flows).expect("fill");
        assert_eq!(bed.dp().maps.flows6.len().expect("count"), slots, "the table is full");
        let evictions = |kind: u32| -> u64 { bed.dp().maps.evictions.get(&kind, 0).unwrap().iter().sum() };

        for port in 44000..44064u16 {
            let key = flow_key6((CLIENT6, port), (VIP6, 80), proto::TCP);
            let mut before = bed.dp().maps.flows6.neighbours(&key).expect("neighbours");
            assert_eq!(before.len(), 8, "both buckets full");
            before.sort_by_key(|(_, flow)| std::cmp::Reverse(flow_time::age(flow_time::tick(now), flow.last_seen)));
            let disposable: Vec<_> =
                before.iter().filter(|(_, f)| eviction::kind(f.state, f.seen) != eviction::IN_USE).collect();
            let victim = disposable.first().copied().unwrap_or(&before[0]);
            let syn = client6(port, 80).flags(SYN);
            bed.run(&[forward("a new flow in a full table", &syn, (SERVER1_6, 8080), SERVER1_MAC, "web", "s1", true)]);
            let flows = &bed.dp().maps.flows6;
            assert!(flows.get(&key).expect("read").is_some(), "the new flow is in");
            assert!(flows.get(&victim.0).expect("read").is_none(), "the half-open flow idle longest made room");
            for (k, _) in before.iter().filter(|(k, _)| *k != victim.0) {
                assert!(flows.get(k).expect("read").is_some(), "another flow was pushed out");
            }
        }
        assert_eq!(evictions(eviction::HALF_OPEN) + evictions(eviction::IN_USE), 64, "each counted once, by kind");
        assert!(evictions(eviction::HALF_OPEN) > 0);
    });
}
