//! Where a new flow is handed to the agent for the other balancer nodes
//! (flow replication: `lb-userspace/src/cluster/replicate.rs`), so that
//! any node can continue it when the router sends it elsewhere. Each CPU
//! writes the slot number of each flow it creates into its own part of its
//! family's log (`lb_common::flow_sync`): two stores, no lock, no helper
//! call but the CPU's number; the agent reads the flow from the slot.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::helpers::bpf_get_smp_processor_id;
use lb_common::flow_sync::{LOG_SLOTS, ON};

use crate::{family::Family, maps::FLOW_SYNC};

/// Whether new flows are shared (this node replicates flows).
#[inline(always)]
pub fn on() -> bool {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    FLOW_SYNC.get(cpu).is_some_and(|line| line[ON] != 0)
}

/// Logs `slot`, the table slot a new flow was written to, if sharing is
/// on: the agent reads the flow from it. The agent reads the log every few
/// milliseconds; an entry it had not read yet when its CPU came round again
/// is lost (the agent counts it): the flow itself goes on here.
///
/// Called last on a new flow's path, once its packet is rewritten and sent
/// on. One store more anywhere before that (this count alone, an entry, or
/// a store to any hot line, behind the flag's branch or not, before the
/// slot's claim or after the slot) made a new flow 1.2-1.3x as costly
/// (measured, 2026-12-06; why is not known: these VMs have no PMU); here
/// the log's two stores cost least (`docs/performance.md`, "flow
/// replication's cost").
#[inline(always)]
pub fn share<F: Family>(slot: u32) {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(line) = FLOW_SYNC.get_ptr_mut(cpu) else { return };
    let line = line as *mut u64;
    // SAFETY: `line` is this CPU's element of the map (the verifier checked
    // the index), of `LINE` u64s; `F::LOG_HEAD` and `ON` are below `LINE`.
    // Only this CPU writes its line's count and its part of the log: XDP
    // runs one packet at a time per CPU, to its end. Volatile stores, the
    // entry before the count, are what the agent's reader relies on.
    unsafe {
        if read_volatile(line.add(ON)) == 0 {
            return;
        }
        let head = line.add(F::LOG_HEAD);
        let written = read_volatile(head);
        let index = cpu.wrapping_mul(LOG_SLOTS).wrapping_add(written as u32 & (LOG_SLOTS - 1));
        let Some(entry) = F::new_flows().get_ptr_mut(index) else { return };
        write_volatile(entry, u64::from(slot));
        write_volatile(head, written + 1);
    }
}
