//! Section 8, drains as their clients see them: one server of three holds
//! resting keep-alive connections, busy connections, keep-alive clients
//! that send at any moment (and send a failed request again on a new
//! connection, as HTTP clients do), and connections whose request the
//! server works on for longer than the quiet period (answered before the
//! deadline); it is drained with a deadline. Counted: resting connections
//! reset (an error for the client that uses it next), requests lost after
//! their retry, slow requests never answered, busy connections broken at
//! the deadline. Contenders, each on the same load in the same run:
//! - ours with `idle_close` (resting connections closed with a FIN);
//! - ours without it (resting connections reset at the deadline);
//! - HAProxy 2.6 in TCP mode: `set server ... state drain`, then
//!   `shutdown sessions server ...` at the deadline (its documented way).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use super::{Report, Target};
use crate::{
    agent::Agent,
    keep_alive::{Counts, end_of, keep_alive_client},
    servers::{EchoClient, Kind, Server, Session},
    topology::{ServiceSpec, Topology, VIP},
};

const SECTION: &str = "8. Drains as clients see them (client-visible errors; lower is better)";
const PORT: u16 = 7;
const SERVER_PORT: u16 = 7007;
const DEADLINE: Duration = Duration::from_secs(4);
/// When the slow requests are answered, after the drain began: past
/// `idle_close`'s quiet period (1 s), before the deadline.
const SLOW_ANSWERED: Duration = Duration::from_millis(2500);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Contender {
    OursIdleClose,
    Ours,
    Haproxy,
}

impl Contender {
    fn name(self) -> &'static str {
        match self {
            Contender::OursIdleClose => "ours, idle_close 1s",
            Contender::Ours => "ours, without idle_close",
            Contender::Haproxy => "HAProxy, drain + shutdown sessions",
        }
    }
}

/// What the clients of one drain saw.
#[derive(Default)]
struct Seen {
    idle: usize,
    idle_reset: usize,
    idle_closed: usize,
    /// The longest a resting connection stayed open after the drain began.
    idle_closed_after: Duration,
    requests: u64,
    retried: u64,
    raced: u64,
    lost: u64,
    slow: usize,
    /// Slow requests whose answer never came.
    slow_lost: usize,
    busy_broken: usize,
    /// Of `busy_broken`, those ended by a reset (the others read a clean
    /// end: HAProxy's `shutdown sessions` closes them with a FIN).
    busy_reset: usize,
}

impl Seen {
    fn errors(&self) -> u64 {
        self.idle_reset as u64 + self.lost + self.slow_lost as u64 + self.busy_broken as u64
    }
}

pub fn run(report: &mut Report, quick: bool, lb_bin: &Path) {
    let load = if quick {
        Load { idle: 12, busy: 2, racing: 6, slow: 2 }
    } else {
        Load { idle: 30, busy: 3, racing: 10, slow: 3 }
    };
    let topology = Topology::new(3);
    let echo: Vec<Server> =
        topology.servers.iter().map(|s| Server::start(&s.ns, &s.name, Kind::LineEcho, SERVER_PORT)).collect();
    let mut seen = Vec::new();
    for contender in [Contender::OursIdleClose, Contender::Ours, Contender::Haproxy] {
        echo[0].hold_again();
        match drain_once(&topology, &echo[0], lb_bin, contender, load) {
            Ok(s) => seen.push((contender, s)),
            Err(e) => report.failed(SECTION, format!("drain, {}", contender.name()), e),
        }
    }
    let of = |c: Contender| seen.iter().find(|(x, _)| *x == c).map(|(_, s)| s);
    for (contender, s) in &seen {
        let note = format!(
            "{} resting: {} closed cleanly (the last {:.1} s after the drain began), {} reset; {} requests, {} retried ({} of them after a reset), {} lost; {} slow requests, {} never answered; {} busy broken at the deadline ({} by a reset, the rest by a FIN)",
            s.idle,
            s.idle_closed,
            s.idle_closed_after.as_secs_f64(),
            s.idle_reset,
            s.requests,
            s.retried,
            s.raced,
            s.lost,
            s.slow,
            s.slow_lost,
            s.busy_broken,
            s.busy_reset
        );
        let target = match contender {
            Contender::OursIdleClose => of(Contender::Haproxy).map(|h| Target::AtMost(h.errors() as f64)),
            _ => None,
        };
        report.add(
            SECTION,
            format!("client-visible errors, {}", contender.name()),
            s.errors() as f64,
            "",
            target,
            note,
        );
    }
    if let Some(s) = of(Contender::OursIdleClose) {
        let note = "a resting connection reset is an error for the client that uses it next";
        report.add(
            SECTION,
            "resting connections reset, ours with idle_close",
            s.idle_reset as f64,
            "",
            Some(Target::AtMost(0.0)),
            note,
        );
        report.add(
            SECTION,
            "requests lost after one retry, ours with idle_close",
            s.lost as f64,
            "",
            Some(Target::AtMost(0.0)),
            "",
        );
    }
}

