//! What an attached gate holds, read: the connections, their counts by
//! state, the busiest sources and ports, and the sweep of expired entries.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::maps::{HashMap, IterableMap as _, MapData};
use handshake_common::flow::{AF_INET, Endpoint};
use handshake_common::{
    Config, FlowEntry, FlowKey, SourceKey, TcpState, WindowCounter, machine, window,
};

use super::{Counters, Gate};
use crate::GateError;
use crate::settings::Settings;

/// A tracked connection, as `conns` and `status` see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub client: (IpAddr, u16),
    pub server: (IpAddr, u16),
    pub entry: FlowEntry,
    /// Still in the half-open map.
    pub half_open: bool,
}

/// A flow map's entries: in batches, or by a walk where the kernel cannot
/// batch.
fn read_flows(
    map: &HashMap<MapData, FlowKey, FlowEntry>,
) -> Result<Vec<(FlowKey, FlowEntry)>, GateError> {
    match crate::batch::read_all(map.map()) {
        Ok(v) => Ok(v),
        Err(e) if crate::batch::unsupported(&e) => Ok(map.iter().filter_map(Result::ok).collect()),
        Err(e) => Err(GateError::step("read the connection maps")(e)),
    }
}

/// Deletes the entries of `map` that are `expired`, looking at each again
/// just before it goes; how many went.
fn sweep_map(
    map: &mut HashMap<MapData, FlowKey, FlowEntry>,
    expired: impl Fn(&FlowEntry) -> bool,
) -> Result<usize, GateError> {
    let mut removed = 0;
    for (k, e) in read_flows(map)? {
        if expired(&e) && map.get(&k, 0).is_ok_and(|now| expired(&now)) && map.remove(&k).is_ok() {
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

/// Counts of connections per state, for each side.
pub fn state_counts(conns: &[Conn]) -> [BTreeMap<&'static str, u64>; 2] {
    let mut client = BTreeMap::new();
    let mut server = BTreeMap::new();
    for s in TcpState::ALL {
        client.insert(s.name(), 0);
        server.insert(s.name(), 0);
    }
    for c in conns {
        *client.entry(c.entry.client_state().name()).or_insert(0) += 1;
        *server.entry(c.entry.server_state().name()).or_insert(0) += 1;
    }
    [client, server]
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
    /// When it was read (monotonic ns).
    pub taken_ns: u64,
}

impl Gate {
    /// Reads a [`Snapshot`], with the `top` busiest sources and ports.
    pub fn snapshot(&self, top: usize) -> Result<Snapshot, GateError> {
        let settings = self.settings()?;
        let cfg = settings.config;
        let now = crate::monotonic_ns();
        let (conns, map_entries) = self.conns_and_fill(&cfg, now)?;
        Ok(Snapshot {
            map_entries,
            counters: self.counters()?,
            half_open: self.half_open_now(&cfg, now)?,
            states: state_counts(&conns),
            connections: conns.len(),
            top_sources: self.top_sources(&cfg, now, top),
            top_ports: self.top_ports(&cfg, now, top)?,
            taken_ns: now,
            settings,
        })
    }
}


impl Gate {
    /// Deletes expired entries: half-open attempts past their timeout and
    /// connections 2·MSL after they finished. Their half-open counts need
    /// nothing: they aged out with their time bucket. Each entry is looked
    /// at again just before it goes, so one that a packet brought back to
    /// life meanwhile stays (a packet landing between that look and the
    /// delete loses its entry; the flow is picked up again as ESTABLISHED).
    /// Returns how many went from each map.
    pub fn sweep(&mut self, cfg: &Config, now_ns: u64) -> Result<(usize, usize), GateError> {
        let half_open = sweep_map(&mut self.half_open, |e| {
            machine::half_open_expired(e, now_ns, cfg)
        })?;
        let established = sweep_map(&mut self.established, |e| {
            machine::finished_expired(e, now_ns, cfg)
        })?;
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
        let mut v: Vec<(u16, u32)> = all
            .into_iter()
            .map(|(port, c)| (port as u16, c.live(ep)))
            .filter(|(_, c)| *c > 0)
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        Ok(v)
    }

    /// Sources with attempts counting now, the most first.
    pub fn top_sources(&self, cfg: &Config, now_ns: u64, n: usize) -> Vec<(String, u32)> {
        let ep = now_epoch(cfg, now_ns);
        let mut v: Vec<(String, u32)> = self
            .sources
            .iter()
            .filter_map(Result::ok)
            .map(|(k, s)| (source_name(&k), s.half_open.live(ep)))
            .filter(|(_, c)| *c > 0)
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// Every connection still tracked (expired entries left out), read in
    /// batches.
    pub fn conns(&self, cfg: &Config, now_ns: u64) -> Result<Vec<Conn>, GateError> {
        Ok(self.conns_and_fill(cfg, now_ns)?.0)
    }

    /// [`Gate::conns`], and from the same read the entries in each
    /// connection map, (half-open, established), expired ones included
    /// (they hold their slot until swept or replaced).
    fn conns_and_fill(
        &self,
        cfg: &Config,
        now_ns: u64,
    ) -> Result<(Vec<Conn>, (usize, usize)), GateError> {
        let mut out = Vec::new();
        let mut fill = [0usize; 2];
        for (i, (map, half_open)) in [(&self.half_open, true), (&self.established, false)]
            .into_iter()
            .enumerate()
        {
            let flows = read_flows(map)?;
            fill[i] = flows.len();
            for (k, e) in flows {
                let expired = if half_open {
                    machine::half_open_expired(&e, now_ns, cfg)
                } else {
                    machine::finished_expired(&e, now_ns, cfg)
                };
                if !expired {
                    let (c, s) = k.ends(e.client_is_lo != 0);
                    out.push(Conn {
                        client: endpoint(k.family, &c),
                        server: endpoint(k.family, &s),
                        entry: e,
                        half_open,
                    });
                }
            }
        }
        Ok((out, (fill[0], fill[1])))
    }
}
