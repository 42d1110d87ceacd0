//! The HTTP API and the metrics, against the real agent in namespaces with
//! live TCP connections: every resource, every refusal with its status (and
//! nothing changed by it), the token rules, a body over the limit, slow
//! clients, the live event stream, and a scrape that promtool accepts and
//! that agrees with the API.

use std::{
    io::{BufRead as _, BufReader, ErrorKind, Write as _},
    net::TcpStream,
    process::Stdio,
    time::{Duration, Instant},
};

use lb_userspace::model::{
    Change, ErrorCode, Event, EventKind, PoolSummary, PoolView, ReloadReport, ServerView, Stats, Subject,
};
use serde_json::{Value, json};
use testbed::{
    bed::{Bed, EVERY_100MS, bed, wait_for},
    http::{self, Answer, LOCAL_API},
    servers::Session,
};

fn get(b: &Bed, path: &str) -> Answer {
    b.topology.lb.run(|| http::get(LOCAL_API, path, &[]))
}

fn post(b: &Bed, path: &str, body: Value) -> Answer {
    b.topology.lb.run(|| http::post_json(LOCAL_API, path, &[], &body))
}

fn server(b: &Bed, name: &str) -> ServerView {
    let pool = get(b, "/api/v1/pools/p7");
    assert_eq!(pool.status, 200, "{pool:?}");
    pool.typed::<PoolView>().servers.into_iter().find(|s| s.name == name).expect("server")
}

/// Its state and why, as `lb pool show` writes it: "DRAINING (deadline)".
fn label(server: &ServerView) -> String {
    server.label().to_string()
}

#[test]
fn every_resource_answers_and_changes_take_effect_as_through_the_cli() {
    let b = bed(3);
    let pools = get(&b, "/api/v1/pools");
    assert_eq!(pools.status, 200);
    assert_eq!(pools.header("content-type"), Some("application/json"));
    assert_eq!(pools.json(), b.agent.lb_json::<Value>(&["pool", "list"]), "the HTTP API and the CLI answer alike");
    assert_eq!(pool_summary(&b, "p7").in_service, 3);

    let on_s1 = Session::start(b.connect_to("s1"), "s1", EVERY_100MS);
    let on_s2 = Session::start(b.connect_to("s2"), "s2", None);
    wait_for("s1's flows counted", Duration::from_secs(5), || server(&b, "s1").active_flows >= 1);
    let s1 = server(&b, "s1");
    assert_eq!(s1.address, format!("{}:7007", b.topology.server("s1").addr));
    assert_eq!((s1.weight, label(&s1).as_str()), (1, "ENABLED"));
    assert!(s1.new_flows >= 1 && s1.bytes_to > 0, "{s1:?}");

    let answer = post(&b, "/api/v1/pools/p7/disable", json!({"servers":["s1"],"mode":"graceful","timeout":"1m"}));
    assert_eq!(answer.status, 200, "{answer:?}");
    let changes: Vec<Change> = answer.typed();
    assert_eq!(changes[0].to.to_string(), "DRAINING (deadline)");
    let s1 = server(&b, "s1");
    assert_eq!(label(&s1), "DRAINING (deadline)");
    let left = s1.deadline_left_ms.expect("a deadline");
    assert!((55_000..=60_000).contains(&left), "deadline left {left} ms");
    let before = on_s1.exchanges();
    wait_for("s1's session goes on", Duration::from_secs(2), || on_s1.exchanges() > before + 3);
    assert!(on_s1.ended().is_none());

    let answer = post(&b, "/api/v1/pools/p7/disable", json!({"servers":["s2"],"mode":"immediate"}));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(label(&server(&b, "s2")), "DISABLED (immediate)");
    wait_for("s2's client reset", Duration::from_secs(2), || on_s2.ended().is_some());
    assert_eq!(on_s2.ended().unwrap().kind, ErrorKind::ConnectionReset);

    let answer = post(&b, "/api/v1/pools/p7/enable", json!({"servers":["s1","s2"]}));
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!((label(&server(&b, "s1")), label(&server(&b, "s2"))), ("ENABLED".into(), "ENABLED".into()));
    drop(b.connect_to("s2"));

    let typed: Vec<Event> = get(&b, "/api/v1/events").typed();
    let kinds: Vec<(&str, EventKind)> =
        typed.iter().map(|e| (e.subject.server_name().expect("a server's"), e.kind)).collect();
    use EventKind::{Disabled, Draining, Enabled};
    assert_eq!(kinds, [("s1", Draining), ("s2", Disabled), ("s1", Enabled), ("s2", Enabled)]);
    let first = typed[0].id;
    let later: Vec<Event> = get(&b, &format!("/api/v1/events?since={first}")).typed();
    assert_eq!(later.len(), 3);
    assert_eq!(later, b.agent.events()[1..], "the HTTP API and the socket answer alike");

    let stats: Stats = get(&b, "/api/v1/stats").typed();
    assert!(stats.outcomes.len() > 10, "{stats:?}");
    assert_eq!(stats.flow_table.max_flows, lb_common::DEFAULT_MAX_FLOWS);
    drop(on_s1);
}

