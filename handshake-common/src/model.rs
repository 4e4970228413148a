//! A reference model of the kernel programs' tracking, on ordinary maps:
//! what `handshake-ebpf/src/track.rs` does with the BPF maps, step for step,
//! using the same pure functions. The differential tests run random packet
//! sequences through the real programs (BPF_PROG_TEST_RUN) and through this
//! model and demand the same verdict and the same states after every packet.
//!
//! Not modelled: header parsing (the model takes parsed facts; the parser
//! has its own corpus tests), eviction (the LRU maps' and the IPv4
//! established table's, `crate::table`: the tests stay far below every
//! map's capacity, and the table's placement has tests of its own) and
//! races between CPUs.

use alloc::collections::BTreeMap;

use crate::admit::{self, Admission, Occupancy, SynFacts};
use crate::config::Config;
use crate::flow::{Endpoint, FlowEntry, FlowKey, SourceKey, SourceState, flags};
use crate::machine::{self, Expiry, Segment, Step, Untracked};
pub use crate::machine::{Lookup, Side};
use crate::prefix::{self, Listed};
use crate::reason::Reason;
use crate::tally::Tally;
use crate::window::{self, WindowCounter};

/// A parsed TCP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub family: u8,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub seg: Segment,
}

/// The maps, as ordinary maps.
#[derive(Clone, Debug, Default)]
pub struct Model {
    pub half_open: BTreeMap<FlowKey, FlowEntry>,
    pub established: BTreeMap<FlowKey, FlowEntry>,
    pub sources: BTreeMap<SourceKey, SourceState>,
    pub global: WindowCounter,
    /// By destination port (host order).
    pub ports: BTreeMap<u16, WindowCounter>,
    pub verified: BTreeMap<SourceKey, u64>,
    /// Ports that take SYNs when `ports_restricted` is set.
    pub allowed_ports: BTreeMap<u16, ()>,
    /// The allow and deny lists (`cfg.prefix_lists` says which have entries).
    pub prefixes: alloc::vec::Vec<Listed>,
}

impl Model {
    /// The reason the kernel programs give `p` at `now_ns` under `cfg`,
    /// updating the maps as they do. (`mode=off` passes before tracking;
    /// the mode otherwise only turns a drop reason into a pass.) `lookup`
    /// is what the kernel has for `p`'s 4-tuple, consulted as the XDP
    /// program consults it: for an arriving segment (not a SYN) of a flow
    /// with no entry, with `unknown-flows=verify`.
    pub fn packet(
        &mut self,
        side: Side,
        p: &Packet,
        cfg: &Config,
        now_ns: u64,
        lookup: Lookup,
    ) -> Reason {
        if cfg.mode() == crate::Mode::Off {
            return Reason::Pass;
        }
        let p = &Packet {
            seg: Segment { side, ..p.seg },
            ..*p
        };
        if let Err(r) = machine::check(u16::from_be(p.src.port), u16::from_be(p.dst.port), &p.seg) {
            return r;
        }
        // An arriving SYN's list is looked up first; a denied one goes
        // before any other map is read.
        let ingress = side == Side::Ingress;
        let listed = if ingress && cfg.prefix_lists != 0 && p.seg.is_pure_syn() {
            prefix::classify(&self.prefixes, p.family, &p.src.addr)
        } else {
            0
        };
        if listed == prefix::DENY {
            return Reason::Denied;
        }
        let (key, src_is_lo) = FlowKey::normalise(p.family, &p.src, &p.dst);
        if let Some(r) = self.established_step(p, &key, src_is_lo, cfg, now_ns) {
            return r;
        }
        if let Some(r) = self.half_open_step(p, &key, src_is_lo, cfg, now_ns) {
            return r;
        }
        // Any other arriving segment of a flow with no entry, from a
        // denied prefix, before the kernel is asked about it.
        if ingress
            && !p.seg.is_pure_syn()
            && cfg.prefix_lists & prefix::DENY != 0
            && prefix::classify(&self.prefixes, p.family, &p.src.addr) == prefix::DENY
        {
            return Reason::Denied;
        }
        let mut u = machine::untracked(&p.seg);
        if machine::needs_lookup(u, side, cfg.unknown_flows()) {
            u = machine::verified(u, &p.seg, lookup);
        }
        match u {
            Untracked::Open if ingress && listed == prefix::ALLOW => {
                let port = u16::from_be(p.dst.port);
                if cfg.ports_restricted != 0 && !self.allowed_ports.contains_key(&port) {
                    return Reason::PortClosed;
                }
                // Past every cap and rate, holding no half-open count.
                let e = machine::open(&p.seg, src_is_lo, now_ns, 0, false);
                self.half_open.entry(key).or_insert(e);
                Reason::Allowed
            }
            Untracked::Open if ingress => self.new_syn(p, &key, src_is_lo, cfg, now_ns),
            Untracked::Open => {
                let e = machine::open(&p.seg, src_is_lo, now_ns, 0, false);
                self.half_open.entry(key).or_insert(e);
                Reason::Pass
            }
            Untracked::Ignore => Reason::Pass,
            Untracked::NoConn => Reason::NoConn,
            Untracked::PickUp => {
                let mut n = machine::pick_up(
                    u16::from_be(p.src.port),
                    u16::from_be(p.dst.port),
                    src_is_lo,
                    now_ns,
                );
                machine::first_segment(&mut n, src_is_lo, &p.seg, now_ns);
                self.established.insert(key, n);
                Reason::Pass
            }
            Untracked::CookieAck => {
                let mut n = machine::cookie_pick_up(src_is_lo, now_ns);
                machine::first_segment(&mut n, src_is_lo, &p.seg, now_ns);
                self.established.insert(key, n);
                self.verified
                    .insert(cfg.source_key(p.family, &p.src.addr), now_ns);
                Reason::CookieAck
            }
        }
    }

