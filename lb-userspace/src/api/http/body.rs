//! Request bodies of the changes: only `application/json` (a page of
//! another site cannot send that without CORS, which the agent never
//! grants: no cross-site form posts), bounded in size and in time, and read
//! field by field so that a refusal names the field.

use std::time::Duration;

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use serde_json::{Map, Value};

use super::{Limits, resources::refuse};
use crate::{
    api::model::{ApiError, DisableMode, ErrorCode, Request},
    config::parse_duration,
};

/// The body as a JSON object, or the answer that refuses it.
pub async fn read_json(headers: &HeaderMap, body: Body, limits: &Limits) -> Result<Value, Response> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = content_type.split(';').next().unwrap_or("").trim();
    if !media_type.eq_ignore_ascii_case("application/json") {
        return Err(refuse(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::BadRequest,
            format!("the body must be JSON (Content-Type: application/json), not \"{content_type}\""),
        ));
    }
    let bytes = match tokio::time::timeout(limits.read_timeout, axum::body::to_bytes(body, limits.body_bytes)).await {
        Err(_) => return Err(bad(StatusCode::REQUEST_TIMEOUT, "the body did not arrive in time")),
        Ok(Err(_)) => {
            return Err(bad(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the body is over {} bytes (or was cut short)", limits.body_bytes),
            ));
        }
        Ok(Ok(bytes)) => bytes,
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(bad(StatusCode::BAD_REQUEST, "the body must be a JSON object")),
        Err(e) => Err(bad(StatusCode::BAD_REQUEST, &format!("the body is not valid JSON: {e}"))),
    }
}

fn bad(status: StatusCode, message: &str) -> Response {
    refuse(status, ErrorCode::BadRequest, message.to_owned())
}

fn bad_field(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, format!("{field}: {message}"))
}

/// `{"servers":[...],"mode":"immediate"|"graceful","timeout":"5m"|null,"force":false}`
pub fn disable(pool: String, body: &Value) -> Result<Request, ApiError> {
    let fields = known_fields(body, &["servers", "mode", "timeout", "force"])?;
    let servers = servers(fields)?;
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
    let force = match fields.get("force") {
        None => false,
        Some(Value::Bool(force)) => *force,
        Some(_) => return Err(bad_field("force", "must be true or false")),
    };
    Ok(Request::Disable { pool, servers, mode, force })
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

/// `{"force":false,"dry_run":false}` (both optional).
pub fn reload(_: String, body: &Value) -> Result<Request, ApiError> {
    let fields = known_fields(body, &["force", "dry_run"])?;
    let flag = |name: &str| match fields.get(name) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(bad_field(name, "must be true or false")),
    };
    Ok(Request::Reload { force: flag("force")?, dry_run: flag("dry_run")? })
}

fn known_fields<'a>(body: &'a Value, known: &[&str]) -> Result<&'a Map<String, Value>, ApiError> {
    let fields = body.as_object().ok_or_else(|| bad_field("body", "must be a JSON object"))?;
    if let Some(unknown) = fields.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(bad_field(unknown, format!("unknown field (known: {})", known.join(", "))));
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
