//! The API on a Unix socket: one request line, one answer line per
//! connection (`{"op":"pool_show","pool":"web"}`). The CLI is its client;
//! scripts can be too.
//!
//! A slow or hostile client cannot hold up others or the owner: at most
//! [`Limits::connections`] are served at once (more are told `busy` and
//! closed), a request line is at most [`Limits::line_bytes`], and a client
//! that sends no whole line within [`Limits::read_timeout`] (or does not
//! read its answer within as long) is told so and dropped.

use std::{
    future::Future,
    os::unix::{
        fs::{FileTypeExt as _, PermissionsExt as _},
        net::UnixStream as StdUnixStream,
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{Semaphore, watch},
    time::timeout,
};

use crate::model::{ApiError, ErrorCode, Request};

/// What serves the requests (the agent's [`super::ops::Ops`]; a stub in tests).
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, request: Request) -> impl Future<Output = Result<Value, ApiError>> + Send;
}

impl Handler for super::ops::Ops {
    fn handle(&self, request: Request) -> impl Future<Output = Result<Value, ApiError>> + Send {
        super::ops::Ops::handle(self, request)
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub connections: usize,
    pub line_bytes: usize,
    pub read_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { connections: 256, line_bytes: 64 * 1024, read_timeout: Duration::from_secs(5) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another agent already serves {path}")]
    InUse { path: PathBuf },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Listens on `path` with permissions 0600, replacing a stale socket but
/// refusing to take over one a live agent answers on. (Blocking: called
/// before the runtime starts, so a second agent stops before it touches
/// the datapath.)
pub fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, BindError> {
    let bind_err = |source| BindError::Bind { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && StdUnixStream::connect(path).is_ok() {
            return Err(BindError::InUse { path: path.to_owned() });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    // Created 0600 from the start: no moment where others could connect.
    // SAFETY: umask only changes the process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = std::os::unix::net::UnixListener::bind(path);
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    let listener = listener.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    Ok(listener)
}

/// Serves requests until `shutdown` turns true.
pub async fn serve<H: Handler>(
    listener: UnixListener,
    handler: Arc<H>,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.connections));
    // Refusals linger too (briefly), a bounded number at once.
    let refusals = Arc::new(Semaphore::new(limits.connections / 4 + 1));
    loop {
        let stream = tokio::select! {
            () = crate::agent::runtime::stopped(&mut shutdown) => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("api accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            let Ok(refusal) = Arc::clone(&refusals).try_acquire_owned() else { continue };
            let busy =
                ApiError::new(ErrorCode::Busy, format!("busy: {} connections open, try again", limits.connections));
            tokio::spawn(async move {
                let _refusal = refusal;
                finish(stream, answer_line(Err(busy)), Duration::from_millis(200)).await;
            });
            continue;
        };
        let handler = Arc::clone(&handler);
        tokio::spawn(async move {
            let _permit = permit;
            serve_one(stream, &*handler, limits).await;
        });
    }
}

async fn serve_one<H: Handler>(mut stream: UnixStream, handler: &H, limits: Limits) {
    let answer = match timeout(limits.read_timeout, read_line(&mut stream, limits.line_bytes)).await {
        Err(_) => Err(bad(format!("no request line within {:?}", limits.read_timeout))),
        Ok(Err(e)) => Err(e),
        Ok(Ok(line)) => match super::wire::from_line(&line) {
            Ok(request) => handler.handle(request).await,
            Err(e) => Err(e),
        },
    };
    finish(stream, answer_line(answer), limits.read_timeout).await;
}

/// Writes the answer, then lingers: reads and drops what the client still
/// sends until it closes, for at most `linger` and 1 MiB. (A Unix socket
/// closed with unread data resets its peer, which may lose its answer.)
async fn finish(mut stream: UnixStream, line: String, linger: Duration) {
    if timeout(linger, stream.write_all(line.as_bytes())).await.is_err() {
        return log::debug!("api: a client did not read its answer");
    }
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let mut left: usize = 1 << 20;
    let _ = timeout(linger, async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

fn bad(message: String) -> ApiError {
    ApiError::new(ErrorCode::BadRequest, message)
}

/// Reads one line (without its newline), at most `limit` bytes.
async fn read_line(stream: &mut UnixStream, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut reader = BufReader::new(stream.take(limit as u64 + 1));
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line).await.map_err(|e| bad(format!("cannot read the request: {e}")))?;
    if line.last() == Some(&b'\n') {
        line.pop();
    } else if line.len() > limit {
        return Err(bad(format!("request line longer than {limit} bytes")));
    }
    Ok(line)
}

fn answer_line(answer: Result<Value, ApiError>) -> String {
    let value = match answer {
        Ok(data) => json!({ "ok": true, "data": data }),
        Err(e) => json!({ "ok": false, "error": e.message, "code": e.code }),
    };
    format!("{value}\n")
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// Answers every request at once with its own op.
    struct Echo;

    impl Handler for Echo {
        async fn handle(&self, request: Request) -> Result<Value, ApiError> {
            Ok(serde_json::to_value(request).expect("requests serialise"))
        }
    }

    async fn answer(path: &Path, send: &[u8]) -> Value {
        let mut stream = UnixStream::connect(path).await.expect("connect");
        let _ = stream.write_all(send).await;
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read the answer");
        serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("bad answer {text:?}: {e}"))
    }

    #[tokio::test]
    async fn silent_and_oversized_clients_are_answered_and_the_surplus_is_refused() {
        let path = std::env::temp_dir().join(format!("lb-unix-test-{}.sock", std::process::id()));
        let listener = UnixListener::from_std(bind(&path).expect("bind")).expect("listener");
        let limits = Limits { connections: 3, line_bytes: 64, read_timeout: Duration::from_millis(300) };
        let (stop, shutdown) = watch::channel(false);
        let server = tokio::spawn(serve(listener, Arc::new(Echo), limits, shutdown));

        // Three silent clients hold every place.
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(UnixStream::connect(&path).await.expect("connect"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let busy = answer(&path, b"{\"op\":\"events\"}\n").await;
        assert_eq!(busy["code"], "busy", "{busy}");
        // Each is told it sent nothing, once its time is up.
        for mut stream in silent {
            let mut text = String::new();
            stream.read_to_string(&mut text).await.expect("read");
            assert!(text.contains("no request line within"), "{text}");
        }
        let good = answer(&path, b"{\"op\":\"stats\"}\n").await;
        assert_eq!(good, serde_json::json!({"ok": true, "data": {"op": "stats"}}));
        let long = answer(&path, &[b'x'; 200]).await;
        assert!(long["error"].as_str().unwrap().contains("longer than 64 bytes"), "{long}");
        let bad = answer(&path, b"{\"op\":\"reboot\"}\n").await;
        assert_eq!(bad["code"], "bad_request", "{bad}");

        stop.send(true).unwrap();
        server.await.unwrap();
        let _ = std::fs::remove_file(&path);
    }
}
