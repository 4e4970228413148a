//! The known-source filter: a bitmap in front of every map a spoofed SYN
//! would otherwise look in.
//!
//! A bit stands for a hash of a source key (the address masked to the
//! `source-prefix` setting). It is set for every address that has anything
//! in the maps: either end of a tracked connection, a source's count, a
//! verified source. So a clear bit says, with no false negatives, that a
//! packet from that address has no connection entry, its source no count
//! (within its cap, a full token bucket) and no verification: exactly what
//! the lookups would have found, read from one word instead of three or
//! four hash buckets that a flood of new addresses never finds in a cache.
//! A set bit says nothing (another address may share it), and the packet
//! takes the lookups.
//!
//! Bits are only ever set by packets; they are cleared by a rebuild, which
//! the counting program (`tally_conns`) runs in the kernel on the
//! controller's request: the map has two halves; packets set their bits in
//! both; a rebuild clears the half not in use, sets the bits of everything
//! in the maps in it, then makes it the one in use. An entry a packet
//! inserts while the rebuild walks has its bit set by that packet; one
//! inserted before the walk is found by it. The [`Gen`] word says which
//! half is in use, under which prefix lengths it was built, and whether it
//! may be trusted at all: a filter that was never built, or was built
//! under other prefix lengths than the configuration's now, is not used,
//! and every packet takes the lookups as before.

use crate::config::Config;
use crate::flow::{AF_INET, FlowKey, SourceKey};

/// The controller's and the rebuild's word about the filter (the one `u64`
/// of the `KNOWN_GEN` map), as bit fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Gen(pub u64);

impl Gen {
    const LOG2_MASK: u64 = 0xff;
    /// The half in use was built and may be trusted.
    const VALID: u64 = 1 << 8;
    /// Which half is in use.
    const HALF: u64 = 1 << 9;
    /// A rebuild is running (at most one at a time).
    const BUILDING: u64 = 1 << 10;
    const V4_SHIFT: u32 = 16;
    const V6_SHIFT: u32 = 24;

    /// A filter of `2^log2_bits` bits per half, never built.
    pub const fn new(log2_bits: u32) -> Gen {
        Gen(log2_bits as u64 & Self::LOG2_MASK)
    }

    /// log2 of the bits in one half (0: no filter).
    pub const fn log2_bits(self) -> u32 {
        (self.0 & Self::LOG2_MASK) as u32
    }

    /// `u64` words in one half.
    pub const fn words(self) -> u32 {
        let log2 = self.log2_bits();
        if log2 < 6 || log2 > 31 {
            0
        } else {
            1 << (log2 - 6)
        }
    }

    pub const fn half(self) -> u32 {
        (self.0 & Self::HALF != 0) as u32
    }

    pub const fn building(self) -> bool {
        self.0 & Self::BUILDING != 0
    }

    pub const fn with_building(self, on: bool) -> Gen {
        if on {
            Gen(self.0 | Self::BUILDING)
        } else {
            Gen(self.0 & !Self::BUILDING)
        }
    }

    /// The filter once a rebuild of half `half` under `cfg`'s prefix
    /// lengths is done.
    pub const fn built(self, half: u32, cfg: &Config) -> Gen {
        self.built_under(half, Prefixes::of(cfg))
    }

    /// [`Gen::built`] under prefix lengths `p`.
    pub const fn built_under(self, half: u32, p: Prefixes) -> Gen {
        let keep = self.0 & Self::LOG2_MASK;
        let half = if half != 0 { Self::HALF } else { 0 };
        Gen(keep
            | Self::VALID
            | half
            | ((p.v4 as u64 & 0xff) << Self::V4_SHIFT)
            | ((p.v6 as u64 & 0xff) << Self::V6_SHIFT))
    }

    /// Whether a clear bit of the half in use may be believed under `cfg`.
    pub const fn usable(self, cfg: &Config) -> bool {
        self.0 & Self::VALID != 0
            && self.words() != 0
            && (self.0 >> Self::V4_SHIFT) & 0xff == cfg.source_prefix_v4 as u64 & 0xff
            && (self.0 >> Self::V6_SHIFT) & 0xff == cfg.source_prefix_v6 as u64 & 0xff
    }
}

/// The `source-prefix` lengths a filter is built under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefixes {
    pub v4: u32,
    pub v6: u32,
}

impl Prefixes {
    pub const fn of(cfg: &Config) -> Prefixes {
        Prefixes {
            v4: cfg.source_prefix_v4,
            v6: cfg.source_prefix_v6,
        }
    }

    /// The filter's key for `addr`: the per-source map's (see
    /// [`Config::source_key`]).
    #[inline(always)]
    pub fn key(self, family: u8, addr: &[u8; 16]) -> SourceKey {
        let prefix = if family == AF_INET { self.v4 } else { self.v6 };
        SourceKey::new(family, addr, prefix)
    }

