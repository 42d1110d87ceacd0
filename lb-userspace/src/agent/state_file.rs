//! The runtime state that must survive the agent (`servers::Saved`): each
//! server's state and absolute drain deadline, who set it, what the config
//! last said of it, and what is on its way out of the config. Written atomically (write, fsync, rename, fsync
//! the directory), so a crash leaves the old file or the new one, never half.

use std::{
    collections::BTreeMap,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::servers::{LeavingService, Saved, ServerRecord};

const VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read state file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {message}; move it away to start with every server enabled")]
    Corrupt { path: PathBuf, message: String },
    #[error("cannot write state file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

// Version 1 files of older agents (a state per server, set by operators)
// read as records whose source is an operator and config line unknown.
#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    /// "pool/server" -> record.
    servers: BTreeMap<String, ServerRecord>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    leaving_services: Vec<LeavingService>,
}

/// Reads the saved states; a missing file means none saved yet.
pub fn load(path: &Path) -> Result<Saved, StateFileError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Saved::default()),
        Err(source) => {
            return Err(StateFileError::Read { path: path.to_owned(), source });
        }
    };
    let corrupt = |message: String| StateFileError::Corrupt { path: path.to_owned(), message };
    let file: File = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
    if file.version != VERSION {
        return Err(corrupt(format!("version {} (this agent writes {VERSION})", file.version)));
    }
    let mut saved = Saved { leaving_services: file.leaving_services, ..Saved::default() };
    for (name, record) in file.servers {
        let (pool, server) = name.split_once('/').ok_or_else(|| corrupt(format!("bad server name {name:?}")))?;
        saved.servers.insert((pool.to_owned(), server.to_owned()), record);
    }
    Ok(saved)
}

pub fn save(path: &Path, states: &Saved) -> Result<(), StateFileError> {
    prepare(path, states)?.commit()
}

/// New states written beside the state file, not yet in its place: what can
/// fail for want of room or of a writable file system fails here, before a
/// change touches the datapath; the slow part (`commit`: fsync, rename)
/// comes after. Dropped uncommitted, it leaves the state file as it was.
pub struct Pending {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::fs::File>,
}

/// Writes `states` into a file beside `path` (see [`Pending`]).
pub fn prepare(path: &Path, states: &Saved) -> Result<Pending, StateFileError> {
    let write_err = |source| StateFileError::Write { path: path.to_owned(), source };
    let file = File {
        version: VERSION,
        servers: states.servers.iter().map(|((pool, server), record)| (format!("{pool}/{server}"), *record)).collect(),
        leaving_services: states.leaving_services.clone(),
    };
    let text = serde_json::to_string_pretty(&file).expect("states serialise");
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(write_err)?;
    let tmp = path.with_extension("tmp");
    let mut pending = Pending { path: path.to_owned(), tmp: tmp.clone(), file: None };
    let mut f = std::fs::File::create(&tmp).map_err(write_err)?;
    pending.file = Some(f.try_clone().map_err(write_err)?);
    f.write_all(text.as_bytes()).map_err(write_err)?;
    Ok(pending)
}

impl Pending {
    /// Makes the new states the state file's, durably (fsync, rename, fsync
    /// the directory): a crash leaves the old file or the new one.
    pub fn commit(mut self) -> Result<(), StateFileError> {
        let write_err = |source| StateFileError::Write { path: self.path.clone(), source };
        let file = self.file.take().expect("prepared");
        file.sync_all().map_err(write_err)?;
        std::fs::rename(&self.tmp, &self.path).map_err(write_err)?;
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(write_err)?;
        Ok(())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::Protocol,
        servers::{AdminState, DisableReason, Leaving, RampRecord, Source},
    };

    #[test]
    fn states_round_trip_and_a_missing_file_is_empty() {
        let dir = std::env::temp_dir().join(format!("lb-state-test-{}", std::process::id()));
        let path = dir.join("state.json");
        assert_eq!(load(&path).unwrap(), Saved::default());
        let mut states = Saved::default();
        let draining = AdminState::Draining { since_ms: 1, deadline_ms: Some(99) };
        states.servers.insert(("web".into(), "a".into()), ServerRecord::operator(draining));
        let ramping = ServerRecord {
            ramp: Some(RampRecord { since_ms: 3, until_ms: 30_003 }),
            ..ServerRecord::operator(AdminState::Enabled)
        };
        states.servers.insert(("web".into(), "c".into()), ramping);
        let drained = AdminState::Disabled { since_ms: 2, reason: DisableReason::Drained };
        let removing = ServerRecord {
            admin: drained,
            source: Source::Config,
            config_enabled: Some(false),
            removing: true,
            ramp: None,
        };
        states.servers.insert(("web".into(), "b".into()), removing);
        states.leaving_services.push(LeavingService {
            vip: "10.0.0.1".parse().unwrap(),
            port: 80,
            protocol: Protocol::Udp,
            pool: "web".into(),
            leaving: Leaving { since_ms: 5, deadline_ms: None },
        });
        save(&path, &states).unwrap();
        assert_eq!(load(&path).unwrap(), states);
        std::fs::write(&path, "{").unwrap();
        assert!(matches!(load(&path), Err(StateFileError::Corrupt { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_older_agents_file_reads_as_operator_records_with_an_unknown_line() {
        let dir = std::env::temp_dir().join(format!("lb-state-old-{}", std::process::id()));
        let path = dir.join("state.json");
        std::fs::create_dir_all(&dir).unwrap();
        let old = r#"{"version":1,"servers":{"web/a":{"state":"draining","since_ms":1,"deadline_ms":null}}}"#;
        std::fs::write(&path, old).unwrap();
        let record = load(&path).unwrap().servers[&("web".into(), "a".into())];
        assert_eq!(record.admin, AdminState::Draining { since_ms: 1, deadline_ms: None });
        assert_eq!((record.source, record.config_enabled, record.removing), (Source::Operator, None, false));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
