//! The config file as written, and the checks that turn it into a
//! [`Config`]: every problem is collected with its key path.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use lb_common::{DEFAULT_MAX_FLOWS, DEFAULT_MAX_SERVERS, DEFAULT_MAX_SERVICES};
use serde::Deserialize;

use super::checks::Validator;
use super::{
    Config, DEFAULT_HTTP_PORT, DEFAULT_INSTANCE, DisableMode, FlowSettings, HttpSettings, PoolConfig, PoolHealth,
    Protocol, ServerConfig, ServiceConfig, XdpMode, default_api_socket, default_state_file, monitors::RawMonitor,
    parse_duration,
};
use super::{bgp::RawBgp, cluster::RawCluster};

/// The largest `flows.max`.
const MAX_FLOWS_LIMIT: u32 = 1 << 26;

// The file as written. Durations and addresses are strings here so that a bad
// one is reported with its key path rather than as a parse failure.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
    http: RawHttp,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    pools: BTreeMap<String, RawPool>,
    cluster: Option<RawCluster>,
    bgp: Option<RawBgp>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFlows {
    max: Option<u32>,
    tcp_idle_timeout: Option<String>,
    tcp_closing_timeout: Option<String>,
    udp_idle_timeout: Option<String>,
    sweep_interval: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    max_services: Option<u32>,
    max_servers: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttp {
    listen: Option<String>,
    token_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    vip: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    pool: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    #[serde(default)]
    servers: Vec<RawServer>,
    graceful_disable_timeout: Option<String>,
    #[serde(default)]
    monitors: Vec<RawMonitor>,
    on_down: Option<String>,
    maintenance_timeout: Option<String>,
    max_maintenance_timeout: Option<String>,
    min_in_service: Option<i64>,
    max_in_maintenance: Option<i64>,
    ramp_up: Option<String>,
    idle_close: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawServer {
    name: Option<String>,
    address: Option<String>,
    address6: Option<String>,
    port: Option<i64>,
    weight: Option<i64>,
    enabled: Option<bool>,
}

impl Validator {
    pub(super) fn config(&mut self, raw: RawConfig) -> Config {
        let instance =
            self.name("instance", Some(raw.instance.unwrap_or_else(|| DEFAULT_INSTANCE.to_owned())), "instance name");
        let interfaces = self.interfaces(raw.interfaces.unwrap_or_default());
        let xdp_mode = self.xdp_mode(raw.xdp_mode.as_deref());
        let api_socket = raw.api_socket.unwrap_or_else(|| default_api_socket(&instance));
        let state_file = raw.state_file.unwrap_or_else(|| default_state_file(&instance));
        let flows = self.flows(raw.flows);
        let (max_services, max_servers) = self.limits(&raw.limits);
        let http = self.http(raw.http);
        let pools = self.pools(raw.pools, max_servers);
        let services = self.services(raw.services, &pools, max_services);
        self.servers_are_not_vips(&pools, &services);
        let cluster = raw.cluster.map(|c| self.cluster(c));
        let bgp = raw.bgp.map(|b| self.bgp(b));
        Config {
            instance,
            interfaces,
            xdp_mode,
            api_socket,
            state_file,
            flows,
            max_services,
            max_servers,
            http,
            services,
            pools,
            cluster,
            bgp,
        }
    }

    /// The HTTP API's address: a non-loopback one needs a token, or anyone
    /// who reaches the host could take its servers out of service.
    fn http(&mut self, raw: RawHttp) -> HttpSettings {
        let listen = match raw.listen.as_deref() {
            None => Some(SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_HTTP_PORT))),
            Some("") => None,
            Some(text) => match text.parse::<SocketAddr>() {
                Ok(addr) => Some(addr),
                Err(_) => {
                    self.problem("http.listen", format!("\"{text}\" is not an address:port (or \"\" for no HTTP API)"));
                    None
                }
            },
        };
        if let Some(addr) = listen
            && !addr.ip().is_loopback()
            && raw.token_file.is_none()
        {
            self.problem(
                "http.token_file",
                format!("required: http.listen ({addr}) is not a loopback address, so the API needs a token"),
            );
        }
        HttpSettings { listen, token_file: raw.token_file }
    }

    fn interfaces(&mut self, interfaces: Vec<String>) -> Vec<String> {
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
        interfaces
    }

    fn xdp_mode(&mut self, mode: Option<&str>) -> XdpMode {
        match mode {
            None | Some("auto") => XdpMode::Auto,
            Some("native") => XdpMode::Native,
            Some("generic") => XdpMode::Generic,
            Some(other) => {
                self.problem("xdp_mode", format!("\"{other}\" is not one of auto, native, generic"));
                XdpMode::Auto
            }
        }
    }

    fn flows(&mut self, raw: RawFlows) -> FlowSettings {
        let max_flows = raw.max.unwrap_or(DEFAULT_MAX_FLOWS);
        if max_flows < 1024 {
            self.problem("flows.max", format!("{max_flows} is too small (at least 1024)"));
        }
        // The table has twice as many slots (32 bytes in IPv4, 64 in IPv6),
        // rounded up to a power of two.
        if max_flows > MAX_FLOWS_LIMIT {
            self.problem(
                "flows.max",
                format!("{max_flows} is too large (at most {MAX_FLOWS_LIMIT}: 4 GiB of IPv4 table)"),
            );
        }
        let secs = Duration::from_secs;
        FlowSettings {
            max_flows,
            tcp_idle_timeout: self.flow_timeout("flows.tcp_idle_timeout", raw.tcp_idle_timeout, secs(300)),
            tcp_closing_timeout: self.flow_timeout("flows.tcp_closing_timeout", raw.tcp_closing_timeout, secs(10)),
            udp_idle_timeout: self.flow_timeout("flows.udp_idle_timeout", raw.udp_idle_timeout, secs(30)),
            sweep_interval: self.duration("flows.sweep_interval", raw.sweep_interval, secs(1)),
        }
    }

    /// How long a flow may stay idle: at most 24 days, as long as the
    /// table's times reach (`lb_common::flow_time`).
    fn flow_timeout(&mut self, path: &str, value: Option<String>, default: Duration) -> Duration {
        let timeout = self.duration(path, value, default);
        if timeout > Duration::from_nanos(lb_common::flow_time::MAX_IDLE_TIMEOUT_NS) {
            self.problem(path, "must be at most 24 days (as long as the flow table keeps a flow's times)");
            return default;
        }
        timeout
    }

    fn limits(&mut self, raw: &RawLimits) -> (u32, u32) {
        let max_services = raw.max_services.unwrap_or(DEFAULT_MAX_SERVICES);
        let max_servers = raw.max_servers.unwrap_or(DEFAULT_MAX_SERVERS);
        if max_services == 0 || max_services > 1024 {
            self.problem("limits.max_services", format!("{max_services} is not in 1..1024"));
        }
        if max_servers == 0 || max_servers > 65536 {
            self.problem("limits.max_servers", format!("{max_servers} is not in 1..65536"));
        }
        (max_services, max_servers)
    }

    fn pools(&mut self, raw: BTreeMap<String, RawPool>, max_servers: u32) -> BTreeMap<String, PoolConfig> {
        let mut pools = BTreeMap::new();
        for (pool_name, raw_pool) in raw {
            let base = format!("pools.{pool_name}");
            self.name(&base, Some(pool_name.clone()), "pool name");
            let mut servers: Vec<ServerConfig> = Vec::new();
            for (i, raw_server) in raw_pool.servers.into_iter().enumerate() {
                let server = self.server(&format!("{base}.servers[{i}]"), raw_server, &servers);
                servers.push(server);
            }
            let graceful_disable_timeout =
                self.disable_timeout(&format!("{base}.graceful_disable_timeout"), raw_pool.graceful_disable_timeout);
            let mut health = self.health(
                &base,
                raw_pool.monitors,
                raw_pool.on_down,
                raw_pool.maintenance_timeout,
                raw_pool.max_maintenance_timeout,
            );
            health.max_in_maintenance = self.max_in_maintenance(&base, raw_pool.max_in_maintenance);
            let min_in_service = self.min_in_service(&base, raw_pool.min_in_service, servers.len());
            let ramp_up = self.ramp_up(&base, raw_pool.ramp_up);
            let idle_close = self.idle_close(&base, raw_pool.idle_close);
            let pool = PoolConfig { servers, graceful_disable_timeout, health, min_in_service, ramp_up, idle_close };
            pools.insert(pool_name, pool);
        }
        let count: usize = pools.values().map(|p| p.servers.len()).sum();
        if count > max_servers as usize {
            self.problem("pools", format!("{count} servers, more than limits.max_servers ({max_servers})"));
        }
        pools
    }

    /// `min_in_service`: 1 by default; at most the pool's servers.
    fn min_in_service(&mut self, base: &str, raw: Option<i64>, servers: usize) -> usize {
        let Some(min) = raw else { return 1 };
        match usize::try_from(min) {
            Ok(min) if min <= servers => min,
            Ok(min) => {
                let why = format!("{min} servers wanted in service, but the pool has {servers}");
                self.problem(format!("{base}.min_in_service"), why);
                1
            }
            Err(_) => {
                self.problem(format!("{base}.min_in_service"), format!("{min} is below 0"));
                1
            }
        }
    }

    /// `ramp_up`: off by default (or "0"); at least 1 s.
    fn ramp_up(&mut self, base: &str, raw: Option<String>) -> Option<Duration> {
        match raw.as_deref().map(str::trim) {
            None | Some("0") => None,
            Some(_) => {
                let path = format!("{base}.ramp_up");
                Some(self.duration_of_at_least(&path, raw, Duration::from_secs(1), Duration::from_secs(1)))
            }
        }
    }

    /// `idle_close`: off by default (or "0"); at least 100 ms.
    fn idle_close(&mut self, base: &str, raw: Option<String>) -> Option<Duration> {
        match raw.as_deref().map(str::trim) {
            None | Some("0") => None,
            Some(_) => {
                let (path, least) = (format!("{base}.idle_close"), Duration::from_millis(100));
                Some(self.duration_of_at_least(&path, raw, Duration::from_secs(2), least))
            }
        }
    }

    /// `max_in_maintenance`: none by default (every server announcing
    /// maintenance goes at once); at least 1.
    fn max_in_maintenance(&mut self, base: &str, raw: Option<i64>) -> Option<usize> {
        let max = raw?;
        match usize::try_from(max) {
            Ok(max) if max >= 1 => Some(max),
            _ => {
                let why = format!("{max}: at least 1 (leave it out to let every server go at once)");
                self.problem(format!("{base}.max_in_maintenance"), why);
                None
            }
        }
    }

    /// The pool's monitors and what it does with their verdicts.
    fn health(
        &mut self,
        base: &str,
        monitors: Vec<RawMonitor>,
        on_down: Option<String>,
        maintenance_timeout: Option<String>,
        max_maintenance_timeout: Option<String>,
    ) -> PoolHealth {
        let monitors = monitors
            .into_iter()
            .enumerate()
            .map(|(i, raw)| self.monitor(&format!("{base}.monitors[{i}]"), raw))
            .collect();
        let path = format!("{base}.maintenance_timeout");
        let maintenance_timeout = match maintenance_timeout.as_deref() {
            None | Some("infinite") => None,
            Some(text) => Some(self.duration(&path, Some(text.to_owned()), Duration::from_secs(1))),
        };
        let max_path = format!("{base}.max_maintenance_timeout");
        PoolHealth {
            monitors,
            on_down: self.on_down(&format!("{base}.on_down"), on_down),
            maintenance_timeout,
            max_maintenance_timeout: self.duration(&max_path, max_maintenance_timeout, Duration::from_secs(3600)),
            max_in_maintenance: None,
        }
    }

    /// "0" (at once), a duration, or "infinite" (until drained, the default).
    fn disable_timeout(&mut self, path: &str, value: Option<String>) -> DisableMode {
        match value.as_deref().map(str::trim) {
            None | Some("infinite") => DisableMode::Graceful { timeout_ms: None },
            Some("0") => DisableMode::Immediate,
            Some(text) => match parse_duration(text) {
                Ok(d) if d.is_zero() => DisableMode::Immediate,
                Ok(d) => DisableMode::Graceful { timeout_ms: Some(d.as_millis() as u64) },
                Err(e) => {
                    self.problem(path, format!("{e} (or \"0\" for at once, \"infinite\" for until drained)"));
                    DisableMode::Graceful { timeout_ms: None }
                }
            },
        }
    }

    /// A pool's server at `path`, checked against those before it.
    fn server(&mut self, path: &str, raw: RawServer, before: &[ServerConfig]) -> ServerConfig {
        let address = self.address(&format!("{path}.address"), raw.address);
        let server = ServerConfig {
            name: self.name(&format!("{path}.name"), raw.name, "server name"),
            address,
            address6: raw.address6.map(|text| self.address6(path, address, text)),
            port: self.port(&format!("{path}.port"), raw.port),
            weight: match raw.weight {
                None => 1,
                Some(w) if (0..=65535).contains(&w) => w as u32,
                Some(w) => {
                    self.problem(format!("{path}.weight"), format!("weight {w} is not in 0..65535"));
                    1
                }
            },
            enabled: raw.enabled.unwrap_or(true),
        };
        if let Some(j) = before.iter().position(|s| s.name == server.name && !s.name.is_empty()) {
            self.problem(format!("{path}.name"), format!("\"{}\" is already servers[{j}]", server.name));
        }
        let endpoints = |s: &ServerConfig| [Some(s.address), s.address6.map(IpAddr::V6)].into_iter().flatten();
        for (key, address) in [("address", Some(server.address)), ("address6", server.address6.map(IpAddr::V6))] {
            let Some(address) = address else { continue };
            if let Some(j) = before.iter().position(|s| endpoints(s).any(|a| a == address) && s.port == server.port) {
                let shown = std::net::SocketAddr::new(address, server.port);
                self.problem(format!("{path}.{key}"), format!("{shown} is already servers[{j}]"));
            }
        }
        server
    }

    /// A VIP's address leads to the balancer, not to a server: packets
    /// forwarded to a server there would come back to the balancer (where
    /// the VIP is routed to it) or stop at this host (where it is local),
    /// and never reach a server.
    fn servers_are_not_vips(&mut self, pools: &BTreeMap<String, PoolConfig>, services: &[ServiceConfig]) {
        for (pool, config) in pools {
            for (i, server) in config.servers.iter().enumerate() {
                let addresses = [("address", Some(server.address)), ("address6", server.address6.map(IpAddr::V6))];
                for (key, address) in addresses {
                    // An address already refused reads as unspecified: said once.
                    let Some(address) = address.filter(|a| !a.is_unspecified()) else { continue };
                    let Some(j) = services.iter().position(|s| s.vip == address) else { continue };
                    self.problem(
                        format!("pools.{pool}.servers[{i}].{key}"),
                        format!("{address} is services[{j}]'s VIP: a server is another host than the balancer"),
                    );
                }
            }
        }
    }

    /// A server's `address6`: an IPv6 address beside an IPv4 `address`.
    fn address6(&mut self, path: &str, address: IpAddr, text: String) -> Ipv6Addr {
        let key = format!("{path}.address6");
        match self.address(&key, Some(text)) {
            IpAddr::V6(a) if address.is_ipv4() => a,
            IpAddr::V6(_) => {
                self.problem(key, format!("address is already IPv6 ({address}): address6 goes beside an IPv4 one"));
                Ipv6Addr::UNSPECIFIED
            }
            IpAddr::V4(a) if a.is_unspecified() => Ipv6Addr::UNSPECIFIED,
            IpAddr::V4(a) => {
                self.problem(key, format!("{a} is not an IPv6 address"));
                Ipv6Addr::UNSPECIFIED
            }
        }
    }

    fn services(
        &mut self,
        raw: Vec<RawService>,
        pools: &BTreeMap<String, PoolConfig>,
        max_services: u32,
    ) -> Vec<ServiceConfig> {
        let mut services: Vec<ServiceConfig> = Vec::new();
        for (i, raw_service) in raw.into_iter().enumerate() {
            let path = format!("services[{i}]");
            let service = self.service(&path, raw_service, pools);
            let (vip, port, protocol) = (service.vip, service.port, service.protocol);
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
        services
    }

    fn service(&mut self, path: &str, raw: RawService, pools: &BTreeMap<String, PoolConfig>) -> ServiceConfig {
        let vip = self.address(&format!("{path}.vip"), raw.vip);
        let port = self.port(&format!("{path}.port"), raw.port);
        let protocol = match raw.protocol.as_deref() {
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
        let pool = match raw.pool {
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
        if let Some(p) = pools.get(&pool) {
            self.same_family(path, vip, &pool, p);
        }
        ServiceConfig { vip, port, protocol, pool }
    }

    /// A service reaches its servers in its VIP's family (no NAT46/64):
    /// each server of its pool needs an address of that family.
    fn same_family(&mut self, path: &str, vip: IpAddr, pool_name: &str, pool: &PoolConfig) {
        let family = if vip.is_ipv4() { "IPv4" } else { "IPv6" };
        for server in pool.servers.iter().filter(|s| s.address_for(vip).is_none()) {
            let hint = if vip.is_ipv6() { " (give it address6 beside its IPv4 address)" } else { "" };
            self.problem(
                format!("{path}.vip"),
                format!(
                    "{vip} is {family}, but server {pool_name}/{} has no {family} address{hint}: a service \
                     reaches its servers in its VIP's family",
                    server.name
                ),
            );
        }
    }
}
