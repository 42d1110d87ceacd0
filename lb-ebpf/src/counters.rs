//! Counting what the datapath does: every packet under one outcome, and
//! traffic per server.

use lb_common::Outcome;

use crate::maps::{EVICTIONS, OUTCOMES, SERVER_STATS};

#[inline(always)]
pub fn count(outcome: Outcome) {
    if let Some(counter) = OUTCOMES.get_ptr_mut(outcome as u32) {
        // SAFETY: a valid per-CPU slot the map returned; no other writer.
        unsafe { *counter += 1 };
    }
}

/// A flow evicted from the full flow table, by its kind.
#[inline(always)]
pub fn count_eviction(kind: u32) {
    if let Some(counter) = EVICTIONS.get_ptr_mut(kind) {
        // SAFETY: a valid per-CPU slot the map returned; no other writer.
        unsafe { *counter += 1 };
    }
}

#[inline(always)]
pub fn count_to_server(server_id: u32, bytes: u64, new_flow: bool) {
    if let Some(stats) = SERVER_STATS.get_ptr_mut(server_id) {
        // SAFETY: a valid per-CPU slot the map returned; no other writer.
        let stats = unsafe { &mut *stats };
        stats.packets_to += 1;
        stats.bytes_to += bytes;
        if new_flow {
            stats.new_flows += 1;
        }
    }
}

#[inline(always)]
pub fn count_from_server(server_id: u32, bytes: u64) {
    if let Some(stats) = SERVER_STATS.get_ptr_mut(server_id) {
        // SAFETY: a valid per-CPU slot the map returned; no other writer.
        let stats = unsafe { &mut *stats };
        stats.packets_from += 1;
        stats.bytes_from += bytes;
    }
}
