//! The parser lives in `handshake_common::parse`, so the host can run (and
//! fuzz) the very same code; here each program's context says where its
//! packet's bytes are.

use aya_ebpf::programs::{TcContext, XdpContext};
pub use handshake_common::parse::{Facts, Packet, Parsed, parse};

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
}
