//! Connections driven packet by packet through both real programs with
//! BPF_PROG_TEST_RUN: what arrives goes through the XDP program, what leaves
//! through the TC egress program, sharing their maps as on an interface.
//! After every packet: the verdict, the reason counter that moved, and both
//! ends' states (and which map holds the entry). Needs root; `cargo xtask
//! test` runs it.

mod common;

use common::*;
use handshake_common::machine::tcp::{ACK, FIN, PSH, RST, SYN};
use handshake_common::{Config, FlowEntry, Reason, TcpState, TcpState::*};

const J: u32 = 1_000;
const K: u32 = 50_000;

/// Which end of the connection this host (the gate's interface) is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    Server,
    Client,
}

/// Which end sends a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    C,
    S,
}

/// One packet and what must follow from it.
struct Pkt {
    from: End,
    flags: u8,
    seq: u32,
    /// The ACK field; `None` leaves the ACK flag off.
    ack: Option<u32>,
    payload: usize,
    /// The reason it is counted under.
    reason: Reason,
    /// (client, server) states afterwards; `None`: no entry.
    states: Option<(TcpState, TcpState)>,
}

fn p(
    from: End,
    flags: u8,
    seq: u32,
    ack: Option<u32>,
    reason: Reason,
    states: Option<(TcpState, TcpState)>,
) -> Pkt {
    Pkt {
        from,
        flags,
        seq,
        ack,
        payload: 0,
        reason,
        states,
    }
}

fn data(from: End, seq: u32, ack: u32, len: usize, states: (TcpState, TcpState)) -> Pkt {
    Pkt {
        payload: len,
        ..p(from, PSH, seq, Some(ack), Reason::Pass, Some(states))
    }
}

use End::{C, S};
use Reason::{BadAck, BadSeq, Challenge, OutOfWindow, Pass};

/// Far outside any window the builder's segments offer (64,240 bytes,
/// unscaled).
const FAR: u32 = 1 << 30;

/// SYN, SYN-ACK, final ACK.
#[rustfmt::skip]
fn handshake() -> Vec<Pkt> {
    vec![
        p(C, SYN, J, None, Pass, Some((SynSent, Listen))),
        p(S, SYN, K, Some(J + 1), Pass, Some((Established, SynRcvd))),
        p(C, 0, J + 1, Some(K + 1), Pass, Some((Established, Established))),
    ]
}

