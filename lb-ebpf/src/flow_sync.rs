//! Where a new flow is handed to the agent for the other balancer nodes
//! (flow replication: `lb-userspace/src/cluster/replicate.rs`), so that
//! any node can continue it when the router sends it elsewhere. Each CPU
//! writes its own part of its family's log (`lb_common::flow_sync`): a
//! few stores, no lock, no helper call but the CPU's number. Off on a node
//! of its own: one array read per new flow, nothing else.

use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::helpers::bpf_get_smp_processor_id;
use lb_common::{
    Flow,
    flow_sync::{LOG_SLOTS, LogSlot, ON},
};

use crate::{family::Family, maps::FLOW_SYNC};

/// Whether new flows are shared (this node replicates flows).
#[inline(always)]
pub fn on() -> bool {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    FLOW_SYNC.get(cpu).is_some_and(|line| line[ON] != 0)
}

/// Writes the flow being created for `key` into this CPU's log, if sharing
/// is on. The agent reads the log every few milliseconds; a slot it had
/// not read yet when its CPU came round again is lost (the agent counts
/// it): the flow itself goes on here.
#[inline(always)]
pub fn share<F: Family>(key: &F::Key, flow: &Flow) {
    // SAFETY: a helper without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let Some(line) = FLOW_SYNC.get_ptr_mut(cpu) else { return };
    let line = line as *mut u64;
    // SAFETY: `line` is this CPU's element of the map (the verifier checked
    // the index), of `LINE` u64s; `F::LOG_HEAD` and `ON` are below `LINE`.
    // Only this CPU writes its line's head and its part of the log: XDP runs
    // one packet at a time per CPU, to its end. Volatile stores in this
    // order (the slot's `seq` last but the head) are what the agent's
    // reader relies on, as for the flow table's sequence lock.
    unsafe {
        if read_volatile(line.add(ON)) == 0 {
            return;
        }
        let head = line.add(F::LOG_HEAD);
        let written = read_volatile(head);
        let index = cpu.wrapping_mul(LOG_SLOTS).wrapping_add(written as u32 & (LOG_SLOTS - 1));
        let Some(slot) = F::new_flows().get_ptr_mut(index) else { return };
        let slot: *mut LogSlot<F::Key> = slot;
        write_volatile(&raw mut (*slot).seq, 0);
        write_volatile(&raw mut (*slot).key, *key);
        write_volatile(&raw mut (*slot).flow, *flow);
        write_volatile(&raw mut (*slot).seq, written + 1);
        write_volatile(head, written + 1);
    }
}
