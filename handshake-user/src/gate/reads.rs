//! What an attached gate holds, read: the connections, their counts by
//! state, the busiest sources and ports, and the sweep of expired entries.
//!
//! Nothing here holds a whole connection map in memory. The counts by state
//! come from the kernel (the pinned counting program, [`Gate::tally`], or
//! the count its last sweep left, [`Gate::kept`]); the
//! connections themselves are handed out a batch at a time as they are read
//! ([`Gate::for_each_conn`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::ControlFlow;

use aya::Pod;
use aya::maps::{Array, HashMap, IterableMap as _, MapData, MapInfo};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use handshake_common::flow::{AF_INET, Endpoint};
use handshake_common::machine::Expiry;
use handshake_common::tally::{Counted, STATES, Tally, TallyPacket};
use handshake_common::{
    Config, FlowEntry, FlowKey, SourceKey, SourceState, TcpState, WindowCounter, maps, window,
};

use super::{Counters, Gate};
use crate::conns::ConnMap;
use crate::settings::Settings;
use crate::{GateError, pins};

/// A tracked connection, as `conns` and `status` see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub client: (IpAddr, u16),
    pub server: (IpAddr, u16),
    pub entry: FlowEntry,
    /// Still in the half-open map.
    pub half_open: bool,
}

impl Conn {
    fn of(k: &FlowKey, e: &FlowEntry, half_open: bool) -> Conn {
        let (c, s) = k.ends(e.client_is_lo());
        Conn {
            client: endpoint(k.family, &c),
            server: endpoint(k.family, &s),
            entry: *e,
            half_open,
        }
    }
}

/// [`crate::batch::walk`], its error named for `what`.
fn for_each_batch<K: Pod, V: Pod>(
    map: &HashMap<MapData, K, V>,
    what: &'static str,
    each: impl FnMut(&[(K, V)]) -> ControlFlow<()>,
) -> Result<(), GateError> {
    crate::batch::walk(map, each).map_err(GateError::step(format!("read the {what}")))
}

/// Deletes the entries of `map` that are `expired`, looking at each again
/// just before it goes; how many went. Only the expired keys are kept
/// while the map is read.
fn sweep_map(
    map: &mut ConnMap<MapData>,
    expired: impl Fn(&FlowEntry) -> bool,
) -> Result<usize, GateError> {
    let mut keys = Vec::new();
    map.for_each_batch(|batch| {
        keys.extend(batch.iter().filter(|(_, e)| expired(e)).map(|(k, _)| *k));
        ControlFlow::Continue(())
    })
    .map_err(GateError::step("read the connection maps"))?;
    let mut removed = 0;
    for k in keys {
        if map
            .get(&k)
            .is_ok_and(|now| now.is_some_and(|e| expired(&e)))
            && map.remove(&k).is_ok()
        {
            removed += 1;
        }
    }
    Ok(removed)
}

fn now_epoch(cfg: &Config, now_ns: u64) -> u32 {
    window::epoch(now_ns, window::bucket_width_ns(cfg.half_open_timeout_ms))
}

fn ip(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

fn endpoint(family: u8, e: &Endpoint) -> (IpAddr, u16) {
    (ip(family, &e.addr), u16::from_be(e.port))
}

fn source_name(k: &SourceKey) -> String {
    format!("{}/{}", ip(k.family, &k.addr), k.prefix_len)
}

/// Counts of connections per state, for each side, by name.
pub fn state_counts(t: &Tally) -> [BTreeMap<&'static str, u64>; 2] {
    let by_name = |counts: &[u64; STATES]| {
        TcpState::ALL
            .into_iter()
            .map(|s| (s.name(), counts[s as usize]))
            .collect()
    };
    [by_name(&t.client), by_name(&t.server)]
}

/// The `n` largest of `(name, count)` pairs with a count above 0, the most
/// first (ties by name), keeping no more than `n` while it goes.
fn top<N: Ord + Clone>(
    mut v: Vec<(N, u32)>,
    more: impl Iterator<Item = (N, u32)>,
    n: usize,
) -> Vec<(N, u32)> {
    let order = |a: &(N, u32), b: &(N, u32)| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0));
    for item in more.filter(|(_, c)| *c > 0) {
        v.push(item);
        if v.len() > 2 * n.max(1) {
            v.sort_by(order);
            v.truncate(n);
        }
    }
    v.sort_by(order);
    v.truncate(n);
    v
}

