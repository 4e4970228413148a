//! The connection tables, each a pair of maps: IPv4 (12-byte keys) and
//! IPv6 (40-byte keys). Everything else speaks [`FlowKey`]; the family
//! picks the map here, so an IPv4 lookup hashes and compares 12 bytes.
//! The IPv4 established map is the gate's own table ([`crate::table`]),
//! the others the kernel's LRU hashes.
//!
//! A table is a constant the calls fold away (a map's address must reach
//! the helper as an immediate, never loaded from memory).

use handshake_common::{FlowEntry, FlowKey, FlowKeyV4, flow::AF_INET};

use crate::{ESTABLISHED_V6, HALF_OPEN_V4, HALF_OPEN_V6, table};

/// One table: its IPv4 map and its IPv6 map.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Half-open attempts.
    HalfOpen,
    /// Connections past the handshake.
    Established,
}

pub use Table::{Established as ESTABLISHED, HalfOpen as HALF_OPEN};

/// A key as both maps of a table take it: made once where a function
/// looks up and then deletes or stores, so its stack frame holds one copy
/// of the IPv4 key, not one for each call.
pub struct Key<'a> {
    full: &'a FlowKey,
    v4: FlowKeyV4,
}

impl<'a> Key<'a> {
    #[inline(always)]
    pub fn of(full: &'a FlowKey) -> Key<'a> {
        Key {
            full,
            v4: full.v4(),
        }
    }
}

/// `$call` on the map of `$table` for `$key`'s family, with `$k` the key
/// that map takes; `$own` for the IPv4 established table.
macro_rules! on_map {
    ($table:expr, $key:expr, |$m:ident, $k:ident| $call:expr, $own:expr) => {
        if $key.full.family == AF_INET {
            let $k = &$key.v4;
            match $table {
                Table::HalfOpen => {
                    let $m = &HALF_OPEN_V4;
                    $call
                }
                Table::Established => $own,
            }
        } else {
            let $k = $key.full;
            match $table {
                Table::HalfOpen => {
                    let $m = &HALF_OPEN_V6;
                    $call
                }
                Table::Established => {
                    let $m = &ESTABLISHED_V6;
                    $call
                }
            }
        }
    };
}

impl Table {
    #[inline(always)]
    pub fn get_ptr_mut(self, key: &Key) -> Option<*mut FlowEntry> {
        on_map!(self, key, |m, k| m.get_ptr_mut(k), table::get_ptr_mut(k))
    }

    /// # Safety
    /// As `LruHashMap::get`: the entry may change under the reader.
    #[inline(always)]
    pub unsafe fn get(self, key: &Key) -> Option<&'static FlowEntry> {
        on_map!(self, key, |m, k| unsafe { m.get(k) }, unsafe {
            table::get_ptr_mut(k).map(|p| &*p)
        })
    }

    #[inline(always)]
    pub fn insert(self, key: &Key, e: &FlowEntry, flags: u64) -> Result<(), i32> {
        on_map!(self, key, |m, k| m.insert(k, e, flags), table::insert(k, e))
    }

    #[inline(always)]
    pub fn remove(self, key: &Key) -> Result<(), i32> {
        on_map!(self, key, |m, k| m.remove(k), table::remove(k))
    }
}
