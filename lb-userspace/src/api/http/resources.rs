//! `/api/v1/...`: each resource is an operation of [`wire::OPERATIONS`],
//! read into one request for the operations, and each answer or refusal
//! becomes JSON with its status code.

use std::sync::Arc;

use axum::{
    body::Body,
    extract::{RawPathParams, Request as HttpRequest, State},
    http::{HeaderMap, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use serde_json::Value;

use super::{Web, body, refuse};
use crate::{
    api::wire,
    model::{ApiError, ErrorCode},
};

/// Operation `op` asked over HTTP: its pool from the path, its fields from
/// the query (a read) or the JSON body (a change), then the same reading
/// and answer as on the socket.
pub async fn operation(
    web: &Web,
    op: &wire::Operation,
    params: RawPathParams,
    query: Option<String>,
    headers: &HeaderMap,
    request_body: Body,
) -> Response {
    let pool = params.iter().find(|(name, _)| *name == "pool").map(|(_, pool)| pool.to_owned()).unwrap_or_default();
    let fields = match op.verb {
        wire::Verb::Get => match wire::query_fields(query.as_deref()) {
            Ok(fields) => fields,
            Err(e) => return answer(Err(e)),
        },
        wire::Verb::Post => match body::read_json(headers, request_body, &web.limits).await {
            Ok(json) => json,
            Err(refusal) => return refusal,
        },
    };
    match (op.read)(pool, &fields) {
        Ok(request) => answer(web.ops.handle(request).await),
        Err(e) => answer(Err(e)),
    }
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
        ErrorCode::UnknownPool | ErrorCode::UnknownServer | ErrorCode::UnknownNode => StatusCode::NOT_FOUND,
        ErrorCode::NotInCluster => StatusCode::CONFLICT,
        ErrorCode::LastServer | ErrorCode::InMaintenance | ErrorCode::Conflict | ErrorCode::LastNode => {
            StatusCode::CONFLICT
        }
        ErrorCode::StoreUnreachable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Busy => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Failed => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"secret", b"secret"));
        assert!(!same(b"secret", b"secreT"));
        assert!(!same(b"secret", b"secret2"));
        assert!(!same(b"", b"x"));
    }
}
