//! Where the agent reads the new flows the datapath logs for the other
//! balancer nodes (flow replication; layout in `lb_common::flow_sync`).
//! Each CPU writes its own part of a log per family, a ring it alone
//! writes; the agent maps the logs and the CPUs' lines, and polls: a
//! line's count tells how many flows its CPU wrote, and each slot's `seq`
//! which one it holds now. Nothing waits on the agent: a slot not read
//! before its CPU came round again is lost, and counted.

use std::{
    io,
    ptr::read_volatile,
    sync::{
        OnceLock,
        atomic::{Ordering, fence},
    },
};

use aya::maps::MapData;
use bytemuck::Pod;
use lb_common::{
    Flow, FlowKey, FlowKey6,
    flow_sync::{HEAD4, HEAD6, LINE, LOG_SLOTS, LogSlot, ON},
};

use super::flow_table::map_range;

/// The CPUs the logs have room for: every possible CPU.
pub fn cpus() -> u32 {
    static CPUS: OnceLock<u32> = OnceLock::new();
    *CPUS.get_or_init(|| aya::util::nr_cpus().map_or(1, |n| n as u32))
}

/// A map mapped whole into the agent's memory, unmapped when dropped.
struct Mapped<T> {
    ptr: *mut T,
    len: u32,
}

impl<T> Mapped<T> {
    fn new(map: &MapData, len: u32) -> io::Result<Mapped<T>> {
        let ptr = map_range(map, 0, len, size_of::<T>())? as *mut T;
        Ok(Mapped { ptr, len })
    }

    fn at(&self, index: u32) -> *mut T {
        assert!(index < self.len, "element {index} of {}", self.len);
        // SAFETY: within the mapping, checked above.
        unsafe { self.ptr.add(index as usize) }
    }
}

impl<T> Drop for Mapped<T> {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Mapped::new`, of this length.
        unsafe { libc::munmap(self.ptr as *mut libc::c_void, self.len as usize * size_of::<T>()) };
    }
}

/// The new flows read at one poll.
#[derive(Debug, Default)]
pub struct NewFlows {
    pub v4: Vec<(FlowKey, Flow)>,
    pub v6: Vec<(FlowKey6, Flow)>,
    /// Flows overwritten before they were read.
    pub lost: u64,
}

/// The logs and the CPUs' lines, mapped, with what was read of each.
pub struct FlowLog {
    lines: Mapped<[u64; LINE]>,
    log4: Mapped<LogSlot<FlowKey>>,
    log6: Mapped<LogSlot<FlowKey6>>,
    /// By CPU: the flows of each log read (or skipped) so far.
    read: Vec<[u64; 2]>,
}

// SAFETY: the mappings are the process's, valid from any thread until
// dropped; the agent only reads the logs, and writes only the flag.
unsafe impl Send for FlowLog {}
// SAFETY: through a shared reference the mappings are only read (volatile
// reads of what the datapath writes); writes take `&mut self`.
unsafe impl Sync for FlowLog {}

impl FlowLog {
    /// Maps the logs; flows logged before now are not read.
    pub fn open(lines: &MapData, log4: &MapData, log6: &MapData) -> io::Result<FlowLog> {
        let cpus = cpus();
        let mut log = FlowLog {
            lines: Mapped::new(lines, cpus)?,
            log4: Mapped::new(log4, cpus * LOG_SLOTS)?,
            log6: Mapped::new(log6, cpus * LOG_SLOTS)?,
            read: vec![[0; 2]; cpus as usize],
        };
        for cpu in 0..cpus {
            log.read[cpu as usize] = [log.head(cpu, HEAD4), log.head(cpu, HEAD6)];
        }
        Ok(log)
    }

    fn head(&self, cpu: u32, which: usize) -> u64 {
        // SAFETY: an aligned u64 of the CPU's line, in a live mapping;
        // volatile, as the datapath writes it.
        unsafe { read_volatile((self.lines.at(cpu) as *const u64).add(which)) }
    }

    /// Turns sharing on or off on every CPU.
    pub fn share(&mut self, on: bool) {
        for cpu in 0..self.lines.len {
            // SAFETY: as in `head`; the agent is the flag's only writer.
            unsafe { std::ptr::write_volatile((self.lines.at(cpu) as *mut u64).add(ON), u64::from(on)) };
        }
    }

    /// Every flow logged since the last poll.
    pub fn poll(&mut self) -> NewFlows {
        let mut new = NewFlows::default();
        for cpu in 0..self.lines.len {
            let [read4, read6] = self.read[cpu as usize];
            let head4 = self.head(cpu, HEAD4);
            let head6 = self.head(cpu, HEAD6);
            new.lost += read_part(&self.log4, cpu, read4, head4, &mut new.v4);
            new.lost += read_part(&self.log6, cpu, read6, head6, &mut new.v6);
            self.read[cpu as usize] = [head4, head6];
        }
        new
    }
}

/// Reads flows `from..to` of `cpu`'s part of `log` into `into`; returns how
/// many were lost (overwritten before or while read).
fn read_part<K: Pod>(log: &Mapped<LogSlot<K>>, cpu: u32, from: u64, to: u64, into: &mut Vec<(K, Flow)>) -> u64 {
    let mut lost = 0;
    // More than a lap behind (or a count gone back: a new datapath):
    // only the last lap can still be there.
    let from = if to.wrapping_sub(from) > u64::from(LOG_SLOTS) {
        lost += to.saturating_sub(from).saturating_sub(u64::from(LOG_SLOTS));
        to.saturating_sub(u64::from(LOG_SLOTS))
    } else {
        from
    };
    for n in from..to {
        let slot = log.at(cpu * LOG_SLOTS + (n as u32 & (LOG_SLOTS - 1)));
        // SAFETY: a slot in a live mapping; volatile, as the datapath
        // writes it; `seq` read before and after tells a consistent copy.
        let copy = unsafe {
            let before = read_volatile(&raw const (*slot).seq);
            let key = read_volatile(&raw const (*slot).key);
            let flow = read_volatile(&raw const (*slot).flow);
            fence(Ordering::Acquire);
            let after = read_volatile(&raw const (*slot).seq);
            (before == n + 1 && after == n + 1).then_some((key, flow))
        };
        match copy {
            Some(flow) => into.push(flow),
            None => lost += 1,
        }
    }
    lost
}
