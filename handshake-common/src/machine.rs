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
use crate::flow::{FlowEntry, NO_WSCALE, SeqState, TcpState, elapsed, flags, tick};
use crate::reason::Reason;

mod seq;
use seq::{acceptable, handshake_reset_ok, learn, reset};

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
    /// The window field as sent (never scaled on a SYN; scaled by the
    /// sender's shift on every later segment).
    pub window: u16,
    /// The shift of the window scale option, on a segment with SYN that
    /// carries one; [`NO_WSCALE`] otherwise.
    pub wscale: u8,
    /// Where it crosses the interface (set by the tracker, not the parser).
    pub side: Side,
    /// What is known of its TCP checksum ([`csum`]): checked for the
    /// segments whose effect depends on it (an arriving RST).
    pub csum: u8,
}

/// Values of [`Segment::csum`].
pub mod csum {
    /// Not checked: a segment that leaves (its checksum may be left to
    /// the NIC), one whose effect does not depend on it, or an RST too
    /// long to check (it carries data).
    pub const UNCHECKED: u8 = 0;
    pub const GOOD: u8 = 1;
    /// The kernel discards it before TCP looks at it.
    pub const BAD: u8 = 2;
}

impl Segment {
    pub const fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    /// A SYN without ACK, RST or FIN: the opening of a handshake.
    pub const fn is_pure_syn(&self) -> bool {
        self.flags & (tcp::SYN | tcp::ACK | tcp::RST | tcp::FIN) == tcp::SYN
    }

    /// The sequence number after this segment: SYN and FIN count one each.
    pub const fn end_seq(&self) -> u32 {
        self.seq
            .wrapping_add(self.payload_len)
            .wrapping_add(self.has(tcp::SYN) as u32)
            .wrapping_add(self.has(tcp::FIN) as u32)
    }
}

/// Where a packet crosses the protected interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Arriving (XDP): new SYNs are admitted under the limits, and what
    /// would end or close a connection is checked against its window.
    Ingress,
    /// Leaving (TC egress): this host's own stack sent it, so it is the
    /// authority on its own end (its RST ends the connection, its SYN
    /// starts one); its SYNs are tracked uncounted.
    Egress,
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

/// What to do with the entry and the packet. [`step`] changes the entry
/// in place only for `Update` and `Promote`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// The entry was updated where it is; the packet passes.
    Update,
    /// The handshake completed: move the (updated) entry from the
    /// half-open map to the established map (and give its half-open count
    /// back); the packet passes.
    Promote,
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

/// `a` is strictly after `b` in sequence space.
pub const fn seq_gt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

/// The largest window shift RFC 7323 allows.
pub const MAX_WSCALE: u8 = 14;

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
    let mut e = FlowEntry {
        created: tick(now_ns),
        last_seen: tick(now_ns),
        epoch_or_fin: epoch,
        flags: if counted { flags::COUNTED } else { 0 }
            | if client_is_lo { flags::CLIENT_IS_LO } else { 0 },
        ..FlowEntry::default()
    };
    e.set_states(TcpState::SynSent, TcpState::Listen);
    client_syn(&mut e, seg);
    e
}

/// What a client's SYN says: J+1 is what the SYN-ACK must acknowledge,
/// its window (unscaled, as on every SYN) and its window scale offer.
fn client_syn(e: &mut FlowEntry, seg: &Segment) {
    e.client = SeqState {
        end: seg.end_seq(),
        ack: 0,
        edge: 0,
        maxwin: max1(seg.window as u32),
    };
    e.set_wscales(seg.wscale, NO_WSCALE);
    e.flags |= flags::CLIENT_SEEN;
    e.flags &= !(flags::SERVER_SEEN | flags::SERVER_ACKED);
}

const fn max1(v: u32) -> u32 {
    if v == 0 { 1 } else { v }
}

