//! The windows: blind segments, sequence checks, window scaling, and
//! what the kernel is asked about unknown flows.

use super::*;

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
    assert_eq!((c.entry.client_wscale(), c.entry.server_wscale()), (7, 9));
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
    assert_eq!((c.entry.client_wscale(), c.entry.server_wscale()), (0, 0));
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
