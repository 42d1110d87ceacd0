//! A pool's health monitors and what it does with their verdicts: the config
//! as written (`RawMonitor`), its checks, and the validated types.

use std::time::Duration;

use serde::Deserialize;

use super::{checks::Validator, parse_duration};

/// How a check asks a server whether it is well.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A connect; optionally `send`, then `expect` in the first 2 KiB.
    Tcp { send: Option<String>, expect: Option<String> },
    /// A request; the status in `codes`, and `expect` in the first 2 KiB.
    Http { method: String, path: String, host: Option<String>, codes: Vec<(u16, u16)>, expect: Option<String> },
    /// A datagram `send`; a reply (containing `expect`, if set).
    Udp { send: String, expect: Option<String> },
}

/// Replies that say the server is going into maintenance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MaintenanceSigns {
    /// HTTP status codes (at most 4).
    pub codes: Vec<u16>,
    /// A string in the first 2 KiB of the reply.
    pub string: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Monitor {
    pub probe: Probe,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a DOWN server UP.
    pub rise: u32,
    /// Consecutive failures that take an UP server DOWN.
    pub fall: u32,
    /// The port checked (none: the server's).
    pub port: Option<u16>,
    pub maintenance: MaintenanceSigns,
}

impl Monitor {
    pub fn kind(&self) -> &'static str {
        match self.probe {
            Probe::Tcp { .. } => "tcp",
            Probe::Http { .. } => "http",
            Probe::Udp { .. } => "udp",
        }
    }
}

/// What becomes of the flows of a server its monitors find DOWN.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDown {
    /// They go on (as most L4 balancers do).
    #[default]
    Keep,
    /// They are reset at once, as by an immediate disable.
    Terminate,
    /// They go on until this long after it went DOWN, then are reset.
    After(Duration),
}

/// The shortest interval or timeout a monitor may have.
const MIN_CHECK_TIME: Duration = Duration::from_millis(10);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMonitor {
    kind: Option<String>,
    interval: Option<String>,
    timeout: Option<String>,
    rise: Option<i64>,
    fall: Option<i64>,
    port: Option<i64>,
    send: Option<String>,
    expect: Option<String>,
    method: Option<String>,
    path: Option<String>,
    host: Option<String>,
    codes: Option<Vec<String>>,
    maintenance_codes: Option<Vec<i64>>,
    maintenance_string: Option<String>,
}

impl Validator {
    pub(super) fn monitor(&mut self, path: &str, raw: RawMonitor) -> Monitor {
        let at_least = |v: &mut Self, key: &str, value: &Option<String>, default: Duration| {
            v.duration_of_at_least(&format!("{path}.{key}"), value.clone(), default, MIN_CHECK_TIME)
        };
        let interval = at_least(self, "interval", &raw.interval, Duration::from_secs(5));
        let timeout = at_least(self, "timeout", &raw.timeout, Duration::from_secs(2));
        if timeout >= interval {
            self.problem(format!("{path}.timeout"), "must be below the interval");
        }
        let probe = self.probe(path, &raw);
        let maintenance = self.maintenance_signs(path, &raw, &probe);
        Monitor {
            interval,
            timeout,
            rise: self.count(&format!("{path}.rise"), raw.rise, 2),
            fall: self.count(&format!("{path}.fall"), raw.fall, 2),
            port: raw.port.map(|p| self.port(&format!("{path}.port"), Some(p))),
            maintenance,
            probe,
        }
    }

