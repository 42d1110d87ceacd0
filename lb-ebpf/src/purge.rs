//! Where servers' flows are purged at once: a program the agent runs with
//! BPF_PROG_TEST_RUN (never attached to an interface). It walks a range of
//! the flow table's tag words in the kernel, frees the slots whose flow is
//! on a server marked in `purge_servers`, and hands each freed flow back in
//! `purged` for the agent's resets and return-path clean-up.
//!
//! Why in the kernel: to read the table, the agent must map it, and mapping
//! a BPF array inserts every page of the range: about 10 ms (map and unmap)
//! for a table sized for two million flows, however few it holds. The
//! program reads the table where it lies, and reads only the slots whose tag
//! carries the hint of a server to purge (`lb_common::flow_table::tag`).
//! One program for both families' tables: the request names the family.

use core::{ffi::c_void, ptr::write_volatile};

use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_loop, macros::xdp, maps::Array, programs::XdpContext};
use lb_common::{
    Flow, FlowKey, FlowKey6,
    flow_table::{
        BUCKET_SLOTS, TAG_BUSY, TAG_FREE, TAG_LINE_BUCKETS, hint_pattern, lane, lanes_with_hint, lanes_with_hints,
        live_lanes, lowest_bit, tag_server_hint,
    },
    purge,
};

use crate::{
    family::{Family, V4, V6},
    flow_table,
    maps::{PURGE_REQUEST, PURGE_SERVERS, PURGED, PURGED6},
};

/// Where a family's purged flows are handed back.
trait Purgeable: Family {
    type Purged;
    fn purged() -> &'static Array<Self::Purged>;
    fn record(key: Self::Key, flow: Flow) -> Self::Purged;
}

impl Purgeable for V4 {
    type Purged = purge::Purged;
    #[inline(always)]
    fn purged() -> &'static Array<purge::Purged> {
        &PURGED
    }
    #[inline(always)]
    fn record(key: FlowKey, flow: Flow) -> purge::Purged {
        purge::Purged { key, flow }
    }
}

impl Purgeable for V6 {
    type Purged = purge::Purged6;
    #[inline(always)]
    fn purged() -> &'static Array<purge::Purged6> {
        &PURGED6
    }
    #[inline(always)]
    fn record(key: FlowKey6, flow: Flow) -> purge::Purged6 {
        purge::Purged6 { key, flow }
    }
}

/// The walk's state, shared with the loop's steps: the pair of tag lines
/// being read (its first bucket), the slots of it already looked at, and
/// what marks a slot as one to read.
struct Scan {
    next: u32,
    /// Slots of the pair passed already, as bits of [`line_marks`].
    done: u64,
    end: u32,
    purged: u32,
    hints: u64,
    /// One server hint to look for ([`hint_pattern`]), if `hints` has one.
    single: bool,
    pattern: u64,
}

/// The most steps one `bpf_loop` takes (the helper refuses more); a run
/// that stops short hands back where it got to, and the agent runs again.
const MAX_STEPS: u32 = 1 << 23;

/// Buckets a step looks at: two lines of tags (the table has an even
/// number). Most hold nothing to purge, and are passed in one step: a step
/// costs a call, more than reading its tags.
const PAIR_BUCKETS: u32 = 2 * TAG_LINE_BUCKETS;

/// Slots in a pair of lines of tags.
const PAIR_SLOTS: u32 = PAIR_BUCKETS * BUCKET_SLOTS;

#[xdp]
pub fn purge_flows(_ctx: XdpContext) -> u32 {
    let Some(request) = PURGE_REQUEST.get_ptr_mut(0) else { return xdp_action::XDP_ABORTED };
    // SAFETY: the map's one element; only the agent's serialised runs use it.
    // The count starts from the request's (0), not from a constant: the
    // verifier would otherwise follow every count apart, and give up.
    let (next, end, purged, hints, family) = unsafe {
        let r = &*request;
        (r.next_bucket, r.end_bucket, r.purged, r.server_hints, r.family)
    };
    // Most purges are of one server, or of servers sharing a hint: their
    // slots are found four lanes at a time.
    let single = hints != 0 && hints & (hints - 1) == 0;
    let pattern = hint_pattern(lowest_bit(hints));
    // From the pair's start, its buckets before `next` passed.
    let done = buckets_before(next % PAIR_BUCKETS);
    let next = next - next % PAIR_BUCKETS;
    let mut scan = Scan { next, done, end, purged, hints, single, pattern };
    if family == purge::IPV6 {
        walk::<V6>(&mut scan);
    } else {
        walk::<V4>(&mut scan);
    }
    // SAFETY: as above.
    unsafe {
        write_volatile(&mut (*request).next_bucket, scan.next);
        write_volatile(&mut (*request).purged, scan.purged);
    }
    xdp_action::XDP_PASS
}

/// Walks the request's range of family `F`'s table.
#[inline(always)]
fn walk<F: Purgeable>(scan: &mut Scan) {
    scan.end = scan.end.min(F::bucket_mask() + 1);
    if scan.next < scan.end {
        // At most a step per slot and one per line, and one to stop.
        let steps = (scan.end - scan.next).saturating_mul(BUCKET_SLOTS + 1).saturating_add(1).min(MAX_STEPS);
        // SAFETY: `step` is a callback of the signature bpf_loop expects, and
        // `scan` outlives the loop.
        unsafe { bpf_loop(steps, step::<F> as *mut c_void, scan as *mut Scan as *mut c_void, 0) };
    }
}

