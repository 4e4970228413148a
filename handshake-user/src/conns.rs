//! A connection table as the controller sees it: the pair of maps the
//! kernel programs keep it in (IPv4 with 12-byte keys, IPv6 with 40-byte
//! ones), spoken to with [`FlowKey`]s throughout. The IPv4 established
//! map is the gate's own table (`handshake_common::table`), an array the
//! controller reads and writes as the programs do.

use std::borrow::{Borrow, BorrowMut};
use std::io;
use std::ops::ControlFlow;

use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, MapError};

use crate::batch::walk;
use handshake_common::table::{Geometry, Header, PROBES, Slot, place, same_key};
use handshake_common::{FlowEntry, FlowKey, FlowKeyV4, flow::AF_INET, maps};

/// The IPv4 map of a table.
pub enum V4<T> {
    /// The half-open one: the kernel's LRU hash.
    Hash(HashMap<T, FlowKeyV4, FlowEntry>),
    /// The established one: the gate's own table.
    Table(Array<T, Slot>),
}

/// One table: its IPv4 map and its IPv6 map.
pub struct ConnMap<T> {
    pub v4: V4<T>,
    pub v6: HashMap<T, FlowKey, FlowEntry>,
}

impl ConnMap<MapData> {
    /// Opens the table's two maps from their pins in `dir`; `names` is
    /// `maps::HALF_OPEN` or `maps::ESTABLISHED`.
    pub fn from_pins(dir: &std::path::Path, names: [&str; 2]) -> Result<Self, MapError> {
        let open = |name: &str| MapData::from_pin(dir.join(name));
        let v4 = open(names[0])?;
        Ok(ConnMap {
            v4: if names[0] == maps::ESTABLISHED_V4 {
                V4::Table(Array::try_from(Map::Array(v4))?)
            } else {
                V4::Hash(HashMap::try_from(Map::LruHashMap(v4))?)
            },
            v6: HashMap::try_from(Map::LruHashMap(open(names[1])?))?,
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
        let v4 = map(names[0])?;
        Ok(ConnMap {
            v4: if names[0] == maps::ESTABLISHED_V4 {
                V4::Table(Array::try_from(v4)?)
            } else {
                V4::Hash(HashMap::try_from(v4)?)
            },
            v6: HashMap::try_from(map(names[1])?)?,
        })
    }
}

/// Slots mapped at a time: 1 MiB, so a walk's memory stays small.
const WINDOW: usize = 16_384;

/// Hands `pass` the IPv4 established table's slots (but its header's), a
/// window at a time, each mapped read-only into this process (the map is
/// made `BPF_F_MMAPABLE`): a walk of two million slots reads memory, where
/// copying them out costs a system call's work per slot. Stops when
/// `pass` says so. False, having passed nothing, when the kernel will not
/// map the table at all.
fn walk_mapped(
    map: &MapData,
    pass: &mut dyn FnMut(&mut dyn Iterator<Item = Slot>) -> ControlFlow<()>,
) -> io::Result<bool> {
    let slots = map.info().map_err(io::Error::other)?.max_entries() as usize;
    let mut first = 0;
    while first < slots {
        let w = match Window::of(map, first, (slots - first).min(WINDOW)) {
            Ok(w) => w,
            Err(_) if first == 0 => return Ok(false),
            Err(e) => return Err(e),
        };
        // The header's slot is never in use.
        let from = if first == 0 { 1 } else { 0 };
        if pass(&mut (from..w.slots).map(|i| w.slot(i))).is_break() {
            break;
        }
        first += w.slots;
    }
    Ok(true)
}

/// Slots `first..first + slots` of a mappable table, mapped read-only.
struct Window {
    base: *const Slot,
    bytes: usize,
    slots: usize,
}

impl Window {
    /// `first` is a multiple of [`WINDOW`], so the offset is whole pages.
    fn of(map: &MapData, first: usize, slots: usize) -> io::Result<Window> {
        use std::os::fd::{AsFd as _, AsRawFd as _};
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let size = std::mem::size_of::<Slot>();
        let bytes = (slots * size).div_ceil(page) * page;
        // SAFETY: a shared read-only mapping of the map's own memory,
        // inside what the kernel made (its size rounded up to a page);
        // unmapped on drop.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                (first * size) as libc::off_t,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Window {
            base: base.cast(),
            bytes,
            slots,
        })
    }

    /// Slot `i` (`< slots`) as it is now: the programs may be writing it,
    /// so it is read as a copy, and a slot caught mid-write reads as free
    /// or whole but for a moment's entry fields.
    fn slot(&self, i: usize) -> Slot {
        debug_assert!(i < self.slots);
        // SAFETY: inside the mapping; any bit pattern is a valid Slot.
        unsafe { std::ptr::read_volatile(self.base.add(i)) }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `of`, unmapped once.
        unsafe { libc::munmap(self.base.cast_mut().cast(), self.bytes) };
    }
}

/// A table's geometry from its header; none before it was written.
fn geometry<T: Borrow<MapData>>(t: &Array<T, Slot>) -> Result<Option<Geometry>, MapError> {
    let h = Header::of_slot(&t.get(&0, 0)?);
    Ok((h.buckets != 0).then(|| Geometry::of(&h)))
}

