//! The flow table from the agent's side: the datapath's array of slots and
//! its tags (layout in `lb_common::flow_table`), mapped into the agent's
//! memory.
//!
//! A walk maps the table one window of slots at a time (1 MiB in IPv4, 2 in
//! IPv6) with its tags (a 16th or a 32nd of it), in memory order, reading only slots whose tag says they hold a flow:
//! a million flows are read in tens of milliseconds, an empty table in a few,
//! and the agent's resident memory stays at one window whatever the table's
//! size. Slots are owned and written as in the datapath (see
//! [`flow_table::tag`] and [`FlowSlot`]). One type for both families'
//! tables: [`FlowTable`] of [`FlowSlot`]s (IPv4) or of
//! [`FlowSlot6`](lb_common::FlowSlot6)s (IPv6).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
    ptr::{read_volatile, write_volatile},
    sync::atomic::{AtomicU32, AtomicU64, Ordering, fence},
};

use aya::maps::MapData;
use lb_common::{
    Flow, FlowSlot, TableSlot,
    flow_table::{self, BUCKET_SLOTS, TAG_BUSY, TAG_FREE, lane, with_lane},
    flow_time, map_name,
};

/// Slots per mapped window of a walk: 1 MiB of IPv4's, 2 of IPv6's.
const WINDOW_SLOTS: u32 = 32 * 1024;

/// Tries at a slot or a tag word that others keep changing, before giving up.
const TRIES: u32 = 64;

/// Whether this node forwards `flow`: its own, or a copy from another node
/// (flow replication) that traffic reached here in a tick after it was
/// written (the datapath then clears its mark). A copy never used here is its own
/// node's: not pushed on, not judged idle.
pub fn forwarded_here(flow: &Flow) -> bool {
    flow.seen & lb_common::flow_seen::COPY == 0
}

pub struct FlowTable<S: TableSlot = FlowSlot> {
    map: MapData,
    tags: MapData,
    slots: u32,
    _slot: std::marker::PhantomData<S>,
}

/// The key of a table's flows.
type Key<S> = <S as TableSlot>::Key;

impl<S: TableSlot> FlowTable<S> {
    /// The table in `map` (an mmap-able array of [`FlowSlot`]s), with its
    /// tags in `tags` (an mmap-able array of `u64`, one per bucket).
    pub fn new(map: MapData, tags: MapData) -> io::Result<FlowTable<S>> {
        let info = |m: &MapData| m.info().map_err(|e| io::Error::other(format!("flow table info: {e}")));
        let slots = info(&map)?.max_entries();
        if !slots.is_power_of_two() || slots < flow_table::MIN_SLOTS {
            return Err(io::Error::other(format!("flow table of {slots} slots: not a power of two")));
        }
        let lines = info(&tags)?.max_entries();
        if lines != flow_table::tag_lines(slots) {
            return Err(io::Error::other(format!("{lines} lines of tags for a table of {slots} slots")));
        }
        Ok(FlowTable { map, tags, slots, _slot: std::marker::PhantomData })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        self.map.fd().as_fd()
    }

    pub fn slots(&self) -> u32 {
        self.slots
    }

    fn bucket_mask(&self) -> u32 {
        flow_table::bucket_mask(self.slots)
    }

    /// Maps slots `first..first + len` (`first` on a page: a multiple of
    /// 128 in IPv4, 64 in IPv6).
    fn window(&self, first: u32, len: u32) -> io::Result<Window<S>> {
        let ptr = map_range(&self.map, first, len, size_of::<S>())?;
        Ok(Window { ptr: ptr as *mut S, first, len })
    }

    /// The whole table, mapped (pages are read in as they are touched).
    fn whole(&self) -> io::Result<Window<S>> {
        self.window(0, self.slots)
    }

    /// The tag words of buckets `first..first + len` (`first` a multiple of
    /// 512: a page).
    fn tags_window(&self, first: u32, len: u32) -> io::Result<Tags> {
        let ptr = map_range(&self.tags, first, len, size_of::<u64>())?;
        Ok(Tags { ptr: ptr as *mut u64, first, len })
    }

    /// All the tag words, one per bucket.
    fn tags(&self) -> io::Result<Tags> {
        self.tags_window(0, self.slots / BUCKET_SLOTS)
    }

