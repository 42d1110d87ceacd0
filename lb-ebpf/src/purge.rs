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

/// The walk's state, shared with the loop's steps: the pairs of tag lines
/// read and to read, what marks a slot as one to read, and the slots found
/// and not purged yet.
struct Scan {
    /// The next pair to read (its first bucket).
    next: u32,
    /// Slots of that pair to pass, as bits of [`line_marks`]: those before
    /// a request that starts within the pair.
    done: u64,
    /// The pair read last, and its marked slots not taken into `pending`
    /// yet (bits of [`line_marks`]).
    pair: u32,
    marks: u64,
    end: u32,
    purged: u32,
    hints: u64,
    /// One server hint to look for ([`hint_pattern`]), if `hints` has one.
    single: bool,
    pattern: u64,
    /// Slots found by their tags (numbers in the table), to purge.
    pending: [u32; PENDING as usize],
    /// Slots found and slots purged of them so far, in `pending` at their
    /// number modulo [`PENDING`]; never reset, so that the verifier sees
    /// no new constant each step (it would follow each apart).
    found: u32,
    flushed: u32,
    /// Purging `pending` until it is empty: it was full.
    flushing: bool,
}

/// Slots found before the first of them is purged, their lines then read
/// in one step ([`touch_pending`]). A slot's line is mostly a miss in
/// memory and in the TLB (~300 ns on these hosts, and more where a table
/// holds few flows: one slot a page). Read one a step, as the slots were
/// found, each miss was waited for alone: on these hosts loads overlap
/// within a step, not from one step to the next (measured: lines touched a
/// few steps before their purge saved nothing). Read together, they
/// overlap; the bench's section 4 measures the purge (`docs/performance.md`).
/// 32 did not fit: `pending` lives on the stack, and the program's and
/// the step's frames together would take 560 of the verifier's 512 bytes.
const PENDING: u32 = 16;

/// The most steps one `bpf_loop` takes (the helper refuses more). A run
/// covers as many buckets as these steps surely pass ([`walk`]), hands
/// back where it got to, and the agent runs again from there.
const MAX_STEPS: u32 = 1 << 23;

/// Buckets a step looks at: two lines of tags (the table has an even
/// number). Most hold nothing to purge, and are passed in one step: a step
/// costs a call, more than reading its tags.
const PAIR_BUCKETS: u32 = 2 * TAG_LINE_BUCKETS;

/// Slots in a pair of lines of tags.
const PAIR_SLOTS: u32 = PAIR_BUCKETS * BUCKET_SLOTS;

/// The most steps a bucket takes: two a slot (found, then purged), and
/// one to pass it.
const STEPS_PER_BUCKET: u32 = 2 * BUCKET_SLOTS + 1;

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
    // The counts of pending slots start from it too (it is 0), for the same
    // reason.
    let zero = purged;
    // Most purges are of one server, or of servers sharing a hint: their
    // slots are found four lanes at a time.
    let single = hints != 0 && hints & (hints - 1) == 0;
    let pattern = hint_pattern(lowest_bit(hints));
    // From the pair's start, its buckets before `next` passed.
    let done = buckets_before(next % PAIR_BUCKETS);
    let next = next - next % PAIR_BUCKETS;
    let pending = [0; PENDING as usize];
    let mut scan = Scan {
        next,
        done,
        pair: next,
        marks: 0,
        end,
        purged,
        hints,
        single,
        pattern,
        pending,
        found: zero,
        flushed: zero,
        flushing: false,
    };
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
    // A run must not stop short with slots pending (they would be passed
    // and not purged): its range is cut to what its steps cover, at most
    // two a slot (found, purged) and one a bucket, and one to stop.
    let reach = (MAX_STEPS - 1) / STEPS_PER_BUCKET / PAIR_BUCKETS * PAIR_BUCKETS;
    scan.end = scan.end.min(F::bucket_mask() + 1).min(scan.next.saturating_add(reach));
    if scan.next < scan.end {
        let steps = (scan.end - scan.next) * STEPS_PER_BUCKET + 1;
        // SAFETY: `step` is a callback of the signature bpf_loop expects, and
        // `scan` outlives the loop.
        unsafe { bpf_loop(steps, step::<F> as *mut c_void, scan as *mut Scan as *mut c_void, 0) };
    }
}

