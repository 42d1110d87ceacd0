//! The datapath, fuzzed through BPF_PROG_TEST_RUN: packets of every path
//! (new flows, existing flows, replies, UDP, traffic not for a VIP, other
//! protocols, ICMP errors about flows), mutated in lengths, header fields, flags, options, fragments
//! and truncation, from a fixed seed. For each: a pass or a drop leaves the
//! bytes as they were; a forward changes only what the rewrite may change
//! and keeps its checksums as valid as they came; exactly one outcome is
//! counted, and it agrees with the verdict. Afterwards the flow table holds
//! only well-formed flows.
//!
//! 100,000 cases here (`cargo xtask test`); `cargo xtask fuzz --cases N` runs
//! more (`LB_FUZZ_CASES`), with another seed if `LB_FUZZ_SEED` is set.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use lb_common::{flow_state, proto};
use lb_userspace::{datapath::sweep::remove_flows_where, servers::ServiceId};
use proptest::{
    prelude::*,
    test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner},
};
use testbed::{
    config_file::ConfigFile,
    fixture::{
        CLIENT, CLIENT_MAC, CLIENT6, FixtureBed, SERVER1, SERVER1_6, SERVER1_MAC, TOCLIENT_MAC, TOSERVER_MAC,
        XDP_ABORTED, XDP_DROP, XDP_PASS, fixture_netns,
    },
    packet::{ACK, FIN, PSH, Pkt, RST, SYN, arp_request, checksum, ipv6_frame, too_big},
    topology::VIP,
};

fn config() -> ConfigFile {
    let far = Ipv4Addr::new(10, 0, 3, 2);
    ConfigFile::new()
        .set("instance", "fuzz")
        .set("interfaces", vec!["toclient", "toserver"])
        .set("flows.max", 4096)
        .service(VIP, 80, "tcp", "web")
        .service(VIP, 53, "udp", "dns")
        .service(VIP, 8443, "tcp", "far")
        .service(VIP6, 80, "tcp", "web")
        .service(VIP6, 53, "udp", "dns")
        .server("web", "s1", SERVER1, 8080)
        .server_set("web", "s1", "address6", SERVER1_6.to_string())
        .server("dns", "d1", SERVER1, 5353)
        .server_set("dns", "d1", "address6", SERVER1_6.to_string())
        .server("far", "f1", far, 8443)
}

const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x100, 0, 0, 0, 0, 0, 1);

/// The paths a packet can take, before mutation.
#[derive(Clone, Copy, Debug)]
enum Path {
    NewTcpFlow,
    ExistingTcpFlow,
    TcpReply,
    UdpToVip,
    UdpReply,
    UnresolvedServer,
    NotForUs,
    Icmp,
    Arp,
    Ipv6,
    NewTcpFlow6,
    TcpReply6,
    UdpToVip6,
    UdpReply6,
    NotForUs6,
    Icmp6,
    /// A "too big" error about a reply of a flow (or of none, for a port
    /// without one), quoting as much of it as the payload length says.
    TooBig,
    TooBig6,
}

const PATHS: [Path; 18] = [
    Path::NewTcpFlow,
    Path::ExistingTcpFlow,
    Path::TcpReply,
    Path::UdpToVip,
    Path::UdpReply,
    Path::UnresolvedServer,
    Path::NotForUs,
    Path::Icmp,
    Path::Arp,
    Path::Ipv6,
    Path::NewTcpFlow6,
    Path::TcpReply6,
    Path::UdpToVip6,
    Path::UdpReply6,
    Path::NotForUs6,
    Path::Icmp6,
    Path::TooBig,
    Path::TooBig6,
];

/// IPv6 extension headers a packet may carry: hop-by-hop, routing,
/// fragment, destination options, and one the walk does not know (AH).
const EXT_KINDS: [u8; 5] = [0, 43, 44, 60, 51];

