//! The flow table (layout in `lb_common::flow_table`): finding a flow's slot
//! by its buckets' tags, and taking a slot for a new flow. Array reads the
//! verifier inlines, no helper calls, no allocation: this is the datapath's
//! hottest code. Written once for both families' tables ([`Family`]).

use core::{
    intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xor},
    ptr::{read_volatile, write_volatile},
};

use lb_common::{
    Flow, eviction, flow_state,
    flow_table::{self, BUCKET_SLOTS, TAG_BUSY, TAG_FREE, TAG_LINE_BUCKETS, lane, with_lane},
};

use lb_common::TableSlot;

use crate::family::{Family, V4, V6};

/// A flow found in the table: a consistent copy of it, and its slot, where
/// the packet's time and sequence numbers are recorded.
pub struct Found<F: Family> {
    pub slot: *mut F::Slot,
    pub flow: Flow,
}

/// The tag word of bucket `first / BUCKET_SLOTS`.
#[inline(always)]
fn tags<F: Family>(first: u32) -> Option<*mut u64> {
    tag_word::<F>(first / BUCKET_SLOTS)
}

/// The tag word of `bucket`, within its line.
#[inline(always)]
pub fn tag_word<F: Family>(bucket: u32) -> Option<*mut u64> {
    let line = F::flow_tags().get_ptr_mut(bucket / TAG_LINE_BUCKETS)?;
    // SAFETY: within the line (the index is masked to its length).
    Some(unsafe { (line as *mut u64).add((bucket % TAG_LINE_BUCKETS) as usize) })
}

/// The flow of `key` (whose [`flow_table::hash`] is `hash`), if the table
/// has it: only slots whose tag matches are read.
#[inline(always)]
pub fn lookup<F: Family>(key: &F::Key, hash: u64) -> Option<Found<F>> {
    let tag = flow_table::key_tag(hash);
    for first in flow_table::buckets(hash, F::bucket_mask()) {
        // SAFETY: an element of the tags map.
        let word = unsafe { read_volatile(tags::<F>(first)?) };
        for i in 0..BUCKET_SLOTS {
            if !flow_table::tag_matches(lane(word, i), tag) {
                continue;
            }
            let slot = F::flows().get_ptr_mut(first + i)?;
            if let Some(flow) = read_if_holds::<F>(slot, key) {
                return Some(Found { slot, flow });
            }
        }
    }
    None
}

/// The slot's flow if it holds the key `want`, read under its sequence lock.
#[inline(always)]
fn read_if_holds<F: Family>(slot: *mut F::Slot, want: &F::Key) -> Option<Flow> {
    let (lock, flow) = <F::Slot as TableSlot>::parts(slot);
    // SAFETY: `slot` points at a slot of the map (the verifier checked the
    // index); volatile keeps the reads in the seqlock's order.
    unsafe {
        let version = read_volatile(lock);
        if version & 1 != 0 || !F::Slot::holds(slot, want) {
            return None;
        }
        let flow = read_volatile(flow);
        // Freed, or rewritten for another flow while we read.
        if flow.state == flow_state::FREE || read_volatile(lock) != version || !F::Slot::same_proto(want, &flow) {
            return None;
        }
        Some(flow)
    }
}

/// Another CPU changed the bucket's tags at the same instant.
pub struct SlotTaken;

