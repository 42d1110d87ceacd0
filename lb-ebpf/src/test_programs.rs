//! Small XDP programs for the test bed and the benchmarks, in an object of
//! their own so the balancer's object holds only the balancer.
#![cfg_attr(target_arch = "bpf", no_std, no_main)]

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{
        bindings::xdp_action,
        helpers::{bpf_redirect, bpf_xdp_store_bytes},
        macros::map,
        macros::xdp,
        maps::Array,
        programs::XdpContext,
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

    /// Where [`nat_floor`] sends every frame: bytes 0-3 the server's IPv4
    /// address (network order), 4-5 its port (network order), 6-11 its
    /// MAC, 12-17 the sending interface's MAC, 20-23 the interface to
    /// redirect to (0: back out with XDP_TX).
    #[map]
    static FLOOR_TARGET: Array<[u8; 24]> = Array::with_max_entries(1, 0);

    /// The least any NAT balancer does to a packet of an existing flow:
    /// bounds-checked Ethernet, IPv4 and TCP headers, one array read (its
    /// server, [`FLOOR_TARGET`]) and no flow table, the destination address
    /// and port rewritten, the TTL less one, both checksums updated, new
    /// MACs, then XDP_TX or a redirect. The packet rate bench times it
    /// beside the reflector: the ceiling of any balancer's rate there.
    #[xdp]
    pub fn nat_floor(ctx: XdpContext) -> u32 {
        let Some(target) = FLOOR_TARGET.get(0) else { return xdp_action::XDP_ABORTED };
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + 54 > end {
            return xdp_action::XDP_PASS;
        }
        let frame = data as *mut u8;
        // SAFETY: the 54 bytes of an Ethernet, IPv4 and TCP header are in the
        // frame (checked above), and the program has the frame to itself.
        unsafe {
            let at16 = |offset: usize| frame.add(offset) as *mut u16;
            // IPv4 without options, TCP.
            if *at16(12) != 0x0800u16.to_be() || *frame.add(14) != 0x45 || *frame.add(23) != 6 {
                return xdp_action::XDP_PASS;
            }
            let fold = |sum: u32| {
                let s = (sum & 0xffff) + (sum >> 16);
                ((s & 0xffff) + (s >> 16)) as u16
            };
            // One's-complement differences, 16-bit word by word.
            let daddr = frame.add(30) as *mut u32;
            let old = u32::from_be(daddr.read_unaligned());
            let new = u32::from_be_bytes([target[0], target[1], target[2], target[3]]);
            let addr_diff = (!(old >> 16) & 0xffff) + (!old & 0xffff) + (new >> 16) + (new & 0xffff);
            daddr.write_unaligned(new.to_be());
            let dport = at16(36);
            let port = u16::from_be_bytes([target[4], target[5]]);
            let port_diff = (!u16::from_be(*dport)) as u32 + port as u32;
            *dport = port.to_be();
            // TTL (byte 22) less one: the checksum's word 22-23 drops by 0x100.
            *frame.add(22) -= 1;
            let ip_check = at16(24);
            *ip_check = (!fold(!u16::from_be(*ip_check) as u32 + addr_diff + 0xfeff)).to_be();
            let tcp_check = at16(50);
            *tcp_check = (!fold(!u16::from_be(*tcp_check) as u32 + addr_diff + port_diff)).to_be();
            core::ptr::copy_nonoverlapping(target.as_ptr().add(6), frame, 12);
        }
        match u32::from_ne_bytes([target[20], target[21], target[22], target[23]]) {
            0 => xdp_action::XDP_TX,
            // SAFETY: a plain helper call on scalars.
            ifindex => unsafe { bpf_redirect(ifindex, 0) as u32 },
        }
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
