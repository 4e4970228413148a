//! Where a segment's numbers fall in its connection's sequence spaces: the
//! window checks (RFC 9293, RFC 5961) and what an accepted segment teaches.

use super::{Dir, MAX_WSCALE, Segment, Side, Step, seq_geq, seq_gt, tcp};
use crate::flow::{FlowEntry, SeqState, flags};
use crate::reason::Reason;

/// The sending end's and the receiving end's sequence spaces, and what
/// the flags say is known of them: (sender, receiver, sender seen,
/// receiver seen, receiver acknowledged something, sender sent its FIN).
#[inline(always)]
pub(super) fn ends(e: &FlowEntry, dir: Dir) -> (&SeqState, &SeqState, bool, bool, bool, bool) {
    match dir {
        Dir::FromClient => (
            &e.client,
            &e.server,
            e.has(flags::CLIENT_SEEN),
            e.has(flags::SERVER_SEEN),
            e.has(flags::SERVER_ACKED),
            e.has(flags::CLIENT_FIN),
        ),
        Dir::FromServer => (
            &e.server,
            &e.client,
            e.has(flags::SERVER_SEEN),
            e.has(flags::CLIENT_SEEN),
            e.has(flags::CLIENT_ACKED),
            e.has(flags::SERVER_FIN),
        ),
    }
}

/// Whether the segment's numbers lie in the window its receiver `r`
/// offered: not wholly older than one largest window before what `r`
/// acknowledged, not starting past the right edge `r` offered (with a
/// largest window to spare, for updates of `r` another CPU may be
/// writing). Wider than the kernel's own (`tcp_sequence`), never narrower.
#[inline(always)]
pub(super) fn in_window(seg: &Segment, r: &SeqState) -> bool {
    let lower = r.ack.wrapping_sub(r.maxwin);
    let upper = r.edge.wrapping_add(r.maxwin);
    seq_geq(seg.end_seq(), lower) && seq_geq(upper, seg.seq)
}

/// Whether an acknowledgement number can be the sender's: not past what
/// its receiver `r` sent or could have been allowed to (the sender's own
/// right edge, plus one for a FIN sent into a closed window), not more
/// than two of the sender's largest windows behind (RFC 5961 §5.2).
#[inline(always)]
pub(super) fn ack_ok(ack: u32, s: &SeqState, s_acked: bool, r: &SeqState) -> bool {
    let upper = if s_acked && seq_gt(s.edge, r.end) {
        s.edge
    } else {
        r.end
    };
    if seq_gt(ack, upper.wrapping_add(1)) {
        return false;
    }
    let back = s.maxwin.saturating_mul(2).saturating_add(1);
    let back = if back > 0x7fff_ffff {
        0x7fff_ffff
    } else {
        back
    };
    seq_geq(ack, r.end.wrapping_sub(back))
}

/// An arriving segment other than RST or SYN after the handshake: the
/// reason to refuse it, if its numbers do not fit the connection.
#[inline(always)]
pub(super) fn acceptable(e: &FlowEntry, dir: Dir, seg: &Segment) -> Result<(), Reason> {
    let (s, r, _, r_seen, r_acked, _) = ends(e, dir);
    let bad = if seg.has(tcp::FIN) {
        Reason::BadSeq
    } else {
        Reason::OutOfWindow
    };
    if r_acked && !in_window(seg, r) {
        return Err(bad);
    }
    let s_acked = match dir {
        Dir::FromClient => e.has(flags::CLIENT_ACKED),
        Dir::FromServer => e.has(flags::SERVER_ACKED),
    };
    if seg.has(tcp::ACK) && r_seen && !ack_ok(seg.ack, s, s_acked, r) {
        return Err(bad);
    }
    Ok(())
}

