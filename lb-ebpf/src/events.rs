//! Rare datapath events, logged with aya-log for the agent to print: a
//! reset sent for a flow whose server is disabled, and a new flow dropped
//! because another CPU took its flow-table slot at the same instant.
//!
//! Off unless the agent is started with `--datapath-log`: the level is a
//! constant the agent sets when it loads the program (`AYA_LOG_LEVEL`), so
//! when off the verifier removes these calls, and they sit on paths that
//! are already rare. Each is a function of its own (a BPF-to-BPF call),
//! never inlined: inlined, the logging code made the packet path too large
//! for LLVM to inline it whole, and every packet paid (measured: +6 ns for
//! a packet not for a VIP, +80 ns for a new flow). The call itself is made
//! only when the level asks for it, so that when off the verifier removes
//! it too (measured: the call alone cost the reset path 20-30 ns).

use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
};
use lb_common::{FlowKey, FlowKey6};

#[inline(always)]
pub fn reset_sent(k: &FlowKey) {
    if level_enabled(Level::Debug) {
        log_reset_sent(k);
    }
}

#[inline(always)]
pub fn flow_slot_lost(k: &FlowKey) {
    if level_enabled(Level::Debug) {
        log_flow_slot_lost(k);
    }
}

#[inline(never)]
fn log_reset_sent(k: &FlowKey) {
    debug!(
        &(),
        "reset sent to {:i}:{} for its flow to {:i}:{}: the flow's server is disabled",
        u32::from_be(k.src_addr),
        u16::from_be(k.src_port),
        u32::from_be(k.dst_addr),
        u16::from_be(k.dst_port)
    );
}

#[inline(never)]
fn log_flow_slot_lost(k: &FlowKey) {
    debug!(
        &(),
        "new flow {:i}:{} -> {:i}:{} dropped: another CPU took its flow-table slot (the retransmission gets one)",
        u32::from_be(k.src_addr),
        u16::from_be(k.src_port),
        u32::from_be(k.dst_addr),
        u16::from_be(k.dst_port)
    );
}

#[inline(always)]
pub fn reset_sent6(k: &FlowKey6) {
    if level_enabled(Level::Debug) {
        log_reset_sent6(k);
    }
}

#[inline(always)]
pub fn flow_slot_lost6(k: &FlowKey6) {
    if level_enabled(Level::Debug) {
        log_flow_slot_lost6(k);
    }
}

/// An IPv6 address as aya-log prints one: its 16 bytes.
#[inline(always)]
fn octets(addr: &lb_common::Addr6) -> [u8; 16] {
    // SAFETY: four u32 words are sixteen bytes, in memory (network) order.
    unsafe { core::mem::transmute::<lb_common::Addr6, [u8; 16]>(*addr) }
}

#[inline(never)]
fn log_reset_sent6(k: &FlowKey6) {
    debug!(
        &(),
        "reset sent to [{:i}]:{} for its flow to [{:i}]:{}: the flow's server is disabled",
        octets(&k.src_addr),
        u16::from_be(k.src_port),
        octets(&k.dst_addr),
        u16::from_be(k.dst_port)
    );
}

#[inline(never)]
fn log_flow_slot_lost6(k: &FlowKey6) {
    debug!(
        &(),
        "new flow [{:i}]:{} -> [{:i}]:{} dropped: another CPU took its flow-table slot (the retransmission gets one)",
        octets(&k.src_addr),
        u16::from_be(k.src_port),
        octets(&k.dst_addr),
        u16::from_be(k.dst_port)
    );
}