    /// The (client, server) states of the flow `p` belongs to, and whether
    /// its entry is in the half-open map; `None` when it has no entry.
    pub fn states(&self, p: &Packet) -> Option<(u8, u8, bool)> {
        let (key, _) = FlowKey::normalise(p.family, &p.src, &p.dst);
        if let Some(e) = self.established.get(&key) {
            return Some((e.client_state_raw(), e.server_state_raw(), false));
        }
        self.half_open
            .get(&key)
            .map(|e| (e.client_state_raw(), e.server_state_raw(), true))
    }

    /// The daemon's sweep at `now_ns` under `cfg`, as the counting program
    /// makes it: every entry [`Tally::sweep`] finds expired goes (the
    /// half-open counts are left to age out with their time bucket); the
    /// count of the rest, and how many went from each map.
    pub fn sweep(&mut self, cfg: &Config, now_ns: u64) -> (Tally, [u64; 2]) {
        let x = Expiry::of(cfg, now_ns);
        let mut t = Tally::default();
        let mut swept = [0u64; 2];
        for (map, half_open) in [(&mut self.half_open, true), (&mut self.established, false)] {
            map.retain(|_, e| {
                let gone = t.sweep(e, half_open, &x, || true);
                swept[!half_open as usize] += gone as u64;
                !gone
            });
        }
        (t, swept)
    }

    fn established_step(
        &mut self,
        p: &Packet,
        key: &FlowKey,
        src_is_lo: bool,
        cfg: &Config,
        now: u64,
    ) -> Option<Reason> {
        let e = self.established.get_mut(key)?;
        if machine::finished_expired(e, now, cfg) {
            self.established.remove(key);
            return None;
        }
        let dir = e.dir_of(src_is_lo);
        match machine::step(e, dir, &p.seg, now) {
            Step::Update | Step::Promote => Some(Reason::Pass),
            Step::Remove => {
                self.established.remove(key);
                Some(Reason::Pass)
            }
            Step::Reject(r) => Some(r),
            Step::Restart => {
                self.established.remove(key);
                None
            }
        }
    }

    fn half_open_step(
        &mut self,
        p: &Packet,
        key: &FlowKey,
        src_is_lo: bool,
        cfg: &Config,
        now: u64,
    ) -> Option<Reason> {
        let mut e = *self.half_open.get(key)?;
        let epoch = e.has(flags::COUNTED).then_some(e.epoch());
        if machine::half_open_expired(&e, now, cfg) {
            self.forget(key, e.client_is_lo() as u8, epoch, cfg);
            return None;
        }
        let dir = e.dir_of(src_is_lo);
        Some(match machine::step(&mut e, dir, &p.seg, now) {
            Step::Update => {
                self.half_open.insert(*key, e);
                Reason::Pass
            }
            Step::Promote => {
                self.established.insert(*key, e);
                if epoch.is_some() {
                    let client = key.client_addr(e.client_is_lo() as u8);
                    self.verified
                        .insert(cfg.source_key(key.family, client), now);
                }
                self.forget(key, e.client_is_lo() as u8, epoch, cfg);
                Reason::Pass
            }
            Step::Remove | Step::Restart => {
                self.forget(key, e.client_is_lo() as u8, epoch, cfg);
                Reason::Pass
            }
            Step::Reject(r) => r,
        })
    }

