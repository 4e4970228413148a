//! The handshake-gate kernel side: an XDP program on the protected
//! interface's ingress (`handshake_in`) and a TC classifier on its egress
//! (`handshake_out`), sharing one set of maps, so the gate sees both sides of
//! every connection: the client's SYN and final ACK, the server's SYN-ACK and
//! FIN. Each parses the packet, hands the facts to the pure state machine in
//! `handshake-common`, applies the verdict and counts it under its reason at
//! its one exit point.
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
    bindings::{TC_ACT_OK, xdp_action},
    macros::{classifier, map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use handshake_common::{
    Config, ESTABLISHED_CAPACITY, FlowEntry, FlowKey, HALF_OPEN_CAPACITY, Mode, PORT_COUNT,
    PORT_WORDS, Reason, SOURCES_CAPACITY, SourceKey, SourceState, VERIFIED_CAPACITY, WindowCounter,
};
use parse::Facts;

/// The live limits, written by the controller. All zeroes (mode `off`) until
/// it does, so a loaded but unconfigured program passes everything.
#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Arriving packets per reason. Per CPU: the controller sums the CPUs.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Arriving packets actually dropped per reason (0 in `monitor` mode). Per CPU.
#[map(name = "DROPPED")]
static DROPPED: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

/// Leaving packets per reason. Per CPU. The egress program never drops, so
/// a drop reason here (say `bad_ack` on a SYN-ACK) means this host's own
/// stack disagreed with the gate's record; the packet left anyway.
#[map(name = "EGRESS")]
static EGRESS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::COUNT, 0);

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

/// Half-open counts per destination port (index: the port, host order).
/// Shared by all CPUs (updated atomically). An array, so no port's count is
/// ever evicted.
#[map(name = "PORTS")]
static PORTS: Array<WindowCounter> = Array::with_max_entries(PORT_COUNT, 0);

/// The ports that take SYNs when `ports_restricted` is set, as a bitmap.
/// Written by the controller only.
#[map(name = "ALLOWED_PORTS")]
static ALLOWED_PORTS: Array<u64> = Array::with_max_entries(PORT_WORDS, 0);

/// When each source last completed a handshake. Shared by all CPUs; only a
/// validated final ACK writes it, so spoofed SYNs cannot fill it.
#[map(name = "VERIFIED")]
static VERIFIED: LruHashMap<SourceKey, u64> = LruHashMap::with_max_entries(VERIFIED_CAPACITY, 0);

/// Per-CPU scratch space for the parsed packet, which would not fit on the
/// 512-byte BPF stack next to everything else: slot 0 for the XDP program,
/// slot 1 for the egress program, so neither can overwrite the other's
/// should one ever run nested in the other on a CPU. Each program runs to
/// completion on its CPU.
#[map(name = "SCRATCH")]
static SCRATCH: PerCpuArray<Facts> = PerCpuArray::with_max_entries(2, 0);

/// Bytes the egress program makes sure are in the skb's linear part before
/// parsing: Ethernet, two VLAN tags, IPv6 with a few extension headers and
/// a TCP header with options. Locally built TCP packets have their headers
/// linear already, so this rarely copies anything.
const EGRESS_PULL: u32 = 256;

#[xdp]
pub fn handshake_in(ctx: XdpContext) -> u32 {
    let (Some(cfg), Some(facts)) = (CONFIG.get(0), SCRATCH.get_ptr_mut(0)) else {
        return finish_in(Reason::FailOpen, Mode::Off);
    };
    let facts = unsafe { &mut *facts };
    let mode = cfg.mode();
    let reason = verdict(&ctx, facts, cfg, track::Side::Ingress);
    finish_in(reason, mode)
}

#[classifier]
pub fn handshake_out(ctx: TcContext) -> i32 {
    let (Some(cfg), Some(facts)) = (CONFIG.get(0), SCRATCH.get_ptr_mut(1)) else {
        return finish_out(Reason::FailOpen);
    };
    let facts = unsafe { &mut *facts };
    let want = if ctx.len() < EGRESS_PULL {
        ctx.len()
    } else {
        EGRESS_PULL
    };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // Fails only on a packet the parser then finds truncated.
        let _ = ctx.pull_data(want);
    }
    let reason = verdict(&ctx, facts, cfg, track::Side::Egress);
    finish_out(reason)
}

/// Baselines for `cargo xtask bench`, which measures the gate next to the
/// cheapest programs there are. The controller never attaches these.
#[xdp]
pub fn noop_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// The floor of the flood benchmark: drops everything, touching nothing.
#[xdp]
pub fn drop_xdp(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// The egress baseline of `cargo xtask bench`.
#[classifier]
pub fn noop_tc(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Parses and tracks one packet; the reason for its verdict.
#[inline(always)]
fn verdict<C: parse::Packet>(
    ctx: &C,
    facts: &mut Facts,
    cfg: &Config,
    side: track::Side,
) -> Reason {
    match parse::parse(ctx, facts) {
        parse::Parsed::NotTcp => Reason::NotTcp,
        parse::Parsed::Malformed => Reason::Malformed,
        parse::Parsed::Tcp if cfg.mode() == Mode::Off => Reason::Pass,
        parse::Parsed::Tcp => track::track(facts, cfg, side),
    }
}

/// The XDP program's one exit point: counts the packet under its reason and
/// turns the reason into an action according to the mode.
#[inline(always)]
fn finish_in(reason: Reason, mode: Mode) -> u32 {
    bump(&COUNTERS, reason);
    if reason.is_drop() && mode == Mode::Enforce {
        bump(&DROPPED, reason);
        xdp_action::XDP_DROP
    } else {
        xdp_action::XDP_PASS
    }
}

/// The egress program's one exit point: counts the packet under its reason
/// and lets it leave. What this host sends is its own stack's doing;
/// dropping it would protect nothing.
#[inline(always)]
fn finish_out(reason: Reason) -> i32 {
    bump(&EGRESS, reason);
    TC_ACT_OK
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
