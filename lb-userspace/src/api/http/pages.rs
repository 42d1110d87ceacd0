//! The dashboard's files (`lb-userspace/web/`), embedded in the binary:
//! no web server to install, no build step, nothing fetched from elsewhere
//! (the balancer may have no internet).

use axum::{
    extract::{Path, Request},
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use rust_embed::Embed;

#[derive(Embed)]
#[folder = "web/"]
struct Files;

pub async fn index() -> Response {
    serve("index.html")
}

pub async fn file(Path(path): Path<String>) -> Response {
    serve(&path)
}

fn serve(path: &str) -> Response {
    let Some(file) = Files::get(path) else {
        return (StatusCode::NOT_FOUND, "not found\n").into_response();
    };
    let content_type = match path.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    };
    // no-cache: revalidate, so that an upgraded agent's page is used at once.
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], file.data).into_response()
}

/// On every answer: the page runs only its own scripts and cannot be framed
/// by another site (whose page could trick a click on Disable).
pub async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (header::CONTENT_SECURITY_POLICY, "default-src 'self'; frame-ancestors 'none'"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
