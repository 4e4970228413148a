//! The real XDP program driven with BPF_PROG_TEST_RUN: packets in, verdicts,
//! counters and map contents out. Needs root; `cargo xtask test` runs it.

mod common;

use common::*;
use handshake_common::machine::tcp::SYN;
use handshake_common::{Config, Mode, Overflow, Reason, TcpState};

const SRV: &str = "198.18.0.1";
const ATK: &str = "198.18.0.66";

fn cfg(per_source: u32, global: u32) -> Config {
    Config {
        max_half_open_per_source: per_source,
        max_half_open: global,
        ..Config::DEFAULT
    }
}

/// One case: a configuration, packets with the verdict each must get, and
/// the counters that must have moved.
struct Case {
    name: &'static str,
    cfg: Config,
    packets: Vec<(Vec<u8>, u32)>,
    counts: &'static [(Reason, u64)],
    half_open_after: usize,
}

fn syns_from(src: &str, ports: std::ops::Range<u16>) -> Vec<Vec<u8>> {
    ports.map(|p| syn(src, p, SRV, 80).bytes()).collect()
}

fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    // Per-source cap: exactly at the cap passes, one over drops, others unaffected.
    let mut p: Vec<(Vec<u8>, u32)> = syns_from(ATK, 1000..1003)
        .into_iter()
        .map(|b| (b, XDP_PASS))
        .collect();
    p.push((syn(ATK, 1003, SRV, 80).bytes(), XDP_DROP));
    p.push((syn("198.18.0.2", 5000, SRV, 80).bytes(), XDP_PASS));
    v.push(Case {
        name: "per-source cap: at the cap passes, one over drops, another source passes",
        cfg: cfg(3, 100),
        packets: p,
        counts: &[(Reason::Pass, 4), (Reason::PerSource, 1)],
        half_open_after: 4,
    });
    // Retransmitted SYN: not a second attempt.
    v.push(Case {
        name: "retransmitted SYNs are not counted twice",
        cfg: cfg(1, 100),
        packets: vec![
            (syn(ATK, 1000, SRV, 80).bytes(), XDP_PASS),
            (syn(ATK, 1000, SRV, 80).bytes(), XDP_PASS),
            (syn(ATK, 1000, SRV, 80).bytes(), XDP_PASS),
            (syn(ATK, 1001, SRV, 80).bytes(), XDP_DROP),
        ],
        counts: &[(Reason::Pass, 3), (Reason::PerSource, 1)],
        half_open_after: 1,
    });
    // Global cap.
    let mut p: Vec<(Vec<u8>, u32)> = (0..4)
        .map(|i| {
            (
                syn(&format!("198.18.1.{i}"), 2000, SRV, 80).bytes(),
                XDP_PASS,
            )
        })
        .collect();
    p.push((syn("198.18.1.9", 2000, SRV, 80).bytes(), XDP_DROP));
    v.push(Case {
        name: "global cap: the fifth source is refused",
        cfg: cfg(0, 4),
        packets: p.clone(),
        counts: &[(Reason::Pass, 4), (Reason::Global, 1)],
        half_open_after: 4,
    });
    // overflow=pass: over the global cap, pass untracked.
    let mut p2 = p.clone();
    p2.last_mut().unwrap().1 = XDP_PASS;
    v.push(Case {
        name: "global overflow with overflow=pass passes the SYN untracked",
        cfg: Config {
            overflow: Overflow::Pass as u32,
            ..cfg(0, 4)
        },
        packets: p2,
        counts: &[(Reason::Pass, 5), (Reason::Global, 0)],
        half_open_after: 4,
    });
    // Monitor: same decisions counted, nothing dropped.
    v.push(Case {
        name: "monitor mode counts the would-be drop and passes it",
        cfg: Config {
            mode: Mode::Monitor as u32,
            ..cfg(0, 4)
        },
        packets: p.iter().map(|(b, _)| (b.clone(), XDP_PASS)).collect(),
        counts: &[(Reason::Pass, 4), (Reason::Global, 1)],
        half_open_after: 4,
    });
    // Off: nothing tracked.
    v.push(Case {
        name: "mode off tracks nothing",
        cfg: Config {
            mode: Mode::Off as u32,
            ..cfg(1, 1)
        },
        packets: syns_from(ATK, 1000..1005)
            .into_iter()
            .map(|b| (b, XDP_PASS))
            .collect(),
        counts: &[(Reason::Pass, 5), (Reason::PerSource, 0)],
        half_open_after: 0,
    });
    // Non-TCP passes.
    v.push(Case {
        name: "UDP passes as not_tcp",
        cfg: cfg(1, 1),
        packets: vec![(udp(ATK, SRV), XDP_PASS), (udp(ATK, SRV), XDP_PASS)],
        counts: &[(Reason::NotTcp, 2)],
        half_open_after: 0,
    });
    // VLAN-tagged SYNs are parsed and limited like untagged ones.
    v.push(Case {
        name: "single and double VLAN tags do not hide a SYN from the caps",
        cfg: cfg(2, 100),
        packets: vec![
            (syn(ATK, 1000, SRV, 80).vlans(1).bytes(), XDP_PASS),
            (syn(ATK, 1001, SRV, 80).vlans(2).bytes(), XDP_PASS),
            (syn(ATK, 1002, SRV, 80).vlans(2).bytes(), XDP_DROP),
            (syn(ATK, 1003, SRV, 80).bytes(), XDP_DROP),
        ],
        counts: &[(Reason::Pass, 2), (Reason::PerSource, 2)],
        half_open_after: 2,
    });
    // IPv6.
    v.push(Case {
        name: "IPv6 SYNs are tracked and capped",
        cfg: cfg(2, 100),
        packets: vec![
            (
                syn("2001:db8::66", 1000, "2001:db8::1", 80).bytes(),
                XDP_PASS,
            ),
            (
                syn("2001:db8::66", 1001, "2001:db8::1", 80)
                    .vlans(1)
                    .bytes(),
                XDP_PASS,
            ),
            (
                syn("2001:db8::66", 1002, "2001:db8::1", 80).bytes(),
                XDP_DROP,
            ),
            (
                syn("2001:db8::67", 1002, "2001:db8::1", 80).bytes(),
                XDP_PASS,
            ),
        ],
        counts: &[(Reason::Pass, 3), (Reason::PerSource, 1)],
        half_open_after: 3,
    });
    v
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn table() {
    for case in cases() {
        let h = Harness::new(case.cfg);
        for (i, (pkt, want)) in case.packets.iter().enumerate() {
            assert_eq!(h.run(pkt), *want, "{}: packet {i}", case.name);
        }
        for (r, n) in case.counts {
            assert_eq!(h.count(*r), *n, "{}: counter {}", case.name, r.name());
        }
        assert_eq!(
            h.half_open_entries().len(),
            case.half_open_after,
            "{}: half-open entries",
            case.name
        );
        if case.cfg.mode() != Mode::Off {
            assert_eq!(
                h.global_half_open(&case.cfg) as usize,
                case.half_open_after,
                "{}: global half-open count",
                case.name
            );
        }
    }
}

