//! What the owner of the balancer's state asks of the datapath, as a trait:
//! the real one ([`Live`]) writes the BPF maps; the owner's unit tests use a
//! fake that records the order of the writes.

use std::collections::HashSet;

use super::{
    Datapath,
    sweep::{self, SweepReport},
    tables,
    tcp_reset::ResetSender,
    terminate::{self, Termination},
};
use crate::{
    config::FlowSettings,
    servers::{ServerSlot, ServerTable, ServiceSlot},
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
    /// Walks the flow table: ages flows out, counts the live ones per server.
    /// Blocking: tens of ms for 1e6 flows.
    fn sweep(
        &mut self,
        servers: &ServerTable,
        services: &[ServiceSlot],
        settings: &FlowSettings,
    ) -> DatapathResult<SweepReport>;
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

    fn sweep(
        &mut self,
        servers: &ServerTable,
        services: &[ServiceSlot],
        settings: &FlowSettings,
    ) -> DatapathResult<SweepReport> {
        let now = super::clock::datapath_now_ns();
        Ok(sweep::sweep(&self.dp.maps, servers, services, settings, now)?)
    }
}
