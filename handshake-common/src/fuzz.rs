//! One fuzzing step over the host-side parser and the reference model:
//! the body of the `cargo fuzz` target (`fuzz/`), and of a unit test that
//! runs it on random input in every `cargo test`.
//!
//! The input is read as a configuration byte, then packets: a header byte
//! (which template frame, which direction, how much time passes), a count of
//! byte edits, the edits (offset, value) applied to the template, so random
//! input reaches deep into the parser and the state machine. Checked: no
//! panic, parsed facts that make sense, and counts that never exceed their
//! caps.

use crate::admit::unverified_budget;
use crate::config::{Config, Mode, Overflow};
use crate::cookie;
use crate::flow::{AF_INET, AF_INET6};
use crate::machine::sk_state;
use crate::model::{Lookup, Model, Packet, Side};
use crate::parse::{self, Bytes, Facts, Parsed};
use crate::reason::Reason;
use crate::window;

/// IPv4 SYN 198.18.0.66:40000 → 198.18.0.1:80, seq 1000.
const V4_SYN: [u8; 54] = [
    2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00, // Ethernet
    0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 66, 198, 18, 0, 1, // IPv4
    0x9c, 0x40, 0, 80, 0, 0, 0x03, 0xe8, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0,
    0, // TCP
];

/// IPv6 SYN [2001:db8::66]:40000 → [2001:db8::1]:443.
const V6_SYN: [u8; 74] = [
    2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x86, 0xdd, // Ethernet
    0x60, 0, 0, 0, 0, 20, 6, 64, // IPv6: payload 20, next TCP
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x66, // source
    0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01, // destination
    0x9c, 0x40, 0x01, 0xbb, 0, 0, 0x03, 0xe8, 0, 0, 0, 0, 0x50, 0x02, 0xfa, 0xf0, 0, 0, 0,
    0, // TCP
];

/// IPv4 SYN-ACK 198.18.0.1:80 → 198.18.0.66:40000 in one 802.1Q tag.
const V4_VLAN_SYNACK: [u8; 58] = [
    2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x81, 0x00, 0, 10, 0x08, 0x00, // Ethernet + VLAN
    0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0, 198, 18, 0, 1, 198, 18, 0, 66, // IPv4
    0, 80, 0x9c, 0x40, 0, 0, 0x10, 0, 0, 0, 0x03, 0xe9, 0x50, 0x12, 0xfa, 0xf0, 0, 0, 0,
    0, // TCP
];

/// Facts for the parser to fill in.
pub fn empty_facts() -> Facts {
    Facts {
        family: 0,
        src: crate::flow::Endpoint {
            addr: [0; 16],
            port: 0,
        },
        dst: crate::flow::Endpoint {
            addr: [0; 16],
            port: 0,
        },
        seg: crate::machine::Segment {
            flags: 0,
            seq: 0,
            ack: 0,
            payload_len: 0,
            window: 0,
            wscale: 0,
            side: crate::machine::Side::Ingress,
            csum: crate::machine::csum::UNCHECKED,
        },
        key: Default::default(),
        key_v4: Default::default(),
        src_is_lo: 0,
        key_found: 0,
        listed: 0,
        tried: 0,
        th_len: 0,
        now_ns: 0,
        l3: 0,
        l4: 0,
        cookie: crate::parse::CookieScratch::EMPTY,
    }
}

