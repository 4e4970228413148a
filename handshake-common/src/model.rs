//! A reference model of the kernel programs' tracking, on ordinary maps:
//! what `handshake-ebpf/src/track.rs` does with the BPF maps, step for step,
//! using the same pure functions. The differential tests run random packet
//! sequences through the real programs (BPF_PROG_TEST_RUN) and through this
//! model and demand the same verdict and the same states after every packet.
//!
//! Not modelled: header parsing (the model takes parsed facts; the parser
//! has its own corpus tests), LRU eviction (the tests stay far below every
//! map's capacity) and races between CPUs.

use alloc::collections::BTreeMap;

use crate::admit::{self, Admission, Occupancy, SynFacts};
use crate::config::Config;
use crate::flow::{AF_INET, Endpoint, FlowEntry, FlowKey, SourceKey, SourceState, flags};
use crate::machine::{self, Dir, Segment, Step, Untracked};
use crate::reason::Reason;
use crate::window::{self, WindowCounter};

/// Where a packet crosses the interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// Arriving: the XDP program.
    Ingress,
    /// Leaving: the TC egress program.
    Egress,
}

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
}

impl Model {
    /// The reason the kernel programs give `p` at `now_ns` under `cfg`,
    /// updating the maps as they do. (`mode=off` passes before tracking;
    /// the mode otherwise only turns a drop reason into a pass.)
    pub fn packet(&mut self, side: Side, p: &Packet, cfg: &Config, now_ns: u64) -> Reason {
        if cfg.mode() == crate::Mode::Off {
            return Reason::Pass;
        }
        if let Err(r) = machine::check(u16::from_be(p.src.port), u16::from_be(p.dst.port), &p.seg) {
            return r;
        }
        let (key, src_is_lo) = FlowKey::normalise(p.family, &p.src, &p.dst);
        if let Some(r) = self.established_step(p, &key, src_is_lo, cfg, now_ns) {
            return r;
        }
        if let Some(r) = self.half_open_step(p, &key, src_is_lo, cfg, now_ns) {
            return r;
        }
        match machine::untracked(&p.seg) {
            Untracked::Open if side == Side::Ingress => {
                self.new_syn(p, &key, src_is_lo, cfg, now_ns)
            }
            Untracked::Open => {
                let e = machine::open(&p.seg, src_is_lo, now_ns, 0, false);
                self.half_open.entry(key).or_insert(e);
                Reason::Pass
            }
            Untracked::Ignore => Reason::Pass,
            Untracked::PickUp => {
                let fresh = machine::pick_up(
                    u16::from_be(p.src.port),
                    u16::from_be(p.dst.port),
                    src_is_lo,
                    now_ns,
                );
                let n = match machine::step(&fresh, dir_of(&fresh, src_is_lo), &p.seg, now_ns) {
                    Step::Update(n) => n,
                    _ => fresh,
                };
                self.established.insert(key, n);
                Reason::Pass
            }
        }
    }

    /// The (client, server) states of the flow `p` belongs to, and whether
    /// its entry is in the half-open map; `None` when it has no entry.
    pub fn states(&self, p: &Packet) -> Option<(u8, u8, bool)> {
        let (key, _) = FlowKey::normalise(p.family, &p.src, &p.dst);
        if let Some(e) = self.established.get(&key) {
            return Some((e.client_state, e.server_state, false));
        }
        self.half_open
            .get(&key)
            .map(|e| (e.client_state, e.server_state, true))
    }

    fn established_step(
        &mut self,
        p: &Packet,
        key: &FlowKey,
        src_is_lo: bool,
        cfg: &Config,
        now: u64,
    ) -> Option<Reason> {
        let e = self.established.get(key)?;
        if machine::finished_expired(e, now, cfg) {
            self.established.remove(key);
            return None;
        }
        match machine::step(e, dir_of(e, src_is_lo), &p.seg, now) {
            Step::Update(n) | Step::Promote(n) => {
                self.established.insert(*key, n);
                Some(Reason::Pass)
            }
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
        let e = *self.half_open.get(key)?;
        let epoch = e.has(flags::COUNTED).then_some(e.epoch);
        if machine::half_open_expired(&e, now, cfg) {
            self.forget(key, e.client_is_lo, epoch, cfg);
            return None;
        }
        Some(
            match machine::step(&e, dir_of(&e, src_is_lo), &p.seg, now) {
                Step::Update(n) => {
                    self.half_open.insert(*key, n);
                    Reason::Pass
                }
                Step::Promote(n) => {
                    self.established.insert(*key, n);
                    if epoch.is_some() {
                        let client = client_addr(key, e.client_is_lo);
                        self.verified
                            .insert(source_key(key.family, client, cfg), now);
                    }
                    self.forget(key, e.client_is_lo, epoch, cfg);
                    Reason::Pass
                }
                Step::Remove | Step::Restart => {
                    self.forget(key, e.client_is_lo, epoch, cfg);
                    Reason::Pass
                }
                Step::Reject(r) => r,
            },
        )
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
        let skey = source_key(p.family, &p.src.addr, cfg);
        let src = self.sources.entry(skey).or_default();
        let within_rate = admit::take_token(
            &mut src.syn_tokens,
            now,
            cfg.syn_rate_per_source,
            cfg.syn_burst,
        );
        let verified = self
            .verified
            .get(&skey)
            .is_some_and(|t| admit::still_verified(*t, now, cfg));
        let port_count = self.ports.entry(port).or_default();
        let occ = Occupancy {
            source: src.half_open.live(ep),
            port: port_count.live(ep),
            global: self.global.live(ep),
        };
        let facts = SynFacts {
            port_allowed: true,
            within_rate,
            verified,
        };
        match admit::admit_syn(cfg, &occ, &facts) {
            Admission::Refuse(r) => r,
            Admission::PassUntracked => Reason::OverflowPass,
            // The model has no sockets: it says what the gate decides, the
            // cookie path (XDP only) then sends one or fails.
            Admission::Cookie => Reason::Cookie,
            Admission::Track => {
                if !self.half_open.contains_key(key) {
                    self.half_open
                        .insert(*key, machine::open(&p.seg, src_is_lo, now, ep, true));
                    src.half_open.add(ep);
                    port_count.add(ep);
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
        let skey = source_key(key.family, client_addr(key, client_is_lo), cfg);
        if let Some(s) = self.sources.get_mut(&skey) {
            s.half_open.sub(epoch);
        }
        let server_port = if client_is_lo != 0 {
            key.hi_port
        } else {
            key.lo_port
        };
        if let Some(c) = self.ports.get_mut(&u16::from_be(server_port)) {
            c.sub(epoch);
        }
        self.global.sub(epoch);
    }
}

fn dir_of(e: &FlowEntry, src_is_lo: bool) -> Dir {
    if (e.client_is_lo != 0) == src_is_lo {
        Dir::FromClient
    } else {
        Dir::FromServer
    }
}

fn client_addr(key: &FlowKey, client_is_lo: u8) -> &[u8; 16] {
    if client_is_lo != 0 {
        &key.lo_addr
    } else {
        &key.hi_addr
    }
}

fn source_key(family: u8, addr: &[u8; 16], cfg: &Config) -> SourceKey {
    let prefix = if family == AF_INET {
        cfg.source_prefix_v4
    } else {
        cfg.source_prefix_v6
    };
    SourceKey::new(family, addr, prefix)
}
