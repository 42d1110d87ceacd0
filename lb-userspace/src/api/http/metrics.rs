//! `GET /metrics`: Prometheus' text exposition format, from the same reads
//! as the API (the snapshot and the datapath's counters, which are read and
//! never reset: scraping costs the packet path nothing).
//!
//! One prefix (`lb_`), base units (seconds, bytes), counters end in
//! `_total`, and a server's state is a 0/1 family with one series per state
//! (as node_exporter and kube-state-metrics do), so that
//! `lb_server_state{state="draining"} == 1` selects draining servers.

use std::{fmt::Display, fmt::Write as _, sync::Arc};

use axum::{
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse as _, Response},
};

use super::Web;
use crate::model::{HealthStatus, NodeAdmin, NodesView, PoolView, ReloadStatus, ServerState, Stats};

const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub async fn scrape(State(web): State<Arc<Web>>) -> Response {
    let pools: Vec<PoolView> =
        web.ops.pool_list().iter().filter_map(|summary| web.ops.pool_show(&summary.pool).ok()).collect();
    let snapshot = web.ops.snapshot();
    match web.ops.stats() {
        Ok(stats) => {
            let mut text = render(&snapshot.instance, &pools, &stats);
            if let Ok(nodes) = web.ops.nodes() {
                text.push_str(&cluster(&nodes));
            }
            ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.message).into_response(),
    }
}

/// The whole exposition.
pub fn render(instance: &str, pools: &[PoolView], stats: &Stats) -> String {
    let mut out = Exposition::default();
    out.family("lb_info", "gauge", "The agent: its version and instance (always 1).");
    out.sample("lb_info", &[("version", env!("CARGO_PKG_VERSION")), ("instance", instance)], 1);
    servers(&mut out, pools);
    capacity(&mut out, pools);
    out.family(
        "lb_packets_total",
        "counter",
        "Packets the datapath saw, by outcome (forwarded, passed, dropped and why).",
    );
    for (outcome, packets) in &stats.outcomes {
        out.sample("lb_packets_total", &[("outcome", outcome)], packets);
    }
    out.family("lb_flow_table_max_flows", "gauge", "Flows the flow table is sized for (flows.max).");
    out.sample("lb_flow_table_max_flows", &[], stats.flow_table.max_flows);
    if let Some(flows) = stats.flow_table.flows {
        out.family("lb_flow_table_flows", "gauge", "Flows in the flow table at its last walk.");
        out.sample("lb_flow_table_flows", &[], flows);
    }
    out.family(
        "lb_flow_evictions_total",
        "counter",
        "Flows that gave their slot to a new flow in the full flow table, by kind (half-open and closed flows go first).",
    );
    for (kind, evicted) in &stats.flow_table.evictions {
        out.sample("lb_flow_evictions_total", &[("kind", kind)], evicted);
    }
    reloads(&mut out, &stats.reloads);
    out.text
}

/// In a cluster: the store, the nodes, and whose config differs.
pub fn cluster(view: &NodesView) -> String {
    let mut out = Exposition::default();
    out.family("lb_cluster_store_reachable", "gauge", "Whether the cluster's store answers this node (1) or not (0).");
    out.sample("lb_cluster_store_reachable", &[], u8::from(view.store_reachable));
    out.family("lb_cluster_revision", "gauge", "The store's revision whose server states this node applies.");
    out.sample("lb_cluster_revision", &[], view.revision.unwrap_or(0));
    out.family("lb_cluster_node_up", "gauge", "Each node seen: its record is in the store (1) or gone (0).");
    for node in &view.nodes {
        out.sample("lb_cluster_node_up", &[("node", &node.node)], u8::from(node.up));
    }
    out.family(
        "lb_cluster_config_mismatch",
        "gauge",
        "Nodes up whose config (services and pools) differs from this node's: their server ids and Maglev rows may differ.",
    );
    out.sample("lb_cluster_config_mismatch", &[], view.nodes.iter().filter(|n| n.up && !n.same_config).count());
    out.family(
        "lb_cluster_node_in_service",
        "gauge",
        "Each node's maintenance state: in service (1), or draining or disabled (0): withdrawn from its routers.",
    );
    for node in &view.nodes {
        out.sample("lb_cluster_node_in_service", &[("node", &node.node)], u8::from(node.admin == NodeAdmin::InService));
    }
    out.family("lb_cluster_node_announced_vips", "gauge", "The VIPs each node's BGP daemon announces now.");
    for node in &view.nodes {
        out.sample("lb_cluster_node_announced_vips", &[("node", &node.node)], node.announced.len());
    }
    if let Some(r) = &view.replication {
        out.family(
            "lb_cluster_replicated_flows_total",
            "counter",
            "Flows this node sent to the other nodes (new, pushed to a joining node, refreshed), and received from them.",
        );
        out.sample("lb_cluster_replicated_flows_total", &[("direction", "sent")], r.sent);
        out.sample("lb_cluster_replicated_flows_total", &[("direction", "received")], r.received);
        out.family(
            "lb_cluster_replication_refused_total",
            "counter",
            "Replication datagrams refused: from an address not a live node's, malformed, or naming an unknown server.",
        );
        out.sample("lb_cluster_replication_refused_total", &[], r.refused);
        out.family(
            "lb_cluster_replication_lost_total",
            "counter",
            "New flows the datapath could not hand to replication (its ring was full): not copied until refreshed.",
        );
        out.sample("lb_cluster_replication_lost_total", &[], r.lost);
    }
    out.text
}

