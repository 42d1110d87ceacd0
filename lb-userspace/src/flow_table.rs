//! The flow table from the agent's side: the datapath's array of slots
//! (layout in `lb_common::flow_table`), mapped into the agent's memory.
//!
//! Walks map one window at a time, in memory order, and read only the
//! buckets marked as holding flows (`flow_marks`): a million flows are read
//! in tens of milliseconds, an empty table in a few, and the agent's resident
//! memory stays at one window whatever the table's size. Slots are read and
//! written under the same sequence lock as in the datapath (see [`FlowSlot`]).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    path::Path,
    ptr::{addr_of, addr_of_mut, read_volatile, write_volatile},
    sync::atomic::{AtomicU64, Ordering, fence},
};

use aya::maps::MapData;
use lb_common::{
    Flow, FlowKey, FlowSlot, flow_state,
    flow_table::{self, BUCKET_SLOTS},
    map_name,
};

/// Slots per mapped window of a walk: 2 MiB.
const WINDOW_SLOTS: u32 = 32 * 1024;

/// Tries to read a slot some other writer holds before giving up on it.
const READ_TRIES: u32 = 64;

pub struct FlowTable {
    map: MapData,
    marks: MapData,
    slots: u32,
}

impl FlowTable {
    /// The table in `map` (an mmap-able array of [`FlowSlot`]s), with its
    /// bucket marks in `marks`.
    pub fn new(map: MapData, marks: MapData) -> io::Result<FlowTable> {
        let info = |m: &MapData| m.info().map_err(|e| io::Error::other(format!("flow table info: {e}")));
        let slots = info(&map)?.max_entries();
        if !slots.is_power_of_two() || slots < flow_table::MIN_SLOTS {
            return Err(io::Error::other(format!("flow table of {slots} slots: not a power of two")));
        }
        let marks_entries = info(&marks)?.max_entries();
        if marks_entries != flow_table::mark_entries(slots) {
            return Err(io::Error::other(format!("{marks_entries} bucket marks for a table of {slots} slots")));
        }
        Ok(FlowTable { map, marks, slots })
    }

    /// The table an agent pinned in `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> io::Result<FlowTable> {
        let open = |name: &str| {
            MapData::from_pin(pin_dir.join(name)).map_err(|e| io::Error::other(format!("pinned map {name}: {e}")))
        };
        FlowTable::new(open(map_name::FLOWS)?, open(map_name::FLOW_MARKS)?)
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