    fn probe(&mut self, path: &str, raw: &RawMonitor) -> Probe {
        let kind = raw.kind.as_deref().unwrap_or("");
        let http_only = [("method", raw.method.is_some()), ("path", raw.path.is_some()), ("host", raw.host.is_some())];
        let not_here = |v: &mut Validator, fields: &[(&str, bool)]| {
            for (field, set) in fields {
                if *set {
                    v.problem(format!("{path}.{field}"), format!("not a setting of a {kind} monitor"));
                }
            }
        };
        match kind {
            "tcp" => {
                not_here(self, &http_only);
                not_here(self, &[("codes", raw.codes.is_some())]);
                Probe::Tcp { send: raw.send.clone(), expect: raw.expect.clone() }
            }
            "udp" => {
                not_here(self, &http_only);
                not_here(self, &[("codes", raw.codes.is_some())]);
                let send = raw.send.clone().unwrap_or_else(|| {
                    self.problem(format!("{path}.send"), "a udp monitor needs a datagram to send");
                    String::new()
                });
                Probe::Udp { send, expect: raw.expect.clone() }
            }
            "http" => {
                not_here(self, &[("send", raw.send.is_some())]);
                Probe::Http {
                    method: raw.method.clone().unwrap_or_else(|| "GET".to_owned()),
                    path: raw.path.clone().unwrap_or_else(|| "/".to_owned()),
                    host: raw.host.clone(),
                    codes: self.codes(&format!("{path}.codes"), raw.codes.as_deref()),
                    expect: raw.expect.clone(),
                }
            }
            other => {
                let what =
                    if other.is_empty() { "missing kind".to_owned() } else { format!("unknown kind \"{other}\"") };
                self.problem(format!("{path}.kind"), format!("{what} (tcp, http or udp)"));
                Probe::Tcp { send: None, expect: None }
            }
        }
    }

    fn maintenance_signs(&mut self, path: &str, raw: &RawMonitor, probe: &Probe) -> MaintenanceSigns {
        let codes: Vec<u16> = raw
            .maintenance_codes
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|c| self.status(&format!("{path}.maintenance_codes"), c))
            .collect();
        if codes.len() > 4 {
            self.problem(format!("{path}.maintenance_codes"), format!("{} codes, at most 4", codes.len()));
        }
        if !codes.is_empty() && !matches!(probe, Probe::Http { .. }) {
            self.problem(format!("{path}.maintenance_codes"), "only an http monitor has status codes");
        }
        if raw.maintenance_string.as_deref() == Some("") {
            self.problem(format!("{path}.maintenance_string"), "must not be empty");
        }
        MaintenanceSigns { codes, string: raw.maintenance_string.clone() }
    }

    /// "200-399", "204": ranges of status codes (default 2xx and 3xx).
    fn codes(&mut self, path: &str, raw: Option<&[String]>) -> Vec<(u16, u16)> {
        let Some(raw) = raw else { return vec![(200, 399)] };
        raw.iter()
            .map(|text| {
                let (low, high) = text.split_once('-').unwrap_or((text, text));
                match (low.trim().parse::<i64>(), high.trim().parse::<i64>()) {
                    (Ok(low), Ok(high)) if low <= high => (self.status(path, low), self.status(path, high)),
                    _ => {
                        self.problem(path, format!("\"{text}\" is not a status code or a range such as \"200-299\""));
                        (0, 0)
                    }
                }
            })
            .collect()
    }

    fn status(&mut self, path: &str, code: i64) -> u16 {
        if !(100..=599).contains(&code) {
            self.problem(path, format!("{code} is not a status code (100-599)"));
        }
        code.clamp(0, 999) as u16
    }

    fn count(&mut self, path: &str, value: Option<i64>, default: u32) -> u32 {
        match value {
            None => default,
            Some(n) if (1..=100).contains(&n) => n as u32,
            Some(n) => {
                self.problem(path, format!("{n} is not in 1..100"));
                default
            }
        }
    }

    /// "keep" (the default), "terminate", or a duration.
    pub(super) fn on_down(&mut self, path: &str, value: Option<String>) -> OnDown {
        match value.as_deref() {
            None | Some("keep") => OnDown::Keep,
            Some("terminate") | Some("0") => OnDown::Terminate,
            Some(text) => match parse_duration(text) {
                Ok(d) if d.is_zero() => OnDown::Terminate,
                Ok(d) => OnDown::After(d),
                Err(e) => {
                    self.problem(path, format!("{e} (or \"keep\", \"terminate\")"));
                    OnDown::Keep
                }
            },
        }
    }
}
