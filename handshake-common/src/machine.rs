//! The pure TCP state machine: one packet in, the connection's next record and
//! the verdict out. Both kernel programs call it; the host tests drive it with
//! a fake clock.
//!
//! Each connection carries two states, the client's and the server's, as in
//! the two columns of the seed's diagrams. The gate sees a packet at the
//! moment it crosses the interface, which (up to the wire delay) is when the
//! sender's state changes for sending it and the receiver's for receiving it,
//! so one packet moves both columns.

use crate::config::Config;
use crate::flow::{FlowEntry, TcpState, flags};
use crate::reason::Reason;

/// TCP header flag bits (byte 13 of the header).
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
}

/// What the state machine needs from a TCP segment (host byte order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The flag byte ([`tcp`] bits).
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    /// Payload bytes (not counting SYN or FIN).
    pub payload_len: u32,
}

impl Segment {
    pub const fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// A SYN without ACK, RST or FIN: the opening of a handshake.
    pub const fn is_pure_syn(&self) -> bool {
        self.flags & (tcp::SYN | tcp::ACK | tcp::RST | tcp::FIN) == tcp::SYN
    }
}

/// Whether a segment may be tracked at all, before any lookup: the reason
/// to refuse it, if not.
///
/// - Port 0 at either end: no TCP endpoint uses it (`malformed`).
/// - SYN together with FIN or RST, and any segment that is neither a SYN
///   nor an RST yet carries no ACK (RFC 9293: every segment after the first
///   SYN acknowledges something): NULL, FIN alone, XMAS without ACK
///   (`bad_flags`). Linux drops these too, but a gate that tracked them
///   would let a spoofed FIN without ACK move a connection's state.
pub const fn check(src_port: u16, dst_port: u16, seg: &Segment) -> Result<(), Reason> {
    if src_port == 0 || dst_port == 0 {
        return Err(Reason::Malformed);
    }
    let syn = seg.has(tcp::SYN);
    if syn && seg.flags & (tcp::FIN | tcp::RST) != 0 {
        return Err(Reason::BadFlags);
    }
    if !syn && !seg.has(tcp::RST) && !seg.has(tcp::ACK) {
        return Err(Reason::BadFlags);
    }
    Ok(())
}

/// Which end sent the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    FromClient,
    FromServer,
}

/// What to do with the entry and the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Store the updated entry where it was; the packet passes.
    Update(FlowEntry),
    /// The handshake completed: move the entry from the half-open map to the
    /// established map (and give its half-open count back); the packet passes.
    Promote(FlowEntry),
    /// The connection is over (RST): delete the entry; the packet passes.
    Remove,
    /// A new SYN on a finished tuple: delete the entry and handle the SYN as
    /// the first packet of a new connection.
    Restart,
    /// Out of state: the entry is unchanged and the packet gets this reason.
    Reject(Reason),
}

/// `a` is at or after `b` in sequence space.
pub const fn seq_geq(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) >= 0
}

/// A new half-open entry for a client's SYN. `counted`: the attempt took a
/// half-open count in bucket `epoch` (an arriving SYN admitted under the
/// limits); a SYN this host sends is tracked uncounted.
pub fn open(
    seg: &Segment,
    client_is_lo: bool,
    now_ns: u64,
    epoch: u32,
    counted: bool,
) -> FlowEntry {
    FlowEntry {
        created_ns: now_ns,
        last_seen_ns: now_ns,
        changed_ns: now_ns,
        client_isn: seg.seq,
        epoch,
        flags: if counted { flags::COUNTED } else { 0 },
        client_state: TcpState::SynSent as u8,
        server_state: TcpState::Listen as u8,
        client_is_lo: client_is_lo as u8,
        ..FlowEntry::default()
    }
}

/// What to do with a packet of a flow that has no entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untracked {
    /// A pure SYN: a new attempt (admitted under the limits when it arrives;
    /// tracked uncounted when this host sends it).
    Open,
    /// An RST (nothing to close) or a SYN-ACK / odd SYN of an attempt never
    /// tracked (passed untracked on overflow, or begun while the gate was
    /// off): passed, not tracked.
    Ignore,
    /// Anything else: a flow that began before the gate (or whose entry was
    /// evicted), picked up as ESTABLISHED with [`pick_up`].
    PickUp,
}