/// Runs the counting program (`tally_conns`, loaded) once, over the maps it
/// was loaded with: their counts at `now_ns`.
pub fn run_tally(prog: &Xdp, now_ns: u64) -> Result<Tally, GateError> {
    let input = TallyPacket {
        now_ns,
        ..TallyPacket::default()
    };
    Ok(run_counting(prog, &input)?.tally)
}

/// Runs the counting program once as a sweep at `now_ns`: the expired
/// entries deleted, the count left in the `COUNTED` map vouched for
/// `keep_ns` (none left if 0). `None` if the program cannot sweep (one
/// pinned by an older version: it only counted).
pub fn run_sweep(
    prog: &Xdp,
    now_ns: u64,
    keep_ns: u64,
    rebuild: bool,
) -> Result<Option<TallyPacket>, GateError> {
    // With `rebuild`, the known-source filter is rebuilt in the same run:
    // the bits of what was swept (and of sources long gone) are cleared.
    let input = TallyPacket {
        now_ns,
        sweep: 1,
        keep_ns,
        rebuild: rebuild as u64,
        ..TallyPacket::default()
    };
    let out = run_counting(prog, &input)?;
    Ok((out.sweep_done != 0).then_some(out))
}

/// How many of the daemon's sweeps rebuild the known-source filter: one in
/// this many (a minute at the default interval). Between two, the filter
/// keeps the bits of what left the maps: more packets than needed take
/// the lookups, none fewer.
pub const REBUILD_EVERY: u64 = 12;

/// Runs the counting program once to rebuild the known-source filter
/// (`handshake_common::known`); whether it did.
pub fn run_rebuild(prog: &Xdp, now_ns: u64) -> Result<bool, GateError> {
    let input = TallyPacket {
        now_ns,
        rebuild: 1,
        ..TallyPacket::default()
    };
    Ok(run_counting(prog, &input)?.rebuilt != 0)
}

fn run_counting(prog: &Xdp, input: &TallyPacket) -> Result<TallyPacket, GateError> {
    // SAFETY: `TallyPacket` is plain `repr(C)` integers with no padding.
    let bytes = unsafe {
        std::slice::from_raw_parts((&raw const *input).cast::<u8>(), size_of::<TallyPacket>())
    };
    let mut out = vec![0u8; size_of::<TallyPacket>()];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(bytes),
            data_out: Some(&mut out),
            ..TestRunOptions::default()
        })
        .map_err(GateError::step("run the counting program"))?;
    if r.return_value != crate::testrun::XDP_PASS
        || (r.data_size_out as usize) < size_of::<TallyPacket>()
    {
        return Err(GateError::step("count the connection maps")(
            std::io::Error::other(format!(
                "the counting program returned {} with {} bytes",
                r.return_value, r.data_size_out
            )),
        ));
    }
    // SAFETY: `out` holds a whole `TallyPacket`; any bytes make a valid one.
    Ok(unsafe { out.as_ptr().cast::<TallyPacket>().read_unaligned() })
}

/// Entries below which `status` and the metrics count the maps afresh even
/// when the sweeper has left a count: a walk of this many takes a few tens
/// of milliseconds (about 220 ns an entry), and a small table's counts then
/// move with every packet, as the tests see them. A full half-open map
/// (65,536) alone stays below it.
pub const KEPT_FROM: u64 = 131_072;

/// How a [`Snapshot`]'s counts by state were come by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counts {
    /// Counted for it.
    Fresh,
    /// Left by the daemon's last sweep, at this moment (monotonic ns).
    Kept { taken_ns: u64 },
}

