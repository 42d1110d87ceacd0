//! The API over HTTP, the dashboard and the metrics: a second transport for
//! the same operations as the Unix socket ([`super::ops::Ops`]). Reads
//! answer from the owner's snapshot, so a page refresh never waits behind a
//! change; changes queue at the owner like the CLI's.
//!
//! - `/api/v1/...` (`resources`): JSON; a token when one is configured.
//! - `/api/v1/events/stream` (`stream`): the events, live (server-sent events).
//! - `/metrics` (`metrics`): Prometheus' text format; no token.
//! - `/` and the page's files (`pages`): embedded in the binary; no token.
//!
//! A slow or broken client cannot stall the agent: at most
//! [`Limits::connections`] are served at once (more are answered 503 and
//! closed), headers must arrive within [`Limits::read_timeout`], and so
//! must a body, of at most [`Limits::body_bytes`].

pub(crate) mod body;
mod metrics;
mod pages;
mod resources;
mod stream;

use std::{sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    extract::{RawPathParams, RawQuery, State},
    http::HeaderMap,
    routing::{get, post},
};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    io::AsyncWriteExt as _,
    net::{TcpListener, TcpStream},
    sync::{Semaphore, watch},
};

use super::{ops::Ops, wire};
use crate::agent::runtime::stopped;

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once (a live event stream holds one).
    pub connections: usize,
    /// Time to send a request's headers, and its body.
    pub read_timeout: Duration,
    pub body_bytes: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { connections: 256, read_timeout: Duration::from_secs(5), body_bytes: 16 * 1024 }
    }
}

/// What every handler reads.
pub struct Web {
    pub ops: Arc<Ops>,
    /// Requests to `/api/` must carry it, when set.
    pub token: Option<String>,
    pub limits: Limits,
    /// Ends live streams when the agent stops.
    pub shutdown: watch::Receiver<bool>,
}

pub fn router(web: Arc<Web>) -> Router {
    // Every operation at its resource (`wire::OPERATIONS`), and the live
    // event stream.
    let mut api = Router::new().route("/events/stream", get(stream::events));
    for op in wire::OPERATIONS {
        let handler =
            move |State(web): State<Arc<Web>>,
                  params: RawPathParams,
                  RawQuery(query): RawQuery,
                  headers: HeaderMap,
                  body: Body| async move { resources::operation(&web, op, params, query, &headers, body).await };
        api = api.route(
            op.path,
            match op.verb {
                wire::Verb::Get => get(handler),
                wire::Verb::Post => post(handler),
            },
        );
    }
    let api = api
        .fallback(resources::no_such_resource)
        .method_not_allowed_fallback(resources::method_not_allowed)
        .route_layer(axum::middleware::from_fn_with_state(Arc::clone(&web), resources::require_token));
    Router::new()
        .nest("/api/v1", api)
        .route("/api/{*rest}", get(resources::no_such_resource).post(resources::no_such_resource))
        .route("/metrics", get(metrics::scrape))
        .route("/", get(pages::index))
        .route("/{*file}", get(pages::file))
        .layer(axum::middleware::from_fn(pages::security_headers))
        .with_state(web)
}

/// Serves until `shutdown`; connections then finish their request.
pub async fn serve(listener: TcpListener, web: Arc<Web>, mut shutdown: watch::Receiver<bool>) {
    let limits = web.limits;
    let app = router(web);
    let slots = Arc::new(Semaphore::new(limits.connections));
    loop {
        let stream = tokio::select! {
            () = stopped(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, say: wait rather than spin.
                    log::warn!("http: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tokio::spawn(refuse_busy(stream));
            continue;
        };
        let (app, shutdown) = (app.clone(), shutdown.clone());
        tokio::spawn(async move {
            serve_connection(stream, app, limits, shutdown).await;
            drop(slot);
        });
    }
}

async fn serve_connection(stream: TcpStream, app: Router, limits: Limits, mut shutdown: watch::Receiver<bool>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(limits.read_timeout).max_buf_size(64 * 1024);
    let connection = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => return log_connection_error(result),
        () = stopped(&mut shutdown) => connection.as_mut().graceful_shutdown(),
    }
    log_connection_error(connection.await);
}

fn log_connection_error(result: Result<(), hyper::Error>) {
    if let Err(e) = result
        && !e.is_timeout()
        && !e.is_incomplete_message()
    {
        log::debug!("http: connection ended: {e}");
    }
}

async fn refuse_busy(mut stream: TcpStream) {
    let body = r#"{"code":"busy","error":"too many connections: try again"}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let linger = async {
        stream.write_all(answer.as_bytes()).await?;
        stream.shutdown().await?;
        // Read what the client sent until it closes: a socket closed with
        // unread data resets its peer, which would then lose the answer.
        let mut sink = [0u8; 4096];
        while tokio::io::AsyncReadExt::read(&mut stream, &mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), linger).await;
}

/// A refusal, as every resource answers it: the status, and the API's error.
pub(super) fn refuse(
    status: axum::http::StatusCode,
    code: crate::model::ErrorCode,
    message: String,
) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    (status, axum::Json(crate::model::ApiError::new(code, message))).into_response()
}