/// Classifies a packet of a flow with no entry.
pub const fn untracked(seg: &Segment) -> Untracked {
    if seg.is_pure_syn() {
        Untracked::Open
    } else if seg.has(tcp::RST) || seg.has(tcp::SYN) {
        Untracked::Ignore
    } else {
        Untracked::PickUp
    }
}

/// An entry for a flow whose handshake the gate never saw (it started before
/// the gate was attached, or its entry was evicted): both ends ESTABLISHED,
/// like conntrack's loose mode. The client is guessed as the end with the
/// higher port (ephemeral ports sit above service ports).
pub fn pick_up(src_port: u16, dst_port: u16, src_is_lo: bool, now_ns: u64) -> FlowEntry {
    let src_is_client = src_port > dst_port;
    FlowEntry {
        created_ns: now_ns,
        last_seen_ns: now_ns,
        changed_ns: now_ns,
        client_state: TcpState::Established as u8,
        server_state: TcpState::Established as u8,
        client_is_lo: (src_is_client == src_is_lo) as u8,
        flags: flags::PICKED_UP,
        ..FlowEntry::default()
    }
}

/// Whether a half-open entry has outlived the half-open timeout.
pub fn half_open_expired(e: &FlowEntry, now_ns: u64, cfg: &Config) -> bool {
    now_ns.saturating_sub(e.created_ns) >= cfg.half_open_timeout_ns()
}

/// Whether both ends are done: each in TIME_WAIT or CLOSED.
pub fn finished(e: &FlowEntry) -> bool {
    let done = |s: TcpState| matches!(s, TcpState::TimeWait | TcpState::Closed);
    done(e.client_state()) && done(e.server_state())
}

/// Whether an established-map entry is finished and 2·MSL have passed since
/// it finished (TIME_WAIT is over).
pub fn finished_expired(e: &FlowEntry, now_ns: u64, cfg: &Config) -> bool {
    finished(e) && now_ns.saturating_sub(e.changed_ns) >= cfg.time_wait_ns()
}

/// Whether the entry is still in its handshake: the server has not seen the
/// final ACK (LISTEN or SYN_RCVD). Such an entry lives in the half-open map.
pub fn in_handshake(e: &FlowEntry) -> bool {
    matches!(e.server_state(), TcpState::Listen | TcpState::SynRcvd)
}

/// Advances a tracked connection by one segment.
///
/// - RST in any state ends the connection (both kernels drop their sockets).
/// - In the handshake: the client's SYN (SYN_SENT / LISTEN), the server's
///   SYN-ACK, which must acknowledge J+1 (the client, receiving it, is
///   ESTABLISHED; the server SYN_RCVD), and the client's final ACK, which
///   must acknowledge K+1 of a SYN-ACK that was seen (both ESTABLISHED).
///   Anything else claiming to complete the handshake is `bad_ack`.
/// - After it: the teardown, from FINs and the ACKs that cover them.
/// - A pure SYN on a finished tuple (both ends TIME_WAIT or CLOSED) starts a
///   new connection: [`Step::Restart`].
pub fn step(e: &FlowEntry, dir: Dir, seg: &Segment, now_ns: u64) -> Step {
    if seg.has(tcp::RST) {
        return Step::Remove;
    }
    let mut n = *e;
    n.last_seen_ns = now_ns;
    if in_handshake(e) {
        return handshake(n, dir, seg, now_ns);
    }
    if seg.is_pure_syn() && finished(e) {
        return Step::Restart;
    }
    Step::Update(teardown(n, dir, seg, now_ns))
}

fn set_states(n: &mut FlowEntry, client: TcpState, server: TcpState, now_ns: u64) {
    if n.client_state != client as u8 || n.server_state != server as u8 {
        n.client_state = client as u8;
        n.server_state = server as u8;
        n.changed_ns = now_ns;
    }
}

