//! The lab's line-rate flood sender (never attached; the lab runs it with
//! `BPF_PROG_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES` in the client namespace,
//! where the kernel turns its `XDP_TX` into a transmit out of the client's
//! veth). Every frame is written whole from the spec's template
//! (`handshake_common::flood`), with a random source, port and sequence
//! number and fresh checksums: live frames recycle pages without restoring
//! them, and a receiver may have rewritten one in place.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use handshake_common::flood::{FloodSpec, V4_LEN, V6_LEN};
use handshake_common::flow::AF_INET;

/// The flood, written by the lab before it runs the program.
#[map(name = "FLOOD_SPEC")]
static FLOOD_SPEC: Array<FloodSpec> = Array::with_max_entries(1, 0);

#[xdp]
pub fn flood_tx(ctx: XdpContext) -> u32 {
    let Some(spec) = FLOOD_SPEC.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let (start, end) = (ctx.data(), ctx.data_end());
    let r = unsafe {
        [
            bpf_get_prandom_u32(),
            bpf_get_prandom_u32(),
            bpf_get_prandom_u32(),
        ]
    };
    // SAFETY: each family's length is checked before its write; live
    // frames' data is aligned.
    if spec.family == AF_INET as u32 {
        if start + V4_LEN > end {
            return xdp_action::XDP_ABORTED;
        }
        unsafe { spec.write_v4(start as *mut u8, r) };
    } else {
        if start + V6_LEN > end {
            return xdp_action::XDP_ABORTED;
        }
        unsafe { spec.write_v6(start as *mut u8, r) };
    }
    xdp_action::XDP_TX
}

/// The lab's client side, where the spoofed sources' replies arrive: drops
/// what is addressed to the spoofed ranges (`handshake_common::flood::
/// SPOOFED_V4`, `SPOOFED_V6`), passes the rest to the real clients. The
/// SYN-ACKs and resets of a spoofed flood go out to the internet from a real
/// host, where they cost it nothing more; here they would queue in front of
/// the real clients' replies in the client namespace's stack.
#[xdp]
pub fn spoofed_sink(ctx: XdpContext) -> u32 {
    let (start, end) = (ctx.data(), ctx.data_end());
    if start + 14 + 40 > end {
        return xdp_action::XDP_PASS;
    }
    let p = start as *const u8;
    // SAFETY: 54 bytes checked above.
    let (ethertype, v4_dst, v6_dst) = unsafe {
        (
            u16::from_be_bytes([*p.add(12), *p.add(13)]),
            u32::from_be_bytes([*p.add(30), *p.add(31), *p.add(32), *p.add(33)]),
            u64::from_be_bytes([
                *p.add(38),
                *p.add(39),
                *p.add(40),
                *p.add(41),
                *p.add(42),
                *p.add(43),
                *p.add(44),
                *p.add(45),
            ]),
        )
    };
    if handshake_common::flood::spoofed(ethertype, v4_dst, v6_dst) {
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
