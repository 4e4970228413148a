//! The known-source filter against its maps (`handshake_common::known`):
//! the packet path's one-word test and marks, and the rebuild the counting
//! program runs.

use core::ffi::c_void;
use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_or};

use aya_ebpf::helpers::generated::bpf_loop;
use handshake_common::known::{self, Gen, Prefixes};
use handshake_common::{Config, FlowKey, SourceKey};

use crate::{KNOWN, KNOWN_GEN};

#[inline(always)]
fn gen_word() -> Gen {
    match KNOWN_GEN.get_ptr(0) {
        Some(p) => Gen(unsafe { core::ptr::read_volatile(p) }),
        None => Gen(0),
    }
}

/// Whether the bit `slot` picks (given the half's size) is clear in the
/// half in use. False when the filter cannot say (never built, or built
/// under other prefix lengths than `cfg`'s).
#[inline(always)]
fn clear(cfg: &Config, slot: impl FnOnce(u32) -> (u32, u32)) -> bool {
    let g = gen_word();
    if !g.usable(cfg) {
        return false;
    }
    let (word, bit) = slot(g.log2_bits());
    match KNOWN.get(g.half() * g.words() + word) {
        Some(w) => w & (1u64 << bit) == 0,
        None => false,
    }
}

/// Whether `addr` has nothing in any map: no connection entry at either
/// end, no source count, no verification. A function of its own: its
/// masking and hashing need registers that the program would otherwise
/// spill to a frame at the bottom of its deepest chain of calls.
#[inline(never)]
pub fn unknown(cfg: &Config, family: u8, addr: &[u8; 16]) -> bool {
    clear(cfg, |log2| {
        known::slot(&known::key(cfg, family, addr), log2)
    })
}

/// [`unknown`] for an IPv4 address as it lies in the packet, inline: the
/// data fast path's test, with no key to fill and no call.
#[inline(always)]
pub fn unknown_v4(cfg: &Config, addr: [u8; 4]) -> bool {
    clear(cfg, |log2| known::slot_v4(addr, cfg.source_prefix_v4, log2))
}

/// Whether the source key `k` (of a known source) is surely not in the
/// verified map, by its verified bit.
#[inline(always)]
pub fn not_verified(cfg: &Config, k: &SourceKey) -> bool {
    clear(cfg, |log2| known::verified_slot(k, log2))
}

/// Whether the connection `key` has no entry in either connection map, by
/// its tuple's bit.
#[inline(always)]
pub fn flow_unknown(cfg: &Config, key: &FlowKey) -> bool {
    clear(cfg, |log2| known::flow_slot(key, log2))
}

/// Sets the bits of a source just verified: its own and its verified bit.
#[inline(always)]
pub fn mark_verified(cfg: &Config, family: u8, addr: &[u8; 16]) {
    let g = gen_word();
    let k = known::key(cfg, family, addr);
    mark_key(&k, g, 2);
    mark_slot(known::verified_slot(&k, g.log2_bits()), g, 2);
}

/// Sets the bits of a connection entry just stored: its tuple's and its
/// remote end's (`remote`), in both halves.
#[inline(always)]
pub fn mark_flow(cfg: &Config, key: &FlowKey, remote: &[u8; 16]) {
    let g = gen_word();
    mark_key(&known::key(cfg, key.family, remote), g, 2);
    mark_slot(known::flow_slot(key, g.log2_bits()), g, 2);
}

/// Sets the bit of `k` in half `half`, or in both (`half` 2).
#[inline(always)]
fn mark_key(k: &SourceKey, g: Gen, half: u32) {
    let words = g.words();
    if words == 0 {
        return;
    }
    mark_slot(known::slot(k, g.log2_bits()), g, half);
}

/// Sets bit `(word, bit)` in half `half`, or in both (`half` 2).
#[inline(always)]
fn mark_slot((word, bit): (u32, u32), g: Gen, half: u32) {
    let words = g.words();
    if words == 0 {
        return;
    }
    if half != 1 {
        set_bit(word, bit);
    }
    if half != 0 {
        set_bit(words + word, bit);
    }
}

