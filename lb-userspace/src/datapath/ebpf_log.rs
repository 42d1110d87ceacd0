//! The datapath's rare events (`lb-ebpf/src/events.rs`), read from aya-log's
//! ring buffer and printed in the agent's log. Their level is fixed when the
//! program is loaded (`lb agent --datapath-log debug`); off by default, and
//! then the verifier removes the calls from the program.

use aya::{Ebpf, EbpfLoader};
use log::{Log, Metadata, Record};

/// How much the datapath logs (`--datapath-log`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum DatapathLog {
    #[default]
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl std::str::FromStr for DatapathLog {
    type Err = String;
    fn from_str(text: &str) -> Result<DatapathLog, String> {
        Ok(match text {
            "off" => DatapathLog::Off,
            "error" => DatapathLog::Error,
            "warn" => DatapathLog::Warn,
            "info" => DatapathLog::Info,
            "debug" => DatapathLog::Debug,
            "trace" => DatapathLog::Trace,
            other => return Err(format!("\"{other}\" is not one of off, error, warn, info, debug, trace")),
        })
    }
}

impl DatapathLog {
    /// Sets the program's level constant (aya-log's `AYA_LOG_LEVEL`: 0 is
    /// off, then aya_log_common::Level's numbers, error = 1 to trace = 5).
    pub fn set_level(self, loader: &mut EbpfLoader<'_>) {
        // The loader keeps a reference until it loads.
        const LEVELS: [u8; 6] = [0, 1, 2, 3, 4, 5];
        loader.override_global(aya_log::LEVEL, &LEVELS[self as usize], true);
    }
}

/// Reads the datapath's log records as they come (wait on its descriptor).
pub type LogReader = aya_log::EbpfLogger<AgentLog>;

pub fn reader(ebpf: &mut Ebpf) -> Result<LogReader, aya_log::Error> {
    aya_log::EbpfLogger::init_with_logger(ebpf, AgentLog)
}

/// Prints each record in the agent's log, at info so that the agent's own
/// level does not hide what `--datapath-log` asked for.
pub struct AgentLog;

impl Log for AgentLog {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        log::info!("datapath {}: {}", record.level().as_str().to_ascii_lowercase(), record.args());
    }

    fn flush(&self) {}
}