/// Runs the input; panics on any broken invariant.
pub fn run(data: &[u8]) {
    let Some((&c, mut rest)) = data.split_first() else {
        return;
    };
    let cfg = Config {
        mode: [Mode::Enforce, Mode::Monitor, Mode::Off][(c % 3) as usize] as u32,
        overflow: [
            Overflow::Drop,
            Overflow::Drop,
            Overflow::Pass,
            Overflow::Cookie,
        ][((c >> 1) & 3) as usize] as u32,
        max_half_open: [0, 1, 3, 8][((c >> 3) & 3) as usize],
        max_half_open_per_source: [0, 1, 2, 4][((c >> 5) & 3) as usize],
        max_half_open_per_port: if c & 0x80 != 0 { 2 } else { 0 },
        verified_reserve_pct: 50,
        half_open_timeout_ms: 1_000,
        msl_ms: 1_000,
        // The input's length picks the policy for unknown flows.
        unknown_flows: (data.len() & 1) as u32,
        ..Config::DEFAULT
    };
    let mut model = Model::default();
    let mut facts = empty_facts();
    let mut now: u64 = 1_000_000_000;
    let mut frame = [0u8; 128];
    while let [head, edits, tail @ ..] = rest {
        let template: &[u8] = match head & 3 {
            0 => &V4_SYN,
            1 => &V6_SYN,
            _ => &V4_VLAN_SYNACK,
        };
        let side = if head & 4 != 0 {
            Side::Egress
        } else {
            Side::Ingress
        };
        now += u64::from(head >> 3) * 50_000_000;
        let n = (*edits as usize % 8).min(tail.len() / 2);
        let mut len = template.len();
        frame[..len].copy_from_slice(template);
        for e in tail[..2 * n].chunks_exact(2) {
            let at = e[0] as usize % frame.len();
            frame[at] = e[1];
            // An edit past the end grows the frame (with zeroes between).
            len = len.max(at + 1);
        }
        // Some cut the frame short instead.
        if head & 0x80 != 0 && n > 0 {
            len = (tail[0] as usize).min(len);
        }
        rest = &tail[2 * n..];
        let pkt = &frame[..len];
        let parsed = parse::parse(&Bytes(pkt), &mut facts);
        assert!(
            !parse::surely_not_tcp(&Bytes(pkt)) || parsed == Parsed::NotTcp,
            "the early check took a packet the parser does not call non-TCP for non-TCP"
        );
        if let Some(d) = parse::data_v4(&Bytes(pkt)) {
            assert!(
                parsed == Parsed::Tcp
                    && facts.family == AF_INET
                    && d.segment() == facts.seg
                    && d.src[..] == facts.src.addr[..4]
                    && d.dst[..] == facts.dst.addr[..4]
                    && (d.src_port, d.dst_port) == (facts.src.port, facts.dst.port),
                "the data fast path's parse disagrees with the parser"
            );
        }
        match parsed {
            Parsed::Tcp => {
                assert!(
                    facts.family == AF_INET || facts.family == AF_INET6,
                    "TCP with family {}",
                    facts.family
                );
                assert!(
                    (facts.seg.payload_len as usize) < pkt.len(),
                    "a payload longer than the frame"
                );
                let p = Packet {
                    family: facts.family,
                    src: facts.src,
                    dst: facts.dst,
                    seg: facts.seg,
                };
                // What the kernel would say of the tuple: the edit count's
                // spare bits choose.
                let lookup = match (edits >> 3) & 7 {
                    0 | 1 => Lookup::Nothing,
                    2 => Lookup::Listener { cookie: false },
                    3 => Lookup::Listener { cookie: true },
                    4 => Lookup::Socket(sk_state::TIME_WAIT),
                    5 => Lookup::Socket(sk_state::NEW_SYN_RECV),
                    _ => Lookup::Socket(sk_state::ESTABLISHED),
                };
                let r = model.packet(side, &p, &cfg, now, lookup);
                if r == Reason::NoConn {
                    assert!(model.states(&p).is_none(), "no_conn created state");
                    assert!(side == Side::Ingress && cfg.unknown_flows().name() == "verify");
                }
                cookie_reply(pkt, &facts, now);
            }
            Parsed::NotTcp | Parsed::Malformed => {}
        }
        let ep = window::epoch(now, window::bucket_width_ns(cfg.half_open_timeout_ms));
        if cfg.max_half_open != 0 {
            assert!(
                model.global.live(ep) <= cfg.max_half_open,
                "over the global cap"
            );
            assert!(unverified_budget(&cfg) <= cfg.max_half_open);
        }
        if cfg.max_half_open_per_source != 0 {
            for s in model.sources.values() {
                assert!(
                    s.half_open.live(ep) <= cfg.max_half_open_per_source,
                    "a source over its cap"
                );
            }
        }
    }
}

/// The cookie path's pure part on whatever the parser took for TCP: the
/// SYN's options read, a reply built, its checksums right.
fn cookie_reply(pkt: &[u8], facts: &Facts, now: u64) {
    let l4 = facts.l4 as usize;
    let doff = (pkt[l4 + 12] >> 4) as usize * 4;
    let mut opts = [0u8; cookie::OPTIONS_BUF];
    opts[..doff - 20].copy_from_slice(&pkt[l4 + 20..l4 + doff]);
    let syn = cookie::parse_options(&opts, doff - 20);
    let r = cookie::Reply {
        family: facts.family,
        client: &facts.src,
        server: &facts.dst,
        client_seq: facts.seg.seq,
        cookie: facts.seg.ack,
        mss: 1460,
        syn,
        host: cookie::Options::from_bits(u32::from(pkt[l4 + 14])),
        now_ns: now,
    };
    let mut out = [0u8; cookie::MAX_REPLY];
    let n = cookie::build(&r, &mut out);
    let ip = if facts.family == AF_INET { 20 } else { 40 };
    assert!(
        n == ip + 24 || n == ip + 36 || n == ip + 40,
        "reply of {n} bytes"
    );
    if facts.family == AF_INET {
        assert_eq!(cookie::checksum(cookie::sum16(&out[..20], 0)), 0);
    }
    let a = if facts.family == AF_INET { 4 } else { 16 };
    let pseudo = cookie::sum16(&facts.dst.addr[..a], cookie::sum16(&facts.src.addr[..a], 0));
    let tcp = &out[ip..n];
    let sum = cookie::sum16(tcp, pseudo + 6 + tcp.len() as u32);
    assert_eq!(cookie::checksum(sum), 0, "TCP checksum of the reply");
}

#[cfg(test)]
mod tests {
    #[test]
    fn random_input_keeps_every_invariant() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut buf = std::vec::Vec::new();
        for _ in 0..20_000 {
            buf.clear();
            let n = rng.usize(1..200);
            buf.extend((0..n).map(|_| rng.u8(..)));
            super::run(&buf);
        }
    }

    #[test]
    fn the_templates_parse_as_tcp() {
        use crate::parse::{Bytes, Parsed, parse};
        for t in [&super::V4_SYN[..], &super::V6_SYN, &super::V4_VLAN_SYNACK] {
            let mut f = unsafe { core::mem::zeroed() };
            assert!(matches!(parse(&Bytes(t), &mut f), Parsed::Tcp));
        }
    }
}
