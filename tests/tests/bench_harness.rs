//! The bench's own harness, where a fault of it once crashed a full run.

use std::{
    io::Write as _,
    net::{SocketAddr, TcpStream},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::Duration,
};

use testbed::{
    bench::end_to_end::multipath_route,
    netns::NetNs,
    servers::{Kind, Server},
    topology::{Topology, VIP, server_addr},
};

const PORT: u16 = 9000;

struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Retransmission timeouts of the client's TCP that drew a new hash
/// (TcpExt TcpTimeoutRehash), read in its namespace.
fn timeout_rehashes(ns: &NetNs) -> u64 {
    let text = ns.run(|| std::fs::read_to_string("/proc/thread-self/net/netstat")).expect("netstat");
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().expect("names"), lines.next().expect("values"));
    let at = names.split_whitespace().position(|n| n == "TcpTimeoutRehash").expect("TcpTimeoutRehash");
    values.split_whitespace().nth(at).expect("value").parse().expect("a number")
}

/// The multipath ceiling of the bench keeps a long flow on its server when
/// the sender's retransmission timeouts give its packets a new hash (with
/// `fib_multipath_hash_policy=1` the flow moved and was reset).
#[test]
fn the_multipath_route_keeps_a_long_flow_through_its_senders_timeouts() {
    let t = Topology::new(3);
    for s in &t.servers {
        s.ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    }
    multipath_route(&t.lb, VIP, &[server_addr(1), server_addr(2), server_addr(3)]);
    let sinks: Vec<Server> = t.servers.iter().map(|s| Server::start(&s.ns, &s.name, Kind::Sink, PORT)).collect();
    let stream = t
        .client
        .run(|| TcpStream::connect_timeout(&SocketAddr::from((VIP, PORT)), Duration::from_secs(3)))
        .expect("connect to the VIP");
    let rehashes_before = timeout_rehashes(&t.client);
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let (ended, rehashes) = std::thread::scope(|s| {
        // Set on any way out, a failed assertion included: the scope waits
        // for the sender.
        let _stop = StopOnDrop(&stop);
        let sender = s.spawn(|| {
            let mut stream = &stream;
            let chunk = vec![0x5au8; 64 * 1024];
            while !stop.load(Ordering::Relaxed) {
                stream.write_all(&chunk)?;
                sent.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
            Ok::<(), std::io::Error>(())
        });
        // Blackouts of the route to the VIP (the same route put back after
        // each): each forces
        // retransmission timeouts, and each timeout a new hash. Until the
        // kernel counts enough of them (each would move the flow with a
        // chance of 2/3 where the route follows the packet's hash).
        let servers = [server_addr(1), server_addr(2), server_addr(3)];
        let mut rounds = 0;
        while timeout_rehashes(&t.client) - rehashes_before < 6 && !sender.is_finished() {
            rounds += 1;
            assert!(rounds <= 20, "20 blackouts and only {} timeouts", timeout_rehashes(&t.client) - rehashes_before);
            t.lb.ip(&["route", "replace", "blackhole", &format!("{VIP}/32")]);
            std::thread::sleep(Duration::from_millis(700));
            t.lb.ip(&["route", "del", &format!("{VIP}/32")]);
            multipath_route(&t.lb, VIP, &servers);
            std::thread::sleep(Duration::from_millis(300));
        }
        // The flow goes on after the last blackout (its retransmission
        // lands, after a backoff of seconds): 4 MiB more.
        let after = sent.load(Ordering::Relaxed);
        let waiting = std::time::Instant::now();
        while sent.load(Ordering::Relaxed) < after + (4 << 20) && !sender.is_finished() {
            assert!(
                waiting.elapsed() < Duration::from_secs(60),
                "the flow carried nothing for 60 s after its blackouts"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        (sender.join().unwrap(), timeout_rehashes(&t.client) - rehashes_before)
    });
    ended.unwrap_or_else(|e| panic!("the long flow broke after {rehashes} new hashes: {e}"));
    eprintln!("{} bytes through {rehashes} retransmission timeouts with a new hash", sent.into_inner());
    assert!(rehashes >= 6, "only {rehashes} timeouts drew a new hash");
    let served: Vec<u64> = sinks.iter().map(Server::served).collect();
    assert_eq!(served.iter().sum::<u64>(), 1, "one connection, on one server: {served:?}");
}

/// A long run (the soak here; the bench alike) stopped by SIGTERM or
/// Ctrl-C leaves nothing behind: its guards' Drop does not run then, so it
/// kills its agents and removes its namespaces, pins and files itself.
#[test]
fn a_long_run_stopped_by_a_signal_leaves_no_agent_namespace_or_pin_behind() {
    let lb = std::env::var("LB_BIN").expect("LB_BIN: the lb binary (cargo xtask test sets it)");
    let mut soak = std::process::Command::new(env!("CARGO_BIN_EXE_lb-soak"))
        .args(["--lb", &lb, "--duration", "10m"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start lb-soak");
    let pid = soak.id();
    let prefix = format!("lbt{pid}x");
    let made = |dir: &std::path::Path| {
        let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
        entries.filter(|e| e.file_name().to_string_lossy().starts_with(&prefix)).count()
    };
    let agents = || -> Vec<u32> {
        let children = testbed::netns::children(pid).into_iter();
        children
            .filter(|c| std::fs::read_to_string(format!("/proc/{c}/comm")).is_ok_and(|n| n.trim() == "lb"))
            .collect()
    };
    let (netns, pins, tmp) = ("/run/netns".as_ref(), "/sys/fs/bpf".as_ref(), std::env::temp_dir());
    testbed::bed::wait_for("the soak's agent running, its maps pinned", Duration::from_secs(120), || {
        made(pins) > 0 && made(netns) > 0 && !agents().is_empty()
    });
    let running = agents();
    // SAFETY: kill has no memory effects; `pid` is our child, not reaped.
    assert_eq!(unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) }, 0);
    let status = soak.wait().expect("lb-soak's exit");
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "lb-soak ended by its handler: {status:?}");
    assert_eq!((made(netns), made(pins), made(&tmp)), (0, 0, 0), "namespaces, pins, files left by {prefix}");
    testbed::bed::wait_for("its agents gone", Duration::from_secs(10), || {
        running.iter().all(|a| !std::path::Path::new(&format!("/proc/{a}")).exists())
    });
}

#[test]
fn a_section_misspelt_is_refused_with_the_sections_named_not_a_run_of_nothing() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_lb-bench"))
        .args(["--lb", "/nonexistent/lb", "--only", "datapath", "--only", "datapth"])
        .output()
        .expect("lb-bench runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no section [\"datapth\"]") && stderr.contains("datapath, pps, e2e"), "{stderr}");
    assert!(out.stdout.is_empty(), "nothing measured: {}", String::from_utf8_lossy(&out.stdout));
}
