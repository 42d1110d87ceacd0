//! Rare datapath events, logged with aya-log for the agent to print: a
//! reset sent for a flow whose server is disabled, and a new flow dropped
//! because another CPU took its flow-table slot at the same instant.
//!
//! Off unless the agent is started with `--datapath-log`: the level is a
//! constant the agent sets when it loads the program (`AYA_LOG_LEVEL`), so
//! when off the verifier removes these calls, and they sit on paths that
//! are already rare. Nothing here runs for a packet that is forwarded.

use aya_ebpf::programs::XdpContext;
use aya_log_ebpf::debug;

use crate::parse::Packet;

#[inline(always)]
pub fn reset_sent(ctx: &XdpContext, pkt: &Packet) {
    let k = &pkt.key;
    debug!(
        ctx,
        "reset sent to {:i}:{} for its flow to {:i}:{}: the flow's server is disabled",
        u32::from_be(k.src_addr),
        u16::from_be(k.src_port),
        u32::from_be(k.dst_addr),
        u16::from_be(k.dst_port)
    );
}

#[inline(always)]
pub fn flow_slot_lost(ctx: &XdpContext, pkt: &Packet) {
    let k = &pkt.key;
    debug!(
        ctx,
        "new flow {:i}:{} -> {:i}:{} dropped: another CPU took its flow-table slot (the retransmission gets one)",
        u32::from_be(k.src_addr),
        u16::from_be(k.src_port),
        u32::from_be(k.dst_addr),
        u16::from_be(k.dst_port)
    );
}
