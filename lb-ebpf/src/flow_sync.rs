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

/// Logs `slot`, the table slot a new flow was just written to, if sharing
/// is on. Called once the slot is written: the agent reads the flow from
/// it. The agent reads the log every few milliseconds; an entry it had not
/// read yet when its CPU came round again is lost (the agent counts it):
/// the flow itself goes on here.
///
/// No branch on the flag: the entry is written either way, and the count
/// moves by the flag (0 or 1), so with sharing off the same entry is
/// written over each time. A store behind a branch on the flag, after the
/// slot's stores, made a new flow 1.2-1.3x as costly as with sharing off
/// (measured; why is not known: these VMs have no PMU); both stores
/// without the branch cost a new flow 0.95-1.05x, on or off.
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
        let on = u64::from(read_volatile(line.add(ON)) != 0);
        let head = line.add(F::LOG_HEAD);
        let written = read_volatile(head);
        let index = cpu.wrapping_mul(LOG_SLOTS).wrapping_add(written as u32 & (LOG_SLOTS - 1));
        let Some(entry) = F::new_flows().get_ptr_mut(index) else { return };
        write_volatile(entry, u64::from(slot));
        write_volatile(head, written + on);
    }
}