/// What to do with a packet of a flow that has no entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Untracked {
    /// A pure SYN: a new attempt (admitted under the limits when it arrives;
    /// tracked uncounted when this host sends it).
    Open,
    /// An RST (nothing to close) or a SYN-ACK / odd SYN of an attempt never
    /// tracked (passed untracked on overflow, or begun while the gate was
    /// off), or a segment for a socket in TIME_WAIT: passed, not tracked.
    Ignore,
    /// Anything else: a flow that began before the gate (or whose entry was
    /// evicted), picked up as ESTABLISHED with [`pick_up`].
    PickUp,
    /// The final ACK of a SYN-cookie handshake the kernel accepts: picked
    /// up as ESTABLISHED with its sender as the client, whose source is
    /// then verified.
    CookieAck,
    /// Arriving, and the kernel has no socket for it: `no_conn`.
    NoConn,
}

/// The kernel's TCP socket states (`include/net/tcp_states.h`), as a
/// socket lookup reports them.
pub mod sk_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const TIME_WAIT: u8 = 6;
    pub const LISTEN: u8 = 10;
    pub const NEW_SYN_RECV: u8 = 12;
}

/// What the kernel has for an arriving segment's exact 4-tuple, in the
/// interface's network namespace (`bpf_skc_lookup_tcp`, then, for an ACK
/// that only a listener matches, `bpf_tcp_check_syncookie`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No socket: nothing listens on the port, or the lookup failed.
    Nothing,
    /// Only the listener on the destination. `cookie`: the segment is an
    /// ACK carrying a SYN cookie the kernel accepts.
    Listener { cookie: bool },
    /// A socket of this very connection, in this kernel state
    /// ([`sk_state`]: established, a request, TIME_WAIT, …).
    Socket(u8),
}

/// Classifies a packet of a flow with no entry, before asking the kernel.
pub const fn untracked(seg: &Segment) -> Untracked {
    if seg.is_pure_syn() {
        Untracked::Open
    } else if seg.has(tcp::RST) || seg.has(tcp::SYN) {
        Untracked::Ignore
    } else {
        Untracked::PickUp
    }
}

/// Whether the kernel must be asked about a packet of a flow with no
/// entry: every arriving one but a pure SYN, with `unknown-flows=verify`.
pub const fn needs_lookup(u: Untracked, side: Side, policy: crate::UnknownFlows) -> bool {
    !matches!(u, Untracked::Open)
        && matches!(side, Side::Ingress)
        && matches!(policy, crate::UnknownFlows::Verify)
}

/// What becomes of a packet classified `u` by [`untracked`] once the kernel
/// answered `lookup` (see [`needs_lookup`]): a socket of its own makes the
/// flow real (except one in TIME_WAIT: that connection is over, nothing to
/// track); a listener with a valid cookie makes it a cookie handshake's
/// final ACK; anything else is `no_conn`.
pub const fn verified(u: Untracked, seg: &Segment, lookup: Lookup) -> Untracked {
    match lookup {
        Lookup::Socket(sk_state::TIME_WAIT) => Untracked::Ignore,
        Lookup::Socket(sk_state::LISTEN) => Untracked::NoConn,
        Lookup::Socket(_) => u,
        Lookup::Listener { cookie: true } if cookie_candidate(seg) => Untracked::CookieAck,
        Lookup::Listener { .. } | Lookup::Nothing => Untracked::NoConn,
    }
}

/// Whether a segment could be a cookie handshake's final ACK (the only
/// segments `bpf_tcp_check_syncookie` looks at): ACK set, SYN and RST not.
pub const fn cookie_candidate(seg: &Segment) -> bool {
    seg.flags & (tcp::ACK | tcp::SYN | tcp::RST) == tcp::ACK
}

/// An entry for a flow whose handshake the gate never saw (it started before
/// the gate was attached, or its entry was evicted): both ends ESTABLISHED,
/// like conntrack's loose mode. The client is guessed as the end with the
/// higher port (ephemeral ports sit above service ports). Each end's
/// sequence numbers are learnt from its first segment.
pub fn pick_up(src_port: u16, dst_port: u16, src_is_lo: bool, now_ns: u64) -> FlowEntry {
    let src_is_client = src_port > dst_port;
    let mut e = FlowEntry {
        created: tick(now_ns),
        last_seen: tick(now_ns),
        flags: flags::PICKED_UP
            | if src_is_client == src_is_lo {
                flags::CLIENT_IS_LO
            } else {
                0
            },
        ..FlowEntry::default()
    };
    e.set_states(TcpState::Established, TcpState::Established);
    // Not known without the SYNs: the largest there is, so the window is
    // never narrower than the real one.
    e.set_wscales(MAX_WSCALE, MAX_WSCALE);
    e
}

