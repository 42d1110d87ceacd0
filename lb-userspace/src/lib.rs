//! The load balancer's agent and CLI: loads and attaches the XDP program,
//! owns its maps, keeps them in line with the configuration and the
//! operators' commands, and serves the API the CLI talks to.
//!
//! Modules, lowest layer first; each uses only those above it:
//! - `config`: the config file, its vocabulary and its validation.
//! - `servers`: the domain: servers' states and transitions, the guard, the
//!   server table, the plan of ids and Maglev rows.
//! - `model`: the typed model the API serves and the CLI reads.
//! - `health`: what a check is (probes) and how its results tally.
//! - `datapath`: everything that touches the XDP program and its maps.
//! - `agent`: the owner of the state, its runtime, snapshots, drains, events,
//!   the monitors' task.
//! - `cluster`: many nodes, one state: the shared store (etcd), following
//!   it, the nodes' records.
//! - `api`: the operations and their transports (socket, HTTP), the client.
//! - `cli`: the operator's commands (a client of the API).
//! - `daemon`: the agent process: start, serve every part, stop.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod datapath;
pub mod health;
pub mod model;
pub mod servers;
