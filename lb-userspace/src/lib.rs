//! The load balancer's agent: loads and attaches the XDP program, owns its
//! maps, keeps them in line with the configuration and the operators'
//! commands, and serves the API the CLI talks to.

pub mod agent;
pub mod api;
pub mod bpf_batch;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod datapath;
pub mod drain;
pub mod duration;
pub mod flow_aging;
pub mod flow_table;
pub mod maglev;
pub mod purge;
pub mod server_state;
pub mod state_file;
pub mod stats;
pub mod tables;
pub mod tcp_reset;
pub mod terminate;