/// Everything `status`, its `--watch` view and the metrics show, read at
/// one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub settings: Settings,
    pub counters: Counters,
    /// The global half-open count the limits use now.
    pub half_open: u32,
    /// Live connections per state: client side, server side.
    pub states: [BTreeMap<&'static str, u64>; 2],
    /// Live connections in all.
    pub connections: usize,
    /// Entries in each connection map, (half-open, established), expired
    /// ones not yet swept included.
    pub map_entries: (usize, usize),
    pub top_sources: Vec<(String, u32)>,
    pub top_ports: Vec<(u16, u32)>,
    /// Prefixes on the allow and deny lists, and what each may hold.
    pub prefixes: (usize, usize, u32),
    /// When it was read (monotonic ns).
    pub taken_ns: u64,
    /// Whether the counts by state (`states`, `connections`,
    /// `map_entries`) were counted for it or kept by the sweeper.
    pub counts: Counts,
}

impl Snapshot {
    /// How old its counts by state were when it was read, ns.
    pub fn counts_age_ns(&self) -> u64 {
        match self.counts {
            Counts::Fresh => 0,
            Counts::Kept { taken_ns } => self.taken_ns.saturating_sub(taken_ns),
        }
    }
}

impl Gate {
    /// Reads a [`Snapshot`], with the `top` busiest sources and ports. It
    /// copies no connection out of the kernel (see [`Gate::tally`]); on a
    /// table of [`KEPT_FROM`] entries or more it takes the counts the
    /// daemon's last sweep left, while the daemon vouches for them, unless
    /// `fresh`.
    pub fn snapshot(&self, top: usize, fresh: bool) -> Result<Snapshot, GateError> {
        let settings = self.settings()?;
        let cfg = settings.config;
        let now = crate::monotonic_ns();
        let kept = if fresh { None } else { self.kept(now)? };
        let (tally, counts) = match kept {
            Some(c) => (
                c.tally,
                Counts::Kept {
                    taken_ns: c.taken_ns,
                },
            ),
            None => (self.tally(&cfg, now)?, Counts::Fresh),
        };
        Ok(Snapshot {
            counts,
            map_entries: (tally.entries[0] as usize, tally.entries[1] as usize),
            counters: self.counters()?,
            half_open: self.half_open_now(&cfg, now)?,
            states: state_counts(&tally),
            connections: tally.live as usize,
            top_sources: if top == 0 {
                Vec::new()
            } else {
                self.top_sources(&cfg, now, top)?
            },
            top_ports: if top == 0 {
                Vec::new()
            } else {
                self.top_ports(&cfg, now, top)?
            },
            prefixes: {
                let (allow, deny) = self.list_counts()?;
                (allow, deny, self.list_capacity()?)
            },
            taken_ns: now,
            settings,
        })
    }

    /// Both connection maps counted by state at `now_ns`, expiry judged by
    /// `cfg`. The pinned counting program does it in the kernel, in one
    /// `BPF_PROG_TEST_RUN` (a walk of every entry with the CPU's attention,
    /// about 10 ns an entry); a gate attached by a version without that
    /// program is counted here, from the maps read in batches.
    pub fn tally(&self, cfg: &Config, now_ns: u64) -> Result<Tally, GateError> {
        match self.counting_program()? {
            Some(prog) => run_tally(&prog, now_ns),
            None => self.tally_here(cfg, now_ns),
        }
    }

    /// The pinned counting program, if this gate has one (one attached by
    /// an older version may not).
    fn counting_program(&self) -> Result<Option<Xdp>, GateError> {
        let pin = self.dir.join(pins::TALLY_PROG);
        if !pin.exists() {
            return Ok(None);
        }
        Xdp::from_pin(&pin, XdpAttachType::Interface)
            .map(Some)
            .map_err(GateError::step("open the pinned counting program"))
    }

