//! The load balancer's agent: loads and attaches the XDP program, owns its
//! maps, and keeps them in line with the configuration.

pub mod agent;
pub mod bpf_batch;
pub mod config;
pub mod datapath;
pub mod duration;
pub mod flow_aging;
pub mod maglev;
pub mod stats;
pub mod tables;
