//! A handle on an attached gate through its pins, and the ways to attach,
//! detach and replace one.
//!
//! - [`lifecycle`]: `attach`, `attach --replace`, `detach`, the rollback of
//!   a failed attach and the pinned maps' layout check;
//! - [`egress`]: the TC egress program's link (TCX) or netlink filter;
//! - [`multiprog`]: the XDP program as one of libxdp's dispatcher's;
//! - this file: [`Gate`], the maps opened from the pins, and its plain reads;
//! - [`write`]: new settings into the maps (and the TCP settings cookies need);
//! - [`lists`]: the allow and deny prefix lists, and `deny --cut`;
//! - [`reads`]: the connections, the counts by state, the busiest sources and
//!   ports, the sweep, and the [`Snapshot`] `status` and the metrics show.

mod egress;
mod lifecycle;
mod lists;
pub mod multiprog;
mod reads;
mod write;

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, Map, MapData, MapInfo, PerCpuArray, RingBuf};
use aya::programs::ProgramInfo;
use handshake_common::tally::Counted;
use handshake_common::{
    Config, FlowEntry, FlowKey, Reason, SourceKey, SourceState, WindowCounter, maps,
};

use crate::conns::ConnMap;
use crate::settings::Settings;
use crate::{GateError, pins};

pub use lifecycle::{
    AttachMode, AttachOptions, MAP_NAMES, MAX_CONNECTIONS, MAX_PREFIXES, MIN_CONNECTIONS,
    MIN_PREFIXES, OPTIONAL_MAPS, attach, check_layout, detach, known_words, replace,
    v6_connections,
};
pub use lists::Changed;
pub use reads::{
    Conn, Counts, KEPT_FROM, REBUILD_EVERY, Snapshot, run_rebuild, run_sweep, run_tally,
    state_counts,
};

/// Packet counts per reason, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Arriving packets that got each reason (would-be drops included in
    /// monitor mode).
    pub packets: [u64; Reason::COUNT as usize],
    /// Arriving packets actually dropped for each reason.
    pub dropped: [u64; Reason::COUNT as usize],
    /// Leaving packets per reason (the egress program never drops).
    pub egress: [u64; Reason::COUNT as usize],
}

impl Counters {
    pub fn get(&self, r: Reason) -> u64 {
        self.packets[r as usize]
    }
}

/// An attached gate, opened from its pins (by any process, at any time).
pub struct Gate {
    pub dir: PathBuf,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    egress: PerCpuArray<MapData, u64>,
    /// The connection tables (half-open, established), or why they could
    /// not be opened: a gate attached by another version (one map per
    /// table, or entries of another size) can still be detached.
    tables: Result<Tables, String>,
    sources: HashMap<MapData, SourceKey, SourceState>,
    global: Array<MapData, WindowCounter>,
    ports: Array<MapData, WindowCounter>,
    allowed_ports: Array<MapData, u64>,
    meta: Array<MapData, u64>,
    /// The count the last in-kernel sweep left; absent from gates attached
    /// by older versions.
    counted: Option<Array<MapData, Counted>>,
}

fn open_map<T>(dir: &Path, name: &str) -> Result<T, GateError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(dir.join(name))
        .map_err(GateError::step(format!("open the pinned {name} map")))?;
    let map = Map::from_map_data(data).map_err(GateError::step(format!("read the {name} map")))?;
    T::try_from(map).map_err(GateError::step(format!(
        "use the {name} map (was it made by another version?)"
    )))
}

/// The error for a gate whose connection tables this version cannot read.
fn other_layout(why: &str) -> GateError {
    GateError::IncompatibleLayout {
        map: "the connection maps".into(),
        why: format!("{why} (made by another version?)"),
    }
}

/// A gate's two connection tables.
pub(crate) struct Tables {
    pub half_open: ConnMap<MapData>,
    pub established: ConnMap<MapData>,
}

fn open_tables(dir: &Path) -> Result<Tables, String> {
    let open = |names: [&str; 2]| {
        ConnMap::from_pins(dir, names).map_err(|e| format!("{} and {}: {e}", names[0], names[1]))
    };
    Ok(Tables {
        half_open: open(maps::HALF_OPEN)?,
        established: open(maps::ESTABLISHED)?,
    })
}

impl Gate {
    pub fn open(iface: &str, netns: Option<&str>) -> Result<Gate, GateError> {
        Self::open_dir(lifecycle::attached_dir(iface, netns)?)
    }