    /// Rebuilds the known-source filter from the maps, sizing its word
    /// first if it has never been (a gate whose filter map was just made).
    /// Whether it was rebuilt: not where the filter or the counting
    /// program is missing (an older gate's), or another rebuild ran.
    pub fn rebuild_known(&mut self) -> Result<bool, GateError> {
        let Some(prog) = self.counting_program()? else {
            return Ok(false);
        };
        if !self.dir.join(maps::KNOWN_GEN).exists() {
            return Ok(false);
        }
        let mut word: Array<MapData, u64> = super::open_map(&self.dir, maps::KNOWN_GEN)?;
        let g = word
            .get(&0, 0)
            .map_err(GateError::step("read the known-source filter's word"))?;
        if g == 0 {
            let words = MapInfo::from_pin(self.dir.join(maps::KNOWN))
                .map_err(GateError::step("read the known-source filter's map"))?
                .max_entries();
            let log2 = handshake_common::known::log2_bits_of(words);
            word.set(0, handshake_common::known::Gen::new(log2).0, 0)
                .map_err(GateError::step("size the known-source filter"))?;
        }
        run_rebuild(&prog, crate::monotonic_ns())
    }

    /// The count the daemon's last sweep left, if it still vouches for it
    /// at `now_ns` and it covers [`KEPT_FROM`] entries or more.
    pub fn kept(&self, now_ns: u64) -> Result<Option<Counted>, GateError> {
        let Some(map) = &self.counted else {
            return Ok(None);
        };
        let read = || {
            map.get(&0, 0)
                .map_err(GateError::step("read the kept count"))
        };
        // The sweeper may be writing it: two copies alike are a whole one
        // (it is written `until_ns` first to 0 and last to its value).
        for _ in 0..3 {
            let (a, b) = (read()?, read()?);
            if a != b {
                continue;
            }
            let large = a.tally.entries.iter().sum::<u64>() >= KEPT_FROM;
            return Ok((a.current(now_ns) && large).then_some(a));
        }
        Ok(None)
    }

    /// Withdraws the count the last sweep left (the sweeper is stopping):
    /// counts are made afresh until a sweeper leaves one again.
    pub fn forget_kept(&mut self) -> Result<(), GateError> {
        match &mut self.counted {
            Some(map) => map
                .set(0, Counted::default(), 0)
                .map_err(GateError::step("withdraw the kept count")),
            None => Ok(()),
        }
    }

    /// [`Gate::tally`] from the maps read here, over the same
    /// [`Tally::add`] the kernel runs.
    fn tally_here(&self, cfg: &Config, now_ns: u64) -> Result<Tally, GateError> {
        let x = Expiry::of(cfg, now_ns);
        let mut t = Tally::default();
        let tables = self.tables()?;
        for (map, half_open) in [(&tables.half_open, true), (&tables.established, false)] {
            map.for_each_batch(|batch| {
                for (_, e) in batch {
                    t.add(e, half_open, &x);
                }
                ControlFlow::Continue(())
            })
            .map_err(GateError::step("read the connection maps"))?;
        }
        Ok(t)
    }

    /// Deletes expired entries: half-open attempts past their timeout and
    /// connections 2·MSL after they finished. Their half-open counts need
    /// nothing: they aged out with their time bucket. The pinned counting
    /// program does it in the kernel, in the walk that counts, and leaves
    /// that count in the `COUNTED` map for `status` and the metrics,
    /// vouched for `keep_ns` (see [`Gate::kept`]); a gate whose program
    /// cannot (attached by an older version) is swept from here.
    /// Returns how many went from each map.
    /// With `rebuild`, the known-source filter is rebuilt in the same run
    /// (the daemon asks once every [`REBUILD_EVERY`] sweeps: the rebuild
    /// walks all four maps and clears half the filter, some times the cost
    /// of the sweep alone).
    pub fn sweep(
        &mut self,
        cfg: &Config,
        now_ns: u64,
        keep_ns: u64,
        rebuild: bool,
    ) -> Result<(usize, usize), GateError> {
        if let Some(prog) = self.counting_program()? {
            let keep = if self.counted.is_some() { keep_ns } else { 0 };
            if let Some(out) = run_sweep(&prog, now_ns, keep, rebuild)? {
                return Ok((out.swept[0] as usize, out.swept[1] as usize));
            }
        }
        self.sweep_here(cfg, now_ns)
    }

