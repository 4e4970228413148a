//! Hostile and malformed input: a corpus of packet classes, each with the
//! verdict and the counter it must get, run through both real programs
//! (XDP ingress and TC egress) with BPF_PROG_TEST_RUN; then, for every class
//! that carries a SYN the kernel would act on, proof that hiding behind that
//! header does not get past the per-source cap. docs/ROBUSTNESS.md lists the
//! same classes. Needs root; `cargo xtask test` runs it.

mod common;

use common::*;
use handshake_common::machine::tcp::{ACK, FIN, RST, SYN};
use handshake_common::{Config, Mode, Reason};

const SRV: &str = "198.18.0.1";
const ATK: &str = "198.18.0.66";
const SRV6: &str = "2001:db8::1";
const ATK6: &str = "2001:db8::66";

/// Offsets in an untagged IPv4 frame: IP header at 14, TCP at 34.
const IP: usize = 14;
const TCP: usize = 34;
/// In an untagged IPv6 frame, TCP starts at 54.
const IP6_NEXT: usize = 14 + 6;
const TCP6: usize = 54;

const PSH: u8 = 0x08;
const URG: u8 = 0x20;

/// An IPv4 SYN from `ATK:sport` to port 80, untagged, no options.
fn v4(sport: u16) -> Vec<u8> {
    syn(ATK, sport, SRV, 80).bytes()
}

fn v6(sport: u16) -> Vec<u8> {
    syn(ATK6, sport, SRV6, 80).bytes()
}

fn edit(mut b: Vec<u8>, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    f(&mut b);
    b
}

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Adds `n` bytes of IPv4 options (NOPs) and fixes IHL and total length.
fn v4_options(mut b: Vec<u8>, n: usize) -> Vec<u8> {
    b.splice(TCP..TCP, std::iter::repeat_n(1u8, n));
    b[IP] = 0x40 | ((20 + n) / 4) as u8;
    let tot = get_u16(&b, IP + 2) + n as u16;
    set_u16(&mut b, IP + 2, tot);
    b
}

/// Adds `n` bytes of TCP options (NOPs) and fixes the data offset and the
/// IP total length.
fn tcp_options(mut b: Vec<u8>, n: usize) -> Vec<u8> {
    b.splice(TCP + 20..TCP + 20, std::iter::repeat_n(1u8, n));
    b[TCP + 12] = (((20 + n) / 4) as u8) << 4;
    let tot = get_u16(&b, IP + 2) + n as u16;
    set_u16(&mut b, IP + 2, tot);
    b
}

/// Sets the IPv4 fragment field: more-fragments and the offset in 8-byte units.
fn v4_fragment(b: Vec<u8>, more: bool, offset: u16) -> Vec<u8> {
    edit(b, |b| set_u16(b, IP + 6, ((more as u16) << 13) | offset))
}

/// An IPv6 extension header of 8 bytes of kind `kind` (its next-header
/// byte is filled in by [`v6_ext`]).
fn ext(kind: u8) -> (u8, [u8; 8]) {
    match kind {
        // Hop-by-hop and destination options: PadN over the 6 bytes.
        0 | 60 => (kind, [0, 0, 1, 4, 0, 0, 0, 0]),
        // Routing: type 0 segments left 0 (ignored by the kernel).
        43 => (kind, [0, 0, 0, 0, 0, 0, 0, 0]),
        // Fragment: offset 0, more fragments, an id.
        44 => (kind, [0, 0, 0, 1, 0, 0, 0, 7]),
        // Authentication header: payload length 1 (12 bytes; padded to 8 here
        // is not valid AH, but the gate never looks inside).
        51 => (kind, [0, 0, 0, 0, 0, 0, 0x10, 0x01]),
        _ => panic!("no such extension header {kind}"),
    }
}

