//! The chaos soak (`cargo xtask soak`, and a 60 s run in the tests): mixed
//! TCP and UDP traffic through the real agent while servers are disabled in
//! random modes, enabled and drained, the agent is killed and restarted,
//! and server processes stop and start. In cluster mode ([`Mode::Cluster`])
//! three nodes share a three-member etcd: each change goes through a random
//! node, a random node's agent is killed and restarted, and store members
//! are killed and started again (one at a time: quorum holds, so a change
//! refused while the store elects a leader is asked again). Checked
//! throughout:
//! - nothing reaches a DISABLED server on any node: every node shows it
//!   DISABLED within 5 s of its command's answer, and from then on its
//!   processes there answer nothing sent (each request carries when it was
//!   sent: `servers::stamp`, so a busy machine that runs a server's thread
//!   late cannot fail the check, and cannot hide a request sent after);
//! - every drain with a deadline ends by it (plus 1 s), on every node;
//! - no connection is reset unless its server was cut or went down;
//! - the agent's memory does not grow;
//! - the flow table empties once traffic stops and the idle timeouts pass.

use std::{
    io::ErrorKind,
    net::UdpSocket,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use lb_userspace::model::ServerState;

use crate::{
    bed::{Bed, ECHO, UDP, bed_with},
    config_file::ConfigFile,
    fleet::Fleet,
    servers::{EchoClient, Kind, Server, Session, stamp, udp_exchange_on},
    store::{MEMBERS, Store},
    topology::VIP,
};

/// One node, or three on one store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Single,
    Cluster,
}

const SERVERS: usize = 4;
/// How long a change may take to reach every node: a store member killed
/// just before may take its leader with it (an election, then the watches
/// that broke resync).
const APPLIED_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct Report {
    pub connections: u64,
    pub exchanges: u64,
    pub datagrams: u64,
    pub changes: u64,
    pub agent_restarts: u64,
    pub server_restarts: u64,
    pub member_kills: u64,
    /// Changes refused while the store was electing a leader, then asked again.
    pub changes_retried: u64,
    pub resets_explained: u64,
    /// The longest a DISABLED took, after its command answered, to show on every node.
    pub slowest_apply: Duration,
    pub violations: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "soak: {} new connections, {} exchanges on long connections, {} datagrams; {} changes ({} asked \
             again), {} agent restarts, {} server restarts, {} store members killed; {} connections reset by a \
             cut or a stopped server; every DISABLED shown on every node within {:?} of its answer; violations: {}",
            self.connections,
            self.exchanges,
            self.datagrams,
            self.changes,
            self.changes_retried,
            self.agent_restarts,
            self.server_restarts,
            self.member_kills,
            self.resets_explained,
            self.slowest_apply,
            self.violations.len()
        )?;
        for v in &self.violations {
            write!(f, "\n  violation: {v}")?;
        }
        Ok(())
    }
}

/// What the chaos did to each server, for judging what the traffic saw.
#[derive(Default)]
struct History {
    /// (server index, when) its sessions were cut: immediate disables and deadlines.
    cuts: Vec<(usize, Instant)>,
    /// (server index, from, to) its process was down.
    down: Vec<(usize, Instant, Option<Instant>)>,
    /// Every change, for the report of a violation: (when, what).
    log: Vec<(Instant, String)>,
}

impl History {
    /// The changes from `before` ahead of `at` to `after` past it, timed from `at`.
    fn around(&self, at: Instant, before: Duration, after: Duration) -> Vec<String> {
        let near = |t: Instant| t + before >= at && t <= at + after;
        let from_at =
            |t: Instant| t.saturating_duration_since(at).as_secs_f64() - at.saturating_duration_since(t).as_secs_f64();
        self.log.iter().filter(|(t, _)| near(*t)).map(|(t, what)| format!("{:+.2}s {what}", from_at(*t))).collect()
    }

    /// Whether an end of a connection to `server` at `at` has a cause.
    /// (A cut is noted when its command returns, after the resets it sent.)
    fn explains(&self, server: usize, at: Instant) -> bool {
        let slack = Duration::from_secs(2);
        let near = |t: Instant| t <= at + slack && at <= t + slack;
        self.cuts.iter().any(|(s, t)| *s == server && near(*t))
            || self
                .down
                .iter()
                .any(|(s, from, to)| *s == server && *from <= at + slack && to.is_none_or(|to| at <= to + slack))
    }
}