#[test]
fn the_event_stream_delivers_each_change_live_and_resumes_after_an_id() {
    let b = bed(2);
    // A live connection on s1, so that its drains below are not over (a
    // "drained" event) before the enables that follow them.
    let _on_s1 = Session::start(b.connect_to("s1"), "s1", None);
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let ns = &b.topology.lb;
    std::thread::scope(|scope| {
        scope.spawn(|| {
            ns.run(|| {
                let mut stream = TcpStream::connect(LOCAL_API).unwrap();
                stream.write_all(b"GET /api/v1/events/stream HTTP/1.1\r\nHost: lb\r\n\r\n").unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                for line in BufReader::new(stream).lines() {
                    let Ok(line) = line else { return };
                    if lines_tx.send(line).is_err() {
                        return;
                    }
                }
            })
        });
        // The stream's headers come first: after them, it follows.
        let status = lines.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut head = Vec::new();
        while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
            if line.is_empty() {
                break;
            }
            head.push(line.to_ascii_lowercase());
        }
        assert!(head.contains(&"content-type: text/event-stream".to_owned()), "{head:?}");

        let sent = Instant::now();
        let answer = post(&b, "/api/v1/pools/p7/disable", json!({"servers":["s1"],"mode":"graceful","timeout":"1m"}));
        assert_eq!(answer.status, 200);
        let event = next_event(&lines);
        assert!(sent.elapsed() < Duration::from_secs(1), "the event came {:?} after the change", sent.elapsed());
        assert_eq!((&event.subject, event.kind), (&Subject::server("p7", "s1"), EventKind::Draining));
        assert_eq!(post(&b, "/api/v1/pools/p7/enable", json!({"servers":["s1"]})).status, 200);
        let enabled = next_event(&lines);
        assert_eq!((enabled.kind, enabled.id), (EventKind::Enabled, event.id + 1));
        drop(lines);
        // The stream ends when the agent stops, and with it the reader.
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(b.agent.pid() as i32, libc::SIGTERM) };
    });
    // Resuming: a new stream with ?since= gets what came after.
    let b = bed(2);
    let _on_s1 = Session::start(b.connect_to("s1"), "s1", None);
    post(&b, "/api/v1/pools/p7/disable", json!({"servers":["s1"],"mode":"graceful"}));
    post(&b, "/api/v1/pools/p7/enable", json!({"servers":["s1"]}));
    let first = get(&b, "/api/v1/events").typed::<Vec<Event>>()[0].id;
    let text = b.topology.lb.run(|| {
        let mut stream = TcpStream::connect(LOCAL_API).unwrap();
        let request = format!("GET /api/v1/events/stream HTTP/1.1\r\nHost: lb\r\nLast-Event-ID: {first}\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        while !line.starts_with("data:") {
            line.clear();
            reader.read_line(&mut line).unwrap();
        }
        line
    });
    let resumed: Event = serde_json::from_str(text.trim_start_matches("data:").trim()).expect("an event");
    assert_eq!((resumed.id, resumed.kind), (first + 1, EventKind::Enabled));
}

/// The next `data:` line of an event stream, as an event.
fn next_event(lines: &std::sync::mpsc::Receiver<String>) -> Event {
    loop {
        let line = lines.recv_timeout(Duration::from_secs(5)).expect("an event within 5 s");
        if let Some(data) = line.strip_prefix("data:") {
            return serde_json::from_str(data.trim()).unwrap_or_else(|e| panic!("not an event ({e}): {data}"));
        }
    }
}