/// One loop step, the first that applies:
/// - once `pending` is full, or the walk is to stop: one pending slot
///   purged (the first of them also reads a word of each pending slot);
/// - the next marked slot of the pair read last, kept in `pending`;
/// - the next pair of lines of tags (`PAIR_BUCKETS` buckets, 64 slots)
///   read, the slots of a marked server's flows in it found by the tags
///   alone, and the first of them kept in `pending`.
///
/// A step purges at most one slot, so the verifier follows its few paths
/// once (a step that read every flow of a line's buckets made it follow
/// too many on a 6.18.44 kernel, and give up; so did a loop over lines
/// within a step). Stops the loop (1), with nothing pending, at the end of
/// the range, or between pairs when `purged` may not hold a pair's flows
/// besides those pending: a run ends on a pair's start, where the next
/// begins.
extern "C" fn step<F: Purgeable>(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the `Scan` that `purge_flows` passed to bpf_loop.
    let scan = unsafe { &mut *(ctx as *mut Scan) };
    let waiting = scan.found.wrapping_sub(scan.flushed);
    let stop = scan.marks == 0 && (scan.next >= scan.end || scan.purged + waiting > purge::BATCH - PAIR_SLOTS);
    if waiting != 0 && (stop || waiting >= PENDING || scan.flushing) {
        if !scan.flushing {
            touch_pending::<F>(scan, waiting);
        }
        scan.flushing = waiting > 1;
        purge_pending::<F>(scan);
        return 0;
    }
    if stop {
        return 1;
    }
    if scan.marks == 0 {
        // No such lines (a range past the table): the walk stops here,
        // after the pending slots, and the agent is told it did not move.
        let Some(marked) = read_pair::<F>(scan) else {
            scan.end = scan.next;
            return 0;
        };
        if marked == 0 {
            return 0;
        }
        scan.marks = marked;
    }
    let at = lowest_bit(scan.marks);
    scan.marks &= scan.marks - 1;
    let slot = (scan.pair + at % PAIR_BUCKETS) * BUCKET_SLOTS + at / 16 % BUCKET_SLOTS;
    scan.pending[(scan.found % PENDING) as usize] = slot;
    scan.found = scan.found.wrapping_add(1);
    0
}

/// Reads the pair of lines of tags at `scan.next` and moves on past it:
/// the marks of its slots that hold a marked server's flow (`None` if the
/// tags map has no such lines).
#[inline(always)]
fn read_pair<F: Purgeable>(scan: &mut Scan) -> Option<u64> {
    let next = scan.next;
    let tags = F::flow_tags();
    let first = next / TAG_LINE_BUCKETS;
    let (line0, line1) = (tags.get_ptr_mut(first)?, tags.get_ptr_mut(first + 1)?);
    // SAFETY: elements of the tags map.
    let words = unsafe { [core::ptr::read_volatile(line0), core::ptr::read_volatile(line1)] };
    let open = !scan.done & buckets_before((scan.end - next).min(PAIR_BUCKETS));
    (scan.pair, scan.next, scan.done) = (next, next + PAIR_BUCKETS, 0);
    // A free or busy slot's tag carries hint 0: only a search for hint 0
    // must also ask which slots hold a flow.
    Some(
        match (scan.single, scan.pattern) {
            (true, 0) => line_marks(&words, |w| lanes_with_hint(w, 0) & live_lanes(w)),
            (true, pattern) => line_marks(&words, |w| lanes_with_hint(w, pattern)),
            (false, _) => line_marks(&words, |w| lanes_with_hints(w, scan.hints) & live_lanes(w)),
        } & open,
    )
}

/// Reads a word of each of the `waiting` slots in `pending`, in one step,
/// so that their misses overlap (see [`PENDING`]).
#[inline(always)]
fn touch_pending<F: Purgeable>(scan: &Scan, waiting: u32) {
    for k in 0..PENDING {
        if k >= waiting {
            break;
        }
        let slot = scan.pending[(scan.flushed.wrapping_add(k) % PENDING) as usize];
        if let Some(flow) = F::flows().get_ptr_mut(slot) {
            // SAFETY: a slot of the map; the value read is not used.
            unsafe { core::ptr::read_volatile(flow as *const u64) };
        }
    }
}

/// Purges the next of the slots in `pending`, if its flow is (still) on a
/// marked server.
#[inline(always)]
fn purge_pending<F: Purgeable>(scan: &mut Scan) {
    let slot = scan.pending[(scan.flushed % PENDING) as usize];
    scan.flushed = scan.flushed.wrapping_add(1);
    let (bucket, i) = (slot / BUCKET_SLOTS, slot % BUCKET_SLOTS);
    let Some(tags) = flow_table::tag_word::<F>(bucket) else { return };
    // SAFETY: an element of the tags map.
    let word = unsafe { core::ptr::read_volatile(tags) };
    scan.purged += purge_slot::<F>(bucket, i, tags, word, scan.hints, scan.purged);
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
    if PURGE_SERVERS.get(flow.server()).copied().unwrap_or(0) == 0 {
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
