//! The operator's commands (`lb server ...`, `lb pool ...`, `lb events`):
//! clients of the agent's API that print for people, or JSON with `--json`.
//! They depend on the API's model and client only, not on the agent.

mod table;

use std::{
    io::{IsTerminal as _, Write as _},
    path::Path,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::{Context as _, bail};
use serde::de::DeserializeOwned;
use serde_json::Value;

use self::table::{
    Align::{Left, Right},
    Table,
};
use crate::{
    api::client,
    config::{format_time_left, parse_duration},
    model::{
        Change, DisableMode, ErrorCode, Event, NodeAdmin, NodeChange, NodeDisabled, NodesView, PoolSummary, PoolView,
        ReloadReport, Request, ServerState, ServerView, Stats,
    },
};

/// How `lb server disable` was asked to disable.
pub struct DisableArgs {
    pub graceful: bool,
    pub timeout: Option<String>,
    pub until_drained: bool,
    pub force: bool,
    pub wait: bool,
}

impl DisableArgs {
    /// Checked before the agent is contacted, so bad input changes nothing.
    pub fn mode(&self) -> anyhow::Result<DisableMode> {
        if !self.graceful {
            if self.timeout.is_some() || self.until_drained {
                bail!("--timeout and --until-drained go with --graceful");
            }
            return Ok(DisableMode::Immediate);
        }
        match (&self.timeout, self.until_drained) {
            (Some(_), true) => bail!("choose one of --timeout and --until-drained"),
            (Some(text), false) => {
                let timeout = parse_duration(text).with_context(|| format!("invalid --timeout {text:?}"))?;
                if timeout.is_zero() {
                    bail!("invalid --timeout {text:?}: use a duration above zero, or disable without --graceful");
                }
                Ok(DisableMode::Graceful { timeout_ms: Some(timeout.as_millis() as u64) })
            }
            // --graceful alone drains until the last flow ends.
            (None, _) => Ok(DisableMode::Graceful { timeout_ms: None }),
        }
    }
}

fn call<T: DeserializeOwned>(socket: &Path, request: &Request) -> anyhow::Result<(T, Value)> {
    let data = client::call(socket, request)?;
    let typed = serde_json::from_value(data.clone()).context("unexpected answer from the agent")?;
    Ok((typed, data))
}

fn refused_by_guard(e: &anyhow::Error) -> bool {
    refused_for(e, ErrorCode::LastServer)
}

fn refused_for(e: &anyhow::Error, code: ErrorCode) -> bool {
    matches!(e.downcast_ref::<client::ClientError>(), Some(client::ClientError::Refused(r)) if r.code == code)
}

fn print_json(data: &Value) {
    println!("{}", serde_json::to_string_pretty(data).expect("JSON prints"));
}

pub fn disable(socket: &Path, pool: &str, servers: &[String], args: &DisableArgs, json: bool) -> anyhow::Result<()> {
    let mode = args.mode()?;
    let request = Request::Disable { pool: pool.to_owned(), servers: servers.to_vec(), mode, force: args.force };
    let (changes, data): (Vec<Change>, Value) = match call(socket, &request) {
        Err(e) if refused_by_guard(&e) => anyhow::bail!("{e} (add --force)"),
        other => other?,
    };
    if json && !args.wait {
        print_json(&data);
        return Ok(());
    }
    if !json {
        print_changes(&changes);
    }
    if args.wait {
        wait_until_disabled(socket, pool, servers, json)?;
    }
    Ok(())
}

pub fn enable(socket: &Path, pool: &str, servers: &[String], force: bool, json: bool) -> anyhow::Result<()> {
    let request = Request::Enable { pool: pool.to_owned(), servers: servers.to_vec(), force };
    let (changes, data): (Vec<Change>, Value) = match call(socket, &request) {
        Err(e) if refused_for(&e, ErrorCode::InMaintenance) => anyhow::bail!("{e} (add --force)"),
        other => other?,
    };
    if json {
        print_json(&data);
    } else {
        print_changes(&changes);
    }
    Ok(())
}

fn print_changes(changes: &[Change]) {
    for c in changes {
        if c.from == c.to {
            println!("{}/{}: {} (unchanged)", c.pool, c.server, c.to);
        } else {
            let resets = c.flows_reset.map(|n| format!(", {n} live TCP flow(s) reset")).unwrap_or_default();
            println!("{}/{}: {} -> {}{resets}", c.pool, c.server, c.from, c.to);
        }
    }
}

/// Follows the drain of `servers` with a progress line until each is DISABLED
/// and its flows, if any were left at the deadline, are reset: on a terminal
/// one line redrawn, with a bar; otherwise a line per change.
fn wait_until_disabled(socket: &Path, pool: &str, servers: &[String], json: bool) -> anyhow::Result<()> {
    let tty = std::io::stderr().is_terminal();
    let mut last_line = String::new();
    let mut most = 0;
    loop {
        let (view, data): (PoolView, Value) = call(socket, &Request::PoolShow { pool: pool.to_owned() })?;
        let targets: Vec<_> = view.servers.iter().filter(|s| servers.contains(&s.name)).collect();
        if let Some(s) = targets.iter().find(|s| s.state == ServerState::Enabled) {
            if tty {
                eprintln!();
            }
            bail!("{pool}/{} was enabled again while waiting", s.name);
        }
        if targets.iter().all(|s| s.state == ServerState::Disabled && !s.resetting) {
            if tty && !last_line.is_empty() {
                eprintln!();
            }
            if json {
                print_json(&data);
            } else {
                for s in targets {
                    println!("{pool}/{}: {}", s.name, s.label());
                }
            }
            return Ok(());
        }
        let draining: Vec<&ServerView> = targets.iter().copied().filter(|s| s.state == ServerState::Draining).collect();
        most = most.max(draining.iter().map(|s| s.active_flows).sum());
        let line =
            if draining.is_empty() { resetting_line(pool, &targets) } else { drain_line(pool, &draining, most, tty) };
        if tty {
            eprint!("\r\x1b[K{line}");
            let _ = std::io::stderr().flush();
        } else if line != last_line {
            eprintln!("{line}");
        }
        last_line = line;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// "draining web: s1: 3 flow(s), 1m20s left"; on a terminal, a bar of the
/// flows gone since the wait began (`most`: the most seen at once) first.
fn drain_line(pool: &str, draining: &[&ServerView], most: u64, tty: bool) -> String {
    let parts: Vec<String> = draining
        .iter()
        .map(|s| {
            let left = match s.deadline_left_ms {
                Some(ms) => format!("{} left", format_time_left(Duration::from_millis(ms))),
                None => "no deadline".to_owned(),
            };
            format!("{}: {} flow(s), {left}", s.name, s.active_flows)
        })
        .collect();
    if !tty {
        return format!("draining {pool}: {}", parts.join("; "));
    }
    const WIDTH: u64 = 20;
    // None seen yet: the agent has not counted them since the drain began
    // (a drain with no flow left ends at its first count).
    if most == 0 {
        return format!("draining {pool} [{}] counting · {}", "-".repeat(WIDTH as usize), parts.join("; "));
    }
    let left: u64 = draining.iter().map(|s| s.active_flows).sum();
    let gone = most.saturating_sub(left);
    let filled = gone * WIDTH / most;
    let bar = format!("{}{}", "#".repeat(filled as usize), "-".repeat((WIDTH - filled) as usize));
    format!("draining {pool} [{bar}] {:>3}% drained · {}", gone * 100 / most, parts.join("; "))
}

/// "web: s1: resetting 3 flow(s)": the servers whose flows are being reset.
fn resetting_line(pool: &str, targets: &[&ServerView]) -> String {
    let parts: Vec<String> = targets
        .iter()
        .filter(|s| s.resetting)
        .map(|s| format!("{}: resetting {} flow(s)", s.name, s.active_flows))
        .collect();
    format!("{pool}: {}", parts.join("; "))
}

pub fn pool_list(socket: &Path, json: bool) -> anyhow::Result<()> {
    let (pools, data): (Vec<PoolSummary>, Value) = call(socket, &Request::PoolList)?;
    if json {
        print_json(&data);
        return Ok(());
    }
    let mut table = Table::new(&[
        ("POOL", Left),
        ("SERVERS", Right),
        ("ENABLED", Right),
        ("DRAINING", Right),
        ("DISABLED", Right),
        ("SERVICES", Left),
    ]);
    for p in pools {
        let counts = [p.servers, p.enabled, p.draining, p.disabled].map(|n| n.to_string());
        table.row([vec![p.pool], counts.to_vec(), vec![p.services.join(", ")]].concat());
    }
    print!("{}", table.render());
    Ok(())
}

pub fn pool_show(socket: &Path, pool: &str, json: bool) -> anyhow::Result<()> {
    let (view, data): (PoolView, Value) = call(socket, &Request::PoolShow { pool: pool.to_owned() })?;
    if json {
        print_json(&data);
    } else {
        print!("{}", pool_text(view));
    }
    Ok(())
}

/// A pool as `lb pool show` prints it: its services, then a line a server.
fn pool_text(view: PoolView) -> String {
    let mut text = format!("pool {}  services: {}\n", view.pool, view.services.join(", "));
    let left = |ms: Option<u64>| ms.map(|ms| format_time_left(Duration::from_millis(ms))).unwrap_or("-".into());
    for l in &view.leaving_services {
        let deadline = left(l.deadline_left_ms);
        text += &format!("  service {} removed: {} live flow(s), deadline {deadline}\n", l.service, l.active_flows);
    }
    let monitored = view.servers.iter().any(|s| s.health.is_some());
    let mut columns = vec![
        ("SERVER", Left),
        ("ADDRESS", Left),
        ("WEIGHT", Right),
        ("STATE", Left),
        ("SOURCE", Left),
        ("FLOWS", Right),
        ("DEADLINE", Right),
        ("NEW FLOWS", Right),
    ];
    if monitored {
        columns.push(("HEALTH  (LAST CHECK)", Left));
    }
    let mut table = Table::new(&columns);
    for s in view.servers {
        let state = match (s.removing, s.ramp_up_percent) {
            (true, _) => format!("removing: {}", s.label()),
            (false, _) if s.resetting => format!("{}, resetting flows", s.label()),
            (false, _) if s.awaiting_fleet => format!("{}, awaiting the fleet", s.label()),
            (false, Some(percent)) => format!("{}, ramping up {percent}%", s.label()),
            (false, None) => s.label().to_string(),
        };
        let mut cells = vec![
            s.name.clone(),
            s.address.clone(),
            s.weight.to_string(),
            state,
            s.source.to_string(),
            s.active_flows.to_string(),
            left(s.deadline_left_ms),
            s.new_flows.to_string(),
        ];
        if monitored {
            cells.push(match &s.health {
                Some(health) => match &health.last_check {
                    Some(last) => format!("{}  ({})", health.label(), last.describe()),
                    None => health.label().to_string(),
                },
                None => "-".to_owned(),
            });
        }
        table.row(cells);
    }
    text + &table.render()
}

/// Every outcome counter: forwarded, passed, dropped, and why.
pub fn stats(socket: &Path, json: bool) -> anyhow::Result<()> {
    let (stats, data): (Stats, Value) = call(socket, &Request::Stats)?;
    if json {
        print_json(&data);
        return Ok(());
    }
    for (outcome, packets) in stats.outcomes {
        println!("{outcome:<28} {packets:>16}");
    }
    let table = &stats.flow_table;
    let flows = table.flows.map_or("not counted yet".to_owned(), |n| n.to_string());
    println!("flow table: {flows} flows of {}", table.max_flows);
    for (kind, evicted) in &table.evictions {
        println!("evicted ({kind}){:<width$} {evicted:>16}", "", width = 18usize.saturating_sub(kind.len()));
    }
    Ok(())
}

/// The cluster's nodes as this node sees them.
pub fn nodes(socket: &Path, json: bool) -> anyhow::Result<()> {
    let (view, data): (NodesView, Value) = call(socket, &Request::Nodes)?;
    if json {
        print_json(&data);
    } else {
        print!("{}", nodes_text(&view));
    }
    Ok(())
}

/// The nodes as `lb nodes` prints them: this node and its store, a line a
/// node, then this node's flow replication.
fn nodes_text(view: &NodesView) -> String {
    let store = if view.store_reachable { "reachable" } else { "UNREACHABLE (changes are refused)" };
    let stale = if view.stale { " (STALE: started from its state file, not synced since)" } else { "" };
    let mut text = format!("this node: {}; store {store}; revision {}{stale}\n", view.node, view.revision.unwrap_or(0));
    let mut table = Table::new(&[
        ("NODE", Left),
        ("UP", Left),
        ("REVISION", Right),
        ("FLOWS", Right),
        ("CONFIG", Left),
        ("CLOCK", Right),
        ("LAST SYNC", Right),
        ("ANNOUNCES", Left),
        ("STATE", Left),
    ]);
    for n in &view.nodes {
        let config = if n.same_config { n.config_hash.clone() } else { format!("{} DIFFERS", n.config_hash) };
        let clock = n.clock_offset_ms.map_or("-".to_owned(), |ms| format!("{ms:+} ms"));
        let synced = n.last_sync_ms.map_or("never".to_owned(), |at| {
            humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(at)).to_string()
        });
        let up = if n.up { "up" } else { "GONE" };
        let stale = if n.stale { " (stale: started without the store)" } else { "" };
        let announces = if n.announced.is_empty() {
            "-".to_owned()
        } else {
            n.announced.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
        };
        let state = format!("{}{stale}", node_state(&n.admin, n.still_arriving));
        let (revision, flows) = (n.revision.to_string(), n.flows.to_string());
        table.row(vec![n.node.clone(), up.to_owned(), revision, flows, config, clock, synced, announces, state]);
    }
    text += &table.render();
    if let Some(r) = &view.replication {
        text += &format!(
            "flow replication here: {} flow(s) sent, {} received, {} datagram(s) refused, {} new flow(s) not shared \
             (ring full)\n",
            r.sent, r.received, r.refused, r.lost
        );
    }
    text
}

/// `lb node disable`: withdraws a balancer node's VIPs; with `--wait`,
/// follows its drain until it is disabled.
pub fn node_disable(socket: &Path, node: &str, args: &DisableArgs, json: bool) -> anyhow::Result<()> {
    let request = Request::NodeDisable { node: node.to_owned(), mode: args.mode()?, force: args.force };
    let (change, data): (NodeChange, Value) = match call(socket, &request) {
        Err(e) if refused_for(&e, ErrorCode::LastNode) => anyhow::bail!("{e} (add --force)"),
        other => other?,
    };
    if json && !args.wait {
        print_json(&data);
        return Ok(());
    }
    if !json {
        println!("{}: {} -> {}", change.node, change.from.label(), node_state(&change.to, None));
    }
    if args.wait {
        wait_until_node_disabled(socket, node, json)?;
    }
    Ok(())
}

/// Prints the node's drain a line at a time until it is disabled.
fn wait_until_node_disabled(socket: &Path, node: &str, json: bool) -> anyhow::Result<()> {
    let mut last = String::new();
    loop {
        let (view, data): (NodesView, Value) = call(socket, &Request::Nodes)?;
        let n = view.nodes.iter().find(|n| n.node == node).context("the node left the view")?;
        let line = node_state(&n.admin, n.still_arriving);
        if json {
            print_json(&data);
        } else if line != last {
            println!("{node}: {line}");
        }
        if matches!(n.admin, NodeAdmin::Disabled { .. }) {
            return Ok(());
        }
        if !matches!(n.admin, NodeAdmin::Draining { .. }) {
            anyhow::bail!("{node} is {} now: changed meanwhile", n.admin.label());
        }
        last = line;
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A node's state as `lb nodes` shows it: the drain's progress and deadline.
fn node_state(admin: &NodeAdmin, still_arriving: Option<u64>) -> String {
    let now = crate::agent::runtime::now_ms();
    match admin {
        NodeAdmin::InService => "in service".to_owned(),
        NodeAdmin::Draining { deadline_ms, .. } => {
            let arriving = still_arriving.map(|n| format!(", {n} flow(s) still arriving")).unwrap_or_default();
            let deadline = deadline_ms.map_or(", until its flows have moved".to_owned(), |d| {
                format!(", deadline in {}s", d.saturating_sub(now).div_ceil(1000))
            });
            format!("draining (withdrawn){arriving}{deadline}")
        }
        NodeAdmin::Disabled { reason, .. } => {
            let why = match reason {
                NodeDisabled::Immediate => "withdrawn at once",
                NodeDisabled::Drained => "drained",
                NodeDisabled::Deadline => "deadline passed",
            };
            format!("disabled ({why})")
        }
    }
}

pub fn node_enable(socket: &Path, node: &str, json: bool) -> anyhow::Result<()> {
    let (change, data): (NodeChange, Value) = call(socket, &Request::NodeEnable { node: node.to_owned() })?;
    if json {
        print_json(&data);
    } else {
        println!("{}: {} -> {}", change.node, change.from.label(), change.to.label());
    }
    Ok(())
}

/// `lb reload`'s options.
pub struct ReloadArgs {
    pub force: bool,
    pub dry_run: bool,
    pub this_node: bool,
}

pub fn reload(socket: &Path, args: &ReloadArgs, json: bool) -> anyhow::Result<()> {
    let &ReloadArgs { force, dry_run, this_node } = args;
    let (report, data): (ReloadReport, Value) = match call(socket, &Request::Reload { force, dry_run, this_node }) {
        Err(e) if refused_by_guard(&e) => anyhow::bail!("{e} (add --force)"),
        other => other?,
    };
    if json {
        print_json(&data);
        return Ok(());
    }
    if report.changes.is_empty() {
        println!("nothing to change: the config is the one running");
    } else {
        let fleet = !report.nodes.is_empty();
        let head = match (report.applied, fleet) {
            (_, true) => "this node's file changes:",
            (true, false) => "applied:",
            (false, false) => "would apply (dry run, nothing changed):",
        };
        println!("{head}");
        for change in &report.changes {
            println!("  {change}");
        }
    }
    print_fleet_reload(&report.nodes)
}

/// In a cluster: how each live node fared (each re-read its own file).
fn print_fleet_reload(nodes: &[crate::model::NodeReload]) -> anyhow::Result<()> {
    if nodes.is_empty() {
        return Ok(());
    }
    println!("every node re-read its own config file:");
    let mut refused = Vec::new();
    for n in nodes {
        match &n.outcome {
            Some(o) if o.ok => println!("  {:<16} {}", n.node, o.message),
            Some(o) => {
                println!("  {:<16} REFUSED: {}", n.node, o.message);
                refused.push(n.node.as_str());
            }
            None => {
                println!("  {:<16} no answer yet (see lb nodes)", n.node);
                refused.push(n.node.as_str());
            }
        }
    }
    if !refused.is_empty() {
        anyhow::bail!("the reload did not take on {}: their configs may now differ (lb nodes)", refused.join(", "));
    }
    Ok(())
}

/// The agent's events, oldest first: all, or a pool's, or a server's.
pub fn events(socket: &Path, pool: Option<&str>, server: Option<&str>, json: bool) -> anyhow::Result<()> {
    let (events, data): (Vec<Event>, Value) = call(socket, &Request::Events { since: None })?;
    let wanted = |e: &Event| concerns(e, pool, server);
    if json {
        // The API's own objects, those wanted.
        let all = data.as_array().context("unexpected answer from the agent")?;
        let shown: Vec<&Value> = events.iter().zip(all).filter(|(e, _)| wanted(e)).map(|(_, v)| v).collect();
        print_json(&serde_json::json!(shown));
        return Ok(());
    }
    for e in events.iter().filter(|e| wanted(e)) {
        let time = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(e.time_ms));
        println!("{time} {} {}: {}", e.subject, e.kind.label(), e.message);
    }
    Ok(())
}

/// Whether `e` is of `pool` (if given) and of its `server` (if given).
fn concerns(e: &Event, pool: Option<&str>, server: Option<&str>) -> bool {
    pool.is_none_or(|p| e.subject.pool() == Some(p)) && server.is_none_or(|s| e.subject.server_name() == Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draining(name: &str, flows: u64, deadline_left_ms: Option<u64>) -> ServerView {
        serde_json::from_value(serde_json::json!({
            "name": name, "address": "10.0.0.1:80", "weight": 1, "state": "DRAINING",
            "active_flows": flows, "deadline_left_ms": deadline_left_ms,
            "packets_to": 0, "bytes_to": 0, "packets_from": 0, "bytes_from": 0, "new_flows": 0
        }))
        .expect("a server view")
    }

    #[test]
    fn events_are_chosen_by_pool_and_server() {
        let event = |subject: serde_json::Value| -> Event {
            let e = serde_json::json!({"id": 1, "kind": "enabled", "message": "", "subject": subject, "time_ms": 0});
            serde_json::from_value(e).expect("an event")
        };
        let s1 = event(serde_json::json!({"kind": "server", "pool": "web", "server": "s1"}));
        let other = event(serde_json::json!({"kind": "server", "pool": "api", "server": "s1"}));
        let pool = event(serde_json::json!({"kind": "pool", "pool": "web"}));
        let agent = event(serde_json::json!({"kind": "agent"}));
        let chosen = |pool_name, server| {
            [&s1, &other, &pool, &agent].iter().map(|e| concerns(e, pool_name, server)).collect::<Vec<_>>()
        };
        assert_eq!(chosen(None, None), [true, true, true, true], "all");
        assert_eq!(chosen(Some("web"), None), [true, false, true, false], "the pool's, its servers' too");
        assert_eq!(chosen(Some("web"), Some("s1")), [true, false, false, false], "that pool's s1 only");
    }

    #[test]
    fn lb_nodes_keeps_its_columns_with_a_node_gone_and_one_announcing_both_families() {
        let node = |name: &str, up: bool, announced: serde_json::Value| {
            serde_json::json!({
                "node": name, "up": up, "last_sync_ms": null, "revision": 1234567, "config_hash": "5f1c2a",
                "same_config": up, "flows": 12, "flows_by_server": {}, "clock_offset_ms": null, "stale": !up,
                "started_ms": 0, "announced": announced
            })
        };
        let view: NodesView = serde_json::from_value(serde_json::json!({
            "node": "n1", "store_reachable": true, "revision": 1234567,
            "nodes": [
                node("n1", true, serde_json::json!(["10.100.0.1", "fd00:100::1"])),
                node("balancer-node-with-a-long-name", false, serde_json::json!([])),
            ],
        }))
        .expect("a nodes view");
        let text = nodes_text(&view);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        let column = |header: &str| lines[0].find(header).unwrap();
        for (header, cell) in [("UP", ["up ", "GONE"]), ("ANNOUNCES", ["10.100.0.1,fd00:100::1", "- "])] {
            for (line, want) in lines[1..].iter().zip(cell) {
                assert!(line[column(header)..].starts_with(want), "{header} in {line:?}\n{text}");
            }
        }
        assert!(lines[2].contains("5f1c2a DIFFERS") && lines[2].ends_with("(stale: started without the store)"));
    }

    #[test]
    fn pool_show_keeps_its_columns_whatever_a_cell_holds() {
        let mut long = draining("a-server-with-a-long-name", 1_000_000, Some(90_000));
        long.address = "10.0.1.2:8080, [fd00:1::2]:8080".to_owned();
        long.why = Some(crate::model::Why::Maintenance);
        long.removing = true;
        let view = PoolView {
            pool: "web".into(),
            services: vec!["10.100.0.1:80/tcp".into()],
            servers: vec![draining("s1", 3, None), long],
            leaving_services: Vec::new(),
            counted_ms_ago: 0,
            min_in_service: 0,
            max_in_maintenance: None,
        };
        let text = pool_text(view);
        let lines: Vec<&str> = text.lines().skip(1).collect();
        assert_eq!(lines.len(), 3, "{text}");
        // Right-aligned numbers end where their header ends; a column
        // starts where its header starts.
        for header in ["FLOWS", "NEW FLOWS"] {
            let end = lines[0].find(&format!(" {header}")).unwrap() + 1 + header.len();
            for line in &lines[1..] {
                let before = &line[..end];
                assert!(before.ends_with(|c: char| c.is_ascii_digit()), "{header} in {line:?}\n{text}");
                assert!(line[end..].is_empty() || line[end..].starts_with(' '), "{header} in {line:?}\n{text}");
            }
        }
        let source_at = lines[0].find("SOURCE").unwrap();
        for line in &lines[1..] {
            assert!(line[source_at..].starts_with("operator "), "SOURCE at {source_at} in {line:?}\n{text}");
        }
        assert!(text.contains("removing: DRAINING (maintenance (health monitor))  operator"), "{text}");
    }

    #[test]
    fn a_drain_shows_a_bar_on_a_terminal_and_plain_lines_otherwise() {
        let (s1, s2) = (draining("s1", 3, Some(80_000)), draining("s2", 2, None));
        let plain = drain_line("web", &[&s1, &s2], 20, false);
        assert_eq!(plain, "draining web: s1: 3 flow(s), 1m20s left; s2: 2 flow(s), no deadline");
        let bar = drain_line("web", &[&s1, &s2], 20, true);
        assert_eq!(
            bar,
            "draining web [###############-----]  75% drained · s1: 3 flow(s), 1m20s left; s2: 2 flow(s), no deadline"
        );
        let counting = drain_line("web", &[&draining("s1", 0, None)], 0, true);
        assert!(counting.contains("[--------------------] counting"), "not yet counted, not drained: {counting}");
    }
}