fn handshake(mut n: FlowEntry, dir: Dir, seg: &Segment, now_ns: u64) -> Step {
    let syn = seg.has(tcp::SYN);
    let ack = seg.has(tcp::ACK);
    match dir {
        Dir::FromClient if syn && !ack => {
            if seg.seq != n.client_isn {
                // A new attempt on the same tuple replaces the old one.
                n.client_isn = seg.seq;
                n.flags &= !flags::SERVER_ISN_KNOWN;
                set_states(&mut n, TcpState::SynSent, TcpState::Listen, now_ns);
            }
            Step::Update(n)
        }
        Dir::FromClient if ack && !syn => {
            if !n.has(flags::SERVER_ISN_KNOWN) || seg.ack != n.server_isn.wrapping_add(1) {
                return Step::Reject(Reason::BadAck);
            }
            set_states(&mut n, TcpState::Established, TcpState::Established, now_ns);
            // Its half-open count is given back as it leaves the half-open map.
            n.flags &= !flags::COUNTED;
            // The final ACK may already carry data or a FIN.
            Step::Promote(teardown(n, dir, seg, now_ns))
        }
        Dir::FromServer if syn && ack => {
            if seg.ack != n.client_isn.wrapping_add(1) {
                return Step::Reject(Reason::BadAck);
            }
            // A retransmitted SYN-ACK carries the same K; a different K
            // (the server restarted the attempt) replaces it.
            n.server_isn = seg.seq;
            n.flags |= flags::SERVER_ISN_KNOWN;
            set_states(&mut n, TcpState::Established, TcpState::SynRcvd, now_ns);
            Step::Update(n)
        }
        _ => Step::Update(n),
    }
}

/// The bits and FIN sequence numbers of the sending end and its peer.
struct Ends {
    me_fin: u16,
    me_acked: u16,
    me_first: u16,
    peer_fin: u16,
    peer_acked: u16,
}

const FROM_CLIENT: Ends = Ends {
    me_fin: flags::CLIENT_FIN,
    me_acked: flags::CLIENT_FIN_ACKED,
    me_first: flags::CLIENT_CLOSED_FIRST,
    peer_fin: flags::SERVER_FIN,
    peer_acked: flags::SERVER_FIN_ACKED,
};

const FROM_SERVER: Ends = Ends {
    me_fin: flags::SERVER_FIN,
    me_acked: flags::SERVER_FIN_ACKED,
    me_first: flags::SERVER_CLOSED_FIRST,
    peer_fin: flags::CLIENT_FIN,
    peer_acked: flags::CLIENT_FIN_ACKED,
};

fn teardown(mut n: FlowEntry, dir: Dir, seg: &Segment, now_ns: u64) -> FlowEntry {
    let (ends, peer_fin_seq) = match dir {
        Dir::FromClient => (&FROM_CLIENT, n.server_fin_seq),
        Dir::FromServer => (&FROM_SERVER, n.client_fin_seq),
    };
    let acks_peer_fin =
        seg.has(tcp::ACK) && n.has(ends.peer_fin) && seq_geq(seg.ack, peer_fin_seq.wrapping_add(1));
    if acks_peer_fin {
        n.flags |= ends.peer_acked;
    }
    if seg.has(tcp::FIN) && !n.has(ends.me_fin) {
        n.flags |= ends.me_fin;
        let fin_seq = seg.seq.wrapping_add(seg.payload_len);
        match dir {
            Dir::FromClient => n.client_fin_seq = fin_seq,
            Dir::FromServer => n.server_fin_seq = fin_seq,
        }
        // Sent before it had the peer's FIN: the active (or a simultaneous) closer.
        if !acks_peer_fin {
            n.flags |= ends.me_first;
        }
    }
    let client = side_state(&n, &FROM_CLIENT);
    let server = side_state(&n, &FROM_SERVER);
    set_states(&mut n, client, server, now_ns);
    n
}

/// One end's state, derived from who sent a FIN, who had theirs acknowledged
/// and who closed first.
fn side_state(n: &FlowEntry, e: &Ends) -> TcpState {
    let acked = n.has(e.me_acked);
    match (n.has(e.me_fin), n.has(e.peer_fin)) {
        (false, false) => TcpState::Established,
        (false, true) => TcpState::CloseWait,
        (true, false) if acked => TcpState::FinWait2,
        (true, false) => TcpState::FinWait1,
        (true, true) => match (n.has(e.me_first), acked) {
            (true, true) => TcpState::TimeWait,
            (true, false) => TcpState::Closing,
            (false, true) => TcpState::Closed,
            (false, false) => TcpState::LastAck,
        },
    }
}

#[cfg(test)]
mod tests;
