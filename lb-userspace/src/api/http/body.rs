//! Request bodies of the changes: only `application/json` (a page of
//! another site cannot send that without CORS, which the agent never
//! grants: no cross-site form posts), bounded in size and in time; their
//! fields are read as the socket's are (`api::wire`).

use axum::{
    body::Body,
    http::{HeaderMap, StatusCode, header},
    response::Response,
};
use serde_json::Value;

use super::{Limits, refuse};
use crate::model::ErrorCode;

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