/// One generated packet: a path, its variable fields, and mutations.
#[derive(Clone, Debug)]
struct Input {
    path: Path,
    /// A port with a flow (40000..40040), or any other for a new flow.
    client_port: u16,
    flags: u8,
    payload: usize,
    ttl: u8,
    /// IP options (IHL above 5), as whole words.
    option_words: u8,
    fragment: Option<(u16, bool)>,
    data_offset: Option<u8>,
    tot_len: Option<u16>,
    /// (offset, value) of single bytes overwritten in the first 64.
    pokes: Vec<(usize, u8)>,
    /// Cut to this share of the frame (in 1/256), if set.
    cut: Option<u8>,
    /// IPv6 extension headers (indexes into `EXT_KINDS`), and a routing
    /// header's segments left.
    ext_headers: Vec<usize>,
    segments_left: u8,
}

fn input() -> impl Strategy<Value = Input> {
    (
        (
            0..PATHS.len(),
            prop_oneof![40000u16..40040, 1024u16..65535],
            any::<u8>(),
            prop_oneof![Just(0usize), 0usize..200],
            0u8..70,
        ),
        (prop_oneof![4 => Just(0u8), 1 => 0u8..11], proptest::option::weighted(0.1, (0u16..3000, any::<bool>()))),
        (proptest::option::weighted(0.1, 0u8..16), proptest::option::weighted(0.1, any::<u16>())),
        (proptest::collection::vec((0usize..64, any::<u8>()), 0..3), proptest::option::weighted(0.15, any::<u8>())),
        (proptest::collection::vec(0usize..EXT_KINDS.len(), 0..6), prop_oneof![3 => Just(0u8), 1 => any::<u8>()]),
    )
        .prop_map(
            |(
                (path, client_port, flags, payload, ttl),
                (option_words, fragment),
                (data_offset, tot_len),
                (pokes, cut),
                (ext_headers, segments_left),
            )| {
                Input {
                    path: PATHS[path],
                    client_port,
                    flags,
                    payload,
                    ttl,
                    option_words,
                    fragment,
                    data_offset,
                    tot_len,
                    pokes,
                    cut,
                    ext_headers,
                    segments_left,
                }
            },
        )
}

