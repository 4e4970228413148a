//! Differential fuzzing: random packet sequences over a few flows, in both
//! directions, through the real kernel programs (BPF_PROG_TEST_RUN: arriving
//! packets through XDP, leaving ones through TC egress) and through the
//! reference model in `handshake_common::model`; after every packet the
//! verdict, the reason it was counted under and both states of the flow must
//! be the same, and after every sequence the global half-open count.
//!
//! `HANDSHAKE_FUZZ_SEQUENCES` sets how many sequences (100,000 by default;
//! the VM runs fewer, as an emulated CPU is slow), `HANDSHAKE_FUZZ_SEED` the
//! seed (printed at the start, and with any failure, as the command that
//! replays it: sequence `i` draws from its own generator, seeded from the
//! seed and `i`, so `HANDSHAKE_FUZZ_FROM=i` starts right at it).
//!
//! The programs run in a network namespace of the test's own, where
//! listeners on the servers' ports stand for this host's services, so the
//! socket lookups of `unknown-flows=verify` meet a real kernel: what it
//! answers (a listener, and no SYN cookie sent, or nothing at all) is the
//! model's input too.

mod common;
#[path = "differential/sweep.rs"]
mod sweep;

use std::net::IpAddr;

use common::*;
use handshake_common::flow::NO_WSCALE;
use handshake_common::flow::{AF_INET, AF_INET6, Endpoint};
use handshake_common::machine::{Segment, tcp as flag};
use handshake_common::model::{Lookup, Model, Packet, Side};
use handshake_common::prefix::{self, Listed};
use handshake_common::{Config, FlowKey, Mode, Overflow, Reason, TcpState, UnknownFlows, window};
use handshake_lab::Netns;