    /// Visits every flow in memory order and removes those `remove` picks.
    /// Returns how many flows were seen and how many were removed.
    pub fn remove_where(&self, mut remove: impl FnMut(&Key<S>, &Flow) -> bool) -> io::Result<(usize, usize)> {
        let (mut seen, mut removed) = (0, 0);
        let mut first = 0;
        while first < self.slots {
            let len = WINDOW_SLOTS.min(self.slots - first);
            let buckets = first / BUCKET_SLOTS..(first + len) / BUCKET_SLOTS;
            let tags = self.tags_window(buckets.start, buckets.len() as u32)?;
            if buckets.clone().any(|b| tags.word(b).load(Ordering::Relaxed) != 0) {
                let window = self.window(first, len)?;
                for bucket in buckets {
                    let word = tags.word(bucket).load(Ordering::Acquire);
                    for i in 0..BUCKET_SLOTS {
                        let tag = lane(word, i);
                        if tag == TAG_FREE || tag == TAG_BUSY {
                            continue;
                        }
                        let slot = window.slot(bucket * BUCKET_SLOTS + i);
                        let Some((version, key, flow)) = read(slot) else { continue };
                        seen += 1;
                        if remove(&key, &flow) && free(&tags, bucket, i, tag, slot, version) {
                            removed += 1;
                        }
                    }
                }
            }
            first += len;
        }
        Ok((seen, removed))
    }

    /// The flow of `key`, if the table has it.
    pub fn get(&self, key: &Key<S>) -> io::Result<Option<Flow>> {
        let (window, tags) = (self.whole()?, self.tags()?);
        Ok(self.find(&window, &tags, key).map(|found| found.flow))
    }

    /// Removes the flow of `key`; whether there was one.
    pub fn remove(&self, key: &Key<S>) -> io::Result<bool> {
        let (window, tags) = (self.whole()?, self.tags()?);
        Ok(self
            .find(&window, &tags, key)
            .is_some_and(|f| free(&tags, f.bucket, f.lane, f.tag, window.slot(f.index), f.version)))
    }

