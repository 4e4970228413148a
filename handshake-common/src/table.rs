//! The IPv4 established table: an array the programs index by a hash of
//! their own, where the other connection maps are the kernel's LRU hashes.
//!
//! Why: every lookup in a kernel hash map is a call into the kernel (its
//! hash, its bucket walk and a `memcmp` call of its own); an array lookup
//! is a few instructions the verifier writes into the program. The data
//! fast path is one such lookup, so this is most of what a segment of an
//! established connection costs.
//!
//! The layout: slot 0 is the [`Header`] (the number of buckets and the
//! hash's seed, written once by the controller when it makes the map);
//! slots `1..` are [`Slot`]s, in buckets of [`WAYS`]. A key has two
//! buckets, from two halves of a seeded hash ([`Geometry::bucket_pair`]);
//! its entry is in one of their eight slots. A table has two slots for
//! each connection it is sized for ([`entries`]), so at most half are in
//! use and a bucket pair with no free slot is rare.
//!
//! Eviction: storing a key whose eight slots are all in use takes the slot
//! whose entry was seen longest ago (`last_seen`), where the LRU map took
//! the least recently used entry of the whole map. Half-open attempts keep
//! their own LRU map, so a SYN flood still never evicts an established
//! connection. Both are the kernel's business and the model's silence: the
//! model never fills a table.
//!
//! Two CPUs may write one slot at once (as they may an LRU map's entry in
//! place): a store writes `used` to 0 first, then the entry, then the key,
//! then `used`, so a reader sees either a whole entry or a free slot; two
//! stores racing for one free slot leave one of them, and the other
//! connection's next segment finds no entry and takes the slow path, which
//! asks the kernel and picks it up again.

use crate::flow::{FlowEntry, FlowKeyV4};

/// Slots in a bucket.
pub const WAYS: u32 = 4;

/// Slots a key may be in: its two buckets'.
pub const PROBES: u32 = 2 * WAYS;

/// One slot: 64 bytes, a cache line's worth.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slot {
    pub key: FlowKeyV4,
    /// Non-zero when the slot holds an entry.
    pub used: u32,
    pub entry: FlowEntry,
}

const _: () = assert!(core::mem::size_of::<Slot>() == 64);

#[cfg(feature = "user")]
// SAFETY: repr(C) of Pod fields with no padding (12 + 4 + 48 = 64, asserted).
unsafe impl aya::Pod for Slot {}

/// Slot 0, as a [`Slot`] reads it: `used` stays 0, so every walk of the
/// slots passes it by.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Buckets of [`WAYS`] slots after this one; 0 until the controller
    /// writes the header (no key is found, none stored).
    pub buckets: u32,
    pub _pad: u32,
    /// The hash's seed, random per table.
    pub seed: u64,
}

impl Header {
    /// The header a table of `max_entries` entries gets, with `seed`.
    pub const fn new(max_entries: u32, seed: u64) -> Header {
        Header {
            buckets: (max_entries - 1) / WAYS,
            _pad: 0,
            seed,
        }
    }

    /// As the slot that holds it.
    pub fn to_slot(&self) -> Slot {
        let mut s = Slot::default();
        let b = self.seed.to_ne_bytes();
        s.key.lo_addr = self.buckets.to_ne_bytes();
        s.key.hi_addr = [b[0], b[1], b[2], b[3]];
        s.key.lo_port = u16::from_ne_bytes([b[4], b[5]]);
        s.key.hi_port = u16::from_ne_bytes([b[6], b[7]]);
        s
    }

    /// From the slot that holds it.
    #[inline(always)]
    pub fn of_slot(s: &Slot) -> Header {
        let lo = u32::from_ne_bytes(s.key.hi_addr) as u64;
        let p = (s.key.lo_port as u64) | ((s.key.hi_port as u64) << 16);
        Header {
            buckets: u32::from_ne_bytes(s.key.lo_addr),
            _pad: 0,
            seed: lo | (p << 32),
        }
    }
}

/// The map's entries for a table sized for `max_connections`: two slots
/// each, in whole buckets, and the header.
pub const fn entries(max_connections: u32) -> u32 {
    let slots = max_connections.saturating_mul(2).div_ceil(WAYS) * WAYS;
    slots + 1
}

/// Whether two keys are the same: three word compares (a derived `==`
/// may become a byte loop in the kernel programs).
#[inline(always)]
pub fn same_key(a: &FlowKeyV4, b: &FlowKeyV4) -> bool {
    let w = |a: [u8; 4]| u32::from_ne_bytes(a);
    let ports = |k: &FlowKeyV4| (k.lo_port as u32) | ((k.hi_port as u32) << 16);
    (w(a.lo_addr) == w(b.lo_addr)) & (w(a.hi_addr) == w(b.hi_addr)) & (ports(a) == ports(b))
}

