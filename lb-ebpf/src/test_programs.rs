//! Small XDP programs for the test bed and the benchmarks, in an object of
//! their own so the balancer's object holds only the balancer.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::xdp_action, helpers::bpf_xdp_store_bytes, macros::map, macros::xdp, maps::Array, programs::XdpContext,
    };

    /// Does nothing but pass: attached to veth peers that receive redirected
    /// frames (veth delivers XDP redirects only to a peer with a program).
    #[xdp]
    pub fn pass(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_PASS
    }

    /// The trivial XDP_TX reflector the balancer's packet rate is compared to.
    #[xdp]
    pub fn reflect(_ctx: XdpContext) -> u32 {
        xdp_action::XDP_TX
    }

    /// The frame a benchmark sends (at most [`MAX_FRAME`] bytes: an IPv6
    /// TCP frame is 74): its length (bytes 0-3), the frame (from byte 4),
    /// and the verdict to end with (byte 127).
    const MAX_FRAME: u32 = 123;

    #[map]
    static ORIGINAL_FRAME: Array<[u8; 128]> = Array::with_max_entries(1, 0);

    /// Receives a benchmark's frames: writes the original frame back into the
    /// buffer, then drops or passes it (byte 127). Live-frames test runs
    /// recycle pages without resetting them, so a program that rewrote a
    /// frame would otherwise see its own output on a later run.
    #[xdp]
    pub fn restore(ctx: XdpContext) -> u32 {
        let Some(stored) = ORIGINAL_FRAME.get(0) else { return xdp_action::XDP_DROP };
        let len = u32::from_ne_bytes([stored[0], stored[1], stored[2], stored[3]]);
        let frame_len = (ctx.data_end() - ctx.data()) as u32;
        // Bounded and non-zero in the register the helper gets, for the verifier.
        let n = len & 0x7f;
        if len == frame_len && n > 0 && n <= MAX_FRAME {
            // SAFETY: the source lies inside the map value; the helper checks the packet bounds.
            unsafe {
                bpf_xdp_store_bytes(ctx.ctx, 0, stored.as_ptr().add(4) as *mut _, n);
            }
        }
        if stored[127] == xdp_action::XDP_PASS as u8 { xdp_action::XDP_PASS } else { xdp_action::XDP_DROP }
    }

    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
        loop {}
    }
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
