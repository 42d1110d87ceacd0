//! Where servers' flows are purged at once: the agent's side of the
//! `purge_flows` program (`lb-ebpf/src/purge.rs`, layout in
//! `lb_common::purge`). The kernel walks the flow table and frees the
//! flows; the agent marks the servers, runs the program a range at a time,
//! and reads back the flows it freed. One family's table a purge (the
//! request names it; the records are the family's).
//!
//! The agent could free them itself ([`FlowTable::remove_where`]), but it
//! would first have to map the whole table: a fixed cost of about 10 ms for
//! a table sized for two million flows, however few it holds.
//!
//! [`FlowTable::remove_where`]: crate::flow_table::FlowTable::remove_where

use std::{collections::HashSet, io, slice};

use aya::{
    maps::{Array, MapData},
    programs::{TestRun, TestRunOptions, Xdp},
};
use lb_common::{
    flow_table::{self, BUCKET_SLOTS},
    purge,
};

use super::{Datapath, Maps, family::Family, flow_table::map_range};

/// Frees every flow of the servers in `servers` in family `F`'s table,
/// and hands them to `freed` a batch at a time, with the maps (for their
/// return-path entries). Returns how many there were.
pub fn purge_servers<F: Family>(
    dp: &mut Datapath,
    servers: &HashSet<u32>,
    freed: impl FnMut(&Maps, &[F::Purged]) -> io::Result<()>,
) -> io::Result<usize> {
    if servers.is_empty() {
        return Ok(0);
    }
    let (program, maps) = dp.purge_program();
    mark(&mut maps.purge_servers, servers, 1)?;
    let purged = run::<F>(program, maps, servers, freed);
    // Unmarked however the runs ended: the next purge starts from a clean map.
    let unmarked = mark(&mut maps.purge_servers, servers, 0);
    let purged = purged?;
    unmarked.map(|()| purged)
}

/// Runs the program over family `F`'s whole table, a batch of freed flows
/// at a time.
fn run<F: Family>(
    program: &Xdp,
    maps: &mut Maps,
    servers: &HashSet<u32>,
    mut freed: impl FnMut(&Maps, &[F::Purged]) -> io::Result<()>,
) -> io::Result<usize> {
    let records = Records::<F::Purged>::map(F::purged(maps))?;
    let buckets = F::table(maps).slots() / BUCKET_SLOTS;
    let server_hints = servers.iter().fold(0u64, |hints, &id| hints | 1 << flow_table::server_hint(id));
    let mut request =
        purge::Request { next_bucket: 0, end_bucket: buckets, server_hints, family: F::PURGE, ..Default::default() };
    // The smallest frame an XDP test run takes: the program ignores it.
    let frame = [0u8; 64];
    let mut total = 0;
    while request.next_bucket < buckets {
        let failed = |what: &str, e: &dyn std::fmt::Display| io::Error::other(format!("purge run: {what}: {e}"));
        maps.purge_request.set(0, request, 0).map_err(|e| failed("writing the request", &e))?;
        let mut options = TestRunOptions::new();
        options.data_in = Some(&frame);
        program.test_run(options).map_err(|e| failed("running the program", &e))?;
        let answer = maps.purge_request.get(&0, 0).map_err(|e| failed("reading the answer", &e))?;
        if answer.next_bucket <= request.next_bucket || answer.purged > purge::BATCH {
            return Err(io::Error::other(format!(
                "purge run from bucket {} stopped at {} with {} flows",
                request.next_bucket, answer.next_bucket, answer.purged
            )));
        }
        freed(maps, &records.all()[..answer.purged as usize])?;
        total += answer.purged as usize;
        request.next_bucket = answer.next_bucket;
    }
    Ok(total)
}

/// Marks (1) or unmarks (0) the servers for the purge.
fn mark(map: &mut Array<MapData, u8>, servers: &HashSet<u32>, mark: u8) -> io::Result<()> {
    for &id in servers {
        map.set(id, mark, 0).map_err(|e| io::Error::other(format!("marking server {id} for the purge: {e}")))?;
    }
    Ok(())
}

/// The `purged` (or `purged6`) map, mapped read-only for one purge.
struct Records<R> {
    ptr: *const R,
}

impl<R> Records<R> {
    fn map(map: &MapData) -> io::Result<Records<R>> {
        let ptr = map_range(map, 0, purge::BATCH, size_of::<R>())?;
        Ok(Records { ptr: ptr as *const R })
    }

    fn all(&self) -> &[R] {
        // SAFETY: the mapping holds BATCH records; the program wrote the ones
        // read and is done (its run returned).
        unsafe { slice::from_raw_parts(self.ptr, purge::BATCH as usize) }
    }
}

impl<R> Drop for Records<R> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Records::map`, of this length.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, purge::BATCH as usize * size_of::<R>()) };
    }
}
