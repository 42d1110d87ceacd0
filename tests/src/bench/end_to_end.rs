//! Section 3, end to end through namespaces: the same topology (a client,
//! the balancer's namespace, 3 servers running nginx), the same load
//! generator (wrk) and the same long-flow sender for every contender,
//! alternating contenders round by round:
//! - direct: the client talks to one server (the ceiling);
//! - multipath: an L4-hash multipath route over the 3 servers (the ceiling
//!   for spreading load; the servers hold the VIP);
//! - ours: the XDP balancer (the real agent);
//! - haproxy: HAProxy 2.6 in TCP mode;
//! - nftables: DNAT with jhash over the servers and kernel conntrack.
//!
//! Both cores are busy with the load generator and the servers, so a
//! balancer scores by how little CPU it takes from them. Leftover sockets
//! and conntrack entries are cleared between contenders.

use std::{
    net::Ipv4Addr,
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use super::{Report, Target, median};
use crate::{
    agent::Agent,
    netns::{NetNs, must},
    servers::{Kind, Server, bulk_send},
    topology::{ServiceSpec, Topology, VIP, server_addr},
};

const SECTION: &str = "3. End to end through namespaces (ratio to the ceilings; higher is better, latency lower)";
const HTTP_PORT: u16 = 80;
const BULK_PORT: u16 = 9000;

/// Routes `vip` in `ns` over `via` by a hash of each packet's 5-tuple, as
/// an ECMP router does.
///
/// Not `fib_multipath_hash_policy=1`: for a forwarded packet that carries
/// an L4 hash already, that policy takes the packet's own hash, and on veth
/// a packet keeps the one its sending socket gave it. A TCP sender draws a
/// new one at each retransmission timeout, so a long flow that lost a
/// packet moved to another server, which answered with a reset (the
/// bench's crash: "multipath route: long flow failed three times").
/// Policy 3 hashes the fields named, whatever the packet carries.
pub fn multipath_route(ns: &NetNs, vip: Ipv4Addr, via: &[Ipv4Addr]) {
    ns.sysctl("net.ipv4.fib_multipath_hash_policy", "3");
    // Source and destination address, protocol, source and destination port.
    ns.sysctl("net.ipv4.fib_multipath_hash_fields", "0x0037");
    let mut args = vec!["route".to_owned(), "add".to_owned(), format!("{vip}/32")];
    for hop in via {
        args.extend(["nexthop".to_owned(), "via".to_owned(), hop.to_string()]);
    }
    ns.ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Contender {
    Direct,
    Multipath,
    Ours,
    Haproxy,
    Nftables,
}

impl Contender {
    const ALL: [Contender; 5] =
        [Contender::Direct, Contender::Multipath, Contender::Ours, Contender::Haproxy, Contender::Nftables];

    fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct (no balancer)",
            Contender::Multipath => "multipath route",
            Contender::Ours => "lb (this XDP balancer)",
            Contender::Haproxy => "HAProxy 2.6, mode tcp",
            Contender::Nftables => "nftables DNAT + conntrack",
        }
    }

    /// Where the client sends its traffic.
    fn target(self) -> Ipv4Addr {
        if self == Contender::Direct { Ipv4Addr::new(10, 0, 1, 2) } else { VIP }
    }
}

/// One round's figures for a contender.
#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    new_conns: f64,
    keepalive: f64,
    p99_ms: f64,
    bulk_gbps: f64,
}

struct Bed {
    lb_bin: std::path::PathBuf,
    // Dropped in order: processes, then servers, then namespaces.
    nginx: Vec<Child>,
    _sinks: Vec<Server>,
    topology: Topology,
    dir: std::path::PathBuf,
}

