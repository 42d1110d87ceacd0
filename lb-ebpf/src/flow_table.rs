//! The flow table (layout in `lb_common::flow_table`): finding a flow's slot
//! by its buckets' tags, and taking a slot for a new flow. Array reads the
//! verifier inlines, no helper calls, no allocation: this is the datapath's
//! hottest code.

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xor},
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
};

use lb_common::{
    Flow, FlowKey, FlowSlot, eviction, flow_state,
    flow_table::{self, BUCKET_SLOTS, TAG_BUSY, TAG_FREE, TAG_LINE_BUCKETS, lane, with_lane},
};

use crate::maps::{FLOW_TAGS, FLOWS, flow_bucket_mask};

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

/// The tag word of bucket `first / BUCKET_SLOTS`.
#[inline(always)]
fn tags(first: u32) -> Option<*mut u64> {
    tag_word(first / BUCKET_SLOTS)
}

/// The tag word of `bucket`, within its line.
#[inline(always)]
pub fn tag_word(bucket: u32) -> Option<*mut u64> {
    let line = FLOW_TAGS.get_ptr_mut(bucket / TAG_LINE_BUCKETS)?;
    // SAFETY: within the line (the index is masked to its length).
    Some(unsafe { (line as *mut u64).add((bucket % TAG_LINE_BUCKETS) as usize) })
}

