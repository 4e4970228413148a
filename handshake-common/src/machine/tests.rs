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
    c.expect(FinWait1, CloseWait);
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
                c.entry.changed_ns
            ),
            (
                before.client_state(),
                before.server_state(),
                before.changed_ns
            ),
            "{dir:?} {s:?}"
        );
    }
}

#[test]
fn retransmitted_syn_changes_nothing() {
    let mut c = Conn::syn();
    let before = c.entry;
    c.pass(Dir::FromClient, seg(SYN, J, 0, 0));
    assert_eq!(c.entry.created_ns, before.created_ns);
    assert_eq!(c.entry.epoch, before.epoch);
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
    assert_eq!(c.entry.client.end, J + 102);
    // Acking only the data does not ack the FIN.
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 101, 0));
    c.expect(FinWait1, CloseWait);
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 102, 0));
    c.expect(FinWait2, CloseWait);
}

#[test]
fn retransmitted_fin_changes_nothing() {
    let mut c = Conn::established();
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    let changed = c.entry.changed_ns;
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    c.expect(FinWait1, CloseWait);
    assert_eq!(c.entry.changed_ns, changed);
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
    let t = c.entry.changed_ns;
    assert!(!finished_expired(&c.entry, t + 2_000 * MS - 1, &cfg));
    assert!(finished_expired(&c.entry, t + 2_000 * MS, &cfg));
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
    assert!(!half_open_expired(&c.entry, 3_000 * MS - 1, &cfg));
    assert!(half_open_expired(&c.entry, 3_000 * MS, &cfg));
}

#[test]
fn loose_pick_up_guesses_the_client_by_port() {
    // A packet from 198.18.0.2:40000 (lo) to :80 — the source is the client.
    let e = pick_up(40_000, 80, true, 5);
    assert_eq!(
        (e.client_state(), e.server_state()),
        (Established, Established)
    );
    assert_eq!(e.client_is_lo, 1);
    assert!(e.has(flags::PICKED_UP));
    // The server's reply, where the source is the server.
    let e = pick_up(80, 40_000, true, 5);
    assert_eq!(e.client_is_lo, 0);
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

/// An arriving segment from the client of `c` (which the tests keep
/// remote), not applied.
fn arriving(c: &Conn, s: Segment) -> Step {
    step(
        &mut c.entry.clone(),
        Dir::FromClient,
        &on(Side::Ingress, &s),
        c.now + MS,
    )
}

#[test]
fn blind_rsts_move_nothing_unless_exact() {
    let mut c = Conn::established();
    c.pass(Dir::FromClient, seg(ACK | tcp::PSH, J + 1, K + 1, 100));
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 101, 0));
    let next = J + 101;
    // Far outside the window: the kernel ignores it.
    for seq in [
        next.wrapping_add(1 << 30),
        next.wrapping_sub(1 << 30),
        next.wrapping_add(3 << 30),
    ] {
        assert_eq!(
            arriving(&c, seg(RST, seq, 0, 0)),
            Step::Reject(Reason::BadSeq),
            "{seq}"
        );
    }
    // In the window but not exact: a challenge ACK, the record stays.
    for seq in [next + 1, next + 60_000, next - 50] {
        assert_eq!(
            arriving(&c, seg(RST | ACK, seq, K + 1, 0)),
            Step::Reject(Reason::Challenge),
            "{seq}"
        );
    }
    // Exact: it resets.
    assert_eq!(arriving(&c, seg(RST, next, 0, 0)), Step::Remove);
}

#[test]
fn rst_at_what_the_receiver_acknowledged_resets() {
    // The gate saw data (J+1..J+101) the kernel never took: it
    // acknowledged only J+51, and the peer's RST answers that.
    let mut c = Conn::established();
    c.pass(Dir::FromClient, seg(ACK | tcp::PSH, J + 1, K + 1, 100));
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 51, 0));
    assert_eq!(arriving(&c, seg(RST, J + 51, 0, 0)), Step::Remove);
}

#[test]
fn rst_after_the_fin_may_sit_on_the_fin() {
    // RCV.NXT - 1 after a FIN (Linux's tcp_reset_check).
    let mut c = Conn::established();
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    c.pass(Dir::FromServer, seg(ACK, K + 1, J + 2, 0));
    assert_eq!(arriving(&c, seg(RST, J + 1, 0, 0)), Step::Remove);
}