/// A flow of the sequences: `client` opens it towards `server`; `remote`
/// says which end is across the wire (its packets arrive through XDP),
/// the other is this host (its packets leave through TC egress).
struct FlowDef {
    client: (&'static str, u16),
    server: (&'static str, u16),
    client_is_remote: bool,
}

const FLOWS: [FlowDef; 7] = [
    // Two from one source, to share its per-source budget.
    FlowDef {
        client: ("198.18.0.66", 40_001),
        server: ("198.18.0.1", 80),
        client_is_remote: true,
    },
    FlowDef {
        client: ("198.18.0.66", 40_002),
        server: ("198.18.0.1", 80),
        client_is_remote: true,
    },
    FlowDef {
        client: ("2001:db8::66", 40_003),
        server: ("2001:db8::1", 443),
        client_is_remote: true,
    },
    // This host as the client.
    FlowDef {
        client: ("198.18.0.1", 50_000),
        server: ("198.18.0.99", 8443),
        client_is_remote: false,
    },
    // More sources to port 80, for the per-port and global caps.
    FlowDef {
        client: ("198.18.0.67", 40_004),
        server: ("198.18.0.1", 80),
        client_is_remote: true,
    },
    FlowDef {
        client: ("198.18.0.68", 40_005),
        server: ("198.18.0.1", 80),
        client_is_remote: true,
    },
    // Port 0: malformed whatever it carries.
    FlowDef {
        client: ("198.18.0.69", 0),
        server: ("198.18.0.1", 80),
        client_is_remote: true,
    },
];

/// Destination ports whose counts the sequences touch.
const PORTS: [u16; 4] = [80, 443, 8443, 50_000];

/// Ports this host listens on in the test's namespace (IPv4 80, IPv6 443):
/// the servers of the flows whose clients are remote.
const LISTENING: [(bool, u16); 2] = [(true, 80), (false, 443)];

/// The window field of every generated segment (the packet builder's).
const WINDOW: u16 = 64_240;

/// What the generator remembers of a flow, to make packets that fit it
/// (most of the time).
#[derive(Clone, Copy, Default)]
struct Seqs {
    j: u32,
    k: u32,
    client_next: u32,
    server_next: u32,
    /// The next step of a well-behaved connection (see [`scripted`]).
    phase: u8,
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn endpoint(addr: IpAddr, port: u16) -> Endpoint {
    let mut a = [0u8; 16];
    match addr {
        IpAddr::V4(v) => a[..4].copy_from_slice(&v.octets()),
        IpAddr::V6(v) => a = v.octets(),
    }
    Endpoint {
        addr: a,
        port: port.to_be(),
    }
}

/// One generated packet: from the client or the server of `flow`.
#[derive(Clone, Debug)]
struct Gen {
    flow: usize,
    from_client: bool,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: usize,
    /// The TCP checksum made wrong (the kernel would discard the segment).
    bad_csum: bool,
}

impl Gen {
    fn side(&self) -> Side {
        let f = &FLOWS[self.flow];
        if self.from_client == f.client_is_remote {
            Side::Ingress
        } else {
            Side::Egress
        }
    }

    fn ends(&self) -> ((&'static str, u16), (&'static str, u16)) {
        let f = &FLOWS[self.flow];
        if self.from_client {
            (f.client, f.server)
        } else {
            (f.server, f.client)
        }
    }

    fn model_packet(&self) -> Packet {
        let ((sa, sp), (da, dp)) = self.ends();
        let family = if ip(sa).is_ipv4() { AF_INET } else { AF_INET6 };
        Packet {
            family,
            src: endpoint(ip(sa), sp),
            dst: endpoint(ip(da), dp),
            seg: Segment {
                flags: self.flags,
                seq: self.seq,
                ack: self.ack,
                payload_len: self.payload as u32,
                window: WINDOW,
                // The builder's segments carry no options.
                wscale: NO_WSCALE,
                side: self.side(),
                // What the parser makes of the checksum (the programs run
                // the same parser on the same bytes).
                csum: self.parsed_csum(),
            },
        }
    }

    /// What the kernel in the test's namespace has for this packet's
    /// tuple, as the XDP program would find it: only listeners live
    /// there, and no SYN cookie was ever sent from it.
    fn lookup(&self) -> Lookup {
        let ((_, _), (da, dp)) = self.ends();
        if LISTENING.contains(&(ip(da).is_ipv4(), dp)) {
            Lookup::Listener { cookie: false }
        } else {
            Lookup::Nothing
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let ((sa, sp), (da, dp)) = self.ends();
        let mut t = syn(sa, sp, da, dp);
        t.syn = false;
        t.seq = self.seq;
        t.ack = (self.flags & flag::ACK != 0).then_some(self.ack);
        t.payload = vec![b'x'; self.payload];
        let mut b = t.bytes();
        // Every flag combination, whatever the builder offers: the flag byte
        // is byte 13 of the TCP header; the checksum made right again (or,
        // as drawn, wrong).
        let v4 = ip(sa).is_ipv4();
        let tcp = 14 + if v4 { 20 } else { 40 };
        b[tcp + 13] = self.flags;
        if self.flags & flag::ACK == 0 {
            b[tcp + 8..tcp + 12].copy_from_slice(&self.ack.to_be_bytes());
        }
        let (h, payload) = etherparse::TcpHeader::from_slice(&b[tcp..]).expect("a TCP header");
        let sum = match (ip(sa), ip(da)) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                h.calc_checksum_ipv4_raw(s.octets(), d.octets(), payload)
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                h.calc_checksum_ipv6_raw(s.octets(), d.octets(), payload)
            }
            _ => unreachable!("one family per flow"),
        }
        .expect("a checksum");
        let sum = if self.bad_csum { sum ^ 0x0100 } else { sum };
        b[tcp + 16..tcp + 18].copy_from_slice(&sum.to_be_bytes());
        b
    }

    /// [`handshake_common::machine::Segment::csum`] as the parser finds it
    /// in [`Gen::bytes`].
    fn parsed_csum(&self) -> u8 {
        let bytes = self.bytes();
        let mut facts = handshake_common::fuzz::empty_facts();
        match handshake_common::parse::parse(&handshake_common::parse::Bytes(&bytes), &mut facts) {
            handshake_common::parse::Parsed::Tcp => facts.seg.csum,
            _ => handshake_common::machine::csum::UNCHECKED,
        }
    }
}

/// The next packet of a well-behaved connection on `flow`: the handshake,
/// some data, then a four-way teardown with the client closing first.
fn scripted(flow: usize, s: &mut Seqs, rng: &mut fastrand::Rng) -> Gen {
    let (from_client, flags, seq, ack) = match s.phase {
        0 => {
            s.j = rng.u32(1..);
            s.client_next = s.j.wrapping_add(1);
            (true, flag::SYN, s.j, 0)
        }
        1 => {
            s.k = rng.u32(1..);
            s.server_next = s.k.wrapping_add(1);
            (false, flag::SYN | flag::ACK, s.k, s.client_next)
        }
        2 => (true, flag::ACK, s.client_next, s.server_next),
        3 => {
            s.client_next = s.client_next.wrapping_add(1);
            (
                true,
                flag::FIN | flag::ACK,
                s.client_next.wrapping_sub(1),
                s.server_next,
            )
        }
        4 => (false, flag::ACK, s.server_next, s.client_next),
        5 => {
            s.server_next = s.server_next.wrapping_add(1);
            (
                false,
                flag::FIN | flag::ACK,
                s.server_next.wrapping_sub(1),
                s.client_next,
            )
        }
        _ => (true, flag::ACK, s.client_next, s.server_next),
    };
    s.phase = (s.phase + 1) % 7;
    Gen {
        flow,
        from_client,
        flags,
        seq,
        ack,
        payload: 0,
        bad_csum: false,
    }
}

/// Draws the next packet on one of `active` flows: a third of the time the
/// next step of a well-behaved connection, otherwise a move of a real
/// connection with the right numbers or, now and then, wrong ones, and
/// sometimes anything at all.
fn draw(rng: &mut fastrand::Rng, seqs: &mut [Seqs; FLOWS.len()], active: &[usize]) -> Gen {
    let flow = active[rng.usize(..active.len())];
    let s = &mut seqs[flow];
    if rng.u8(..3) == 0 {
        return scripted(flow, s, rng);
    }
    let sometimes_wrong = |rng: &mut fastrand::Rng, right: u32| {
        if rng.u8(..8) == 0 { rng.u32(..) } else { right }
    };
    let (from_client, flags, seq, ack, payload) = match rng.u8(..12) {
        0 | 1 => {
            // SYN: a retransmission, or a new attempt.
            if s.j == 0 || rng.bool() {
                s.j = rng.u32(1..);
                s.client_next = s.j.wrapping_add(1);
            }
            (true, flag::SYN, s.j, 0, 0)
        }
        2 => {
            if s.k == 0 || rng.u8(..4) == 0 {
                s.k = rng.u32(1..);
                s.server_next = s.k.wrapping_add(1);
            }
            let ack = sometimes_wrong(rng, s.j.wrapping_add(1));
            (false, flag::SYN | flag::ACK, s.k, ack, 0)
        }
        3 | 4 => {
            let ack = sometimes_wrong(rng, s.k.wrapping_add(1));
            (true, flag::ACK, s.client_next, ack, 0)
        }
        5 => {
            let n = rng.usize(1..100);
            let p = (true, flag::ACK | 0x08, s.client_next, s.server_next, n);
            s.client_next = s.client_next.wrapping_add(n as u32);
            p
        }
        6 => {
            let n = rng.usize(1..100);
            let p = (false, flag::ACK | 0x08, s.server_next, s.client_next, n);
            s.server_next = s.server_next.wrapping_add(n as u32);
            p
        }
        7 | 8 => {
            // A FIN, from either end, acknowledging what the other sent.
            let from_client = rng.bool();
            let (seq, ack) = if from_client {
                (s.client_next, s.server_next)
            } else {
                (s.server_next, s.client_next)
            };
            if from_client {
                s.client_next = s.client_next.wrapping_add(1);
            } else {
                s.server_next = s.server_next.wrapping_add(1);
            }
            (from_client, flag::FIN | flag::ACK, seq, ack, 0)
        }
        9 => {
            // An ACK covering everything the other end sent (its FIN too).
            let from_client = rng.bool();
            let (seq, ack) = if from_client {
                (s.client_next, s.server_next)
            } else {
                (s.server_next, s.client_next)
            };
            (from_client, flag::ACK, seq, ack, 0)
        }
        10 => {
            let from_client = rng.bool();
            let seq = if from_client {
                s.client_next
            } else {
                s.server_next
            };
            (
                from_client,
                flag::RST | (rng.u8(..2) * flag::ACK),
                seq,
                0,
                0,
            )
        }
        _ => (
            rng.bool(),
            rng.u8(..64),
            rng.u32(..),
            rng.u32(..),
            rng.usize(..3),
        ),
    };
    Gen {
        flow,
        from_client,
        flags,
        seq,
        ack,
        payload,
        // Now and then a segment the kernel would discard for its checksum.
        bad_csum: rng.u8(..10) == 0,
    }
}

/// A configuration for one sequence: small caps, so the limits come into
/// play; long timeouts, so nothing ages out during a sequence (the model
/// and the kernel read the clock a moment apart); no SYN rate, which is
/// timed to the nanosecond.
fn draw_config(rng: &mut fastrand::Rng) -> Config {
    Config {
        mode: if rng.u8(..4) == 0 {
            Mode::Monitor
        } else {
            Mode::Enforce
        } as u32,
        overflow: if rng.bool() {
            Overflow::Drop
        } else {
            Overflow::Pass
        } as u32,
        max_half_open: [0, 1, 2, 3][rng.usize(..4)],
        max_half_open_per_source: [0, 1, 2][rng.usize(..3)],
        max_half_open_per_port: [0, 1, 2][rng.usize(..3)],
        verified_reserve_pct: [0, 50][rng.usize(..2)],
        unknown_flows: if rng.bool() {
            UnknownFlows::Verify
        } else {
            UnknownFlows::PickUp
        } as u32,
        half_open_timeout_ms: 120_000,
        msl_ms: 600_000,
        ..Config::DEFAULT
    }
}

/// Prefix lists for one sequence: none half the time, else a few of these
/// over the flows' addresses, nested so the most specific must decide.
fn draw_lists(rng: &mut fastrand::Rng) -> Vec<Listed> {
    const CANDIDATES: [(&str, u8, u32); 7] = [
        ("198.18.0.67", 32, prefix::DENY),
        ("198.18.0.64", 30, prefix::ALLOW),
        ("198.18.0.64", 26, prefix::DENY),
        ("198.18.0.66", 32, prefix::ALLOW),
        ("198.18.0.96", 27, prefix::DENY),
        ("2001:db8::66", 128, prefix::DENY),
        ("2001:db8::", 64, prefix::ALLOW),
    ];
    if rng.bool() {
        return Vec::new();
    }
    CANDIDATES
        .iter()
        .filter(|_| rng.u8(..3) == 0)
        .map(|&(addr, len, list)| {
            let a = ip(addr);
            Listed {
                family: if a.is_ipv4() { AF_INET } else { AF_INET6 },
                addr: endpoint(a, 0).addr,
                len,
                list,
            }
        })
        .collect()
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name}={v:?} is not a number"))
        })
        .unwrap_or(default)
}