/// The index of the slot holding `k`.
fn find<T: Borrow<MapData>>(
    t: &Array<T, Slot>,
    k: &FlowKeyV4,
) -> Result<Option<(u32, Slot)>, MapError> {
    let Some(g) = geometry(t)? else {
        return Ok(None);
    };
    let pair = g.bucket_pair(k);
    for p in 0..PROBES {
        let i = Geometry::probe(pair, p);
        let s = t.get(&i, 0)?;
        if s.used != 0 && same_key(&s.key, k) {
            return Ok(Some((i, s)));
        }
    }
    Ok(None)
}

impl<T: Borrow<MapData>> ConnMap<T> {
    /// The entry of `key`, if there is one.
    pub fn get(&self, key: &FlowKey) -> Result<Option<FlowEntry>, MapError> {
        let got = match (&self.v4, key.family == AF_INET) {
            (V4::Table(t), true) => return Ok(find(t, &key.v4())?.map(|(_, s)| s.entry)),
            (V4::Hash(m), true) => m.get(&key.v4(), 0),
            (_, false) => self.v6.get(key, 0),
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
        match &self.v4 {
            V4::Hash(m) => walk(m, |batch| {
                wide.clear();
                wide.extend(batch.iter().map(|(k, e)| (k.widen(), *e)));
                let flow = each(&wide);
                stopped = flow.is_break();
                flow
            })?,
            V4::Table(t) => {
                let mut pass = |batch: &mut dyn Iterator<Item = Slot>| {
                    wide.clear();
                    wide.extend(
                        batch
                            .filter(|s| s.used != 0)
                            .map(|s| (s.key.widen(), s.entry)),
                    );
                    let flow = each(&wide);
                    stopped = flow.is_break();
                    flow
                };
                if !walk_mapped(t.map(), &mut pass)? {
                    // A table the kernel would not map: copied out.
                    crate::batch::for_each_batch(t.map(), |batch: &[(u32, Slot)]| {
                        pass(&mut batch.iter().filter(|(i, _)| *i != 0).map(|(_, s)| *s))
                    })?
                }
            }
        }
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
}

impl<T: BorrowMut<MapData>> ConnMap<T> {
    /// Stores `e` as `key`'s entry; `flags` as the kernel's update takes
    /// them (the own table takes none: it stores as the programs do).
    pub fn insert(&mut self, key: &FlowKey, e: &FlowEntry, flags: u64) -> Result<(), MapError> {
        match (&mut self.v4, key.family == AF_INET) {
            (V4::Table(t), true) => store(t, &key.v4(), e),
            (V4::Hash(m), true) => m.insert(key.v4(), e, flags),
            (_, false) => self.v6.insert(key, e, flags),
        }
    }

    pub fn remove(&mut self, key: &FlowKey) -> Result<(), MapError> {
        match (&mut self.v4, key.family == AF_INET) {
            (V4::Table(t), true) => match find(t, &key.v4())? {
                Some((i, mut s)) => {
                    s.used = 0;
                    t.set(i, s, 0)
                }
                None => Err(MapError::KeyNotFound),
            },
            (V4::Hash(m), true) => m.remove(&key.v4()),
            (_, false) => self.v6.remove(key),
        }
    }
}

/// [`init_table`] on the IPv4 established table of a loaded object.
pub fn init_loaded(ebpf: &mut aya::Ebpf) -> Result<(), MapError> {
    let map = ebpf
        .map_mut(maps::ESTABLISHED_V4)
        .ok_or_else(|| MapError::InvalidName {
            name: maps::ESTABLISHED_V4.to_string(),
        })?;
    init_table(&mut Array::try_from(map)?)
}

/// Writes the header of a table just made (its header still 0) with a
/// random seed; leaves one already written as it is. Before any program
/// that uses the table runs.
pub fn init_table<T: BorrowMut<MapData>>(t: &mut Array<T, Slot>) -> Result<(), MapError> {
    if geometry(t)?.is_some() {
        return Ok(());
    }
    let mut seed = [0u8; 8];
    // SAFETY: the buffer is 8 bytes long and lives across the call.
    let n = unsafe { libc::getrandom(seed.as_mut_ptr().cast(), seed.len(), 0) };
    if n != seed.len() as isize {
        return Err(MapError::SyscallError(aya::sys::SyscallError {
            call: "getrandom",
            io_error: io::Error::last_os_error(),
        }));
    }
    let h = Header::new(t.len(), u64::from_ne_bytes(seed));
    t.set(0, h.to_slot(), 0)
}

/// Stores `e` as `k`'s entry in table `t`, where the programs would.
fn store<T: BorrowMut<MapData>>(
    t: &mut Array<T, Slot>,
    k: &FlowKeyV4,
    e: &FlowEntry,
) -> Result<(), MapError> {
    let g = geometry(t)?.ok_or(MapError::KeyNotFound)?;
    let i = place(&g, k, |i| t.get(&i, 0))?;
    t.set(
        i,
        Slot {
            key: *k,
            used: 1,
            entry: *e,
        },
        0,
    )
}