    /// Flows in the table.
    pub fn len(&self) -> io::Result<usize> {
        Ok(self.remove_where(|_, _| false)?.0)
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Inserts flows (benchmarks and tests: the datapath creates them), with
    /// the datapath's placement. Returns how many found a free slot.
    pub fn insert_all(&self, flows: impl IntoIterator<Item = (Key<S>, Flow)>) -> io::Result<usize> {
        let (window, tags) = (self.whole()?, self.tags()?);
        let mut placed = 0;
        for (key, flow) in flows {
            placed += self.insert(&window, &tags, &key, &flow) as usize;
        }
        Ok(placed)
    }

    /// The whole table mapped once, for a writer of many flows over time
    /// (flow replication): mapping it costs milliseconds for a big table,
    /// a write through the mapping a fraction of a microsecond.
    pub fn writer(self) -> io::Result<TableWriter<S>> {
        let (window, tags) = (self.whole()?, self.tags()?);
        Ok(TableWriter { table: self, window, tags })
    }

    /// The whole table mapped for reading slots by number (see
    /// [`SlotReader`]).
    pub fn reader(&self) -> io::Result<SlotReader<S>> {
        Ok(SlotReader { window: self.whole()? })
    }

    /// The flows in the two buckets `key` may sit in: the ones a new flow of
    /// `key` would push out (the oldest first) if both buckets were full.
    pub fn neighbours(&self, key: &Key<S>) -> io::Result<Vec<(Key<S>, Flow)>> {
        let window = self.whole()?;
        let buckets = flow_table::buckets(S::hash(key), self.bucket_mask());
        Ok(buckets
            .into_iter()
            .flat_map(|first| first..first + BUCKET_SLOTS)
            .filter_map(|index| read(window.slot(index)).map(|(_, k, flow)| (k, flow)))
            .collect())
    }

    fn find(&self, window: &Window<S>, tags: &Tags, key: &Key<S>) -> Option<Found> {
        let hash = S::hash(key);
        let key_tag = flow_table::key_tag(hash);
        for first in flow_table::buckets(hash, self.bucket_mask()) {
            let bucket = first / BUCKET_SLOTS;
            let word = tags.word(bucket).load(Ordering::Acquire);
            for i in (0..BUCKET_SLOTS).filter(|&i| flow_table::tag_matches(lane(word, i), key_tag)) {
                if let Some((version, k, flow)) = read(window.slot(first + i))
                    && k == *key
                {
                    let tag = lane(word, i);
                    return Some(Found { bucket, lane: i, tag, index: first + i, version, flow });
                }
            }
        }
        None
    }

    /// Writes `flow` where the datapath would: the first free slot of the
    /// bucket [`flow_table::first_bucket`] picks, else over the one idle
    /// longest. Whether
    /// it found a free slot.
    fn insert(&self, window: &Window<S>, tags: &Tags, key: &Key<S>, flow: &Flow) -> bool {
        // IPv4's slot keeps the protocol in the flow's state alone (copies
        // from other nodes are checked as they arrive: `WireFlow::to_flow`).
        debug_assert!(S::same_proto(key, flow), "a flow whose state is not of its key's protocol");
        let hash = S::hash(key);
        if let Some(found) = self.find(window, tags, key) {
            // The tag carries the flow's server hint.
            set_lane(tags.word(found.bucket), found.lane, found.tag, flow_table::tag(hash, flow.server()));
            write(window.slot(found.index), key, flow);
            return true;
        }
        let buckets = flow_table::buckets(hash, self.bucket_mask()).map(|first| first / BUCKET_SLOTS);
        for _ in 0..TRIES {
            let words = buckets.map(|b| tags.word(b).load(Ordering::Acquire));
            let free = words.map(flow_table::free_lanes);
            let b = if flow_table::first_bucket(free[0], free[1]) { 0 } else { 1 };
            let choice = match (0..BUCKET_SLOTS).find(|&i| lane(words[b], i) == TAG_FREE) {
                Some(i) => Some((b, i)),
                None => (0..2)
                    .flat_map(|b| (0..BUCKET_SLOTS).map(move |i| (b, i)))
                    .filter(|&(b, i)| lane(words[b], i) != TAG_BUSY)
                    // Idle longest: the greatest age before the new flow's
                    // time (the first of equals).
                    .min_by_key(|&(b, i)| {
                        read(window.slot(buckets[b] * BUCKET_SLOTS + i))
                            .map(|(_, _, f)| u32::MAX - flow_time::age(flow.last_seen, f.last_seen))
                    }),
            };
            let Some((b, i)) = choice else { return false };
            let claimed = with_lane(words[b], i, flow_table::tag(hash, flow.server()));
            if tags.word(buckets[b]).compare_exchange(words[b], claimed, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                write(window.slot(buckets[b] * BUCKET_SLOTS + i), key, flow);
                return lane(words[b], i) == TAG_FREE;
            }
        }
        false
    }
}

/// A flow table kept mapped (see [`FlowTable::writer`]).
pub struct TableWriter<S: TableSlot = FlowSlot> {
    table: FlowTable<S>,
    window: Window<S>,
    tags: Tags,
}

// SAFETY: the mappings are the process's, valid from any thread until
// dropped.
unsafe impl<S: TableSlot> Send for TableWriter<S> {}
// SAFETY: every write through the mappings is a compare-and-swap of a tag or
// under the slot's sequence lock, as the datapath's on other CPUs are, so
// writers on several threads at once are as safe as several CPUs.
unsafe impl<S: TableSlot> Sync for TableWriter<S> {}

impl<S: TableSlot> TableWriter<S> {
    /// Writes `flow` for `key` where the datapath would (over the key's
    /// flow if the table has one); whether it took a free slot.
    pub fn insert(&self, key: &Key<S>, flow: &Flow) -> bool {
        self.table.insert(&self.window, &self.tags, key, flow)
    }

    /// The flow of `key`, if the table has it.
    pub fn get(&self, key: &Key<S>) -> Option<Flow> {
        self.table.find(&self.window, &self.tags, key).map(|found| found.flow)
    }

