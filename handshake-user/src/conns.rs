//! A connection table as the controller sees it: the pair of maps the
//! kernel programs keep it in (IPv4 with 12-byte keys, IPv6 with 40-byte
//! ones), spoken to with [`FlowKey`]s throughout.

use std::borrow::{Borrow, BorrowMut};
use std::io;
use std::ops::ControlFlow;

use aya::maps::{HashMap, Map, MapData, MapError};

use crate::batch::walk;
use handshake_common::{FlowEntry, FlowKey, FlowKeyV4, flow::AF_INET};

/// One table: its IPv4 map and its IPv6 map.
pub struct ConnMap<T> {
    pub v4: HashMap<T, FlowKeyV4, FlowEntry>,
    pub v6: HashMap<T, FlowKey, FlowEntry>,
}

impl ConnMap<MapData> {
    /// Opens the table's two maps from their pins in `dir`; `names` is
    /// `maps::HALF_OPEN` or `maps::ESTABLISHED`.
    pub fn from_pins(dir: &std::path::Path, names: [&str; 2]) -> Result<Self, MapError> {
        let open = |name: &str| -> Result<Map, MapError> {
            Ok(Map::LruHashMap(MapData::from_pin(dir.join(name))?))
        };
        Ok(ConnMap {
            v4: HashMap::try_from(open(names[0])?)?,
            v6: HashMap::try_from(open(names[1])?)?,
        })
    }
}

impl<'a> ConnMap<&'a MapData> {
    /// The table `names` of a loaded object.
    pub fn of(ebpf: &'a aya::Ebpf, names: [&str; 2]) -> Result<Self, MapError> {
        let map = |name: &str| {
            ebpf.map(name).ok_or_else(|| MapError::InvalidName {
                name: name.to_string(),
            })
        };
        Ok(ConnMap {
            v4: HashMap::try_from(map(names[0])?)?,
            v6: HashMap::try_from(map(names[1])?)?,
        })
    }
}

impl<T: Borrow<MapData>> ConnMap<T> {
    /// The entry of `key`, if there is one.
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowEntry>, MapError> {
        let got = if key.family == AF_INET {
            self.v4.get(&key.v4(), 0)
        } else {
            self.v6.get(key, 0)
        };
        match got {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Hands `each` the table's entries a batch at a time, the IPv4 map's
    /// first (their keys widened); stops when `each` says so. Batched
    /// reads, or a walk of single lookups where the kernel cannot batch.
    pub fn for_each_batch(
        &self,
        mut each: impl FnMut(&[(FlowKey, FlowEntry)]) -> ControlFlow<()>,
    ) -> io::Result<()> {
        let mut wide = Vec::new();
        let mut stopped = false;
        walk(&self.v4, |batch| {
            wide.clear();
            wide.extend(batch.iter().map(|(k, e)| (k.widen(), *e)));
            let flow = each(&wide);
            stopped = flow.is_break();
            flow
        })?;
        if stopped {
            return Ok(());
        }
        walk(&self.v6, each)
    }

    /// Every (key, entry) of the table.
    pub fn entries(&self) -> io::Result<Vec<(FlowKey, FlowEntry)>> {
        let mut out = Vec::new();
        self.for_each_batch(|b| {
            out.extend_from_slice(b);
            ControlFlow::Continue(())
        })?;
        Ok(out)
    }

    /// Every key of the table.
    pub fn keys(&self) -> impl Iterator<Item = Result<FlowKey, MapError>> + '_ {
        let v4 = self.v4.keys().map(|k| k.map(|k| k.widen()));
        v4.chain(self.v6.keys())
    }
}

impl<T: BorrowMut<MapData>> ConnMap<T> {
    pub fn insert(&mut self, key: &FlowKey, e: &FlowEntry, flags: u64) -> Result<(), MapError> {
        if key.family == AF_INET {
            self.v4.insert(key.v4(), e, flags)
        } else {
            self.v6.insert(key, e, flags)
        }
    }

    pub fn remove(&mut self, key: &FlowKey) -> Result<(), MapError> {
        if key.family == AF_INET {
            self.v4.remove(&key.v4())
        } else {
            self.v6.remove(key)
        }
    }
}
