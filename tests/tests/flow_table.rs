//! The flow table under concurrency: the datapath creating flows on both
//! CPUs while the agent walks the table and removes flows (as its sweeps
//! do). And the in-kernel purge of servers' flows. Every flow read afterwards must be whole: a torn slot would
//! pair one flow's key with another's sequence numbers or server.
//!
//! A smoke test: with a syscall per packet, true overlaps of two writers on
//! one bucket are rare (a datapath that ignored a lost compare-and-swap still
//! passed it in three runs). The ownership argument is in
//! `lb_common::flow_table::tag`.

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::atomic::{AtomicBool, Ordering},
};

use lb_common::{FlowKey, flow_state, flow_table::SERVER_HINTS, proto, purge};
use lb_userspace::datapath::{family::V4, purge::purge_servers};
use testbed::{
    bench::{fill_flows, pin_to_cpu},
    config_file::ConfigFile,
    fixture::{
        CLIENT_MAC, FixtureBed, SERVER1, SERVER2, TOCLIENT_MAC, XDP_REDIRECT, fixture_netns, flow_key, ifindex,
        test_run,
    },
    packet::{Pkt, SYN},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 100, 0, 1);
const CLIENTS: u32 = 1500;

fn client(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(0x0b00_0000 | i)
}

/// Each client's SYN carries its own sequence number: a flow's tracked
/// sequence tells which client's packet wrote it.
fn seq_of(i: u32) -> u32 {
    i.wrapping_mul(2_654_435_761)
}

#[test]
fn flows_stay_whole_while_the_datapath_and_the_agent_write_the_table_at_once() {
    let net = fixture_netns();
    net.ns.ip(&["route", "add", "11.0.0.0/8", "via", "10.0.0.2"]);
    net.run(|| {
        let config = ConfigFile::new()
            .set("instance", "race")
            .set("interfaces", vec!["toclient"])
            .set("flows.max", 4096)
            .service(VIP, 80, "tcp", "web")
            .server("web", "s1", SERVER1, 8080);
        let bed = FixtureBed::load(&config);
        let s1 = bed.server_id("web", "s1");
        let program = bed.dp().program();
        let flows = &bed.dp().maps.flows;
        let toclient = ifindex("toclient");
        let syns: Vec<Vec<u8>> = (0..CLIENTS)
            .map(|i| {
                Pkt::tcp((client(i), 40000), (VIP, 80))
                    .macs(CLIENT_MAC, TOCLIENT_MAC)
                    .flags(SYN)
                    .seq(seq_of(i), 0)
                    .build()
            })
            .collect();
        let stop = AtomicBool::new(false);
        let removed = std::thread::scope(|s| {
            // The datapath on both CPUs, in opposite orders: the same keys
            // and the same buckets are written at once.
            let writers: Vec<_> = (0..2)
                .map(|cpu| {
                    let (syns, stop) = (&syns, &stop);
                    s.spawn(move || {
                        pin_to_cpu(cpu);
                        while !stop.load(Ordering::Relaxed) {
                            let order: Box<dyn Iterator<Item = &Vec<u8>>> =
                                if cpu == 0 { Box::new(syns.iter()) } else { Box::new(syns.iter().rev()) };
                            for frame in order {
                                test_run(program, frame, toclient);
                            }
                        }
                    })
                })
                .collect();
            // The agent: removes a third of the flows on each walk, for 60
            // walks at least, and until it has removed plenty (the writers may
            // start late on a busy machine, such as when tests run at once).
            let mut removed = 0;
            let give_up = std::time::Instant::now() + std::time::Duration::from_secs(20);
            let mut pass = 0u32;
            while pass < 60 || (removed < 3 * CLIENTS as usize && std::time::Instant::now() < give_up) {
                let (_, n) =
                    flows.remove_where(|key, _| (u32::from_be(key.src_addr) & 0xffff) % 3 == pass % 3).expect("walk");
                removed += n;
                pass += 1;
            }
            stop.store(true, Ordering::Relaxed);
            for w in writers {
                w.join().expect("datapath thread");
            }
            removed
        });
        assert!(removed > 1000, "the agent removed only {removed} flows: no contention tested");

        // Every flow left is whole.
        let mut seen: HashMap<u32, u32> = HashMap::new();
        flows
            .remove_where(|key, flow| {
                let i = u32::from_be(key.src_addr) & 0xffff;
                assert_eq!(*key, flow_key((client(i), 40000), (VIP, 80), proto::TCP), "a key out of nowhere");
                assert_eq!(flow.client_next_seq, seq_of(i).wrapping_add(1), "client {i}: another flow's sequence");
                assert_eq!((flow.server(), flow.state), (s1, flow_state::TCP_OPEN), "client {i}: torn flow");
                *seen.entry(i).or_default() += 1;
                false
            })
            .expect("walk");
        // And none is lost: each client's next SYN finds its flow or makes one
        // (8192 slots: none is pushed out).
        for frame in &syns {
            assert_eq!(test_run(program, frame, toclient).0, XDP_REDIRECT);
        }
        for i in 0..CLIENTS {
            let key = flow_key((client(i), 40000), (VIP, 80), proto::TCP);
            assert!(flows.get(&key).expect("lookup").is_some(), "client {i}'s flow is lost");
        }
        let duplicates: u32 = seen.values().map(|n| n - 1).sum();
        assert!(duplicates < CLIENTS / 100, "{duplicates} duplicate flows");
    });
}