/// Writes a new flow into the first free slot of the bucket that
/// [`flow_table::first_bucket`] picks (from the tags alone); where both are
/// full, over a flow that carries no connection in use if one of the eight
/// does (the one idle longest: a flood of spoofed SYNs evicts its own
/// half-open flows), else over the flow idle longest (as in an LRU). Returns
/// where it went.
#[inline(always)]
pub fn insert<F: Family>(key: &F::Key, hash: u64, flow: &Flow) -> Result<Placed, SlotTaken> {
    let buckets = flow_table::buckets(hash, F::bucket_mask());
    let (Some(tags0), Some(tags1)) = (tags::<F>(buckets[0]), tags::<F>(buckets[1])) else { return Err(SlotTaken) };
    // SAFETY: elements of the tags map.
    let words = unsafe { [read_volatile(tags0), read_volatile(tags1)] };
    // Free lanes found without a loop over them: a loop unrolled over both
    // buckets' lanes kept so many values live that they spilled to the stack.
    let free = [flow_table::free_lanes(words[0]), flow_table::free_lanes(words[1])];
    let (b, i, evicted) = match free {
        [0, 0] => match F::victim(buckets[0], buckets[1], words[0], words[1], flow.last_seen) {
            NO_VICTIM => return Err(SlotTaken),
            // Masked: the bucket indexes two-element arrays below.
            pick => ((pick >> 8 & 1) as usize, pick >> 4 & 0xf, Some(pick & 0xf)),
        },
        [f0, f1] if !flow_table::first_bucket(f0, f1) => (1, flow_table::first_lane(f1), None),
        [f0, _] => (0, flow_table::first_lane(f0), None),
    };
    // Owning the slot: its tag changes to ours, if no other CPU changed the
    // bucket's tags since we read them.
    let tag_word = if b == 0 { tags0 } else { tags1 };
    let tag = flow_table::tag(hash, flow.server());
    let i = match claim(tag_word, words[b], i, tag) {
        true => i,
        false => match claim_again(tag_word, words[b], i, evicted.is_some(), tag) {
            NO_LANE => return Err(SlotTaken),
            i => i,
        },
    };
    let index = buckets[b] + i;
    let slot = F::flows().get_ptr_mut(index).ok_or(SlotTaken)?;
    let (lock, slot_flow) = <F::Slot as TableSlot>::parts(slot);
    // SAFETY: a slot of the map, ours through its tag. Stores only: reading
    // the slot's line first would wait for memory. A reader needs only a
    // version that differs from the slot's last one: odd while writing, then
    // an even value drawn from the flow's hash and time.
    unsafe {
        write_volatile(lock, 1);
        F::Slot::write_key(slot, key);
        write_volatile(slot_flow, *flow);
        write_volatile(lock, ((hash as u32 ^ flow.last_seen) | 2) & !1);
    }
    Ok(Placed { slot: index, evicted })
}

/// Takes slot `lane_index` of the bucket whose tag word is `tag_word`, last
/// read as `seen`, for a flow tagged `tag`: false if the word changed since.
#[inline(always)]
fn claim(tag_word: *mut u64, seen: u64, lane_index: u32, tag: u16) -> bool {
    // SAFETY: an element of the tags map; the BPF cmpxchg instruction.
    let (_, owned) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
            tag_word,
            seen,
            with_lane(seen, lane_index, tag),
        )
    };
    owned
}

/// A new flow's claim once more, after another CPU (or the agent) changed
/// its bucket's tags between their read (`seen`) and the claim: most often
/// a new flow of its own, in the same free slot (measured: once in 2.8
/// million new flows on two busy CPUs, and the flow was dropped). With the
/// tags as they are now: the first free slot, or the slot to push out if
/// its flow is still there. The lane taken, or [`NO_LANE`]. Out of line (a
/// BPF-to-BPF call, scalars in and out): only a lost claim comes here, and
/// inlined, it lengthened every new flow's path for the verifier.
#[inline(never)]
fn claim_again(tag_word: *mut u64, seen: u64, lane_index: u32, evicting: bool, tag: u16) -> u32 {
    // SAFETY: an element of the tags map.
    let now = unsafe { read_volatile(tag_word) };
    let lane_index = if evicting {
        if lane(now, lane_index) != lane(seen, lane_index) {
            return NO_LANE;
        }
        lane_index
    } else {
        match flow_table::free_lanes(now) {
            0 => return NO_LANE,
            free => flow_table::first_lane(free),
        }
    };
    if claim(tag_word, now, lane_index, tag) { lane_index } else { NO_LANE }
}

/// [`claim_again`]'s "no slot".
const NO_LANE: u32 = u32::MAX;

/// Where [`insert`] wrote a new flow.
pub struct Placed {
    /// The slot's number in the table.
    pub slot: u32,
    /// The kind of the flow evicted for it, if one was ([`eviction`]).
    pub evicted: Option<u32>,
}