/// Whether the config on disk is the one that runs, as Prometheus itself
/// says it of its own (`*_config_last_reload_successful`).
fn reloads(out: &mut Exposition, reloads: &ReloadStatus) {
    out.family(
        "lb_config_last_reload_successful",
        "gauge",
        "Whether the last reload of the config was applied (1 before any).",
    );
    out.sample("lb_config_last_reload_successful", &[], u8::from(reloads.last_successful));
    out.family(
        "lb_config_last_reload_success_timestamp_seconds",
        "gauge",
        "When the config that runs was applied (the agent's start, or the last reload applied).",
    );
    out.sample("lb_config_last_reload_success_timestamp_seconds", &[], reloads.last_success_ms / 1000);
    out.family("lb_config_reloads_total", "counter", "Reloads of the config (dry runs apart), by result.");
    out.sample("lb_config_reloads_total", &[("result", "applied")], reloads.applied);
    out.sample("lb_config_reloads_total", &[("result", "refused")], reloads.refused);
}

/// Each pool's capacity: what serves, what it must keep, and fail-open.
fn capacity(out: &mut Exposition, pools: &[PoolView]) {
    let each = |out: &mut Exposition, name: &str, value: &dyn Fn(&PoolView) -> Option<usize>| {
        for pool in pools {
            if let Some(v) = value(pool) {
                out.sample(name, &[("pool", &pool.pool)], v);
            }
        }
    };
    out.family(
        "lb_pool_servers_in_service",
        "gauge",
        "Servers of a pool given new flows now (ENABLED, weight above 0, not DOWN unless the pool fails open).",
    );
    each(out, "lb_pool_servers_in_service", &|p| Some(p.servers.iter().filter(|s| s.takes_new_flows).count()));
    out.family(
        "lb_pool_min_in_service",
        "gauge",
        "A pool's min_in_service: the fewest servers in service an operator's change or a reload may leave.",
    );
    each(out, "lb_pool_min_in_service", &|p| Some(p.min_in_service));
    out.family(
        "lb_pool_max_in_maintenance",
        "gauge",
        "A pool's max_in_maintenance: the most servers out at once for a maintenance reply (only pools with it).",
    );
    each(out, "lb_pool_max_in_maintenance", &|p| p.max_in_maintenance);
    out.family(
        "lb_pool_fail_open",
        "gauge",
        "Whether every server of a pool in service is DOWN, so that all of them serve (1) or not (0).",
    );
    let fail_open = |p: &PoolView| p.servers.iter().any(|s| s.health.as_ref().is_some_and(|h| h.fail_open));
    each(out, "lb_pool_fail_open", &|p| Some(usize::from(fail_open(p))));
    out.family(
        "lb_pool_servers_queued_for_maintenance",
        "gauge",
        "Servers of a pool whose maintenance waits its turn (max_in_maintenance), serving meanwhile.",
    );
    let queued =
        |p: &PoolView| p.servers.iter().filter(|s| s.health.as_ref().is_some_and(|h| h.queued.is_some())).count();
    each(out, "lb_pool_servers_queued_for_maintenance", &|p| Some(queued(p)));
}

