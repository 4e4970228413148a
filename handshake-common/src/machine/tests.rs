//! Every transition of the state machine, driven with a fake clock.

use super::*;
use crate::flow::TcpState::*;
use std::{vec, vec::Vec};
use tcp::{ACK, FIN, RST, SYN};

const MS: u64 = 1_000_000;
const J: u32 = 1_000;
const K: u32 = 900_000;

fn seg(flags: u8, seq: u32, ack: u32, payload_len: u32) -> Segment {
    Segment {
        flags,
        seq,
        ack,
        payload_len,
        window: 65_535,
        wscale: NO_WSCALE,
        side: Side::Ingress,
        // A well-formed segment: an RST among them is one the kernel takes.
        csum: super::csum::GOOD,
    }
}

/// `s` crossing on `side`.
fn on(side: Side, s: &Segment) -> Segment {
    Segment { side, ..*s }
}

/// Where the tests' packets cross: the client is remote (its packets
/// arrive, checked against the windows), the server this host.
fn side_of(dir: Dir) -> Side {
    match dir {
        Dir::FromClient => Side::Ingress,
        Dir::FromServer => Side::Egress,
    }
}

/// A connection as the gate tracks it, driven packet by packet. Starts with
/// the client's SYN at t = 0 and advances the fake clock 1 ms per packet.
/// One tick of an entry's clock.
const TICK: u64 = 1 << crate::flow::TICK_SHIFT;

struct Conn {
    entry: FlowEntry,
    now: u64,
    established_map: bool,
}

impl Conn {
    fn syn() -> Conn {
        let e = open(&seg(SYN, J, 0, 0), true, 0, 7, true);
        Conn {
            entry: e,
            now: 0,
            established_map: false,
        }
    }

    fn established() -> Conn {
        let mut c = Conn::syn();
        c.pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
        c.pass(Dir::FromClient, seg(ACK, J + 1, K + 1, 0));
        c.expect(Established, Established);
        c
    }

    /// Feeds a packet that must pass; returns the step for inspection.
    fn pass(&mut self, dir: Dir, s: Segment) -> Step {
        self.now += MS;
        let mut e = self.entry;
        let st = step(&mut e, dir, &on(side_of(dir), &s), self.now);
        match st {
            Step::Update => self.entry = e,
            Step::Promote => {
                assert!(!self.established_map, "promoted twice");
                self.established_map = true;
                self.entry = e;
            }
            Step::Remove | Step::Restart => {}
            Step::Reject(r) => panic!("{:?} {:?} rejected as {}", dir, s, r.name()),
        }
        st
    }

    fn expect(&self, client: TcpState, server: TcpState) {
        assert_eq!(
            (self.entry.client_state(), self.entry.server_state()),
            (client, server),
            "entry {:?}",
            self.entry
        );
    }
}

#[test]
fn three_way_handshake_as_in_the_seed() {
    let mut c = Conn::syn();
    c.expect(SynSent, Listen);
    // SYN-ACK: ack = J+1, seq = K.
    c.pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
    // The client, receiving a SYN-ACK that acknowledges J+1, is ESTABLISHED
    // (as its kernel reports); the server waits in SYN_RCVD.
    c.expect(Established, SynRcvd);
    assert_eq!(c.entry.server.end, K + 1);
    assert!(
        in_handshake(&c.entry),
        "still half-open until the final ACK"
    );
    // The server checks ack == K+1.
    let st = c.pass(Dir::FromClient, seg(ACK, J + 1, K + 1, 0));
    assert!(matches!(st, Step::Promote));
    c.expect(Established, Established);
    assert!(
        !c.entry.has(flags::COUNTED),
        "the count goes back on promotion"
    );
    assert!(!in_handshake(&c.entry));
}

#[test]
fn final_ack_carrying_data_and_fin_promotes_into_the_teardown() {
    let mut c = Conn::syn();
    c.pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
    let st = c.pass(Dir::FromClient, seg(ACK | FIN, J + 1, K + 1, 5));
    assert!(matches!(st, Step::Promote));
    // The FIN under data counts once this host acknowledges it.
    c.expect(Established, Established);
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 7, 0));
    c.expect(FinWait2, CloseWait);
    assert_eq!(c.entry.client.end, J + 7, "the FIN at J+6 counts one");
}