    /// Maps slots `first..first + len` (`first` a multiple of 64: a page).
    fn window(&self, first: u32, len: u32) -> io::Result<Window> {
        let bytes = len as usize * size_of::<FlowSlot>();
        let offset = first as i64 * size_of::<FlowSlot>() as i64;
        // SAFETY: a shared mapping of the map's fd; the kernel checks the range.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.map.fd().as_fd().as_raw_fd(),
                offset,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mapping the flow table: {e}")));
        }
        Ok(Window { ptr: ptr as *mut FlowSlot, first, len })
    }

    /// The whole table, mapped (pages are read in as they are touched).
    fn whole(&self) -> io::Result<Window> {
        self.window(0, self.slots)
    }

    /// The bucket marks, a byte per bucket.
    fn marks(&self) -> io::Result<Marks> {
        let len = (self.slots / BUCKET_SLOTS) as usize;
        // SAFETY: a shared mapping of the marks map's fd, its full size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                self.marks.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("mapping the flow table's bucket marks: {e}")));
        }
        Ok(Marks { ptr: ptr as *mut u8, len })
    }

    /// Visits every flow in memory order and removes those `remove` picks.
    /// Returns how many flows were seen and how many were removed.
    pub fn remove_where(&self, mut remove: impl FnMut(&FlowKey, &Flow) -> bool) -> io::Result<(usize, usize)> {
        let (mut seen, mut removed) = (0, 0);
        let marks = self.marks()?;
        let mut first = 0;
        while first < self.slots {
            let len = WINDOW_SLOTS.min(self.slots - first);
            let buckets = first / BUCKET_SLOTS..(first + len) / BUCKET_SLOTS;
            if buckets.clone().any(|b| marks.get(b)) {
                let window = self.window(first, len)?;
                for bucket in buckets.filter(|&b| marks.get(b)) {
                    // Cleared before the bucket is read: a flow the datapath
                    // writes meanwhile marks it again.
                    marks.set(bucket, false);
                    fence(Ordering::SeqCst);
                    let mut left = false;
                    for index in bucket * BUCKET_SLOTS..(bucket + 1) * BUCKET_SLOTS {
                        let slot = window.slot(index);
                        match read_slot(slot) {
                            Slot::Free => {}
                            Slot::Busy => left = true,
                            Slot::Flow(version, key, flow) => {
                                seen += 1;
                                if remove(&key, &flow) && free(slot, version) {
                                    removed += 1;
                                } else {
                                    left = true;
                                }
                            }
                        }
                    }
                    if left {
                        marks.set(bucket, true);
                    }
                }
            }
            first += len;
        }
        Ok((seen, removed))
    }

    /// The flow of `key`, if the table has it.
    pub fn get(&self, key: &FlowKey) -> io::Result<Option<Flow>> {
        let window = self.whole()?;
        Ok(self.find(&window, key).map(|(_, _, flow)| flow))
    }

    /// Removes the flow of `key`; whether there was one.
    pub fn remove(&self, key: &FlowKey) -> io::Result<bool> {
        let window = self.whole()?;
        Ok(self.find(&window, key).is_some_and(|(slot, version, _)| free(slot, version)))
    }

    /// Flows in the table.
    pub fn len(&self) -> io::Result<usize> {
        Ok(self.remove_where(|_, _| false)?.0)
    }

    pub fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Inserts flows (benchmarks and tests: the datapath creates them), with
    /// the datapath's placement. Returns how many found a slot without
    /// pushing another flow out.
    pub fn insert_all(&self, flows: impl IntoIterator<Item = (FlowKey, Flow)>) -> io::Result<usize> {
        let window = self.whole()?;
        let marks = self.marks()?;
        let mut placed = 0;
        for (key, flow) in flows {
            placed += self.insert(&window, &marks, &key, &flow) as usize;
        }
        Ok(placed)
    }

    /// The flows in the two buckets `key` may sit in: the ones a new flow of
    /// `key` would push out (the oldest first) if both buckets were full.
    pub fn neighbours(&self, key: &FlowKey) -> io::Result<Vec<(FlowKey, Flow)>> {
        let window = self.whole()?;
        let buckets = flow_table::buckets(flow_table::hash(key), self.bucket_mask());
        Ok(buckets
            .into_iter()
            .flat_map(|first| first..first + BUCKET_SLOTS)
            .filter_map(|index| read(window.slot(index)).map(|(_, k, flow)| (k, flow)))
            .collect())
    }

    fn find(&self, window: &Window, key: &FlowKey) -> Option<(*mut FlowSlot, u64, Flow)> {
        for first in flow_table::buckets(flow_table::hash(key), self.bucket_mask()) {
            for index in first..first + BUCKET_SLOTS {
                let slot = window.slot(index);
                if let Some((version, k, flow)) = read(slot)
                    && k == *key
                {
                    return Some((slot, version, flow));
                }
            }
        }
        None
    }

    /// Writes `flow` where the datapath would: the first free slot of the
    /// bucket with more free slots, else over the one idle longest. Whether
    /// it found a free slot.
    fn insert(&self, window: &Window, marks: &Marks, key: &FlowKey, flow: &Flow) -> bool {
        if let Some((slot, version, _)) = self.find(window, key) {
            return write(slot, version, key, flow);
        }
        let mut free: [Vec<(*mut FlowSlot, u64, u32)>; 2] = [Vec::new(), Vec::new()];
        let mut oldest: Option<(*mut FlowSlot, u64, u64, u32)> = None;
        let buckets = flow_table::buckets(flow_table::hash(key), self.bucket_mask());
        for (b, first) in buckets.into_iter().enumerate() {
            for index in first..first + BUCKET_SLOTS {
                let slot = window.slot(index);
                let Some((version, _, old)) = read_any(slot) else { continue };
                if old.state == flow_state::FREE {
                    free[b].push((slot, version, first / BUCKET_SLOTS));
                } else if oldest.is_none_or(|(_, _, seen, _)| old.last_seen_ns < seen) {
                    oldest = Some((slot, version, old.last_seen_ns, first / BUCKET_SLOTS));
                }
            }
        }
        let bucket = if free[1].len() > free[0].len() { &free[1] } else { &free[0] };
        let (slot, version, bucket, was_free) = match (bucket.first(), oldest) {
            (Some(&(slot, version, bucket)), _) => (slot, version, bucket, true),
            (None, Some((slot, version, _, bucket))) => (slot, version, bucket, false),
            (None, None) => return false,
        };
        let written = write(slot, version, key, flow);
        marks.set(bucket, true);
        written && was_free
    }
}

