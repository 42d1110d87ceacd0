//! The dashboard in a real headless Chromium, against the real agent in
//! namespaces with live client connections: Pools > pool > Servers; two
//! servers drained gracefully with a deadline (countdown, live flows, the
//! API agrees); one disabled at once (its clients reset), then enabled (new
//! connections reach it); the guard's refusal shown and forced; a drained
//! notice; a change made elsewhere shown within a second. Screenshots of
//! each step are kept in target/screenshots/dashboard/.

use std::{
    io::ErrorKind,
    time::{Duration, Instant},
};

use lb_userspace::datapath::flow_table::FlowTable;
use lb_userspace::model::{PoolView, ServerState, ServerView, Why};
use serde_json::Value;
use testbed::{
    bed::{Bed, ECHO, EVERY_100MS, bed, bed_of, bed_with, echo_services, wait_for},
    bench::fill_flows,
    browser::Browser,
    fleet::Fleet,
    health_server::{HealthServer, Reply},
    http::{self, LOCAL_API},
    servers::Session,
    topology::VIP,
};

const SECOND: Duration = Duration::from_secs(1);

fn api_pool() -> PoolView {
    http::get(LOCAL_API, "/api/v1/pools/p7", &[]).typed()
}

fn api_server(name: &str) -> ServerView {
    api_pool().servers.into_iter().find(|s| s.name == name).expect("server")
}

/// A row's cell, as the page shows it.
fn cell(server: &str, class: &str) -> String {
    format!("#servers tr[data-server=\"{server}\"] .{class}")
}

async fn tick(browser: &Browser, servers: &[&str]) {
    for server in servers {
        let css = format!("#servers tr[data-server=\"{server}\"] input[type=checkbox]");
        if !browser.find(&css).await.is_selected().await.unwrap() {
            browser.click(&css).await;
        }
    }
}

async fn untick_all(browser: &Browser) {
    browser.eval("document.querySelectorAll('#servers tbody input:checked').forEach(c => c.click()); return 0;").await;
}

