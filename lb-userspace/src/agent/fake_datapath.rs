//! A fake datapath for the owner's unit tests: it records what it was asked,
//! in order, and answers as the real one would; with a test config and the
//! owner of it, as a first start makes them. No root, no kernel.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
};

use super::owner::Owner;
use crate::{
    config::{Config, FlowSettings},
    datapath::{
        ops::{DatapathOps, DatapathResult},
        sweep::SweepReport,
        terminate::Termination,
    },
    model::ServerState,
    servers::plan::{Previous, Tables},
    servers::{AdminState, LeavingId, ServerSlot, ServerTable, ServiceSlot},
};

/// What the fake datapath was asked, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// A server's record, with its state.
    Server(&'static str, ServerState),
    /// A service's Maglev row, with the servers it sends new flows to.
    Maglev(Vec<&'static str>),
    Terminate(Vec<&'static str>),
    /// A server written new to its slot (reload), with its state.
    NewServer(&'static str, ServerState),
    /// Return paths, filter and VIPs, for these services (leaving ones marked).
    Layout(Vec<String>),
    /// A service's entry written: it takes new flows.
    Service(String),
    Forget(&'static str),
    TerminateService(String),
}

#[derive(Default)]
pub struct FakeDatapath {
    pub writes: Vec<Write>,
    /// Live flows per server id, as the next sweep reports them.
    pub live: HashMap<u32, u64>,
    /// Live TCP flows each terminated server had.
    pub live_tcp: HashMap<u32, usize>,
    /// Live flows per leaving service, as the next sweep reports them.
    pub live_services: HashMap<LeavingId, u64>,
    pub sweeps: usize,
    /// Idle TCP flows per server id, closed (and taken off `live`) by the
    /// next `close_idle` that names the server.
    pub idle: HashMap<u32, usize>,
    state_file: std::path::PathBuf,
    /// Fail Maglev row writes (to test roll-backs).
    pub fail_maglev: bool,
    /// Called while flows are being terminated (to see what readers see
    /// meanwhile).
    pub during_terminate: Option<Box<dyn FnMut() + Send>>,
}

/// The state the datapath would read: the code written.
fn written(server: &ServerSlot) -> ServerState {
    match server.code() {
        lb_common::server_state::ENABLED => ServerState::Enabled,
        lb_common::server_state::DRAINING => ServerState::Draining,
        _ => ServerState::Disabled,
    }
}

const NAMES: [&str; 5] = ["a", "b", "c", "d", "e"];

fn name(id: u32) -> &'static str {
    NAMES.get(id as usize).copied().unwrap_or("another")
}

impl DatapathOps for FakeDatapath {
    fn write_server(&mut self, server: &crate::servers::ServerSlot) -> DatapathResult<()> {
        self.writes.push(Write::Server(name(server.id), written(server)));
        Ok(())
    }

    fn write_maglev_row(&mut self, service: &ServiceSlot, servers: &ServerTable) -> DatapathResult<()> {
        if self.fail_maglev {
            return Err("the map is gone".into());
        }
        let members = servers.pool(&service.pool).filter(|s| s.takes_new_flows()).map(|s| name(s.id)).collect();
        self.writes.push(Write::Maglev(members));
        Ok(())
    }

    fn terminate(&mut self, _: &ServerTable, ids: &HashSet<u32>) -> DatapathResult<Termination> {
        let mut names: Vec<_> = ids.iter().map(|&id| name(id)).collect();
        names.sort();
        self.writes.push(Write::Terminate(names));
        if let Some(during) = &mut self.during_terminate {
            during();
        }
        let reset_by_server = ids.iter().map(|&id| (id, self.live_tcp.remove(&id).unwrap_or(0))).collect();
        self.live.retain(|id, _| !ids.contains(id));
        Ok(Termination { reset_by_server, ..Termination::default() })
    }

    fn close_idle(
        &mut self,
        _: &ServerTable,
        quiet: &HashMap<u32, std::time::Duration>,
    ) -> DatapathResult<HashMap<u32, usize>> {
        // The idle flows of those servers: as many as `idle` says, then none.
        let closed: HashMap<u32, usize> =
            quiet.keys().filter_map(|id| Some((*id, self.idle.remove(id)?))).filter(|(_, n)| *n > 0).collect();
        for (id, n) in &closed {
            if let Some(live) = self.live.get_mut(id) {
                *live = live.saturating_sub(*n as u64);
            }
        }
        Ok(closed)
    }

    fn sweep(&mut self, _: &ServerTable, _: &[ServiceSlot], _: &FlowSettings) -> DatapathResult<SweepReport> {
        self.sweeps += 1;
        Ok(SweepReport {
            active_by_server: self.live.clone(),
            active_by_leaving_service: self.live_services.clone(),
            ..SweepReport::default()
        })
    }

    fn write_new_server(&mut self, server: &ServerSlot) -> DatapathResult<()> {
        self.writes.push(Write::NewServer(name(server.id), written(server)));
        Ok(())
    }

    fn add_return_paths(&mut self, _: &ServerTable, ids: &HashSet<u32>) -> DatapathResult<usize> {
        Ok(ids.len())
    }

    fn write_layout(&mut self, _: &ServerTable, services: &[ServiceSlot]) -> DatapathResult<()> {
        let labels = services
            .iter()
            .map(|s| if s.leaving.is_some() { format!("{} (leaving)", s.label()) } else { s.label() })
            .collect();
        self.writes.push(Write::Layout(labels));
        Ok(())
    }

    fn write_service(&mut self, service: &ServiceSlot) -> DatapathResult<()> {
        self.writes.push(Write::Service(service.label()));
        Ok(())
    }

    fn forget_server(&mut self, server: &ServerSlot) -> DatapathResult<()> {
        self.writes.push(Write::Forget(name(server.id)));
        Ok(())
    }

    fn terminate_service(&mut self, _: &ServerTable, service: &LeavingId) -> DatapathResult<Termination> {
        let (key, pool) = service;
        let label = format!("{} of {pool}", std::net::SocketAddr::new(key.vip, key.port));
        self.writes.push(Write::TerminateService(label));
        self.live_services.remove(service);
        Ok(Termination::default())
    }
}

pub const T0: u64 = 1_700_000_000_000;

/// A test's config: pool "web" with `servers` (name and extra lines such as
/// "weight = 2"; server "a" is at 10.0.0.1, "b" at 10.0.0.2, ...) and the
/// pool's `rule` lines, behind 10.100.0.1 on each of `ports`.
pub fn web_config(test: &str, rule: &str, servers: &[(&str, &str)], ports: &[u16]) -> Config {
    Config::parse(&web_config_text(test, rule, servers, ports), Path::new("test.toml")).expect("test config")
}

/// [`web_config`]'s text, for a test that writes it to a file.
pub fn web_config_text(test: &str, rule: &str, servers: &[(&str, &str)], ports: &[u16]) -> String {
    let servers: String = servers
        .iter()
        .map(|(n, extra)| {
            let octet = NAMES.iter().position(|m| m == n).expect("a known name") + 1;
            format!("[[pools.web.servers]]\nname = \"{n}\"\naddress = \"10.0.0.{octet}\"\nport = 80\n{extra}\n")
        })
        .collect();
    let services: String = ports
        .iter()
        .map(|p| format!("[[services]]\nvip = \"10.100.0.1\"\nport = {p}\nprotocol = \"tcp\"\npool = \"web\"\n"))
        .collect();
    format!(
        "interfaces = [\"eth0\"]\nstate_file = \"{}\"\n{services}[pools.web]\n{rule}\n{servers}",
        std::env::temp_dir().join(format!("lb-owner-{test}-{}.json", std::process::id())).display()
    )
}

/// An owner of `config`, as a first start writes it.
pub fn owner_of(config: Config) -> Owner<FakeDatapath> {
    let tables = Tables::plan(&config, &Previous::default(), T0).expect("plan");
    let mut fake = FakeDatapath::default();
    fake.state_file = config.state_file.clone();
    Owner::new(config, fake, tables.servers, tables.services)
}

/// The fake goes with the owner: it removes the test's state file.
impl Drop for FakeDatapath {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.state_file);
    }
}

pub fn names(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

pub fn state(owner: &Owner<FakeDatapath>, server: &str) -> AdminState {
    owner.servers().find("web", server).unwrap().admin
}

pub fn take_writes(owner: &mut Owner<FakeDatapath>) -> Vec<Write> {
    std::mem::take(&mut owner.dp_mut().writes)
}
