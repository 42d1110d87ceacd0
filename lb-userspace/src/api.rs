//! The agent's JSON API on a Unix socket: one request line, one response
//! line per connection. The CLI is its client; scripts can be too
//! (`{"op":"pool_show","pool":"web"}`).

use std::{
    io::{BufRead, BufReader, Read as _, Write as _},
    os::unix::{
        fs::{FileTypeExt as _, PermissionsExt as _},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{control::Control, server_state::DisableMode};

/// Largest request accepted.
const MAX_REQUEST: u64 = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    PoolList,
    PoolShow {
        pool: String,
    },
    Disable {
        pool: String,
        servers: Vec<String>,
        mode: DisableMode,
        #[serde(default)]
        force: bool,
    },
    Enable {
        pool: String,
        servers: Vec<String>,
    },
    Events,
    Stats,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot reach the agent at {path} (is `lb agent` running?): {source}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
    #[error("bad answer from the agent at {path}: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("another agent already serves {path}")]
    InUse { path: PathBuf },
    #[error("cannot listen on {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Sends a request to the agent at `path`; returns its data.
pub fn call(path: &Path, request: &Request) -> Result<Value, ApiError> {
    let unreachable = |source| ApiError::Unreachable { path: path.to_owned(), source };
    let mut stream = UnixStream::connect(path).map_err(unreachable)?;
    stream.set_read_timeout(Some(Duration::from_secs(30))).map_err(unreachable)?;
    let mut line = serde_json::to_string(request).expect("requests serialise");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(unreachable)?;
    let protocol = |message: String| ApiError::Protocol { path: path.to_owned(), message };
    let answer: Value = serde_json::from_str(answer.trim()).map_err(|e| protocol(e.to_string()))?;
    if answer["ok"] == Value::Bool(true) {
        Ok(answer["data"].clone())
    } else {
        Err(ApiError::Refused(answer["error"].as_str().unwrap_or("the agent refused the request").to_owned()))
    }
}

/// Listens on `path` with permissions 0600, replacing a stale socket but
/// refusing to take over one a live agent answers on.
pub fn bind(path: &Path) -> Result<UnixListener, ApiError> {
    let bind_err = |source| ApiError::Bind { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(bind_err)?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() && UnixStream::connect(path).is_ok() {
            return Err(ApiError::InUse { path: path.to_owned() });
        }
        std::fs::remove_file(path).map_err(bind_err)?;
    }
    // Created 0600 from the start: no moment where others could connect.
    // SAFETY: umask only changes the process's file creation mask.
    let old = unsafe { libc::umask(0o177) };
    let listener = UnixListener::bind(path);
    unsafe { libc::umask(old) };
    let listener = listener.map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Serves requests until `stop` is set.
pub fn serve(listener: UnixListener, control: Arc<Mutex<Control>>, stop: Arc<AtomicBool>) {
    listener.set_nonblocking(true).expect("nonblocking listener");
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let control = Arc::clone(&control);
                std::thread::spawn(move || {
                    if let Err(e) = handle(stream, &control) {
                        log::debug!("api connection: {e}");
                    }
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => {
                log::warn!("api accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn handle(stream: UnixStream, control: &Mutex<Control>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut writer = stream.try_clone()?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_REQUEST)).read_line(&mut line)?;
    let answer = match serde_json::from_str::<Request>(line.trim()) {
        Ok(request) => {
            let mut control = control.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            match dispatch(&mut control, request) {
                Ok(data) => json!({ "ok": true, "data": data }),
                Err(e) => json!({ "ok": false, "error": e }),
            }
        }
        Err(e) => json!({ "ok": false, "error": format!("bad request: {e}") }),
    };
    writer.write_all(format!("{answer}\n").as_bytes())
}

fn dispatch(control: &mut Control, request: Request) -> Result<Value, String> {
    let to_value = |v: Result<Value, serde_json::Error>| v.map_err(|e| e.to_string());
    // The error's own line and its causes, for the operator.
    let explain = |e: crate::control::ControlError| format!("{:#}", anyhow::Error::new(e));
    match request {
        Request::PoolList => to_value(serde_json::to_value(control.pool_list())),
        Request::PoolShow { pool } => to_value(serde_json::to_value(control.pool_show(&pool).map_err(explain)?)),
        Request::Disable { pool, servers, mode, force } => {
            to_value(serde_json::to_value(control.disable(&pool, &servers, mode, force).map_err(explain)?))
        }
        Request::Enable { pool, servers } => {
            to_value(serde_json::to_value(control.enable(&pool, &servers).map_err(explain)?))
        }
        Request::Events => to_value(serde_json::to_value(control.events())),
        Request::Stats => to_value(serde_json::to_value(control.stats().map_err(explain)?)),
    }
}