/// The chaos's view of one server.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Admin {
    Enabled,
    /// Draining, with the deadline if any.
    Draining(Option<Instant>),
    /// DISABLED on every node from this instant; by node, the [`stamp`]
    /// at which it showed so: its processes there must answer nothing sent
    /// after it.
    Disabled(Instant, [u64; MAX_NODES]),
}

const MAX_NODES: usize = 3;

/// Fields drop in order: the nodes, then the store.
struct Chaos {
    /// One node, or the fleet's three (each with its own client and
    /// servers s1..s4: the same server on every node is one server).
    nodes: Vec<Bed>,
    store: Option<Store>,
    admin: Vec<Admin>,
    up: Vec<bool>,
    history: Arc<Mutex<History>>,
    report: Report,
    rng: u64,
    last_agent_restart: Instant,
}

fn index(name: &str) -> usize {
    name.trim_start_matches('s').parse::<usize>().expect("server name s<N>") - 1
}

impl Chaos {
    fn random(&mut self, n: u64) -> u64 {
        // xorshift64: seeded, so a failing run can be repeated.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng % n
    }

    /// What `i`'s processes on each node answered that was sent after
    /// `shown` (that node's stamp): how long after, TCP and UDP.
    fn answered_after(&self, i: usize, shown: &[u64; MAX_NODES]) -> Vec<String> {
        let late = |newest: u64, shown: u64| (newest > shown).then(|| Duration::from_micros(newest - shown));
        let mut answered = Vec::new();
        for (n, b) in self.nodes.iter().enumerate() {
            for (what, server) in [("a TCP line", &b.echo[i]), ("a UDP datagram", &b.udp[i])] {
                if let Some(after) = late(server.newest_answered(), shown[n]) {
                    answered.push(format!("n{}: {what} sent {after:?} after", n + 1));
                }
            }
        }
        answered
    }

    fn name(i: usize) -> String {
        format!("s{}", i + 1)
    }

