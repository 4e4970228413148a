//! Per-packet cost with BPF_PROG_TEST_RUN: each packet class through the
//! real programs, next to a no-op program of the same kind measured the
//! same way in the same run.
//!
//! Two ways to measure, chosen per class:
//! - steady classes (the same packet gets the same treatment every time:
//!   non-TCP, a SYN refused over a cap, data of an established connection,
//!   a retransmitted SYN-ACK or FIN, malformed) run `repeat` times in one
//!   call, and the kernel reports the mean; the median of several calls
//!   is kept;
//! - classes that change state (a SYN admitted, the final ACK that promotes
//!   the entry) need a fresh flow each time, so each packet runs once and
//!   the median over many packets is kept. The no-op is then measured once
//!   per call too, so both carry the same per-call timer overhead.

use std::time::Duration;

use crate::median;
use handshake_common::{Config, maps};
use handshake_lab::packet::{Tcp, syn, tcp, udp};
use handshake_user::testrun::{Harness, XDP_DROP, XDP_PASS};

const SRV: &str = "198.18.0.1";
const J: u32 = 1_000;
const K: u32 = 9_000;

/// One packet class's cost and its baseline's.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Cost {
    pub class: &'static str,
    /// `xdp` or `tc`.
    pub program: &'static str,
    /// `repeat N` or `single`.
    pub method: String,
    pub ns: f64,
    pub baseline_ns: f64,
    pub ratio: f64,
    /// The goal as a ratio, where the issue sets one.
    pub goal: Option<f64>,
}

pub struct Options {
    /// Repeats per steady call.
    pub repeat: u32,
    /// Steady calls per class (the median is kept).
    pub calls: usize,
    /// Fresh flows per state-changing class.
    pub singles: usize,
}

fn ns(d: Duration) -> f64 {
    d.as_nanos() as f64
}

