//! The agent's core: the owner of the state (`owner`, `drain`, `reload`,
//! `health`, on a thread of its own: `runtime`), its snapshots and events,
//! the health monitors' task that feeds it (`monitors`) and the state file.
//! The process around it (start, serve, stop) is `crate::daemon`.

pub mod drain;
pub mod events;
#[cfg(test)]
mod fake_datapath;
pub mod health;
#[cfg(test)]
mod health_tests;
pub mod monitors;
pub mod owner;
#[cfg(test)]
mod owner_tests;
pub mod ramp;
pub mod reload;
#[cfg(test)]
mod reload_tests;
pub mod rolling;
pub mod runtime;
pub mod shared;
#[cfg(test)]
mod shared_tests;
pub mod snapshot;
pub mod state_file;