/// One line per packet: who sends it, its flags, seq and ack, the reason it
/// must be counted under, and both states after it.
#[rustfmt::skip]
fn script(name: &str) -> (Host, Vec<Pkt>) {
    let mut v = Vec::new();
    let host = match name {
        "client closes first" => {
            v.push(p(C, SYN, J, None, Pass, Some((SynSent, Listen))));
            // A retransmitted SYN changes nothing.
            v.push(p(C, SYN, J, None, Pass, Some((SynSent, Listen))));
            v.push(p(S, SYN, K, Some(J + 1), Pass, Some((Established, SynRcvd))));
            // A final ACK with the wrong number is out of state.
            v.push(p(C, 0, J + 1, Some(K + 2), BadAck, Some((Established, SynRcvd))));
            v.push(p(C, 0, J + 1, Some(K + 1), Pass, Some((Established, Established))));
            v.push(data(C, J + 1, K + 1, 10, (Established, Established)));
            v.push(data(S, K + 1, J + 11, 20, (Established, Established)));
            v.push(p(C, FIN, J + 11, Some(K + 21), Pass, Some((FinWait1, CloseWait))));
            v.push(p(S, 0, K + 21, Some(J + 12), Pass, Some((FinWait2, CloseWait))));
            v.push(p(S, FIN, K + 21, Some(J + 12), Pass, Some((TimeWait, LastAck))));
            v.push(p(C, 0, J + 12, Some(K + 22), Pass, Some((TimeWait, Closed))));
            // A new SYN on the tuple in TIME_WAIT opens a new connection.
            v.push(p(C, SYN, J + 9_000, None, Pass, Some((SynSent, Listen))));
            Host::Server
        }
        "server closes first" => {
            v.extend(handshake());
            v.push(p(S, FIN, K + 1, Some(J + 1), Pass, Some((CloseWait, FinWait1))));
            v.push(p(C, 0, J + 1, Some(K + 2), Pass, Some((CloseWait, FinWait2))));
            v.push(p(C, FIN, J + 1, Some(K + 2), Pass, Some((LastAck, TimeWait))));
            v.push(p(S, 0, K + 2, Some(J + 2), Pass, Some((Closed, TimeWait))));
            Host::Server
        }
        "simultaneous close" => {
            v.extend(handshake());
            v.push(p(C, FIN, J + 1, Some(K + 1), Pass, Some((FinWait1, CloseWait))));
            // The server's FIN crosses the client's: it does not ack it.
            v.push(p(S, FIN, K + 1, Some(J + 1), Pass, Some((Closing, Closing))));
            v.push(p(S, 0, K + 2, Some(J + 2), Pass, Some((TimeWait, Closing))));
            v.push(p(C, 0, J + 2, Some(K + 2), Pass, Some((TimeWait, TimeWait))));
            Host::Server
        }
        "RST from the server while established" => {
            v.extend(handshake());
            v.push(p(S, RST, K + 1, Some(J + 1), Pass, None));
            Host::Server
        }
        "RST from the client in FIN_WAIT_2" => {
            v.extend(handshake());
            v.push(p(C, FIN, J + 1, Some(K + 1), Pass, Some((FinWait1, CloseWait))));
            v.push(p(S, 0, K + 1, Some(J + 2), Pass, Some((FinWait2, CloseWait))));
            v.push(p(C, RST, J + 2, None, Pass, None));
            Host::Server
        }
        "port closed: the server answers the SYN with RST" => {
            v.push(p(C, SYN, J, None, Pass, Some((SynSent, Listen))));
            v.push(p(S, RST, 0, Some(J + 1), Pass, None));
            Host::Server
        }
        "ACK before any SYN-ACK" => {
            v.push(p(C, SYN, J, None, Pass, Some((SynSent, Listen))));
            v.push(p(C, 0, J + 1, Some(K + 1), BadAck, Some((SynSent, Listen))));
            Host::Server
        }
        "this host's own SYN-ACK acking the wrong number is counted, not dropped" => {
            v.push(p(C, SYN, J, None, Pass, Some((SynSent, Listen))));
            v.push(p(S, SYN, K, Some(J + 5), BadAck, Some((SynSent, Listen))));
            v.push(p(S, SYN, K, Some(J + 1), Pass, Some((Established, SynRcvd))));
            Host::Server
        }
        "this host as the client" => {
            v.push(p(C, SYN, J, None, Pass, Some((SynSent, Listen))));
            // A SYN-ACK that does not acknowledge J+1 is dropped on arrival.
            v.push(p(S, SYN, K, Some(J + 7), BadAck, Some((SynSent, Listen))));
            v.push(p(S, SYN, K, Some(J + 1), Pass, Some((Established, SynRcvd))));
            v.push(p(C, 0, J + 1, Some(K + 1), Pass, Some((Established, Established))));
            v.push(data(S, K + 1, J + 1, 100, (Established, Established)));
            v.push(p(C, FIN, J + 1, Some(K + 101), Pass, Some((FinWait1, CloseWait))));
            v.push(p(S, FIN, K + 101, Some(J + 2), Pass, Some((TimeWait, LastAck))));
            v.push(p(C, 0, J + 2, Some(K + 102), Pass, Some((TimeWait, Closed))));
            Host::Client
        }
        "blind RST, FIN, SYN and data on a live connection" => {
            v.extend(handshake());
            v.push(data(C, J + 1, K + 1, 10, (Established, Established)));
            v.push(data(S, K + 1, J + 11, 20, (Established, Established)));
            let est = Some((Established, Established));
            // Outside the window: the kernel ignores them; so does the record.
            v.push(p(C, RST, J + 11 + FAR, None, BadSeq, est));
            v.push(p(C, RST, (J + 11).wrapping_sub(FAR), Some(K + 21), BadSeq, est));
            v.push(p(C, FIN, J + 11 + FAR, Some(K + 21), BadSeq, est));
            // In the window, acknowledging what the server never sent.
            v.push(p(C, FIN, J + 11, Some(K + 21 + FAR), BadSeq, est));
            // In the window but not exact: a challenge ACK, the record stays.
            v.push(p(C, RST, J + 11 + 5_000, None, Challenge, est));
            v.push(p(C, SYN, J + 77, None, Challenge, est));
            // Data outside the window passes, moving nothing.
            v.push(Pkt { payload: 5, ..p(C, PSH, J + 11 + FAR, Some(K + 21), OutOfWindow, est) });
            // The real FIN, in the window, moves the teardown ...
            v.push(p(C, FIN, J + 11, Some(K + 21), Pass, Some((FinWait1, CloseWait))));
            // ... and an RST at exactly the next number ends it.
            v.push(p(C, RST, J + 12, None, Pass, None));
            Host::Server
        }
        "the peer's real RST after a retransmission" => {
            v.extend(handshake());
            v.push(data(C, J + 1, K + 1, 100, (Established, Established)));
            // The kernel took only the first 50 bytes (the gate saw 100).
            v.push(p(S, 0, K + 1, Some(J + 51), Pass, Some((Established, Established))));
            v.push(data(C, J + 51, K + 1, 50, (Established, Established)));
            // An RST at what the server acknowledged resets.
            v.push(p(C, RST, J + 51, None, Pass, None));
            Host::Server
        }
        "blind RST from a remote server" => {
            v.push(p(C, SYN, J, None, Pass, Some((SynSent, Listen))));
            // In SYN_SENT an RST counts only if it acknowledges J+1.
            v.push(p(S, RST, K, Some(J + 2), BadSeq, Some((SynSent, Listen))));
            v.push(p(S, SYN, K, Some(J + 1), Pass, Some((Established, SynRcvd))));
            v.push(p(C, 0, J + 1, Some(K + 1), Pass, Some((Established, Established))));
            let est = Some((Established, Established));
            v.push(p(S, RST, K + 1 + FAR, None, BadSeq, est));
            v.push(p(S, RST, K + 1 + 100, Some(J + 1), Challenge, est));
            v.push(p(S, RST, K + 1, None, Pass, None));
            Host::Client
        }
        "blind RST in the handshake" => {
            v.push(p(C, SYN, J, None, Pass, Some((SynSent, Listen))));
            v.push(p(S, SYN, K, Some(J + 1), Pass, Some((Established, SynRcvd))));
            // Outside the window the SYN-ACK offered: ignored.
            v.push(p(C, RST, J + 1 + FAR, None, BadSeq, Some((Established, SynRcvd))));
            // Anywhere inside it, the kernel drops the request.
            v.push(p(C, RST, J + 1 + 1_000, None, Pass, None));
            Host::Server
        }
        other => panic!("no script {other:?}"),
    };
    (host, v)
}

