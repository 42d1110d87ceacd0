//! An agent's config file, built the way a test says it: services, pools and
//! their servers, and settings by their key path (`"flows.max"`,
//! `"pools.p7.graceful_disable_timeout"`). The one place tests write config;
//! the text is TOML made by the `toml` crate, so it is always well formed
//! (a test that needs a malformed file writes that text itself).

use std::{fmt, net::IpAddr};

use toml::{Table, Value};

#[derive(Clone, Debug, Default)]
pub struct ConfigFile(Table);

impl ConfigFile {
    pub fn new() -> ConfigFile {
        ConfigFile::default()
    }

    /// Sets the setting at `path` (dotted: `"flows.max"`), making its tables.
    pub fn set(mut self, path: &str, value: impl Into<Value>) -> ConfigFile {
        let (tables, key) = path.rsplit_once('.').map_or((None, path), |(t, k)| (Some(t), k));
        let mut table = &mut self.0;
        for name in tables.into_iter().flat_map(|t| t.split('.')) {
            table = table
                .entry(name)
                .or_insert_with(|| Value::Table(Table::new()))
                .as_table_mut()
                .unwrap_or_else(|| panic!("{path}: {name} is not a table"));
        }
        table.insert(key.to_owned(), value.into());
        self
    }

    /// A virtual service `vip:port/protocol` served by `pool`.
    pub fn service(mut self, vip: impl Into<IpAddr>, port: u16, protocol: &str, pool: &str) -> ConfigFile {
        let service = table([
            ("vip", vip.into().to_string().into()),
            ("port", i64::from(port).into()),
            ("protocol", protocol.into()),
            ("pool", pool.into()),
        ]);
        array(&mut self.0, "services").push(service);
        self
    }

    /// Server `name` at `address:port` in `pool` (weight 1, enabled).
    pub fn server(mut self, pool: &str, name: &str, address: impl Into<IpAddr>, port: u16) -> ConfigFile {
        let address = address.into().to_string();
        let server = table([("name", name.into()), ("address", address.into()), ("port", i64::from(port).into())]);
        array(self.pool(pool), "servers").push(server);
        self
    }

    /// Sets `key` of server `name` in `pool` (`weight`, `enabled`).
    pub fn server_set(mut self, pool: &str, name: &str, key: &str, value: impl Into<Value>) -> ConfigFile {
        let server = array(self.pool(pool), "servers")
            .iter_mut()
            .filter_map(Value::as_table_mut)
            .find(|s| s.get("name").and_then(Value::as_str) == Some(name))
            .unwrap_or_else(|| panic!("no server {name} in pool {pool}"));
        server.insert(key.to_owned(), value.into());
        self
    }

    /// The config without server `name` of `pool` (as if its lines were
    /// deleted).
    pub fn without_server(mut self, pool: &str, name: &str) -> ConfigFile {
        let servers = array(self.pool(pool), "servers");
        let before = servers.len();
        servers.retain(|s| s.get("name").and_then(Value::as_str) != Some(name));
        assert_eq!(servers.len() + 1, before, "no server {name} in pool {pool}");
        self
    }

    /// The config without the services of `pool` (its servers stay).
    pub fn without_services_of(mut self, pool: &str) -> ConfigFile {
        array(&mut self.0, "services").retain(|s| s.get("pool").and_then(Value::as_str) != Some(pool));
        self
    }

    /// A health monitor of `pool`, its settings as in the file
    /// (`[("kind", "http".into()), ("interval", "200ms".into())]`).
    pub fn monitor<'a>(mut self, pool: &str, settings: impl IntoIterator<Item = (&'a str, Value)>) -> ConfigFile {
        array(self.pool(pool), "monitors").push(table(settings));
        self
    }

    pub fn text(&self) -> String {
        toml::to_string(&self.0).expect("a config file serializes")
    }

    fn pool(&mut self, pool: &str) -> &mut Table {
        let pools = self.0.entry("pools").or_insert_with(|| Value::Table(Table::new()));
        let pools = pools.as_table_mut().expect("pools is a table");
        pools.entry(pool).or_insert_with(|| Value::Table(Table::new())).as_table_mut().expect("a pool is a table")
    }
}

impl fmt::Display for ConfigFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

fn table<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    Value::Table(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

fn array<'a>(table: &'a mut Table, key: &str) -> &'a mut Vec<Value> {
    table
        .entry(key)
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .unwrap_or_else(|| panic!("{key} is not an array"))
}

#[cfg(test)]
mod tests {
    use std::{net::Ipv4Addr, path::Path};

    use lb_userspace::config::{Config, DisableMode};

    use super::*;

    #[test]
    fn the_text_is_the_config_the_test_described() {
        let vip = Ipv4Addr::new(10, 100, 0, 1);
        let config = ConfigFile::new()
            .set("instance", "t1")
            .set("interfaces", vec!["eth0"])
            .set("flows.max", 4096)
            .service(vip, 80, "tcp", "web")
            .server("web", "s1", Ipv4Addr::new(10, 0, 1, 2), 8080)
            .server("web", "s2", Ipv4Addr::new(10, 0, 2, 2), 8080)
            .server_set("web", "s2", "weight", 3)
            .set("pools.web.graceful_disable_timeout", "0")
            .monitor("web", [("kind", "tcp".into())]);
        let parsed = Config::parse(&config.text(), Path::new("built.toml")).expect("a valid config");
        assert_eq!((parsed.instance.as_str(), parsed.flows.max_flows), ("t1", 4096));
        assert_eq!((parsed.services[0].vip, parsed.services[0].pool.as_str()), (vip.into(), "web"));
        let web = &parsed.pools["web"];
        assert_eq!(web.servers.iter().map(|s| (s.name.as_str(), s.weight)).collect::<Vec<_>>(), [("s1", 1), ("s2", 3)]);
        assert_eq!(web.graceful_disable_timeout, DisableMode::Immediate);
        assert_eq!(web.health.monitors.len(), 1);
        let fewer = Config::parse(&config.without_server("web", "s1").text(), Path::new("fewer.toml")).expect("valid");
        assert_eq!(fewer.pools["web"].servers.len(), 1);
    }
}
