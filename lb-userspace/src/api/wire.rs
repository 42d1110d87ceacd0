//! The operations on the wire, read the same way from both transports:
//! a socket line `{"op":"disable","pool":"web","servers":["web-1"],
//! "mode":"graceful","timeout":"5m","force":false}` carries the same fields
//! as `POST /api/v1/pools/web/disable` with `{"servers":["web-1"],
//! "mode":"graceful","timeout":"5m","force":false}`. The fields of a change
//! are read one by one, so that a refusal names the field.

use std::time::Duration;

use serde_json::{Map, Value};

use crate::config::{format_duration, parse_duration};
use crate::model::{ApiError, DisableMode, ErrorCode, Request};

/// How an operation travels over HTTP (under `/api/v1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verb {
    /// A read: its fields come from the query (`?since=3`).
    Get,
    /// A change: its fields come from the JSON body.
    Post,
}

/// One operation: its name on the socket, its HTTP resource, and how its
/// fields are read (the same fields from a socket line as from an HTTP
/// body or query).
pub struct Operation {
    pub name: &'static str,
    pub verb: Verb,
    /// Under `/api/v1`; `{pool}` is the pool the operation names (on the
    /// socket: the line's `pool` field).
    pub path: &'static str,
    pub read: fn(pool: String, fields: &Value) -> Result<Request, ApiError>,
}

impl Operation {
    pub fn names_pool(&self) -> bool {
        self.path.contains("{pool}")
    }
}

/// Every operation the API has: the one place that says so. The socket
/// (`from_line`) and the HTTP router (`api/http/mod.rs`) are made from it;
/// a new one needs its `Request`, its entry here, its answer in `ops.rs`
/// and its CLI command.
pub const OPERATIONS: &[Operation] = &[
    Operation { name: "pool_list", verb: Verb::Get, path: "/pools", read: pool_list },
    Operation { name: "pool_show", verb: Verb::Get, path: "/pools/{pool}", read: pool_show },
    Operation { name: "pool_history", verb: Verb::Get, path: "/pools/{pool}/history", read: pool_history },
    Operation { name: "disable", verb: Verb::Post, path: "/pools/{pool}/disable", read: disable },
    Operation { name: "enable", verb: Verb::Post, path: "/pools/{pool}/enable", read: enable },
    Operation { name: "events", verb: Verb::Get, path: "/events", read: events },
    Operation { name: "stats", verb: Verb::Get, path: "/stats", read: stats },
    Operation { name: "reload", verb: Verb::Post, path: "/reload", read: reload },
    Operation { name: "nodes", verb: Verb::Get, path: "/nodes", read: nodes },
    Operation { name: "node_disable", verb: Verb::Post, path: "/nodes/disable", read: node_disable },
    Operation { name: "node_enable", verb: Verb::Post, path: "/nodes/enable", read: node_enable },
];

/// A socket line: `op`, the pool where it names one, and the operation's
/// fields.
pub fn from_line(line: &[u8]) -> Result<Request, ApiError> {
    let value: Value =
        serde_json::from_slice(line).map_err(|e| ApiError::new(ErrorCode::BadRequest, format!("bad request: {e}")))?;
    let mut fields = value.as_object().cloned().ok_or_else(|| bad_field("request", "must be a JSON object"))?;
    let names = || OPERATIONS.iter().map(|op| op.name).collect::<Vec<_>>().join(", ");
    let op = match fields.remove("op") {
        Some(Value::String(op)) => op,
        _ => return Err(bad_field("op", format!("must name an operation ({})", names()))),
    };
    let Some(operation) = OPERATIONS.iter().find(|o| o.name == op) else {
        return Err(bad_field("op", format!("unknown operation \"{op}\" (known: {})", names())));
    };
    let pool = match (operation.names_pool(), fields.remove("pool")) {
        (false, None) => String::new(),
        (true, Some(Value::String(pool))) => pool,
        (true, _) => return Err(bad_field("pool", "must name a pool")),
        (false, Some(_)) => return Err(bad_field("pool", format!("unknown field for {op}"))),
    };
    (operation.read)(pool, &Value::Object(fields))
}

/// An HTTP query (`since=3&x=y`) as the operation's fields (values as
/// strings: each reader takes a number written either way).
pub fn query_fields(query: Option<&str>) -> Result<Value, ApiError> {
    let mut fields = Map::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').ok_or_else(|| bad_field(pair, "must be name=value"))?;
        fields.insert(key.to_owned(), Value::String(value.to_owned()));
    }
    Ok(Value::Object(fields))
}

