//! The agent's configuration file (TOML): what it reads, and every check made
//! before anything is applied. Validation collects all problems, each with its
//! key path, so an operator fixes a file in one pass (`validate`).

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    time::Duration,
};

mod bgp;
mod checks;
mod cluster;
mod duration;
mod monitors;
mod validate;

pub use bgp::BgpConfig;
use checks::Validator;
pub use cluster::{ClusterConfig, ClusterTls};
pub use duration::{DurationError, format_duration, format_time_left, parse_duration};
pub use monitors::{MaintenanceSigns, Monitor, OnDown, Probe};
use validate::RawConfig;

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
    pub http: HttpSettings,
    pub services: Vec<ServiceConfig>,
    /// Pools by name.
    pub pools: BTreeMap<String, PoolConfig>,
    /// None: one node on its own.
    pub cluster: Option<ClusterConfig>,
    /// None: the VIPs are not announced by this agent.
    pub bgp: Option<BgpConfig>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Let the kernel choose (native when the driver supports it).
    Auto,
    Native,
    Generic,
}

/// How a server is taken out of service, by an operator's disable or by the
/// config (a pool's `graceful_disable_timeout`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum DisableMode {
    /// Terminate every session now.
    Immediate,
    /// No new sessions; existing ones may finish, until `timeout_ms` if any.
    Graceful { timeout_ms: Option<u64> },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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

