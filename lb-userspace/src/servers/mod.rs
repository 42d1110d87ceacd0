//! Pool members and their administrative states: where a server's state
//! changes (`state`: states, transitions, the last-server guard) and the
//! table of servers by id (`table`). Pure logic: no datapath, no clock.

pub mod health;
pub mod maglev;
pub mod plan;
pub mod ramp;
pub mod saved;
pub mod shared;
pub mod state;
pub mod table;

pub use saved::{Leaving, LeavingService, RampRecord, Records, Saved, ServerRecord};
pub use shared::{Batch, Guard, Proposal, SharedState};
pub use state::{AdminState, DisableMode, DisableReason, Source, Transition};
pub use table::{LeavingId, ServerSlot, ServerTable, ServiceId, ServiceSlot};
