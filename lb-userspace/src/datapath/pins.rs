//! Checks on an instance's pins before they are reused, and the BPF
//! filesystem they live on.

use std::{io, path::Path};

use aya::maps::{Array, MapData, MapInfo};
use lb_common::map_name;

use super::{BPFFS, DatapathError, MapSizes};

/// Maps that hold nothing a restart must keep: flow replication's logs
/// (the agent reads only what is logged after its start), the Maglev rows
/// and the filter (the agent writes them whole before it attaches). Pinned
/// ones of another shape, left by another version, are made afresh instead
/// of refused: an upgrade that changes them keeps every flow.
const REMADE: [&str; 4] = [map_name::NEW_FLOWS, map_name::NEW_FLOWS6, map_name::MAGLEV, map_name::FILTER];

/// The maps created `BPF_F_MMAPABLE` (`lb-ebpf/src/maps.rs`), which the
/// agent reads or writes through mmap (the Maglev rows and the filter were
/// not, before 2026-12-08). A map missing here would have the agent refuse
/// its own pins at a restart, as the restart tests would show.
const MAPPED: [&str; 11] = [
    map_name::MAGLEV,
    map_name::FILTER,
    map_name::FLOWS,
    map_name::FLOW_TAGS,
    map_name::FLOWS6,
    map_name::FLOW_TAGS6,
    map_name::PURGED,
    map_name::PURGED6,
    map_name::NEW_FLOWS,
    map_name::NEW_FLOWS6,
    map_name::FLOW_SYNC,
];

/// `BPF_F_MMAPABLE`, as a map's flags say it.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Refuses pinned maps whose shape differs from what this agent would create:
/// aya would silently reuse them, and the datapath would misread them. Those
/// of [`REMADE`] are unpinned instead (the program still attached keeps its
/// own until it is replaced), once every other map is found to fit.
pub(super) fn check_pinned_maps(pin_dir: &Path, sizes: &MapSizes) -> Result<(), DatapathError> {
    check_pinned_format(pin_dir, sizes)?;
    let mut stale = Vec::new();
    for (name, key_size, value_size, max_entries) in sizes.layout() {
        let path = pin_dir.join(name);
        if !path.exists() {
            continue;
        }
        let info =
            MapInfo::from_pin(&path).map_err(|source| DatapathError::PinnedMapInfo { path: path.clone(), source })?;
        let mapped = u32::from(MAPPED.contains(&name));
        for (what, found, expected) in [
            ("key size", info.key_size(), key_size),
            ("value size", info.value_size(), value_size),
            ("max entries", info.max_entries(), max_entries),
            ("mmapable", u32::from(info.map_flags() & BPF_F_MMAPABLE != 0), mapped),
        ] {
            if found == expected {
                continue;
            }
            if !REMADE.contains(&name) {
                return Err(DatapathError::PinnedMapMismatch { path, dir: pin_dir.to_owned(), what, found, expected });
            }
            stale.push((path, what, found, expected));
            break;
        }
    }
    for (path, what, found, expected) in stale {
        log::warn!("pinned map {} ({what} {found}, now {expected}) holds no flow: made afresh", path.display());
        std::fs::remove_file(&path).map_err(|source| DatapathError::PinDir { path, source })?;
    }
    Ok(())
}

/// Refuses pinned maps whose contents are of another format
/// ([`lb_common::MAPS_FORMAT`]): same shapes, read differently.
pub(super) fn check_pinned_format(pin_dir: &Path, sizes: &MapSizes) -> Result<(), DatapathError> {
    if !sizes.layout().iter().any(|(name, ..)| pin_dir.join(name).exists()) {
        return Ok(());
    }
    let path = pin_dir.join(map_name::MAPS_FORMAT);
    // Maps pinned before the format was recorded are format 1.
    let found = if path.exists() {
        let info = |source| DatapathError::PinnedMapInfo { path: path.clone(), source };
        let map = MapData::from_pin(&path).map_err(info)?;
        let format: Array<_, u32> = Array::try_from(aya::maps::Map::Array(map)).map_err(info)?;
        format.get(&0, 0).map_err(info)?
    } else {
        1
    };
    if found != lb_common::MAPS_FORMAT {
        return Err(DatapathError::PinnedFormatMismatch {
            dir: pin_dir.to_owned(),
            found,
            expected: lb_common::MAPS_FORMAT,
        });
    }
    Ok(())
}

/// Mounts the BPF filesystem if it is not (a fresh machine may lack it).
pub(super) fn ensure_bpffs() -> Result<(), DatapathError> {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: statfs is plain data: all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    // Not mounted here. In a mount namespace made for this process alone (as
    // `ip netns exec` makes, with its own /sys), a BPF filesystem mounted now
    // would be private to it: the pins, and with them the flows and the
    // forwarding, would not outlive the agent.
    if in_own_mount_namespace() {
        return Err(DatapathError::PrivateBpffs);
    }
    std::fs::create_dir_all(BPFFS).map_err(DatapathError::MountBpffs)?;
    let fstype = std::ffi::CString::new("bpf").expect("no NUL");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), path.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(DatapathError::MountBpffs(io::Error::last_os_error()));
    }
    Ok(())
}

/// Whether this process's mount namespace differs from its parent's.
fn in_own_mount_namespace() -> bool {
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    let ours = std::fs::read_link("/proc/self/ns/mnt");
    let theirs = std::fs::read_link(format!("/proc/{parent}/ns/mnt"));
    matches!((ours, theirs), (Ok(a), Ok(b)) if a != b)
}
