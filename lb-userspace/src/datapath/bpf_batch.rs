//! Batched map operations (BPF_MAP_*_BATCH), which aya 0.14 does not wrap:
//! writing or cleaning return-path entries one syscall per entry would
//! take far longer. (The kernel still copies a batch's elements one at a
//! time: the Maglev rows and the filter, arrays of 65,537 and 65,536, are
//! written through a mapping instead, `mapped.rs`.)
//!
//! The kernel reads `count` keys (and values) of the map's own sizes from
//! the buffers given, so the sizes of `K` and `V` are checked against the
//! map's before each call, as aya's typed maps do (`check_kv_size`), and
//! both must be plain data (`aya::Pod`).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd},
};

use aya::{Pod, maps::MapData};

const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Runs a batch command; returns the kernel's count and the error, if any
/// (the count is meaningful in both cases).
fn batch(cmd: libc::c_long, attr: &mut BatchAttr) -> (u32, Option<io::Error>) {
    // SAFETY: attr is a valid bpf_attr prefix of the given size; the pointers
    // in it reference buffers the callers keep alive for the call.
    let rc =
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BatchAttr, std::mem::size_of::<BatchAttr>() as u32) };
    if rc < 0 { (attr.count, Some(io::Error::last_os_error())) } else { (attr.count, None) }
}

/// Deletes `keys`; keys already gone (evicted by the LRU, or removed by the
/// datapath) are skipped. Returns how many were deleted.
pub fn delete_batch<K: Pod>(map: &MapData, keys: &[K]) -> io::Result<usize> {
    check_sizes::<K>(map, None)?;
    let fd = map.fd().as_fd();
    let mut deleted = 0;
    let mut rest = keys;
    while !rest.is_empty() {
        let mut attr = BatchAttr {
            keys: rest.as_ptr() as u64,
            count: rest.len() as u32,
            map_fd: fd.as_raw_fd() as u32,
            ..Default::default()
        };
        let (count, err) = batch(BPF_MAP_DELETE_BATCH, &mut attr);
        let count = count as usize;
        deleted += count;
        match err {
            None => break,
            // The kernel stops at the first missing key: step over it and go on.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => rest = &rest[(count + 1).min(rest.len())..],
            Some(e) => return Err(e),
        }
    }
    Ok(deleted)
}

/// Writes `keys[i] = values[i]` for all i, in one call per batch.
pub fn update_batch<K: Pod, V: Pod>(map: &MapData, keys: &[K], values: &[V]) -> io::Result<()> {
    check_sizes::<K>(map, Some(size_of::<V>()))?;
    if keys.len() != values.len() {
        return Err(io::Error::other(format!("{} keys for {} values", keys.len(), values.len())));
    }
    let fd = map.fd().as_fd();
    let mut attr = BatchAttr {
        keys: keys.as_ptr() as u64,
        values: values.as_ptr() as u64,
        count: keys.len() as u32,
        map_fd: fd.as_raw_fd() as u32,
        ..Default::default()
    };
    match batch(BPF_MAP_UPDATE_BATCH, &mut attr) {
        (_, None) => Ok(()),
        (_, Some(e)) => Err(e),
    }
}

/// Refuses a `K` (and a value size) that is not the map's.
fn check_sizes<K>(map: &MapData, value_size: Option<usize>) -> io::Result<()> {
    let info = map.info().map_err(|e| io::Error::other(format!("cannot read the map's sizes: {e}")))?;
    let (key, value) = (info.key_size() as usize, info.value_size() as usize);
    if size_of::<K>() != key || value_size.is_some_and(|v| v != value) {
        return Err(io::Error::other(format!(
            "batch of {} byte keys and {value_size:?} byte values for a map of {key} byte keys and {value} byte values",
            size_of::<K>()
        )));
    }
    Ok(())
}
