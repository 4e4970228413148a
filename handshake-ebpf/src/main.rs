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

mod clock;
mod conns;
mod cookie;
mod fast;
mod known;
mod parse;
mod prefix;
mod sock;
mod table;
mod track;

use aya_ebpf::{
    bindings::{TC_ACT_OK, xdp_action, xdp_md},
    helpers::{
        bpf_get_prandom_u32, bpf_ktime_get_ns,
        generated::{bpf_for_each_map_elem, bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    },
    macros::{classifier, map, xdp},
    maps::{Array, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::warn;
use core::ffi::c_void;
use core::sync::atomic::{Ordering, compiler_fence};
use handshake_common::machine::Expiry;
use handshake_common::prefix::{DEFAULT_MAX_PREFIXES, PrefixRule, trie_entries};
use handshake_common::tally::{Counted, Tally, TallyPacket};
use handshake_common::{
    Config, DropEvent, ESTABLISHED_CAPACITY, ESTABLISHED_V6_CAPACITY, FlowEntry, FlowKey,
    FlowKeyV4, HALF_OPEN_CAPACITY, KNOWN_WORDS, Mode, PORT_COUNT, PORT_WORDS, Reason,
    SOURCES_CAPACITY, SourceKey, SourceState, VERIFIED_CAPACITY, WindowCounter,
    event::FRAME_BYTES,
    meta,
    table::{Slot, entries as table_entries},
};
use parse::Facts;

/// The live limits, written by the controller. All zeroes (mode `off`) until
/// it does, so a loaded but unconfigured program passes everything.
#[map(name = "CONFIG")]
static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Arriving packets per reason, passed in the first half, dropped in the
/// second (`Reason::counter_slot`): one update a packet. Per CPU: the
/// controller sums the CPUs.
#[map(name = "COUNTERS")]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * Reason::SLOTS, 0);

/// Leaving packets per reason. Per CPU. The egress program never drops, so
/// a drop reason here (say `bad_ack` on a SYN-ACK) means this host's own
/// stack disagreed with the gate's record; the packet left anyway.
#[map(name = "EGRESS")]
static EGRESS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Reason::SLOTS, 0);

/// IPv4 half-open attempts (`conns` picks the map by family). Separate
/// from the established maps, so a SYN flood can only evict other
/// half-open attempts, never an established connection.
#[map(name = "HALF_OPEN_V4")]
static HALF_OPEN_V4: LruHashMap<FlowKeyV4, FlowEntry> =
    LruHashMap::with_max_entries(HALF_OPEN_CAPACITY, 0);

/// IPv6 half-open attempts.
#[map(name = "HALF_OPEN_V6")]
static HALF_OPEN_V6: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(HALF_OPEN_CAPACITY, 0);

/// IPv4 connections past the handshake, until 2·MSL after they close: the
/// gate's own table (`handshake_common::table`), an array of slots found
/// by a hash of the program's own, so a lookup is no call.
/// Mappable (`BPF_F_MMAPABLE`), so the controller reads its slots in
/// place rather than copied out one by one.
#[map(name = "ESTABLISHED_V4")]
static ESTABLISHED_V4: Array<Slot> = Array::with_max_entries(
    table_entries(ESTABLISHED_CAPACITY),
    aya_ebpf::bindings::BPF_F_MMAPABLE,
);

/// IPv6 connections past the handshake.
#[map(name = "ESTABLISHED_V6")]
static ESTABLISHED_V6: LruHashMap<FlowKey, FlowEntry> =
    LruHashMap::with_max_entries(ESTABLISHED_V6_CAPACITY, 0);

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

/// The known-source filter (`handshake_common::known`): two halves of a
/// bitmap, one after the other. Sized by the controller.
#[map(name = "KNOWN")]
static KNOWN: Array<u64> = Array::with_max_entries(KNOWN_WORDS, 0);

/// The filter's `Gen` word: its size, the half in use, whether it may be
/// trusted. Written by the controller (the size) and by the rebuild.
#[map(name = "KNOWN_GEN")]
static KNOWN_GEN: Array<u64> = Array::with_max_entries(1, 0);

/// The allow and deny lists' IPv4 prefixes (`handshake_common::prefix`).
/// Written by the controller only; sized by `attach --max-prefixes`.
#[map(name = "PREFIXES_V4")]
static PREFIXES_V4: LpmTrie<[u8; 4], PrefixRule> = LpmTrie::with_max_entries(PREFIX_ENTRIES, 0);

/// Likewise, IPv6.
#[map(name = "PREFIXES_V6")]
static PREFIXES_V6: LpmTrie<[u8; 16], PrefixRule> = LpmTrie::with_max_entries(PREFIX_ENTRIES, 0);

/// The tries' default capacity: both lists at their default size.
const PREFIX_ENTRIES: u32 = trie_entries(DEFAULT_MAX_PREFIXES);

/// The controller's notes beside the maps (layout version, the egress
/// filter's handle); never read here, but defined here so it is created and
/// pinned with the rest.
#[map(name = "META")]
static META: Array<u64> = Array::with_max_entries(meta::LEN, 0);

/// The count the last sweep of `tally_conns` left, for `status` and the
/// metrics; never read by the packet programs.
#[map(name = "COUNTED")]
static COUNTED: Array<Counted> = Array::with_max_entries(1, 0);

/// Sampled drop events for `handshake-gate events`. 1 MiB: about 5,500
/// events waiting; when it is full, further events are lost, never packets.
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Size of the `EVENTS` ring (a power of two and a multiple of the page size,
/// as the kernel requires).
const EVENT_RING_BYTES: u32 = 1024 * 1024;

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
    // What is surely not TCP goes first: a few reads and one counter.
    if parse::surely_not_tcp(&parse::Xdp(&ctx)) {
        return finish_in(Reason::NotTcp, Mode::Off);
    }
    let Some(cfg) = CONFIG.get(0) else {
        return finish_in(Reason::FailOpen, Mode::Off);
    };
    let tried = fast::attempt(&parse::Xdp(&ctx), cfg, track::Side::Ingress);
    if tried == fast::Tried::Passed {
        // Not a drop: counted alike in every mode.
        return finish_in(Reason::Pass, Mode::Off);
    }
    // Opaque to the optimiser: what the fast path read of the packet and
    // the settings is read again, not carried in registers whose values
    // differ at each way out of the fast path (the verifier walked all
    // that follows once for each).
    let ctx = XdpContext::new(core::hint::black_box(ctx.ctx));
    let cfg = unsafe { &*core::hint::black_box(core::ptr::from_ref(cfg)) };
    let mode = cfg.mode();
    let Some(facts) = SCRATCH.get_ptr_mut(0) else {
        return finish_in(Reason::FailOpen, Mode::Off);
    };
    let facts = unsafe { &mut *facts };
    facts.tried = tried as u8;
    let parsed = parse::parse(&parse::Xdp(&ctx), facts);
    let mut reason = verdict(parsed, facts, cfg, track::Side::Ingress, |f| {
        sock::lookup(&ctx, f)
    });
    if reason == Reason::Cookie && mode == Mode::Enforce {
        match cookie::reply(&ctx, facts, cfg) {
            cookie::Outcome::Sent => {
                bump(&COUNTERS, Reason::Cookie);
                // It leaves from here, unseen by the egress program.
                bump(&EGRESS, Reason::Cookie);
                return xdp_action::XDP_TX;
            }
            cookie::Outcome::NoListener => reason = Reason::PortClosed,
            cookie::Outcome::Failed => reason = Reason::CookieFail,
        }
    }
    if reason == Reason::FailOpen {
        warn!(&ctx, "a map update failed; the packet passed (fail open)");
    }
    if reason.is_drop() && cfg.event_sample != 0 {
        report(
            ctx.ctx,
            facts,
            matches!(parsed, parse::Parsed::Tcp),
            reason,
            cfg,
        );
    }
    finish_in(reason, mode)
}

#[classifier]
pub fn handshake_out(ctx: TcContext) -> i32 {
    let Some(cfg) = CONFIG.get(0) else {
        return finish_out(Reason::FailOpen);
    };
    // Read where the headers already are (a locally built segment's are
    // linear); the whole path pulls them there first.
    let tried = fast::attempt(&parse::Tc(&ctx), cfg, track::Side::Egress);
    if tried == fast::Tried::Passed {
        return finish_out(Reason::Pass);
    }
    let Some(facts) = SCRATCH.get_ptr_mut(1) else {
        return finish_out(Reason::FailOpen);
    };
    let facts = unsafe { &mut *facts };
    facts.tried = tried as u8;
    let want = if ctx.len() < EGRESS_PULL {
        ctx.len()
    } else {
        EGRESS_PULL
    };
    if ((ctx.data_end() - ctx.data()) as u32) < want {
        // Fails only on a packet the parser then finds truncated.
        let _ = ctx.pull_data(want);
    }
    let parsed = parse::parse(&parse::Tc(&ctx), facts);
    // Never asked: what leaves is this host's own.
    let reason = verdict(parsed, facts, cfg, track::Side::Egress, |_| {
        handshake_common::machine::Lookup::Nothing
    });
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

/// Counts both connection maps by state (`handshake_common::tally`), in the
/// kernel, for `status` and the metrics. Never attached: the controller
/// runs it through `BPF_PROG_TEST_RUN` with a [`TallyPacket`] holding the
/// moment to judge expiry by, and reads the counts back from the packet.
/// With `sweep` set it also deletes the expired entries it meets (the
/// daemon's sweep) and, with `keep_ns`, leaves the count in `COUNTED`.
#[xdp]
pub fn tally_conns(ctx: XdpContext) -> u32 {
    let start = ctx.data();
    // A controller from before the filter sends a packet that ends where
    // `rebuild` starts.
    let short = core::mem::offset_of!(TallyPacket, rebuild);
    if start + short > ctx.data_end() {
        return xdp_action::XDP_ABORTED;
    }
    let whole = || start + core::mem::size_of::<TallyPacket>() <= ctx.data_end();
    let Some(cfg) = CONFIG.get(0) else {
        return xdp_action::XDP_ABORTED;
    };
    let p = start as *mut TallyPacket;
    let (now_ns, sweep, keep_ns) = unsafe { ((*p).now_ns, (*p).sweep != 0, (*p).keep_ns) };
    let rebuild = whole() && unsafe { (*p).rebuild } != 0;
    let mut t = Counting {
        expiry: Expiry::of(cfg, now_ns),
        tally: Tally::default(),
        sweep,
        swept: [0; 2],
    };
    let ctx_ptr = (&raw mut t).cast::<c_void>();
    unsafe {
        bpf_for_each_map_elem(
            (&raw const HALF_OPEN_V4).cast_mut().cast(),
            count_half_open_v4 as *mut c_void,
            ctx_ptr,
            0,
        );
        bpf_for_each_map_elem(
            (&raw const HALF_OPEN_V6).cast_mut().cast(),
            count_half_open_v6 as *mut c_void,
            ctx_ptr,
            0,
        );
        bpf_for_each_map_elem(
            (&raw const ESTABLISHED_V4).cast_mut().cast(),
            count_established_v4 as *mut c_void,
            ctx_ptr,
            0,
        );
        bpf_for_each_map_elem(
            (&raw const ESTABLISHED_V6).cast_mut().cast(),
            count_established_v6 as *mut c_void,
            ctx_ptr,
            0,
        );
        (*p).tally = t.tally;
        // After the sweep's deletes: what went needs no bit. Walks of their
        // own, whose state does not change from entry to entry, so the
        // verifier's look at each callback settles at once.
        let mut build = if rebuild {
            known::Build::start(cfg).unwrap_or(known::Build::OFF)
        } else {
            known::Build::OFF
        };
        let rebuilt = if build.on != 0 {
            let b_ptr = (&raw mut build).cast::<c_void>();
            bpf_for_each_map_elem(
                (&raw const HALF_OPEN_V4).cast_mut().cast(),
                mark_flow_v4 as *mut c_void,
                b_ptr,
                0,
            );
            bpf_for_each_map_elem(
                (&raw const ESTABLISHED_V4).cast_mut().cast(),
                mark_slot as *mut c_void,
                b_ptr,
                0,
            );
            bpf_for_each_map_elem(
                (&raw const HALF_OPEN_V6).cast_mut().cast(),
                mark_flow_v6 as *mut c_void,
                b_ptr,
                0,
            );
            bpf_for_each_map_elem(
                (&raw const ESTABLISHED_V6).cast_mut().cast(),
                mark_flow_v6 as *mut c_void,
                b_ptr,
                0,
            );
            bpf_for_each_map_elem(
                (&raw const SOURCES).cast_mut().cast(),
                mark_source as *mut c_void,
                b_ptr,
                0,
            );
            bpf_for_each_map_elem(
                (&raw const VERIFIED).cast_mut().cast(),
                mark_verified as *mut c_void,
                b_ptr,
                0,
            );
            build.finish();
            1
        } else {
            0
        };
        // Checked again where it is written, for the verifier.
        if whole() {
            (*p).rebuilt = rebuilt;
        }
        if sweep {
            (*p).swept = t.swept;
            (*p).sweep_done = 1;
            if keep_ns != 0
                && let Some(c) = COUNTED.get_ptr_mut(0)
            {
                // Written while a reader may be copying it: `until_ns` to
                // 0 (not current) first and to its value last, so a reader
                // that copies it twice alike and current has a whole one.
                core::ptr::write_volatile(&raw mut (*c).until_ns, 0);
                compiler_fence(Ordering::SeqCst);
                (*c).taken_ns = now_ns;
                (*c).tally = t.tally;
                compiler_fence(Ordering::SeqCst);
                core::ptr::write_volatile(&raw mut (*c).until_ns, now_ns.saturating_add(keep_ns));
            }
        }
    }
    xdp_action::XDP_PASS
}

/// What [`tally_conns`] hands each call of its callbacks (on its stack).
struct Counting {
    expiry: Expiry,
    tally: Tally,
    /// Delete the expired entries.
    sweep: bool,
    /// How many were deleted from each map.
    swept: [u64; 2],
}

impl Counting {
    /// Counts one entry or, when sweeping and it has expired, deletes it
    /// with `delete`.
    #[inline(always)]
    fn visit(&mut self, e: &FlowEntry, half_open: bool, delete: impl FnOnce() -> bool) {
        if self.sweep {
            if self.tally.sweep(e, half_open, &self.expiry, delete) {
                self.swept[!half_open as usize] += 1;
            }
        } else {
            self.tally.add(e, half_open, &self.expiry);
        }
    }
}

/// `bpf_for_each_map_elem`'s callbacks over the connection maps: 0 goes on.
macro_rules! count_callback {
    ($name:ident, $key:ty, $map:ident, $half_open:expr) => {
        #[inline(never)]
        extern "C" fn $name(
            _map: *mut c_void,
            key: *mut $key,
            e: *mut FlowEntry,
            t: *mut Counting,
        ) -> i64 {
            unsafe { (*t).visit(&*e, $half_open, || $map.remove(&*key).is_ok()) };
            0
        }
    };
}

count_callback!(count_half_open_v4, FlowKeyV4, HALF_OPEN_V4, true);
count_callback!(count_half_open_v6, FlowKey, HALF_OPEN_V6, true);

/// [`count_callback`]'s over the IPv4 established table: its free slots
/// and its header (never in use) pass by.
#[inline(never)]
extern "C" fn count_established_v4(
    _map: *mut c_void,
    _index: *mut u32,
    s: *mut Slot,
    t: *mut Counting,
) -> i64 {
    unsafe {
        if (*s).used != 0 {
            (*t).visit(&(*s).entry, false, || {
                table::free(s);
                true
            });
        }
    }
    0
}
count_callback!(count_established_v6, FlowKey, ESTABLISHED_V6, false);

/// `bpf_for_each_map_elem`'s callback over an IPv4 connection map in a
/// rebuild of the known-source filter.
#[inline(never)]
extern "C" fn mark_flow_v4(
    _map: *mut c_void,
    key: *mut FlowKeyV4,
    _e: *mut FlowEntry,
    b: *mut known::Build,
) -> i64 {
    unsafe { (*b).flow(&(*key).widen()) };
    0
}

/// The same over the IPv4 established table.
#[inline(never)]
extern "C" fn mark_slot(
    _map: *mut c_void,
    _index: *mut u32,
    s: *mut Slot,
    b: *mut known::Build,
) -> i64 {
    unsafe {
        if (*s).used != 0 {
            (*b).flow(&(*s).key.widen());
        }
    }
    0
}

/// The same over an IPv6 one.
#[inline(never)]
extern "C" fn mark_flow_v6(
    _map: *mut c_void,
    key: *mut FlowKey,
    _e: *mut FlowEntry,
    b: *mut known::Build,
) -> i64 {
    unsafe { (*b).flow(&*key) };
    0
}

/// `bpf_for_each_map_elem`'s callback over the per-source map in a rebuild
/// of the known-source filter.
#[inline(never)]
extern "C" fn mark_source(
    _map: *mut c_void,
    key: *mut SourceKey,
    _v: *mut SourceState,
    b: *mut known::Build,
) -> i64 {
    unsafe { (*b).source(&*key) };
    0
}

/// The same over the verified map.
#[inline(never)]
extern "C" fn mark_verified(
    _map: *mut c_void,
    key: *mut SourceKey,
    _v: *mut u64,
    b: *mut known::Build,
) -> i64 {
    unsafe { (*b).verified(&*key) };
    0
}

/// Tracks one parsed packet; the reason for its verdict. `ask`: how the
/// kernel is asked about a flow with no entry.
#[inline(always)]
fn verdict(
    parsed: parse::Parsed,
    facts: &mut Facts,
    cfg: &Config,
    side: track::Side,
    ask: impl FnOnce(&mut Facts) -> handshake_common::machine::Lookup,
) -> Reason {
    match parsed {
        parse::Parsed::NotTcp => Reason::NotTcp,
        parse::Parsed::Malformed => Reason::Malformed,
        parse::Parsed::Tcp if cfg.mode() == Mode::Off => Reason::Pass,
        parse::Parsed::Tcp => track::track(facts, cfg, side, ask),
    }
}

/// Writes a [`DropEvent`] for one in `event_sample` dropped packets (chosen
/// at random, so a steady flood is sampled evenly). `tcp`: the headers were
/// read, so `facts` holds this packet's addresses; otherwise (malformed)
/// they may be a previous packet's and are left out.
#[inline(never)]
fn report(ctx: *mut xdp_md, facts: &Facts, tcp: bool, reason: Reason, cfg: &Config) {
    let mode = cfg.mode();
    // Checked here, on the same value the division uses, so the compiler
    // leaves out the division-by-zero panic (which the verifier would refuse).
    let one_in = cfg.event_sample;
    if one_in == 0 || unsafe { bpf_get_prandom_u32() } % one_in != 0 {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<DropEvent>(0) else {
        // The ring is full: the reader is behind; losing a sample is fine.
        return;
    };
    let e = entry.as_mut_ptr();
    let (states, family) = if tcp && facts.key_found == track::NO_KEY {
        ((DropEvent::NO_STATE, DropEvent::NO_STATE), facts.family)
    } else if tcp {
        (track::states_of(&facts.key), facts.family)
    } else {
        ((DropEvent::NO_STATE, DropEvent::NO_STATE), 0)
    };
    unsafe {
        (*e).time_ns = bpf_ktime_get_ns();
        (*e).reason = reason as u8;
        (*e).family = family;
        (*e).dropped = (mode == Mode::Enforce) as u8;
        (*e).client_state = states.0;
        (*e).server_state = states.1;

        if tcp {
            (*e).src_addr = facts.src.addr;
            (*e).dst_addr = facts.dst.addr;
            (*e).src_port = facts.src.port;
            (*e).dst_port = facts.dst.port;
            (*e).tcp_flags = facts.seg.flags;
        } else {
            (*e).src_addr = [0; 16];
            (*e).dst_addr = [0; 16];
            (*e).src_port = 0;
            (*e).dst_port = 0;
            (*e).tcp_flags = 0;
        }
        (*e)._pad = [0; 2];
        // The frame's first bytes, for `events --pcap`.
        let wire = bpf_xdp_get_buff_len(ctx) as usize;
        (*e).wire_len = wire.min(u16::MAX as usize) as u16;
        let n = capture_len(wire);
        let frame = (&raw mut (*e).frame).cast::<c_void>();
        if n == 0 || bpf_xdp_load_bytes(ctx, 0, frame, n) != 0 {
            (*e).captured = 0;
        } else {
            (*e).captured = n as u16;
        }
    }
    entry.submit(0);
}

/// How many bytes of a frame of `len` an event carries: all of it up to
/// [`FRAME_BYTES`], computed so the verifier sees 1 to 128 on the very
/// value passed (the length argument may not be 0 before Linux 6.2's
/// verifier); 0 only for an empty frame, which the caller skips.
#[inline(always)]
fn capture_len(len: usize) -> u32 {
    if len == 0 {
        return 0;
    }
    if len >= FRAME_BYTES {
        return FRAME_BYTES as u32;
    }
    1 + (core::hint::black_box(len as u32 - 1) & (FRAME_BYTES as u32 - 1))
}

/// The XDP program's one exit point: counts the packet under its reason and
/// turns the reason into an action according to the mode.
#[inline(always)]
fn finish_in(reason: Reason, mode: Mode) -> u32 {
    let drop = reason.is_drop() && mode == Mode::Enforce;
    bump_slot(&COUNTERS, reason.counter_slot(drop));
    if drop {
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
    bump_slot(counters, reason as u32);
}

#[inline(always)]
fn bump_slot(counters: &PerCpuArray<u64>, slot: u32) {
    if let Some(c) = counters.get_ptr_mut(slot) {
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
