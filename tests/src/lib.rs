//! The test bed: network namespaces with real clients and servers around the
//! real agent, and a packet builder for datapath fixtures.

pub mod agent;
pub mod bed;
pub mod bench;
pub mod browser;
pub mod config_file;
pub mod ecmp;
pub mod fixture;
pub mod fleet;
pub mod health_server;
pub mod http;
pub mod keep_alive;
pub mod load;
pub mod netns;
pub mod packet;
pub mod port_forward;
pub mod servers;
pub mod soak;
pub mod store;
pub mod syn_witness;
pub mod topology;