/// One loop step: the next slot of a marked server's flow in a pair of
/// lines of tags (`PAIR_BUCKETS` buckets, 64 slots), found by the tags
/// alone, or the rest of the pair passed at once when it has none. A step
/// reads at most one slot's flow, so the verifier follows its few paths
/// once (a step that read every flow of a line's buckets made it follow too
/// many on a 6.18.44 kernel, and give up; so did a loop over lines within
/// a step). Stops the loop (1) at the end of the range, or between pairs
/// when `purged` may not hold a pair's flows: a run ends on a pair's start,
/// where the next begins.
extern "C" fn step<F: Purgeable>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the `Scan` that `purge_flows` passed to bpf_loop.
    let scan = unsafe { &mut *(ctx as *mut Scan) };
    let next = scan.next;
    if next >= scan.end || scan.done == 0 && scan.purged > purge::BATCH - PAIR_SLOTS {
        return 1;
    }
    let tags = F::flow_tags();
    let first = next / TAG_LINE_BUCKETS;
    let (Some(line0), Some(line1)) = (tags.get_ptr_mut(first), tags.get_ptr_mut(first + 1)) else { return 1 };
    // SAFETY: elements of the tags map.
    let words = unsafe { [core::ptr::read_volatile(line0), core::ptr::read_volatile(line1)] };
    let open = !scan.done & buckets_before((scan.end - next).min(PAIR_BUCKETS));
    // A free or busy slot's tag carries hint 0: only a search for hint 0
    // must also ask which slots hold a flow.
    let marked = match (scan.single, scan.pattern) {
        (true, 0) => line_marks(&words, |w| lanes_with_hint(w, 0) & live_lanes(w)),
        (true, pattern) => line_marks(&words, |w| lanes_with_hint(w, pattern)),
        (false, _) => line_marks(&words, |w| lanes_with_hints(w, scan.hints) & live_lanes(w)),
    } & open;
    if marked == 0 {
        scan.next = next + PAIR_BUCKETS;
        scan.done = 0;
        return 0;
    }
    let at = lowest_bit(marked);
    // Masked for the verifier, which checks the tag word's place in its
    // line; read back through memory first, or LLVM, knowing `marked` is
    // not 0, drops the masks (and the verifier knows no such thing).
    // SAFETY: a local.
    let at = unsafe { core::ptr::read_volatile(&at) };
    let (b, i) = (at % PAIR_BUCKETS, at / 16 % BUCKET_SLOTS);
    let line = if b < TAG_LINE_BUCKETS { line0 } else { line1 };
    // SAFETY: within the line (the index is masked to its length).
    let tags = unsafe { (line as *mut u64).add((b % TAG_LINE_BUCKETS) as usize) };
    // SAFETY: an element of the tags map.
    let word = unsafe { core::ptr::read_volatile(tags) };
    scan.purged += purge_slot::<F>(next + b, i, tags, word, scan.hints, scan.purged);
    // This slot and those before it in the pair's order (bit 63 is the last).
    scan.done |= (2u64 << at).wrapping_sub(1);
    0
}

/// A bit per slot of a pair of lines of tag words whose tag is a flow's and
/// carries a marked hint, as `hinted` finds them in each word (the top bit
/// of each such lane): lane `i` of bucket `b` (0-15) is bit `16 i + b`
/// (from each word's lane marks, bits `16 i + 15`, shifted into place: no
/// gathering of bits).
#[inline(always)]
fn line_marks(lines: &[[u64; TAG_LINE_BUCKETS as usize]; 2], hinted: impl Fn(u64) -> u64) -> u64 {
    let mut marks = 0u64;
    for (half, line) in lines.iter().enumerate() {
        for (w, &word) in line.iter().enumerate() {
            let b = half as u32 * TAG_LINE_BUCKETS + w as u32;
            marks |= hinted(word) >> (15 - b);
        }
    }
    marks
}

/// The bits of [`line_marks`] of the pair's first `buckets` buckets.
#[inline(always)]
fn buckets_before(buckets: u32) -> u64 {
    ((1u64 << buckets) - 1) * 0x0001_0001_0001_0001
}

/// Frees slot `i` of `bucket` if its flow is on a marked server, writing it
/// to `purged` at index `at`; 1 if it did.
#[inline(always)]
fn purge_slot<F: Purgeable>(bucket: u32, i: u32, tags: *mut u64, word: u64, hints: u64, at: u32) -> u32 {
    let tag = lane(word, i);
    if tag == TAG_FREE || tag == TAG_BUSY || hints >> tag_server_hint(tag) & 1 == 0 {
        return 0;
    }
    let Some(slot) = F::flows().get_ptr_mut(bucket * BUCKET_SLOTS + i) else { return 0 };
    let Some((version, key, flow)) = flow_table::read::<F>(slot) else { return 0 };
    if PURGE_SERVERS.get(flow.server_id).copied().unwrap_or(0) == 0 {
        return 0;
    }
    let Some(out) = F::purged().get_ptr_mut(at) else { return 0 };
    if !flow_table::free::<F>(tags, i, tag, slot, version) {
        return 0;
    }
    // SAFETY: an element of the `purged` map.
    unsafe { write_volatile(out, F::record(key, flow)) };
    1
}