/// An entry for a cookie handshake's final ACK from `src`: it is the
/// client (it answered the SYN-ACK), both ends ESTABLISHED. The window
/// scales are in the cookie, not in anything the gate saw: assumed the
/// largest, as for a picked-up flow.
pub fn cookie_pick_up(src_is_lo: bool, now_ns: u64) -> FlowEntry {
    let mut e = pick_up(1, 0, src_is_lo, now_ns);
    e.flags = e.flags & !flags::CLIENT_IS_LO | if src_is_lo { flags::CLIENT_IS_LO } else { 0 };
    e
}

/// Applies the first segment of a picked-up entry (the one that picked it
/// up): its numbers learnt, its FIN (if any) followed.
pub fn first_segment(e: &mut FlowEntry, src_is_lo: bool, seg: &Segment, now_ns: u64) {
    let dir = e.dir_of(src_is_lo);
    let _ = step(e, dir, seg, now_ns);
}

/// Whether a half-open entry has outlived the half-open timeout.
pub fn half_open_expired(e: &FlowEntry, now_ns: u64, cfg: &Config) -> bool {
    Expiry::of(cfg, now_ns).half_open(e)
}

/// What decides whether an entry has expired at one moment: the time and
/// the two timeouts of the settings then in force.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Expiry {
    pub now_ns: u64,
    pub half_open_timeout_ns: u64,
    pub time_wait_ns: u64,
}

impl Expiry {
    pub const fn of(cfg: &Config, now_ns: u64) -> Expiry {
        Expiry {
            now_ns,
            half_open_timeout_ns: cfg.half_open_timeout_ns(),
            time_wait_ns: cfg.time_wait_ns(),
        }
    }

    /// [`half_open_expired`].
    pub fn half_open(&self, e: &FlowEntry) -> bool {
        elapsed(self.now_ns, e.created, self.half_open_timeout_ns)
    }

    /// [`finished_expired`].
    pub fn finished(&self, e: &FlowEntry) -> bool {
        finished(e) && elapsed(self.now_ns, e.last_seen, self.time_wait_ns)
    }

    /// Whether an entry of the half-open map (`half_open`) or of the
    /// established map has expired: what the sweep deletes.
    #[inline(always)]
    pub fn expired(&self, e: &FlowEntry, half_open: bool) -> bool {
        if half_open {
            self.half_open(e)
        } else {
            self.finished(e)
        }
    }
}

/// Whether both ends are done: each in TIME_WAIT or CLOSED.
pub fn finished(e: &FlowEntry) -> bool {
    let done = |s: TcpState| matches!(s, TcpState::TimeWait | TcpState::Closed);
    done(e.client_state()) && done(e.server_state())
}

/// Whether an established-map entry is finished and 2·MSL have passed since
/// it finished (TIME_WAIT is over).
pub fn finished_expired(e: &FlowEntry, now_ns: u64, cfg: &Config) -> bool {
    Expiry::of(cfg, now_ns).finished(e)
}

/// Whether the entry is still in its handshake: the server has not seen the
/// final ACK (LISTEN or SYN_RCVD). Such an entry lives in the half-open map.
pub fn in_handshake(e: &FlowEntry) -> bool {
    matches!(e.server_state(), TcpState::Listen | TcpState::SynRcvd)
}