#[test]
fn syn_ack_with_the_wrong_ack_is_rejected() {
    let c = Conn::syn();
    let st = step(
        &mut c.entry.clone(),
        Dir::FromServer,
        &on(Side::Egress, &seg(SYN | ACK, K, J + 2, 0)),
        MS,
    );
    assert_eq!(st, Step::Reject(Reason::BadAck));
}

#[test]
fn final_ack_with_the_wrong_ack_is_rejected() {
    let mut c = Conn::syn();
    c.pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
    for wrong in [K, K + 2, 0, K.wrapping_add(1 << 31)] {
        let st = step(
            &mut c.entry.clone(),
            Dir::FromClient,
            &on(Side::Ingress, &seg(ACK, J + 1, wrong, 0)),
            2 * MS,
        );
        assert_eq!(st, Step::Reject(Reason::BadAck), "ack {wrong}");
    }
    c.expect(Established, SynRcvd);
}

#[test]
fn final_ack_before_any_syn_ack_is_rejected() {
    // Nothing offered a K yet, so no ACK can complete the handshake (a
    // blind ACK guessing at it).
    let c = Conn::syn();
    for ack in [0, J + 1, K + 1] {
        let st = step(
            &mut c.entry.clone(),
            Dir::FromClient,
            &on(Side::Ingress, &seg(ACK, J + 1, ack, 0)),
            MS,
        );
        assert_eq!(st, Step::Reject(Reason::BadAck), "ack {ack}");
    }
}

#[test]
fn other_packets_in_the_handshake_change_nothing() {
    let mut c = Conn::syn();
    c.pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
    let before = c.entry;
    for (dir, s) in [
        (Dir::FromServer, seg(ACK, K + 1, J + 1, 0)),
        (Dir::FromServer, seg(SYN | ACK, K, J + 1, 0)),
        (Dir::FromServer, seg(tcp::PSH | ACK, K + 1, J + 1, 10)),
    ] {
        c.pass(dir, s);
        assert_eq!(
            (
                c.entry.client_state(),
                c.entry.server_state(),
                c.entry.created
            ),
            (before.client_state(), before.server_state(), before.created),
            "{dir:?} {s:?}"
        );
    }
}

#[test]
fn retransmitted_syn_changes_nothing() {
    let mut c = Conn::syn();
    let before = c.entry;
    c.pass(Dir::FromClient, seg(SYN, J, 0, 0));
    assert_eq!(c.entry.created, before.created);
    assert_eq!(c.entry.epoch(), before.epoch());
    assert_eq!(c.entry.client.end, J + 1);
    c.expect(SynSent, Listen);
    // Also after the SYN-ACK, and a retransmitted SYN-ACK.
    c.pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
    c.pass(Dir::FromClient, seg(SYN, J, 0, 0));
    c.pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
    c.expect(Established, SynRcvd);
}

#[test]
fn syn_with_a_new_isn_restarts_the_attempt() {
    let mut c = Conn::syn();
    c.pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
    c.pass(Dir::FromClient, seg(SYN, J + 5_000, 0, 0));
    c.expect(SynSent, Listen);
    assert_eq!(c.entry.client.end, J + 5_001);
    assert!(!c.entry.has(flags::SERVER_SEEN));
}

#[test]
fn client_closes_first_four_way() {
    let mut c = Conn::established();
    let (cs, ss) = (J + 1 + 10, K + 1 + 20); // after 10 and 20 bytes of data
    c.pass(Dir::FromClient, seg(ACK, J + 1, K + 1, 10));
    c.pass(Dir::FromServer, seg(ACK, K + 1, cs, 20));
    c.expect(Established, Established);
    // Client FIN (seq = cs).
    c.pass(Dir::FromClient, seg(FIN | ACK, cs, ss, 0));
    c.expect(FinWait1, CloseWait);
    // Server ACKs it.
    c.pass(Dir::FromServer, seg(ACK, ss, cs + 1, 0));
    c.expect(FinWait2, CloseWait);
    // Server FIN.
    c.pass(Dir::FromServer, seg(FIN | ACK, ss, cs + 1, 0));
    c.expect(TimeWait, LastAck);
    // Client's last ACK.
    c.pass(Dir::FromClient, seg(ACK, cs + 1, ss + 1, 0));
    c.expect(TimeWait, Closed);
}