/// The per-server families, each with every server's series together.
fn servers(out: &mut Exposition, pools: &[PoolView]) {
    let each = |out: &mut Exposition, name: &str, value: &dyn Fn(&crate::model::ServerView) -> Option<u64>| {
        for pool in pools {
            for server in &pool.servers {
                if let Some(v) = value(server) {
                    out.sample(name, &[("pool", &pool.pool), ("server", &server.name)], v);
                }
            }
        }
    };
    out.family(
        "lb_server_state",
        "gauge",
        "A server's administrative state: 1 for the state it is in, 0 for the others.",
    );
    for pool in pools {
        for server in &pool.servers {
            for state in [ServerState::Enabled, ServerState::Draining, ServerState::Disabled] {
                let name = state.to_string().to_ascii_lowercase();
                let labels = [("pool", pool.pool.as_str()), ("server", &server.name), ("state", &name)];
                out.sample("lb_server_state", &labels, u8::from(server.state == state));
            }
        }
    }
    out.family(
        "lb_server_up",
        "gauge",
        "Whether a server's health monitors find it UP (1) or DOWN (0); only servers of pools with monitors.",
    );
    each(out, "lb_server_up", &|s| s.health.as_ref().map(|h| u64::from(h.status != HealthStatus::Down)));
    out.family("lb_server_weight", "gauge", "A server's weight in its pool (0: no new flows).");
    each(out, "lb_server_weight", &|s| Some(u64::from(s.weight)));
    out.family("lb_server_active_flows", "gauge", "Live flows of a server at the last count of the flow table.");
    each(out, "lb_server_active_flows", &|s| Some(s.active_flows));
    out.family("lb_server_new_flows_total", "counter", "New flows given to a server.");
    each(out, "lb_server_new_flows_total", &|s| Some(s.new_flows));
    for (unit, help) in [("packets", "Packets"), ("bytes", "Bytes (IP packets)")] {
        let name = format!("lb_server_{unit}_total");
        out.family(&name, "counter", &format!("{help} forwarded to a server, and from it back to clients."));
        for pool in pools {
            for s in &pool.servers {
                let (to, from) =
                    if unit == "packets" { (s.packets_to, s.packets_from) } else { (s.bytes_to, s.bytes_from) };
                for (direction, value) in [("to_server", to), ("from_server", from)] {
                    out.sample(&name, &[("pool", &pool.pool), ("server", &s.name), ("direction", direction)], value);
                }
            }
        }
    }
    out.family(
        "lb_server_drain_deadline_left_seconds",
        "gauge",
        "Time left until a draining server's flows are terminated (only servers draining with a deadline).",
    );
    each(out, "lb_server_drain_deadline_left_seconds", &|s| s.deadline_left_ms.map(|ms| ms.div_ceil(1000)));
}