impl Input {
    /// The frame, and the interface it comes in on.
    fn frame(&self) -> (Vec<u8>, &'static str) {
        let client = (CLIENT, self.client_port);
        let client6 = (CLIENT6, self.client_port);
        let (pkt, ingress) = match self.path {
            Path::NewTcpFlow6 => (Pkt::tcp(client6, (VIP6, 80)), "toclient"),
            Path::TcpReply6 => (Pkt::tcp((SERVER1_6, 8080), client6).macs(SERVER1_MAC, TOSERVER_MAC), "toserver"),
            Path::UdpToVip6 => (Pkt::udp(client6, (VIP6, 53)), "toclient"),
            Path::UdpReply6 => (Pkt::udp((SERVER1_6, 5353), client6).macs(SERVER1_MAC, TOSERVER_MAC), "toserver"),
            Path::NotForUs6 => (Pkt::tcp(client6, ("fd00::1".parse::<Ipv6Addr>().unwrap(), 22)), "toclient"),
            Path::Icmp6 => (Pkt::ip_protocol(58, CLIENT6, VIP6), "toclient"),
            Path::NewTcpFlow | Path::ExistingTcpFlow => (Pkt::tcp(client, (VIP, 80)), "toclient"),
            Path::TcpReply => (Pkt::tcp((SERVER1, 8080), client).macs(SERVER1_MAC, TOSERVER_MAC), "toserver"),
            Path::UdpToVip => (Pkt::udp(client, (VIP, 53)), "toclient"),
            Path::UdpReply => (Pkt::udp((SERVER1, 5353), client).macs(SERVER1_MAC, TOSERVER_MAC), "toserver"),
            Path::UnresolvedServer => (Pkt::tcp(client, (VIP, 8443)), "toclient"),
            Path::NotForUs => (Pkt::tcp(client, (Ipv4Addr::new(10, 0, 0, 1), 22)), "toclient"),
            Path::Icmp => (Pkt::ip_protocol(1, CLIENT, VIP), "toclient"),
            Path::Arp => return (arp_request(CLIENT_MAC, CLIENT, VIP), "toclient"),
            Path::Ipv6 => return (ipv6_frame(CLIENT_MAC, TOCLIENT_MAC), "toclient"),
            Path::TooBig => (self.too_big((VIP, 80), client), "toclient"),
            Path::TooBig6 => (self.too_big((VIP6, 80), client6), "toclient"),
        };
        let pkt = if ingress == "toclient" { pkt.macs(CLIENT_MAC, TOCLIENT_MAC) } else { pkt };
        let flags = match self.path {
            Path::NewTcpFlow | Path::NewTcpFlow6 => SYN,
            _ => self.flags & (SYN | ACK | PSH | FIN | RST),
        };
        let pkt = match self.path {
            // The quoted packet took the flags and the payload.
            Path::TooBig | Path::TooBig6 => pkt,
            _ => pkt.flags(flags).payload(&vec![0x5a; self.payload]),
        };
        let mut pkt = pkt.ttl(self.ttl);
        if self.option_words > 0 {
            pkt = pkt.options(&vec![1; 4 * self.option_words as usize]);
        }
        if let Some((offset, more)) = self.fragment {
            pkt = pkt.fragment(offset * 8, more);
        }
        if let Some(words) = self.data_offset {
            pkt = pkt.data_offset(words);
        }
        if let Some(len) = self.tot_len {
            pkt = pkt.tot_len(len);
        }
        if pkt.src.is_ipv6() {
            for &kind in &self.ext_headers {
                let kind = EXT_KINDS[kind];
                let body = if kind == 43 { [0, self.segments_left, 0, 0, 0, 0] } else { [1, 4, 0, 0, 0, 0] };
                pkt = pkt.ext_header(kind, &body);
            }
        }
        let mut frame = pkt.build();
        for &(offset, value) in &self.pokes {
            if offset < frame.len() {
                frame[offset] = value;
            }
        }
        if let Some(share) = self.cut {
            // BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet header.
            let len = 14 + (frame.len() - 14) * share as usize / 256;
            frame.truncate(len);
        }
        (frame, ingress)
    }
}

impl Input {
    /// A router's "too big" error to the VIP about the reply `vip` ->
    /// `client`, quoting its IP header and `payload` bytes more.
    fn too_big(&self, vip: (impl Into<IpAddr>, u16), client: (impl Into<IpAddr>, u16)) -> Pkt {
        let quoted = Pkt::tcp(vip, client).flags(self.flags).payload(&vec![0x5a; self.payload]);
        let (router, header): (IpAddr, usize) = match quoted.src {
            IpAddr::V4(_) => (Ipv4Addr::new(10, 0, 0, 254).into(), 20),
            IpAddr::V6(_) => ("fd00::fe".parse::<Ipv6Addr>().unwrap().into(), 40),
        };
        too_big(router, &quoted, 1280, header + self.payload)
    }
}

/// Whether the frame's IP header (IPv4) and TCP/UDP (or ICMP) checksums
/// verify.
fn checksums_verify(frame: &[u8]) -> bool {
    if frame.get(12..14) == Some(&[0x86, 0xdd]) {
        return checksums_verify6(frame);
    }
    let Some(ip) = frame.get(14..) else { return false };
    let ihl = (ip.first().copied().unwrap_or(0) & 0x0f) as usize * 4;
    let Some(header) = ip.get(..ihl) else { return false };
    if ihl < 20 || checksum(&[header]) != 0 {
        return false;
    }
    let tot_len = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    let Some(l4) = ip.get(ihl..tot_len) else { return false };
    let proto = ip[9];
    if proto == proto::UDP && l4.len() >= 8 && l4[6..8] == [0, 0] {
        return true;
    }
    if proto == ICMP {
        return checksum(&[l4]) == 0;
    }
    let pseudo = [&ip[12..20], &[0, proto], &(l4.len() as u16).to_be_bytes()[..]].concat();
    checksum(&[&pseudo, l4]) == 0
}