#[test]
fn server_closes_first_four_way() {
    let mut c = Conn::established();
    c.pass(Dir::FromServer, seg(FIN | ACK, K + 1, J + 1, 0));
    c.expect(CloseWait, FinWait1);
    c.pass(Dir::FromClient, seg(ACK, J + 1, K + 2, 0));
    c.expect(CloseWait, FinWait2);
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 2, 0));
    c.expect(LastAck, TimeWait);
    c.pass(Dir::FromServer, seg(ACK, K + 2, J + 2, 0));
    c.expect(Closed, TimeWait);
}

#[test]
fn passive_closer_fin_carrying_the_ack() {
    // The server acknowledges the client's FIN with its own FIN (delayed ACK).
    let mut c = Conn::established();
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    c.expect(FinWait1, CloseWait);
    c.pass(Dir::FromServer, seg(FIN | ACK, K + 1, J + 2, 0));
    c.expect(TimeWait, LastAck);
    c.pass(Dir::FromClient, seg(ACK, J + 2, K + 2, 0));
    c.expect(TimeWait, Closed);
}

#[test]
fn simultaneous_close() {
    let mut c = Conn::established();
    // Both FINs cross: neither acknowledges the other's.
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    c.expect(FinWait1, CloseWait);
    c.pass(Dir::FromServer, seg(FIN | ACK, K + 1, J + 1, 0));
    c.expect(Closing, Closing);
    c.pass(Dir::FromServer, seg(ACK, K + 2, J + 2, 0));
    c.expect(TimeWait, Closing);
    c.pass(Dir::FromClient, seg(ACK, J + 2, K + 2, 0));
    c.expect(TimeWait, TimeWait);
}

#[test]
fn fin_with_payload_is_acked_after_the_payload() {
    let mut c = Conn::established();
    c.pass(
        Dir::FromClient,
        seg(FIN | ACK | tcp::PSH, J + 1, K + 1, 100),
    );
    // The data counts; the FIN, whose checksum the gate does not check
    // under data, waits for this host's ACK of it.
    assert_eq!(c.entry.client.end, J + 101);
    c.expect(Established, Established);
    // Acking only the data does not take the FIN.
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 101, 0));
    c.expect(Established, Established);
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 102, 0));
    c.expect(FinWait2, CloseWait);
    assert_eq!(c.entry.client.end, J + 102, "the FIN at J+101 counts one");
}

/// A FIN the kernel ignores (past the right edge of the window the server
/// offered) moves nothing, nor does data there: the real close afterwards
/// ends as the kernel's does.
#[test]
fn fin_and_data_past_the_right_edge_move_nothing() {
    let mut c = Conn::established();
    let far = J + 1 + 98_304;
    c.pass(Dir::FromClient, seg(FIN | ACK, far, K + 1, 0));
    c.expect(Established, Established);
    assert!(!c.entry.has(flags::CLIENT_FIN_PENDING));
    c.pass(Dir::FromClient, seg(ACK | tcp::PSH, far, K + 1, 100));
    assert_eq!(c.entry.client.end, J + 1, "data past the edge was learnt");
    // The real close, client first.
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    c.expect(FinWait1, CloseWait);
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 2, 0));
    c.expect(FinWait2, CloseWait);
    c.pass(Dir::FromServer, seg(FIN | ACK, K + 1, J + 2, 0));
    c.expect(TimeWait, LastAck);
    c.pass(Dir::FromClient, seg(ACK, J + 2, K + 2, 0));
    c.expect(TimeWait, Closed);
}

/// A FIN inside the window but behind a gap: the kernel queues it, and
/// takes it only when the gap fills; so does the record, on this host's
/// ACK of exactly the FIN's number plus one.
#[test]
fn a_fin_behind_a_gap_counts_when_the_host_acknowledges_it() {
    let mut c = Conn::established();
    let fin = J + 1 + 32_768;
    c.pass(Dir::FromClient, seg(FIN | ACK, fin, K + 1, 0));
    c.expect(Established, Established);
    assert!(c.entry.has(flags::CLIENT_FIN_PENDING));
    // The duplicate ACK the kernel answers with changes nothing.
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 1, 0));
    c.expect(Established, Established);
    // The gap fills (its data seen or not), and the kernel acknowledges
    // through the FIN.
    c.pass(Dir::FromServer, seg(ACK, K + 1, fin + 1, 0));
    c.expect(FinWait2, CloseWait);
    assert_eq!(c.entry.client.end, fin + 1);
}