/// The connections on s1 when its drain begins.
#[derive(Clone, Copy)]
struct Load {
    idle: usize,
    busy: usize,
    racing: usize,
    /// Connections whose request s1 answers only [`SLOW_ANSWERED`] after
    /// the drain began.
    slow: usize,
}

/// One drain of s1 (`s1`, its echo server) under the load, through
/// `contender`.
fn drain_once(
    topology: &Topology,
    s1: &Server,
    lb_bin: &Path,
    contender: Contender,
    load: Load,
) -> Result<Seen, String> {
    let Load { idle: idle_n, busy: busy_n, racing: racing_n, slow: slow_n } = load;
    let running = Running::start(topology, lb_bin, contender)?;
    let on_s1 = || -> Result<EchoClient, String> {
        for _ in 0..300 {
            let mut c = topology.client.run(|| EchoClient::connect(VIP, PORT)).map_err(|e| format!("connect: {e}"))?;
            if c.exchange("which").map_err(|e| format!("first exchange: {e}"))? == "s1" {
                return Ok(c);
            }
        }
        Err("no connection landed on s1".into())
    };
    let mut idle: Vec<EchoClient> = (0..idle_n).map(|_| on_s1()).collect::<Result<_, _>>()?;
    let busy: Vec<Session> = (0..busy_n)
        .map(|_| on_s1().map(|c| Session::start(c, "s1", Some(Duration::from_millis(100)))))
        .collect::<Result<_, _>>()?;
    let racing: Vec<EchoClient> = (0..racing_n).map(|_| on_s1()).collect::<Result<_, _>>()?;
    let mut slow: Vec<EchoClient> = (0..slow_n).map(|_| on_s1()).collect::<Result<_, _>>()?;
    for c in slow.iter_mut() {
        c.send("hold").map_err(|e| format!("slow request: {e}"))?;
    }
    let (stop, counts) = (AtomicBool::new(false), Counts::default());
    let mut seen = Seen { idle: idle_n, slow: slow_n, ..Seen::default() };
    std::thread::scope(|scope| -> Result<(), String> {
        for (i, first) in racing.into_iter().enumerate() {
            let (stop, counts) = (&stop, &counts);
            scope.spawn(move || {
                keep_alive_client(&topology.client, (VIP.into(), PORT), first, i as u64 + 1, stop, counts)
            });
        }
        // Resting longer than the quiet period.
        std::thread::sleep(Duration::from_millis(1500));
        let began = Instant::now();
        running.drain(scope)?;
        let answered = scope.spawn(move || {
            std::thread::sleep(SLOW_ANSWERED);
            s1.release_held();
            slow.iter_mut().map(|c| c.answer("hold", Duration::from_secs(1))).filter(Result::is_ok).count()
        });
        let watch_until = DEADLINE + Duration::from_secs(2);
        for client in idle.iter_mut() {
            match end_of(client, watch_until.saturating_sub(began.elapsed())) {
                Ok(true) => {
                    seen.idle_closed += 1;
                    seen.idle_closed_after = seen.idle_closed_after.max(began.elapsed());
                }
                Ok(false) => {}
                Err(_) => seen.idle_reset += 1,
            }
        }
        std::thread::sleep(watch_until.saturating_sub(began.elapsed()));
        stop.store(true, Ordering::Relaxed);
        seen.slow_lost = slow_n - answered.join().map_err(|_| "slow requests' thread panicked")?;
        Ok(())
    })?;
    seen.busy_broken = busy.iter().filter(|s| s.ended().is_some()).count();
    seen.busy_reset =
        busy.iter().filter(|s| s.ended().is_some_and(|e| e.kind == std::io::ErrorKind::ConnectionReset)).count();
    let count = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    (seen.requests, seen.retried, seen.raced, seen.lost) =
        (count(&counts.requests), count(&counts.retried), count(&counts.raced), count(&counts.lost));
    drop(running);
    Ok(seen)
}

