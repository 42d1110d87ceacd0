//! The agent's API: the typed model both sides use (`model`), the client
//! the CLI calls (`client`), the operations (`ops`: reads from the owner's
//! snapshot, changes through the owner) and the Unix-socket transport
//! (`unix`).

pub mod client;
pub mod history;
pub mod http;
pub mod ops;
pub mod unix;
pub mod wire;
