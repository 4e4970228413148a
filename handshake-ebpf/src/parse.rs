//! The parser lives in `handshake_common::parse`, so the host can run (and
//! fuzz) the very same code; here each program's context says where its
//! packet's bytes are.

use aya_ebpf::helpers::generated::{bpf_csum_diff, bpf_skb_load_bytes, bpf_xdp_load_bytes};
use aya_ebpf::programs::{TcContext, XdpContext};
use handshake_common::parse::fold;
pub use handshake_common::parse::{
    Facts, Packet, Parsed, TCP_HEADER_BUF, data_v4, parse, surely_not_tcp,
};

/// A SYN's TCP header length as the load helpers must see it: checked,
/// then masked on the very value passed, so the verifier knows it is 20
/// to 80 bytes (inside the buffer) and not zero.
#[inline(always)]
fn header_len(len: usize) -> Option<u32> {
    if !(20..=60).contains(&len) {
        return None;
    }
    Some(20 + (core::hint::black_box(len as u32 - 20) & 0x3c))
}

/// [`Packet::header_sum`] by the kernel's `csum_partial`, one helper call
/// (the XDP program's: the egress program checks no checksum):
/// it sums the words as they lie in memory, little-endian here, and the
/// byte swap of a folded ones'-complement sum is the sum of the swapped
/// words.
#[inline(always)]
fn kernel_sum(buf: &[u8; TCP_HEADER_BUF], len: usize) -> Option<u32> {
    const _: () = assert!(cfg!(target_endian = "little"));
    let len = header_len(len)?;
    let to = buf.as_ptr().cast_mut().cast();
    let s = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, to, len, 0) };
    if s < 0 {
        return None;
    }
    Some(u32::from((fold(s as u32) as u16).swap_bytes()))
}

/// The XDP program's frame, as the parser sees it.
pub struct Xdp<'a>(pub &'a XdpContext);

/// The egress program's skb (its linear part), as the parser sees it.
pub struct Tc<'a>(pub &'a TcContext);

impl Packet for Xdp<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        XdpContext::data(self.0)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        XdpContext::data_end(self.0)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        // Opaque to the optimiser: otherwise it folds the comparisons this
        // feeds into arithmetic on `data_end`, which the verifier refuses.
        core::hint::black_box(XdpContext::data_end(self.0) - XdpContext::data(self.0))
    }
    #[inline(always)]
    fn load(&self, offset: usize, to: &mut [u8; TCP_HEADER_BUF], len: usize) -> bool {
        let Some(len) = header_len(len) else {
            return false;
        };
        unsafe { bpf_xdp_load_bytes(self.0.ctx, offset as u32, to.as_mut_ptr().cast(), len) == 0 }
    }
    #[inline(always)]
    fn checks_checksums(&self) -> bool {
        true
    }
    #[inline(always)]
    fn header_sum(&self, buf: &[u8; TCP_HEADER_BUF], len: usize) -> Option<u32> {
        kernel_sum(buf, len)
    }
}

impl Packet for Tc<'_> {
    #[inline(always)]
    fn data(&self) -> usize {
        TcContext::data(self.0)
    }
    #[inline(always)]
    fn data_end(&self) -> usize {
        TcContext::data_end(self.0)
    }
    #[inline(always)]
    fn len(&self) -> usize {
        TcContext::len(self.0) as usize
    }
    #[inline(always)]
    fn load(&self, offset: usize, to: &mut [u8; TCP_HEADER_BUF], len: usize) -> bool {
        let Some(len) = header_len(len) else {
            return false;
        };
        let skb = self.0.skb.skb as *const core::ffi::c_void;
        unsafe { bpf_skb_load_bytes(skb, offset as u32, to.as_mut_ptr().cast(), len) == 0 }
    }
    #[inline(always)]
    fn checks_checksums(&self) -> bool {
        false
    }
}
