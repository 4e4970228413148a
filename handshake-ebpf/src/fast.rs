//! The data fast path, first thing in both programs: an IPv4 segment with
//! ACK alone (or ACK and PSH) of an established connection, read in place
//! (`parse::data_v4`), its facts in registers and on the stack (not the
//! per-CPU scratch), one filter word, one lookup and `machine::fast_step`
//! inline, with no call of the program's own. Whatever it does not take
//! (another kind of segment, a tagged frame, IPv6, no entry, a segment the
//! fast step declines) goes down the whole path, told what was found here
//! so nothing is looked up twice.

use handshake_common::{
    Config, FlowKeyV4, Mode,
    machine::{self, Side},
};

use crate::parse::{self, Packet};
use crate::{clock, known, table};

/// What the fast path did with a packet.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tried {
    /// Not its kind: nothing was looked at.
    Not,
    /// An arriving segment from an address the known-source filter has
    /// never seen: no map has anything of it.
    Unknown,
    /// The established map has no entry for it.
    NoEntry,
    /// The entry is there, but the segment is not the fast step's; the
    /// entry is as it was.
    Declined,
    /// Taken: the entry learned from it; it passes.
    Passed,
}

impl Tried {
    /// Back from `Facts::tried`, where the programs keep it (`as u8`).
    #[inline(always)]
    pub fn of(v: u8) -> Tried {
        match v {
            1 => Tried::Unknown,
            2 => Tried::NoEntry,
            3 => Tried::Declined,
            4 => Tried::Passed,
            _ => Tried::Not,
        }
    }
}

/// Tries the fast path on a packet crossing on `side`.
#[inline(always)]
pub fn attempt<C: Packet>(ctx: &C, cfg: &Config, side: Side) -> Tried {
    if cfg.mode() == Mode::Off {
        return Tried::Not;
    }
    let Some(d) = parse::data_v4(ctx) else {
        return Tried::Not;
    };
    if side == Side::Ingress && known::unknown_v4(cfg, d.src) {
        return Tried::Unknown;
    }
    let now = clock::now();
    let (key, src_is_lo) = FlowKeyV4::of(d.src, d.src_port, d.dst, d.dst_port);
    let Some(p) = table::find_inline(&key) else {
        return Tried::NoEntry;
    };
    let e = unsafe { &mut (*p).entry };
    let mut seg = d.segment();
    seg.side = side;
    match machine::fast_step(e, e.dir_of(src_is_lo), &seg, now) {
        Some(_) => Tried::Passed,
        None => Tried::Declined,
    }
}
