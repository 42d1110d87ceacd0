//! The demo behind `cargo xtask run`: a client, the load balancer and three
//! HTTP servers in network namespaces, the real agent balancing between
//! them. Ctrl-C stops the agent and removes everything the demo made.

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use testbed::{
    agent::Agent,
    http::LOCAL_API,
    port_forward::PortForward,
    servers::{EchoClient, Kind, Server, Session, http_get, udp_exchange},
    topology::{ServiceSpec, Topology, VIP},
};

fn main() {
    let lb = lb_path();
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).expect("signal handler");
    }

    eprintln!("demo: building namespaces: a client, the load balancer, 3 servers");
    let topology = Topology::new(3);
    let _servers = start_servers(&topology);
    let http = ServiceSpec { port: 80, protocol: "tcp", server_port: 8080, weights: vec![1, 1, 1] };
    let udp = ServiceSpec { port: 53, protocol: "udp", server_port: 5353, weights: vec![1, 1, 1] };
    let echo = ServiceSpec { port: 7, protocol: "tcp", server_port: 7007, weights: vec![1, 1, 1] };
    let config = topology.config(&[http, udp, echo]);
    eprintln!("demo: starting the agent");
    let agent = Agent::start_with(lb.clone(), &topology, config);

    let answers: Vec<String> =
        topology.client.run(|| (0..6).map(|_| http_get(VIP, 80).unwrap_or_else(|e| format!("error: {e}"))).collect());
    let udp_answer = topology.client.run(|| udp_exchange(VIP, 53, "hello").unwrap_or_else(|e| format!("error: {e}")));
    let mut sessions = long_lived_sessions(&topology);
    let forward = PortForward::start(8480..=8499, &topology.lb, LOCAL_API.parse().expect("an address"));
    print_guide(&Guide {
        topology: &topology,
        agent: &agent,
        lb: &lb,
        dashboard: &dashboard_line(&forward, &topology),
        answers: &answers.join(" "),
        udp_answer: &udp_answer,
    });
    std::thread::scope(|s| {
        // A few new HTTP requests a second, to watch on the dashboard.
        s.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                let _ = topology.client.run(|| http_get(VIP, 80));
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        let mut since_top_up = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(100));
            if since_top_up.elapsed() >= Duration::from_secs(2) {
                top_up(&mut sessions, &topology);
                since_top_up = std::time::Instant::now();
            }
        }
    });
    eprintln!("demo: stopping the agent and removing everything");
    drop(forward);
    drop(sessions);
    drop(agent);
    drop(topology);
    eprintln!("demo: done");
}

/// The agent's binary, from `--lb PATH`.
fn lb_path() -> PathBuf {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (Some("--lb"), Some(path)) => PathBuf::from(path),
        _ => {
            eprintln!("usage: lb-demo --lb PATH-TO-lb   (run it with `cargo xtask run`)");
            std::process::exit(2);
        }
    }
}

/// On each server: HTTP on 8080, a UDP echo on 5353, a line echo on 7007.
fn start_servers(topology: &Topology) -> Vec<Server> {
    let kinds = [(Kind::Http, 8080), (Kind::UdpEcho, 5353), (Kind::LineEcho, 7007)];
    kinds
        .into_iter()
        .flat_map(|(kind, port)| topology.servers.iter().map(move |s| Server::start(&s.ns, &s.name, kind, port)))
        .collect()
}

/// Something to watch on the dashboard: long-lived connections to the line
/// echo, a line each second.
const SESSIONS: usize = 9;

fn long_lived_sessions(topology: &Topology) -> Vec<Session> {
    let mut sessions = Vec::new();
    top_up(&mut sessions, topology);
    sessions
}

/// Replaces the sessions that ended (reset by a disable or a deadline) with
/// new connections, as their users would reconnect: they go to the servers
/// in service, and the next drain has flows to watch.
fn top_up(sessions: &mut Vec<Session>, topology: &Topology) {
    sessions.retain(|s| s.ended().is_none());
    while sessions.len() < SESSIONS {
        let Some(session) = topology.client.run(|| {
            let mut client = EchoClient::connect(VIP, 7).ok()?;
            let server = client.exchange("which").ok()?;
            Some(Session::start(client, &server, Some(Duration::from_secs(1))))
        }) else {
            // No server takes new connections now: try again later.
            return;
        };
        sessions.push(session);
    }
}

/// Where the dashboard is, from the host or from another machine.
fn dashboard_line(forward: &std::io::Result<PortForward>, topology: &Topology) -> String {
    match forward {
        Ok(forward) => format!(
            "http://{local}/  (forwarded to the agent's {LOCAL_API} in the balancer's namespace;\n  \
             from another machine: ssh -L {port}:127.0.0.1:{port} root@<this host>, then open http://127.0.0.1:{port}/)",
            local = forward.local,
            port = forward.local.port()
        ),
        Err(e) => format!("not forwarded ({e}): the agent serves it on {LOCAL_API} in namespace {}", topology.lb.name),
    }
}

/// What the guide printed at the start tells about.
struct Guide<'a> {
    topology: &'a Topology,
    agent: &'a Agent,
    lb: &'a Path,
    dashboard: &'a str,
    answers: &'a str,
    udp_answer: &'a str,
}

fn print_guide(g: &Guide) {
    let (c, dashboard, answers, udp_answer) = (&g.topology.client.name, g.dashboard, g.answers, g.udp_answer);
    println!(
        r#"
The load balancer is running.
  VIP {VIP}:80/tcp (HTTP, pool p80), {VIP}:53/udp (echo, p53) and {VIP}:7/tcp (line echo, p7),
  each to a pool of the same 3 servers: {servers}
  6 test requests were answered by: {answers}; UDP by: {udp_answer}

Send requests from the client namespace (each answer names its server):
  ip netns exec {c} curl -s http://{VIP}/
  ip netns exec {c} bash -c 'exec 3<>/dev/tcp/{VIP}/80; printf "GET / HTTP/1.0\r\n\r\n" >&3; tail -n1 <&3'

The dashboard (Pools > p7 > Servers: tick servers, Disable / Gracefully / Enable),
the HTTP API (/api/v1/...) and the metrics (/metrics):
  {dashboard}
  9 connections to {VIP}:7 send a line each second (one that is reset is opened again, as its
  user would), and a few HTTP requests a second go to {VIP}:80, so that flows and drains can be watched.

Operate it with the CLI (it talks to the agent's API socket):
  export LB_SOCKET={socket}
  {lb} pool list
  {lb} pool show p80
  {lb} server disable p80 s1 --graceful --timeout 30s --wait
  {lb} server disable p80 s2                 (at once: its sessions are reset)
  {lb} server enable p80 s1 s2
  {lb} events

The agent: config {config}, log {log}, maps pinned in {pins}

Ctrl-C stops the agent and removes the namespaces, pins and files.
"#,
        servers = g.topology.servers.iter().map(|s| format!("{} {}", s.name, s.addr)).collect::<Vec<_>>().join(", "),
        config = g.agent.config_path.display(),
        log = g.agent.log_path().display(),
        pins = g.agent.pin_dir().display(),
        socket = g.agent.socket().display(),
        lb = g.lb.display(),
    );
}