    fn new_syn(
        &mut self,
        p: &Packet,
        key: &FlowKey,
        src_is_lo: bool,
        cfg: &Config,
        now: u64,
    ) -> Reason {
        let port = u16::from_be(p.dst.port);
        if cfg.ports_restricted != 0 && !self.allowed_ports.contains_key(&port) {
            return Reason::PortClosed;
        }
        let ep = window::epoch(now, window::bucket_width_ns(cfg.half_open_timeout_ms));
        let skey = cfg.source_key(p.family, &p.src.addr);
        // A source with no entry is within its cap with a full bucket; its
        // entry is made only when one of its SYNs is tracked. A known
        // source's token is taken for every SYN it sends, tracked or not.
        let mut fresh = SourceState::default();
        let known = self.sources.contains_key(&skey);
        let src = self.sources.get_mut(&skey).unwrap_or(&mut fresh);
        let within_rate = !known
            || admit::take_token(
                &mut src.syn_tokens,
                now,
                cfg.syn_rate_per_source,
                cfg.syn_burst,
            );
        let verified = self
            .verified
            .get(&skey)
            .is_some_and(|t| admit::still_verified(*t, now, cfg));
        let occ = Occupancy {
            source: src.half_open.live(ep),
            port: self.ports.get(&port).map_or(0, |c| c.live(ep)),
            global: self.global.live(ep),
        };
        let facts = SynFacts {
            port_allowed: true,
            within_rate,
            verified,
        };
        match admit::admit_syn(cfg, &occ, &facts) {
            Admission::Refuse(r) => r,
            // A SYN the gate does not track makes no per-source entry: a
            // spoofed flood answered with cookies (or passed to the
            // kernel's) must not evict real sources' counts and tokens.
            Admission::PassUntracked => Reason::OverflowPass,
            // The model has no sockets: it says what the gate decides, the
            // cookie path (XDP only) then sends one or fails.
            Admission::Cookie => Reason::Cookie,
            Admission::Track => {
                if !known {
                    admit::take_token(
                        &mut fresh.syn_tokens,
                        now,
                        cfg.syn_rate_per_source,
                        cfg.syn_burst,
                    );
                    self.sources.insert(skey, fresh);
                }
                let src = self.sources.entry(skey).or_default();
                if !self.half_open.contains_key(key) {
                    self.half_open
                        .insert(*key, machine::open(&p.seg, src_is_lo, now, ep, true));
                    src.half_open.add(ep);
                    self.ports.entry(port).or_default().add(ep);
                    self.global.add(ep);
                }
                Reason::Pass
            }
        }
    }