/// An IPv6 frame's upper-layer protocol and its offset from the IPv6
/// header, past the extension headers the datapath walks.
fn upper_layer6(ip: &[u8]) -> Option<(u8, usize)> {
    let (mut next, mut at) = (*ip.get(6)?, 40);
    while matches!(next, 0 | 43 | 60) {
        next = *ip.get(at)?;
        at += (*ip.get(at + 1)? as usize + 1) * 8;
    }
    Some((next, at))
}

/// Whether an IPv6 frame's TCP/UDP checksum verifies (over the 128-bit
/// pseudo-header; a zero UDP checksum does not).
fn checksums_verify6(frame: &[u8]) -> bool {
    let Some(ip) = frame.get(14..) else { return false };
    let Some((proto, at)) = upper_layer6(ip) else { return false };
    let end = 40 + u16::from_be_bytes([ip[4], ip[5]]) as usize;
    let Some(l4) = ip.get(at..end) else { return false };
    let pseudo = [&ip[8..40], &(l4.len() as u32).to_be_bytes()[..], &[0, 0, 0, proto]].concat();
    checksum(&[&pseudo, l4]) == 0
}

/// The bytes a rewrite may change: MACs, TTL, IP checksum and addresses,
/// the ports and the TCP/UDP checksum (for IPv6: the hop limit, addresses,
/// ports and checksum). Of an ICMP error: those of its outer header, its
/// checksum, and the quoted packet's source address and port and its
/// checksums.
fn may_change(offset: usize, frame: &[u8]) -> bool {
    if frame.get(12..14) == Some(&[0x86, 0xdd]) {
        let Some((proto, at)) = upper_layer6(&frame[14..]) else { return offset < 12 };
        let l4 = 14 + at;
        if proto == ICMPV6 {
            let quoted = l4 + 8;
            let quoted_l4 = quoted + 40;
            return offset < 12
                || offset == 21
                || (22..54).contains(&offset)
                || (l4 + 2..l4 + 4).contains(&offset)
                || (quoted + 8..quoted + 24).contains(&offset)
                || (quoted_l4..quoted_l4 + 2).contains(&offset)
                || quoted_l4_check(offset, quoted_l4, frame.get(quoted + 6));
        }
        let l4_checksum = if proto == proto::UDP { l4 + 6 } else { l4 + 16 };
        return offset < 12
            || offset == 21
            || (22..54).contains(&offset)
            || (l4..l4 + 4).contains(&offset)
            || (l4_checksum..l4_checksum + 2).contains(&offset);
    }
    let l4 = 14 + 20;
    if frame.get(23) == Some(&ICMP) {
        let quoted = l4 + 8;
        let quoted_l4 = quoted + 20;
        return offset < 12
            || offset == 22
            || (24..34).contains(&offset)
            || (l4 + 2..l4 + 4).contains(&offset)
            || (quoted + 10..quoted + 16).contains(&offset)
            || (quoted_l4..quoted_l4 + 2).contains(&offset)
            || quoted_l4_check(offset, quoted_l4, frame.get(quoted + 9));
    }
    let l4_checksum = if frame.get(23) == Some(&proto::UDP) { l4 + 6 } else { l4 + 16 };
    offset < 12
        || offset == 22
        || (24..34).contains(&offset)
        || (l4..l4 + 4).contains(&offset)
        || (l4_checksum..l4_checksum + 2).contains(&offset)
}

const ICMP: u8 = 1;
const ICMPV6: u8 = 58;

/// Whether `offset` is in the checksum of the TCP or UDP header quoted at
/// `quoted_l4`, its protocol being `proto`.
fn quoted_l4_check(offset: usize, quoted_l4: usize, proto: Option<&u8>) -> bool {
    let check = if proto == Some(&proto::UDP) { quoted_l4 + 6 } else { quoted_l4 + 16 };
    (check..check + 2).contains(&offset)
}

