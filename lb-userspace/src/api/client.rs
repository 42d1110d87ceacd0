//! The API's client, for the CLI and scripts: one request line, one answer
//! line per connection, blocking.

use std::{
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::Value;

use crate::model::{ApiError, Request};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    // The cause is in the message and not a `source`: a chain printed
    // whole (`{:#}`, as `lb` prints errors) would say it twice.
    #[error("cannot reach the agent at {path} (is `lb agent` running?): {cause}{others}")]
    Unreachable { path: PathBuf, cause: std::io::Error, others: String },
    /// Asked, but no answer came in time: the change asked for may have
    /// been made, or be under way (the state first, then a purge).
    #[error(
        "the agent at {path} did not answer within {waited:?}; what was asked may still be under way \
         (see `lb pool show` and `lb events`)"
    )]
    NoAnswer { path: PathBuf, waited: Duration },
    #[error(transparent)]
    Refused(#[from] ApiError),
    #[error("bad answer from the agent at {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// Where no socket is at `path`, the agents' sockets beside it, if any (read
/// once, as the error is made, not each time it is shown): an
/// instance named other than "lb" (`instance = "lb0"`) has its socket at
/// /run/lb/lb0.sock, not at the CLI's default.
fn others_hint(path: &Path, cause: &std::io::Error) -> String {
    if cause.kind() != std::io::ErrorKind::NotFound {
        return String::new();
    }
    let Some(entries) = path.parent().and_then(|dir| std::fs::read_dir(dir).ok()) else { return String::new() };
    let mut sockets: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| std::os::unix::fs::FileTypeExt::is_socket(&t)))
        .map(|e| e.path().display().to_string())
        .collect();
    if sockets.is_empty() {
        return String::new();
    }
    sockets.sort();
    format!("; agents' sockets there: {} (choose one with --socket or LB_SOCKET)", sockets.join(", "))
}

/// How long the CLI waits for an answer: long enough for an immediate
/// disable of millions of flows (a million take about 5 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends a request to the agent at `path`; returns its data.
pub fn call(path: &Path, request: &Request) -> Result<Value, ClientError> {
    call_within(path, request, ANSWER_TIMEOUT)
}

fn call_within(path: &Path, request: &Request, timeout: Duration) -> Result<Value, ClientError> {
    let unreachable = |cause: std::io::Error| {
        let others = others_hint(path, &cause);
        ClientError::Unreachable { path: path.to_owned(), cause, others }
    };
    let mut stream = UnixStream::connect(path).map_err(unreachable)?;
    stream.set_read_timeout(Some(timeout)).map_err(unreachable)?;
    let mut line = super::wire::to_line(request);
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|source| match source.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            ClientError::NoAnswer { path: path.to_owned(), waited: timeout }
        }
        _ => unreachable(source),
    })?;
    match read_answer(&answer) {
        Ok(answer) => answer.map_err(ClientError::Refused),
        Err(message) => Err(ClientError::Protocol { path: path.to_owned(), message }),
    }
}

/// The agent's answer line: `{"ok":true,"data":..}` or a refusal
/// (`{"ok":false,"code":..,"error":..}`); `Err` when it is neither.
pub fn read_answer(line: &str) -> Result<Result<Value, ApiError>, String> {
    let mut answer: Value = serde_json::from_str(line.trim()).map_err(|e| e.to_string())?;
    if answer["ok"] == Value::Bool(true) {
        return Ok(Ok(answer["data"].take()));
    }
    serde_json::from_value(answer).map(Err).map_err(|e| e.to_string())
}

/// [`call`], its data read as the answer's type (the API's model).
pub fn ask<T: serde::de::DeserializeOwned>(path: &Path, request: &Request) -> Result<T, ClientError> {
    let data = call(path, request)?;
    serde_json::from_value(data)
        .map_err(|e| ClientError::Protocol { path: path.to_owned(), message: format!("unexpected answer: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_agent_that_does_not_answer_in_time_is_not_called_unreachable() {
        let dir = std::env::temp_dir().join(format!("lb-client-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("api.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // Takes the request and holds it, as an agent busy with a purge does.
        let held = std::thread::spawn(move || listener.accept().map(|(stream, _)| stream));
        let error = call_within(&path, &Request::PoolList, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(error, ClientError::NoAnswer { .. }), "{error:?}");
        let said = error.to_string();
        assert!(said.contains("did not answer within 100ms; what was asked may still be under way"), "{said}");
        drop(held.join());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn no_agent_at_the_socket_says_so_once_and_names_the_sockets_beside_it() {
        let dir = std::env::temp_dir().join(format!("lb-client-others-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let error = call(&dir.join("lb.sock"), &Request::PoolList).unwrap_err();
        let said = format!("{:#}", anyhow::Error::from(error));
        assert_eq!(said.matches("No such file or directory").count(), 1, "the cause once: {said}");
        assert!(!said.contains("agents' sockets"), "none beside it: {said}");
        let _listener = std::os::unix::net::UnixListener::bind(dir.join("lb0.sock")).unwrap();
        let said = call(&dir.join("lb.sock"), &Request::PoolList).unwrap_err().to_string();
        let other = dir.join("lb0.sock").display().to_string();
        assert!(
            said.ends_with(&format!("agents' sockets there: {other} (choose one with --socket or LB_SOCKET)")),
            "{said}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
