//! The flow table from the agent's side: the datapath's array of slots
//! (layout in `lb_common::flow_table`), mapped into the agent's memory.
//!
//! Walks map one window at a time, in memory order: a million flows are read
//! in tens of milliseconds, and the agent's resident memory stays at one
//! window whatever the table's size. Slots are read and written under the
//! same sequence lock as in the datapath (see [`FlowSlot`]).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
    ptr::{addr_of, addr_of_mut},
    sync::atomic::{AtomicU64, Ordering, fence},
};

use aya::maps::MapData;
use lb_common::{
    Flow, FlowKey, FlowSlot, flow_state,
    flow_table::{self, BUCKET_SLOTS},
};

/// Slots per mapped window of a walk: 2 MiB.
const WINDOW_SLOTS: u32 = 32 * 1024;

/// Tries to read a slot some other writer holds before giving up on it.
const READ_TRIES: u32 = 64;

pub struct FlowTable {
    map: MapData,
    slots: u32,
}

impl FlowTable {
    /// The table in `map` (an mmap-able array of [`FlowSlot`]s).
    pub fn new(map: MapData) -> io::Result<FlowTable> {
        let info = map.info().map_err(|e| io::Error::other(format!("flow table info: {e}")))?;
        let slots = info.max_entries();
        if !slots.is_power_of_two() || slots < flow_table::MIN_SLOTS {
            return Err(io::Error::other(format!("flow table of {slots} slots: not a power of two")));
        }
        Ok(FlowTable { map, slots })
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
                // Page tables filled in one go: cheaper than a fault per page.
                libc::MAP_SHARED | libc::MAP_POPULATE,
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

    /// Visits every flow in memory order and removes those `remove` picks.
    /// Returns how many flows were seen and how many were removed.
    pub fn remove_where(&self, mut remove: impl FnMut(&FlowKey, &Flow) -> bool) -> io::Result<(usize, usize)> {
        let (mut seen, mut removed) = (0, 0);
        let mut first = 0;
        while first < self.slots {
            let window = self.window(first, WINDOW_SLOTS.min(self.slots - first))?;
            for index in window.first..window.first + window.len {
                let slot = window.slot(index);
                let Some((version, key, flow)) = read(slot) else { continue };
                seen += 1;
                if remove(&key, &flow) && free(slot, version) {
                    removed += 1;
                }
            }
            first += window.len;
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
        let mut placed = 0;
        for (key, flow) in flows {
            placed += self.insert(&window, &key, &flow) as usize;
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
    fn insert(&self, window: &Window, key: &FlowKey, flow: &Flow) -> bool {
        if let Some((slot, version, _)) = self.find(window, key) {
            return write(slot, version, key, flow);
        }
        let mut free: [Vec<(*mut FlowSlot, u64)>; 2] = [Vec::new(), Vec::new()];
        let mut oldest: Option<(*mut FlowSlot, u64, u64)> = None;
        let buckets = flow_table::buckets(flow_table::hash(key), self.bucket_mask());
        for (b, first) in buckets.into_iter().enumerate() {
            for index in first..first + BUCKET_SLOTS {
                let slot = window.slot(index);
                let Some((version, _, old)) = read_any(slot) else { continue };
                if old.state == flow_state::FREE {
                    free[b].push((slot, version));
                } else if oldest.is_none_or(|(_, _, seen)| old.last_seen_ns < seen) {
                    oldest = Some((slot, version, old.last_seen_ns));
                }
            }
        }
        let bucket = if free[1].len() > free[0].len() { &free[1] } else { &free[0] };
        match (bucket.first(), oldest) {
            (Some(&(slot, version)), _) => write(slot, version, key, flow),
            (None, Some((slot, version, _))) => {
                write(slot, version, key, flow);
                false
            }
            (None, None) => false,
        }
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
        let (key, flow) = unsafe {
            (std::ptr::read_volatile(addr_of!((*slot).key)), std::ptr::read_volatile(addr_of!((*slot).flow)))
        };
        fence(Ordering::Acquire);
        if version(slot).load(Ordering::Relaxed) == before {
            return Some((before, key, flow));
        }
    }
    None
}

/// The slot's flow, if it holds one: (version, key, flow).
fn read(slot: *mut FlowSlot) -> Option<(u64, FlowKey, Flow)> {
    // Most slots are free: one byte tells (a flow written this instant is
    // new, and seen by the next walk).
    // SAFETY: within a live mapping.
    if unsafe { std::ptr::read_volatile(addr_of!((*slot).flow.state)) } == flow_state::FREE {
        return None;
    }
    read_any(slot).filter(|(_, _, flow)| flow.state != flow_state::FREE)
}

/// Rewrites a slot last seen at `version`; false if it changed since.
fn write(slot: *mut FlowSlot, version_seen: u64, key: &FlowKey, flow: &Flow) -> bool {
    let v = version(slot);
    if v.compare_exchange(version_seen, version_seen + 1, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return false;
    }
    // SAFETY: the odd version makes this the slot's only writer.
    unsafe {
        std::ptr::write_volatile(addr_of_mut!((*slot).key), *key);
        std::ptr::write_volatile(addr_of_mut!((*slot).flow), *flow);
    }
    v.store(version_seen + 2, Ordering::Release);
    true
}

/// Frees a slot last seen at `version`; false if it changed since (then it
/// holds another flow, which stays).
fn free(slot: *mut FlowSlot, version_seen: u64) -> bool {
    write(slot, version_seen, &FlowKey::default(), &Flow::default())
}