    /// Visits every flow (a consistent copy of each), in memory order.
    pub fn for_each(&self, mut visit: impl FnMut(&Key<S>, &Flow)) {
        for bucket in 0..self.table.slots / BUCKET_SLOTS {
            let word = self.tags.word(bucket).load(Ordering::Acquire);
            if word == 0 {
                continue;
            }
            for i in (0..BUCKET_SLOTS).filter(|&i| !matches!(lane(word, i), TAG_FREE | TAG_BUSY)) {
                if let Some((_, key, flow)) = read(self.window.slot(bucket * BUCKET_SLOTS + i)) {
                    visit(&key, &flow);
                }
            }
        }
    }
}

/// A flow table kept mapped to read slots by their number: those the
/// datapath logs for flow replication (`flow_log`).
pub struct SlotReader<S: TableSlot = FlowSlot> {
    window: Window<S>,
}

// SAFETY: the mapping is the process's, valid from any thread until
// dropped; it is only read, under the slots' sequence locks.
unsafe impl<S: TableSlot> Send for SlotReader<S> {}
// SAFETY: as above.
unsafe impl<S: TableSlot> Sync for SlotReader<S> {}

impl<S: TableSlot> SlotReader<S> {
    /// A consistent copy of slot `index`'s key and flow, if it holds a flow
    /// (`None` as well for a number outside the table).
    pub fn at(&self, index: u32) -> Option<(Key<S>, Flow)> {
        if index >= self.window.len {
            return None;
        }
        read(self.window.slot(index)).map(|(_, key, flow)| (key, flow))
    }
}

/// Maps `len` elements of `size` bytes of `map` from element `first`
/// (a page boundary).
pub(crate) fn map_range(map: &MapData, first: u32, len: u32, size: usize) -> io::Result<*mut libc::c_void> {
    // SAFETY: a shared mapping of the map's fd; the kernel checks the range.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len as usize * size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            map.fd().as_fd().as_raw_fd(),
            first as i64 * size as i64,
        )
    };
    if ptr == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("mapping elements {first}..{} of a map: {e}", first + len)));
    }
    Ok(ptr)
}

/// Where a flow was found.
struct Found {
    bucket: u32,
    lane: u32,
    tag: u16,
    index: u32,
    version: u32,
    flow: Flow,
}

/// The mapped tag words of a range of buckets, unmapped when dropped.
struct Tags {
    ptr: *mut u64,
    first: u32,
    len: u32,
}

impl Tags {
    fn word(&self, bucket: u32) -> &AtomicU64 {
        assert!(bucket >= self.first && bucket < self.first + self.len, "bucket {bucket} outside the window");
        // SAFETY: an aligned u64 within the mapping, which lives as long as
        // `self`; every writer changes it atomically.
        unsafe { AtomicU64::from_ptr(self.ptr.add((bucket - self.first) as usize)) }
    }
}

impl Drop for Tags {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `FlowTable::tags`, of this length.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len as usize * size_of::<u64>()) };
    }
}

impl FlowTable<FlowSlot> {
    /// The IPv4 table an agent pinned in `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> io::Result<FlowTable> {
        FlowTable::pinned(pin_dir, map_name::FLOWS, map_name::FLOW_TAGS)
    }
}

impl FlowTable<lb_common::FlowSlot6> {
    /// The IPv6 table an agent pinned in `pin_dir`.
    pub fn from_pins6(pin_dir: &Path) -> io::Result<FlowTable<lb_common::FlowSlot6>> {
        FlowTable::pinned(pin_dir, map_name::FLOWS6, map_name::FLOW_TAGS6)
    }
}

impl<S: TableSlot> FlowTable<S> {
    fn pinned(pin_dir: &Path, flows: &str, tags: &str) -> io::Result<FlowTable<S>> {
        let open = |name: &str| {
            MapData::from_pin(pin_dir.join(name)).map_err(|e| io::Error::other(format!("pinned map {name}: {e}")))
        };
        FlowTable::new(open(flows)?, open(tags)?)
    }
}

/// A mapped range of slots, unmapped when dropped.
struct Window<S> {
    ptr: *mut S,
    first: u32,
    len: u32,
}

impl<S> Window<S> {
    fn slot(&self, index: u32) -> *mut S {
        assert!(index >= self.first && index < self.first + self.len, "slot {index} outside the window");
        // SAFETY: within the mapping, checked above.
        unsafe { self.ptr.add((index - self.first) as usize) }
    }
}