    pub fn open_dir(dir: PathBuf) -> Result<Gate, GateError> {
        Ok(Gate {
            config: open_map(&dir, maps::CONFIG)?,
            counters: open_map(&dir, maps::COUNTERS)?,
            egress: open_map(&dir, maps::EGRESS)?,
            tables: open_tables(&dir),
            sources: open_map(&dir, maps::SOURCES)?,
            global: open_map(&dir, maps::GLOBAL)?,
            ports: open_map(&dir, maps::PORTS)?,
            allowed_ports: open_map(&dir, maps::ALLOWED_PORTS)?,
            meta: open_map(&dir, maps::META)?,
            counted: if dir.join(maps::COUNTED).exists() {
                Some(open_map(&dir, maps::COUNTED)?)
            } else {
                None
            },
            dir,
        })
    }

    /// The connection tables, or the error that says the gate predates
    /// them.
    pub(crate) fn tables(&self) -> Result<&Tables, GateError> {
        self.tables.as_ref().map_err(|why| other_layout(why))
    }

    pub(crate) fn tables_mut(&mut self) -> Result<&mut Tables, GateError> {
        self.tables.as_mut().map_err(|why| other_layout(why))
    }

    /// A slot of the `META` array.
    pub fn meta(&self, slot: u32) -> Result<u64, GateError> {
        self.meta
            .get(&slot, 0)
            .map_err(GateError::step("read the META map"))
    }

    pub fn set_meta(&mut self, slot: u32, value: u64) -> Result<(), GateError> {
        self.meta
            .set(slot, value, 0)
            .map_err(GateError::step("write the META map"))
    }

    /// The pinned XDP program's kernel id (aya-log attaches to it).
    pub fn xdp_program_id(&self) -> Result<u32, GateError> {
        Ok(ProgramInfo::from_pin(self.dir.join(pins::XDP_PROG))
            .map_err(GateError::step("read the pinned XDP program"))?
            .id())
    }

    /// The drop-event ring buffer. Reading consumes: one reader at a time.
    pub fn events(&self) -> Result<RingBuf<MapData>, GateError> {
        open_map(&self.dir, maps::EVENTS)
    }

    /// The entry of one connection, from whichever map holds it (true:
    /// the established map), if the gate tracks it.
    pub fn entry(&self, key: &FlowKey) -> Result<Option<(FlowEntry, bool)>, GateError> {
        let t = self.tables()?;
        for (map, established) in [(&t.established, true), (&t.half_open, false)] {
            if let Some(e) = map
                .get(key)
                .map_err(GateError::step("read a connection entry"))?
            {
                return Ok(Some((e, established)));
            }
        }
        Ok(None)
    }

    /// Capacities of the connection tables: (half-open, established),
    /// each its IPv4 and its IPv6 map's: the entries each can hold (the
    /// IPv4 established table's slots, its header not counted).
    pub fn map_capacity(&self) -> Result<([u32; 2], [u32; 2]), GateError> {
        let cap = |name: &str| -> Result<u32, GateError> {
            let n = MapInfo::from_pin(self.dir.join(name))
                .map_err(GateError::step(format!("read the {name} map's size")))?
                .max_entries();
            Ok(if name == maps::ESTABLISHED_V4 {
                n.saturating_sub(1)
            } else {
                n
            })
        };
        let table = |names: [&str; 2]| -> Result<[u32; 2], GateError> {
            Ok([cap(names[0])?, cap(names[1])?])
        };
        Ok((table(maps::HALF_OPEN)?, table(maps::ESTABLISHED)?))
    }

    pub fn config(&self) -> Result<Config, GateError> {
        self.config
            .get(&0, 0)
            .map_err(GateError::step("read the configuration"))
    }

    /// The whole settings: the configuration and the allowed ports.
    pub fn settings(&self) -> Result<Settings, GateError> {
        let config = self.config()?;
        let words = self.port_words()?;
        Ok(Settings::from_maps(config, &words))
    }

    fn port_words(&self) -> Result<Vec<u64>, GateError> {
        let read = GateError::step("read the allowed ports");
        self.allowed_ports
            .iter()
            .collect::<Result<Vec<u64>, _>>()
            .map_err(read)
    }

    pub fn counters(&self) -> Result<Counters, GateError> {
        let mut c = Counters::default();
        let sum = |m: &PerCpuArray<MapData, u64>, slot: u32| -> Result<u64, GateError> {
            Ok(m.get(&slot, 0)
                .map_err(GateError::step("read the counters"))?
                .iter()
                .sum())
        };
        for r in Reason::ALL {
            let i = r as usize;
            let (passed, dropped) = (
                sum(&self.counters, r.counter_slot(false))?,
                sum(&self.counters, r.counter_slot(true))?,
            );
            c.packets[i] = passed + dropped;
            c.dropped[i] = dropped;
            c.egress[i] = sum(&self.egress, r as u32)?;
        }
        Ok(c)
    }
}