#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{}\"", escape(v))).collect();
            let _ = write!(self.text, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// A label value as the format wants it: backslash, quote and newline escaped.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::{FlowTableUse, ServerView, Why};

    #[test]
    fn the_exposition_has_one_state_per_series_and_escaped_labels() {
        let server = ServerView {
            name: "a".into(),
            address: "10.0.0.1:80".into(),
            weight: 2,
            state: ServerState::Draining,
            why: Some(Why::Deadline),
            active_flows: 3,
            resetting: false,
            deadline_left_ms: Some(1500),
            deadline_ms: Some(1_000_000),
            since_ms: None,
            flows_by_node: Default::default(),
            source: crate::model::Source::Operator,
            removing: false,
            takes_new_flows: false,
            awaiting_fleet: false,
            ramp_up_percent: None,
            health: Some(crate::model::HealthView {
                status: HealthStatus::Down,
                reason: Some(crate::model::DownReason::Refused),
                fail_open: false,
                maintenance: false,
                queued: None,
                last_check: None,
                by_node: Default::default(),
            }),
            packets_to: 10,
            bytes_to: 1000,
            packets_from: 9,
            bytes_from: 900,
            new_flows: 4,
        };
        let pool = PoolView {
            pool: "w\"eb".into(),
            services: vec![],
            servers: vec![server],
            leaving_services: vec![],
            counted_ms_ago: 0,
            min_in_service: 2,
            max_in_maintenance: None,
        };
        let stats = Stats {
            outcomes: BTreeMap::from([("forwarded".to_owned(), 7)]),
            flow_table: FlowTableUse {
                max_flows: 1024,
                flows: Some(3),
                evictions: BTreeMap::from([("half_open".to_owned(), 5)]),
            },
            reloads: ReloadStatus {
                last_successful: false,
                last_success_ms: 1_700_000_000_500,
                applied: 2,
                refused: 1,
            },
            startup: Default::default(),
        };
        let text = render("lb0", &[pool], &stats);
        let up = text.lines().find(|l| l.starts_with("lb_server_up{")).expect("lb_server_up");
        assert!(up.ends_with(" 0"), "a DOWN server: {up}");
        assert!(text.contains("lb_config_last_reload_successful 0\n"), "{text}");
        assert!(text.contains("lb_config_last_reload_success_timestamp_seconds 1700000000\n"), "{text}");
        assert!(text.contains("lb_config_reloads_total{result=\"refused\"} 1\n"), "{text}");
        assert!(text.contains("lb_server_state{pool=\"w\\\"eb\",server=\"a\",state=\"draining\"} 1\n"), "{text}");
        assert!(text.contains("lb_server_state{pool=\"w\\\"eb\",server=\"a\",state=\"enabled\"} 0\n"), "{text}");
        assert!(text.contains("lb_server_drain_deadline_left_seconds{pool=\"w\\\"eb\",server=\"a\"} 2\n"), "{text}");
        assert!(text.contains("lb_server_bytes_total{pool=\"w\\\"eb\",server=\"a\",direction=\"from_server\"} 900\n"));
        assert!(text.contains("lb_packets_total{outcome=\"forwarded\"} 7\n"));
        assert!(text.contains("lb_flow_table_flows 3\n"));
        assert!(text.contains("lb_pool_servers_in_service{pool=\"w\\\"eb\"} 0\n"), "{text}");
        assert!(text.contains("lb_pool_min_in_service{pool=\"w\\\"eb\"} 2\n"), "{text}");
        assert!(!text.contains("lb_pool_max_in_maintenance{"), "no limit, no series: {text}");
        assert!(text.contains("lb_flow_evictions_total{kind=\"half_open\"} 5\n"));
        assert!(text.contains(&format!("lb_info{{version=\"{}\",instance=\"lb0\"}} 1\n", env!("CARGO_PKG_VERSION"))));
    }

    #[test]
    fn a_clusters_nodes_show_their_maintenance_state_and_replication_its_counts() {
        use crate::model::{NodeView, ReplicationCounts};
        let node = |name: &str, admin, announced: &[&str]| NodeView {
            node: name.into(),
            up: true,
            same_config: true,
            admin,
            announced: announced.iter().map(|a| a.parse().unwrap()).collect(),
            ..NodeView::default()
        };
        let view = NodesView {
            nodes: vec![
                node("n1", NodeAdmin::InService, &["10.0.0.1", "fd00::1"]),
                node("n2", NodeAdmin::Draining { since_ms: 1, deadline_ms: None }, &[]),
            ],
            replication: Some(ReplicationCounts { sent: 12, received: 30, refused: 1, lost: 0 }),
            ..NodesView::default()
        };
        let text = cluster(&view);
        assert!(text.contains("lb_cluster_node_in_service{node=\"n1\"} 1\n"), "{text}");
        assert!(text.contains("lb_cluster_node_in_service{node=\"n2\"} 0\n"), "{text}");
        assert!(text.contains("lb_cluster_node_announced_vips{node=\"n1\"} 2\n"), "{text}");
        assert!(text.contains("lb_cluster_replicated_flows_total{direction=\"received\"} 30\n"), "{text}");
        assert!(text.contains("lb_cluster_replication_refused_total 1\n"), "{text}");
        assert!(text.contains("lb_cluster_replication_lost_total 0\n"), "{text}");
        let alone = cluster(&NodesView { replication: None, ..view });
        assert!(!alone.contains("lb_cluster_replicated_flows_total"), "no replication, no counts: {alone}");
    }

    /// The alerting rules and the Grafana dashboard shipped in
    /// `lb-userspace/monitoring/` name only metrics the agent exports (a
    /// renamed family would leave an alert silent forever); promtool checks
    /// the rules themselves (`tests/tests/monitoring.rs`).
    #[test]
    fn the_shipped_alerts_and_dashboard_name_only_exported_metrics() {
        use crate::model::ReplicationCounts;
        let stats = Stats {
            outcomes: BTreeMap::new(),
            flow_table: FlowTableUse { max_flows: 1, flows: Some(0), evictions: BTreeMap::new() },
            reloads: ReloadStatus::default(),
            startup: Default::default(),
        };
        let nodes = NodesView { replication: Some(ReplicationCounts::default()), ..NodesView::default() };
        let text = render("lb0", &[], &stats) + &cluster(&nodes);
        let families: std::collections::BTreeSet<&str> =
            text.lines().filter_map(|l| l.strip_prefix("# TYPE ")).filter_map(|l| l.split(' ').next()).collect();
        let alerts = include_str!("../../../monitoring/alerts.yml");
        let dashboard = include_str!("../../../monitoring/grafana-dashboard.json");
        let json: serde_json::Value = serde_json::from_str(dashboard).expect("the dashboard is JSON");
        let exprs: Vec<&str> = json["panels"]
            .as_array()
            .expect("panels")
            .iter()
            .flat_map(|p| p["targets"].as_array().into_iter().flatten())
            .map(|t| t["expr"].as_str().expect("each target has an expression"))
            .collect();
        assert!(exprs.len() >= 15, "{} queries", exprs.len());
        for (file, text) in [("alerts.yml", alerts), ("grafana-dashboard.json", dashboard)] {
            let named: Vec<&str> = text
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("lb_"))
                .collect();
            assert!(!named.is_empty(), "{file} names no metric");
            for name in named {
                assert!(families.contains(name), "{file} names {name}, which the agent does not export");
            }
        }
    }
}