/// The IPv6 SYN with extension headers `kinds` between the IPv6 header and
/// TCP (their next-header bytes chained, the payload length fixed).
fn v6_ext(sport: u16, kinds: &[u8]) -> Vec<u8> {
    let mut b = v6(sport);
    let mut headers: Vec<u8> = Vec::new();
    let mut next_of_ip = 6u8;
    for &k in kinds.iter().rev() {
        let (kind, mut h) = ext(k);
        h[0] = next_of_ip;
        next_of_ip = kind;
        let mut v = h.to_vec();
        v.extend_from_slice(&headers);
        headers = v;
    }
    b[IP6_NEXT] = next_of_ip;
    let payload = get_u16(&b, 14 + 4) + headers.len() as u16;
    set_u16(&mut b, 14 + 4, payload);
    b.splice(TCP6..TCP6, headers);
    b
}

fn with_flags(b: Vec<u8>, tcp: usize, flags: u8) -> Vec<u8> {
    edit(b, |b| b[tcp + 13] = flags)
}

/// What a class must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Passed: tracked (or passed untracked) and counted `pass`.
    Pass,
    /// Passed untouched, counted `not_tcp`.
    NotTcp,
    /// Dropped in enforce mode, counted under this reason.
    Drop(Reason),
}

impl Want {
    fn reason(self) -> Reason {
        match self {
            Want::Pass => Reason::Pass,
            Want::NotTcp => Reason::NotTcp,
            Want::Drop(r) => r,
        }
    }
}

struct Class {
    name: &'static str,
    packet: Vec<u8>,
    want: Want,
    /// It carries a SYN the kernel would open a connection for: it must
    /// meet the per-source cap like a plain SYN (checked by
    /// `hiding_behind_a_header_does_not_pass_the_caps`). `make` builds it
    /// with another source port.
    syn_like: Option<fn(u16) -> Vec<u8>>,
    /// What the same bytes get leaving, where that differs: the egress
    /// program never asks the kernel about a flow (what leaves is this
    /// host's own), so a segment of no connection passes there.
    out: Option<Want>,
}

fn c(name: &'static str, packet: Vec<u8>, want: Want) -> Class {
    Class {
        name,
        packet,
        want,
        syn_like: None,
        out: None,
    }
}

/// A segment of no connection: dropped arriving (`no_conn`), passed leaving.
fn nc(name: &'static str, packet: Vec<u8>) -> Class {
    Class {
        out: Some(Pass),
        ..c(name, packet, Drop(Reason::NoConn))
    }
}

/// A segment of no connection to a port nothing listens on.
fn stray(sport: u16, flags: u8) -> Vec<u8> {
    with_flags(
        syn(ATK, sport, SRV, CLOSED)
            .seg(0, 7_000, Some(9_000), 0)
            .bytes(),
        TCP,
        flags,
    )
}

/// The corpus runs in a namespace of its own, where this port (IPv4 and
/// IPv6) has a listener, as a server's service would.
const LISTENING: u16 = 80;
/// And nothing listens on this one.
const CLOSED: u16 = 81;

fn s(name: &'static str, make: fn(u16) -> Vec<u8>) -> Class {
    Class {
        name,
        packet: make(2_000),
        want: Want::Pass,
        syn_like: Some(make),
        out: None,
    }
}

use Reason::{BadFlags, Malformed};
use Want::{Drop, NotTcp, Pass};