pub fn run(o: &Options) -> Vec<Cost> {
    let mut out = Vec::new();
    let mut h = Harness::new(Config {
        max_half_open_per_source: 1,
        ..Config::DEFAULT
    });
    let steady = |h: &mut Harness, program: &str, egress: bool, pkt: &[u8]| -> f64 {
        median(
            (0..o.calls)
                .map(|_| ns(h.time(program, egress, pkt, o.repeat)))
                .collect(),
        )
    };
    let noop_xdp = |h: &mut Harness, pkt: &[u8]| steady(h, maps::NOOP_XDP, false, pkt);
    let noop_tc = |h: &mut Harness, pkt: &[u8]| steady(h, maps::NOOP_TC, true, pkt);
    let method = format!("repeat {} × {} calls, median", o.repeat, o.calls);
    let mut push = |class, program, method: &str, ns: f64, base: f64, goal| {
        out.push(Cost {
            class,
            program,
            method: method.to_string(),
            ns,
            baseline_ns: base,
            ratio: ns / base,
            goal,
        })
    };

    // Non-TCP.
    let pkt = udp("198.18.0.2", SRV);
    let (g, b) = (
        steady(&mut h, maps::XDP_PROGRAM, false, &pkt),
        noop_xdp(&mut h, &pkt),
    );
    push("non-TCP (UDP)", "xdp", &method, g, b, Some(1.2));

    // A SYN over the per-source cap (the source holds its one attempt).
    let first = syn("198.18.0.66", 1, SRV, 80);
    assert_eq!(h.run(&first.bytes()), XDP_PASS);
    let over = syn("198.18.0.66", 2, SRV, 80).bytes();
    assert_eq!(h.run(&over), XDP_DROP, "the cap refuses the second SYN");
    let (g, b) = (
        steady(&mut h, maps::XDP_PROGRAM, false, &over),
        noop_xdp(&mut h, &over),
    );
    push("SYN dropped over a cap", "xdp", &method, g, b, Some(3.0));

    // An established connection: its data, a retransmitted SYN-ACK (same
    // path as the first), a FIN (then its retransmissions).
    let c = syn("198.18.0.2", 40_000, SRV, 80);
    assert_eq!(h.run(&c.bytes()), XDP_PASS);
    let syn_ack = c.reverse().seg(tcp::SYN, K, Some(J + 1), 0).bytes();
    let (g, b) = (
        steady(&mut h, maps::TC_PROGRAM, true, &syn_ack),
        noop_tc(&mut h, &syn_ack),
    );
    push("SYN-ACK on egress", "tc", &method, g, b, None);
    assert_eq!(h.run(&c.then_ack(K + 1).bytes()), XDP_PASS);
    let data = c.seg(0, J + 1, Some(K + 1), 100).bytes();
    let (g, b) = (
        steady(&mut h, maps::XDP_PROGRAM, false, &data),
        noop_xdp(&mut h, &data),
    );
    push(
        "data, established connection",
        "xdp",
        &method,
        g,
        b,
        Some(3.0),
    );
    let leaving = c.reverse().seg(0, K + 1, Some(J + 101), 100).bytes();
    let (g, b) = (
        steady(&mut h, maps::TC_PROGRAM, true, &leaving),
        noop_tc(&mut h, &leaving),
    );
    push(
        "data, established connection, leaving",
        "tc",
        &method,
        g,
        b,
        Some(2.0),
    );
    let fin = c.seg(tcp::FIN, J + 101, Some(K + 1), 0).bytes();
    let (g, b) = (
        steady(&mut h, maps::XDP_PROGRAM, false, &fin),
        noop_xdp(&mut h, &fin),
    );
    push("FIN", "xdp", &method, g, b, None);

    // What checking an arriving RST's (or bare FIN's) checksum costs: the
    // same RST inside the window but not at the next number (`challenge`,
    // nothing moves), bare (checksummed) and with a byte of data (not
    // checksummed, the same verdict). Data segments pay nothing for it.
    let rst = c.seg(tcp::RST, J + 2 + 1_000, None, 0).bytes();
    let rst_data = c.seg(tcp::RST, J + 2 + 1_000, None, 1).bytes();
    for (class, pkt) in [
        ("RST in the window (challenge), checksum checked", &rst),
        (
            "the same RST with a byte of data (not checksummed)",
            &rst_data,
        ),
    ] {
        assert_eq!(h.run(pkt), XDP_PASS, "{class}");
        let (g, b) = (
            steady(&mut h, maps::XDP_PROGRAM, false, pkt),
            noop_xdp(&mut h, pkt),
        );
        push(class, "xdp", &method, g, b, None);
    }

    // Malformed: a TCP data offset past the end.
    let mut bad = syn("198.18.0.3", 1, SRV, 80).bytes();
    bad[14 + 20 + 12] = 0xf0;
    let (g, b) = (
        steady(&mut h, maps::XDP_PROGRAM, false, &bad),
        noop_xdp(&mut h, &bad),
    );
    push("malformed", "xdp", &method, g, b, None);

    // State-changing classes: a fresh flow each time, one run per call.
    let mut h = Harness::new(Config {
        max_half_open: 0,
        max_half_open_per_source: 0,
        ..Config::DEFAULT
    });
    let single = format!("one run × {} flows, median", o.singles);
    let flows: Vec<Tcp> = (0..o.singles)
        .map(|i| {
            let src = format!("198.19.{}.{}", i / 250, 1 + i % 250);
            syn(&src, 1024 + (i % 60_000) as u16, SRV, 80)
        })
        .collect();
    let (mut admitted, mut promoted, mut base) = (Vec::new(), Vec::new(), Vec::new());
    for f in &flows {
        let s = f.bytes();
        base.push(ns(h.time(maps::NOOP_XDP, false, &s, 1)));
        admitted.push(ns(h.time(maps::XDP_PROGRAM, false, &s, 1)));
        h.run_out(&f.reverse().seg(tcp::SYN, K, Some(f.seq + 1), 0).bytes());
        promoted.push(ns(h.time(
            maps::XDP_PROGRAM,
            false,
            &f.then_ack(K + 1).bytes(),
            1,
        )));
    }
    assert_eq!(
        h.established_entries().len(),
        flows.len(),
        "every flow was promoted"
    );
    let base = median(base);
    push(
        "SYN admitted",
        "xdp",
        &single,
        median(admitted),
        base,
        Some(8.0),
    );
    push(
        "final ACK (promotes the entry)",
        "xdp",
        &single,
        median(promoted),
        base,
        Some(6.0),
    );
    match spoofed(o) {
        Ok(c) => out.push(c),
        Err(e) => eprintln!("bench: the spoofed-SYN class was not measured: {e:#}"),
    }
    match cookies(o) {
        Ok(costs) => out.extend(costs),
        Err(e) => eprintln!("bench: the kernel-asking classes were not measured: {e:#}"),
    }
    out
}

/// A spoofed flood's SYN refused over the global cap: a different source
/// each time, with the per-source and verified maps already full (their
/// capacity in sources), so the class pays for whatever the refusal reads
/// or writes there, and with the verified reserve in play (the global
/// count inside the reserved share, where whether the source is verified
/// decides), as in every real flood.
fn spoofed(o: &Options) -> anyhow::Result<Cost> {
    let mut h = Harness::new(Config {
        max_half_open: 10,
        max_half_open_per_source: 0,
        verified_reserve_pct: 50,
        half_open_timeout_ms: 120_000,
        ..Config::DEFAULT
    });
    crate::scale::fill_sources(&mut h, crate::scale::SOURCES)?;
    // The unverified share (5 of 10) taken: what comes next is refused
    // unless its source is verified.
    for i in 0..5 {
        let src = format!("198.18.0.{}", 65 + i);
        assert_eq!(h.run(&syn(&src, 1, SRV, 80).bytes()), XDP_PASS);
    }
    let (mut cost, mut base) = (Vec::new(), Vec::new());
    for i in 0..o.singles {
        // Past the stored sources (198.18.128.0 to 198.19.127.255): new.
        let src = format!("198.19.{}.{}", 128 + i / 250, 1 + i % 250);
        let pkt = syn(&src, 1024 + (i % 60_000) as u16, SRV, 80).bytes();
        base.push(ns(h.time(maps::NOOP_XDP, false, &pkt, 1)));
        cost.push(ns(h.time(maps::XDP_PROGRAM, false, &pkt, 1)));
    }
    let refused = h.count(handshake_common::Reason::Global);
    anyhow::ensure!(
        refused == o.singles as u64,
        "{refused} of {} refused over the global cap",
        o.singles
    );
    let (g, b) = (median(cost), median(base));
    Ok(Cost {
        class: "spoofed SYN dropped over the global cap (a new source each, 64k sources and 64k verified stored, the reserve in play)",
        program: "xdp",
        method: format!("one run × {} SYNs, median", o.singles),
        ns: g,
        baseline_ns: b,
        ratio: g / b,
        goal: Some(3.0),
    })
}