fn malformed(mutate: impl Fn(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = syn(ATK, 1000, SRV, 80).bytes();
    mutate(&mut b);
    b
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn malformed_packets_are_counted_and_dropped() {
    // Offsets: Ethernet 14, IPv4 header 14..34, TCP 34..54.
    let table: Vec<(&str, Vec<u8>)> = vec![
        // (BPF_PROG_TEST_RUN refuses frames shorter than an Ethernet header.)
        (
            "IPv4 EtherType with nothing after it",
            malformed(|b| b.truncate(14)),
        ),
        ("IPv4 header cut short", malformed(|b| b.truncate(14 + 12))),
        ("TCP header cut short", malformed(|b| b.truncate(34 + 10))),
        ("IHL below 5", malformed(|b| b[14] = 0x44)),
        ("IHL past the end", malformed(|b| b[14] = 0x4f)),
        ("version not 4", malformed(|b| b[14] = 0x65)),
        (
            "total length past the frame",
            malformed(|b| b[16..18].copy_from_slice(&200u16.to_be_bytes())),
        ),
        (
            "total length shorter than the headers",
            malformed(|b| b[16..18].copy_from_slice(&30u16.to_be_bytes())),
        ),
        ("TCP data offset below 5", malformed(|b| b[34 + 12] = 0x40)),
        (
            "TCP data offset past the end",
            malformed(|b| b[34 + 12] = 0xf0),
        ),
        ("three VLAN tags", {
            let mut b = syn(ATK, 1000, SRV, 80).vlans(2).bytes();
            // Insert a third 802.1Q tag after the MACs.
            b.splice(12..12, [0x81, 0x00, 0x00, 0x30]);
            b
        }),
    ];
    for mode in [Mode::Enforce, Mode::Monitor] {
        let h = Harness::new(Config {
            mode: mode as u32,
            ..cfg(5, 100)
        });
        for (name, pkt) in &table {
            let want = if mode == Mode::Enforce {
                XDP_DROP
            } else {
                XDP_PASS
            };
            assert_eq!(h.run(pkt), want, "{name} ({})", mode.name());
        }
        assert_eq!(
            h.count(Reason::Malformed),
            table.len() as u64,
            "{}",
            mode.name()
        );
        assert!(
            h.half_open_entries().is_empty(),
            "a malformed SYN was tracked"
        );
    }
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn final_ack_promotes_and_gives_the_count_back() {
    let c = cfg(1, 10);
    let h = Harness::new(c);
    let s = syn(ATK, 1000, SRV, 80);
    assert_eq!(h.run(&s.bytes()), XDP_PASS);
    assert_eq!(h.global_half_open(&c), 1);
    // At the per-source cap now.
    assert_eq!(h.run(&syn(ATK, 1001, SRV, 80).bytes()), XDP_DROP);
    // The server's SYN-ACK leaves through the egress program.
    let k = 77_000;
    let syn_ack = s.reverse().seg(SYN, k, Some(s.seq + 1), 0);
    assert_eq!(h.run_out(&syn_ack.bytes()), TC_ACT_OK);
    assert_eq!(h.run(&s.then_ack(k + 1).bytes()), XDP_PASS);
    assert!(h.half_open_entries().is_empty());
    let est = h.established_entries();
    assert_eq!(est.len(), 1);
    assert_eq!(
        (est[0].client_state(), est[0].server_state()),
        (TcpState::Established, TcpState::Established)
    );
    assert_eq!(h.global_half_open(&c), 0, "the count was not given back");
    // The source may open a new attempt again.
    assert_eq!(h.run(&syn(ATK, 1001, SRV, 80).bytes()), XDP_PASS);
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn rst_closes_a_half_open_attempt() {
    let c = cfg(1, 10);
    let h = Harness::new(c);
    let s = syn(ATK, 1000, SRV, 80);
    assert_eq!(h.run(&s.bytes()), XDP_PASS);
    assert_eq!(h.run(&s.then_rst().bytes()), XDP_PASS);
    assert!(h.half_open_entries().is_empty());
    assert_eq!(h.global_half_open(&c), 0);
    assert_eq!(h.run(&syn(ATK, 1001, SRV, 80).bytes()), XDP_PASS);
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn unknown_flows_are_picked_up_not_dropped() {
    let h = Harness::new(cfg(1, 1));
    // Data of a connection that began before the gate.
    let mut data = syn("198.18.0.2", 40_000, SRV, 80).then_ack(5_000);
    data.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    assert_eq!(h.run(&data.bytes()), XDP_PASS);
    let est = h.established_entries();
    assert_eq!(est.len(), 1);
    assert_eq!(est[0].client_state(), TcpState::Established);
    // Picked up with the higher port as the client.
    assert_eq!(h.count(Reason::Pass), 1);
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn counts_return_to_zero_after_the_timeout() {
    let c = Config {
        half_open_timeout_ms: 100,
        ..cfg(3, 100)
    };
    let h = Harness::new(c);
    for p in 1000..1003 {
        assert_eq!(h.run(&syn(ATK, p, SRV, 80).bytes()), XDP_PASS);
    }
    assert_eq!(h.run(&syn(ATK, 1003, SRV, 80).bytes()), XDP_DROP);
    assert_eq!(h.global_half_open(&c), 3);
    // Timeout plus one bucket (100 ms · 8/7 + 15 ms) and some slack.
    std::thread::sleep(std::time::Duration::from_millis(250));
    assert_eq!(h.global_half_open(&c), 0, "counts leaked past the timeout");
    assert_eq!(h.run(&syn(ATK, 1003, SRV, 80).bytes()), XDP_PASS);
    // The expired attempt's retransmission starts a new attempt.
    assert_eq!(h.run(&syn(ATK, 1000, SRV, 80).bytes()), XDP_PASS);
    assert_eq!(h.global_half_open(&c), 2);
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn raising_the_cap_live_admits_at_once() {
    let mut h = Harness::new(cfg(2, 100));
    for p in 1000..1002 {
        assert_eq!(h.run(&syn(ATK, p, SRV, 80).bytes()), XDP_PASS);
    }
    assert_eq!(h.run(&syn(ATK, 1002, SRV, 80).bytes()), XDP_DROP);
    h.set(cfg(3, 100));
    assert_eq!(h.run(&syn(ATK, 1002, SRV, 80).bytes()), XDP_PASS);
    assert_eq!(h.run(&syn(ATK, 1003, SRV, 80).bytes()), XDP_DROP);
    // Aggregating by /24 puts a neighbour in the same budget.
    h.set(Config {
        source_prefix_v4: 24,
        ..cfg(3, 100)
    });
    assert_eq!(h.run(&syn("198.18.0.67", 1000, SRV, 80).bytes()), XDP_PASS);
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn batched_reads_see_every_entry_once() {
    use aya::maps::{HashMap, IterableMap as _, MapData};
    use handshake_common::{FlowEntry, FlowKey, maps};
    let mut h = Harness::new(cfg(0, 0));
    // More than two batches' worth, so the position token is followed.
    let n = 2 * handshake_user::batch::BATCH as usize + 123;
    {
        let mut m: HashMap<&mut MapData, FlowKey, FlowEntry> =
            HashMap::try_from(h.ebpf.map_mut(maps::ESTABLISHED).unwrap()).unwrap();
        for i in 0..n as u32 {
            let mut k = FlowKey::default();
            k.lo_addr[..4].copy_from_slice(&i.to_be_bytes());
            let e = FlowEntry {
                created_ns: u64::from(i),
                ..FlowEntry::default()
            };
            m.insert(k, e, 0).unwrap();
        }
    }
    let m: HashMap<&MapData, FlowKey, FlowEntry> =
        HashMap::try_from(h.ebpf.map(maps::ESTABLISHED).unwrap()).unwrap();
    let mut got: Vec<u64> = handshake_user::batch::read_all::<FlowKey, FlowEntry>(m.map())
        .expect("BPF_MAP_LOOKUP_BATCH")
        .into_iter()
        .map(|(k, e)| {
            assert_eq!(
                u64::from(u32::from_be_bytes(k.lo_addr[..4].try_into().unwrap())),
                e.created_ns,
                "a value under the wrong key"
            );
            e.created_ns
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..n as u64).collect::<Vec<_>>());
}