/// A FIN that never was one: data in order past it, or an acknowledgement
/// past it, forgets it.
#[test]
fn a_pending_fin_is_forgotten_when_the_stream_passes_it() {
    let mut c = Conn::established();
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 11, K + 1, 0));
    assert!(c.entry.has(flags::CLIENT_FIN_PENDING));
    c.pass(Dir::FromClient, seg(ACK | tcp::PSH, J + 1, K + 1, 20));
    assert!(!c.entry.has(flags::CLIENT_FIN_PENDING), "data past it");
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 31, K + 1, 0));
    assert!(c.entry.has(flags::CLIENT_FIN_PENDING));
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 41, 0));
    assert!(!c.entry.has(flags::CLIENT_FIN_PENDING), "an ACK past it");
    c.expect(Established, Established);
    assert_eq!(
        c.entry.client.end,
        J + 41,
        "the host's ACK says how far the data got"
    );
}

/// What the kernel discards for its checksum moves nothing: an RST at the
/// exact number is dropped as `bad_checksum`, a bare FIN at the exact
/// number waits for an ACK that never comes.
#[test]
fn a_bad_checksum_moves_nothing() {
    let mut c = Conn::established();
    let bad = |s: Segment| Segment {
        csum: csum::BAD,
        ..s
    };
    let arriving = |c: &Conn, s: Segment| {
        let mut e = c.entry;
        let st = step(&mut e, Dir::FromClient, &on(Side::Ingress, &s), c.now);
        assert_eq!(e, c.entry, "a refused segment changed the entry");
        st
    };
    assert_eq!(
        arriving(&c, bad(seg(RST, J + 1, 0, 0))),
        Step::Reject(Reason::BadChecksum)
    );
    let unchecked = Segment {
        csum: csum::UNCHECKED,
        ..seg(RST | ACK, J + 1, K + 1, 10)
    };
    assert_eq!(
        arriving(&c, unchecked),
        Step::Reject(Reason::Challenge),
        "an RST with data passes without moving the record"
    );
    c.pass(Dir::FromClient, bad(seg(FIN | ACK, J + 1, K + 1, 0)));
    c.expect(Established, Established);
    c.pass(Dir::FromServer, seg(ACK | tcp::PSH, K + 1, J + 1, 10));
    c.expect(Established, Established);
    // The good one then closes as usual.
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 11, 0));
    c.expect(FinWait1, CloseWait);
}

#[test]
fn retransmitted_fin_changes_nothing() {
    let mut c = Conn::established();
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    let (flags, fin) = (c.entry.flags, c.entry.fin_pending());
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    c.expect(FinWait1, CloseWait);
    assert_eq!((c.entry.flags, c.entry.fin_pending()), (flags, fin));
    assert_eq!(c.entry.client.end, J + 2);
}

/// A connection driven into each reachable pair of states.
fn every_state() -> Vec<Conn> {
    let fin = |c: &mut Conn, d: Dir, seq, ack| c.pass(d, seg(FIN | ACK, seq, ack, 0));
    let ack = |c: &mut Conn, d: Dir, seq, ack| c.pass(d, seg(ACK, seq, ack, 0));
    let mut v = vec![Conn::syn(), Conn::syn(), Conn::established()];
    v[1].pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
    // FIN_WAIT_1 / CLOSE_WAIT, FIN_WAIT_2 / CLOSE_WAIT, TIME_WAIT / LAST_ACK,
    // TIME_WAIT / CLOSED: the client closes first.
    for n in 1..=4 {
        let mut c = Conn::established();
        fin(&mut c, Dir::FromClient, J + 1, K + 1);
        if n >= 2 {
            ack(&mut c, Dir::FromServer, K + 1, J + 2);
        }
        if n >= 3 {
            fin(&mut c, Dir::FromServer, K + 1, J + 2);
        }
        if n >= 4 {
            ack(&mut c, Dir::FromClient, J + 2, K + 2);
        }
        v.push(c);
    }
    // CLOSING / CLOSING, then TIME_WAIT / TIME_WAIT: simultaneous close.
    for n in 1..=2 {
        let mut c = Conn::established();
        fin(&mut c, Dir::FromClient, J + 1, K + 1);
        fin(&mut c, Dir::FromServer, K + 1, J + 1);
        if n == 2 {
            ack(&mut c, Dir::FromServer, K + 2, J + 2);
            ack(&mut c, Dir::FromClient, J + 2, K + 2);
        }
        v.push(c);
    }
    v
}

