//! The flow table (layout in `lb_common::flow_table`): finding a flow's slot,
//! and taking a slot for a new flow. Array reads the verifier inlines, no
//! helper calls, no allocation: this is the datapath's hottest code.

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg},
    ptr::{addr_of, addr_of_mut, null_mut, read_volatile, write_volatile},
};

use lb_common::{
    Flow, FlowKey, FlowSlot, flow_state,
    flow_table::{self, BUCKET_SLOTS},
};

use crate::maps::{FLOW_MARKS, FLOWS, flow_bucket_mask};

/// A flow found in the table: a consistent copy of it, and its slot, where
/// the packet's time and sequence numbers are recorded.
pub struct Found {
    pub slot: *mut FlowSlot,
    pub flow: Flow,
}

/// The key as the two 64-bit words it occupies in a slot (little endian).
#[inline(always)]
fn words(key: &FlowKey) -> [u64; 2] {
    [
        key.src_addr as u64 | (key.dst_addr as u64) << 32,
        key.src_port as u64 | (key.dst_port as u64) << 16 | (key.proto as u64) << 32,
    ]
}

/// The flow of `key` (whose [`flow_table::hash`] is `hash`), if the table has it.
#[inline(always)]
pub fn lookup(key: &FlowKey, hash: u64) -> Option<Found> {
    let want = words(key);
    for first in flow_table::buckets(hash, flow_bucket_mask()) {
        for i in 0..BUCKET_SLOTS {
            let slot = FLOWS.get_ptr_mut(first + i)?;
            if let Some(flow) = read_if_holds(slot, want) {
                return Some(Found { slot, flow });
            }
        }
    }
    None
}

/// The slot's flow if it holds the key `want`, read under its sequence lock.
#[inline(always)]
fn read_if_holds(slot: *mut FlowSlot, want: [u64; 2]) -> Option<Flow> {
    // SAFETY: `slot` points at a slot of the map (the verifier checked the
    // index); volatile keeps the reads in the seqlock's order.
    unsafe {
        let version = read_volatile(addr_of!((*slot).version));
        let key = addr_of!((*slot).key) as *const u64;
        if version & 1 != 0 || read_volatile(key) != want[0] || read_volatile(key.add(1)) != want[1] {
            return None;
        }
        let flow = read_volatile(addr_of!((*slot).flow));
        // Freed, or rewritten for another flow while we read.
        if flow.state == flow_state::FREE || read_volatile(addr_of!((*slot).version)) != version {
            return None;
        }
        Some(flow)
    }
}

/// Another CPU took the slot at the same instant.
pub struct SlotTaken;

/// Writes a new flow into the first free slot of whichever of its buckets
/// has more free slots; where both are full, over the slot whose flow has
/// been idle longest (the oldest flow makes room, as in an LRU).
#[inline(always)]
pub fn insert(key: &FlowKey, hash: u64, flow: &Flow) -> Result<(), SlotTaken> {
    // Per bucket: free slots, and the first free one (slot, version).
    let mut free = [0u32; 2];
    let mut first_free: [(*mut FlowSlot, u64); 2] = [(null_mut(), 0); 2];
    let mut oldest: (*mut FlowSlot, u64, u64) = (null_mut(), 0, u64::MAX);
    let mut oldest_bucket = 0;
    let buckets = flow_table::buckets(hash, flow_bucket_mask());
    for b in 0..2 {
        for i in 0..BUCKET_SLOTS {
            let Some(slot) = FLOWS.get_ptr_mut(buckets[b] + i) else { return Err(SlotTaken) };
            // SAFETY: as in `read_if_holds`.
            let (version, state, last_seen) = unsafe {
                (
                    read_volatile(addr_of!((*slot).version)),
                    read_volatile(addr_of!((*slot).flow.state)),
                    read_volatile(addr_of!((*slot).flow.last_seen_ns)),
                )
            };
            if version & 1 != 0 {
                continue;
            }
            if state == flow_state::FREE {
                if free[b] == 0 {
                    first_free[b] = (slot, version);
                }
                free[b] += 1;
            } else if last_seen < oldest.2 {
                oldest = (slot, version, last_seen);
                oldest_bucket = buckets[b];
            }
        }
    }
    let (victim, version, bucket) = match free {
        [0, 0] => (oldest.0, oldest.1, oldest_bucket),
        [a, b] if b > a => (first_free[1].0, first_free[1].1, buckets[1]),
        _ => (first_free[0].0, first_free[0].1, buckets[0]),
    };
    if victim.is_null() {
        return Err(SlotTaken);
    }
    // SAFETY: `victim` is a slot of the map. The compare-and-swap makes this
    // CPU its only writer until the version is even again.
    unsafe {
        let lock = addr_of_mut!((*victim).version);
        let (_, locked) =
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(lock, version, version + 1);
        if !locked {
            return Err(SlotTaken);
        }
        write_volatile(addr_of_mut!((*victim).key), *key);
        write_volatile(addr_of_mut!((*victim).flow), *flow);
        write_volatile(lock, version + 2);
    }
    mark(bucket / BUCKET_SLOTS);
    Ok(())
}

/// Marks bucket `bucket` as holding a flow, after the flow is written (the
/// agent clears a mark before reading the bucket, so it never misses one).
#[inline(always)]
fn mark(bucket: u32) {
    let per = flow_table::MARKS_PER_ENTRY;
    if let Some(marks) = FLOW_MARKS.get_ptr_mut(bucket / per) {
        // SAFETY: an element of the map; a byte store, no other field.
        unsafe { write_volatile(addr_of_mut!((*marks)[(bucket % per) as usize]), 1) };
    }
}
