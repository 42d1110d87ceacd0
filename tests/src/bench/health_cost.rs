//! Section 4, the cost of health checks: the real agent checks 2,000
//! servers every second (a TCP connect each), against servers in a
//! namespace (one host answering on 2,000 addresses), and the agent's CPU
//! time over ten seconds is read from /proc.

use std::{
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::fd::AsRawFd as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use lb_userspace::model::{HealthStatus, ServerView};

use super::{Report, Target};
use crate::{
    agent::Agent,
    topology::{Topology, VIP},
};

const SECTION: &str = "4. Control plane at scale";
const SERVERS: usize = 2000;
const MEASURE: Duration = Duration::from_secs(10);

/// The address of farm server `i` (10.3.0.0/16, local on the farm host).
fn farm_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 3, (i / 250) as u8, (i % 250 + 1) as u8)
}

pub fn run(report: &mut Report, lb: &Path) {
    let topology = Topology::new(1);
    let farm = &topology.servers[0];
    // The farm answers on every address of 10.3.0.0/16; the balancer routes there.
    farm.ns.ip(&["route", "add", "local", "10.3.0.0/16", "dev", "lo"]);
    topology.lb.ip(&["route", "add", "10.3.0.0/16", "via", &farm.addr.to_string()]);
    let stop = Arc::new(AtomicBool::new(false));
    let acceptor = accept_and_close(&farm.ns.name, 7007, Arc::clone(&stop));
    let mut config = topology
        .config(&[])
        .service(VIP, 80, "tcp", "farm")
        .monitor("farm", [("kind", "tcp".into()), ("interval", "1s".into()), ("timeout", "500ms".into())]);
    for i in 0..SERVERS {
        config = config.server("farm", &format!("f{i}"), farm_addr(i), 7007);
    }
    let agent = Agent::start_with(lb.to_owned(), &topology, config);
    let up = || {
        let view = agent.pool("farm");
        let up = |s: &&ServerView| s.health.as_ref().is_some_and(|h| h.status == HealthStatus::Up);
        view.servers.iter().filter(up).count()
    };
    let started = std::time::Instant::now();
    while up() < SERVERS && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let all_up = up();
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(agent.pid());
    std::thread::sleep(MEASURE);
    let after = cpu_ticks(agent.pid());
    let share = |ticks: u64| ticks as f64 / ticks_per_second() / MEASURE.as_secs_f64();
    let (user, system) = (share(after.0 - before.0), share(after.1 - before.1));
    let used = user + system;
    drop(agent);
    // The peer: the same connects, paced the same, by a bare loop.
    let bare = topology.lb.run(|| bare_connects(MEASURE));
    stop.store(true, Ordering::Relaxed);
    let _ = acceptor.join();
    report.add(
        SECTION,
        "health checks of 2,000 servers every second: agent CPU",
        used * 100.0,
        "% of a core",
        None,
        format!(
            "tcp monitor, a connect each; {all_up} of {SERVERS} UP; over {MEASURE:?}: user {:.1}%, system {:.1}%",
            user * 100.0,
            system * 100.0
        ),
    );
    report.add(
        SECTION,
        "health checks: the agent / a bare loop of the same connects",
        used / bare,
        "x",
        Some(Target::AtMost(1.5)),
        format!(
            "the bare loop (one thread, blocking connects, the same 2,000 a second) used {:.1}% of a core: the kernel's \
             share, both ends of each connection counted on veth",
            bare * 100.0
        ),
    );
}

/// A thread connecting to each farm address in turn, 2,000 a second, for
/// `duration`, closing each at once with a reset (as the agent does);
/// returns the thread's CPU time as a share of a core.
fn bare_connects(duration: Duration) -> f64 {
    let every = Duration::from_secs(1) / SERVERS as u32;
    let cpu = || {
        // SAFETY: rusage is plain data (all zeroes is valid); getrusage fills
        // the struct given, and RUSAGE_THREAD is this thread.
        let usage = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_THREAD, &mut usage);
            usage
        };
        let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        secs(usage.ru_utime) + secs(usage.ru_stime)
    };
    let (started, before) = (std::time::Instant::now(), cpu());
    let mut next = started;
    let mut i = 0;
    while started.elapsed() < duration {
        let to = SocketAddr::from((farm_addr(i % SERVERS), 7007));
        if let Ok(stream) = std::net::TcpStream::connect_timeout(&to, Duration::from_millis(500)) {
            lb_userspace::health::probe::close_at_once(&stream);
        }
        i += 1;
        next += every;
        if let Some(wait) = next.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    (cpu() - before) / started.elapsed().as_secs_f64()
}

/// The agent's user and system time so far, in clock ticks.
fn cpu_ticks(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("the agent's stat");
    // After the command's ")" come the fields from the third on: utime and
    // stime are the 14th and 15th.
    let fields: Vec<&str> = stat.rsplit_once(')').expect("stat").1.split_whitespace().collect();
    (fields[11].parse().unwrap(), fields[12].parse().unwrap())
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf reads a constant.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Accepts connections on `port` in namespace `ns` and closes them, until `stop`.
fn accept_and_close(ns: &str, port: u16, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let netns = std::fs::File::open(format!("/run/netns/{ns}")).expect("open the farm's namespace");
    std::thread::spawn(move || {
        // SAFETY: an open network namespace file; setns changes only this thread.
        assert_eq!(unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
        // SAFETY: a zeroed cpu_set_t with CPU 1 set, for this thread only.
        unsafe {
            let mut cpus: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(1, &mut cpus);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &cpus);
        }
        let listener = TcpListener::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))).expect("bind the farm");
        listener.set_nonblocking(true).expect("nonblocking");
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, _)) => drop(stream),
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    })
}