#[test]
fn an_operator_takes_servers_out_of_service_from_the_dashboard() {
    let b = bed_with(4, |c| c.set("flows.sweep_interval", "500ms"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    // Everything in the balancer's namespace, where the agent serves HTTP on
    // its loopback and the browser runs.
    b.topology.lb.run(|| runtime.block_on(scenario(&b)));
}

async fn scenario(b: &Bed) {
    let sessions: Vec<Session> =
        ["s1", "s2", "s3"].iter().map(|s| Session::start(b.connect_to(s), s, EVERY_100MS)).collect();
    let mut browser = Browser::start(&b.topology.lb, "dashboard", 1280, 900).await;
    browser.goto(&format!("http://{LOCAL_API}/")).await;
    browser.wait_text("#pools tbody tr[data-key=\"p7\"] .up", 5 * SECOND, |t| t == "4 / 4").await;
    browser.screenshot("pools").await;

    // Pools > p7 > Servers
    browser.click("#pools a[href=\"#/pools/p7\"]").await;
    browser.wait_text(&cell("s1", "flows"), 5 * SECOND, |t| t == "1").await;
    assert_eq!(browser.text("[role=tab][aria-selected=true]").await, "Servers");
    browser.screenshot("pool-servers").await;

    gracefully_with_a_deadline(&mut browser).await;
    disable_at_once_then_enable(b, &mut browser, &sessions[2]).await;
    guard_refuses_then_forced(&mut browser).await;
    live_updates_and_a_drained_notice(b, &mut browser).await;
    assert!(sessions[..2].iter().all(|s| s.ended().is_none()), "the draining servers' sessions went on");
    report_agent_memory(b);
}

async fn gracefully_with_a_deadline(browser: &mut Browser) {
    tick(browser, &["s1", "s2"]).await;
    assert_eq!(browser.text("#selection").await, "2 selected: s1, s2");
    browser.click("#graceful").await;
    browser.click("#graceful-after").await;
    let n = browser.find("#graceful-n").await;
    n.clear().await.unwrap();
    n.send_keys("1").await.unwrap();
    browser.find("#graceful-unit").await.select_by_value("m").await.unwrap();
    browser.screenshot("gracefully-dialog").await;
    browser.click("#graceful-start").await;
    for s in ["s1", "s2"] {
        browser.wait_text(&cell(s, "state"), 2 * SECOND, |t| t == "DRAINING").await;
        assert_eq!(browser.text(&cell(s, "why")).await, "(deadline)");
        let api = api_server(s);
        assert_eq!((api.state, api.why), (ServerState::Draining, Some(Why::Deadline)));
        assert!(api.deadline_left_ms.expect("a deadline") > 55_000);
        assert_eq!(browser.text(&cell(s, "flows")).await, "1", "{s}'s live connection is counted");
    }
    let first = browser.wait_text(&cell("s1", "countdown"), 3 * SECOND, |t| t.starts_with("terminated in 0:5")).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = browser.text(&cell("s1", "countdown")).await;
    assert!(later < first, "the countdown runs: {first:?} then {later:?}");
    assert!(browser.text("#result").await.contains("s1: ENABLED → DRAINING (deadline)"));
    browser.screenshot("draining-with-countdown").await;
}

async fn disable_at_once_then_enable(b: &Bed, browser: &mut Browser, on_s3: &Session) {
    untick_all(browser).await;
    tick(browser, &["s3"]).await;
    browser.click("#disable").await;
    let question = browser.text("#confirm-text").await;
    assert!(question.contains("sessions will be terminated"), "{question}");
    browser.screenshot("disable-confirm").await;
    browser.click("#confirm-disable").await;
    browser.wait_text(&cell("s3", "state"), 2 * SECOND, |t| t == "DISABLED").await;
    assert_eq!(browser.text(&cell("s3", "why")).await, "(immediate)");
    assert_eq!(browser.text(&cell("s3", "source")).await, "· set by an operator");
    wait_for("s3's client reset", 2 * SECOND, || on_s3.ended().is_some());
    assert_eq!(on_s3.ended().unwrap().kind, ErrorKind::ConnectionReset);
    browser.screenshot("disabled-immediate").await;

    browser.click("#enable").await;
    browser.wait_text(&cell("s3", "state"), 2 * SECOND, |t| t == "ENABLED").await;
    drop(b.connect_to("s3"));
    browser.screenshot("enabled-again").await;
}

async fn guard_refuses_then_forced(browser: &mut Browser) {
    untick_all(browser).await;
    tick(browser, &["s3", "s4"]).await;
    browser.click("#disable").await;
    browser.click("#confirm-disable").await;
    let refusal = browser.wait_text("#result", 2 * SECOND, |t| t.starts_with("The last-server guard refused")).await;
    assert!(refusal.contains("no enabled server"), "{refusal}");
    assert_eq!(browser.text(&cell("s4", "state")).await, "ENABLED", "a refused change changes nothing");
    browser.screenshot("guard-refuses").await;
    browser.click("#force").await;
    browser.wait_text(&cell("s4", "state"), 2 * SECOND, |t| t == "DISABLED").await;
    assert_eq!(api_server("s3").state, ServerState::Disabled);
    browser.screenshot("forced").await;
}

async fn live_updates_and_a_drained_notice(b: &Bed, browser: &mut Browser) {
    // A change made elsewhere (the CLI) shows within a second.
    let (ok, _, stderr) = b.agent.lb(&["server", "enable", "p7", "s1", "s2", "s3", "s4"]);
    assert!(ok, "{stderr}");
    let changed = Instant::now();
    browser.wait_text(&cell("s4", "state"), 2 * SECOND, |t| t == "ENABLED").await;
    assert!(changed.elapsed() < SECOND, "the page showed the CLI's change after {:?}", changed.elapsed());

    // s4 has no flows: drained at the next count, and the page says so.
    untick_all(browser).await;
    tick(browser, &["s4"]).await;
    browser.click("#graceful").await;
    browser.click("#graceful-until-drained").await;
    browser.click("#graceful-start").await;
    let notice = browser.wait_text("#notices .notice", 5 * SECOND, |t| !t.is_empty()).await;
    assert!(notice.contains("p7/s4 drained"), "{notice}");
    browser.wait_text(&cell("s4", "why"), SECOND, |t| t == "(drained)").await;
    browser.wait_text("#events li", SECOND, |t| t.contains("drained")).await;
    browser.screenshot("drained-notice").await;

    // s4 removed from the config by a reload (gone at once: it has no flow);
    // s3 disabled there (`enabled = false`): the page says who set it.
    b.write_config(&b.config.clone().without_server("p7", "s4").server_set("p7", "s3", "enabled", false));
    let (ok, _, stderr) = b.agent.lb(&["reload"]);
    assert!(ok, "{stderr}");
    browser.wait_text(&cell("s3", "source"), 2 * SECOND, |t| t == "· set by the config").await;
    wait_for("s4 gone", 2 * SECOND, || api_pool().servers.len() == 3);
    let rows = "return document.querySelectorAll('#servers tbody tr').length";
    let shown = Instant::now();
    while browser.eval(rows).await != 3 {
        assert!(shown.elapsed() < 2 * SECOND, "s4's row is still on the page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    browser.screenshot("after-a-reload").await;

    // Narrow window: still readable.
    browser.client.set_window_size(420, 800).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    browser.screenshot("narrow").await;
}

/// The agent's resident memory with the dashboard open and live.
fn report_agent_memory(b: &Bed) {
    let status = std::fs::read_to_string(format!("/proc/{}/status", b.agent.pid())).unwrap();
    let rss_kib: u64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().trim().trim_end_matches(" kB").parse().unwrap();
    eprintln!("agent resident memory with the dashboard open and live: {:.1} MiB", rss_kib as f64 / 1024.0);
    assert!(rss_kib < 64 * 1024, "the agent uses {rss_kib} KiB");
}

/// A file holding the API's token, removed when dropped.
struct TokenFile(std::path::PathBuf);

impl Drop for TokenFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// How late the page's tokenless requests are answered, in the test below.
const LATE: Duration = Duration::from_secs(3);

/// Delays the answers to requests sent without a token by `LATE`, and
/// sends one such request now (the page's polls send more).
fn late_tokenless_answers() -> String {
    format!(
        "const fetchNow = window.fetch;
        window.fetch = (path, init) => {{
            const answer = fetchNow(path, init);
            if (init && init.headers && init.headers.Authorization) return answer;
            return answer.then(r => new Promise(done => setTimeout(() => done(r), {})));
        }};
        api('GET', '/api/v1/pools').catch(() => {{}});
        return 0;",
        LATE.as_millis()
    )
}

#[test]
fn the_page_asks_for_the_token_once_and_keeps_it_for_the_tab() {
    let token = TokenFile(std::env::temp_dir().join(format!("lb-dashboard-token-{}", std::process::id())));
    std::fs::write(&token.0, "page-s3cret\n").unwrap();
    let token_file = token.0.display().to_string();
    let b = bed_with(2, |c| c.set("http.listen", "0.0.0.0:8480").set("http.token_file", token_file));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    b.topology.lb.run(|| {
        runtime.block_on(async {
            let mut browser = Browser::start(&b.topology.lb, "dashboard-token", 1024, 700).await;
            // The balancer's own address on the client side: not loopback.
            browser.goto("http://10.0.0.1:8480/").await;
            browser.wait_text("#token-dialog[open] p", 5 * SECOND, |t| t.contains("a token is needed")).await;
            browser.screenshot("token-asked").await;
            browser.find("#token-input").await.send_keys("wrong").await.unwrap();
            browser.click("#token-form button[type=submit]").await;
            browser.wait_text("#token-dialog[open] p", 5 * SECOND, |t| t.contains("the token is wrong")).await;
            // Refusals of requests sent without a token come back late, after
            // the right one is entered: they must not undo it.
            browser.eval(&late_tokenless_answers()).await;
            browser.find("#token-input").await.send_keys("page-s3cret").await.unwrap();
            browser.click("#token-form button[type=submit]").await;
            browser.wait_text("#pools tbody tr[data-key=\"p7\"] .up", 5 * SECOND, |t| t == "2 / 2").await;
            tokio::time::sleep(LATE + SECOND).await;
            let kept = "return [document.getElementById('token-dialog').open, sessionStorage.getItem('lb-token')];";
            assert_eq!(
                browser.eval(kept).await,
                serde_json::json!([false, "page-s3cret"]),
                "a late refusal undid the token"
            );
            // Kept for the tab: a reload and another page ask nothing.
            browser.client.refresh().await.unwrap();
            // The list is drawn after its first fetch: wait for it, then go on.
            browser.wait_text("#pools tbody tr[data-key=\"p7\"] .up", 5 * SECOND, |t| t == "2 / 2").await;
            browser.click("#pools a[href=\"#/pools/p7\"]").await;
            browser.wait_text(&cell("s1", "state"), 5 * SECOND, |t| t == "ENABLED").await;
            assert_eq!(browser.eval("return document.getElementById('token-dialog').open;").await, Value::Bool(false));
            browser.screenshot("token-kept").await;
        })
    });
}

/// Presses `key` on whatever has the keyboard focus.
async fn press(browser: &Browser, key: fantoccini::key::Key) {
    let focused = browser.client.active_element().await.expect("a focused element");
    focused.send_keys(&char::from(key).to_string()).await.expect("key press");
}

#[test]
fn the_servers_tab_works_from_the_keyboard() {
    use fantoccini::key::Key;

    let b = bed(2);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    b.topology.lb.run(|| {
        runtime.block_on(async {
            let mut browser = Browser::start(&b.topology.lb, "dashboard-keyboard", 1024, 700).await;
            browser.goto(&format!("http://{LOCAL_API}/#/pools/p7")).await;
            browser.wait_text(&cell("s2", "state"), 5 * SECOND, |t| t == "ENABLED").await;
            // Tick s2 with the space bar.
            browser.eval("document.querySelector('#servers tr[data-server=\"s2\"] input').focus(); return 0;").await;
            press(&browser, Key::Space).await;
            browser.wait_text("#selection", SECOND, |t| t == "1 selected: s2").await;
            // Gracefully... with Enter; Escape cancels, and nothing changes.
            browser.eval("document.getElementById('graceful').focus(); return 0;").await;
            press(&browser, Key::Enter).await;
            let open = "return document.getElementById('graceful-dialog').open;";
            assert_eq!(browser.eval(open).await, Value::Bool(true), "Enter opens the dialog");
            press(&browser, Key::Escape).await;
            assert_eq!(browser.eval(open).await, Value::Bool(false), "Escape closes it");
            assert_eq!(api_server("s2").state, ServerState::Enabled, "a cancelled dialog changes nothing");
            // Again, and Tab to "Start draining": the radio group, N, the unit, Cancel, Start.
            browser.eval("document.getElementById('graceful').focus(); return 0;").await;
            press(&browser, Key::Enter).await;
            for _ in 0..4 {
                press(&browser, Key::Tab).await;
            }
            assert_eq!(browser.eval("return document.activeElement.id;").await, Value::from("graceful-start"));
            browser.screenshot("keyboard-start-focused").await;
            press(&browser, Key::Enter).await;
            browser.wait_text(&cell("s2", "state"), 2 * SECOND, |t| t != "ENABLED").await;
            assert_ne!(api_server("s2").state, ServerState::Enabled);
        })
    });
}

#[test]
fn the_servers_tab_shows_what_the_health_monitors_found() {
    let monitor = [("kind", "tcp".into()), ("interval", "300ms".into()), ("timeout", "200ms".into())];
    let mut b = bed_with(2, |c| c.monitor("p7", monitor));
    b.echo[0].stop();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    b.topology.lb.run(|| {
        runtime.block_on(async {
            let mut browser = Browser::start(&b.topology.lb, "dashboard-health", 1024, 700).await;
            browser.goto(&format!("http://{LOCAL_API}/#/pools/p7")).await;
            browser.wait_text(&cell("s1", "health"), 5 * SECOND, |t| t == "· DOWN (refused)").await;
            assert_eq!(browser.text(&cell("s1", "state")).await, "ENABLED", "the operator's state is apart");
            assert_eq!(browser.text(&cell("s2", "health")).await, "", "UP says nothing");
            browser.screenshot("health-down").await;
            // The Pools page counts a DOWN server out of service.
            browser.goto(&format!("http://{LOCAL_API}/#/pools")).await;
            browser.wait_text("#pools tbody tr[data-key=\"p7\"] .up", 5 * SECOND, |t| t == "1 / 2").await;
        })
    });
}

/// A cluster of three nodes, the browser on n1: the Nodes page, each
/// node's flows and health view on the pool page, and a drain decided on
/// n1's page taking effect on every node. Screenshots in
/// target/screenshots/dashboard-cluster/.
#[test]
fn in_a_cluster_the_dashboard_shows_the_nodes_and_a_drain_decided_there_reaches_every_node() {
    let (fleet, health) = Fleet::monitored(2);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    fleet.node("n1").topology.lb.run(|| runtime.block_on(cluster_scenario(&fleet, &health)));
}

async fn cluster_scenario(fleet: &Fleet, health: &[Vec<HealthServer>]) {
    let on_n2 = Session::start(fleet.node("n2").connect_to("s1"), "s1", EVERY_100MS);
    let mut browser = Browser::start(&fleet.node("n1").topology.lb, "dashboard-cluster", 1280, 900).await;
    browser.goto(&format!("http://{LOCAL_API}/")).await;
    wait_js(&browser, "!document.getElementById('nodes-link').hidden", 5 * SECOND).await;
    browser.click("#nodes-link").await;
    for node in ["n1", "n2", "n3"] {
        let row = format!("#nodes tr[data-key=\"{node}\"]");
        browser.wait_text(&format!("{row} .up"), 5 * SECOND, |t| t == "UP").await;
        assert!(browser.text(&format!("{row} .config")).await.ends_with("· same"));
    }
    assert_eq!(browser.text("#nodes tr[data-key=\"n1\"] .name").await, "n1 (this node)");
    let status = browser.text("#cluster-status").await;
    assert!(status.starts_with("This node: n1 · the store answers"), "{status}");
    assert_eq!(browser.text("#nodes tr[data-key=\"n3\"] .admin").await, "in service");
    browser.screenshot("nodes").await;

    // A node taken out of service through n2 (without [bgp] it announces
    // nothing, so no other node need take its VIPs), then put back: each
    // node's page shows its state.
    let (ok, out, err) = fleet.node("n2").agent.lb(&["node", "disable", "n3"]);
    assert!(ok, "{out}{err}");
    let n3 = "#nodes tr[data-key=\"n3\"]";
    browser.wait_text(&format!("{n3} .admin"), 5 * SECOND, |t| t == "disabled (withdrawn at once)").await;
    assert_eq!(browser.text(&format!("{n3} .announces")).await, "–");
    browser.screenshot("node-disabled").await;
    let (ok, out, err) = fleet.node("n1").agent.lb(&["node", "enable", "n3"]);
    assert!(ok, "{out}{err}");
    browser.wait_text(&format!("{n3} .admin"), 5 * SECOND, |t| t == "in service").await;

    // The same from this page: n2 taken out gracefully. Its session's
    // packets still reach it (no router here moves them), and the drain
    // shows them; then put back.
    let n2 = "#nodes tr[data-key=\"n2\"]";
    browser.click(&format!("{n2} .take-out")).await;
    browser.click("#node-take-out").await;
    let draining = |t: &str| t.starts_with("draining (withdrawn), 1 flow(s) still arriving");
    browser.wait_text(&format!("{n2} .admin"), 5 * SECOND, draining).await;
    let said = browser.text("#node-result").await;
    assert_eq!(said, "n2: in service → draining (withdrawn), until its flows have moved");
    browser.screenshot("node-draining").await;
    browser.click(&format!("{n2} .put-back")).await;
    browser.wait_text(&format!("{n2} .admin"), 5 * SECOND, |t| t == "in service").await;

    // The pool page: the fleet's flows by node; n3's own view of s1 in the
    // tooltip while the fleet finds it UP.
    browser.goto(&format!("http://{LOCAL_API}/#/pools/p7")).await;
    browser.wait_text(&cell("s1", "by-node"), 5 * SECOND, |t| t == "n1 0 · n2 1 · n3 0").await;
    assert_eq!(browser.text(&cell("s1", "flows")).await, "1", "the fleet's live flows");
    health[2][0].set(Reply::Off);
    browser.wait_text(&cell("s1", "health"), 10 * SECOND, |t| t == "· UP for the fleet (DOWN on n3)").await;
    let tooltip = browser.eval(&format!("return document.querySelector('{}').title;", cell("s1", "health"))).await;
    let tooltip = tooltip.as_str().unwrap_or_default().to_owned();
    assert!(tooltip.contains("n3: DOWN (refused)") && tooltip.contains("n1: UP"), "{tooltip}");
    browser.screenshot("pool-in-a-cluster").await;

    // Until drained, decided on n1's page: DRAINING on every node while n2
    // has the flow, drained everywhere once it ends.
    tick(&browser, &["s1"]).await;
    browser.click("#graceful").await;
    browser.click("#graceful-start").await;
    browser.wait_text(&cell("s1", "countdown"), 5 * SECOND, |t| t == "until the last flow ends").await;
    fleet.wait_state_everywhere("p7", "s1", "DRAINING (until drained)", 5 * SECOND);
    browser.screenshot("draining-on-every-node").await;
    drop(on_n2.finish());
    fleet.wait_state_everywhere("p7", "s1", "DISABLED (drained)", 10 * SECOND);
    browser.wait_text(&cell("s1", "state"), 5 * SECOND, |t| t == "DISABLED").await;
    browser.screenshot("drained-on-every-node").await;
}

async fn wait_js(browser: &Browser, condition: &str, timeout: Duration) {
    let start = Instant::now();
    while browser.eval(&format!("return Boolean({condition});")).await != Value::Bool(true) {
        assert!(start.elapsed() < timeout, "{condition} is still false after {timeout:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A drain you can watch: each server's row draws its live flows and new
/// flows/s over the last minutes, and a server's own page draws its live
/// flows against time with the drain's start and its deadline on the same
/// axis. Screenshots in target/screenshots/dashboard-charts/.
#[test]
fn a_drain_is_drawn_with_its_flows_against_its_deadline() {
    let b = bed_with(3, |c| c.set("flows.sweep_interval", "500ms"));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut on_s1: Vec<Session> = (0..4).map(|_| Session::start(b.connect_to("s1"), "s1", EVERY_100MS)).collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        // A steady stream of new connections, so that new flows/s is drawn.
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                b.new_connections(2);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let history = |server: &str| -> Vec<Value> {
            let h: Value = b.topology.lb.run(|| http::get(LOCAL_API, "/api/v1/pools/p7/history", &[]).typed());
            let servers = h["servers"].as_array().expect("servers").clone();
            let s = servers.into_iter().find(|s| s["name"] == server).expect("the server's history");
            s["points"].as_array().expect("points").clone()
        };
        wait_for("five points of history", 10 * SECOND, || history("s1").len() >= 5);
        b.lb(&["server", "disable", "p7", "s1", "--graceful", "--timeout", "2m"]);
        // Two of its four connections end: the drain progresses.
        for session in on_s1.drain(..2) {
            drop(session.finish());
        }
        wait_for("s1 counted at 2 flows", 5 * SECOND, || b.server("p7", "s1").active_flows == 2);
        wait_for("the history to see it", 5 * SECOND, || history("s1").last().is_some_and(|p| p["flows"] == 2));
        let s2 = history("s2");
        assert!(s2.iter().any(|p| p["new_per_s"].as_f64().unwrap() > 0.0), "new flows/s of s2: {s2:?}");
        b.topology.lb.run(|| runtime.block_on(charts(&b)));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    assert!(on_s1.iter().all(|s| s.ended().is_none()), "the drain's other connections go on");
}

async fn charts(b: &Bed) {
    let mut browser = Browser::start(&b.topology.lb, "dashboard-charts", 1280, 900).await;
    browser.goto(&format!("http://{LOCAL_API}/#/pools/p7")).await;
    let points = |css: &str| {
        format!(
            "return (document.querySelector('{css}')?.getAttribute('points') || '').split(' ').filter(Boolean).length;"
        )
    };
    let spark = "#servers tr[data-server=\"s1\"] .history svg polyline.flows";
    let start = Instant::now();
    while browser.eval(&points(spark)).await.as_u64().unwrap_or(0) < 5 {
        assert!(start.elapsed() < 5 * SECOND, "no sparkline of s1's flows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let said = browser
        .eval(
            "return document.querySelector('#servers tr[data-server=\"s2\"] .history svg').getAttribute('aria-label');",
        )
        .await;
    assert!(said.as_str().unwrap().contains("new flows/s now"), "{said}");
    browser.screenshot("pool-sparklines").await;

    // s1's own page: its flows against time, the drain's start and deadline.
    browser.click("#servers tr[data-server=\"s1\"] .name a").await;
    browser.wait_text("#server-facts", 3 * SECOND, |t| t.contains("2 flow(s) left, terminated at")).await;
    let chart = "#server-chart svg";
    let start = Instant::now();
    while browser.eval(&points(&format!("{chart} polyline.flows"))).await.as_u64().unwrap_or(0) < 5 {
        assert!(start.elapsed() < 5 * SECOND, "no chart of s1's flows");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let x = |css: &str| format!("return Number(document.querySelector('{chart} {css}')?.getAttribute('x1'));");
    let (since, now, deadline) = (
        browser.eval(&x("line.since")).await,
        browser.eval(&x("line.now")).await,
        browser.eval(&x("line.deadline")).await,
    );
    let (since, now, deadline) = (since.as_f64().unwrap(), now.as_f64().unwrap(), deadline.as_f64().unwrap());
    assert!(since < now && now < deadline, "the drain began, now, then its deadline: {since} {now} {deadline}");
    let label = browser.eval(&format!("return document.querySelector('{chart}').getAttribute('aria-label');")).await;
    assert!(label.as_str().unwrap().contains("drain deadline at"), "{label}");
    browser.screenshot("server-drain").await;
}

/// Rolling maintenance and ramp-up as the Servers tab shows them: two
/// servers announce maintenance with `max_in_maintenance = 1`, so one goes
/// and the other is shown UP but queued for maintenance; when their
/// maintenance ends, the one that was out comes back ramping up
/// (`ramp_up`), on its row and on its own page. Screenshots in
/// target/screenshots/dashboard-rolling/.
#[test]
fn the_servers_tab_shows_a_server_queued_for_maintenance_and_one_ramping_up() {
    let mut health = Vec::new();
    let monitor = [
        ("kind", "http".into()),
        ("maintenance_codes", vec![503].into()),
        ("interval", "300ms".into()),
        ("timeout", "200ms".into()),
        ("port", 8080.into()),
    ];
    let b = testbed::bed::bed_prepared(
        3,
        |c| c.set("pools.p7.max_in_maintenance", 1).set("pools.p7.ramp_up", "60s").monitor("p7", monitor),
        |t| health = t.servers.iter().map(|s| HealthServer::start(&s.ns, 8080)).collect(),
    );
    let up = |name: &str| api_server(name).health.is_some_and(|h| h.status == lb_userspace::model::HealthStatus::Up);
    b.topology.lb.run(|| wait_for("every server UP", 10 * SECOND, || ["s1", "s2", "s3"].iter().all(|n| up(n))));
    for h in &health[..2] {
        h.set(Reply::Status(503));
    }
    let queued = || api_pool().servers.into_iter().find(|s| s.health.as_ref().is_some_and(|h| h.queued.is_some()));
    let (out, waiting) = b.topology.lb.run(|| {
        wait_for("one out, one queued", 10 * SECOND, || queued().is_some());
        let waiting = queued().unwrap().name;
        let out = if waiting == "s1" { "s2" } else { "s1" };
        (out.to_owned(), waiting)
    });
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    b.topology.lb.run(|| {
        runtime.block_on(async {
            let mut browser = Browser::start(&b.topology.lb, "dashboard-rolling", 1280, 700).await;
            browser.goto(&format!("http://{LOCAL_API}/#/pools/p7")).await;
            let said = "· UP, queued for maintenance (1 in line)";
            browser.wait_text(&cell(&waiting, "health"), 5 * SECOND, |t| t == said).await;
            assert_eq!(browser.text(&cell(&waiting, "state")).await, "ENABLED", "it serves until its turn");
            assert_ne!(browser.text(&cell(&out, "state")).await, "ENABLED");
            browser.screenshot("queued-for-maintenance").await;

            // Maintenance over: the one that was out comes back, ramping up.
            for h in &health[..2] {
                h.set(Reply::Ok);
            }
            let ramping = |t: &str| t.starts_with("(ramping up: ") && t.ends_with("% of its weight)");
            browser.wait_text(&cell(&out, "why"), 10 * SECOND, ramping).await;
            assert_eq!(browser.text(&cell(&out, "state")).await, "ENABLED");
            browser.screenshot("ramping-up").await;
            browser.click(&format!("#servers tr[data-server=\"{out}\"] .name a")).await;
            browser.wait_text("#server-facts", 3 * SECOND, |t| t.contains("ENABLED (ramping up: ")).await;
            browser.screenshot("ramping-up-server-page").await;
        })
    });
}

/// An immediate disable of a server with a million flows: while their purge
/// and resets run (seconds), its row reads DISABLED, its flows being reset,
/// with the count of those going; then none left. Screenshot in
/// target/screenshots/dashboard-resetting/.
#[test]
fn a_server_whose_flows_are_being_reset_says_so_until_they_are() {
    // One pool, p7: a fresh instance numbers its servers in order, s1 is id 0.
    let b = bed_of(2, |topology| topology.config(&echo_services(2)[..1]).set("flows.max", 2_000_000));
    let flows = FlowTable::from_pins(&b.agent.pin_dir()).expect("pinned flow table");
    fill_flows(&flows, 0..1_000_000, (VIP, ECHO), |_| 0);
    wait_for("s1 counted at 1e6 flows", 30 * SECOND, || b.server("p7", "s1").active_flows == 1_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    b.topology.lb.run(|| {
        let mut browser = runtime.block_on(async {
            let browser = Browser::start(&b.topology.lb, "dashboard-resetting", 1280, 700).await;
            browser.goto(&format!("http://{LOCAL_API}/#/pools/p7")).await;
            browser.wait_text(&cell("s1", "flows"), 5 * SECOND, |t| t == "1,000,000").await;
            browser
        });
        std::thread::scope(|scope| {
            let disable = scope.spawn(|| b.lb(&["server", "disable", "p7", "s1"]));
            runtime.block_on(async {
                // The row's state, why and flows (those going), read at once.
                let row = "return ['state', 'why', 'flows'].map(c => document.querySelector(\
                           `#servers tr[data-server=\"s1\"] .${c}`).textContent).join('|');";
                let start = Instant::now();
                loop {
                    let seen = browser.eval(row).await;
                    if seen == "DISABLED|(immediate) · resetting its flows|1,000,000" {
                        break;
                    }
                    assert!(start.elapsed() < 10 * SECOND, "s1's row never read as being reset: {seen}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                browser.screenshot("resetting").await;
            });
            let said = disable.join().expect("the disable");
            assert!(said.contains("1000000 live TCP flow(s) reset"), "{said}");
        });
        runtime.block_on(async {
            browser.wait_text(&cell("s1", "why"), 5 * SECOND, |t| t == "(immediate)").await;
            browser.wait_text(&cell("s1", "flows"), 5 * SECOND, |t| t == "0").await;
            browser.screenshot("reset").await;
        });
    });
}