    /// [`Gate::sweep`] from the maps read here. Each entry is looked at
    /// again just before it goes, so one that a packet brought back to life
    /// meanwhile stays (a packet landing between that look and the delete
    /// loses its entry; the flow is picked up again as ESTABLISHED).
    pub fn sweep_here(&mut self, cfg: &Config, now_ns: u64) -> Result<(usize, usize), GateError> {
        let x = Expiry::of(cfg, now_ns);
        let t = self.tables_mut()?;
        let half_open = sweep_map(&mut t.half_open, |e| x.half_open(e))?;
        let established = sweep_map(&mut t.established, |e| x.finished(e))?;
        Ok((half_open, established))
    }

    /// The global half-open count the limits use now.
    pub fn half_open_now(&self, cfg: &Config, now_ns: u64) -> Result<u32, GateError> {
        let g = self
            .global
            .get(&0, 0)
            .map_err(GateError::step("read the global half-open count"))?;
        Ok(g.live(now_epoch(cfg, now_ns)))
    }

    /// Destination ports with attempts counting now, the most first.
    pub fn top_ports(
        &self,
        cfg: &Config,
        now_ns: u64,
        n: usize,
    ) -> Result<Vec<(u16, u32)>, GateError> {
        let ep = now_epoch(cfg, now_ns);
        let all: Vec<(u32, WindowCounter)> = match crate::batch::read_all(self.ports.map()) {
            Ok(v) => v,
            Err(e) if crate::batch::unsupported(&e) => self
                .ports
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((i as u32, c.ok()?)))
                .collect(),
            Err(e) => return Err(GateError::step("read the per-port counts")(e)),
        };
        let live = all.into_iter().map(|(port, c)| (port as u16, c.live(ep)));
        Ok(top(Vec::new(), live, n))
    }

    /// Sources with attempts counting now, the most first.
    pub fn top_sources(
        &self,
        cfg: &Config,
        now_ns: u64,
        n: usize,
    ) -> Result<Vec<(String, u32)>, GateError> {
        let ep = now_epoch(cfg, now_ns);
        // Candidates: the sources counting as many as the `n`-th or more
        // (ties kept, since they are ranked by name, which is made last).
        let mut best: Vec<(SourceKey, u32)> = Vec::new();
        for_each_batch(
            &self.sources,
            "per-source counts",
            |batch: &[(SourceKey, SourceState)]| {
                best.extend(
                    batch
                        .iter()
                        .map(|(k, s)| (*k, s.half_open.live(ep)))
                        .filter(|(_, c)| *c > 0),
                );
                if best.len() > 2 * n.max(1) {
                    best.sort_by_key(|s| std::cmp::Reverse(s.1));
                    let least = best[n.max(1) - 1].1;
                    best.retain(|(_, c)| *c >= least);
                }
                ControlFlow::Continue(())
            },
        )?;
        let named = best.into_iter().map(|(k, c)| (source_name(&k), c));
        Ok(top(Vec::new(), named, n))
    }

    /// Calls `each` with every connection still tracked (expired entries
    /// left out), half-open ones first, as the maps are read, a batch at a
    /// time; stops when `each` says so.
    pub fn for_each_conn(
        &self,
        cfg: &Config,
        now_ns: u64,
        mut each: impl FnMut(&Conn) -> ControlFlow<()>,
    ) -> Result<(), GateError> {
        let x = Expiry::of(cfg, now_ns);
        let mut stopped = false;
        let tables = self.tables()?;
        for (map, half_open) in [(&tables.half_open, true), (&tables.established, false)] {
            if stopped {
                break;
            }
            map.for_each_batch(|batch| {
                for (k, e) in batch {
                    if !x.expired(e, half_open) && each(&Conn::of(k, e, half_open)).is_break() {
                        stopped = true;
                        return ControlFlow::Break(());
                    }
                }
                ControlFlow::Continue(())
            })
            .map_err(GateError::step("read the connection maps"))?;
        }
        Ok(())
    }

    /// Every connection still tracked (expired entries left out), in
    /// memory: for tests and small tables; `conns` streams instead.
    pub fn conns(&self, cfg: &Config, now_ns: u64) -> Result<Vec<Conn>, GateError> {
        let mut out = Vec::new();
        self.for_each_conn(cfg, now_ns, |c| {
            out.push(c.clone());
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }
}
