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

use core::{ffi::c_void, ptr::write_volatile};

use aya_ebpf::{bindings::xdp_action, helpers::generated::bpf_loop, macros::xdp, programs::XdpContext};
use lb_common::{
    flow_table::{BUCKET_SLOTS, TAG_BUSY, TAG_FREE, TAG_LINE_BUCKETS, lane, tag_server_hint},
    purge,
};

use crate::{
    flow_table,
    maps::{FLOW_TAGS, FLOWS, PURGE_REQUEST, PURGE_SERVERS, PURGED, flow_bucket_mask},
};

/// The walk's state, shared with the loop's steps.
struct Scan {
    next: u32,
    end: u32,
    purged: u32,
    hints: u64,
}

#[xdp]
pub fn purge_flows(_ctx: XdpContext) -> u32 {
    let Some(request) = PURGE_REQUEST.get_ptr_mut(0) else { return xdp_action::XDP_ABORTED };
    // SAFETY: the map's one element; only the agent's serialised runs use it.
    // The count starts from the request's (0), not from a constant: the
    // verifier would otherwise follow every count apart, and give up.
    let (next, end, purged, hints) =
        unsafe { ((*request).next_bucket, (*request).end_bucket, (*request).purged, (*request).server_hints) };
    let mut scan = Scan { next, end: end.min(flow_bucket_mask() + 1), purged, hints };
    if scan.next < scan.end {
        // A step per line, and one for a range that starts within a line.
        let steps = (scan.end - scan.next).div_ceil(TAG_LINE_BUCKETS) + 1;
        // SAFETY: `step` is a callback of the signature bpf_loop expects, and
        // `scan` outlives the loop.
        unsafe { bpf_loop(steps, step as *mut c_void, &mut scan as *mut Scan as *mut c_void, 0) };
    }
    // SAFETY: as above.
    unsafe {
        write_volatile(&mut (*request).next_bucket, scan.next);
        write_volatile(&mut (*request).purged, scan.purged);
    }
    xdp_action::XDP_PASS
}

/// One loop step: the rest of the line of tags (`TAG_LINE_BUCKETS`
/// buckets) holding bucket `scan.next`, skipped at once if all its slots
/// are free. Stops the loop (1) at the end of the range, or when `purged`
/// may not hold a whole line's flows more.
extern "C" fn step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: the `Scan` that `purge_flows` passed to bpf_loop.
    let scan = unsafe { &mut *(ctx as *mut Scan) };
    let (next, purged) = (scan.next, scan.purged);
    if next >= scan.end || purged > purge::BATCH - TAG_LINE_BUCKETS * BUCKET_SLOTS {
        return 1;
    }
    let Some(line) = FLOW_TAGS.get_ptr_mut(next / TAG_LINE_BUCKETS) else { return 1 };
    // SAFETY: an element of the tags map.
    let words = unsafe { core::ptr::read_volatile(line) };
    let first = next - next % TAG_LINE_BUCKETS;
    if words.iter().fold(0, |any, w| any | w) != 0 {
        let mut freed = 0;
        for (k, &word) in words.iter().enumerate() {
            let bucket = first + k as u32;
            if word != 0 && bucket >= next && bucket < scan.end {
                // SAFETY: within the line.
                let tags = unsafe { (line as *mut u64).add(k) };
                freed += purge_bucket(bucket, tags, word, scan.hints, purged + freed);
            }
        }
        scan.purged = purged + freed;
    }
    scan.next = (first + TAG_LINE_BUCKETS).min(scan.end);
    0
}

/// Frees the flows of `bucket` that are on marked servers, writing them to
/// `purged` from index `first`; how many.
#[inline(always)]
fn purge_bucket(bucket: u32, tags: *mut u64, word: u64, hints: u64, first: u32) -> u32 {
    let mut freed = 0;
    for i in 0..BUCKET_SLOTS {
        let tag = lane(word, i);
        if tag == TAG_FREE || tag == TAG_BUSY || hints >> tag_server_hint(tag) & 1 == 0 {
            continue;
        }
        let Some(slot) = FLOWS.get_ptr_mut(bucket * BUCKET_SLOTS + i) else { break };
        let Some((version, key, flow)) = flow_table::read(slot) else { continue };
        if PURGE_SERVERS.get(flow.server_id).copied().unwrap_or(0) == 0 {
            continue;
        }
        let Some(out) = PURGED.get_ptr_mut(first + freed) else { break };
        if flow_table::free(tags, i, tag, slot, version) {
            // SAFETY: an element of the `purged` map.
            unsafe { write_volatile(out, purge::Purged { key, flow }) };
            freed += 1;
        }
    }
    freed
}