fn state(v: u8) -> &'static str {
    TcpState::from_u8(v).map_or("?", |s| s.name())
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn kernel_programs_agree_with_the_model() {
    let sequences = env_u64("HANDSHAKE_FUZZ_SEQUENCES", 100_000);
    let from = env_u64("HANDSHAKE_FUZZ_FROM", 0);
    let seed = env_u64("HANDSHAKE_FUZZ_SEED", fastrand::u64(..));
    println!("differential: {sequences} sequences from {from}, seed {seed}");
    let ns = Netns::new(&format!("df{}", std::process::id() % 100_000)).unwrap();
    ns.run(move || {
        let _listeners: Vec<std::net::TcpListener> = LISTENING
            .iter()
            .map(|&(v4, port)| {
                let addr = if v4 { "0.0.0.0" } else { "[::]" };
                std::net::TcpListener::bind(format!("{addr}:{port}")).unwrap()
            })
            .collect();
        run(sequences, from, seed);
        Ok(())
    })
    .unwrap();
}

fn run(sequences: u64, from: u64, seed: u64) {
    // The smallest tables a gate takes: the maps are read whole after every
    // packet, and the IPv4 established table's read is of every slot.
    let mut h = Harness::sized(Config::DEFAULT, handshake_user::gate::MIN_CONNECTIONS);
    let mut packets = 0u64;
    let mut reasons = std::collections::BTreeMap::<&str, u64>::new();
    let mut states = std::collections::BTreeSet::<&str>::new();
    let start = std::time::Instant::now();
    for i in from..from + sequences {
        let mut rng = fastrand::Rng::with_seed(seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let mut cfg = draw_config(&mut rng);
        let lists = draw_lists(&mut rng);
        cfg.prefix_lists = lists.iter().fold(0, |b, p| b | p.list);
        h.reset(&PORTS);
        h.reset_counters();
        h.set_prefixes(&lists);
        h.set(cfg);
        let mut model = Model {
            prefixes: lists.clone(),
            ..Model::default()
        };
        let mut seqs = [Seqs::default(); FLOWS.len()];
        let mut counted = [[0u64; Reason::COUNT as usize]; 2];
        let mut log: Vec<String> = Vec::new();
        // A few flows at a time, so they meet each other's limits often;
        // the port-0 flow only now and then, as it always gets one answer.
        let mut active: Vec<usize> = (0..FLOWS.len() - 1).collect();
        rng.shuffle(&mut active);
        active.truncate(rng.usize(2..=4));
        if rng.u8(..16) == 0 {
            active.push(FLOWS.len() - 1);
        }
        let len = rng.usize(6..24);
        for _ in 0..len {
            let g = draw(&mut rng, &mut seqs, &active);
            let p = g.model_packet();
            let side = g.side();
            let want = model.packet(side, &p, &cfg, handshake_user::monotonic_ns(), g.lookup());
            let action = match side {
                Side::Ingress => h.run(&g.bytes()),
                Side::Egress => h.run_out(&g.bytes()),
            };
            packets += 1;
            *reasons.entry(want.name()).or_default() += 1;
            log.push(format!("{side:?} {g:?} -> model {}", want.name()));
            let fail = |what: String| -> ! {
                panic!(
                    "sequence {i}: {what}\nconfig: {cfg:?}\nlists: {lists:?}\npackets:\n  {}\nreplay: \
                     HANDSHAKE_FUZZ_SEED={seed} HANDSHAKE_FUZZ_FROM={i} HANDSHAKE_FUZZ_SEQUENCES=1",
                    log.join("\n  ")
                )
            };
            let want_action = match side {
                Side::Egress => TC_ACT_OK,
                Side::Ingress if want.is_drop() && cfg.mode() == Mode::Enforce => XDP_DROP,
                Side::Ingress => XDP_PASS,
            };
            if action != want_action {
                fail(format!("action {action}, the model's {want_action}"));
            }
            let s = (side == Side::Egress) as usize;
            counted[s][want as usize] += 1;
            let have = match side {
                Side::Ingress => h.count(want),
                Side::Egress => h.count_out(want),
            };
            if have != counted[s][want as usize] {
                fail(format!(
                    "counted {have} under {}, the model {}: the kernel gave another reason",
                    want.name(),
                    counted[s][want as usize]
                ));
            }
            let (key, _) = FlowKey::normalise(p.family, &p.src, &p.dst);
            let kernel = h
                .entry(&key)
                .map(|(e, half)| (e.client_state_raw(), e.server_state_raw(), half));
            let reference = model.states(&p);
            if let Some((c, s, _)) = reference {
                states.insert(state(c));
                states.insert(state(s));
            }
            if kernel != reference {
                let show = |v: Option<(u8, u8, bool)>| match v {
                    None => "no entry".to_string(),
                    Some((c, s, half)) => format!(
                        "{} / {} ({})",
                        state(c),
                        state(s),
                        if half { "half-open" } else { "established" }
                    ),
                };
                fail(format!(
                    "states: kernel {}, model {}",
                    show(kernel),
                    show(reference)
                ));
            }
        }
        let ep = window::epoch(
            handshake_user::monotonic_ns(),
            window::bucket_width_ns(cfg.half_open_timeout_ms),
        );
        let kernel = h.global_half_open(&cfg);
        let reference = model.global.live(ep);
        assert_eq!(
            kernel, reference,
            "sequence {i}: global half-open count; replay: HANDSHAKE_FUZZ_SEED={seed} \
             HANDSHAKE_FUZZ_FROM={i} HANDSHAKE_FUZZ_SEQUENCES=1"
        );
        // A source has an entry exactly when one of its SYNs was let through.
        let reference: Vec<_> = model.sources.keys().copied().collect();
        assert_eq!(
            h.source_keys(),
            reference,
            "sequence {i}: the per-source entries; replay: HANDSHAKE_FUZZ_SEED={seed} \
             HANDSHAKE_FUZZ_FROM={i} HANDSHAKE_FUZZ_SEQUENCES=1"
        );
        // The kernel's count of its maps (what `status` shows) is the
        // host's count of the same entries, expiry included: after every
        // 64th sequence and the last (a count walks every slot of both
        // maps, a millisecond or two).
        if i % 64 != 0 && i + 1 != from + sequences {
            continue;
        }
        let now = handshake_user::monotonic_ns();
        let x = handshake_common::machine::Expiry::of(&cfg, now);
        let mut reference = handshake_common::tally::Tally::default();
        for e in h.half_open_entries() {
            reference.add(&e, true, &x);
        }
        for e in h.established_entries() {
            reference.add(&e, false, &x);
        }
        assert_eq!(
            h.tally(now),
            reference,
            "sequence {i}: the counts by state; replay: HANDSHAKE_FUZZ_SEED={seed} \
             HANDSHAKE_FUZZ_FROM={i} HANDSHAKE_FUZZ_SEQUENCES=1"
        );
        if i + 1 == from + sequences {
            sweep::check(&h, &cfg, now, i, seed);
        }
    }
    println!(
        "differential: {sequences} sequences, {packets} packets, all agree ({:.1} s)\n  \
         reasons: {reasons:?}\n  states: {states:?}",
        start.elapsed().as_secs_f64()
    );
    // The sequences must reach what they are meant to test (with a few
    // thousand sequences they always do).
    if sequences >= 1_000 {
        for r in [
            Reason::Pass,
            Reason::Malformed,
            Reason::PerSource,
            Reason::PerPort,
            Reason::Global,
            Reason::BadAck,
            Reason::BadFlags,
            Reason::OverflowPass,
            Reason::NoConn,
            Reason::BadSeq,
            Reason::Challenge,
            Reason::OutOfWindow,
        ] {
            assert!(reasons.contains_key(r.name()), "no packet got {}", r.name());
        }
        for s in TcpState::ALL {
            assert!(
                states.contains(s.name()),
                "no connection reached {}",
                s.name()
            );
        }
    }
}