    /// Whether a source key made under some prefix length is the one these
    /// lengths make (an entry left from before a change of `source-prefix`
    /// is never looked up again, so it needs no bit).
    #[inline(always)]
    pub const fn current(self, k: &SourceKey) -> bool {
        let (want, width) = if k.family == AF_INET {
            (self.v4, 32)
        } else {
            (self.v6, 128)
        };
        let want = if want > width { width } else { want };
        k.prefix_len as u32 == want
    }
}

/// The bit of a source key: (word within a half, bit within the word), for
/// a half of `2^log2_bits` bits. Multiply-shift hashing of the masked
/// address; the family is mixed in so an IPv4 address and the IPv6 address
/// that starts with the same bytes differ.
#[inline(always)]
pub fn slot(key: &SourceKey, log2_bits: u32) -> (u32, u32) {
    let (a, b) = halves(&key.addr);
    source_slot(a, b, key.family, log2_bits)
}

/// [`slot`] of the key an IPv4 address (as it lies in the packet) has
/// under the prefix length `prefix` (the filter's test on the data fast
/// path, without a key's 20 bytes to fill).
#[inline(always)]
pub fn slot_v4(addr: [u8; 4], prefix: u32, log2_bits: u32) -> (u32, u32) {
    let prefix = if prefix > 32 { 32 } else { prefix };
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    let masked = (u32::from_be_bytes(addr) & mask).to_be_bytes();
    let a = u32::from_ne_bytes(masked) as u64;
    #[cfg(target_endian = "big")]
    let a = a << 32;
    source_slot(a, 0, AF_INET, log2_bits)
}

#[inline(always)]
fn source_slot(a: u64, b: u64, family: u8, log2_bits: u32) -> (u32, u32) {
    let x = a.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ (family as u64).wrapping_mul(0x1656_67b1_9e37_79f9);
    finish(x, log2_bits)
}

/// The bit that says a source key may be verified: set for every entry of
/// the verified map (beside its [`slot`] bit), so a known source whose
/// bit here is clear is not verified and the verified map need not be
/// read. Another hash of the same key.
#[inline(always)]
pub fn verified_slot(key: &SourceKey, log2_bits: u32) -> (u32, u32) {
    let (a, b) = halves(&key.addr);
    let x = a.wrapping_mul(0x85eb_ca77_c2b2_ae63)
        ^ b.wrapping_mul(0x27d4_eb2f_1656_67c5)
        ^ (key.family as u64 | 0x100).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    finish(x, log2_bits)
}

/// The bit of a connection's normalised key, likewise: set for every entry
/// of either connection map, so a clear one says this very tuple has none
/// (a SYN or an ACK from a known source on a new tuple then skips both
/// connection maps and looks only at its source's entry).
#[inline(always)]
pub fn flow_slot(key: &FlowKey, log2_bits: u32) -> (u32, u32) {
    let (a, b) = halves(&key.lo_addr);
    let (c, d) = halves(&key.hi_addr);
    let ports = (key.lo_port as u64) << 16 | key.hi_port as u64 | (key.family as u64) << 32;
    let x = a.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        ^ b.wrapping_mul(0xc2b2_ae3d_27d4_eb4f)
        ^ c.wrapping_mul(0x1656_67b1_9e37_79f9)
        ^ d.wrapping_mul(0x85eb_ca77_c2b2_ae63)
        ^ ports.wrapping_mul(0x27d4_eb2f_1656_67c5);
    finish(x, log2_bits)
}

/// An address as two words (as they lie in memory: only hashed).
#[inline(always)]
fn halves(addr: &[u8; 16]) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&addr[..8]);
    b.copy_from_slice(&addr[8..]);
    (u64::from_ne_bytes(a), u64::from_ne_bytes(b))
}

