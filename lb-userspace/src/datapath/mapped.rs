//! Writing runs of a BPF array's elements through a mapping of the array
//! (`BPF_F_MMAPABLE`): the Maglev rows and the traffic filter. The kernel's
//! batch update copies one element at a time (a Maglev row, 65,537 of them,
//! took 16-35 ms on these hosts, and held every change that long); mapped,
//! a row is one pass over memory. Only the elements that change are
//! written: the CPUs reading them keep the lines that stay. Each element is
//! one aligned store, so the datapath reads the old value or the new one,
//! never a torn one, as with the batch update.

use std::{
    io,
    sync::atomic::{AtomicU8, AtomicU32, Ordering, fence},
};

use aya::maps::MapData;

use super::flow_table::map_range;

/// An array element as the kernel lays it out: its value, rounded up to 8
/// bytes (`round_up(value_size, 8)` in `kernel/bpf/arraymap.c`).
#[repr(C, align(8))]
struct Element<A>(A);

/// The atomics an element's value is written through.
pub trait Value: Copy + PartialEq {
    type Atomic;
    fn load(atomic: &Self::Atomic) -> Self;
    fn store(atomic: &Self::Atomic, value: Self);
}

impl Value for u32 {
    type Atomic = AtomicU32;
    fn load(atomic: &AtomicU32) -> u32 {
        atomic.load(Ordering::Relaxed)
    }
    fn store(atomic: &AtomicU32, value: u32) {
        atomic.store(value, Ordering::Relaxed)
    }
}

impl Value for u8 {
    type Atomic = AtomicU8;
    fn load(atomic: &AtomicU8) -> u8 {
        atomic.load(Ordering::Relaxed)
    }
    fn store(atomic: &AtomicU8, value: u8) {
        atomic.store(value, Ordering::Relaxed)
    }
}

/// Writes `values` into `map` (an array of `V`, mmapable) from element
/// `first`, those that differ, then a fence: what the caller writes next
/// (a server's state, a service's entry) is not seen before them.
pub fn write<V: Value>(map: &MapData, first: u32, values: &[V]) -> io::Result<()> {
    let size = size_of::<Element<V::Atomic>>();
    let page_elements = (4096 / size) as u32;
    let start = first / page_elements * page_elements;
    let len = first + values.len() as u32 - start;
    let mapped = map_range(map, start, len, size)?;
    // SAFETY: the mapping holds `len` elements from element `start`, so
    // those written (`first - start` on) are inside it, each laid out as
    // `Element`; the datapath reads them concurrently, hence atomics.
    let elements = unsafe {
        std::slice::from_raw_parts(mapped.cast::<Element<V::Atomic>>().add((first - start) as usize), values.len())
    };
    for (element, &value) in elements.iter().zip(values) {
        if V::load(&element.0) != value {
            V::store(&element.0, value);
        }
    }
    fence(Ordering::SeqCst);
    // SAFETY: the mapping made above, of this length; nothing refers to it now.
    unsafe { libc::munmap(mapped, len as usize * size) };
    Ok(())
}