impl<S> Drop for Window<S> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `FlowTable::window`, of this length.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len as usize * size_of::<S>()) };
    }
}

fn version<S: TableSlot>(slot: *mut S) -> &'static AtomicU32 {
    // SAFETY: the version is an aligned u32 in a live mapping.
    unsafe { AtomicU32::from_ptr(S::parts(slot).0) }
}

/// A consistent copy of the slot's flow, if it holds one: (version, key,
/// flow). `None` if free, or if its writer kept it busy.
fn read<S: TableSlot>(slot: *mut S) -> Option<(u32, Key<S>, Flow)> {
    for _ in 0..TRIES {
        let before = version(slot).load(Ordering::Acquire);
        if before & 1 != 0 {
            std::hint::spin_loop();
            continue;
        }
        // SAFETY: within a live mapping; volatile, as the datapath writes it.
        let (key, flow) = unsafe {
            let flow = read_volatile(S::parts(slot).1);
            (S::read_key(slot, &flow), flow)
        };
        fence(Ordering::Acquire);
        if version(slot).load(Ordering::Relaxed) == before {
            return (flow.state != lb_common::flow_state::FREE).then_some((before, key, flow));
        }
    }
    None
}

/// Rewrites a slot its writer owns (through its tag): odd version while
/// writing, then the next even one (wrapping: the datapath draws versions
/// from the whole 32-bit range).
fn write<S: TableSlot>(slot: *mut S, key: &Key<S>, flow: &Flow) {
    let v = version(slot);
    let next = (v.load(Ordering::Relaxed) | 1).wrapping_add(1);
    v.store(1, Ordering::Relaxed);
    fence(Ordering::Release);
    // SAFETY: within a live mapping; the odd version tells readers the slot
    // is being written.
    unsafe {
        S::write_key(slot, key);
        write_volatile(S::parts(slot).1, *flow);
    }
    v.store(next, Ordering::Release);
}

/// Frees the slot `lane` of `bucket`, last seen holding a flow tagged `tag`
/// at `version`: owns it (tag to busy), frees it, then frees its tag. False
/// if it changed hands since (then it holds another flow, which stays).
fn free<S: TableSlot>(tags: &Tags, bucket: u32, lane_index: u32, tag: u16, slot: *mut S, version_seen: u32) -> bool {
    let word = tags.word(bucket);
    if !set_lane(word, lane_index, tag, TAG_BUSY) {
        return false;
    }
    if version(slot).load(Ordering::Acquire) != version_seen {
        // Rewritten for another flow with the same tag meanwhile: not ours.
        set_lane(word, lane_index, TAG_BUSY, tag);
        return false;
    }
    write(slot, &Key::<S>::default(), &Flow::default());
    set_lane(word, lane_index, TAG_BUSY, TAG_FREE);
    true
}

/// Changes one tag of a bucket from `from` to `to`, whatever the others do;
/// false if it is not `from`.
fn set_lane(word: &AtomicU64, lane_index: u32, from: u16, to: u16) -> bool {
    let mut current = word.load(Ordering::Acquire);
    loop {
        if lane(current, lane_index) != from {
            return false;
        }
        match word.compare_exchange(current, with_lane(current, lane_index, to), Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(now) => current = now,
        }
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{FlowKey, FlowSlot, flow_state};

    use super::*;

    /// The datapath draws a new flow's version from its hash and time, so
    /// any even 32-bit value may be in a slot the agent then rewrites: the
    /// next one wraps, and readers see a version that changed.
    #[test]
    fn a_slot_at_the_last_version_is_rewritten_to_another() {
        let mut slot = FlowSlot { version: u32::MAX - 1, ..FlowSlot::default() };
        let flow = Flow { server_id: 3, state: flow_state::TCP_OPEN, ..Flow::default() };
        write(&mut slot as *mut FlowSlot, &FlowKey::default(), &flow);
        assert_eq!((slot.version, slot.flow), (0, flow), "the next even version, wrapped");
        let (version, _, read_back) = read(&mut slot as *mut FlowSlot).expect("a consistent slot");
        assert_eq!((version, read_back), (0, flow));
    }
}