/// A key's hash under `seed`: two 32-bit halves, one per bucket choice.
#[inline(always)]
pub fn hash(k: &FlowKeyV4, seed: u64) -> u64 {
    let addrs =
        u32::from_ne_bytes(k.lo_addr) as u64 | ((u32::from_ne_bytes(k.hi_addr) as u64) << 32);
    let ports = (k.lo_port as u64) | ((k.hi_port as u64) << 16);
    let mut h = (addrs ^ seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    h ^= h >> 29;
    h = (h ^ ports ^ seed.rotate_left(32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^ (h >> 32)
}

/// Where a table's keys go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub buckets: u32,
    pub seed: u64,
}

impl Geometry {
    #[inline(always)]
    pub fn of(h: &Header) -> Geometry {
        Geometry {
            buckets: h.buckets,
            seed: h.seed,
        }
    }

    /// The first slot index of each of `k`'s two buckets (they may be the
    /// same bucket).
    #[inline(always)]
    pub fn bucket_pair(&self, k: &FlowKeyV4) -> (u32, u32) {
        let h = hash(k, self.seed);
        (self.bucket(h, 0), self.bucket(h, 1))
    }

    /// The first slot index of bucket `which` (0 or 1) of a key hashed
    /// to `h`.
    #[inline(always)]
    pub fn bucket(&self, h: u64, which: u32) -> u32 {
        let half = if which == 0 { h & 0xffff_ffff } else { h >> 32 };
        1 + ((half * self.buckets as u64) >> 32) as u32 * WAYS
    }

    /// The slot index of `k`'s probe `i` (`0..PROBES`).
    #[inline(always)]
    pub fn probe(pair: (u32, u32), i: u32) -> u32 {
        if i < WAYS {
            pair.0 + i
        } else {
            pair.1 + (i - WAYS)
        }
    }
}

/// The free slots among a key's [`PROBES`], as a mask (bit `p` for probe
/// `p`), and the one a store takes. Built without a branch per probe, so
/// the verifier follows one state through the eight, not one per mix of
/// free and used.
#[derive(Clone, Copy, Debug)]
pub struct Choice {
    /// The key's two buckets ([`Geometry::bucket_pair`]).
    pub pair: (u32, u32),
    /// Bit `p` set: probe `p`'s slot is free.
    pub free: u32,
}

impl Choice {
    #[inline(always)]
    pub fn new(pair: (u32, u32)) -> Choice {
        Choice { pair, free: 0 }
    }

    /// Takes in probe `p`'s slot (`used` is 0 or 1).
    #[inline(always)]
    pub fn see(&mut self, p: u32, s: &Slot) {
        self.free |= ((s.used & 1) ^ 1) << p;
    }

    /// A free slot in the bucket with more free (the first on a tie: two
    /// choices keep every bucket short), if either has one.
    #[inline(always)]
    pub fn free_slot(&self) -> Option<u32> {
        let mask = (1 << WAYS) - 1;
        let (first, second) = (self.free & mask, self.free >> WAYS);
        let (bits, base) = if second.count_ones() > first.count_ones() {
            (second, self.pair.1)
        } else {
            (first, self.pair.0)
        };
        if bits == 0 {
            None
        } else {
            Some(base + bits.trailing_zeros())
        }
    }
}

/// The two slots, one in each bucket, that a store with no free slot
/// weighs against each other (picked by bits of the hash the buckets do
/// not use).
#[inline(always)]
pub fn victims(g: &Geometry, k: &FlowKeyV4, pair: (u32, u32)) -> (u32, u32) {
    let h = hash(k, g.seed);
    (
        pair.0 + (h as u32 & (WAYS - 1)),
        pair.1 + ((h >> 32) as u32 & (WAYS - 1)),
    )
}

/// Whether an entry last seen at `a` was seen before one seen at `b`
/// (ticks wrap: older is further behind, as a difference).
#[inline(always)]
pub fn seen_before(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Where a store of `k` goes, with `slot` reading a slot: the key's own
/// slot, else a free one ([`Choice`]), else the older entry of its two
/// [`victims`]. The rule the programs follow, for the controller's own
/// stores.
pub fn place<E>(
    g: &Geometry,
    k: &FlowKeyV4,
    mut slot: impl FnMut(u32) -> Result<Slot, E>,
) -> Result<u32, E> {
    let pair = g.bucket_pair(k);
    let mut c = Choice::new(pair);
    for p in 0..PROBES {
        let i = Geometry::probe(pair, p);
        let s = slot(i)?;
        if s.used != 0 && same_key(&s.key, k) {
            return Ok(i);
        }
        c.see(p, &s);
    }
    if let Some(i) = c.free_slot() {
        return Ok(i);
    }
    let (a, b) = victims(g, k, pair);
    let older = seen_before(slot(b)?.entry.last_seen, slot(a)?.entry.last_seen);
    Ok(if older { b } else { a })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::vec::Vec;

    fn key(i: u32) -> FlowKeyV4 {
        let (k, _) = FlowKeyV4::of(
            [198, 18, (i >> 8) as u8, i as u8],
            (40000 + (i % 20000) as u16).to_be(),
            [198, 19, 0, 1],
            80u16.to_be(),
        );
        k
    }

    #[test]
    fn the_header_survives_its_slot() {
        let h = Header::new(entries(1024), 0x0123_4567_89ab_cdef);
        assert_eq!(h.buckets, 512);
        assert_eq!(Header::of_slot(&h.to_slot()), h);
        assert_eq!(h.to_slot().used, 0);
    }

    #[test]
    fn entries_are_two_slots_a_connection_in_whole_buckets() {
        assert_eq!(entries(1024), 2049);
        assert_eq!(entries(1_048_576), 2 * 1_048_576 + 1);
        assert_eq!(entries(1001), 2005);
    }

    #[test]
    fn every_probe_is_inside_the_table() {
        let g = Geometry {
            buckets: Header::new(entries(1001), 7).buckets,
            seed: 7,
        };
        for i in 0..10_000 {
            let pair = g.bucket_pair(&key(i));
            for p in 0..PROBES {
                let s = Geometry::probe(pair, p);
                assert!((1..entries(1001)).contains(&s), "{s}");
            }
        }
    }

    /// Fills a table to its size with keys, two choices, and counts the
    /// keys that found all eight slots taken (and would evict): none at
    /// three quarters of its size, a few in 100,000 at its size.
    #[test]
    fn a_table_evicts_almost_nothing_before_its_size() {
        let n = 65_536;
        let max = entries(n);
        let g = Geometry {
            buckets: Header::new(max, 0x5eed).buckets,
            seed: 0x5eed,
        };
        let mut slots = std::vec![Slot::default(); max as usize];
        let mut lost = 0;
        for i in 0..n {
            let k = key(i);
            let at = place(&g, &k, |i| Ok::<_, ()>(slots[i as usize])).unwrap();
            if slots[at as usize].used == 0 {
                slots[at as usize] = Slot {
                    key: k,
                    used: 1,
                    ..Slot::default()
                };
            } else {
                lost += 1;
            }
            if i == n / 4 * 3 {
                assert_eq!(lost, 0);
            }
        }
        assert!(lost <= 10, "{lost} of {n}");
    }

    #[test]
    fn the_seed_moves_keys() {
        let a = Geometry {
            buckets: 1 << 16,
            seed: 1,
        };
        let b = Geometry {
            buckets: 1 << 16,
            seed: 2,
        };
        let moved = (0..1000)
            .filter(|&i| a.bucket_pair(&key(i)) != b.bucket_pair(&key(i)))
            .count();
        assert!(moved > 990, "{moved}");
        let spread: HashSet<u32> = (0..1000)
            .map(|i| a.bucket_pair(&key(i)).0)
            .collect::<Vec<_>>()
            .into_iter()
            .collect();
        assert!(spread.len() > 980, "{}", spread.len());
    }

    #[test]
    fn a_store_prefers_the_key_then_a_free_slot_then_the_older_victim() {
        let g = Geometry {
            buckets: 4,
            seed: 99,
        };
        let k = key(1);
        let pair = g.bucket_pair(&k);
        let mut slots = std::vec![Slot::default(); 17];
        let get = |slots: &[Slot]| place(&g, &k, |i| Ok::<_, ()>(slots[i as usize])).unwrap();
        // All free: the first bucket's first slot.
        assert_eq!(get(&slots), pair.0);
        // Every slot of both buckets in use by others, seen at 100.
        for p in 0..PROBES {
            let i = Geometry::probe(pair, p) as usize;
            slots[i] = Slot {
                key: key(1000 + p),
                used: 1,
                ..Slot::default()
            };
            slots[i].entry.last_seen = 100;
        }
        let (a, b) = victims(&g, &k, pair);
        // The second victim seen before the first, across the wrap.
        slots[a as usize].entry.last_seen = 5;
        slots[b as usize].entry.last_seen = u32::MAX - 5;
        assert_eq!(get(&slots), b);
        slots[b as usize].entry.last_seen = 50;
        assert_eq!(get(&slots), a);
        // A free slot in the second bucket.
        let free = Geometry::probe(pair, 6);
        slots[free as usize].used = 0;
        if pair.0 != pair.1 {
            assert_eq!(get(&slots), free);
        }
        // The key itself.
        let mine = Geometry::probe(pair, 2);
        slots[mine as usize].key = k;
        assert_eq!(get(&slots), mine);
    }

    #[test]
    fn the_free_slot_is_in_the_bucket_with_more_free() {
        let mut c = Choice::new((1, 9));
        assert_eq!(c.free_slot(), None);
        let free = Slot::default();
        c.see(3, &free);
        assert_eq!(c.free_slot(), Some(4));
        c.see(5, &free);
        // One each: the first bucket's.
        assert_eq!(c.free_slot(), Some(4));
        c.see(6, &free);
        assert_eq!(c.free_slot(), Some(10));
    }
}