#[test]
fn fin_outside_the_window_is_bad_seq_and_moves_nothing() {
    let c = Conn::established();
    for s in [
        seg(FIN | ACK, J + 1 + (1 << 20), K + 1, 0),
        seg(FIN | ACK, (J + 1).wrapping_sub(1 << 20), K + 1, 0),
        // In the window, but acknowledging what the server never sent.
        seg(FIN | ACK, J + 1, K + 1 + (1 << 20), 0),
    ] {
        assert_eq!(arriving(&c, s), Step::Reject(Reason::BadSeq), "{s:?}");
    }
    let mut c = c;
    c.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    c.expect(FinWait1, CloseWait);
}

#[test]
fn data_outside_the_window_passes_and_moves_nothing() {
    let c = Conn::established();
    assert_eq!(
        arriving(&c, seg(ACK | tcp::PSH, J + 1 + (1 << 24), K + 1, 10)),
        Step::Reject(Reason::OutOfWindow)
    );
    assert_eq!(
        arriving(&c, seg(ACK, J + 1, K + 1 + (1 << 24), 0)),
        Step::Reject(Reason::OutOfWindow)
    );
    assert!(!Reason::OutOfWindow.is_drop() && !Reason::Challenge.is_drop());
}

#[test]
fn what_the_kernel_takes_is_never_refused() {
    let mut c = Conn::established();
    c.pass(Dir::FromClient, seg(ACK | tcp::PSH, J + 1, K + 1, 1_000));
    c.pass(Dir::FromServer, seg(ACK | tcp::PSH, K + 1, J + 1_001, 500));
    // A retransmission of the data, a keepalive (one before the next
    // number), a window probe at the right edge, an old ACK.
    for s in [
        seg(ACK | tcp::PSH, J + 1, K + 501, 1_000),
        seg(ACK, J + 1_000, K + 501, 0),
        seg(ACK, J + 1_001, K + 501, 1),
        seg(ACK | tcp::PSH, J + 1_001 + 65_534, K + 501, 1),
        seg(ACK, J + 1_001, K + 1, 0),
    ] {
        assert!(matches!(arriving(&c, s), Step::Update), "{s:?}");
    }
    // A zero window: the FIN at the next number still fits.
    let mut z = Conn::established();
    let mut s = seg(ACK, K + 1, J + 1, 0);
    s.window = 0;
    z.pass(Dir::FromServer, s);
    z.pass(Dir::FromClient, seg(FIN | ACK, J + 1, K + 1, 0));
    z.expect(FinWait1, CloseWait);
}

#[test]
fn window_scale_applies_when_both_ends_offer_it() {
    let mut syn = seg(SYN, J, 0, 0);
    syn.wscale = 7;
    let mut c = Conn {
        entry: open(&syn, true, 0, 7, true),
        now: 0,
        established_map: false,
    };
    let mut sa = seg(SYN | ACK, K, J + 1, 0);
    sa.wscale = 9;
    c.pass(Dir::FromServer, sa);
    assert_eq!((c.entry.client_wscale, c.entry.server_wscale), (7, 9));
    c.pass(Dir::FromClient, seg(ACK, J + 1, K + 1, 0));
    // The server's window after the handshake is 1,000 << 9 = 512,000.
    let mut w = seg(ACK, K + 1, J + 1, 0);
    w.window = 1_000;
    c.pass(Dir::FromServer, w);
    assert_eq!(c.entry.server.edge, J + 1 + 512_000);
    assert!(matches!(
        arriving(&c, seg(FIN | ACK, J + 500_000, K + 1, 0)),
        Step::Update
    ));
    // Without the server's offer neither end scales.
    let mut c = Conn {
        entry: open(&syn, true, 0, 7, true),
        now: 0,
        established_map: false,
    };
    c.pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
    assert_eq!((c.entry.client_wscale, c.entry.server_wscale), (0, 0));
}

