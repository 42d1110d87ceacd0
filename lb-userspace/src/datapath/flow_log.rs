//! Where the agent reads the new flows the datapath logs for the other
//! balancer nodes (flow replication; layout in `lb_common::flow_sync`).
//! Each CPU writes the table slot of each flow it creates into its own part
//! of a log per family, a ring it alone writes; the agent maps the logs,
//! the CPUs' lines and the flow tables, and polls: a line's count tells how
//! many flows its CPU logged, the log which slots they went to, and each
//! slot the flow as it is now (read under its sequence lock). Nothing waits
//! on the agent: an entry not read before its CPU came round again is
//! lost, and counted.

use std::{
    io,
    ptr::read_volatile,
    sync::{
        OnceLock,
        atomic::{Ordering, fence},
    },
};

use aya::maps::MapData;
use lb_common::{
    Flow, FlowKey, FlowKey6, FlowSlot, FlowSlot6, TableSlot, flow_seen,
    flow_sync::{HEAD4, HEAD6, LINE, LOG_SLOTS, LogEntry, ON},
};

use super::flow_table::{FlowTable, SlotReader, map_range};

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

/// Turns sharing on or off on every CPU: its flag in the CPUs' lines
/// (`lines`, the `flow_sync` map), mapped for this alone (a [`FlowLog`]
/// maps the flow tables as well).
pub fn share(lines: &MapData, on: bool) -> io::Result<()> {
    let lines: Mapped<[u64; LINE]> = Mapped::new(lines, cpus())?;
    for cpu in 0..lines.len {
        // SAFETY: an aligned u64 of the CPU's line, in a live mapping; the
        // agent is the flag's only writer.
        unsafe { std::ptr::write_volatile((lines.at(cpu) as *mut u64).add(ON), u64::from(on)) };
    }
    Ok(())
}

/// The new flows read at one poll.
#[derive(Debug, Default)]
pub struct NewFlows {
    pub v4: Vec<(FlowKey, Flow)>,
    pub v6: Vec<(FlowKey6, Flow)>,
    /// Log entries overwritten before they were read.
    pub lost: u64,
}

/// The logs, the CPUs' lines and the flow tables, mapped, with what was
/// read of each log.
pub struct FlowLog {
    lines: Mapped<[u64; LINE]>,
    log4: Mapped<LogEntry>,
    log6: Mapped<LogEntry>,
    table4: SlotReader<FlowSlot>,
    table6: SlotReader<FlowSlot6>,
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
    /// Maps the logs and the tables their entries name; flows logged
    /// before now are not read.
    pub fn open(
        lines: &MapData,
        (log4, table4): (&MapData, &FlowTable<FlowSlot>),
        (log6, table6): (&MapData, &FlowTable<FlowSlot6>),
    ) -> io::Result<FlowLog> {
        let cpus = cpus();
        let mut log = FlowLog {
            lines: Mapped::new(lines, cpus)?,
            log4: Mapped::new(log4, cpus * LOG_SLOTS)?,
            log6: Mapped::new(log6, cpus * LOG_SLOTS)?,
            table4: table4.reader()?,
            table6: table6.reader()?,
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

    /// Every flow logged since the last poll.
    pub fn poll(&mut self) -> NewFlows {
        let mut new = NewFlows::default();
        for cpu in 0..self.lines.len {
            let [read4, read6] = self.read[cpu as usize];
            let head4 = self.head(cpu, HEAD4);
            let head6 = self.head(cpu, HEAD6);
            let entry = |log: &Mapped<LogEntry>, n: u64| {
                // SAFETY: an aligned u64 in a live mapping; volatile, as the
                // datapath writes it. A slot number: below 2^32.
                unsafe { read_volatile(log.at(cpu * LOG_SLOTS + (n as u32 & (LOG_SLOTS - 1)))) as u32 }
            };
            let (slots4, lost4) = read_part(|n| entry(&self.log4, n), read4, head4, || self.head(cpu, HEAD4));
            let (slots6, lost6) = read_part(|n| entry(&self.log6, n), read6, head6, || self.head(cpu, HEAD6));
            new.lost += lost4 + lost6;
            new.v4.extend(slots4.into_iter().filter_map(|slot| own_flow(&self.table4, slot)));
            new.v6.extend(slots6.into_iter().filter_map(|slot| own_flow(&self.table6, slot)));
            self.read[cpu as usize] = [head4, head6];
        }
        new
    }
}

/// The slot numbers of entries `from..to` of a CPU's log (`entry` reads
/// one, by its number), and how many entries were lost: more than a lap
/// behind, or written over by the CPU while they were read (its count,
/// `head`, read again after them).
fn read_part(entry: impl Fn(u64) -> u32, from: u64, to: u64, head: impl Fn() -> u64) -> (Vec<u32>, u64) {
    // The entry a whole lap back is the one the CPU's next flow writes
    // over, before it counts it: a lap less one is sure.
    let lap = u64::from(LOG_SLOTS) - 1;
    let mut lost = 0;
    // Further behind (or a count gone back: a new datapath): only the last
    // lap can still be there.
    let from = if to.wrapping_sub(from) > lap {
        lost += to.saturating_sub(from).saturating_sub(lap);
        to.saturating_sub(lap)
    } else {
        from
    };
    let slots: Vec<u32> = (from..to).map(entry).collect();
    fence(Ordering::Acquire);
    let written_over = head().saturating_sub(lap).saturating_sub(from).min(slots.len() as u64);
    lost += written_over;
    (slots[written_over as usize..].to_vec(), lost)
}

/// The flow in `slot`, if it is one this node created: the slot may have
/// been freed since, or rewritten for another flow, or for a copy of
/// another node's flow (those are that node's to share).
fn own_flow<S: TableSlot>(table: &SlotReader<S>, slot: u32) -> Option<(S::Key, Flow)> {
    table.at(slot).filter(|(_, flow)| flow.seen & flow_seen::COPY == 0)
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    const LAP: u64 = LOG_SLOTS as u64;

    /// Entry `n` holds slot `n` (as a u32).
    fn entry(n: u64) -> u32 {
        n as u32
    }

    #[test]
    fn the_entries_since_the_last_read_are_read_once() {
        assert_eq!(read_part(entry, 10, 13, || 13), (vec![10, 11, 12], 0));
        assert_eq!(read_part(entry, 13, 13, || 13), (vec![], 0));
    }

    #[test]
    fn a_reader_more_than_a_lap_behind_reads_the_last_lap_less_one() {
        // The entry a lap back is the next one the CPU writes over.
        let (slots, lost) = read_part(entry, 0, LAP + 5, || LAP + 5);
        assert_eq!((slots.len() as u64, lost), (LAP - 1, 6));
        assert_eq!(slots.first(), Some(&6));
        assert_eq!(slots.last(), Some(&(LAP as u32 + 4)));
    }

    #[test]
    fn entries_written_over_while_they_were_read_are_lost() {
        // The CPU logged 3 more flows while the reader, a lap less one
        // behind, read: the 3 oldest entries may hold the new ones.
        let (slots, lost) = read_part(entry, 100, 100 + LAP - 1, || 100 + LAP - 1 + 3);
        assert_eq!((slots.len() as u64, lost), (LAP - 4, 3));
        assert_eq!(slots.first(), Some(&103));
        // Fewer read, far from a lap: nothing is written over.
        let calls = Cell::new(0);
        let head = || {
            calls.set(calls.get() + 1);
            200
        };
        assert_eq!(read_part(entry, 100, 110, head), ((100..110).collect(), 0));
        assert_eq!(calls.get(), 1, "the count is read again once, after the entries");
    }
}
