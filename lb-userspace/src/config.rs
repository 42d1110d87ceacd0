//! The agent's configuration file (TOML): what it reads, and every check made
//! before anything is applied. Validation collects all problems, each with its
//! key path, so an operator fixes a file in one pass.

use std::{collections::BTreeMap, fmt, net::Ipv4Addr, path::Path, path::PathBuf, time::Duration};

use lb_common::{DEFAULT_MAX_FLOWS, DEFAULT_MAX_SERVERS, DEFAULT_MAX_SERVICES};

/// The largest `flows.max`.
const MAX_FLOWS_LIMIT: u32 = 1 << 26;
use serde::Deserialize;

use crate::duration::parse_duration;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// Names the pin directory /sys/fs/bpf/<instance> and the default socket.
    pub instance: String,
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub api_socket: PathBuf,
    /// Where servers' states and drain deadlines are saved.
    pub state_file: PathBuf,
    pub flows: FlowSettings,
    pub max_services: u32,
    pub max_servers: u32,
    pub services: Vec<ServiceConfig>,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Let the kernel choose (native when the driver supports it).
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => lb_common::proto::TCP,
            Protocol::Udp => lb_common::proto::UDP,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSettings {
    /// Capacity of the flow table (LRU: the least recently used flow is
    /// evicted when it is full).
    pub max_flows: u32,
    /// An open TCP flow idle this long is removed.
    pub tcp_idle_timeout: Duration,
    /// A TCP flow that saw FIN or RST is removed after this much quiet.
    pub tcp_closing_timeout: Duration,
    pub udp_idle_timeout: Duration,
    /// How often the agent sweeps the flow table.
    pub sweep_interval: Duration,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: Protocol,
    pub pool: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub servers: Vec<ServerConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub name: String,
    pub address: Ipv4Addr,
    pub port: u16,
    pub weight: u32,
}

/// One thing wrong with a config file, at a key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is not valid TOML for this agent: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config {path} has {} problem(s), nothing was applied:\n{}", problems.len(), list(problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

fn list(problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n")
}

// The file as written. Durations and addresses are strings here so that a bad
// one is reported with its key path rather than as a parse failure.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    instance: Option<String>,
    interfaces: Option<Vec<String>>,
    xdp_mode: Option<String>,
    api_socket: Option<PathBuf>,
    state_file: Option<PathBuf>,
    #[serde(default)]
    flows: RawFlows,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFlows {
    max: Option<u32>,
    tcp_idle_timeout: Option<String>,
    tcp_closing_timeout: Option<String>,
    udp_idle_timeout: Option<String>,
    sweep_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_services: Option<u32>,
    max_servers: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    vip: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPool {
    #[serde(default)]
    servers: Vec<RawServer>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    name: Option<String>,
    address: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
}

/// Default API socket of an instance.
pub fn default_api_socket(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/lb/{instance}.sock"))
}

/// Default state file of an instance.
pub fn default_state_file(instance: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/lb/{instance}.state.json"))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(&text, path)
    }

    /// Parses and validates; `path` is only for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text)
            .map_err(|e| ConfigError::Syntax { path: path.to_owned(), message: e.to_string().trim().to_owned() })?;
        let mut v = Validator::default();
        let config = v.config(raw);
        if v.problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid { path: path.to_owned(), problems: v.problems })
        }
    }

    /// The pool of a server by names, if both exist.
    pub fn server(&self, pool: &str, server: &str) -> Option<&ServerConfig> {
        self.pools.get(pool)?.servers.iter().find(|s| s.name == server)
    }
}

#[derive(Default)]
struct Validator {
    problems: Vec<Problem>,
}