#[test]
fn every_state_is_reached() {
    let got: std::collections::BTreeSet<_> = every_state()
        .iter()
        .flat_map(|c| [c.entry.client_state(), c.entry.server_state()])
        .collect();
    let want: std::collections::BTreeSet<_> = TcpState::ALL.into_iter().collect();
    assert_eq!(got, want);
}

#[test]
fn rst_at_the_expected_number_removes_in_every_state() {
    for c in every_state() {
        let e = &c.entry;
        let name = std::format!("{:?} / {:?}", e.client_state(), e.server_state());
        for f in [RST, RST | ACK] {
            // This host's own RST ends it, whatever its number.
            assert_eq!(
                step(
                    &mut e.clone(),
                    Dir::FromServer,
                    &on(Side::Egress, &seg(f, 0, 0, 0)),
                    c.now + MS
                ),
                Step::Remove,
                "{name}"
            );
            // An arriving one: at the client's next number (or, in the
            // handshake, J+1, the start of the window the SYN-ACK offered).
            assert_eq!(
                step(
                    &mut e.clone(),
                    Dir::FromClient,
                    &on(Side::Ingress, &seg(f, e.client.end, 0, 0)),
                    c.now + MS
                ),
                Step::Remove,
                "{name}"
            );
        }
    }
}

#[test]
fn new_syn_on_a_tuple_in_time_wait_restarts() {
    let mut c = Conn::established();
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    c.pass(Dir::FromServer, seg(FIN | ACK, K + 1, J + 2, 0));
    c.pass(Dir::FromClient, seg(ACK, J + 2, K + 2, 0));
    c.expect(TimeWait, Closed);
    assert_eq!(
        step(
            &mut c.entry.clone(),
            Dir::FromClient,
            &on(Side::Ingress, &seg(SYN, J + 99_999, 0, 0)),
            c.now
        ),
        Step::Restart
    );
    // The former server may open the next connection on the tuple too.
    assert_eq!(
        step(
            &mut c.entry.clone(),
            Dir::FromServer,
            &on(Side::Egress, &seg(SYN, 5, 0, 0)),
            c.now
        ),
        Step::Restart
    );
    // An arriving SYN on a live connection past its handshake is not a
    // new attempt (RFC 5961 §4: the kernel answers with a challenge ACK).
    let live = every_state();
    let live = live
        .iter()
        .filter(|c| !finished(&c.entry) && !in_handshake(&c.entry));
    for c in live {
        for s in [seg(SYN, J + 7, 0, 0), seg(SYN | ACK, K, J + 1, 0)] {
            assert_eq!(
                step(
                    &mut c.entry.clone(),
                    Dir::FromClient,
                    &on(Side::Ingress, &s),
                    c.now
                ),
                Step::Reject(Reason::Challenge),
                "{:?}",
                c.entry
            );
        }
    }
}

#[test]
fn untracked_packets() {
    assert_eq!(untracked(&seg(SYN, J, 0, 0)), Untracked::Open);
    for f in [SYN | ACK, RST, RST | ACK, SYN | FIN, SYN | RST] {
        assert_eq!(untracked(&seg(f, J, 0, 0)), Untracked::Ignore, "{f:#x}");
    }
    for f in [ACK, ACK | tcp::PSH, FIN | ACK, FIN, 0] {
        assert_eq!(untracked(&seg(f, J, 0, 0)), Untracked::PickUp, "{f:#x}");
    }
}