impl Drop for Bed {
    fn drop(&mut self) {
        // SIGTERM: the nginx master stops its workers before it exits.
        for child in &mut self.nginx {
            // SAFETY: signalling our own child by its pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_config(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(format!("nginx-{name}.conf"));
    let conf = format!(
        "daemon off;\nworker_processes 1;\npid {pid};\nerror_log /dev/null crit;\n\
         events {{ worker_connections 20000; }}\n\
         http {{\n access_log off;\n keepalive_requests 1000000;\n\
         client_body_temp_path {dir}/body-{name};\n\
         server {{ listen 80 reuseport backlog=4096; location / {{ return 200 \"{name}\\n\"; }} }}\n}}\n",
        pid = dir.join(format!("nginx-{name}.pid")).display(),
        dir = dir.display(),
    );
    std::fs::write(&path, conf).expect("nginx config");
    path
}

impl Bed {
    fn new(lb_bin: &Path) -> Bed {
        let topology = Topology::new(3);
        // Not the topology's own directory: the agent's guard removes that one.
        let dir = std::env::temp_dir().join(format!("{}-bench", topology.prefix));
        std::fs::create_dir_all(&dir).expect("bench dir");
        // The client reaches server 1 directly (the "direct" ceiling) through
        // the balancer's namespace, routing.
        topology.client.ip(&["route", "add", "10.0.1.0/24", "via", "10.0.0.1"]);
        for (ns, keys) in [
            (&topology.client, &["net.ipv4.tcp_tw_reuse=1", "net.ipv4.tcp_timestamps=2"][..]),
            (&topology.lb, &["net.ipv4.tcp_timestamps=2"][..]),
        ] {
            for kv in keys {
                let (k, v) = kv.split_once('=').unwrap();
                ns.sysctl(k, v);
            }
        }
        topology.client.sysctl("net.ipv4.ip_local_port_range", "1024 65000");
        // Multipath: the servers hold the VIP; the balancer routes it over them.
        for s in &topology.servers {
            s.ns.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
        }
        multipath_route(&topology.lb, VIP, &[server_addr(1), server_addr(2), server_addr(3)]);
        let nginx = topology
            .servers
            .iter()
            .map(|s| {
                let conf = nginx_config(&dir, &s.name);
                s.ns.command("nginx")
                    .arg("-c")
                    .arg(&conf)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start nginx")
            })
            .collect();
        let sinks = topology.servers.iter().map(|s| Server::start(&s.ns, &s.name, Kind::Sink, BULK_PORT)).collect();
        std::thread::sleep(Duration::from_millis(500));
        Bed { lb_bin: lb_bin.to_owned(), nginx, _sinks: sinks, topology, dir }
    }

    /// Sets the contender up; the returned guard tears it down.
    fn start(&self, contender: Contender) -> Running<'_> {
        let lb = &self.topology.lb;
        let mut running = Running { bed: self, agent: None, haproxy: None, nft: false, vip_on_lb: false };
        match contender {
            Contender::Direct | Contender::Multipath => {}
            Contender::Ours => {
                let specs = [
                    ServiceSpec { port: HTTP_PORT, protocol: "tcp", server_port: HTTP_PORT, weights: vec![1; 3] },
                    ServiceSpec { port: BULK_PORT, protocol: "tcp", server_port: BULK_PORT, weights: vec![1; 3] },
                ];
                let config = self.topology.config(&specs).set("flows.max", 262_144);
                running.agent = Some(Agent::start_with(self.lb_bin.clone(), &self.topology, config));
            }
            Contender::Haproxy => {
                lb.ip(&["addr", "add", &format!("{VIP}/32"), "dev", "lo"]);
                running.vip_on_lb = true;
                let servers =
                    |port: u16| -> String { (1..=3).map(|i| format!("  server s{i} 10.0.{i}.2:{port}\n")).collect() };
                let conf = format!(
                    "global\n  maxconn 9000\n  nbthread 1\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
                     frontend http\n  bind {VIP}:{HTTP_PORT}\n  default_backend web\n\
                     frontend bulk\n  bind {VIP}:{BULK_PORT}\n  default_backend bulk\n\
                     backend web\n  balance roundrobin\n{}\
                     backend bulk\n  balance roundrobin\n{}",
                    servers(HTTP_PORT),
                    servers(BULK_PORT)
                );
                let path = self.dir.join("haproxy.cfg");
                std::fs::write(&path, conf).expect("haproxy config");
                let log = std::fs::File::create(self.dir.join("haproxy.log")).expect("haproxy log");
                let mut child = lb
                    .command("haproxy")
                    .args(["-db", "-f"])
                    .arg(&path)
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("start haproxy");
                std::thread::sleep(Duration::from_millis(500));
                if let Ok(Some(status)) = child.try_wait() {
                    let log = std::fs::read_to_string(self.dir.join("haproxy.log")).unwrap_or_default();
                    panic!("haproxy exited ({status}):\n{log}");
                }
                running.haproxy = Some(child);
            }
            Contender::Nftables => {
                let rules = format!(
                    "table ip lbbench {{\n chain pre {{\n  type nat hook prerouting priority dstnat;\n  \
                     ip daddr {VIP} tcp dport {{ {HTTP_PORT}, {BULK_PORT} }} dnat to jhash ip saddr . tcp sport mod 3 map {{ 0 : 10.0.1.2, 1 : 10.0.2.2, 2 : 10.0.3.2 }}\n }}\n}}\n"
                );
                let path = self.dir.join("nft.rules");
                std::fs::write(&path, rules).expect("nft rules");
                must(lb.command("nft").arg("-f").arg(&path));
                running.nft = true;
            }
        }
        running
    }

    /// Leftovers from one contender corrupt the next one's figures.
    fn clear_leftovers(&self) {
        let mut namespaces: Vec<&NetNs> = vec![&self.topology.client, &self.topology.lb];
        namespaces.extend(self.topology.servers.iter().map(|s| &s.ns));
        for ns in namespaces {
            let _ = ns.command("ss").args(["-K", "-t", "state", "time-wait"]).output();
            let _ = ns.command("ss").args(["-K", "-t", "state", "fin-wait-2"]).output();
        }
        let _ = self.topology.lb.command("conntrack").arg("-F").stderr(Stdio::null()).output();
        std::thread::sleep(Duration::from_millis(200));
    }

    fn wrk(&self, target: Ipv4Addr, close: bool, seconds: u32) -> Result<(f64, f64, f64), String> {
        let mut cmd = self.topology.client.command("wrk");
        cmd.args(["-t1", "-c32", &format!("-d{seconds}s"), "--latency", "--timeout", "2s"]);
        if close {
            cmd.args(["-H", "Connection: close"]);
        }
        cmd.arg(format!("http://{target}:{HTTP_PORT}/"));
        let out = cmd.output().map_err(|e| format!("cannot run wrk: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(format!("wrk failed ({}): {text}{}", out.status, String::from_utf8_lossy(&out.stderr)));
        }
        parse_wrk(&text).ok_or_else(|| format!("no rate in wrk's output: {text}"))
    }

    /// One round of `contender`, or why it failed.
    fn measure(&self, contender: Contender, seconds: u32) -> Result<Figures, String> {
        self.clear_leftovers();
        let running = self.start(contender);
        let target = contender.target();
        let (new_conns, _, _) = self.wrk(target, true, seconds)?;
        self.clear_leftovers();
        let (keepalive, _p50_ms, p99_ms) = self.wrk(target, false, seconds)?;
        // A fresh connection for the long flow; a transient failure (a reset
        // on connect, say) is retried twice, and reported.
        let mut attempt = 0;
        let bulk = loop {
            attempt += 1;
            match self.topology.client.run(|| bulk_send(target, BULK_PORT, Duration::from_secs(seconds as u64))) {
                Ok(bits) => break bits,
                Err(e) if attempt < 3 => eprintln!("bench: {}: long flow failed ({e}), trying again", contender.name()),
                Err(e) => return Err(format!("long flow failed three times: {e}")),
            }
        };
        drop(running);
        Ok(Figures { new_conns, keepalive, p99_ms, bulk_gbps: bulk / 1e9 })
    }
}

/// A contender in place; taken down on drop.
struct Running<'a> {
    bed: &'a Bed,
    agent: Option<Agent>,
    haproxy: Option<Child>,
    nft: bool,
    vip_on_lb: bool,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let lb = &self.bed.topology.lb;
        self.agent.take();
        if let Some(mut child) = self.haproxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.nft {
            let _ = lb.command("nft").args(["delete", "table", "ip", "lbbench"]).output();
        }
        if self.vip_on_lb {
            let _ = lb.command("ip").args(["addr", "del", &format!("{VIP}/32"), "dev", "lo"]).output();
        }
    }
}