/// Every class, each with its own source port so no two are one flow.
#[rustfmt::skip]
fn corpus() -> Vec<Class> {
    let three_vlans = {
        let mut b = syn(ATK, 1_030, SRV, 80).vlans(2).bytes();
        b.splice(12..12, [0x81, 0x00, 0x00, 0x30]);
        b
    };
    vec![
        // Truncated at every header boundary (BPF_PROG_TEST_RUN refuses
        // frames shorter than an Ethernet header).
        c("Ethernet header only, IPv4 EtherType", edit(v4(1_001), |b| b.truncate(14)), Drop(Malformed)),
        c("VLAN tag cut short", edit(syn(ATK, 1_002, SRV, 80).vlans(1).bytes(), |b| b.truncate(16)), Drop(Malformed)),
        c("IPv4 header cut short", edit(v4(1_003), |b| b.truncate(IP + 12)), Drop(Malformed)),
        c("IPv4 header, no TCP header", edit(v4(1_004), |b| b.truncate(TCP)), Drop(Malformed)),
        c("TCP header cut short", edit(v4(1_005), |b| b.truncate(TCP + 10)), Drop(Malformed)),
        c("TCP options cut short", edit(tcp_options(v4(1_006), 8), |b| b.truncate(TCP + 24)), Drop(Malformed)),
        c("IPv6 header cut short", edit(v6(1_007), |b| b.truncate(14 + 20)), Drop(Malformed)),
        c("IPv6 header, TCP cut short", edit(v6(1_008), |b| b.truncate(TCP6 + 8)), Drop(Malformed)),
        c("IPv6 extension header cut short", edit(v6_ext(1_009, &[0]), |b| b.truncate(TCP6 + 1)), Drop(Malformed)),
        // TCP data offset.
        c("TCP data offset below 5", edit(v4(1_010), |b| b[TCP + 12] = 0x40), Drop(Malformed)),
        c("TCP data offset past the end", edit(v4(1_011), |b| b[TCP + 12] = 0xf0), Drop(Malformed)),
        s("TCP data offset 15 (40 bytes of options)", |p| tcp_options(v4(p), 40)),
        // IPv4 IHL, version, lengths, options.
        c("IPv4 IHL below 5", edit(v4(1_013), |b| b[IP] = 0x44), Drop(Malformed)),
        c("IPv4 IHL past the end", edit(v4(1_014), |b| b[IP] = 0x4f), Drop(Malformed)),
        c("IP version 6 in an IPv4 frame", edit(v4(1_015), |b| b[IP] = 0x65), Drop(Malformed)),
        c("IPv4 total length past the frame", edit(v4(1_016), |b| set_u16(b, IP + 2, 200)), Drop(Malformed)),
        c("IPv4 total length below its headers", edit(v4(1_017), |b| set_u16(b, IP + 2, 30)), Drop(Malformed)),
        s("IPv4 with 4 bytes of options", |p| v4_options(v4(p), 4)),
        s("IPv4 with 40 bytes of options (IHL 15)", |p| v4_options(v4(p), 40)),
        s("IPv4 frame with Ethernet padding after the datagram", |p| edit(v4(p), |b| b.extend_from_slice(&[0; 6]))),
        // Fragments.
        s("IPv4 first fragment holding the whole TCP header", |p| v4_fragment(v4(p), true, 0)),
        c("IPv4 first fragment too short for the TCP header", {
            let b = v4_fragment(v4(1_022), true, 0);
            edit(b, |b| { b.truncate(TCP + 8); set_u16(b, IP + 2, 28); })
        }, Drop(Malformed)),
        c("IPv4 non-first fragment", v4_fragment(v4(1_023), false, 3), NotTcp),
        s("IPv6 first fragment (fragment header)", |p| v6_ext(p, &[44])),
        c("IPv6 non-first fragment", edit(v6_ext(1_025, &[44]), |b| set_u16(b, TCP6 + 2, 3 << 3)), NotTcp),
        // IPv6 extension-header chains.
        s("IPv6 hop-by-hop options", |p| v6_ext(p, &[0])),
        s("IPv6 routing header", |p| v6_ext(p, &[43])),
        s("IPv6 destination options", |p| v6_ext(p, &[60])),
        s("IPv6 chain of four (HBH, DST, RT, FRAG)", |p| v6_ext(p, &[0, 60, 43, 44])),
        c("IPv6 chain of five (past what the parser follows)", v6_ext(1_030, &[0, 60, 43, 60, 44]), Drop(Malformed)),
        c("IPv6 authentication header (IPsec)", v6_ext(1_031, &[51]), NotTcp),
        c("IPv6 no next header", edit(v6(1_032), |b| b[IP6_NEXT] = 59), NotTcp),
        // VLAN tags and EtherTypes.
        s("one 802.1Q VLAN tag", |p| syn(ATK, p, SRV, 80).vlans(1).bytes()),
        s("two VLAN tags (QinQ)", |p| syn(ATK, p, SRV, 80).vlans(2).bytes()),
        c("three VLAN tags", three_vlans, Drop(Malformed)),
        c("unknown EtherType (0x88b5)", edit(v4(1_035), |b| set_u16(b, 12, 0x88b5)), NotTcp),
        c("ARP", edit(v4(1_036), |b| { set_u16(b, 12, 0x0806); b.truncate(14 + 28); }), NotTcp),
        c("UDP", udp(ATK, SRV), NotTcp),
        c("ICMP", edit(v4(1_038), |b| b[IP + 9] = 1), NotTcp),
        c("GRE (IP protocol 47)", edit(v4(1_039), |b| b[IP + 9] = 47), NotTcp),
        // TCP flag combinations.
        c("SYN+FIN", with_flags(v4(1_040), TCP, SYN | FIN), Drop(BadFlags)),
        c("SYN+RST", with_flags(v4(1_041), TCP, SYN | RST), Drop(BadFlags)),
        c("NULL (no flags)", with_flags(v4(1_042), TCP, 0), Drop(BadFlags)),
        c("XMAS (FIN+PSH+URG)", with_flags(v4(1_043), TCP, FIN | PSH | URG), Drop(BadFlags)),
        c("FIN without ACK", with_flags(v4(1_044), TCP, FIN), Drop(BadFlags)),
        c("SYN+FIN over IPv6", with_flags(v6(1_045), TCP6, SYN | FIN), Drop(BadFlags)),
        // Segments of no connection: the kernel has no socket for them.
        nc("SYN-ACK of no connection (reflection)", with_flags(v4(1_046), TCP, SYN | ACK)),
        nc("ACK of no connection", stray(1_047, ACK)),
        nc("ACK to a listening port without a valid SYN cookie", with_flags(v4(1_050), TCP, ACK)),
        nc("FIN+ACK of no connection", stray(1_051, FIN | ACK)),
        nc("data (PSH+ACK) of no connection", edit(stray(1_052, PSH | ACK), |b| b.extend_from_slice(b"junk"))),
        nc("RST of no connection", stray(1_053, RST)),
        nc("RST+ACK of no connection over IPv6", with_flags(v6(1_054), TCP6, RST | ACK)),
        // Ports, payloads, checksums.
        c("destination port 0", syn(ATK, 1_048, SRV, 0).bytes(), Drop(Malformed)),
        c("source port 0", syn(ATK, 0, SRV, 80).bytes(), Drop(Malformed)),
        s("SYN carrying payload", |p| {
            let mut t = syn(ATK, p, SRV, 80);
            t.payload = b"early data".to_vec();
            t.bytes()
        }),
        s("SYN with a wrong TCP checksum", |p| edit(v4(p), |b| b[TCP + 16] ^= 0xff)),
        s("SYN with PSH and URG set", |p| with_flags(v4(p), TCP, SYN | PSH | URG)),
    ]
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn every_class_gets_its_verdict_and_counter_in_both_programs() {
    let ns = handshake_lab::Netns::new(&format!("co{}", std::process::id() % 100_000)).unwrap();
    ns.run(|| {
        let _listeners = [format!("0.0.0.0:{LISTENING}"), format!("[::]:{LISTENING}")].map(|a| {
            let a: std::net::SocketAddr = a.parse().unwrap();
            let s =
                socket2::Socket::new(socket2::Domain::for_address(a), socket2::Type::STREAM, None)
                    .unwrap();
            if a.is_ipv6() {
                s.set_only_v6(true).unwrap();
            }
            s.bind(&a.into()).unwrap();
            s.listen(16).unwrap();
            s
        });
        every_class();
        Ok(())
    })
    .unwrap();
}

fn every_class() {
    let table = corpus();
    assert!(table.len() >= 30, "a corpus of {} classes", table.len());
    let mut refused = std::collections::BTreeSet::new();
    for mode in [Mode::Enforce, Mode::Monitor] {
        let mut h = Harness::new(Config {
            mode: mode as u32,
            max_half_open_per_source: 1_000,
            ..Config::DEFAULT
        });
        for class in &table {
            let reason = class.want.reason();
            let before = h.count(reason);
            let action = h.run(&class.packet);
            let want_action = match class.want {
                Drop(_) if mode == Mode::Enforce => XDP_DROP,
                _ => XDP_PASS,
            };
            assert_eq!(
                action,
                want_action,
                "XDP, {}: {} ({})",
                mode.name(),
                class.name,
                reason.name()
            );
            assert_eq!(
                h.count(reason),
                before + 1,
                "XDP, {}: {} not counted as {}",
                mode.name(),
                class.name,
                reason.name()
            );
            // The same bytes leaving: counted alike, never dropped.
            let reason = class.out.unwrap_or(class.want).reason();
            let before = h.count_out(reason);
            let out = match h.try_run_out(&class.packet) {
                Ok(out) => out,
                // The kernel builds no test skb of some truncated frames
                // (nor could its own stack send one): nothing for egress
                // to see. Only malformed classes may be refused.
                Err(_) if class.want == Drop(Malformed) => {
                    refused.insert(class.name);
                    continue;
                }
                Err(e) => panic!("TC: {}: {e}", class.name),
            };
            assert_eq!(out, TC_ACT_OK, "TC: {}", class.name);
            assert_eq!(
                h.count_out(reason),
                before + 1,
                "TC: {} not counted as {}",
                class.name,
                reason.name()
            );
        }
        h.reset_counters();
    }
    println!("egress test runs the kernel refused: {refused:?}");
}

/// The verdict as docs/ROBUSTNESS.md writes it.
fn verdict_text(w: Want) -> String {
    match w {
        Pass => "passed".into(),
        NotTcp => "passed untouched".into(),
        Drop(r) => format!("dropped (monitor: passed), `{}`", r.name()),
    }
}

/// docs/ROBUSTNESS.md lists every class of the corpus with its verdict and
/// counter, exactly as the test above checks them.
#[test]
fn the_robustness_document_lists_every_class() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/ROBUSTNESS.md"
    ))
    .expect("docs/ROBUSTNESS.md");
    let mut missing = Vec::new();
    for class in corpus() {
        let counter = class.want.reason().name();
        let row = format!(
            "| {} | {} | `{counter}` |",
            class.name,
            verdict_text(class.want)
        );
        if !doc.contains(&row) {
            missing.push(row);
        }
    }
    assert!(
        missing.is_empty(),
        "docs/ROBUSTNESS.md lacks these rows (or has them otherwise):\n{}",
        missing.join("\n")
    );
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn hiding_behind_a_header_does_not_pass_the_caps() {
    // A cap of 2 per source: of 5 SYNs of each class, from one source, 2
    // are admitted and 3 dropped as per_source, as plain SYNs would be.
    let h = Harness::new(Config {
        max_half_open_per_source: 2,
        ..Config::DEFAULT
    });
    let mut classes = 0;
    for class in corpus() {
        let Some(make) = class.syn_like else { continue };
        classes += 1;
        let before = h.count(Reason::PerSource);
        // Each class gets its own source: vary the low address byte.
        let mut results = Vec::new();
        for i in 0..5u16 {
            let mut pkt = make(3_000 + i);
            retarget_source(&mut pkt, classes as u8);
            results.push(h.run(&pkt));
        }
        assert_eq!(
            results,
            [XDP_PASS, XDP_PASS, XDP_DROP, XDP_DROP, XDP_DROP],
            "{}: the per-source cap did not hold",
            class.name
        );
        assert_eq!(h.count(Reason::PerSource), before + 3, "{}", class.name);
    }
    assert!(classes >= 15, "only {classes} SYN-carrying classes");
}

/// Makes the packet's source address's last byte `n` (IPv4 or IPv6, found
/// after the VLAN tags the frame has).
fn retarget_source(pkt: &mut [u8], n: u8) {
    let mut off = 12;
    while matches!(get_u16(pkt, off), 0x8100 | 0x88a8) {
        off += 4;
    }
    let ip = off + 2;
    match get_u16(pkt, off) {
        0x0800 => pkt[ip + 15] = n,
        0x86dd => pkt[ip + 8 + 15] = n,
        other => panic!("EtherType {other:#x}"),
    }
}