/// The last mix and the (word, bit) of a hash for a half of `2^log2_bits`.
#[inline(always)]
fn finish(x: u64, log2_bits: u32) -> (u32, u32) {
    let x = (x ^ (x >> 29)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let x = x ^ (x >> 32);
    let shift = 64 - (log2_bits & 63);
    let h = if log2_bits == 0 { 0 } else { x >> shift };
    ((h >> 6) as u32, (h & 63) as u32)
}

/// The bits per half for a gate whose maps hold `entries` in all: four bits
/// for each (a connection sets up to three: at most three quarters of the
/// bits set when every map is full of connections with distinct ends),
/// a power of two from 2^16 to 2^28.
pub const fn log2_bits_for(entries: u64) -> u32 {
    let want = entries.saturating_mul(4);
    let mut log2 = 16;
    while log2 < 28 && (1u64 << log2) < want {
        log2 += 1;
    }
    log2
}

/// Entries (`u64` words) of the map for halves of `2^log2_bits` bits: both
/// halves.
pub const fn map_words(log2_bits: u32) -> u32 {
    2 * Gen::new(log2_bits).words()
}

/// The bits per half of a map of `words` entries (both halves), as
/// [`map_words`] sized it; 0 for a size it cannot have made.
pub const fn log2_bits_of(words: u32) -> u32 {
    let half = words / 2;
    if half == 0 || !half.is_power_of_two() {
        return 0;
    }
    half.trailing_zeros() + 6
}

/// The source key the filter uses for `addr` (that of the per-source and
/// verified maps).
#[inline(always)]
pub fn key(cfg: &Config, family: u8, addr: &[u8; 16]) -> SourceKey {
    Prefixes::of(cfg).key(family, addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::AF_INET6;

    fn cfg() -> Config {
        Config {
            source_prefix_v4: 32,
            source_prefix_v6: 64,
            ..Config::default()
        }
    }

    #[test]
    fn the_fast_paths_ipv4_slot_is_the_keys() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..2_000 {
            let addr = rng.u32(..).to_be_bytes();
            let prefix = rng.u32(0..=40);
            let log2 = rng.u32(16..=28);
            let mut wide = [0u8; 16];
            wide[..4].copy_from_slice(&addr);
            let c = Config {
                source_prefix_v4: prefix,
                ..cfg()
            };
            assert_eq!(
                slot_v4(addr, prefix, log2),
                slot(&key(&c, AF_INET, &wide), log2),
                "{addr:?}/{prefix}"
            );
        }
    }

    #[test]
    fn a_rebuilt_filter_is_usable_only_under_its_own_prefixes() {
        let c = cfg();
        let g = Gen::new(20);
        assert!(!g.usable(&c), "never built");
        let b = g.with_building(true).built(1, &c);
        assert!(b.usable(&c) && !b.building());
        assert_eq!((b.half(), b.log2_bits(), b.words()), (1, 20, 1 << 14));
        let other = Config {
            source_prefix_v4: 24,
            ..c
        };
        assert!(!b.usable(&other));
        assert!(!Gen(0).built(0, &c).usable(&c), "no bits");
    }

    #[test]
    fn slots_fall_inside_the_half_and_spread() {
        let c = cfg();
        let log2 = 16;
        let words = Gen::new(log2).words();
        let mut seen = std::collections::HashSet::new();
        for i in 0..4096u32 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&(0xc612_0000 | i).to_be_bytes());
            let (w, b) = slot(&key(&c, AF_INET, &a), log2);
            assert!(w < words && b < 64);
            seen.insert((w, b));
        }
        // 4,096 addresses in 65,536 bits: a few collide, not many.
        assert!(seen.len() > 3_900, "{} distinct bits", seen.len());
    }

    #[test]
    fn the_prefix_decides_which_addresses_share_a_bit() {
        let c = Config {
            source_prefix_v4: 24,
            ..cfg()
        };
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[198, 18, 7, 1]);
        let mut b = a;
        b[3] = 200;
        assert_eq!(
            slot(&key(&c, AF_INET, &a), 20),
            slot(&key(&c, AF_INET, &b), 20)
        );
        let (p, other) = (Prefixes::of(&c), Prefixes::of(&cfg()));
        assert!(p.current(&key(&c, AF_INET, &a)));
        assert!(!other.current(&key(&c, AF_INET, &a)));
        assert!(p.current(&key(&c, AF_INET6, &a)));
        assert_eq!(key(&c, AF_INET, &a), c.source_key(AF_INET, &a));
    }

    #[test]
    fn either_direction_of_a_tuple_has_one_bit_and_tuples_spread() {
        use crate::flow::Endpoint;
        let ep = |a: u32, port: u16| {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&a.to_be_bytes());
            Endpoint {
                addr,
                port: port.to_be(),
            }
        };
        let mut seen = std::collections::HashSet::new();
        for i in 0..4096u32 {
            let (c, s) = (
                ep(0xc613_0000 | (i % 64), 1024 + i as u16),
                ep(0xc612_0001, 80),
            );
            let (k1, _) = FlowKey::normalise(AF_INET, &c, &s);
            let (k2, _) = FlowKey::normalise(AF_INET, &s, &c);
            assert_eq!(flow_slot(&k1, 16), flow_slot(&k2, 16));
            seen.insert(flow_slot(&k1, 16));
        }
        assert!(seen.len() > 3_900, "{} distinct bits", seen.len());
    }

    #[test]
    fn a_sources_verified_bit_is_another_than_its_own() {
        let c = cfg();
        let mut same = 0;
        for i in 0..4096u32 {
            let mut a = [0u8; 16];
            a[..4].copy_from_slice(&(0xc612_0000 | i).to_be_bytes());
            let k = key(&c, AF_INET, &a);
            same += (slot(&k, 20) == verified_slot(&k, 20)) as u32;
        }
        assert!(same < 4, "{same} of 4,096 share the bit");
    }

    #[test]
    fn sizes_follow_the_maps() {
        assert_eq!(log2_bits_for(0), 16);
        assert_eq!(log2_bits_for(458_752), 21);
        assert_eq!(log2_bits_for(u64::MAX), 28);
        for log2 in 16..=28 {
            assert_eq!(log2_bits_of(map_words(log2)), log2);
        }
        assert_eq!(log2_bits_of(6), 0);
    }
}