#[test]
fn rst_in_the_handshake_is_checked_as_the_kernel_checks_it() {
    let mut c = Conn::syn();
    c.pass(Dir::FromServer, seg(SYN | ACK, K, J + 1, 0));
    // From the client: anywhere in the window the SYN-ACK offered.
    assert_eq!(arriving(&c, seg(RST, J + 1 + 1_000, 0, 0)), Step::Remove);
    assert_eq!(
        arriving(&c, seg(RST, J + 1 + (1 << 20), 0, 0)),
        Step::Reject(Reason::BadSeq)
    );
    // From a remote server (this host the client, in SYN_SENT): only with
    // an ACK of J+1.
    let from_server = |s: Segment| {
        step(
            &mut c.entry.clone(),
            Dir::FromServer,
            &on(Side::Ingress, &s),
            c.now,
        )
    };
    assert_eq!(from_server(seg(RST | ACK, 0, J + 1, 0)), Step::Remove);
    assert_eq!(
        from_server(seg(RST | ACK, 0, J + 2, 0)),
        Step::Reject(Reason::BadSeq)
    );
    assert_eq!(
        from_server(seg(RST, K + 1, 0, 0)),
        Step::Reject(Reason::BadSeq)
    );
}

#[test]
fn a_picked_up_flow_learns_its_numbers() {
    let mut e = pick_up(40_000, 80, true, 5);
    first_segment(&mut e, true, &seg(ACK, 7_000, 9_000, 0), 6);
    assert!(e.has(flags::CLIENT_SEEN) && e.has(flags::CLIENT_ACKED));
    assert_eq!(e.client.end, 7_000);
    // Nothing from the server yet: its RST can only be checked against
    // what the client acknowledged.
    let rst = |seq| {
        step(
            &mut e.clone(),
            Dir::FromServer,
            &on(Side::Ingress, &seg(RST, seq, 0, 0)),
            7,
        )
    };
    assert_eq!(rst(9_000), Step::Remove);
    assert_eq!(rst(9_001), Step::Reject(Reason::Challenge));
    assert_eq!(rst(9_000 + (1 << 31)), Step::Reject(Reason::BadSeq));
}

#[test]
fn the_kernels_answer_decides_an_unknown_flow() {
    let ack = seg(ACK, J, K, 0);
    let fin = seg(FIN | ACK, J, K, 0);
    let rst = seg(RST, J, 0, 0);
    for (u, s, lookup, want) in [
        (
            Untracked::PickUp,
            ack,
            Lookup::Socket(sk_state::ESTABLISHED),
            Untracked::PickUp,
        ),
        (
            Untracked::PickUp,
            ack,
            Lookup::Socket(sk_state::NEW_SYN_RECV),
            Untracked::PickUp,
        ),
        (
            Untracked::PickUp,
            ack,
            Lookup::Socket(sk_state::TIME_WAIT),
            Untracked::Ignore,
        ),
        (
            Untracked::Ignore,
            rst,
            Lookup::Socket(sk_state::ESTABLISHED),
            Untracked::Ignore,
        ),
        (
            Untracked::PickUp,
            ack,
            Lookup::Listener { cookie: true },
            Untracked::CookieAck,
        ),
        (
            Untracked::PickUp,
            fin,
            Lookup::Listener { cookie: true },
            Untracked::CookieAck,
        ),
        (
            Untracked::Ignore,
            rst,
            Lookup::Listener { cookie: true },
            Untracked::NoConn,
        ),
        (
            Untracked::PickUp,
            ack,
            Lookup::Listener { cookie: false },
            Untracked::NoConn,
        ),
        (Untracked::PickUp, ack, Lookup::Nothing, Untracked::NoConn),
        (Untracked::Ignore, rst, Lookup::Nothing, Untracked::NoConn),
    ] {
        assert_eq!(verified(u, &s, lookup), want, "{u:?} {s:?} {lookup:?}");
    }
    use crate::UnknownFlows::{PickUp, Verify};
    assert!(needs_lookup(Untracked::PickUp, Side::Ingress, Verify));
    assert!(!needs_lookup(Untracked::Open, Side::Ingress, Verify));
    assert!(!needs_lookup(Untracked::PickUp, Side::Egress, Verify));
    assert!(!needs_lookup(Untracked::PickUp, Side::Ingress, PickUp));
    let e = cookie_pick_up(false, 1);
    assert_eq!(
        e.dir_of(false),
        Dir::FromClient,
        "the cookie's ACK is the client's"
    );
}
