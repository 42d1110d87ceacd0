//! Where a config file's problems are collected, each with its key path,
//! and the checks of single values (names, addresses, ports, durations) that
//! every section's validation (`validate.rs`, `monitors.rs`) uses.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::Duration,
};

use super::{Problem, format_duration, parse_duration};

#[derive(Default)]
pub(super) struct Validator {
    pub(super) problems: Vec<Problem>,
}

impl Validator {
    pub(super) fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    pub(super) fn name(&mut self, path: &str, value: Option<String>, what: &str) -> String {
        match value {
            None => {
                self.problem(path, format!("missing {what}"));
                String::new()
            }
            Some(name) => {
                if !valid_name(&name) {
                    self.problem(path, format!("{what} \"{name}\" must be 1-64 letters, digits, '-', '_' or '.'"));
                }
                name
            }
        }
    }

    pub(super) fn address(&mut self, path: &str, value: Option<String>) -> IpAddr {
        let none = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        match value.as_deref().map(str::parse::<IpAddr>) {
            Some(Ok(addr)) => match unusable(addr) {
                None => addr,
                Some(why) => {
                    self.problem(path, format!("{addr} cannot be used here: {why}"));
                    none
                }
            },
            Some(Err(_)) => {
                self.problem(path, format!("\"{}\" is not an IPv4 or IPv6 address", value.unwrap_or_default()));
                none
            }
            None => {
                self.problem(path, "missing address");
                none
            }
        }
    }

    pub(super) fn port(&mut self, path: &str, value: Option<i64>) -> u16 {
        match value {
            Some(p) if (1..=65535).contains(&p) => p as u16,
            Some(p) => {
                self.problem(path, format!("port {p} is not in 1..65535"));
                0
            }
            None => {
                self.problem(path, "missing port");
                0
            }
        }
    }

    /// A duration longer than zero (`default` when not set).
    pub(super) fn duration(&mut self, path: &str, value: Option<String>, default: Duration) -> Duration {
        self.duration_of_at_least(path, value, default, Duration::ZERO)
    }

    /// A duration of at least `least` (longer than zero when `least` is 0).
    pub(super) fn duration_of_at_least(
        &mut self,
        path: &str,
        value: Option<String>,
        default: Duration,
        least: Duration,
    ) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(&text) {
            Ok(d) if d > Duration::ZERO && d >= least => d,
            Ok(_) if least.is_zero() => {
                self.problem(path, "must be longer than zero");
                default
            }
            Ok(_) => {
                self.problem(path, format!("must be at least {}", format_duration(least)));
                default
            }
            Err(e) => {
                self.problem(path, e.to_string());
                default
            }
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Why a VIP or a server cannot have this address, if it cannot.
fn unusable(addr: IpAddr) -> Option<&'static str> {
    let (unspecified, multicast, loopback) = match addr {
        IpAddr::V4(a) => (a.is_unspecified(), a.is_multicast() || a.is_broadcast(), a.is_loopback()),
        IpAddr::V6(a) => (a.is_unspecified(), a.is_multicast(), a.is_loopback()),
    };
    if unspecified {
        Some("it is the unspecified address")
    } else if multicast {
        Some("it is a broadcast or multicast address, not one host's")
    } else if loopback {
        // A packet to a loopback address never leaves its host, and one
        // that arrives from a wire is dropped as a martian.
        Some("it is a loopback address, which no packet from another host reaches")
    } else {
        None
    }
}
