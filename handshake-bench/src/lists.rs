//! What the prefix lists cost ordinary traffic: a spoofed SYN refused over
//! the global cap and an ACK of no connection (dropped as `no_conn` after
//! the kernel's socket lookup), neither from a listed prefix, with 0, 1,
//! 10,000 and 65,536 deny prefixes loaded, each next to the no-op and to
//! the same packet with no list, in the same run. The prefixes crowd the
//! packets' own /15 (198.18.0.0/15, lengths /24 to /32), so each lookup
//! walks as deep a trie as such a list makes.

use handshake_common::prefix::{self, Listed};
use handshake_common::{Config, Reason, maps};
use handshake_lab::packet::syn;
use handshake_user::testrun::{Harness, XDP_DROP};

use crate::median;

/// Deny-list sizes measured (0 is the baseline: no lookup at all).
pub const SIZES: [usize; 4] = [0, 1, 10_000, 65_536];

/// One list size's costs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub prefixes: usize,
    pub syn_ns: f64,
    pub ack_ns: f64,
    pub noop_ns: f64,
}

/// `n` distinct prefixes inside 198.18.0.0/15, none covering 198.19.255.0/24
/// (where the measured packets come from).
fn prefixes(n: usize) -> Vec<Listed> {
    let mut rng = fastrand::Rng::with_seed(0x5eed);
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = rng.u8(24..=32);
        let host = (0xc612_0000u32 | rng.u32(..1 << 17)) & (u32::MAX << (32 - len));
        if host >> 8 == 0x00c6_13ff || !seen.insert((host, len)) {
            continue;
        }
        out.push(Listed::v4(host.to_be_bytes(), len, prefix::DENY));
    }
    out
}

/// The rows, in a network namespace of their own (the ACKs' socket lookups
/// find nothing there).
pub fn run(repeat: u32, calls: usize) -> anyhow::Result<Vec<Row>> {
    let ns = handshake_lab::Netns::new(&format!("bpl{}", std::process::id() % 100_000))?;
    ns.run(move || {
        let mut h = Harness::new(Config {
            max_half_open: 1,
            max_half_open_per_source: 0,
            verified_reserve_pct: 0,
            half_open_timeout_ms: 600_000,
            ..Config::DEFAULT
        });
        // The one slot taken: the measured SYN is refused over the cap.
        let srv = "198.18.0.1";
        h.run(&syn("198.18.0.66", 1, srv, 80).bytes());
        let refused = syn("198.19.255.7", 2, srv, 80).bytes();
        let ack = syn("198.19.255.8", 3, srv, 81)
            .seg(0, 5, Some(5), 0)
            .bytes();
        let mut rows = Vec::new();
        for n in SIZES {
            let lists = prefixes(n);
            h.set_prefixes(&lists);
            let mut cfg = h.config();
            cfg.prefix_lists = if n == 0 { 0 } else { prefix::DENY };
            h.set(cfg);
            for (pkt, reason) in [(&refused, Reason::Global), (&ack, Reason::NoConn)] {
                let before = h.count(reason);
                anyhow::ensure!(h.run(pkt) == XDP_DROP && h.count(reason) == before + 1);
            }
            let mut time = |program: &str, pkt: &[u8]| {
                median(
                    (0..calls)
                        .map(|_| h.time(program, false, pkt, repeat).as_nanos() as f64)
                        .collect(),
                )
            };
            rows.push(Row {
                prefixes: n,
                syn_ns: time(maps::XDP_PROGRAM, &refused),
                ack_ns: time(maps::XDP_PROGRAM, &ack),
                noop_ns: time(maps::NOOP_XDP, &refused),
            });
        }
        Ok(rows)
    })
}