/// A contender serving VIP:7 over the three echo servers; taken down on drop.
struct Running<'a> {
    topology: &'a Topology,
    agent: Option<Agent>,
    haproxy: Option<Child>,
}

impl<'a> Running<'a> {
    fn start(topology: &'a Topology, lb_bin: &Path, contender: Contender) -> Result<Running<'a>, String> {
        let mut running = Running { topology, agent: None, haproxy: None };
        if contender == Contender::Haproxy {
            running.haproxy = Some(start_haproxy(topology)?);
            return Ok(running);
        }
        let spec = ServiceSpec { port: PORT, protocol: "tcp", server_port: SERVER_PORT, weights: vec![1; 3] };
        let mut config = topology.config(&[spec]);
        if contender == Contender::OursIdleClose {
            config = config.set("pools.p7.idle_close", "1s");
        }
        running.agent = Some(Agent::start_with(lb_bin.to_owned(), topology, config));
        Ok(running)
    }

    /// Drains s1 with the deadline; for HAProxy, its sessions are shut
    /// down at the deadline by a thread of `scope`.
    fn drain<'s>(&'s self, scope: &'s std::thread::Scope<'s, '_>) -> Result<(), String> {
        if let Some(agent) = &self.agent {
            let timeout = format!("{}s", DEADLINE.as_secs());
            let (ok, _, stderr) = agent.lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", &timeout]);
            return if ok { Ok(()) } else { Err(format!("disable: {stderr}")) };
        }
        let socket = haproxy_socket(self.topology);
        haproxy_command(&socket, "set server p7/s1 state drain")?;
        scope.spawn(move || {
            std::thread::sleep(DEADLINE);
            if let Err(e) = haproxy_command(&socket, "shutdown sessions server p7/s1") {
                eprintln!("bench: haproxy shutdown sessions: {e}");
            }
        });
        Ok(())
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.agent.take();
        if let Some(mut child) = self.haproxy.take() {
            let _ = child.kill();
            let _ = child.wait();
            let _ = self.topology.lb.command("ip").args(["addr", "del", &format!("{VIP}/32"), "dev", "lo"]).output();
            let _ = std::fs::remove_file(haproxy_socket(self.topology));
            let _ = std::fs::remove_file(haproxy_config(self.topology));
        }
    }
}

fn haproxy_socket(topology: &Topology) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-drain-haproxy.sock", topology.prefix))
}

fn haproxy_config(topology: &Topology) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{}-drain-haproxy.cfg", topology.prefix))
}

fn start_haproxy(topology: &Topology) -> Result<Child, String> {
    let lb = &topology.lb;
    lb.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
    let socket = haproxy_socket(topology);
    let servers: String = (1..=3).map(|i| format!("  server s{i} 10.0.{i}.2:{SERVER_PORT}\n")).collect();
    let conf = format!(
        "global\n  maxconn 9000\n  nbthread 1\n  stats socket {} mode 600 level admin\n\
         defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
         frontend echo\n  bind {VIP}:{PORT}\n  default_backend p7\n\
         backend p7\n  balance roundrobin\n{servers}",
        socket.display()
    );
    let path = haproxy_config(topology);
    std::fs::write(&path, conf).map_err(|e| format!("haproxy config: {e}"))?;
    let mut child = lb
        .command("haproxy")
        .args(["-db", "-f"])
        .arg(&path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("start haproxy: {e}"))?;
    let started = Instant::now();
    while !socket.exists() {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("haproxy exited: {status}"));
        }
        if started.elapsed() > Duration::from_secs(5) {
            return Err("haproxy's admin socket never appeared".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(child)
}

/// One command on HAProxy's admin socket; its answer.
fn haproxy_command(socket: &Path, command: &str) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("haproxy socket: {e}"))?;
    stream.write_all(format!("{command}\n").as_bytes()).map_err(|e| format!("haproxy socket: {e}"))?;
    let mut answer = String::new();
    for line in BufReader::new(stream).lines() {
        answer.push_str(&line.map_err(|e| format!("haproxy socket: {e}"))?);
    }
    Ok(answer)
}
