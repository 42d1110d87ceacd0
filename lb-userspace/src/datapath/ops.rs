//! What the owner of the balancer's state asks of the datapath, as a trait:
//! the real one ([`Live`]) writes the BPF maps; the owner's unit tests use a
//! fake that records the order of the writes.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use crate::servers::plan::Tables;

use super::{
    Datapath,
    sweep::{self, SweepReport},
    tables,
    tcp_reset::ResetSender,
    terminate::{self, Termination},
};
use crate::{
    config::FlowSettings,
    servers::{LeavingId, ServerSlot, ServerTable, ServiceSlot},
};

/// Any datapath error, with its context.
pub type DatapathResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

pub trait DatapathOps: Send + 'static {
    /// Writes a server's record (with its state code) into the server table.
    fn write_server(&mut self, server: &ServerSlot) -> DatapathResult<()>;
    /// Writes a service's Maglev row over its pool's servers that take new
    /// flows.
    fn write_maglev_row(&mut self, service: &ServiceSlot, servers: &ServerTable) -> DatapathResult<()>;
    /// Purges every flow of the servers `ids` and resets both ends of their
    /// live TCP flows. Blocking: up to a few hundred ms for 1e6 flows.
    fn terminate(&mut self, servers: &ServerTable, ids: &HashSet<u32>) -> DatapathResult<Termination>;
    /// Closes the idle TCP connections of the servers in `quiet` (id -> the
    /// quiet period): a FIN to the client, a reset to the server, the flow
    /// removed (`idle_close`). How many, by server.
    fn close_idle(
        &mut self,
        servers: &ServerTable,
        quiet: &HashMap<u32, Duration>,
    ) -> DatapathResult<HashMap<u32, usize>>;
    /// Walks the flow table: ages flows out, counts the live ones per server
    /// (and per leaving service). Blocking: tens of ms for 1e6 flows.
    fn sweep(
        &mut self,
        servers: &ServerTable,
        services: &[ServiceSlot],
        settings: &FlowSettings,
    ) -> DatapathResult<SweepReport>;

    // What a reload and the end of a removal write.

    /// Writes a server new to its slot (or at a new address): its record,
    /// and no cached next hop.
    fn write_new_server(&mut self, server: &ServerSlot) -> DatapathResult<()>;
    /// Gives the flows of servers `ids` return-path entries of their own
    /// (their endpoint is about to serve several services).
    fn add_return_paths(&mut self, servers: &ServerTable, ids: &HashSet<u32>) -> DatapathResult<usize>;
    /// Writes the return paths, the filter and the VIPs of all `services`
    /// (leaving ones included) and `servers`; removes the services' entries
    /// (leaving ones: no new flows), VIPs and return paths in use by none.
    fn write_layout(&mut self, servers: &ServerTable, services: &[ServiceSlot]) -> DatapathResult<()>;
    /// Writes a service's entry: it takes new flows from now on.
    fn write_service(&mut self, service: &ServiceSlot) -> DatapathResult<()>;
    /// Marks a server's slot unused: it is gone.
    fn forget_server(&mut self, server: &ServerSlot) -> DatapathResult<()>;
    /// Removes every flow of a leaving service (on its pool's servers) and
    /// resets both ends of its live TCP flows. Blocking: a walk of the flow
    /// table.
    fn terminate_service(&mut self, servers: &ServerTable, service: &LeavingId) -> DatapathResult<Termination>;
}

/// The loaded XDP program and its maps, with the raw socket that resets
/// terminated flows.
pub struct Live {
    pub dp: Datapath,
    resets: ResetSender,
}

impl Live {
    pub fn new(dp: Datapath, resets: ResetSender) -> Live {
        Live { dp, resets }
    }
}

impl DatapathOps for Live {
    fn write_server(&mut self, server: &ServerSlot) -> DatapathResult<()> {
        Ok(tables::write_server(&mut self.dp, server)?)
    }

    fn write_maglev_row(&mut self, service: &ServiceSlot, servers: &ServerTable) -> DatapathResult<()> {
        Ok(tables::write_maglev_row(&self.dp, service, servers)?)
    }

    fn terminate(&mut self, servers: &ServerTable, ids: &HashSet<u32>) -> DatapathResult<Termination> {
        Ok(terminate::terminate(&mut self.dp, servers, ids, &self.resets)?)
    }

    fn close_idle(
        &mut self,
        servers: &ServerTable,
        quiet: &HashMap<u32, Duration>,
    ) -> DatapathResult<HashMap<u32, usize>> {
        let now = super::clock::datapath_now_ns();
        let quiet_ns = quiet.iter().map(|(id, d)| (*id, d.as_nanos() as u64)).collect();
        Ok(super::idle_close::close_idle(&self.dp, servers, &quiet_ns, now, &self.resets)?)
    }

    fn sweep(
        &mut self,
        servers: &ServerTable,
        services: &[ServiceSlot],
        settings: &FlowSettings,
    ) -> DatapathResult<SweepReport> {
        let now = super::clock::datapath_now_ns();
        Ok(sweep::sweep(&self.dp.maps, servers, services, settings, now)?)
    }

    fn write_new_server(&mut self, server: &ServerSlot) -> DatapathResult<()> {
        Ok(tables::write_new_server(&mut self.dp, server)?)
    }

    fn add_return_paths(&mut self, servers: &ServerTable, ids: &HashSet<u32>) -> DatapathResult<usize> {
        Ok(terminate::add_return_paths(&self.dp, servers, ids)?)
    }

    fn write_layout(&mut self, servers: &ServerTable, services: &[ServiceSlot]) -> DatapathResult<()> {
        let tables = Tables { servers: servers.clone(), services: services.to_vec() };
        let endpoints = tables.endpoints();
        tables.write_routes(&mut self.dp, &endpoints)?;
        Ok(tables.remove_stale(&mut self.dp, &endpoints)?)
    }

    fn write_service(&mut self, service: &ServiceSlot) -> DatapathResult<()> {
        Ok(tables::write_service(&mut self.dp, service)?)
    }

    fn forget_server(&mut self, server: &ServerSlot) -> DatapathResult<()> {
        let old = self.dp.maps.servers.get(&server.id, 0)?;
        tables::forget_server(&mut self.dp, server.id, &old)?;
        Ok(tables::clear_next_hop(&mut self.dp, server.id)?)
    }

    fn terminate_service(&mut self, servers: &ServerTable, service: &LeavingId) -> DatapathResult<Termination> {
        Ok(terminate::terminate_service(&mut self.dp, servers, service, &self.resets)?)
    }
}
