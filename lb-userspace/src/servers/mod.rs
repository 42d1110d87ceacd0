//! Pool members and their administrative states: where a server's state
//! changes (`state`: states, transitions, the last-server guard) and the
//! table of servers by id (`table`). Pure logic: no datapath, no clock.

pub mod state;
pub mod table;

pub use state::{AdminState, AdminStates, DisableMode, DisableReason, Transition};
pub use table::{ServerSlot, ServerTable, ServiceSlot};
