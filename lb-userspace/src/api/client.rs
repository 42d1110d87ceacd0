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
    #[error("cannot reach the agent at {path} (is `lb agent` running?): {source}")]
    Unreachable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Refused(#[from] ApiError),
    #[error("bad answer from the agent at {path}: {message}")]
    Protocol { path: PathBuf, message: String },
}

/// Sends a request to the agent at `path`; returns its data.
pub fn call(path: &Path, request: &Request) -> Result<Value, ClientError> {
    let unreachable = |source| ClientError::Unreachable { path: path.to_owned(), source };
    let mut stream = UnixStream::connect(path).map_err(unreachable)?;
    // Long enough for an immediate disable of millions of flows.
    stream.set_read_timeout(Some(Duration::from_secs(60))).map_err(unreachable)?;
    let mut line = super::wire::to_line(request);
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(unreachable)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(unreachable)?;
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