    /// A change through a random node. In a cluster, one refused because
    /// the store did not answer (a member just killed, a leader being
    /// elected) is asked again, for up to 10 s: quorum holds throughout.
    fn lb(&mut self, args: &[&str]) -> bool {
        let node = self.random(self.nodes.len() as u64) as usize;
        self.history.lock().unwrap().log.push((Instant::now(), format!("n{}: {}", node + 1, args.join(" "))));
        self.report.changes += 1;
        let asked = Instant::now();
        loop {
            let (ok, _, stderr) = self.nodes[node].agent.lb(args);
            let unreachable = stderr.contains("the cluster store is unreachable");
            if ok || !unreachable || self.store.is_none() || asked.elapsed() > Duration::from_secs(10) {
                if !ok {
                    self.report.violations.push(format!("lb {args:?} through n{} failed: {}", node + 1, stderr.trim()));
                }
                return ok;
            }
            self.report.changes_retried += 1;
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Servers that take new flows and answer, other than `except`.
    fn serving(&self, except: usize) -> usize {
        (0..SERVERS).filter(|&i| i != except && self.admin[i] == Admin::Enabled && self.up[i]).count()
    }

    /// One random change, then the drains' deadlines checked.
    fn step(&mut self) {
        let i = self.random(SERVERS as u64) as usize;
        let may_disable = self.admin[i] == Admin::Enabled && self.serving(i) >= 2;
        match self.random(10) {
            0..=1 if may_disable => self.cut(i),
            2..=3 if may_disable => {
                let secs = 2 + self.random(3);
                self.drain(i, Some(secs));
            }
            4 if may_disable => self.drain(i, None),
            5..=7 if self.admin[i] != Admin::Enabled => self.enable(i),
            8 if self.last_agent_restart.elapsed() > Duration::from_secs(8) => self.restart_agent(),
            9 if self.store.is_some() && self.random(2) == 0 => self.bounce_member(),
            9 => self.bounce_server(i),
            _ => {}
        }
        self.check_deadlines();
    }

    /// Disables `i` at once in both pools (its UDP flows go too).
    fn cut(&mut self, i: usize) {
        let name = Self::name(i);
        if !self.lb(&["server", "disable", "p7", &name]) {
            return;
        }
        self.lb(&["server", "disable", "p53", &name]);
        self.history.lock().unwrap().cuts.push((i, Instant::now()));
        self.disabled_everywhere(i);
    }

    /// Waits until every node shows `i` DISABLED in both pools (each node
    /// applies the store's change from its own watch: the command answers
    /// once the node it went through has), and notes when each did. A node
    /// that takes longer than [`APPLIED_WITHIN`] is a violation.
    fn disabled_everywhere(&mut self, i: usize) {
        let (name, asked) = (Self::name(i), Instant::now());
        let mut shown = [0; MAX_NODES];
        for (n, node) in self.nodes.iter().enumerate() {
            let disabled = || ["p7", "p53"].iter().all(|pool| node.server(pool, &name).state == ServerState::Disabled);
            while !disabled() && asked.elapsed() < APPLIED_WITHIN {
                std::thread::sleep(Duration::from_millis(10));
            }
            // Taken after the read that showed it: later than the change.
            shown[n] = stamp();
            if !disabled() {
                self.report.violations.push(format!(
                    "n{} did not apply s{} DISABLED within {APPLIED_WITHIN:?}",
                    n + 1,
                    i + 1
                ));
            }
        }
        let applied = Instant::now();
        self.report.slowest_apply = self.report.slowest_apply.max(applied - asked);
        // Its sessions are reset as each node applies it.
        self.history.lock().unwrap().cuts.push((i, applied));
        self.admin[i] = Admin::Disabled(applied, shown);
    }

    /// Drains `i`'s TCP pool, until a deadline `secs` away or until drained.
    fn drain(&mut self, i: usize, secs: Option<u64>) {
        let name = Self::name(i);
        let timeout = secs.map(|s| format!("{s}s"));
        let mut args = vec!["server", "disable", "p7", &name, "--graceful"];
        match &timeout {
            Some(t) => args.extend(["--timeout", t.as_str()]),
            None => args.push("--until-drained"),
        }
        if self.lb(&args) {
            self.admin[i] = Admin::Draining(secs.map(|s| Instant::now() + Duration::from_secs(s)));
        }
    }

    /// Enables `i` in both pools, after checking that while DISABLED its
    /// processes answered nothing.
    fn enable(&mut self, i: usize) {
        // A deadline that came (its flows were cut) before the check below saw it.
        if let Admin::Draining(Some(deadline)) = self.admin[i]
            && Instant::now() >= deadline
        {
            self.history.lock().unwrap().cuts.push((i, deadline));
        }
        if let Admin::Disabled(since, shown) = self.admin[i] {
            let answered = self.answered_after(i, &shown);
            if !answered.is_empty() {
                let log = self.history.lock().unwrap().around(since, Duration::from_secs(1), since.elapsed());
                self.report.violations.push(format!(
                    "s{} DISABLED for {:?} answered what was sent after its node showed it DISABLED ({}); \
                     since 1 s before: {log:?}",
                    i + 1,
                    since.elapsed(),
                    answered.join("; ")
                ));
            }
        }
        let name = Self::name(i);
        self.lb(&["server", "enable", "p7", &name]);
        self.lb(&["server", "enable", "p53", &name]);
        self.admin[i] = Admin::Enabled;
    }

    /// A drain whose deadline passed more than 1 s ago must be over.
    fn check_deadlines(&mut self) {
        for i in 0..SERVERS {
            let Admin::Draining(Some(deadline)) = self.admin[i] else { continue };
            if Instant::now() < deadline + Duration::from_secs(1) {
                continue;
            }
            for (n, node) in self.nodes.iter().enumerate() {
                let server = node.server("p7", &Self::name(i));
                if server.state != ServerState::Disabled {
                    let state = server.label();
                    let on = if self.store.is_some() { format!(" on n{}", n + 1) } else { String::new() };
                    self.report.violations.push(format!("s{} is {state}{on} 1 s after its drain's deadline", i + 1));
                }
            }
            self.history.lock().unwrap().cuts.push((i, deadline));
            // p53 was not drained: disable it too, so both agree.
            self.lb(&["server", "disable", "p53", &Self::name(i)]);
            self.disabled_everywhere(i);
        }
    }

    fn restart_agent(&mut self) {
        let node = self.random(self.nodes.len() as u64) as usize;
        if self.random(2) == 0 {
            self.nodes[node].agent.kill();
        } else {
            let _ = self.nodes[node].agent.stop();
        }
        std::thread::sleep(Duration::from_millis(50));
        self.history.lock().unwrap().log.push((Instant::now(), format!("n{}: agent restart", node + 1)));
        self.nodes[node].agent.restart();
        self.report.agent_restarts += 1;
        self.last_agent_restart = Instant::now();
    }

    /// Kills a store member (SIGKILL), or starts the one down again: one
    /// at a time, so the store keeps its quorum.
    fn bounce_member(&mut self) {
        let Some(store) = &mut self.store else { return };
        let what = match store.down_member() {
            Some(member) => {
                store.start_member(member);
                format!("store member {member} started")
            }
            None => {
                let member = (self.rng % MEMBERS as u64) as usize;
                store.kill_member(member);
                self.report.member_kills += 1;
                format!("store member {member} killed")
            }
        };
        self.history.lock().unwrap().log.push((Instant::now(), what));
    }

    /// Stops `i`'s server processes (on every node), or starts them again.
    fn bounce_server(&mut self, i: usize) {
        let name = Self::name(i);
        if self.up[i] {
            if self.serving(i) < 2 {
                return;
            }
            self.history.lock().unwrap().down.push((i, Instant::now(), None));
            self.history.lock().unwrap().log.push((Instant::now(), format!("stop s{}", i + 1)));
            for b in &mut self.nodes {
                b.echo[i].stop();
                b.udp[i].stop();
            }
            self.up[i] = false;
        } else {
            for b in &mut self.nodes {
                let ns = &b.topology.servers[i].ns;
                b.echo[i] = Server::start(ns, &name, Kind::LineEcho, 7007);
                b.udp[i] = Server::start(ns, &name, Kind::UdpEcho, 5353);
            }
            if let Some(down) = self.history.lock().unwrap().down.iter_mut().rev().find(|d| d.0 == i) {
                down.2 = Some(Instant::now());
            }
            self.up[i] = true;
            self.report.server_restarts += 1;
        }
    }
}

/// Short timeouts, so that the table empties soon after the traffic stops.
fn short_timeouts(c: ConfigFile) -> ConfigFile {
    c.set("flows.tcp_idle_timeout", "6s").set("flows.tcp_closing_timeout", "2s").set("flows.udp_idle_timeout", "3s")
}

/// Runs the soak for `duration` from `seed`; the report lists violations.
pub fn soak(duration: Duration, seed: u64, mode: Mode) -> Report {
    let (nodes, store) = match mode {
        Mode::Single => (vec![bed_with(SERVERS, short_timeouts)], None),
        Mode::Cluster => {
            let Fleet { nodes, store } = Fleet::start_with(SERVERS, &short_timeouts);
            (nodes, Some(store))
        }
    };
    let history = Arc::new(Mutex::new(History::default()));
    let mut chaos = Chaos {
        nodes,
        store,
        admin: vec![Admin::Enabled; SERVERS],
        up: vec![true; SERVERS],
        history: Arc::clone(&history),
        report: Report::default(),
        rng: seed | 1,
        last_agent_restart: Instant::now(),
    };
    let stop = AtomicBool::new(false);
    let counts = Counts::default();
    let ended = Mutex::new(Vec::new());
    let mut memory_before = None;
    // Each node's client namespace, held apart from the beds the chaos changes.
    let clients: Vec<std::fs::File> = chaos
        .nodes
        .iter()
        .map(|b| std::fs::File::open(format!("/run/netns/{}", b.topology.client.name)).expect("client netns"))
        .collect();
    std::thread::scope(|s| {
        for client in &clients {
            let (stop, counts, ended) = (&stop, &counts, &ended);
            s.spawn(move || in_netns(client, || long_connections(stop, counts, ended)));
            s.spawn(move || in_netns(client, || new_connections(stop, counts, ended)));
            s.spawn(move || in_netns(client, || datagrams(stop, counts)));
        }
        let started = Instant::now();
        while started.elapsed() < duration {
            // A cluster's steps take longer (three agents, the store): shorter pauses.
            let pause = if chaos.store.is_some() { 250 + chaos.random(500) } else { 400 + chaos.random(800) };
            std::thread::sleep(Duration::from_millis(pause));
            if memory_before.is_none() && started.elapsed() > Duration::from_secs(5) {
                memory_before = Some(chaos.memory());
            }
            chaos.step();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let mut report = judge(chaos, ended.into_inner().unwrap(), memory_before);
    report.connections = counts.connections.load(Ordering::Relaxed);
    report.exchanges = counts.exchanges.load(Ordering::Relaxed);
    report.datagrams = counts.datagrams.load(Ordering::Relaxed);
    report
}

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    exchanges: AtomicU64,
    datagrams: AtomicU64,
}

/// How a connection to a server ended early: (server index, when, how).
type Ended = (usize, Instant, ErrorKind);

/// Keeps 12 long connections open, each exchanging a line every 100 ms;
/// records how each one that broke ended, and opens another.
fn long_connections(stop: &AtomicBool, counts: &Counts, ended: &Mutex<Vec<Ended>>) {
    let mut sessions: Vec<Session> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        sessions.retain(|s| match s.ended() {
            Some(e) => {
                counts.exchanges.fetch_add(s.exchanges(), Ordering::Relaxed);
                ended.lock().unwrap().push((index(&s.server), e.at, e.kind));
                false
            }
            None => true,
        });
        while sessions.len() < 12 {
            let Ok(mut client) = EchoClient::connect(VIP, ECHO) else { break };
            let Ok(server) = client.exchange("which") else { break };
            sessions.push(Session::start(client, &server, Some(Duration::from_millis(100))));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for s in sessions {
        counts.exchanges.fetch_add(s.exchanges(), Ordering::Relaxed);
    }
}

/// 40 new connections a second: connect, one exchange, close.
fn new_connections(stop: &AtomicBool, counts: &Counts, ended: &Mutex<Vec<Ended>>) {
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        match EchoClient::connect(VIP, ECHO).and_then(|mut c| c.exchange("hello")) {
            Ok(_) => {
                counts.connections.fetch_add(1, Ordering::Relaxed);
            }
            // Which server is unknown: judged against all of them.
            Err(e) => ended.lock().unwrap().push((usize::MAX, started, e.kind())),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// UDP flows on 4 sockets, a datagram every 50 ms.
fn datagrams(stop: &AtomicBool, counts: &Counts) {
    let sockets: Vec<UdpSocket> = (0..4).filter_map(|_| UdpSocket::bind("0.0.0.0:0").ok()).collect();
    while !stop.load(Ordering::Relaxed) {
        for socket in &sockets {
            if udp_exchange_on(socket, VIP, UDP, "soak").is_ok() {
                counts.datagrams.fetch_add(1, Ordering::Relaxed);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `f` on this thread in the network namespace `ns`.
fn in_netns(ns: &std::fs::File, f: impl FnOnce()) {
    use std::os::fd::AsRawFd as _;
    // SAFETY: an open namespace file; setns changes only this thread, which
    // the scope made for `f` alone.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        panic!("setns: {}", std::io::Error::last_os_error());
    }
    f()
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches(" kB").parse().ok()
}

impl Chaos {
    /// Each agent's RSS.
    fn memory(&self) -> Vec<Option<u64>> {
        self.nodes.iter().map(|b| rss_kib(b.agent.pid())).collect()
    }

    fn flows_left(&self) -> usize {
        self.nodes.iter().map(|b| b.agent.flow_count()).sum()
    }
}

/// The end: connections judged, memory compared, the flow tables emptied.
fn judge(mut chaos: Chaos, ended: Vec<Ended>, memory_before: Option<Vec<Option<u64>>>) -> Report {
    let history = chaos.history.lock().unwrap();
    for &(server, at, kind) in &ended {
        let explained = if server == usize::MAX {
            (0..SERVERS).any(|s| history.explains(s, at))
        } else {
            history.explains(server, at)
        };
        if explained {
            chaos.report.resets_explained += 1;
        } else {
            let who = if server == usize::MAX {
                "a new connection".to_owned()
            } else {
                format!("a connection to s{}", server + 1)
            };
            let around = history.around(at, Duration::from_secs(5), Duration::from_secs(5));
            chaos
                .report
                .violations
                .push(format!("{who} ended ({kind:?}) with no cut or stop to explain it; around it: {around:?}"));
        }
    }
    drop(history);
    let after = chaos.memory();
    for (n, (before, after)) in memory_before.unwrap_or_default().into_iter().zip(after).enumerate() {
        if let (Some(before), Some(after)) = (before, after)
            && after > before + 16 * 1024
        {
            chaos.report.violations.push(format!("agent {} grew from {before} to {after} KiB", n + 1));
        }
    }
    // Quiet: closing flows go after 2 s, idle ones after 6 s (UDP 3 s).
    let quiet = Instant::now();
    while chaos.flows_left() > 0 && quiet.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(250));
    }
    let left = chaos.flows_left();
    if left > 0 {
        chaos.report.violations.push(format!("{left} flows left 15 s after the traffic stopped"));
    }
    chaos.report
}