    fn forget(&mut self, key: &FlowKey, client_is_lo: u8, epoch: Option<u32>, cfg: &Config) {
        if self.half_open.remove(key).is_none() {
            return;
        }
        let Some(epoch) = epoch else {
            return;
        };
        let skey = cfg.source_key(key.family, key.client_addr(client_is_lo));
        if let Some(s) = self.sources.get_mut(&skey) {
            s.half_open.sub(epoch);
        }
        let server_port = key.server_port(client_is_lo);
        if let Some(c) = self.ports.get_mut(&u16::from_be(server_port)) {
            c.sub(epoch);
        }
        self.global.sub(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overflow;
    use crate::flow::{AF_INET, Endpoint, NO_WSCALE};
    use crate::machine::tcp;

    fn syn(src: [u8; 4], sport: u16) -> Packet {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&src);
        let mut server = [0; 16];
        server[..4].copy_from_slice(&[198, 18, 0, 1]);
        Packet {
            family: AF_INET,
            src: Endpoint {
                addr,
                port: sport.to_be(),
            },
            dst: Endpoint {
                addr: server,
                port: 80u16.to_be(),
            },
            seg: Segment {
                flags: tcp::SYN,
                seq: 1000,
                ack: 0,
                payload_len: 0,
                window: 64_240,
                wscale: NO_WSCALE,
                side: Side::Ingress,
                csum: crate::machine::csum::GOOD,
            },
        }
    }

    /// A denied source's SYN and unknown ACK are dropped before anything
    /// is stored, its tracked connection finishes; an allowed source's
    /// SYN passes a full global cap and takes no count.
    #[test]
    fn prefix_lists_deny_and_allow() {
        let cfg = Config {
            mode: crate::Mode::Enforce as u32,
            max_half_open: 1,
            max_half_open_per_source: 1,
            verified_reserve_pct: 0,
            prefix_lists: prefix::ALLOW | prefix::DENY,
            ..Config::DEFAULT
        };
        let now = 1_000_000_000;
        let mut m = Model::default();
        let step =
            |m: &mut Model, p: &Packet| m.packet(Side::Ingress, p, &cfg, now, Lookup::Nothing);
        // Tracked before its prefix is denied.
        let early = syn([198, 18, 5, 1], 1000);
        assert_eq!(step(&mut m, &early), Reason::Pass);
        m.prefixes = alloc::vec![
            Listed::v4([198, 18, 5, 0], 24, prefix::DENY),
            Listed::v4([198, 18, 9, 0], 24, prefix::ALLOW),
        ];
        assert_eq!(step(&mut m, &syn([198, 18, 5, 2], 1000)), Reason::Denied);
        let mut ack = syn([198, 18, 5, 3], 1000);
        ack.seg.flags = tcp::ACK;
        ack.seg.seq = 5;
        ack.seg.ack = 5;
        assert_eq!(step(&mut m, &ack), Reason::Denied);
        assert_eq!(m.half_open.len(), 1, "nothing stored for the denied");
        // The global cap of 1 is full; the allowed pass it, uncounted.
        assert_eq!(step(&mut m, &syn([198, 18, 6, 1], 1000)), Reason::Global);
        for port in 1000..1005 {
            assert_eq!(step(&mut m, &syn([198, 18, 9, 7], port)), Reason::Allowed);
        }
        assert_eq!(m.half_open.len(), 6);
        let ep = window::epoch(now, window::bucket_width_ns(cfg.half_open_timeout_ms));
        assert_eq!(m.global.live(ep), 1, "only the early SYN holds a count");
        // The early connection's retransmitted SYN is denied, as any SYN
        // from the prefix; its other segments still meet its entry.
        assert_eq!(step(&mut m, &early), Reason::Denied);
    }

    /// Over the global budget, a SYN passed untracked or answered with a
    /// cookie makes no per-source entry, while a tracked one does, and a
    /// source at its cap stays refused under its own reason.
    #[test]
    fn untracked_syns_make_no_source_entry() {
        for (overflow, over) in [
            (Overflow::Pass, Reason::OverflowPass),
            (Overflow::Cookie, Reason::Cookie),
        ] {
            let cfg = Config {
                mode: crate::Mode::Enforce as u32,
                overflow: overflow as u32,
                max_half_open: 2,
                max_half_open_per_source: 1,
                verified_reserve_pct: 0,
                ..Config::DEFAULT
            };
            let mut m = Model::default();
            let now = 1_000_000_000;
            let attacker = [198, 18, 0, 66];
            let step =
                |m: &mut Model, p: &Packet| m.packet(Side::Ingress, p, &cfg, now, Lookup::Nothing);
            assert_eq!(step(&mut m, &syn(attacker, 1000)), Reason::Pass);
            assert_eq!(step(&mut m, &syn([198, 19, 0, 1], 1000)), Reason::Pass);
            assert_eq!(m.sources.len(), 2, "tracked SYNs make entries");
            for i in 0..100u16 {
                let spoofed = [198, 19, 1 + (i >> 8) as u8, i as u8];
                assert_eq!(step(&mut m, &syn(spoofed, 2000 + i)), over);
            }
            assert_eq!(
                m.sources.len(),
                2,
                "{overflow:?}: untracked SYNs made entries"
            );
            assert_eq!(
                step(&mut m, &syn(attacker, 1001)),
                Reason::PerSource,
                "{overflow:?}: the attacker's cap held"
            );
        }
    }
}
