//! `/api/v1/...`: each resource turns into one [`Request`] for the
//! operations, and each answer or refusal into JSON with its status code.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{Path, RawQuery, Request as HttpRequest, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::{Web, body, refuse};
use crate::{
    api::wire,
    model::{ApiError, ErrorCode, Request},
};

pub async fn pool_list(State(web): State<Arc<Web>>) -> Response {
    answer(web.ops.handle(Request::PoolList).await)
}

pub async fn pool_show(State(web): State<Arc<Web>>, Path(pool): Path<String>) -> Response {
    answer(web.ops.handle(Request::PoolShow { pool }).await)
}

pub async fn disable(
    State(web): State<Arc<Web>>,
    Path(pool): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    change(&web, pool, &headers, body, wire::disable).await
}

pub async fn enable(State(web): State<Arc<Web>>, Path(pool): Path<String>, headers: HeaderMap, body: Body) -> Response {
    change(&web, pool, &headers, body, wire::enable).await
}

pub async fn reload(State(web): State<Arc<Web>>, headers: HeaderMap, body: Body) -> Response {
    change(&web, String::new(), &headers, body, wire::reload).await
}

/// A change: its body read and turned into the operation by `parse`.
async fn change(
    web: &Web,
    pool: String,
    headers: &HeaderMap,
    request_body: Body,
    parse: fn(String, &Value) -> Result<Request, ApiError>,
) -> Response {
    let json = match body::read_json(headers, request_body, &web.limits).await {
        Ok(json) => json,
        Err(refusal) => return refusal,
    };
    match parse(pool, &json) {
        Ok(request) => answer(web.ops.handle(request).await),
        Err(e) => answer(Err(e)),
    }
}

pub async fn events(State(web): State<Arc<Web>>, RawQuery(query): RawQuery) -> Response {
    match since(query.as_deref()) {
        Ok(since) => answer(web.ops.handle(Request::Events { since }).await),
        Err(e) => answer(Err(e)),
    }
}

pub async fn stats(State(web): State<Arc<Web>>) -> Response {
    answer(web.ops.handle(Request::Stats).await)
}

/// `?since=ID`: only events after that one.
pub fn since(query: Option<&str>) -> Result<Option<u64>, ApiError> {
    let mut since = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("since", id)) => {
                since = Some(id.parse().map_err(|_| {
                    ApiError::new(ErrorCode::BadRequest, format!("since: \"{id}\" is not an event id (a number)"))
                })?);
            }
            _ => return Err(ApiError::new(ErrorCode::BadRequest, format!("unknown query parameter \"{pair}\""))),
        }
    }
    Ok(since)
}

pub async fn no_such_resource(method: Method, uri: Uri) -> Response {
    refuse(StatusCode::NOT_FOUND, ErrorCode::BadRequest, format!("no such resource: {method} {}", uri.path()))
}

pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    refuse(StatusCode::METHOD_NOT_ALLOWED, ErrorCode::BadRequest, format!("{method} is not allowed on {}", uri.path()))
}

/// With a token configured, every API request must carry it:
/// `Authorization: Bearer <token>`.
pub async fn require_token(State(web): State<Arc<Web>>, request: HttpRequest, next: Next) -> Response {
    let Some(token) = &web.token else { return next.run(request).await };
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match given {
        Some(given) if same(given.as_bytes(), token.as_bytes()) => next.run(request).await,
        Some(_) => unauthorized("the token is wrong"),
        None => unauthorized("a token is needed: send the header \"Authorization: Bearer <token>\""),
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = refuse(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, message.to_owned());
    response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
    response
}

/// Compares in time that does not depend on where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An answer as JSON: the data (200), or the refusal with its status.
pub fn answer(result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(data) => axum::Json(data).into_response(),
        Err(e) => refuse(status_of(e.code), e.code, e.message),
    }
}

fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadRequest | ErrorCode::InvalidConfig => StatusCode::BAD_REQUEST,
        ErrorCode::RestartNeeded => StatusCode::CONFLICT,
        ErrorCode::UnknownPool | ErrorCode::UnknownServer => StatusCode::NOT_FOUND,
        ErrorCode::LastServer | ErrorCode::InMaintenance => StatusCode::CONFLICT,
        ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_is_a_number_and_nothing_else_is_asked() {
        assert_eq!(since(None).unwrap(), None);
        assert_eq!(since(Some("since=7")).unwrap(), Some(7));
        assert!(since(Some("since=x")).unwrap_err().message.starts_with("since: "));
        assert!(since(Some("limit=3")).is_err());
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