/// Both buckets full: the slot to take, as `bucket << 8 | index << 4 |
/// kind of its flow` (`NO_VICTIM`: none). Of the flows that carry no
/// connection in use (half-open, or closed), the one seen longest ago; if
/// every one is in use, the one seen longest ago. Slots being written or
/// freed are skipped. Ages are counted back from `now` (a tick: see
/// [`lb_common::flow_time`]). Called out of line, as a global function
/// ([`victim4`], [`victim6`]), scalars in and out: only a full table's new
/// flows come here, and inlined, its eight slots' reads took stack from
/// every new flow's frame.
#[inline(always)]
fn victim<F: Family>(first0: u32, first1: u32, word0: u64, word1: u64, now: u32) -> u32 {
    let (mut any, mut disposable) = (NO_VICTIM, NO_VICTIM);
    let (mut any_age, mut disposable_age) = (0u64, 0u64);
    for b in 0..2u32 {
        let (first, word) = if b == 0 { (first0, word0) } else { (first1, word1) };
        for i in 0..BUCKET_SLOTS {
            if lane(word, i) == TAG_BUSY {
                continue;
            }
            let Some(slot) = F::flows().get_ptr_mut(first + i) else { return NO_VICTIM };
            let (lock, flow) = <F::Slot as TableSlot>::parts(slot);
            // SAFETY: a slot of the map; a torn read only misjudges which
            // flow goes, and the version check skips slots being written.
            let (version, seen, state, bits) = unsafe {
                (
                    read_volatile(lock),
                    read_volatile(core::ptr::addr_of!((*flow).last_seen)),
                    read_volatile(core::ptr::addr_of!((*flow).state)),
                    read_volatile(core::ptr::addr_of!((*flow).seen)),
                )
            };
            if version & 1 != 0 {
                continue;
            }
            let kind = eviction::kind(state, bits);
            let pick = b << 8 | i << 4 | kind;
            // Idle longest: the oldest tick, as an age (ticks wrap; the
            // table holds no tick to come). The first of equals is taken:
            // every age is above the starting 0. No branch: this loop's
            // paths are the verifier's to walk, eight slots deep.
            let age = now.wrapping_sub(seen) as u64 + 1;
            if age > any_age {
                (any, any_age) = (pick, age);
            }
            if kind != eviction::IN_USE && age > disposable_age {
                (disposable, disposable_age) = (pick, age);
            }
        }
    }
    if disposable != NO_VICTIM { disposable } else { any }
}

/// [`victim`] in IPv4's table, as a BPF global function: the verifier
/// checks a global function once, for any arguments, where it follows a
/// static one (`#[inline(never)]`) again at each call, in each caller's
/// state. Its eight slots' branches were most of the verifier's work on the
/// programs that create flows: `lb6_other` 919k instructions of the
/// verifier's million with it static, 318k global
/// (`tests/probes/verified_insns.c`).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn victim4(first0: u32, first1: u32, word0: u64, word1: u64, now: u32) -> u32 {
    victim::<V4>(first0, first1, word0, word1, now)
}

/// [`victim4`] in IPv6's table.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn victim6(first0: u32, first1: u32, word0: u64, word1: u64, now: u32) -> u32 {
    victim::<V6>(first0, first1, word0, word1, now)
}

/// [`victim`]'s "no slot to take".
const NO_VICTIM: u32 = u32::MAX;

/// A consistent copy of the slot's flow, if it holds one and no writer is
/// at it: (version, key, flow).
#[inline(always)]
pub fn read<F: Family>(slot: *mut F::Slot) -> Option<(u32, F::Key, Flow)> {
    let (lock, flow) = <F::Slot as TableSlot>::parts(slot);
    // SAFETY: a slot of the map; volatile keeps the seqlock's order.
    unsafe {
        let version = read_volatile(lock);
        if version & 1 != 0 {
            return None;
        }
        let flow = read_volatile(flow);
        let key = F::Slot::read_key(slot, &flow);
        if flow.state == flow_state::FREE || read_volatile(lock) != version {
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
pub fn free<F: Family>(tags: *mut u64, lane_index: u32, tag: u16, slot: *mut F::Slot, version: u32) -> bool {
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
    let (lock, flow) = <F::Slot as TableSlot>::parts(slot);
    // SAFETY: a slot of the map, ours through its tag.
    unsafe {
        if read_volatile(lock) != version {
            // Rewritten for another flow with the same tag meanwhile.
            release(tags, lane_index, tag);
            return false;
        }
        write_volatile(lock, version | 1);
        F::Slot::write_key(slot, &F::Key::default());
        write_volatile(flow, Flow::default());
        write_volatile(lock, version.wrapping_add(2));
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