/// The socket line of `request` (what the CLI sends).
pub fn to_line(request: &Request) -> String {
    let value = match request {
        Request::Disable { pool, servers, mode, force } => {
            let (mode, timeout) = match mode {
                DisableMode::Immediate => ("immediate", None),
                DisableMode::Graceful { timeout_ms } => ("graceful", timeout_ms.map(exact_duration)),
            };
            serde_json::json!({"op": "disable", "pool": pool, "servers": servers, "mode": mode,
                "timeout": timeout, "force": force})
        }
        Request::NodeDisable { node, mode, force } => {
            let (mode, timeout) = match mode {
                DisableMode::Immediate => ("immediate", None),
                DisableMode::Graceful { timeout_ms } => ("graceful", timeout_ms.map(exact_duration)),
            };
            serde_json::json!({"op": "node_disable", "node": node, "mode": mode, "timeout": timeout, "force": force})
        }
        other => serde_json::to_value(other).expect("requests serialise"),
    };
    value.to_string()
}

/// A timeout as `parse_duration` reads it back, to the millisecond.
fn exact_duration(ms: u64) -> String {
    if ms.is_multiple_of(1000) { format_duration(Duration::from_secs(ms / 1000)) } else { format!("{ms}ms") }
}

fn bad_field(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, format!("{field}: {message}"))
}

/// No fields.
pub fn pool_list(_: String, fields: &Value) -> Result<Request, ApiError> {
    known_fields(fields, &[])?;
    Ok(Request::PoolList)
}

/// No fields: the pool is in the path (or the line's `pool`).
pub fn pool_show(pool: String, fields: &Value) -> Result<Request, ApiError> {
    known_fields(fields, &[])?;
    Ok(Request::PoolShow { pool })
}

/// No fields: the pool is in the path (or the line's `pool`).
pub fn pool_history(pool: String, fields: &Value) -> Result<Request, ApiError> {
    known_fields(fields, &[])?;
    Ok(Request::PoolHistory { pool })
}

/// `{"since":ID}` (optional): only events after that one.
pub fn events(_: String, fields: &Value) -> Result<Request, ApiError> {
    let fields = known_fields(fields, &["since"])?;
    let since = match fields.get("since") {
        None | Some(Value::Null) => None,
        Some(Value::Number(id)) => Some(id.as_u64().ok_or_else(|| not_an_event_id(id))?),
        Some(Value::String(id)) => Some(id.parse().map_err(|_| not_an_event_id(id))?),
        Some(other) => return Err(not_an_event_id(other)),
    };
    Ok(Request::Events { since })
}

fn not_an_event_id(id: impl std::fmt::Display) -> ApiError {
    bad_field("since", format!("\"{id}\" is not an event id (a number)"))
}

/// No fields.
pub fn stats(_: String, fields: &Value) -> Result<Request, ApiError> {
    known_fields(fields, &[])?;
    Ok(Request::Stats)
}

pub fn nodes(_: String, fields: &Value) -> Result<Request, ApiError> {
    known_fields(fields, &[])?;
    Ok(Request::Nodes)
}

/// `{"servers":[...],"mode":"immediate"|"graceful","timeout":"5m"|null,"force":false}`
pub fn disable(pool: String, body: &Value) -> Result<Request, ApiError> {
    let fields = known_fields(body, &["servers", "mode", "timeout", "force"])?;
    let servers = servers(fields)?;
    Ok(Request::Disable { pool, servers, mode: mode(fields)?, force: force(fields)? })
}

/// `{"node":"n2","mode":"immediate"|"graceful","timeout":"5m"|null,"force":false}`
pub fn node_disable(_: String, body: &Value) -> Result<Request, ApiError> {
    let fields = known_fields(body, &["node", "mode", "timeout", "force"])?;
    Ok(Request::NodeDisable { node: node(fields)?, mode: mode(fields)?, force: force(fields)? })
}

/// `{"node":"n2"}`
pub fn node_enable(_: String, body: &Value) -> Result<Request, ApiError> {
    let fields = known_fields(body, &["node"])?;
    Ok(Request::NodeEnable { node: node(fields)? })
}