/// The classes that ask the kernel, in a namespace of their own with a
/// listening socket and `tcp_syncookies=2`: ACKs of no connection, and the
/// cookie path (`overflow=cookie`), a SYN over the global cap answered
/// with a SYN-ACK from XDP. One run per packet (the program rewrites the
/// frame, which a repeated run would then see), against the no-op measured
/// the same way.
fn cookies(o: &Options) -> anyhow::Result<Vec<Cost>> {
    let lab_ns = handshake_lab::Netns::new(&format!("bpk{}", std::process::id() % 100_000))?;
    lab_ns.sysctl("net.ipv4.tcp_syncookies=2")?;
    let (singles, o) = (o.singles, Options { ..*o });
    lab_ns.run(move || {
        let _listener = std::net::TcpListener::bind("0.0.0.0:80")?;
        let mut out = Vec::new();
        // Unknown ACKs (`unknown-flows=verify`): a socket lookup finds
        // nothing (port 81), or only the listener, and the kernel's cookie
        // check fails (port 80); dropped as no_conn, nothing stored, so the
        // same packet gets the same treatment every time.
        let mut h = Harness::new(Config::DEFAULT);
        let method = format!("repeat {} × {} calls, median", o.repeat, o.calls);
        for (class, port) in [
            ("unknown ACK dropped (no socket)", 81),
            ("unknown ACK dropped (listener, no valid cookie)", 80),
        ] {
            let pkt = syn("198.19.0.9", 40_000, SRV, port)
                .seg(0, 7, Some(9), 0)
                .bytes();
            assert_eq!(h.run(&pkt), XDP_DROP, "{class}");
            let med = |h: &mut Harness, prog| {
                median(
                    (0..o.calls)
                        .map(|_| ns(h.time(prog, false, &pkt, o.repeat)))
                        .collect(),
                )
            };
            let (g, b) = (med(&mut h, maps::XDP_PROGRAM), med(&mut h, maps::NOOP_XDP));
            anyhow::ensure!(h.established_entries().is_empty(), "{class}: state kept");
            out.push(Cost {
                class,
                program: "xdp",
                method: method.clone(),
                ns: g,
                baseline_ns: b,
                ratio: g / b,
                goal: Some(6.0),
            });
        }
        for (class, options) in [
            ("SYN answered with a cookie (MSS only)", None),
            (
                "SYN answered with a cookie (timestamps, Linux options)",
                Some(handshake_common::cookie::Options {
                    timestamps: true,
                    sack: true,
                    window_scaling: true,
                    rcv_wscale: 7,
                }),
            ),
        ] {
            let mut h = Harness::new(Config {
                max_half_open: 1,
                max_half_open_per_source: 0,
                verified_reserve_pct: 0,
                overflow: handshake_common::Overflow::Cookie as u32,
                cookie_options: options.map_or(0, |o| o.to_bits()),
                half_open_timeout_ms: 120_000,
                ..Config::DEFAULT
            });
            assert_eq!(h.run(&syn("198.18.0.65", 1, SRV, 80).bytes()), XDP_PASS);
            let (mut cost, mut base) = (Vec::new(), Vec::new());
            for i in 0..singles {
                let src = format!("198.19.{}.{}", i / 250, 1 + i % 250);
                let mut f = syn(&src, 1024 + (i % 60_000) as u16, SRV, 80);
                if options.is_some() {
                    f = f.linux_options(i as u32);
                }
                let pkt = f.bytes();
                base.push(ns(h.time(maps::NOOP_XDP, false, &pkt, 1)));
                cost.push(ns(h.time(maps::XDP_PROGRAM, false, &pkt, 1)));
            }
            let sent = h.count_out(handshake_common::Reason::Cookie);
            anyhow::ensure!(
                sent == singles as u64,
                "{class}: {sent} of {singles} answered"
            );
            let (g, b) = (median(cost), median(base));
            out.push(Cost {
                class,
                program: "xdp",
                method: format!("one run × {singles} SYNs, median"),
                ns: g,
                baseline_ns: b,
                ratio: g / b,
                goal: Some(12.0),
            });
        }
        Ok(out)
    })
}
