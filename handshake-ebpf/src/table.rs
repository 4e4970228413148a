//! The IPv4 established table (`handshake_common::table`): found, stored
//! and removed with array lookups the verifier writes into the program,
//! no call into the kernel.

use core::ptr::write_volatile;
use core::sync::atomic::{Ordering, compiler_fence};

use handshake_common::{
    FlowEntry, FlowKeyV4,
    table::{Choice, Geometry, Header, PROBES, Slot, WAYS, hash, same_key, seen_before, victims},
};

use crate::ESTABLISHED_V4;

/// The table's geometry from its header; none before the controller
/// wrote it.
#[inline(always)]
fn geometry() -> Option<Geometry> {
    let h = Header::of_slot(ESTABLISHED_V4.get(0)?);
    if h.buckets == 0 {
        return None;
    }
    Some(Geometry::of(&h))
}

/// Whether slot `s` holds `k`.
#[inline(always)]
fn holds(s: &Slot, k: &FlowKeyV4) -> bool {
    s.used != 0 && same_key(&s.key, k)
}

/// The slot holding `k`, looked for inline: for the data fast path, where
/// a call would cost as much as the rest of the lookup. Every way out of
/// the probes meets at one index. (Not made opaque to the optimiser: the
/// stack slot that takes would put the program's frame, and so its
/// deepest call chain, past what Linux 6.1 allows.)
#[inline(always)]
pub fn find_inline(k: &FlowKeyV4) -> Option<*mut Slot> {
    let found = core::hint::black_box(index_of(k));
    if found == 0 {
        return None;
    }
    ESTABLISHED_V4.get_ptr_mut(found)
}

/// The index of the slot holding `k`, or 0. Each bucket's first index
/// made as its probes begin, so fewer values live across the probes (the
/// fast path's frame is on the programs' deepest call chain).
#[inline(always)]
fn index_of(k: &FlowKeyV4) -> u32 {
    let Some(g) = geometry() else {
        return 0;
    };
    let h = hash(k, g.seed);
    for b in 0..2 {
        let first = g.bucket(h, b);
        for w in 0..WAYS {
            let i = first + w;
            match ESTABLISHED_V4.get(i) {
                Some(s) if holds(s, k) => return i,
                Some(_) => {}
                None => return 0,
            }
        }
    }
    0
}

/// A key as two words, for the global functions (which the verifier
/// checks once, on their own, and which take no pointer to the stack).
#[inline(always)]
fn words(k: &FlowKeyV4) -> (u64, u64) {
    let a = u32::from_ne_bytes(k.lo_addr) as u64 | ((u32::from_ne_bytes(k.hi_addr) as u64) << 32);
    (a, (k.lo_port as u64) | ((k.hi_port as u64) << 16))
}

#[inline(always)]
fn key_of(addrs: u64, ports: u64) -> FlowKeyV4 {
    FlowKeyV4 {
        lo_addr: (addrs as u32).to_ne_bytes(),
        hi_addr: ((addrs >> 32) as u32).to_ne_bytes(),
        lo_port: ports as u16,
        hi_port: (ports >> 16) as u16,
    }
}

/// The index of the slot holding the key of `addrs` and `ports`
/// ([`words`]), or 0. A global function, exported (see
/// `handshake-ebpf/build.rs`): the paths past the fast path call it
/// rather than have the verifier walk eight probes at each.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn gate_table_find(addrs: u64, ports: u64) -> u32 {
    index_of(&key_of(addrs, ports))
}

/// The slot holding `k`, through [`gate_table_find`].
#[inline(always)]
fn find(k: &FlowKeyV4) -> Option<*mut Slot> {
    let (a, p) = words(k);
    match gate_table_find(a, p) {
        0 => None,
        i => ESTABLISHED_V4.get_ptr_mut(i),
    }
}

/// `k`'s entry.
#[inline(always)]
pub fn get_ptr_mut(k: &FlowKeyV4) -> Option<*mut FlowEntry> {
    find(k).map(|s| unsafe { &raw mut (*s).entry })
}

/// Stores `e` as `k`'s entry: in its slot if it has one, else in a free
/// one of its buckets, else over the entry of the eight seen longest ago.
#[inline(always)]
pub fn insert(k: &FlowKeyV4, e: &FlowEntry) -> Result<(), i32> {
    let (a, p) = words(k);
    match gate_table_insert(a, p, e) {
        0 => Ok(()),
        r => Err(r),
    }
}

/// [`insert`] as a global function (exported): checked once, and its look
/// at the eight slots takes no room in its callers' frames.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn gate_table_insert(addrs: u64, ports: u64, e: *const FlowEntry) -> i32 {
    if e.is_null() {
        return -1;
    }
    match store(&key_of(addrs, ports), unsafe { &*e }) {
        Ok(()) => 0,
        Err(r) => r,
    }
}

#[inline(always)]
fn store(k: &FlowKeyV4, e: &FlowEntry) -> Result<(), i32> {
    let i = match core::hint::black_box(index_of(k)) {
        0 => place_new(k).ok_or(-1)?,
        i => i,
    };
    let s = ESTABLISHED_V4.get_ptr_mut(i).ok_or(-1)?;
    unsafe {
        // Free first and in use last: a reader on another CPU sees a free
        // slot or a whole entry.
        write_volatile(&raw mut (*s).used, 0);
        compiler_fence(Ordering::SeqCst);
        (*s).entry = *e;
        (*s).key = *k;
        compiler_fence(Ordering::SeqCst);
        write_volatile(&raw mut (*s).used, 1);
    }
    Ok(())
}

/// Where a key with no slot goes (`table::place`'s rule): a free slot,
/// else the older of its two victims.
#[inline(always)]
fn place_new(k: &FlowKeyV4) -> Option<u32> {
    let g = geometry()?;
    let pair = g.bucket_pair(k);
    let mut c = Choice::new(pair);
    for p in 0..PROBES {
        c.see(p, ESTABLISHED_V4.get(Geometry::probe(pair, p))?);
    }
    if let Some(i) = c.free_slot() {
        return Some(i);
    }
    let (a, b) = victims(&g, k, pair);
    let (sa, sb) = (ESTABLISHED_V4.get(a)?, ESTABLISHED_V4.get(b)?);
    Some(if seen_before(sb.entry.last_seen, sa.entry.last_seen) {
        b
    } else {
        a
    })
}

/// Frees `k`'s slot.
#[inline(always)]
pub fn remove(k: &FlowKeyV4) -> Result<(), i32> {
    let s = find(k).ok_or(-2)?;
    free(s);
    Ok(())
}

/// Frees slot `s`.
#[inline(always)]
pub fn free(s: *mut Slot) {
    unsafe { write_volatile(&raw mut (*s).used, 0) };
}