fn node(fields: &Map<String, Value>) -> Result<String, ApiError> {
    match fields.get("node") {
        Some(Value::String(node)) if !node.is_empty() => Ok(node.clone()),
        _ => Err(bad_field("node", "must name a node")),
    }
}

/// A disable's `mode` and `timeout`.
fn mode(fields: &Map<String, Value>) -> Result<DisableMode, ApiError> {
    let timeout = match fields.get("timeout") {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(timeout(text)?),
        Some(_) => return Err(bad_field("timeout", "must be a duration such as \"5m\" or \"90s\", or null")),
    };
    let mode = match fields.get("mode").and_then(Value::as_str) {
        Some("immediate") if timeout.is_some() => {
            return Err(bad_field("timeout", "only a graceful disable has a timeout"));
        }
        Some("immediate") => DisableMode::Immediate,
        Some("graceful") => DisableMode::Graceful { timeout_ms: timeout.map(|t| t.as_millis() as u64) },
        _ => return Err(bad_field("mode", "must be \"immediate\" or \"graceful\"")),
    };
    Ok(mode)
}

fn force(fields: &Map<String, Value>) -> Result<bool, ApiError> {
    match fields.get("force") {
        None => Ok(false),
        Some(Value::Bool(force)) => Ok(*force),
        Some(_) => Err(bad_field("force", "must be true or false")),
    }
}

/// `{"servers":[...],"force":false}`
pub fn enable(pool: String, body: &Value) -> Result<Request, ApiError> {
    let fields = known_fields(body, &["servers", "force"])?;
    let force = match fields.get("force") {
        None => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => return Err(bad_field("force", "must be true or false")),
    };
    Ok(Request::Enable { pool, servers: servers(fields)?, force })
}

/// `{"force":false,"dry_run":false,"this_node":false}` (all optional).
pub fn reload(_: String, body: &Value) -> Result<Request, ApiError> {
    let fields = known_fields(body, &["force", "dry_run", "this_node"])?;
    let flag = |name: &str| match fields.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad_field(name, "must be true or false")),
    };
    Ok(Request::Reload { force: flag("force")?, dry_run: flag("dry_run")?, this_node: flag("this_node")? })
}

fn known_fields<'a>(body: &'a Value, known: &[&str]) -> Result<&'a Map<String, Value>, ApiError> {
    let fields = body.as_object().ok_or_else(|| bad_field("body", "must be a JSON object"))?;
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
        return Err(bad_field(unknown, format!("unknown field (known: {known})")));
    }
    Ok(fields)
}

fn servers(fields: &Map<String, Value>) -> Result<Vec<String>, ApiError> {
    let names = fields
        .get("servers")
        .and_then(Value::as_array)
        .and_then(|list| list.iter().map(|v| v.as_str().map(str::to_owned)).collect::<Option<Vec<String>>>());
    match names {
        Some(names) if !names.is_empty() => Ok(names),
        _ => Err(bad_field("servers", "must be a non-empty list of server names")),
    }
}