const SCRIPTS: &[&str] = &[
    "client closes first",
    "server closes first",
    "simultaneous close",
    "RST from the server while established",
    "RST from the client in FIN_WAIT_2",
    "port closed: the server answers the SYN with RST",
    "ACK before any SYN-ACK",
    "this host's own SYN-ACK acking the wrong number is counted, not dropped",
    "this host as the client",
    "blind RST, FIN, SYN and data on a live connection",
    "the peer's real RST after a retransmission",
    "blind RST from a remote server",
    "blind RST in the handshake",
];

/// The one tracked entry, if any, and whether it is in the half-open map.
fn entry(h: &Harness) -> Option<(FlowEntry, bool)> {
    let half = h.half_open_entries();
    let est = h.established_entries();
    assert!(
        half.len() + est.len() <= 1,
        "more than one entry: {half:?} {est:?}"
    );
    half.first()
        .map(|e| (*e, true))
        .or(est.first().map(|e| (*e, false)))
}

fn run_script(h: &mut Harness, name: &str, client: &str, server: &str, vlans: usize) {
    let (host, pkts) = script(name);
    h.reset(&[80, 40_000]);
    let cfg = h.config();
    let monitor = cfg.mode() == handshake_common::Mode::Monitor;
    let flow = syn(client, 40_000, server, 80).vlans(vlans);
    let label = format!(
        "{name} ({client} → {server}, {vlans} VLAN tags, {})",
        cfg.mode().name()
    );
    for (i, pkt) in pkts.iter().enumerate() {
        let tcp = match pkt.from {
            C => flow.seg(pkt.flags, pkt.seq, pkt.ack, pkt.payload),
            S => flow.reverse().seg(pkt.flags, pkt.seq, pkt.ack, pkt.payload),
        };
        let arrives = (pkt.from == C) == (host == Host::Server);
        let count = |r| if arrives { h.count(r) } else { h.count_out(r) };
        let before = count(pkt.reason);
        let got = if arrives {
            h.run(&tcp.bytes())
        } else {
            h.run_out(&tcp.bytes())
        };
        let want = match (arrives, pkt.reason.is_drop() && !monitor) {
            (true, true) => XDP_DROP,
            (true, false) => XDP_PASS,
            (false, _) => TC_ACT_OK,
        };
        let at = format!(
            "{label}: packet {i} ({:?} {}, flags {:#04x})",
            pkt.from,
            if arrives { "arriving" } else { "leaving" },
            pkt.flags | if pkt.ack.is_some() { ACK } else { 0 }
        );
        assert_eq!(got, want, "{at}: verdict");
        assert_eq!(
            count(pkt.reason),
            before + 1,
            "{at}: counter {}",
            pkt.reason.name()
        );
        let seen = entry(h);
        assert_eq!(
            seen.map(|(e, _)| (e.client_state(), e.server_state())),
            pkt.states,
            "{at}: states"
        );
        if let Some((e, half_open)) = seen {
            assert_eq!(
                half_open,
                matches!(e.server_state(), Listen | SynRcvd),
                "{at}: in the wrong map"
            );
        }
    }
    assert_eq!(
        h.global_half_open(&cfg),
        u32::from(entry(h).is_some_and(|(_, half)| half) && host == Host::Server),
        "{label}: half-open count after the script"
    );
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn both_programs_follow_every_script() {
    // In monitor mode a would-be drop passes, and moves nothing all the same.
    for mode in [
        handshake_common::Mode::Enforce,
        handshake_common::Mode::Monitor,
    ] {
        let mut h = Harness::new(Config {
            mode: mode as u32,
            ..Config::DEFAULT
        });
        for name in SCRIPTS {
            run_script(&mut h, name, "198.18.0.2", "198.18.0.1", 0);
            run_script(&mut h, name, "2001:db8::2", "2001:db8::1", 1);
            run_script(&mut h, name, "198.18.0.2", "198.18.0.1", 2);
        }
    }
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn this_hosts_own_syns_take_no_half_open_count() {
    // Per-source cap 1: an outbound SYN neither counts nor is refused.
    let cfg = Config {
        max_half_open_per_source: 1,
        max_half_open: 1,
        ..Config::DEFAULT
    };
    let h = Harness::new(cfg);
    for port in 40_000..40_005 {
        let out = syn("198.18.0.1", port, "198.18.0.9", 443);
        assert_eq!(h.run_out(&out.bytes()), TC_ACT_OK);
    }
    assert_eq!(h.half_open_entries().len(), 5);
    assert_eq!(h.global_half_open(&cfg), 0);
    // An arriving SYN still gets the one slot.
    assert_eq!(
        h.run(&syn("198.18.0.2", 1, "198.18.0.1", 80).bytes()),
        XDP_PASS
    );
    assert_eq!(
        h.run(&syn("198.18.0.3", 1, "198.18.0.1", 80).bytes()),
        XDP_DROP
    );
    // An RST to an outbound attempt gives nothing back (it took nothing).
    let rst = syn("198.18.0.1", 40_000, "198.18.0.9", 443)
        .reverse()
        .seg(RST, 0, Some(J + 1), 0);
    assert_eq!(h.run(&rst.bytes()), XDP_PASS);
    assert_eq!(h.global_half_open(&cfg), 1);
    assert_eq!(h.count(Reason::Pass), 2);
}