/// Advances a tracked connection by one segment (crossing on `seg.side`).
///
/// - In the handshake: the client's SYN (SYN_SENT / LISTEN), the server's
///   SYN-ACK, which must acknowledge J+1 (the client, receiving it, is
///   ESTABLISHED; the server SYN_RCVD), and the client's final ACK, which
///   must acknowledge K+1 of a SYN-ACK that was seen (both ESTABLISHED).
///   Anything else claiming to complete the handshake is `bad_ack`. An
///   arriving RST ends the attempt only where the kernel would take it:
///   from the client, inside the window the SYN-ACK offered; from the
///   server, acknowledging J+1 (RFC 9293 §3.10.7.3).
/// - After it, for what arrives (RFC 5961): an RST at exactly the next
///   expected number (or the highest number the receiver acknowledged)
///   ends the connection; elsewhere in the window it is passed, the
///   record unchanged (`challenge`: the kernel answers with a challenge
///   ACK); outside it, `bad_seq`. A SYN on a live connection is
///   `challenge` too. A FIN outside the window is `bad_seq` and does not
///   move the teardown; other segments outside it are `out_of_window`,
///   passed without moving anything. What this host sends is its own
///   stack's doing: its RST ends the connection, its SYN starts a new one.
/// - The teardown follows the FINs and the ACKs that cover them.
/// - A pure SYN on a finished tuple (both ends TIME_WAIT or CLOSED) starts a
///   new connection: [`Step::Restart`].
pub fn step(e: &mut FlowEntry, dir: Dir, seg: &Segment, now_ns: u64) -> Step {
    if let Some(s) = fast_step(e, dir, seg, now_ns) {
        return s;
    }
    let local = matches!(seg.side, Side::Egress);
    if in_handshake(e) {
        return handshake(e, dir, seg, now_ns, local);
    }
    if seg.has(tcp::RST) {
        return if local {
            Step::Remove
        } else {
            match arriving_rst(seg) {
                Ok(()) => reset(e, dir, seg),
                Err(r) => Step::Reject(r),
            }
        };
    }
    if seg.has(tcp::SYN) {
        if seg.is_pure_syn() && (local || finished(e)) {
            return Step::Restart;
        }
        return Step::Reject(Reason::Challenge);
    }
    if !local && let Err(r) = acceptable(e, dir, seg) {
        return Step::Reject(r);
    }
    e.last_seen = tick(now_ns);
    learn(e, dir, seg);
    teardown(e, dir, seg);
    Step::Update
}

/// How often a connection's `last_seen` is written on the data fast
/// path: a busy connection's record is not rewritten for every segment
/// just for the time (`conns` shows its idle time to within this).
pub const TOUCH_NS: u64 = 1_000_000_000;

/// The flags of a connection on the data fast path: both ends seen and
/// acknowledging, no FIN sent or waiting.
const FAST_FLAGS: u16 =
    flags::CLIENT_SEEN | flags::SERVER_SEEN | flags::CLIENT_ACKED | flags::SERVER_ACKED;
const NOT_FAST: u16 =
    flags::CLIENT_FIN | flags::SERVER_FIN | flags::CLIENT_FIN_PENDING | flags::SERVER_FIN_PENDING;

/// The data fast path, which [`step`] takes first and the kernel programs
/// take inline before anything else: a segment with only ACK (and PSH) set
/// of a connection past its handshake with no FIN in flight, inside its
/// window. Its numbers are learnt as [`step`] learns them (nothing else can
/// change: no FIN, so no teardown), and `last_seen` is written at most
/// once per [`TOUCH_NS`]. `None`: not such a segment, or outside the
/// window; [`step`] decides the rest.
#[inline(always)]
pub fn fast_step(e: &mut FlowEntry, dir: Dir, seg: &Segment, now_ns: u64) -> Option<Step> {
    if seg.flags & !tcp::PSH != tcp::ACK
        || e.flags & (FAST_FLAGS | NOT_FAST) != FAST_FLAGS
        || e.client_state_raw() != TcpState::Established as u8
        || e.server_state_raw() != TcpState::Established as u8
    {
        return None;
    }
    if matches!(seg.side, Side::Ingress) && acceptable(e, dir, seg).is_err() {
        return None;
    }
    if elapsed(now_ns, e.last_seen, TOUCH_NS) {
        e.last_seen = tick(now_ns);
    }
    learn(e, dir, seg);
    Some(Step::Update)
}

