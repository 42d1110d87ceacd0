//! Where a new flow is handed to the agent for the other balancer nodes
//! (flow replication: `lb-userspace/src/cluster/replicate.rs`), so that
//! any node can continue it when the router sends it elsewhere. Off on a
//! node of its own: one per-CPU array read per new flow, nothing else.

use lb_common::{Flow, flow_sync};

use crate::maps::{FLOW_SYNC, NEW_FLOWS};

/// Whether new flows are shared (this node replicates flows).
#[inline(always)]
pub fn on() -> bool {
    FLOW_SYNC.get(flow_sync::ON).copied().unwrap_or(0) != 0
}

/// Shares the flow just created for `key`, if sharing is on. A full ring
/// (an agent that stopped reading) loses the record, counted: the flow
/// itself goes on here.
#[inline(always)]
pub fn share<K: Copy>(key: &K, flow: &Flow) {
    if !on() {
        return;
    }
    let record = flow_sync::NewFlow { key: *key, flow: *flow };
    if NEW_FLOWS.output::<flow_sync::NewFlow<K>>(&record, 0).is_err() {
        lost();
    }
}

#[inline(never)]
fn lost() {
    if let Some(counter) = FLOW_SYNC.get_ptr_mut(flow_sync::LOST) {
        // SAFETY: a valid per-CPU slot the map returned; no other writer.
        unsafe { *counter += 1 };
    }
}
