//! The handshake-gate kernel side: an XDP program on the protected
//! interface's ingress. It parses each packet, hands the facts to the pure
//! state machine in `handshake-common`, applies the verdict and counts it
//! under its reason at one exit point.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "atomic_cxchg: the BPF target has no AtomicU64::compare_exchange"
)]

mod parse;
mod track;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use handshake_common::{
    Config, ESTABLISHED_CAPACITY, FlowEntry, FlowKey, HALF_OPEN_CAPACITY, Mode, Reason,
    SOURCES_CAPACITY, SourceKey, SourceState, WindowCounter,
};
use parse::Facts;

/// The live limits, written by the controller. All zeroes (mode `off`) until
/// it does, so a loaded but unconfigured program passes everything.
#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Packets per reason. Per CPU: the controller sums the CPUs.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Packets actually dropped per reason (0 in `monitor` mode). Per CPU.
#[map(name = "DROPPED")]
static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Half-open attempts. Separate from `ESTABLISHED`, so a SYN flood can only
/// evict other half-open attempts, never an established connection.
#[map(name = "HALF_OPEN")]
static HALF_OPEN: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(HALF_OPEN_CAPACITY, 0);

/// Connections past the handshake, until 2·MSL after they close.
#[map(name = "ESTABLISHED")]
static ESTABLISHED: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(ESTABLISHED_CAPACITY, 0);

/// Per-source half-open counts. Shared by all CPUs (updated atomically).
#[map(name = "SOURCES")]
static SOURCES: LruHashMap<SourceKey, SourceState> =
    LruHashMap::with_max_entries(SOURCES_CAPACITY, 0);

/// The global half-open count. One entry shared by all CPUs (updated atomically).
#[map(name = "GLOBAL")]
static GLOBAL: Array<WindowCounter> = Array::with_max_entries(1, 0);

/// Per-CPU scratch space for the parsed packet, which would not fit on the
/// 512-byte BPF stack next to everything else. Only this CPU's program uses
/// its slot, and XDP runs to completion on one CPU.
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Facts> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn gate(ctx: XdpContext) -> u32 {
    let (Some(cfg), Some(facts)) = (CONFIG.get(0), SCRATCH.get_ptr_mut(0)) else {
        return finish(Reason::FailOpen, Mode::Off);
    };
    let facts = unsafe { &mut *facts };
    let mode = cfg.mode();
    let reason = match parse::parse(&ctx, facts) {
        parse::Parsed::NotTcp => Reason::NotTcp,
        parse::Parsed::Malformed => Reason::Malformed,
        parse::Parsed::Tcp if mode == Mode::Off => Reason::Pass,
        parse::Parsed::Tcp => track::ingress(facts, cfg),
    };
    finish(reason, mode)
}

/// The one exit point: counts the packet under its reason and turns the
/// reason into an action according to the mode.
#[inline(always)]
fn finish(reason: Reason, mode: Mode) -> u32 {
    bump(&COUNTERS, reason);
    if reason.is_drop() && mode == Mode::Enforce {
        bump(&DROPPED, reason);
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

#[inline(always)]
fn bump(counters: &PerCpuArray<u64>, reason: Reason) {
    if let Some(c) = counters.get_ptr_mut(reason as u32) {
        // Per CPU: no other CPU writes this slot.
        unsafe { *c += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