impl Validator {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem { path: path.into(), message: message.into() });
    }

    fn name(&mut self, path: &str, value: Option<String>, what: &str) -> String {
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

    fn address(&mut self, path: &str, value: Option<String>) -> Ipv4Addr {
        match value.as_deref().map(str::parse::<Ipv4Addr>) {
            Some(Ok(addr)) if !addr.is_unspecified() && !addr.is_broadcast() && !addr.is_multicast() => addr,
            Some(Ok(addr)) => {
                self.problem(path, format!("{addr} cannot be used here"));
                Ipv4Addr::UNSPECIFIED
            }
            Some(Err(_)) => {
                self.problem(path, format!("\"{}\" is not an IPv4 address", value.unwrap_or_default()));
                Ipv4Addr::UNSPECIFIED
            }
            None => {
                self.problem(path, "missing address");
                Ipv4Addr::UNSPECIFIED
            }
        }
    }

    fn port(&mut self, path: &str, value: Option<i64>) -> u16 {
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

    fn duration(&mut self, path: &str, value: Option<String>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        match parse_duration(&text) {
            Ok(d) if d > Duration::ZERO => d,
            Ok(_) => {
                self.problem(path, "must be longer than zero");
                default
            }
            Err(e) => {
                self.problem(path, e.to_string());
                default
            }
        }
    }

    fn config(&mut self, raw: RawConfig) -> Config {
        let instance = self.name("instance", Some(raw.instance.unwrap_or_else(|| "lb".to_owned())), "instance name");
        let interfaces = raw.interfaces.unwrap_or_default();
        if interfaces.is_empty() {
            self.problem("interfaces", "list at least one interface to attach to");
        }
        for (i, name) in interfaces.iter().enumerate() {
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                self.problem(format!("interfaces[{i}]"), format!("\"{name}\" is not an interface name"));
            }
            if interfaces[..i].contains(name) {
                self.problem(format!("interfaces[{i}]"), format!("\"{name}\" is listed twice"));
            }
        }
        let xdp_mode = match raw.xdp_mode.as_deref() {
            None | Some("auto") => XdpMode::Auto,
            Some("native") => XdpMode::Native,
            Some("generic") => XdpMode::Generic,
            Some(other) => {
                self.problem("xdp_mode", format!("\"{other}\" is not one of auto, native, generic"));
                XdpMode::Auto
            }
        };
        let api_socket = raw.api_socket.unwrap_or_else(|| default_api_socket(&instance));
        let state_file = raw.state_file.unwrap_or_else(|| default_state_file(&instance));

        let max_flows = raw.flows.max.unwrap_or(DEFAULT_MAX_FLOWS);
        if max_flows < 1024 {
            self.problem("flows.max", format!("{max_flows} is too small (at least 1024)"));
        }
        // The table has twice as many 64-byte slots, rounded up to a power of two.
        if max_flows > MAX_FLOWS_LIMIT {
            self.problem("flows.max", format!("{max_flows} is too large (at most {MAX_FLOWS_LIMIT}: 8 GiB of table)"));
        }
        let flows = FlowSettings {
            max_flows,
            tcp_idle_timeout: self.duration(
                "flows.tcp_idle_timeout",
                raw.flows.tcp_idle_timeout,
                Duration::from_secs(300),
            ),
            tcp_closing_timeout: self.duration(
                "flows.tcp_closing_timeout",
                raw.flows.tcp_closing_timeout,
                Duration::from_secs(10),
            ),
            udp_idle_timeout: self.duration(
                "flows.udp_idle_timeout",
                raw.flows.udp_idle_timeout,
                Duration::from_secs(30),
            ),
            sweep_interval: self.duration("flows.sweep_interval", raw.flows.sweep_interval, Duration::from_secs(1)),
        };
        let max_services = raw.limits.max_services.unwrap_or(DEFAULT_MAX_SERVICES);
        let max_servers = raw.limits.max_servers.unwrap_or(DEFAULT_MAX_SERVERS);
        if max_services == 0 || max_services > 1024 {
            self.problem("limits.max_services", format!("{max_services} is not in 1..1024"));
        }
        if max_servers == 0 || max_servers > 65536 {
            self.problem("limits.max_servers", format!("{max_servers} is not in 1..65536"));
        }

        let mut pools = BTreeMap::new();
        let mut server_count = 0usize;
        for (pool_name, raw_pool) in raw.pools {
            let base = format!("pools.{pool_name}");
            self.name(&base, Some(pool_name.clone()), "pool name");
            let mut servers: Vec<ServerConfig> = Vec::new();
            for (i, raw_server) in raw_pool.servers.into_iter().enumerate() {
                let path = format!("{base}.servers[{i}]");
                let server = ServerConfig {
                    name: self.name(&format!("{path}.name"), raw_server.name, "server name"),
                    address: self.address(&format!("{path}.address"), raw_server.address),
                    port: self.port(&format!("{path}.port"), raw_server.port),
                    weight: match raw_server.weight {
                        None => 1,
                        Some(w) if (0..=65535).contains(&w) => w as u32,
                        Some(w) => {
                            self.problem(format!("{path}.weight"), format!("weight {w} is not in 0..65535"));
                            1
                        }
                    },
                };
                if let Some(j) = servers.iter().position(|s| s.name == server.name && !s.name.is_empty()) {
                    self.problem(format!("{path}.name"), format!("\"{}\" is already servers[{j}]", server.name));
                }
                if let Some(j) = servers.iter().position(|s| s.address == server.address && s.port == server.port) {
                    self.problem(
                        format!("{path}.address"),
                        format!("{}:{} is already servers[{j}]", server.address, server.port),
                    );
                }
                servers.push(server);
            }
            server_count += servers.len();
            pools.insert(pool_name, PoolConfig { servers });
        }
        if server_count > max_servers as usize {
            self.problem("pools", format!("{server_count} servers, more than limits.max_servers ({max_servers})"));
        }

        let mut services: Vec<ServiceConfig> = Vec::new();
        for (i, raw_service) in raw.services.into_iter().enumerate() {
            let path = format!("services[{i}]");
            let vip = self.address(&format!("{path}.vip"), raw_service.vip);
            let port = self.port(&format!("{path}.port"), raw_service.port);
            let protocol = match raw_service.protocol.as_deref() {
                Some("tcp") => Protocol::Tcp,
                Some("udp") => Protocol::Udp,
                Some(other) => {
                    self.problem(format!("{path}.protocol"), format!("\"{other}\" is not tcp or udp"));
                    Protocol::Tcp
                }
                None => {
                    self.problem(format!("{path}.protocol"), "missing protocol (tcp or udp)");
                    Protocol::Tcp
                }
            };
            let pool = match raw_service.pool {
                Some(pool) if pools.contains_key(&pool) => pool,
                Some(pool) => {
                    self.problem(format!("{path}.pool"), format!("unknown pool \"{pool}\""));
                    pool
                }
                None => {
                    self.problem(format!("{path}.pool"), "missing pool");
                    String::new()
                }
            };
            let service = ServiceConfig { vip, port, protocol, pool };
            if let Some(j) =
                services.iter().position(|s| s.vip == vip && s.port == port && s.protocol == protocol && port != 0)
            {
                self.problem(&path, format!("{vip}:{port}/{protocol} is already services[{j}]"));
            }
            services.push(service);
        }
        if services.len() > max_services as usize {
            self.problem(
                "services",
                format!("{} services, more than limits.max_services ({max_services})", services.len()),
            );
        }
        Config {
            instance,
            interfaces,
            xdp_mode,
            api_socket,
            state_file,
            flows,
            max_services,
            max_servers,
            services,
            pools,
        }
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        instance = "lb0"
        interfaces = ["veth0", "veth1"]

        [flows]
        max = 65536
        tcp_idle_timeout = "5m"

        [[services]]
        vip = "10.0.0.100"
        port = 80
        protocol = "tcp"
        pool = "web"

        [[pools.web.servers]]
        name = "a"
        address = "10.0.1.2"
        port = 8080
        weight = 3

        [[pools.web.servers]]
        name = "b"
        address = "10.0.2.2"
        port = 8080
    "#;

    fn problems(text: &str) -> Vec<String> {
        match Config::parse(text, Path::new("lb.toml")) {
            Err(ConfigError::Invalid { problems, .. }) => problems.iter().map(ToString::to_string).collect(),
            other => panic!("expected validation problems, got {other:?}"),
        }
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = Config::parse(GOOD, Path::new("lb.toml")).expect("valid config");
        assert_eq!(c.instance, "lb0");
        assert_eq!(c.flows.max_flows, 65536);
        assert_eq!(c.flows.tcp_idle_timeout, Duration::from_secs(300));
        assert_eq!(c.flows.udp_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.pools["web"].servers[0].weight, 3);
        assert_eq!(c.pools["web"].servers[1].weight, 1);
        assert_eq!(c.api_socket, PathBuf::from("/run/lb/lb0.sock"));
        assert_eq!(c.services[0].protocol, Protocol::Tcp);
    }

    #[test]
    fn the_flow_table_size_is_bounded() {
        let p = problems(&GOOD.replace("max = 65536", "max = 100"));
        assert_eq!(p, ["flows.max: 100 is too small (at least 1024)"], "{p:?}");
        let p = problems(&GOOD.replace("max = 65536", "max = 67108865"));
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("flows.max: 67108865 is too large (at most 67108864"), "{p:?}");
        let c = Config::parse(&GOOD.replace("max = 65536", "max = 67108864"), Path::new("lb.toml")).expect("the limit");
        assert_eq!(c.flows.max_flows, 1 << 26);
    }

    #[test]
    fn every_problem_is_reported_with_its_key_path() {
        let text = GOOD
            .replace("pool = \"web\"", "pool = \"webb\"")
            .replace("address = \"10.0.2.2\"", "address = \"10.0.2\"")
            .replace("tcp_idle_timeout = \"5m\"", "tcp_idle_timeout = \"-5m\"")
            .replace("weight = 3", "weight = -1");
        let p = problems(&text);
        assert!(p.contains(&"services[0].pool: unknown pool \"webb\"".to_owned()), "{p:?}");
        assert!(p.contains(&"pools.web.servers[1].address: \"10.0.2\" is not an IPv4 address".to_owned()), "{p:?}");
        assert!(p.iter().any(|l| l.starts_with("flows.tcp_idle_timeout: duration \"-5m\" is negative")), "{p:?}");
        assert!(p.contains(&"pools.web.servers[0].weight: weight -1 is not in 0..65535".to_owned()), "{p:?}");
        assert_eq!(p.len(), 4, "{p:?}");
    }

    #[test]
    fn duplicates_and_missing_fields_are_problems() {
        let text =
            GOOD.replace("name = \"b\"", "name = \"a\"").replace("address = \"10.0.2.2\"", "address = \"10.0.1.2\"");
        let p = problems(&text);
        assert!(p.contains(&"pools.web.servers[1].name: \"a\" is already servers[0]".to_owned()), "{p:?}");
        assert!(p.contains(&"pools.web.servers[1].address: 10.0.1.2:8080 is already servers[0]".to_owned()), "{p:?}");
        let p = problems("interfaces = []\n[[services]]\nvip = \"10.0.0.1\"\n");
        assert!(p.contains(&"interfaces: list at least one interface to attach to".to_owned()), "{p:?}");
        assert!(p.contains(&"services[0].port: missing port".to_owned()), "{p:?}");
        assert!(p.contains(&"services[0].protocol: missing protocol (tcp or udp)".to_owned()), "{p:?}");
        assert!(p.contains(&"services[0].pool: missing pool".to_owned()), "{p:?}");
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_syntax_errors() {
        let err = Config::parse("interfaces = [\"a\"]\nbogus = 1\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let err = Config::parse("interfaces = [", Path::new("x.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }
}
