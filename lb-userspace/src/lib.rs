//! The load balancer's agent and CLI: loads and attaches the XDP program,
//! owns its maps, keeps them in line with the configuration and the
//! operators' commands, and serves the API the CLI talks to.
//!
//! - `api`: the typed model, the client, the operations and the socket.
//! - `cli`: the operator's commands (a client of the API).
//! - `agent`: the runtime, the owner of the state, snapshots, drains, events.
//! - `servers`: servers' states, transitions, the guard, the server table.
//! - `datapath`: everything that touches the XDP program and its maps.
//! - `config`: the config file and its validation.

pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod datapath;
pub mod health;
pub mod servers;