/// The mapped bucket marks, unmapped when dropped.
struct Marks {
    ptr: *mut u8,
    len: usize,
}

impl Marks {
    fn get(&self, bucket: u32) -> bool {
        assert!((bucket as usize) < self.len);
        // SAFETY: within the mapping; the datapath writes it concurrently.
        unsafe { read_volatile(self.ptr.add(bucket as usize)) != 0 }
    }

    fn set(&self, bucket: u32, marked: bool) {
        assert!((bucket as usize) < self.len);
        // SAFETY: as in `get`.
        unsafe { write_volatile(self.ptr.add(bucket as usize), marked as u8) }
    }
}

impl Drop for Marks {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `FlowTable::marks`, of this length.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len) };
    }
}

/// A mapped range of slots, unmapped when dropped.
struct Window {
    ptr: *mut FlowSlot,
    first: u32,
    len: u32,
}

impl Window {
    fn slot(&self, index: u32) -> *mut FlowSlot {
        assert!(index >= self.first && index < self.first + self.len, "slot {index} outside the window");
        // SAFETY: within the mapping, checked above.
        unsafe { self.ptr.add((index - self.first) as usize) }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `FlowTable::window`, of this length.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len as usize * size_of::<FlowSlot>()) };
    }
}

fn version(slot: *mut FlowSlot) -> &'static AtomicU64 {
    // SAFETY: the version is an aligned u64 in a live mapping, and every
    // writer (agent or datapath) changes it atomically.
    unsafe { AtomicU64::from_ptr(addr_of_mut!((*slot).version)) }
}

/// A consistent copy of a slot, free or not: (version, key, flow). `None`
/// if writers kept it busy.
fn read_any(slot: *mut FlowSlot) -> Option<(u64, FlowKey, Flow)> {
    for _ in 0..READ_TRIES {
        let before = version(slot).load(Ordering::Acquire);
        if before & 1 != 0 {
            std::hint::spin_loop();
            continue;
        }
        // SAFETY: within a live mapping; volatile, as the datapath writes it.
        let (key, flow) = unsafe { (read_volatile(addr_of!((*slot).key)), read_volatile(addr_of!((*slot).flow))) };
        fence(Ordering::Acquire);
        if version(slot).load(Ordering::Relaxed) == before {
            return Some((before, key, flow));
        }
    }
    None
}

enum Slot {
    Free,
    /// Other writers kept it busy while we tried to read it.
    Busy,
    Flow(u64, FlowKey, Flow),
}

fn read_slot(slot: *mut FlowSlot) -> Slot {
    match read_any(slot) {
        None => Slot::Busy,
        Some((_, _, flow)) if flow.state == flow_state::FREE => Slot::Free,
        Some((version, key, flow)) => Slot::Flow(version, key, flow),
    }
}

/// The slot's flow, if it holds one: (version, key, flow).
fn read(slot: *mut FlowSlot) -> Option<(u64, FlowKey, Flow)> {
    match read_slot(slot) {
        Slot::Flow(version, key, flow) => Some((version, key, flow)),
        _ => None,
    }
}

/// Rewrites a slot last seen at `version`; false if it changed since.
fn write(slot: *mut FlowSlot, version_seen: u64, key: &FlowKey, flow: &Flow) -> bool {
    let v = version(slot);
    if v.compare_exchange(version_seen, version_seen + 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return false;
    }
    // SAFETY: the odd version makes this the slot's only writer.
    unsafe {
        write_volatile(addr_of_mut!((*slot).key), *key);
        write_volatile(addr_of_mut!((*slot).flow), *flow);
    }
    v.store(version_seen + 2, Ordering::Release);
    true
}

/// Frees a slot last seen at `version`; false if it changed since (then it
/// holds another flow, which stays).
fn free(slot: *mut FlowSlot, version_seen: u64) -> bool {
    write(slot, version_seen, &FlowKey::default(), &Flow::default())
}