#[test]
fn only_admitted_syns_hold_a_count() {
    assert!(open(&seg(SYN, J, 0, 0), true, 0, 3, true).has(flags::COUNTED));
    assert!(!open(&seg(SYN, J, 0, 0), true, 0, 3, false).has(flags::COUNTED));
}

#[test]
fn time_wait_lasts_two_msl() {
    let cfg = Config {
        msl_ms: 1_000,
        ..Config::DEFAULT
    };
    let mut c = Conn::established();
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    c.pass(Dir::FromServer, seg(FIN | ACK, K + 1, J + 2, 0));
    c.pass(Dir::FromClient, seg(ACK, J + 2, K + 2, 0));
    // Timed from the last segment, in whole ticks of the entry's clock.
    let t = c.now;
    assert!(!finished_expired(&c.entry, t + 2_000 * MS - TICK, &cfg));
    assert!(finished_expired(&c.entry, t + 2_000 * MS + TICK, &cfg));
    // A segment in TIME_WAIT (the FIN again) starts it again.
    let later = t + 1_500 * MS;
    c.now = later - MS;
    c.pass(Dir::FromServer, seg(FIN | ACK, K + 1, J + 2, 0));
    c.expect(TimeWait, Closed);
    assert!(!finished_expired(&c.entry, t + 2_000 * MS + TICK, &cfg));
    assert!(finished_expired(&c.entry, later + 2_000 * MS + TICK, &cfg));
    // A live connection never expires this way.
    let live = Conn::established();
    assert!(!finished_expired(&live.entry, u64::MAX, &cfg));
}

#[test]
fn half_open_timeout() {
    let cfg = Config {
        half_open_timeout_ms: 3_000,
        ..Config::DEFAULT
    };
    let c = Conn::syn();
    assert!(!half_open_expired(&c.entry, 3_000 * MS - TICK, &cfg));
    assert!(half_open_expired(&c.entry, 3_000 * MS + TICK, &cfg));
}

#[test]
fn loose_pick_up_guesses_the_client_by_port() {
    // A packet from 198.18.0.2:40000 (lo) to :80 — the source is the client.
    let e = pick_up(40_000, 80, true, 5);
    assert_eq!(
        (e.client_state(), e.server_state()),
        (Established, Established)
    );
    assert_eq!((e.client_is_lo() as u8), 1);
    assert!(e.has(flags::PICKED_UP));
    // The server's reply, where the source is the server.
    let e = pick_up(80, 40_000, true, 5);
    assert_eq!((e.client_is_lo() as u8), 0);
}

#[test]
fn sequence_comparison_wraps() {
    assert!(seq_geq(5, u32::MAX - 5));
    assert!(!seq_geq(u32::MAX - 5, 5));
    assert!(seq_geq(7, 7));
}

#[test]
fn flag_combinations_no_tcp_sends_are_refused() {
    use crate::machine::tcp::{PSH, URG};
    let bad = [
        ("SYN+FIN", SYN | FIN),
        ("SYN+RST", SYN | RST),
        ("SYN+ACK+FIN", SYN | ACK | FIN),
        ("NULL", 0),
        ("FIN alone", FIN),
        ("XMAS without ACK", FIN | PSH | URG),
        ("PSH alone", PSH),
    ];
    for (name, flags) in bad {
        assert_eq!(
            check(40_000, 80, &seg(flags, 1, 0, 0)),
            Err(Reason::BadFlags),
            "{name}"
        );
    }
    let good = [
        ("SYN", SYN),
        ("SYN+PSH", SYN | PSH),
        ("SYN-ACK", SYN | ACK),
        ("ACK", ACK),
        ("FIN+ACK", FIN | ACK),
        ("RST", RST),
        ("RST+ACK", RST | ACK),
        ("XMAS with ACK", FIN | PSH | URG | ACK),
    ];
    for (name, flags) in good {
        assert_eq!(check(40_000, 80, &seg(flags, 1, 0, 0)), Ok(()), "{name}");
    }
}

#[test]
fn port_zero_is_malformed() {
    assert_eq!(check(0, 80, &seg(SYN, 1, 0, 0)), Err(Reason::Malformed));
    assert_eq!(check(40_000, 0, &seg(SYN, 1, 0, 0)), Err(Reason::Malformed));
}

mod window;