#[test]
fn every_refusal_has_its_status_names_the_field_and_changes_nothing() {
    let b = bed(2);
    let state = || (get(&b, "/api/v1/pools/p7").typed::<PoolView>().servers, get(&b, "/api/v1/events").body);
    let before = state();
    let disable = "/api/v1/pools/p7/disable";
    let cases: Vec<(Answer, u16, &str)> = vec![
        (get(&b, "/api/v1/pools/nope"), 404, "unknown pool"),
        (post(&b, "/api/v1/pools/nope/disable", json!({"servers":["s1"],"mode":"immediate"})), 404, "unknown pool"),
        (post(&b, disable, json!({"servers":["s1","s9"],"mode":"immediate"})), 404, "s9"),
        (post(&b, disable, json!({"servers":["s1"],"mode":"later"})), 400, "mode: "),
        (post(&b, disable, json!({"servers":["s1"],"mode":"graceful","timeout":"5 parsecs"})), 400, "timeout: "),
        (post(&b, disable, json!({"mode":"immediate"})), 400, "servers: "),
        (post(&b, disable, json!({"servers":["s1"],"mode":"immediate","forse":true})), 400, "forse: unknown field"),
        (post(&b, disable, json!({"servers":["s1","s2"],"mode":"immediate"})), 409, "no enabled server"),
        (post(&b, "/api/v1/pools/p7/enable", json!({"servers":"s1"})), 400, "servers: "),
        (raw(&b, "POST", disable, &[("Content-Type", "application/x-www-form-urlencoded")], "servers=s1"), 415, "JSON"),
        (raw(&b, "POST", disable, &[("Content-Type", "application/json")], "{\"servers\":"), 400, "not valid JSON"),
        (raw(&b, "POST", disable, &[("Content-Type", "application/json")], &big_body()), 413, "over 16384 bytes"),
        (raw(&b, "DELETE", "/api/v1/pools/p7", &[], ""), 405, "DELETE is not allowed"),
        (get(&b, "/api/v1/nothing"), 404, "no such resource"),
        (get(&b, "/api/v2/pools"), 404, "no such resource"),
        (get(&b, "/api/v1/events?since=yesterday"), 400, "since: "),
    ];
    for (answer, status, says) in &cases {
        assert_eq!(answer.status, *status, "{answer:?}");
        let error = answer.refusal().message;
        assert!(error.contains(says), "{status}: {error:?} should say {says:?}");
    }
    assert_eq!(state(), before, "a refused request changed something");
    assert!(cases.iter().all(|(a, ..)| a.header("access-control-allow-origin").is_none()), "no CORS header, ever");

    // The guard's refusal, forced.
    let forced = post(&b, disable, json!({"servers":["s1","s2"],"mode":"graceful","force":true}));
    assert_eq!(forced.status, 200, "{forced:?}");
    assert_eq!(pool_summary(&b, "p7").in_service, 0);
}

fn pool_summary(b: &Bed, name: &str) -> PoolSummary {
    let pools: Vec<PoolSummary> = get(b, "/api/v1/pools").typed();
    pools.into_iter().find(|p| p.pool == name).expect("pool")
}

fn raw(b: &Bed, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
    b.topology.lb.run(|| http::request(LOCAL_API, method, path, headers, Some(body))).expect("request")
}

fn big_body() -> String {
    format!("{{\"servers\":[\"s1\"],\"mode\":\"immediate\",\"pad\":\"{}\"}}", "x".repeat(20_000))
}