/// The purge (in the kernel) frees exactly the flows of the servers it is
/// given, and hands each back once: flows the datapath created, and more
/// than one run hands back (so over several runs), but not the flows of a
/// server whose id shares their tags' server hint; for servers of one hint
/// (hint 0 included) and of several.
#[test]
fn a_purge_frees_exactly_the_flows_of_its_servers() {
    let net = fixture_netns();
    net.ns.ip(&["route", "add", "11.0.0.0/8", "via", "10.0.0.2"]);
    net.run(|| {
        let config = ConfigFile::new()
            .set("instance", "purge")
            .set("interfaces", vec!["toclient"])
            .set("flows.max", 131_072)
            .service(VIP, 80, "tcp", "web")
            .server("web", "s1", SERVER1, 8080)
            .server("web", "s2", SERVER2, 8080);
        let mut bed = FixtureBed::load(&config);
        let (s1, s2) = (bed.server_id("web", "s1"), bed.server_id("web", "s2"));
        let toclient = ifindex("toclient");
        // Flows the datapath creates, on s1 and s2 as Maglev picks.
        for i in 0..200 {
            let syn = Pkt::tcp((client(i), 40000), (VIP, 80)).macs(CLIENT_MAC, TOCLIENT_MAC).flags(SYN).build();
            assert_eq!(test_run(bed.dp().program(), &syn, toclient).0, XDP_REDIRECT);
        }
        // Flows filled in: 80000 more, on s1, s2, ids sharing their hints,
        // and one of hint 0 (the hint free and busy tags carry too).
        let twins = [s1 + SERVER_HINTS, s2 + SERVER_HINTS];
        let hint_zero = 2 * SERVER_HINTS;
        let server_of = |i: u32| [s1, s2, twins[0], twins[1], hint_zero][i as usize % 5];
        fill_flows(&bed.dp().maps.flows, 1000..81_000, (VIP, 80), server_of);
        let table = |bed: &FixtureBed| {
            let mut flows: HashMap<FlowKey, u32> = HashMap::new();
            bed.dp().maps.flows.remove_where(|key, flow| flows.insert(*key, flow.server()).is_some()).expect("walk");
            flows
        };
        let mut expected = table(&bed);
        // One hint (found four slots at once), then several.
        for servers in [vec![s2], vec![twins[0]], vec![hint_zero], vec![s1, twins[1]]] {
            let doomed: HashMap<FlowKey, u32> =
                expected.iter().filter(|(_, id)| servers.contains(id)).map(|(k, id)| (*k, *id)).collect();
            let (mut freed, mut runs) = (HashMap::new(), 0);
            let count = purge_servers::<V4>(bed.dp_mut(), &servers.iter().copied().collect(), |_, batch| {
                runs += 1;
                for p in batch {
                    assert!(freed.insert(p.key, p.flow.server()).is_none(), "{:?} handed back twice", p.key);
                }
                Ok(())
            })
            .expect("purge");
            assert_eq!(count, freed.len());
            assert_same(&freed, &doomed, &format!("servers {servers:?}: flows freed"));
            assert!(doomed.len() <= purge::BATCH as usize || runs > 1, "{} flows in {runs} run", doomed.len());
            expected.retain(|k, _| !doomed.contains_key(k));
            assert_same(&table(&bed), &expected, &format!("servers {servers:?}: flows left"));
        }
        assert!(expected.is_empty());
    });
}

/// Equal maps of flows, or a failure that says how they differ (not the
/// tens of thousands of flows themselves).
fn assert_same(got: &HashMap<FlowKey, u32>, expected: &HashMap<FlowKey, u32>, what: &str) {
    let missing = expected.iter().filter(|(k, id)| got.get(k) != Some(id)).count();
    let extra = got.iter().filter(|(k, id)| expected.get(k) != Some(id)).count();
    let example = got.iter().find(|(k, id)| expected.get(k) != Some(id));
    assert!(
        missing == 0 && extra == 0,
        "{what}: {missing} expected missing, {extra} unexpected (such as {example:?}), of {}",
        expected.len()
    );
}