/// The flow of `key` (whose [`flow_table::hash`] is `hash`), if the table
/// has it: only slots whose tag matches are read.
#[inline(always)]
pub fn lookup(key: &FlowKey, hash: u64) -> Option<Found> {
    let want = words(key);
    let tag = flow_table::key_tag(hash);
    for first in flow_table::buckets(hash, flow_bucket_mask()) {
        // SAFETY: an element of the tags map.
        let word = unsafe { read_volatile(tags(first)?) };
        for i in 0..BUCKET_SLOTS {
            if !flow_table::tag_matches(lane(word, i), tag) {
                continue;
            }
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

/// Another CPU changed the bucket's tags at the same instant.
pub struct SlotTaken;

/// Writes a new flow into the first free slot of whichever of its buckets
/// has more free slots (read from the tags alone); where both are full, over
/// a flow that carries no connection in use if one of the eight does (the
/// one idle longest: a flood of spoofed SYNs evicts its own half-open flows),
/// else over the flow idle longest (as in an LRU). Returns the kind of the
/// flow evicted, if one was ([`eviction`]).
#[inline(always)]
pub fn insert(key: &FlowKey, hash: u64, flow: &Flow) -> Result<Option<u32>, SlotTaken> {
    let buckets = flow_table::buckets(hash, flow_bucket_mask());
    let (Some(tags0), Some(tags1)) = (tags(buckets[0]), tags(buckets[1])) else { return Err(SlotTaken) };
    // SAFETY: elements of the tags map.
    let words = unsafe { [read_volatile(tags0), read_volatile(tags1)] };
    let mut free = [0u32; 2];
    let mut first_free = [0u32; 2];
    for b in 0..2 {
        for i in (0..BUCKET_SLOTS).rev() {
            if lane(words[b], i) == TAG_FREE {
                free[b] += 1;
                first_free[b] = i;
            }
        }
    }
    let (b, i, evicted) = match free {
        [0, 0] => victim(buckets, words).map(|(b, i, kind)| (b, i, Some(kind))).ok_or(SlotTaken)?,
        [f0, f1] if f1 > f0 => (1, first_free[1], None),
        _ => (0, first_free[0], None),
    };
    // Owning the slot: its tag changes to ours, if no other CPU changed the
    // bucket's tags since we read them.
    let tag_word = if b == 0 { tags0 } else { tags1 };
    // SAFETY: an element of the tags map; the BPF cmpxchg instruction.
    let (_, owned) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            tag_word,
            words[b],
            with_lane(words[b], i, flow_table::tag(hash, flow.server_id)),
        )
    };
    if !owned {
        return Err(SlotTaken);
    }
    let slot = FLOWS.get_ptr_mut(buckets[b] + i).ok_or(SlotTaken)?;
    // SAFETY: a slot of the map, ours through its tag. Stores only: reading
    // the slot's line first would wait for memory. A reader needs only a
    // version that differs from the slot's last one: odd while writing, then
    // an even value drawn from the flow's hash and time.
    unsafe {
        let lock = addr_of_mut!((*slot).version);
        write_volatile(lock, 1);
        write_volatile(addr_of_mut!((*slot).key), *key);
        write_volatile(addr_of_mut!((*slot).flow), *flow);
        write_volatile(lock, ((hash ^ flow.last_seen_ns) | 2) & !1);
    }
    Ok(evicted)
}

/// Both buckets full: the slot (bucket, index, kind of its flow) to take.
/// Of the flows that carry no connection in use (half-open, or closed), the
/// one seen longest ago; if every one is in use, the one seen longest ago.
/// Slots being written or freed are skipped.
#[inline(always)]
fn victim(buckets: [u32; 2], words: [u64; 2]) -> Option<(usize, u32, u32)> {
    // [disposable, any]: (bucket, index, kind) and when it was last seen.
    let mut best: [Option<(usize, u32, u32)>; 2] = [None, None];
    let mut best_seen = [u64::MAX; 2];
    for b in 0..2 {
        for i in 0..BUCKET_SLOTS {
            if lane(words[b], i) == TAG_BUSY {
                continue;
            }
            let slot = FLOWS.get_ptr_mut(buckets[b] + i)?;
            // SAFETY: a slot of the map; a torn read only misjudges which
            // flow goes, and the version check skips slots being written.
            let (version, seen, state, bits) = unsafe {
                (
                    read_volatile(addr_of!((*slot).version)),
                    read_volatile(addr_of!((*slot).flow.last_seen_ns)),
                    read_volatile(addr_of!((*slot).flow.state)),
                    read_volatile(addr_of!((*slot).flow.seen)),
                )
            };
            if version & 1 != 0 {
                continue;
            }
            let kind = eviction::kind(state, bits);
            if seen < best_seen[1] {
                (best[1], best_seen[1]) = (Some((b, i, kind)), seen);
            }
            if kind != eviction::IN_USE && seen < best_seen[0] {
                (best[0], best_seen[0]) = (Some((b, i, kind)), seen);
            }
        }
    }
    best[0].or(best[1])
}

/// A consistent copy of the slot's flow, if it holds one and no writer is
/// at it: (version, key, flow).
#[inline(always)]
pub fn read(slot: *mut FlowSlot) -> Option<(u64, FlowKey, Flow)> {
    // SAFETY: a slot of the map; volatile keeps the seqlock's order.
    unsafe {
        let version = read_volatile(addr_of!((*slot).version));
        if version & 1 != 0 {
            return None;
        }
        let key = read_volatile(addr_of!((*slot).key));
        let flow = read_volatile(addr_of!((*slot).flow));
        if flow.state == flow_state::FREE || read_volatile(addr_of!((*slot).version)) != version {
            return None;
        }
        Some((version, key, flow))
    }
}

/// Frees slot `lane` of the bucket whose tag word is `tags`, last read
/// holding a flow tagged `tag` at `version`: owns it (tag to busy), clears
/// it, then frees its tag, as the agent does. False if it changed hands
/// since (it then holds another flow, which stays).
#[inline(always)]
pub fn free(tags: *mut u64, lane_index: u32, tag: u16, slot: *mut FlowSlot, version: u64) -> bool {
    // SAFETY: an element of the tags map; the BPF cmpxchg instruction.
    let current = unsafe { read_volatile(tags) };
    if lane(current, lane_index) != tag {
        return false;
    }
    // One try: a tag word that changed under us (another CPU took another
    // slot of the bucket) leaves this flow for the agent's next sweep.
    // SAFETY: as above.
    let (_, owned) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            tags,
            current,
            with_lane(current, lane_index, TAG_BUSY),
        )
    };
    if !owned {
        return false;
    }
    // SAFETY: a slot of the map, ours through its tag.
    unsafe {
        let lock = addr_of_mut!((*slot).version);
        if read_volatile(lock) != version {
            // Rewritten for another flow with the same tag meanwhile.
            release(tags, lane_index, tag);
            return false;
        }
        write_volatile(lock, version | 1);
        write_volatile(addr_of_mut!((*slot).key), FlowKey::default());
        write_volatile(addr_of_mut!((*slot).flow), Flow::default());
        write_volatile(lock, version + 2);
    }
    release(tags, lane_index, TAG_FREE);
    true
}

/// Turns our busy tag (slot `lane` of the bucket) into `to`. An atomic xor,
/// which cannot fail: no other CPU changes a busy tag.
#[inline(always)]
fn release(tags: *mut u64, lane_index: u32, to: u16) {
    // SAFETY: an element of the tags map; the BPF atomic xor instruction.
    unsafe {
        atomic_xor::<u64, u64, { AtomicOrdering::SeqCst }>(tags, ((TAG_BUSY ^ to) as u64) << (16 * lane_index));
    }
}