/// Whether an arriving RST's checksum lets it count: the kernel discards
/// one whose checksum is wrong (`bad_checksum`, dropped); one the gate
/// could not check (it carries data) passes without moving the record.
fn arriving_rst(seg: &Segment) -> Result<(), Reason> {
    match seg.csum {
        csum::GOOD => Ok(()),
        csum::BAD => Err(Reason::BadChecksum),
        _ => Err(Reason::Challenge),
    }
}

fn handshake(n: &mut FlowEntry, dir: Dir, seg: &Segment, now_ns: u64, local: bool) -> Step {
    if seg.has(tcp::RST) {
        if !local && let Err(r) = arriving_rst(seg) {
            return Step::Reject(r);
        }
        return if local || handshake_reset_ok(n, dir, seg) {
            Step::Remove
        } else {
            Step::Reject(Reason::BadSeq)
        };
    }
    let syn = seg.has(tcp::SYN);
    let ack = seg.has(tcp::ACK);
    match dir {
        Dir::FromClient if syn && !ack => {
            n.last_seen = tick(now_ns);
            if seg.end_seq() != n.client.end {
                // A new attempt on the same tuple replaces the old one.
                client_syn(n, seg);
                n.set_states(TcpState::SynSent, TcpState::Listen);
            }
            Step::Update
        }
        Dir::FromClient if ack && !syn => {
            if !n.has(flags::SERVER_SEEN) || seg.ack != n.server.end {
                return Step::Reject(Reason::BadAck);
            }
            n.last_seen = tick(now_ns);
            n.set_states(TcpState::Established, TcpState::Established);
            // Its half-open count is given back as it leaves the half-open map.
            n.flags &= !flags::COUNTED;
            // The final ACK may already carry data or a FIN.
            learn(n, dir, seg);
            teardown(n, dir, seg);
            Step::Promote
        }
        Dir::FromServer if syn && ack => {
            if seg.ack != n.client.end {
                return Step::Reject(Reason::BadAck);
            }
            n.last_seen = tick(now_ns);
            // A retransmitted SYN-ACK carries the same K; a different K
            // (the server restarted the attempt) replaces it. Windows
            // scale only when both ends offered it (RFC 7323 §2.2).
            let win = seg.window as u32;
            n.server = SeqState {
                end: seg.end_seq(),
                ack: seg.ack,
                edge: seg.ack.wrapping_add(win),
                maxwin: max1(win),
            };
            n.flags |= flags::SERVER_SEEN | flags::SERVER_ACKED;
            let offered = n.client_wscale() != NO_WSCALE && seg.wscale != NO_WSCALE;
            if offered {
                n.set_wscales(n.client_wscale(), seg.wscale);
            } else {
                n.set_wscales(0, 0);
            }
            n.set_states(TcpState::Established, TcpState::SynRcvd);
            Step::Update
        }
        _ => {
            n.last_seen = tick(now_ns);
            Step::Update
        }
    }
}

/// The flag bits of the sending end and its peer.
struct Ends {
    me_fin: u16,
    me_acked: u16,
    me_first: u16,
    me_pending: u16,
    peer_fin: u16,
    peer_acked: u16,
    peer_first: u16,
    peer_pending: u16,
}

const FROM_CLIENT: Ends = Ends {
    me_fin: flags::CLIENT_FIN,
    me_acked: flags::CLIENT_FIN_ACKED,
    me_first: flags::CLIENT_CLOSED_FIRST,
    me_pending: flags::CLIENT_FIN_PENDING,
    peer_fin: flags::SERVER_FIN,
    peer_acked: flags::SERVER_FIN_ACKED,
    peer_first: flags::SERVER_CLOSED_FIRST,
    peer_pending: flags::SERVER_FIN_PENDING,
};

const FROM_SERVER: Ends = Ends {
    me_fin: flags::SERVER_FIN,
    me_acked: flags::SERVER_FIN_ACKED,
    me_first: flags::SERVER_CLOSED_FIRST,
    me_pending: flags::SERVER_FIN_PENDING,
    peer_fin: flags::CLIENT_FIN,
    peer_acked: flags::CLIENT_FIN_ACKED,
    peer_first: flags::CLIENT_CLOSED_FIRST,
    peer_pending: flags::CLIENT_FIN_PENDING,
};

