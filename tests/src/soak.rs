//! The chaos soak (`cargo xtask soak`, and a 60 s run in the tests): mixed
//! TCP and UDP traffic through the real agent while servers are disabled in
//! random modes, enabled and drained, the agent is killed and restarted,
//! and server processes stop and start. Checked throughout:
//! - nothing reaches a DISABLED server (its processes answer nothing);
//! - every drain with a deadline ends by it (plus 1 s);
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
    servers::{EchoClient, Kind, Server, Session, udp_exchange_on},
    topology::VIP,
};

const SERVERS: usize = 4;
/// Short timeouts, so that the table empties soon after the traffic stops.

#[derive(Debug, Default)]
pub struct Report {
    pub connections: u64,
    pub exchanges: u64,
    pub datagrams: u64,
    pub changes: u64,
    pub agent_restarts: u64,
    pub server_restarts: u64,
    pub resets_explained: u64,
    pub violations: Vec<String>,
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "soak: {} new connections, {} exchanges on long connections, {} datagrams; {} changes, {} agent \
             restarts, {} server restarts; {} connections reset by a cut or a stopped server; violations: {}",
            self.connections,
            self.exchanges,
            self.datagrams,
            self.changes,
            self.agent_restarts,
            self.server_restarts,
            self.resets_explained,
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
    /// Disabled from this instant; what its processes had answered then.
    Disabled(Instant, u64),
}

struct Chaos {
    b: Bed,
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

    fn answered(&self, i: usize) -> u64 {
        self.b.echo[i].answered() + self.b.udp[i].answered()
    }

    fn name(i: usize) -> String {
        format!("s{}", i + 1)
    }

    fn lb(&mut self, args: &[&str]) -> bool {
        self.history.lock().unwrap().log.push((Instant::now(), args.join(" ")));
        let (ok, _, stderr) = self.b.agent.lb(args);
        if !ok {
            self.report.violations.push(format!("lb {args:?} failed: {}", stderr.trim()));
        }
        self.report.changes += 1;
        ok
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
        let now = Instant::now();
        self.history.lock().unwrap().cuts.push((i, now));
        std::thread::sleep(Duration::from_millis(100));
        self.admin[i] = Admin::Disabled(now, self.answered(i));
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
        if let Admin::Disabled(since, answered) = self.admin[i]
            && self.answered(i) != answered
        {
            let more = self.answered(i) - answered;
            self.report.violations.push(format!(
                "s{} answered {more} requests while DISABLED ({:?})",
                i + 1,
                since.elapsed()
            ));
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
            let server = self.b.server("p7", &Self::name(i));
            if server.state != ServerState::Disabled {
                let state = server.label();
                self.report.violations.push(format!("s{} is {state} 1 s after its drain's deadline", i + 1));
            }
            self.history.lock().unwrap().cuts.push((i, deadline));
            // p53 was not drained: disable it too, so both agree.
            self.lb(&["server", "disable", "p53", &Self::name(i)]);
            std::thread::sleep(Duration::from_millis(100));
            self.admin[i] = Admin::Disabled(Instant::now(), self.answered(i));
        }
    }

    fn restart_agent(&mut self) {
        if self.random(2) == 0 {
            self.b.agent.kill();
        } else {
            let _ = self.b.agent.stop();
        }
        std::thread::sleep(Duration::from_millis(50));
        self.history.lock().unwrap().log.push((Instant::now(), "agent restart".into()));
        self.b.agent.restart();
        self.report.agent_restarts += 1;
        self.last_agent_restart = Instant::now();
    }

    /// Stops `i`'s server processes, or starts them again.
    fn bounce_server(&mut self, i: usize) {
        let ns = &self.b.topology.servers[i].ns;
        let name = Self::name(i);
        if self.up[i] {
            if self.serving(i) < 2 {
                return;
            }
            self.history.lock().unwrap().down.push((i, Instant::now(), None));
            self.history.lock().unwrap().log.push((Instant::now(), format!("stop s{}", i + 1)));
            self.b.echo[i].stop();
            self.b.udp[i].stop();
            self.up[i] = false;
        } else {
            self.b.echo[i] = Server::start(ns, &name, Kind::LineEcho, 7007);
            self.b.udp[i] = Server::start(ns, &name, Kind::UdpEcho, 5353);
            if let Some(down) = self.history.lock().unwrap().down.iter_mut().rev().find(|d| d.0 == i) {
                down.2 = Some(Instant::now());
            }
            self.up[i] = true;
            self.report.server_restarts += 1;
            if let Admin::Disabled(since, _) = self.admin[i] {
                self.admin[i] = Admin::Disabled(since, self.answered(i));
            }
        }
    }
}

/// Runs the soak for `duration` from `seed`; the report lists violations.
pub fn soak(duration: Duration, seed: u64) -> Report {
    let b = bed_with(SERVERS, |c| {
        c.set("flows.tcp_idle_timeout", "6s").set("flows.tcp_closing_timeout", "2s").set("flows.udp_idle_timeout", "3s")
    });
    let history = Arc::new(Mutex::new(History::default()));
    let mut chaos = Chaos {
        b,
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
    let memory_before = Mutex::new(None);
    // The client's namespace, held apart from the bed that the chaos changes.
    let client = std::fs::File::open(format!("/run/netns/{}", chaos.b.topology.client.name)).expect("client netns");
    std::thread::scope(|s| {
        s.spawn(|| in_netns(&client, || long_connections(&stop, &counts, &ended)));
        s.spawn(|| in_netns(&client, || new_connections(&stop, &counts, &ended)));
        s.spawn(|| in_netns(&client, || datagrams(&stop, &counts)));
        let started = Instant::now();
        while started.elapsed() < duration {
            std::thread::sleep(Duration::from_millis(400 + chaos.random(800)));
            if memory_before.lock().unwrap().is_none() && started.elapsed() > Duration::from_secs(5) {
                *memory_before.lock().unwrap() = rss_kib(chaos.b.agent.pid());
            }
            chaos.step();
        }
        stop.store(true, Ordering::Relaxed);
    });
    let mut report = judge(chaos, ended.into_inner().unwrap(), memory_before.into_inner().unwrap());
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

/// The end: connections judged, memory compared, the flow table emptied.
fn judge(mut chaos: Chaos, ended: Vec<Ended>, memory_before: Option<u64>) -> Report {
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
            let around: Vec<String> = history
                .log
                .iter()
                .filter(|(t, _)| *t + Duration::from_secs(5) >= at && *t <= at + Duration::from_secs(5))
                .map(|(t, what)| {
                    format!(
                        "{:+.2}s {what}",
                        t.saturating_duration_since(at).as_secs_f64() - at.saturating_duration_since(*t).as_secs_f64()
                    )
                })
                .collect();
            chaos
                .report
                .violations
                .push(format!("{who} ended ({kind:?}) with no cut or stop to explain it; around it: {around:?}"));
        }
    }
    drop(history);
    if let (Some(before), Some(after)) = (memory_before, rss_kib(chaos.b.agent.pid()))
        && after > before + 16 * 1024
    {
        chaos.report.violations.push(format!("the agent grew from {before} to {after} KiB"));
    }
    // Quiet: closing flows go after 2 s, idle ones after 6 s (UDP 3 s).
    let quiet = Instant::now();
    while chaos.b.agent.flow_count() > 0 && quiet.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(250));
    }
    let left = chaos.b.agent.flow_count();
    if left > 0 {
        chaos.report.violations.push(format!("{left} flows left 15 s after the traffic stopped"));
    }
    chaos.report
}