fn timeout(text: &str) -> Result<Duration, ApiError> {
    match parse_duration(text) {
        Ok(d) if d > Duration::ZERO => Ok(d),
        Ok(_) => Err(bad_field("timeout", "must be longer than zero (for at once, use mode \"immediate\")")),
        Err(e) => Err(bad_field("timeout", e)),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn refusal(body: Value) -> String {
        disable("web".into(), &body).unwrap_err().message
    }

    #[test]
    fn both_transports_carry_the_same_fields() {
        let line = br#"{"op":"disable","pool":"web","servers":["a"],"mode":"graceful","timeout":"1500ms"}"#;
        let from_socket = from_line(line).unwrap();
        let from_http = disable("web".into(), &json!({"servers":["a"],"mode":"graceful","timeout":"1500ms"})).unwrap();
        assert_eq!(from_socket, from_http);
        assert_eq!(from_line(to_line(&from_socket).as_bytes()).unwrap(), from_socket, "the CLI's line reads back");
        let immediate = Request::Disable {
            pool: "web".into(),
            servers: vec!["a".into()],
            mode: DisableMode::Immediate,
            force: true,
        };
        assert_eq!(from_line(to_line(&immediate).as_bytes()).unwrap(), immediate);
        for request in [
            Request::PoolList,
            Request::Stats,
            Request::Events { since: Some(3) },
            Request::PoolShow { pool: "web".into() },
            Request::PoolHistory { pool: "web".into() },
            Request::Reload { force: true, dry_run: false, this_node: true },
            Request::Reload { force: false, dry_run: true, this_node: false },
        ] {
            assert_eq!(from_line(to_line(&request).as_bytes()).unwrap(), request);
        }
        // A plain reload's line is the one agents before `this_node` read.
        let plain = to_line(&Request::Reload { force: false, dry_run: false, this_node: false });
        assert!(!plain.contains("this_node"), "{plain}");
        let refusal = |line: &[u8]| from_line(line).unwrap_err().message;
        assert!(refusal(br#"{"op":"disable","pool":"web","servers":["a"],"mode":"later"}"#).starts_with("mode: "));
        assert!(refusal(br#"{"op":"dance"}"#).starts_with("op: unknown operation"));
        assert!(refusal(br#"{"op":"enable","servers":["a"]}"#).starts_with("pool: "));
        assert!(refusal(br#"{"op":"stats","verbose":true}"#).starts_with("verbose: unknown field"));
        assert!(refusal(br#"{"op":"events","since":"x"}"#).starts_with("since: "));
    }

    #[test]
    fn an_http_query_carries_the_fields_a_socket_line_does() {
        let from_query = events(String::new(), &query_fields(Some("since=7")).unwrap()).unwrap();
        assert_eq!(from_query, from_line(br#"{"op":"events","since":7}"#).unwrap());
        assert_eq!(events(String::new(), &query_fields(None).unwrap()).unwrap(), Request::Events { since: None });
        let refusal = |query| events(String::new(), &query_fields(Some(query)).unwrap()).unwrap_err().message;
        assert!(refusal("since=yesterday").starts_with("since: "));
        assert!(refusal("limit=3").starts_with("limit: unknown field"));
    }

    #[test]
    fn every_operation_has_a_resource_of_its_own() {
        let mut resources: Vec<_> = OPERATIONS.iter().map(|o| o.path).collect();
        resources.sort_unstable();
        resources.dedup();
        assert_eq!(resources.len(), OPERATIONS.len(), "two operations on one path");
        assert!(OPERATIONS.iter().filter(|o| o.names_pool()).all(|o| o.path.starts_with("/pools/{pool}")));
    }

    #[test]
    fn a_disable_body_becomes_the_operation() {
        let request = disable("web".into(), &json!({"servers":["a","b"],"mode":"graceful","timeout":"5m"})).unwrap();
        assert_eq!(
            request,
            Request::Disable {
                pool: "web".into(),
                servers: vec!["a".into(), "b".into()],
                mode: DisableMode::Graceful { timeout_ms: Some(300_000) },
                force: false,
            }
        );
        let request = disable("web".into(), &json!({"servers":["a"],"mode":"graceful","timeout":null,"force":true}));
        assert!(matches!(
            request,
            Ok(Request::Disable { mode: DisableMode::Graceful { timeout_ms: None }, force: true, .. })
        ));
    }

    #[test]
    fn every_refusal_names_its_field() {
        assert!(refusal(json!({"mode":"immediate"})).starts_with("servers: "));
        assert!(refusal(json!({"servers":[],"mode":"immediate"})).starts_with("servers: "));
        assert!(refusal(json!({"servers":[1],"mode":"immediate"})).starts_with("servers: "));
        assert!(refusal(json!({"servers":["a"],"mode":"later"})).starts_with("mode: "));
        assert!(refusal(json!({"servers":["a"],"mode":"graceful","timeout":"soon"})).starts_with("timeout: "));
        assert!(refusal(json!({"servers":["a"],"mode":"graceful","timeout":"0s"})).starts_with("timeout: "));
        assert!(refusal(json!({"servers":["a"],"mode":"graceful","timeout":5})).starts_with("timeout: "));
        assert!(refusal(json!({"servers":["a"],"mode":"immediate","timeout":"5m"})).starts_with("timeout: "));
        assert!(refusal(json!({"servers":["a"],"mode":"immediate","force":"yes"})).starts_with("force: "));
        assert!(refusal(json!({"servers":["a"],"mode":"immediate","forse":true})).starts_with("forse: unknown field"));
        assert!(enable("web".into(), &json!({"servers":["a"],"mode":"immediate"})).is_err());
    }
}