/// Sets bit `bit` of word `index` (other CPUs set bits of the same word).
#[inline(never)]
fn set_bit(index: u32, bit: u32) {
    if let Some(p) = KNOWN.get_ptr_mut(index) {
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::Relaxed }>(p, 1u64 << (bit & 63)) };
    }
}

/// A rebuild in progress: the half being built, under which configuration.
/// Not an `Option` in the walk's state: LLVM fills a `None`'s fields with
/// whatever register is at hand, a pointer too, which the verifier refuses
/// to see stored as a smaller number.
pub struct Build {
    pub filter: Gen,
    pub half: u32,
    /// 1 while this walk rebuilds; 0: [`Build::OFF`].
    pub on: u32,
    pub prefixes: Prefixes,
}

impl Build {
    /// No rebuild.
    pub const OFF: Build = Build {
        filter: Gen(0),
        half: 0,
        on: 0,
        prefixes: Prefixes { v4: 0, v6: 0 },
    };

    /// Claims the filter for a rebuild and clears the half not in use.
    /// `None` when there is no filter or another rebuild runs.
    #[inline(always)]
    pub fn start(cfg: &Config) -> Option<Build> {
        let p = KNOWN_GEN.get_ptr_mut(0)?;
        let g = Gen(unsafe { core::ptr::read_volatile(p) });
        if g.words() == 0 || g.building() {
            return None;
        }
        let (_, ok) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                p,
                g.0,
                g.with_building(true).0,
            )
        };
        if !ok {
            return None;
        }
        let half = 1 - g.half();
        let mut clear = Clear {
            base: half * g.words(),
        };
        unsafe {
            bpf_loop(
                g.words(),
                clear_word as *mut c_void,
                (&raw mut clear).cast(),
                0,
            )
        };
        Some(Build {
            filter: g,
            half,
            on: 1,
            prefixes: Prefixes::of(cfg),
        })
    }

    /// Marks a connection entry: both ends and its tuple.
    #[inline(always)]
    pub fn flow(&self, k: &FlowKey) {
        if self.on == 0 {
            return;
        }
        mark_slot(
            known::flow_slot(k, self.filter.log2_bits()),
            self.filter,
            self.half,
        );
        mark_key(
            &self.prefixes.key(k.family, &k.lo_addr),
            self.filter,
            self.half,
        );
        mark_key(
            &self.prefixes.key(k.family, &k.hi_addr),
            self.filter,
            self.half,
        );
    }

    /// Marks a source entry's key, if the configuration still makes keys
    /// like it.
    #[inline(always)]
    pub fn source(&self, k: &SourceKey) {
        if self.on != 0 && self.prefixes.current(k) {
            mark_key(k, self.filter, self.half);
        }
    }

    /// Marks a verified entry's key (its own bit and its verified bit), if
    /// the configuration still makes keys like it.
    #[inline(always)]
    pub fn verified(&self, k: &SourceKey) {
        if self.on != 0 && self.prefixes.current(k) {
            mark_key(k, self.filter, self.half);
            mark_slot(
                known::verified_slot(k, self.filter.log2_bits()),
                self.filter,
                self.half,
            );
        }
    }

    /// Puts the built half in use.
    #[inline(always)]
    pub fn finish(self) {
        if self.on == 0 {
            return;
        }
        if let Some(p) = KNOWN_GEN.get_ptr_mut(0) {
            unsafe {
                core::ptr::write_volatile(p, self.filter.built_under(self.half, self.prefixes).0)
            };
        }
    }
}

struct Clear {
    base: u32,
}

/// `bpf_loop`'s callback: zeroes word `i` of the half being built.
#[inline(never)]
extern "C" fn clear_word(i: u64, c: *mut Clear) -> i64 {
    let base = unsafe { (*c).base };
    if let Some(p) = KNOWN.get_ptr_mut(base + i as u32) {
        unsafe { core::ptr::write_volatile(p, 0) };
    }
    0
}