#[test]
fn a_token_guards_the_api_off_loopback_and_the_agent_refuses_to_start_without_one() {
    let topology = testbed::topology::Topology::new(1);
    let services = [testbed::topology::ServiceSpec { port: 7, protocol: "tcp", server_port: 7007, weights: vec![1] }];
    let open = topology.config(&services).set("http.listen", "0.0.0.0:8480");
    std::fs::create_dir_all(topology.dir()).unwrap();
    let path = topology.dir().join("open.toml");
    std::fs::write(&path, open.text()).unwrap();
    let out = topology
        .lb
        .command(testbed::agent::lb_bin())
        .args(["agent", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the agent started on 0.0.0.0 without a token");
    assert!(stderr.contains("http.token_file: required"), "{stderr}");
    assert!(!std::path::Path::new("/sys/fs/bpf").join(topology.instance()).join("link_lbc").exists());

    let token_file = topology.dir().join("token");
    std::fs::write(&token_file, "s3cret-token\n").unwrap();
    let guarded = open.set("http.token_file", token_file.display().to_string());
    let agent = testbed::agent::Agent::start(&topology, &guarded);
    // From the client's namespace, over the wire, to the balancer's address.
    let at = "10.0.0.1:8480";
    let call = |path: &str, headers: &[(&str, &str)]| topology.client.run(|| http::get(at, path, headers));
    let missing = call("/api/v1/pools", &[]);
    assert_eq!((missing.status, missing.header("www-authenticate")), (401, Some("Bearer")));
    assert!(missing.refusal().message.contains("Authorization: Bearer"), "{missing:?}");
    assert_eq!(call("/api/v1/pools", &[("Authorization", "Bearer wrong")]).status, 401);
    assert_eq!(call("/api/v1/pools", &[("Authorization", "Bearer s3cret-token")]).status, 200);
    let refused = topology
        .client
        .run(|| http::post_json(at, "/api/v1/pools/p7/disable", &[], &json!({"servers":["s1"],"mode":"immediate"})));
    assert_eq!(refused.status, 401);
    assert_eq!(call("/metrics", &[]).status, 200, "metrics need no token");
    let page = call("/", &[]);
    assert_eq!(page.status, 200, "the page needs no token (it asks for it)");
    assert!(page.header("content-security-policy").is_some_and(|p| p.contains("default-src 'self'")));
    drop(agent);
}

#[test]
fn slow_or_idle_clients_cannot_stall_the_api() {
    let b = bed(1);
    b.topology.lb.run(|| {
        // A client that sends half its headers and waits.
        let mut slow = TcpStream::connect(LOCAL_API).unwrap();
        slow.write_all(b"GET /api/v1/pools HTTP/1.1\r\nHost: x\r\n").unwrap();
        // One that announces a body and never sends it.
        let mut stalled = TcpStream::connect(LOCAL_API).unwrap();
        stalled
            .write_all(b"POST /api/v1/pools/p7/enable HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            .unwrap();
        // Connections that say nothing, up to the limit.
        let idle: Vec<TcpStream> = (0..254).map(|_| TcpStream::connect(LOCAL_API).unwrap()).collect();
        let busy = http::get(LOCAL_API, "/api/v1/pools", &[]);
        assert_eq!(busy.status, 503, "over the connection limit: {busy:?}");
        assert_eq!(busy.refusal().code, ErrorCode::Busy);
        drop(idle);
        std::thread::sleep(Duration::from_millis(200));
        let started = Instant::now();
        assert_eq!(http::get(LOCAL_API, "/api/v1/pools", &[]).status, 200);
        assert!(started.elapsed() < Duration::from_secs(1));
        // The slow ones are dropped after the read timeout (5 s).
        for (what, stream) in [("half headers", &mut slow), ("missing body", &mut stalled)] {
            stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let mut answer = String::new();
            let _ = std::io::Read::read_to_string(stream, &mut answer);
            let waited = started.elapsed();
            assert!(waited < Duration::from_secs(8), "{what}: held for {waited:?}");
            assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 408"), "{what}: {answer}");
        }
    });
}

#[test]
fn the_metrics_pass_promtool_and_agree_with_the_api() {
    let b = bed(2);
    let _sessions =
        [Session::start(b.connect_to("s1"), "s1", EVERY_100MS), Session::start(b.connect_to("s2"), "s2", EVERY_100MS)];
    post(&b, "/api/v1/pools/p7/disable", json!({"servers":["s2"],"mode":"graceful","timeout":"90s"}));
    // Exactly its session: a probe connection that landed on s1 before it
    // (and closed) leaves the count once its closing time is over, which
    // must not happen between the scrape and the API read compared below.
    wait_for("s1's flow counted, alone", Duration::from_secs(15), || server(&b, "s1").active_flows == 1);
    let scrape = get(&b, "/metrics");
    assert_eq!(scrape.status, 200);
    assert!(scrape.header("content-type").unwrap().starts_with("text/plain; version=0.0.4"));
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus, installed by cargo xtask setup)");
    promtool.stdin.take().unwrap().write_all(scrape.body.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&checked.stdout).to_string() + &String::from_utf8_lossy(&checked.stderr);
    assert!(checked.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n{}", scrape.body);

    let value = |series: &str| -> f64 {
        let line = scrape.body.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let s1 = server(&b, "s1");
    assert_eq!(value("lb_server_state{pool=\"p7\",server=\"s1\",state=\"enabled\"}"), 1.0);
    assert_eq!(value("lb_server_state{pool=\"p7\",server=\"s2\",state=\"draining\"}"), 1.0);
    assert_eq!(value("lb_server_state{pool=\"p7\",server=\"s2\",state=\"enabled\"}"), 0.0);
    assert_eq!(value("lb_server_active_flows{pool=\"p7\",server=\"s1\"}"), s1.active_flows as f64);
    assert_eq!(value("lb_server_new_flows_total{pool=\"p7\",server=\"s1\"}"), s1.new_flows as f64);
    let left = value("lb_server_drain_deadline_left_seconds{pool=\"p7\",server=\"s2\"}");
    assert!((80.0..=90.0).contains(&left), "{left}");
    assert!(value("lb_server_packets_total{pool=\"p7\",server=\"s1\",direction=\"to_server\"}") > 0.0);
    let stats: Stats = get(&b, "/api/v1/stats").typed();
    let forwarded = stats.outcomes.get("forward_flow").copied().unwrap_or(0) as f64;
    assert!(value("lb_packets_total{outcome=\"forward_flow\"}") <= forwarded + 0.5, "counters only grow");
    assert_eq!(value("lb_flow_table_max_flows"), f64::from(stats.flow_table.max_flows));
    assert!(scrape.body.contains(&format!(
        "lb_info{{version=\"{}\",instance=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION"),
        b.topology.instance()
    )));
}

#[test]
fn a_reload_through_the_api_answers_what_changed_and_the_metrics_say_how_it_went() {
    let b = bed(2);
    let metric = |name: &str| -> f64 {
        let body = get(&b, "/metrics").body;
        let line = body.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(metric("lb_config_last_reload_successful"), 1.0, "the start's config runs");
    let heavier = b.config.clone().server_set("p7", "s1", "weight", 3);
    b.write_config(&heavier);

    let dry = post(&b, "/api/v1/reload", json!({"dry_run": true}));
    assert_eq!(dry.status, 200, "{}", dry.body);
    let report: ReloadReport = dry.typed();
    assert!(!report.applied);
    assert_eq!(report.changes[0], "p7/s1 weight 1 -> 3");
    assert_eq!(server(&b, "s1").weight, 1, "a dry run changes nothing");
    let bad = post(&b, "/api/v1/reload", json!({"dryrun": true}));
    assert_eq!((bad.status, bad.refusal().code), (400, ErrorCode::BadRequest));
    assert!(bad.refusal().message.starts_with("dryrun: unknown field"), "{}", bad.body);

    let applied = post(&b, "/api/v1/reload", json!({}));
    assert_eq!(applied.status, 200, "{}", applied.body);
    assert_eq!(server(&b, "s1").weight, 3);
    assert_eq!(metric("lb_config_reloads_total{result=\"applied\"}"), 1.0);

    b.write_config(&heavier.clone().server_set("p7", "s1", "weight", -3));
    let refused = post(&b, "/api/v1/reload", json!({}));
    assert_eq!((refused.status, refused.refusal().code), (400, ErrorCode::InvalidConfig), "{}", refused.body);
    assert!(refused.refusal().message.contains("pools.p7.servers[0].weight"), "{}", refused.body);
    assert_eq!(server(&b, "s1").weight, 3, "nothing applied");
    assert_eq!(metric("lb_config_last_reload_successful"), 0.0, "the file on disk is not what runs");
    assert_eq!(metric("lb_config_reloads_total{result=\"refused\"}"), 1.0);
    b.write_config(&heavier.set("flows.max", 4096));
    let restart = post(&b, "/api/v1/reload", json!({}));
    assert_eq!((restart.status, restart.refusal().code), (409, ErrorCode::RestartNeeded), "{}", restart.body);
}