/// The default port of the HTTP API, the dashboard and the metrics.
pub const DEFAULT_HTTP_PORT: u16 = 8480;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpSettings {
    /// Where the HTTP API, the dashboard and `/metrics` are served (none: off).
    pub listen: Option<SocketAddr>,
    /// A file holding the token that API requests must carry
    /// (`Authorization: Bearer <token>`).
    pub token_file: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceConfig {
    /// IPv4 or IPv6: its pool's servers are reached in the same family.
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub pool: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolConfig {
    pub servers: Vec<ServerConfig>,
    /// How a server is taken out when the config disables or removes it:
    /// `"0"` at once, a duration (its flows may finish until then), or
    /// `"infinite"` (until its last flow ends, the default).
    pub graceful_disable_timeout: DisableMode,
    pub health: PoolHealth,
    /// The fewest servers taking new flows an operator's change or a
    /// reload may leave (1: the last-server guard; 0: none); refused below
    /// it unless forced.
    pub min_in_service: usize,
    /// How long a server coming back into service takes to reach its full
    /// share of new flows (none: at once); see `servers::ramp`.
    pub ramp_up: Option<Duration>,
    /// While a server drains gracefully, its TCP connections quiet for this
    /// long are closed cleanly (a FIN to the client, see
    /// `datapath::idle_close`); none: they are left to finish or to the
    /// deadline. Off by default: an L4 balancer does not know that an idle
    /// connection (SSH, a database session) may be closed.
    pub idle_close: Option<Duration>,
}

/// A pool's health monitors, and what becomes of servers they find DOWN or
/// in maintenance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolHealth {
    /// None: servers are never checked (always UP).
    pub monitors: Vec<Monitor>,
    pub on_down: OnDown,
    /// How long a server a monitor finds in maintenance may drain (none:
    /// until drained).
    pub maintenance_timeout: Option<Duration>,
    /// The longest drain a server may announce in its maintenance reply.
    pub max_maintenance_timeout: Duration,
    /// Rolling maintenance: the most servers of the pool out of service at
    /// once (drained or draining, whoever took them out) for a maintenance
    /// reply to take one more out; a server announcing maintenance beyond
    /// it waits its turn, serving (none: no limit).
    pub max_in_maintenance: Option<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    pub name: String,
    /// The address its line names (`address`), of either family.
    pub address: IpAddr,
    /// Its IPv6 address beside an IPv4 `address` (`address6`): a dual-stack
    /// server, reached by IPv4 and IPv6 services alike, with one state.
    pub address6: Option<Ipv6Addr>,
    pub port: u16,
    pub weight: u32,
    /// `enabled = false` takes the server out of service (see
    /// `agent::reload` for how it combines with the operators' commands).
    pub enabled: bool,
}

impl ServerConfig {
    /// Its address in the family of `vip`, if it has one.
    pub fn address_for(&self, vip: IpAddr) -> Option<IpAddr> {
        server_address_for(self.address, self.address6, vip)
    }
}

/// The address of a server (`address`, `address6`) in the family of `vip`.
pub fn server_address_for(address: IpAddr, address6: Option<Ipv6Addr>, vip: IpAddr) -> Option<IpAddr> {
    match (vip, address) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => Some(address),
        (IpAddr::V6(_), IpAddr::V4(_)) => address6.map(IpAddr::V6),
        (IpAddr::V4(_), IpAddr::V6(_)) => None,
    }
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

/// The instance of a config that names none.
pub const DEFAULT_INSTANCE: &str = "lb";

/// Default API socket of an instance.
pub fn default_api_socket(instance: &str) -> PathBuf {
    PathBuf::from(format!("/run/lb/{instance}.sock"))
}

/// The API socket of the agent that runs `path`: its `api_socket`, else its
/// instance's default. Only those two keys are read, so that the agent of
/// a file with problems elsewhere is still found (to be told to reload it,
/// and to say what the problems are).
pub fn api_socket_of(path: &Path) -> Result<PathBuf, ConfigError> {
    #[derive(serde::Deserialize)]
    struct Keys {
        instance: Option<String>,
        api_socket: Option<PathBuf>,
    }
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    let keys: Keys = toml::from_str(&text)
        .map_err(|e| ConfigError::Syntax { path: path.to_owned(), message: e.to_string().trim().to_owned() })?;
    Ok(keys.api_socket.unwrap_or_else(|| default_api_socket(keys.instance.as_deref().unwrap_or(DEFAULT_INSTANCE))))
}

/// Default state file of an instance.
pub fn default_state_file(instance: &str) -> PathBuf {
    PathBuf::from(format!("/var/lib/lb/{instance}.state.json"))
}

impl Config {
    /// A hash of what must be the same on every node of a cluster (the
    /// services and pools: they make the server ids and the Maglev rows),
    /// as 16 hex digits (FNV-1a: the same on every build and host).
    pub fn fleet_hash(&self) -> String {
        let text = format!("{:?}{:?}", self.services, self.pools);
        let hash =
            text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
        format!("{hash:016x}")
    }

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

    /// What differs from `new` in the settings that only a restart can
    /// change (the maps' sizes, the interfaces, the listeners, the files),
    /// as "key: old -> new" lines; empty when a reload can take `new`.
    pub fn restart_needed(&self, new: &Config) -> Vec<String> {
        let mut differ = Vec::new();
        let mut check = |key: &str, old: String, new: String| {
            if old != new {
                differ.push(format!("{key}: {old} -> {new}"));
            }
        };
        check("instance", self.instance.clone(), new.instance.clone());
        check("interfaces", self.interfaces.join(","), new.interfaces.join(","));
        check("xdp_mode", format!("{:?}", self.xdp_mode), format!("{:?}", new.xdp_mode));
        check("api_socket", self.api_socket.display().to_string(), new.api_socket.display().to_string());
        check("state_file", self.state_file.display().to_string(), new.state_file.display().to_string());
        check("flows.max", self.flows.max_flows.to_string(), new.flows.max_flows.to_string());
        // The IPv6 flow table is sized at start: for flows.max with an IPv6
        // service, at its smallest without.
        let six = |c: &Config| if c.max_flows6() > 0 { "some".to_owned() } else { "none".to_owned() };
        check("IPv6 services", six(self), six(new));
        check("limits.max_services", self.max_services.to_string(), new.max_services.to_string());
        check("limits.max_servers", self.max_servers.to_string(), new.max_servers.to_string());
        let listen = |c: &Config| c.http.listen.map_or("off".to_owned(), |a| a.to_string());
        check("http.listen", listen(self), listen(new));
        let token = |c: &Config| c.http.token_file.as_ref().map_or("none".to_owned(), |p| p.display().to_string());
        check("http.token_file", token(self), token(new));
        // Joining or leaving a cluster, or another store: the start joins.
        let cluster = |c: &Config| c.cluster.as_ref().map_or("none".to_owned(), |k| format!("{k:?}"));
        check("cluster", cluster(self), cluster(new));
        let bgp = |c: &Config| c.bgp.as_ref().map_or("none".to_owned(), |b| format!("{b:?}"));
        check("bgp", bgp(self), bgp(new));
        differ
    }

    /// The IPv6 flow table's size (`MapSizes::max_flows6`): `flows.max` if
    /// some service has an IPv6 VIP, else 0.
    pub fn max_flows6(&self) -> u32 {
        if self.services.iter().any(|s| s.vip.is_ipv6()) { self.flows.max_flows } else { 0 }
    }

    /// The pool of a server by names, if both exist.
    pub fn server(&self, pool: &str, server: &str) -> Option<&ServerConfig> {
        self.pools.get(pool)?.servers.iter().find(|s| s.name == server)
    }
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

    /// `lb reload --config FILE` finds the agent of a file that has
    /// problems (the agent then lists them); only a file that is not TOML
    /// at all is refused there.
    #[test]
    fn the_api_socket_is_found_in_a_file_with_problems_elsewhere() {
        let dir = std::env::temp_dir().join(format!("lb-api-socket-of-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lb.toml");
        let socket_of = |text: &str| {
            std::fs::write(&file, text).unwrap();
            api_socket_of(&file)
        };
        let broken = GOOD.replace("max = 65536", "max = \"many\"");
        assert!(Config::parse(&broken, &file).is_err());
        assert_eq!(socket_of(&broken).unwrap(), PathBuf::from("/run/lb/lb0.sock"));
        let set = format!("api_socket = \"/tmp/x/api.sock\"\n{broken}");
        assert_eq!(socket_of(&set).unwrap(), PathBuf::from("/tmp/x/api.sock"));
        assert_eq!(socket_of("").unwrap(), PathBuf::from("/run/lb/lb.sock"), "the default instance's");
        let err = socket_of("instance = [").unwrap_err().to_string();
        assert!(err.contains("lb.toml"), "{err}");
        assert!(api_socket_of(&dir.join("missing.toml")).unwrap_err().to_string().contains("missing.toml"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_pools_disable_rule_and_a_servers_enabled_line() {
        let c = Config::parse(GOOD, Path::new("lb.toml")).expect("valid config");
        assert_eq!(c.pools["web"].graceful_disable_timeout, DisableMode::Graceful { timeout_ms: None });
        assert!(c.pools["web"].servers.iter().all(|s| s.enabled), "enabled unless said otherwise");
        let with = |rule: &str| {
            let text = GOOD.replace("[[pools.web.servers]]\n        name = \"a\"", &format!("[pools.web]\n        graceful_disable_timeout = {rule}\n        [[pools.web.servers]]\n        name = \"a\"\n        enabled = false"));
            Config::parse(&text, Path::new("lb.toml"))
        };
        let c = with("\"5m\"").expect("a duration");
        assert_eq!(c.pools["web"].graceful_disable_timeout, DisableMode::Graceful { timeout_ms: Some(300_000) });
        assert!(!c.pools["web"].servers[0].enabled);
        assert_eq!(with("\"0\"").unwrap().pools["web"].graceful_disable_timeout, DisableMode::Immediate);
        assert_eq!(
            with("\"infinite\"").unwrap().pools["web"].graceful_disable_timeout,
            DisableMode::Graceful { timeout_ms: None }
        );
        let Err(ConfigError::Invalid { problems, .. }) = with("\"soon\"") else { panic!("a bad rule is refused") };
        assert_eq!(problems[0].path, "pools.web.graceful_disable_timeout");
    }

    #[test]
    fn a_server_or_vip_no_packet_could_reach_is_refused_with_why() {
        let loopback = problems(&GOOD.replace("address = \"10.0.1.2\"", "address = \"127.0.0.1\""));
        assert_eq!(
            loopback,
            ["pools.web.servers[0].address: 127.0.0.1 cannot be used here: it is a loopback address, which no \
              packet from another host reaches"]
        );
        let vip = problems(&GOOD.replace("vip = \"10.0.0.100\"", "vip = \"127.0.0.2\""));
        assert_eq!(vip.len(), 1, "{vip:?}");
        assert!(vip[0].starts_with("services[0].vip: 127.0.0.2 cannot be used here: it is a loopback"), "{vip:?}");
        let at_vip = problems(&GOOD.replace("address = \"10.0.2.2\"", "address = \"10.0.0.100\""));
        assert_eq!(
            at_vip,
            ["pools.web.servers[1].address: 10.0.0.100 is services[0]'s VIP: a server is another host than the \
              balancer"]
        );
        let both_bad = problems(
            &GOOD.replace("address = \"10.0.2.2\"", "address = \"0.0.0.0\"").replace("\"10.0.0.100\"", "\"0.0.0.0\""),
        );
        assert_eq!(both_bad.len(), 2, "each refused address said once: {both_bad:?}");
    }

    /// GOOD with one more line in pool web's table.
    fn with_pool_line(line: &str) -> Result<Config, ConfigError> {
        let text = GOOD.replace(
            "[[pools.web.servers]]\n        name = \"a\"",
            &format!("[pools.web]\n        {line}\n        [[pools.web.servers]]\n        name = \"a\""),
        );
        Config::parse(&text, Path::new("t.toml"))
    }

    #[test]
    fn a_pools_minimum_in_service_is_at_most_its_servers() {
        let with = with_pool_line;
        assert_eq!(Config::parse(GOOD, Path::new("t.toml")).unwrap().pools["web"].min_in_service, 1, "the last server");
        assert_eq!(with("min_in_service = 0").unwrap().pools["web"].min_in_service, 0);
        let Err(ConfigError::Invalid { problems, .. }) = with("min_in_service = 9") else { panic!("too many") };
        assert_eq!(problems[0].path, "pools.web.min_in_service");
        assert!(problems[0].message.contains("9 servers wanted in service, but the pool has"), "{problems:?}");
        let Err(ConfigError::Invalid { problems, .. }) = with("min_in_service = -1") else { panic!("below 0") };
        assert_eq!(problems[0].path, "pools.web.min_in_service");
    }

    #[test]
    fn a_pools_ramp_up_is_off_by_default_and_at_least_a_second() {
        let with = with_pool_line;
        assert_eq!(Config::parse(GOOD, Path::new("t.toml")).unwrap().pools["web"].ramp_up, None);
        assert_eq!(with("ramp_up = \"0\"").unwrap().pools["web"].ramp_up, None);
        assert_eq!(with("ramp_up = \"30s\"").unwrap().pools["web"].ramp_up, Some(Duration::from_secs(30)));
        assert_eq!(with("idle_close = \"2s\"").unwrap().pools["web"].idle_close, Some(Duration::from_secs(2)));
        assert_eq!(Config::parse(GOOD, Path::new("t.toml")).unwrap().pools["web"].idle_close, None, "off by default");
        let Err(ConfigError::Invalid { problems, .. }) = with("idle_close = \"10ms\"") else { panic!("too short") };
        assert_eq!(problems[0].path, "pools.web.idle_close");
        for bad in ["\"500ms\"", "\"soon\""] {
            let Err(ConfigError::Invalid { problems, .. }) = with(&format!("ramp_up = {bad}")) else {
                panic!("{bad} is refused")
            };
            assert_eq!(problems[0].path, "pools.web.ramp_up");
        }
    }

    #[test]
    fn a_pools_rolling_maintenance_takes_at_least_one_server_at_a_time() {
        let with = with_pool_line;
        assert_eq!(Config::parse(GOOD, Path::new("t.toml")).unwrap().pools["web"].health.max_in_maintenance, None);
        assert_eq!(with("max_in_maintenance = 1").unwrap().pools["web"].health.max_in_maintenance, Some(1));
        for bad in ["0", "-2"] {
            let Err(ConfigError::Invalid { problems, .. }) = with(&format!("max_in_maintenance = {bad}")) else {
                panic!("{bad} is refused")
            };
            assert_eq!(problems[0].path, "pools.web.max_in_maintenance");
            assert!(problems[0].message.contains("at least 1"), "{problems:?}");
        }
    }

    #[test]
    fn monitors_parse_with_defaults_and_every_bad_setting_is_refused_with_its_key_path() {
        let with = |monitor: &str, pool: &str| {
            GOOD.replace(
                "[[pools.web.servers]]\n        name = \"a\"",
                &format!("[pools.web]\n{pool}\n[[pools.web.monitors]]\n{monitor}\n[[pools.web.servers]]\nname = \"a\""),
            )
        };
        let c = Config::parse(&with("kind = \"http\"\nmaintenance_codes = [503]", "on_down = \"30s\""), Path::new("x"))
            .expect("valid");
        let health = &c.pools["web"].health;
        let m = &health.monitors[0];
        assert_eq!((m.interval, m.timeout, m.rise, m.fall), (Duration::from_secs(5), Duration::from_secs(2), 2, 2));
        assert_eq!(
            m.probe,
            Probe::Http { method: "GET".into(), path: "/".into(), host: None, codes: vec![(200, 399)], expect: None }
        );
        assert_eq!(health.on_down, OnDown::After(Duration::from_secs(30)));
        assert_eq!(health.maintenance_timeout, None, "until drained");

        let bad = with(
            "kind = \"http\"\ninterval = \"2s\"\ntimeout = \"2s\"\ncodes = [\"200-299\", \"700\"]\nmaintenance_codes = [500, 501, 502, 503, 504]",
            "on_down = \"sometimes\"",
        );
        let p = problems(&bad);
        for expected in [
            "pools.web.monitors[0].timeout: must be below the interval",
            "pools.web.monitors[0].codes: 700 is not a status code (100-599)",
            "pools.web.monitors[0].maintenance_codes: 5 codes, at most 4",
        ] {
            assert!(p.iter().any(|x| x == expected), "{expected} in {p:?}");
        }
        assert!(p.iter().any(|x| x.starts_with("pools.web.on_down: ")), "{p:?}");
        let p = problems(&with("kind = \"icmp\"", ""));
        assert_eq!(p, ["pools.web.monitors[0].kind: unknown kind \"icmp\" (tcp, http or udp)"]);
        let p = problems(&with("kind = \"udp\"\npath = \"/\"", ""));
        assert!(p.contains(&"pools.web.monitors[0].path: not a setting of a udp monitor".to_owned()), "{p:?}");
        assert!(p.contains(&"pools.web.monitors[0].send: a udp monitor needs a datagram to send".to_owned()), "{p:?}");
        let p = problems(&with("kind = \"tcp\"\nmaintenance_codes = [503]", ""));
        assert_eq!(p, ["pools.web.monitors[0].maintenance_codes: only an http monitor has status codes"]);

        let p = problems(&with("kind = \"tcp\"\ninterval = \"5ms\"\ntimeout = \"1ms\"", ""));
        assert!(p.contains(&"pools.web.monitors[0].interval: must be at least 10ms".to_owned()), "{p:?}");
        let p = problems(&GOOD.replace("tcp_idle_timeout = \"5m\"", "tcp_idle_timeout = \"0s\""));
        assert_eq!(p, ["flows.tcp_idle_timeout: must be longer than zero"]);
        let p = problems(&GOOD.replace("tcp_idle_timeout = \"5m\"", "tcp_idle_timeout = \"25d\""));
        assert_eq!(
            p,
            ["flows.tcp_idle_timeout: must be at most 24 days (as long as the flow table keeps a flow's times)"]
        );
        let c = Config::parse(&GOOD.replace("tcp_idle_timeout = \"5m\"", "tcp_idle_timeout = \"24d\""), Path::new("t"));
        assert_eq!(c.expect("the limit").flows.tcp_idle_timeout, Duration::from_secs(24 * 86_400));
    }

    #[test]
    fn a_reload_says_which_settings_need_a_restart() {
        let c = Config::parse(GOOD, Path::new("lb.toml")).expect("valid config");
        let mut new = c.clone();
        new.pools.get_mut("web").unwrap().servers[0].weight = 9;
        assert!(c.restart_needed(&new).is_empty(), "pools change at run time");
        new.flows.max_flows = 1 << 17;
        new.interfaces.push("veth2".into());
        assert_eq!(
            c.restart_needed(&new),
            ["interfaces: veth0,veth1 -> veth0,veth1,veth2", "flows.max: 65536 -> 131072"]
        );
    }

    #[test]
    fn a_cluster_section_parses_with_defaults_and_every_bad_setting_is_refused_with_its_key_path() {
        let with = |section: &str| format!("{GOOD}\n[cluster]\n{section}\n");
        let c = Config::parse(&with("node = \"n1\"\nendpoints = [\"http://10.0.9.1:2379\"]"), Path::new("lb.toml"))
            .expect("valid cluster section");
        let cluster = c.cluster.as_ref().expect("a cluster");
        assert_eq!((cluster.node.as_str(), cluster.prefix.as_str()), ("n1", "/lb"));
        assert_eq!(
            (cluster.timeout, cluster.lease, cluster.tls.is_none()),
            (Duration::from_secs(2), Duration::from_secs(5), true)
        );
        assert!(Config::parse(GOOD, Path::new("lb.toml")).expect("valid").cluster.is_none(), "alone by default");
        let p = problems(&with("endpoints = []\nprefix = \"lb/\"\nlease = \"1s\""));
        assert!(p.iter().any(|p| p.starts_with("cluster.node: missing node name")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("cluster.endpoints: name at least one")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("cluster.prefix:")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("cluster.lease: must be at least 2s")), "{p:?}");
        let p = problems(&with("node = \"n1\"\nendpoints = [\"10.0.9.1:2379\"]\ncert_file = \"c.pem\""));
        assert!(p.iter().any(|p| p.starts_with("cluster.endpoints[0]:")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("cluster.cert_file: cert_file and key_file go together")), "{p:?}");
        assert!(p.iter().any(|p| p.starts_with("cluster.ca_file:")), "{p:?}");
        let p = problems(&with("node = \"n1\"\nendpoints = [\"http://a:2379\"]\nca_file = \"ca.pem\""));
        assert!(p.iter().any(|p| p.contains("must start with https://")), "{p:?}");
        // Joining or leaving a cluster takes a restart.
        assert_eq!(Config::parse(GOOD, Path::new("lb.toml")).unwrap().restart_needed(&c).len(), 1);
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
    fn a_dual_stack_pool_serves_an_ipv4_and_an_ipv6_vip() {
        let text = GOOD
            .replace("address = \"10.0.1.2\"", "address = \"10.0.1.2\"\n        address6 = \"fd00:1::2\"")
            .replace("address = \"10.0.2.2\"", "address = \"fd00:2::2\"")
            .replace("vip = \"10.0.0.100\"", "vip = \"fd00:100::1\"");
        let c = Config::parse(&text, Path::new("lb.toml")).expect("IPv6 VIP, servers with IPv6 addresses");
        let web = &c.pools["web"].servers;
        assert_eq!(web[0].address_for(c.services[0].vip), Some("fd00:1::2".parse().unwrap()));
        assert_eq!(web[1].address_for(c.services[0].vip), Some("fd00:2::2".parse().unwrap()));
        assert_eq!(web[0].address_for("10.0.0.100".parse().unwrap()), Some("10.0.1.2".parse().unwrap()));
        assert_eq!(c.max_flows6(), c.flows.max_flows, "an IPv6 service sizes the IPv6 flow table");
        let four = Config::parse(GOOD, Path::new("lb.toml")).unwrap();
        assert_eq!(four.max_flows6(), 0);
        assert_eq!(four.restart_needed(&c), ["IPv6 services: none -> some"]);
    }

    #[test]
    fn a_service_and_its_servers_of_different_families_are_refused() {
        let text = GOOD.replace("vip = \"10.0.0.100\"", "vip = \"fd00:100::1\"");
        let p = problems(&text);
        assert!(
            p.contains(
                &"services[0].vip: fd00:100::1 is IPv6, but server web/a has no IPv6 address (give it address6 \
                  beside its IPv4 address): a service reaches its servers in its VIP's family"
                    .to_owned()
            ),
            "{p:?}"
        );
        let text = GOOD.replace("address = \"10.0.1.2\"", "address = \"fd00:1::2\"");
        let p = problems(&text);
        assert!(
            p.iter().any(|l| l.starts_with("services[0].vip: 10.0.0.100 is IPv4, but server web/a has no IPv4")),
            "{p:?}"
        );
        let text = GOOD.replace("address = \"10.0.1.2\"", "address = \"10.0.1.2\"\n        address6 = \"10.0.9.9\"");
        assert_eq!(problems(&text), ["pools.web.servers[0].address6: 10.0.9.9 is not an IPv6 address"]);
        let text = GOOD.replace("address = \"10.0.1.2\"", "address = \"fd00:1::2\"\n        address6 = \"fd00:1::3\"");
        assert!(
            problems(&text).iter().any(|l| l.starts_with("pools.web.servers[0].address6: address is already IPv6"))
        );
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
        assert!(
            p.contains(&"pools.web.servers[1].address: \"10.0.2\" is not an IPv4 or IPv6 address".to_owned()),
            "{p:?}"
        );
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
    fn the_http_api_is_on_loopback_unless_told_and_elsewhere_needs_a_token() {
        let c = Config::parse(GOOD, Path::new("lb.toml")).unwrap();
        assert_eq!(c.http.listen, Some("127.0.0.1:8480".parse().unwrap()));
        let off = Config::parse(&format!("{GOOD}\n[http]\nlisten = \"\"\n"), Path::new("lb.toml")).unwrap();
        assert_eq!(off.http.listen, None);
        let p = problems(&format!("{GOOD}\n[http]\nlisten = \"0.0.0.0:8480\"\n"));
        assert_eq!(
            p,
            [
                "http.token_file: required: http.listen (0.0.0.0:8480) is not a loopback address, so the API needs a token"
            ]
        );
        let with_token = format!("{GOOD}\n[http]\nlisten = \"0.0.0.0:8480\"\ntoken_file = \"/etc/lb/token\"\n");
        assert!(Config::parse(&with_token, Path::new("lb.toml")).is_ok());
        let p = problems(&format!("{GOOD}\n[http]\nlisten = \"localhost\"\n"));
        assert_eq!(p, ["http.listen: \"localhost\" is not an address:port (or \"\" for no HTTP API)"]);
    }

    #[test]
    fn unknown_keys_and_bad_toml_are_syntax_errors() {
        let err = Config::parse("interfaces = [\"a\"]\nbogus = 1\n", Path::new("x.toml")).unwrap_err();
        assert!(err.to_string().contains("unknown field `bogus`"), "{err}");
        let err = Config::parse("interfaces = [", Path::new("x.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }
}