/// The teardown after a segment whose numbers were learnt already: a
/// FIN's sequence number is its sender's `end - 1`, so the FIN is
/// acknowledged by an ACK of `end`.
///
/// A FIN this host sends counts at once, and so does an arriving bare FIN
/// at exactly its sender's next number with a good checksum: the kernel
/// takes it as it comes. Any other arriving FIN the kernel could take (at
/// or after what its sender sent in order, inside the window its receiver
/// offered: behind a gap, or carrying data whose checksum the gate does not
/// check) counts once this host acknowledges exactly its number plus one:
/// the kernel took it, in order, checksum good, when the gap filled. Until
/// then it waits in `fin_pending` (the lowest such); in-order data past it,
/// or an acknowledgement past it, shows it was no FIN of that connection,
/// and it is forgotten.
fn teardown(n: &mut FlowEntry, dir: Dir, seg: &Segment) {
    let arriving = matches!(seg.side, Side::Ingress);
    let ends = match dir {
        Dir::FromClient => &FROM_CLIENT,
        Dir::FromServer => &FROM_SERVER,
    };
    if !arriving && seg.has(tcp::ACK) && n.has(ends.peer_pending) {
        let fin_next = n.fin_pending().wrapping_add(1);
        if seg.ack == fin_next {
            n.flags &= !ends.peer_pending;
            n.flags |= ends.peer_fin;
            // Sent before it had this end's FIN acknowledged: the active
            // (or a simultaneous) closer.
            if !n.has(ends.me_acked) {
                n.flags |= ends.peer_first;
            }
            match dir {
                Dir::FromClient => n.server.end = fin_next,
                Dir::FromServer => n.client.end = fin_next,
            }
        } else if seq_gt(seg.ack, fin_next) {
            n.flags &= !ends.peer_pending;
        }
    }
    let (my_end, peer_end, peer_edge) = match dir {
        Dir::FromClient => (n.client.end, n.server.end, n.server.edge),
        Dir::FromServer => (n.server.end, n.client.end, n.client.edge),
    };
    let acks_peer_fin = seg.has(tcp::ACK) && n.has(ends.peer_fin) && seq_geq(seg.ack, peer_end);
    if acks_peer_fin {
        n.flags |= ends.peer_acked;
    }
    if arriving {
        if n.has(ends.me_pending) && seq_gt(my_end, n.fin_pending()) {
            n.flags &= !ends.me_pending;
        }
        if seg.has(tcp::FIN) && !n.has(ends.me_fin) {
            let fin = seg.end_seq().wrapping_sub(1);
            let peer_acked = match dir {
                Dir::FromClient => flags::SERVER_ACKED,
                Dir::FromServer => flags::CLIENT_ACKED,
            };
            let takeable = seq_geq(fin, my_end) && (!n.has(peer_acked) || seq_geq(peer_edge, fin));
            if takeable && seg.payload_len == 0 && seg.csum == csum::GOOD && fin == my_end {
                // A bare FIN at exactly the next number, its checksum good:
                // the kernel takes it as it comes.
                n.flags = (n.flags & !ends.me_pending) | ends.me_fin;
                match dir {
                    Dir::FromClient => n.client.end = fin.wrapping_add(1),
                    Dir::FromServer => n.server.end = fin.wrapping_add(1),
                }
                if !acks_peer_fin {
                    n.flags |= ends.me_first;
                }
            } else if takeable && (!n.has(ends.me_pending) || seq_gt(n.fin_pending(), fin)) {
                n.set_fin_pending(fin);
                n.flags = (n.flags & !ends.peer_pending) | ends.me_pending;
            }
        }
    } else if seg.has(tcp::FIN) && !n.has(ends.me_fin) {
        n.flags |= ends.me_fin;
        // Sent before it had the peer's FIN: the active (or a simultaneous) closer.
        if !acks_peer_fin {
            n.flags |= ends.me_first;
        }
    }
    let client = side_state(n, &FROM_CLIENT);
    let server = side_state(n, &FROM_SERVER);
    n.set_states(client, server);
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
