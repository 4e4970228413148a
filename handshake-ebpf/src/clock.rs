//! The packet programs' clock: the kernel's coarse monotonic clock
//! (`CLOCK_MONOTONIC_COARSE`, the controller's clock too), read through the
//! helper once per tick and CPU.
//!
//! The coarse clock moves only at a tick, when the timekeeping code advances
//! it right after `jiffies`; `jiffies` is one load (the verifier inlines
//! `bpf_jiffies64`) where the helper is a call that cost an established
//! segment as much as its map lookup (docs/BENCHMARKS.md). So each CPU keeps
//! the last value it read beside the `jiffies` it read it under, and asks the
//! helper again only when `jiffies` has moved. A value read between the two
//! steps of a tick (`jiffies` moved, the clock not yet) is not kept under the
//! new `jiffies`, so the next packet asks again: what a packet sees is what
//! the helper would have said, up to that race, which the helper has too.

use aya_ebpf::{
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::map,
    maps::PerCpuArray,
};

/// Per CPU: the `jiffies` of the last read, then the clock it read (ns).
#[map(name = "CLOCK")]
static CLOCK: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

/// Now, in ns of the coarse monotonic clock.
#[inline(always)]
pub fn now() -> u64 {
    let j = unsafe { bpf_jiffies64() };
    let Some(c) = CLOCK.get_ptr_mut(0) else {
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    let c = unsafe { &mut *c };
    if c[0] == j && c[1] != 0 {
        return c[1];
    }
    let ns = unsafe { bpf_ktime_get_coarse_ns() };
    if ns != c[1] {
        c[0] = j;
        c[1] = ns;
    }
    ns
}