fn check(bed: &FixtureBed, input: &Input) -> Result<(), TestCaseError> {
    let (frame, ingress) = input.frame();
    let before = bed.outcomes();
    let (verdict, out) = bed.run_frame(&frame, ingress);
    let after = bed.outcomes();
    let counted: Vec<(&str, u64)> = after.iter().map(|(k, v)| (*k, v - before[k])).filter(|(_, n)| *n > 0).collect();
    prop_assert!(counted.len() == 1 && counted[0].1 == 1, "one outcome per packet, got {counted:?}");
    let outcome = counted[0].0;
    prop_assert!(verdict != XDP_ABORTED, "aborted ({outcome})");
    let rewritten = outcome.starts_with("forward") || outcome == "pass_neighbour_unresolved";
    match verdict {
        XDP_PASS | XDP_DROP if !rewritten => {
            prop_assert!(out == frame, "{outcome}: a pass or drop changed the bytes");
            let kind = if verdict == XDP_PASS { "pass" } else { "drop" };
            prop_assert!(outcome.starts_with(kind), "verdict {kind} with outcome {outcome}");
        }
        _ => {
            prop_assert!(rewritten, "verdict {verdict} with outcome {outcome}");
            prop_assert_eq!(out.len(), frame.len(), "{}: the length changed", outcome);
            prop_assert_eq!(checksums_verify(&out), checksums_verify(&frame), "{}: checksum validity changed", outcome);
            for (offset, (a, b)) in frame.iter().zip(&out).enumerate() {
                prop_assert!(a == b || may_change(offset, &frame), "{outcome}: byte {offset} changed");
            }
        }
    }
    Ok(())
}

/// Every flow in the tables (both families) is of a service, on one of its
/// servers, in a state of its protocol.
fn flows_are_well_formed(bed: &FixtureBed) {
    let services: HashSet<ServiceId> = bed.services().iter().map(|s| s.key()).collect();
    let mut bad = Vec::new();
    let (seen, _) = remove_flows_where(&bed.dp().maps, bed.servers(), |ends, flow| {
        let service = services.contains(&ends.service());
        let state = match ends.proto {
            proto::TCP => matches!(flow.state, flow_state::TCP_OPEN | flow_state::TCP_CLOSING),
            proto::UDP => flow.state == flow_state::UDP,
            _ => false,
        };
        if !service || !state || bed.servers().get(flow.server()).is_none() {
            bad.push((*ends, *flow));
        }
        false
    })
    .expect("walk the flow tables");
    assert!(seen > 0, "the fuzzing made flows");
    assert!(bad.is_empty(), "{} malformed flows, e.g. {:?}", bad.len(), &bad[..bad.len().min(3)]);
}

#[test]
fn the_datapath_keeps_its_invariants_on_any_packet() {
    let cases: u32 = std::env::var("LB_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let seed: u8 = std::env::var("LB_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    let ns = fixture_netns();
    ns.run(|| {
        let bed = FixtureBed::load(&config());
        // Flows for the "existing flow" path: SYNs from the ports it uses.
        for port in 40000..40040 {
            let syn = Pkt::tcp((CLIENT, port), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build();
            bed.run_frame(&syn, "toclient");
            let syn6 = Pkt::tcp((CLIENT6, port), (VIP6, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build();
            bed.run_frame(&syn6, "toclient");
        }
        let config = Config { cases, failure_persistence: None, ..Config::default() };
        let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &[seed; 32]));
        let started = std::time::Instant::now();
        runner.run(&input(), |input| check(&bed, &input)).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("{cases} packets in {:?}; outcomes: {:?}", started.elapsed(), bed.outcomes());
        flows_are_well_formed(&bed);
        // IPv6 took its paths too: flows in its table, headers walked and refused.
        assert!(bed.dp().maps.flows6.len().expect("walk") > 0, "the fuzzing made IPv6 flows");
        assert!(bed.outcomes()["drop_ipv6_extension_headers"] > 0, "no extension-header chain was refused");
        assert!(bed.outcomes()["forward_icmp_too_big"] > 0, "no ICMP error reached a server");
    });
}