/// Requests per second, and p50 and p99 latency in ms, from wrk's output.
fn parse_wrk(out: &str) -> Option<(f64, f64, f64)> {
    let rate = out.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:")).and_then(|v| v.trim().parse().ok())?;
    let percentile = |p: &str| -> f64 {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p))
            .map(|v| {
                let v = v.trim();
                let (number, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
                let n: f64 = number.parse().unwrap_or(f64::NAN);
                match unit {
                    "us" => n / 1000.0,
                    "ms" => n,
                    "s" => n * 1000.0,
                    _ => f64::NAN,
                }
            })
            .unwrap_or(f64::NAN)
    };
    Some((rate, percentile("50%"), percentile("99%")))
}

pub fn run(report: &mut Report, quick: bool, lb: &Path) {
    let (rounds, seconds) = if quick { (1, 2) } else { (5, 4) };
    let bed = Bed::new(lb);
    // Each contender's rounds; a failed round is None (and reported).
    let mut results: Vec<(Contender, Vec<Option<Figures>>)> = Contender::ALL.iter().map(|c| (*c, Vec::new())).collect();
    for round in 0..rounds {
        for (contender, figures) in &mut results {
            match bed.measure(*contender, seconds) {
                Ok(f) => {
                    eprintln!(
                        "bench: e2e round {} {:<28} {:>8.0} conn/s {:>8.0} req/s  p99 {:>6.2} ms  {:>5.2} Gbit/s",
                        round + 1,
                        contender.name(),
                        f.new_conns,
                        f.keepalive,
                        f.p99_ms,
                        f.bulk_gbps
                    );
                    figures.push(Some(f));
                }
                Err(why) => {
                    report.failed(SECTION, format!("round {}: {}", round + 1, contender.name()), why);
                    figures.push(None);
                }
            }
        }
    }
    // Medians per contender, then ratios to the ceilings.
    let rounds_of = |c: Contender| -> &Vec<Option<Figures>> { &results.iter().find(|(x, _)| *x == c).unwrap().1 };
    let med = |c: Contender, pick: fn(&Figures) -> f64| -> f64 {
        let mut v: Vec<f64> = rounds_of(c).iter().flatten().map(pick).collect();
        median(&mut v)
    };
    // Each round's contenders ran back to back: their ratio within a round
    // is steadier than a ratio of medians taken over rounds. Rounds where
    // either failed are left out.
    let ratio = |c: Contender, ceiling: Contender, pick: fn(&Figures) -> f64| -> f64 {
        let pairs = rounds_of(c).iter().zip(rounds_of(ceiling));
        let mut v: Vec<f64> = pairs.filter_map(|(a, b)| Some(pick(a.as_ref()?) / pick(b.as_ref()?))).collect();
        median(&mut v)
    };
    type Metric = (&'static str, fn(&Figures) -> f64, &'static str);
    let metrics: [Metric; 4] = [
        ("new connections/s", |f| f.new_conns, "conn/s"),
        ("keep-alive requests/s", |f| f.keepalive, "req/s"),
        ("long-flow throughput", |f| f.bulk_gbps, "Gbit/s"),
        ("p99 latency (keep-alive)", |f| f.p99_ms, "ms"),
    ];
    let note = format!(
        "median over {rounds} rounds of the ratio within each round; {seconds} s each; wrk -t1 -c32; tx checksum offload off for all"
    );
    for (metric, pick, unit) in metrics {
        let direct = med(Contender::Direct, pick);
        let multipath = med(Contender::Multipath, pick);
        for contender in [Contender::Ours, Contender::Haproxy, Contender::Nftables] {
            let value = med(contender, pick);
            let is_ours = contender == Contender::Ours;
            let vs_multipath = ratio(contender, Contender::Multipath, pick);
            let vs_direct = ratio(contender, Contender::Direct, pick);
            let target = if metric.starts_with("p99") {
                is_ours.then_some(Target::AtMost(1.1))
            } else {
                (is_ours && !metric.starts_with("long")).then_some(Target::AtLeast(0.95))
            };
            report.add(
                SECTION,
                format!("{metric}: {} / multipath", contender.name()),
                vs_multipath,
                "x",
                target,
                format!("{value:.1} {unit}; / direct {vs_direct:.2}x; {note}"),
            );
        }
        report.add(
            SECTION,
            format!("{metric}: ceilings, direct and multipath"),
            multipath,
            unit,
            None,
            format!("direct {direct:.1} {unit}, multipath {multipath:.1} {unit}"),
        );
    }
}