/// An arriving RST after the handshake (RFC 5961 §3.2, as Linux's
/// `tcp_validate_incoming` applies it).
#[inline(always)]
pub(super) fn reset(e: &FlowEntry, dir: Dir, seg: &Segment) -> Step {
    let (s, r, s_seen, _, r_acked, s_fin) = ends(e, dir);
    if !s_seen && !r_acked {
        // Nothing known to check it against (a flow picked up from the
        // other end's packets only).
        return Step::Remove;
    }
    let exact = (s_seen && (seg.seq == s.end || (s_fin && seg.seq == s.end.wrapping_sub(1))))
        || (r_acked && seg.seq == r.ack);
    if exact {
        Step::Remove
    } else if !r_acked || in_window(seg, r) {
        Step::Reject(Reason::Challenge)
    } else {
        Step::Reject(Reason::BadSeq)
    }
}

/// Whether an arriving RST ends a half-open attempt: the kernel takes a
/// client's RST anywhere in the window its SYN-ACK offered (or before it
/// answered at all), and a server's only if it acknowledges J+1.
#[inline(always)]
pub(super) fn handshake_reset_ok(e: &FlowEntry, dir: Dir, seg: &Segment) -> bool {
    match dir {
        Dir::FromClient => {
            !e.has(flags::SERVER_ACKED)
                || (seq_geq(seg.seq, e.client.end) && seq_geq(e.server.edge, seg.seq))
        }
        Dir::FromServer => seg.has(tcp::ACK) && seg.ack == e.client.end,
    }
}

/// Folds a segment the connection accepts into its sender's sequence
/// space: the next number, the highest acknowledgement and right edge,
/// the largest window.
///
/// What arrives moves the sender's next number only as the receiving
/// kernel would: in order (starting at or before it, no gap) and starting
/// inside the window the receiver offered; a FIN's own number waits for
/// this host's acknowledgement (see `teardown`). What this host sends is
/// its own: all of it counts, and its acknowledgement tells how far the
/// other end's data got in (the kernel took everything before it).
#[inline(always)]
pub(super) fn learn(n: &mut FlowEntry, dir: Dir, seg: &Segment) {
    let arriving = matches!(seg.side, Side::Ingress);
    let (seen, acked, fin, shift, peer_seen, peer_fin, peer_acked) = match dir {
        Dir::FromClient => (
            flags::CLIENT_SEEN,
            flags::CLIENT_ACKED,
            flags::CLIENT_FIN,
            n.client_wscale(),
            flags::SERVER_SEEN,
            flags::SERVER_FIN,
            flags::SERVER_ACKED,
        ),
        Dir::FromServer => (
            flags::SERVER_SEEN,
            flags::SERVER_ACKED,
            flags::SERVER_FIN,
            n.server_wscale(),
            flags::CLIENT_SEEN,
            flags::CLIENT_FIN,
            flags::CLIENT_ACKED,
        ),
    };
    let f = n.flags;
    let (s, r) = match dir {
        Dir::FromClient => (&mut n.client, &mut n.server),
        Dir::FromServer => (&mut n.server, &mut n.client),
    };
    let shift = if shift > MAX_WSCALE { 0 } else { shift };
    let win = (seg.window as u32) << shift;
    if arriving {
        let end = seg.end_seq().wrapping_sub(seg.has(tcp::FIN) as u32);
        let in_order = seq_geq(s.end, seg.seq) && (f & peer_acked == 0 || seq_geq(r.edge, seg.seq));
        if f & seen == 0 || (f & fin == 0 && in_order && seq_gt(end, s.end)) {
            s.end = end;
        }
    } else {
        let end = seg.end_seq();
        if f & seen == 0 || (f & fin == 0 && seq_gt(end, s.end)) {
            s.end = end;
        }
        if seg.has(tcp::ACK) && f & peer_seen != 0 && f & peer_fin == 0 && seq_gt(seg.ack, r.end) {
            r.end = seg.ack;
        }
    }
    if win > s.maxwin {
        s.maxwin = win;
    }
    if seg.has(tcp::ACK) {
        let edge = seg.ack.wrapping_add(win);
        if f & acked == 0 {
            s.ack = seg.ack;
            s.edge = edge;
        } else {
            if seq_gt(seg.ack, s.ack) {
                s.ack = seg.ack;
            }
            if seq_gt(edge, s.edge) {
                s.edge = edge;
            }
        }
        n.flags |= acked;
    }
    n.flags |= seen;
}
