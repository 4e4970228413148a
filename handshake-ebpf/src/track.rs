//! Connection tracking against the maps: finds the flow's entry, runs the
//! pure state machine, stores what it returns and keeps the half-open counts.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::bindings::BPF_NOEXIST;
use handshake_common::{
    Config, FlowEntry, FlowKey, FlowKeyV4, Reason, SourceKey, SourceState, WindowCounter,
    admit::{self, Admission},
    flow::flags,
    machine::{self, Dir, Lookup, Segment, Step, Untracked, tcp},
    window,
};

pub use handshake_common::machine::Side;

use crate::clock;
use crate::conns::{ESTABLISHED, HALF_OPEN, Key};
use crate::fast::Tried;
use crate::known;
use crate::parse::Facts;
use crate::prefix;
use crate::{ALLOWED_PORTS, ESTABLISHED_V6, GLOBAL, PORTS, SOURCES, VERIFIED};
use handshake_common::flow::AF_INET;
use handshake_common::prefix::{ALLOW, DENY};

/// Compare-and-exchange attempts on a contended bucket before giving up (a
/// lost increment is an undercount until the bucket ages out; a lost
/// decrement an overcount, likewise).
const CAS_TRIES: usize = 4;

/// A TCP packet crossing the protected interface, in either direction.
///
/// Each stage below is its own BPF function: the verifier adds up the
/// stack frames of nested calls only, so siblings keep the combined stack
/// under the 512-byte limit. The large ones are global functions
/// (`gate_*`), which the verifier checks once each (docs/BENCHMARKS.md,
/// "What loading costs").
///
/// `f.tried` is what the data fast path (`fast`) found, which is not
/// looked up again; `ask` is how the kernel is asked about an arriving segment of
/// a flow with no entry (`unknown-flows=verify`): a socket lookup from XDP.
#[inline(always)]
pub fn track(
    f: &mut Facts,
    cfg: &Config,
    side: Side,
    ask: impl FnOnce(&mut Facts) -> Lookup,
) -> Reason {
    let tried = Tried::of(f.tried);
    f.key_found = 0;
    f.listed = 0;
    // An arriving SYN's prefix list, while a list has entries: a denied
    // one goes before any other map is read.
    if side == Side::Ingress
        && cfg.prefix_lists != 0
        && f.seg.is_pure_syn()
        && machine::check(u16::from_be(f.src.port), u16::from_be(f.dst.port), &f.seg).is_ok()
    {
        f.listed = prefix::list_of(f.family, &f.src.addr) as u8;
        if f.listed == DENY as u8 {
            f.key_found = NO_KEY;
            return Reason::Denied;
        }
    }
    // An arriving packet from an address the known-source filter has never
    // seen has no entry anywhere: its lookups are skipped.
    let unknown = side == Side::Ingress
        && match tried {
            Tried::Unknown => true,
            Tried::NoEntry | Tried::Declined => false,
            Tried::Not | Tried::Passed => known::unknown(cfg, f.family, &f.src.addr),
        };
    if unknown
        && f.seg.is_pure_syn()
        && f.listed != ALLOW as u8
        && let Some(r) = unknown_syn(f, cfg)
    {
        return r;
    }
    let mut skip = if unknown { SKIP_ALL } else { SKIP_NONE };
    if !unknown && f.seg.flags & !tcp::PSH == tcp::ACK {
        match tried {
            Tried::NoEntry => skip = SKIP_ESTABLISHED,
            Tried::Declined => {
                f.key_found = 1;
                skip = SKIP_FOUND;
            }
            _ => match fast_data(f, side) {
                Some(r) => return r,
                None if f.key_found == 0 => skip = SKIP_ESTABLISHED,
                None => skip = SKIP_FOUND,
            },
        }
    }
    let r = if skip == SKIP_ALL {
        nothing_tracked(f, side)
    } else {
        gate_tracked(f, cfg, side as u32, skip)
    };
    match r {
        NONE => untracked(f, cfg, side, unknown, ask),
        r => decode(r),
    }
}

/// [`tracked`] for a packet whose source has nothing in any map (the
/// known-source filter's word is clear), inline: no key to make, no map
/// to read, no call. The functions that store an entry for it make its
/// key themselves. `f.key_found` is set to [`NO_KEY`], so a drop event
/// names no entry's states (it has none).
#[inline(always)]
fn nothing_tracked(f: &mut Facts, side: Side) -> u32 {
    f.key_found = NO_KEY;
    if let Err(r) = machine::check(u16::from_be(f.src.port), u16::from_be(f.dst.port), &f.seg) {
        return r as u32;
    }
    f.seg.side = side;
    NONE
}

/// A SYN from a source the known-source filter says has nothing in the
/// maps, inline, with no call and no key: refused at a closed port or by
/// the shared caps, answered with a cookie or passed untracked as
/// [`new_syn`] would for such a source (within its cap, a full bucket,
/// not verified). `None`: it is to be tracked, or its headers are wrong;
/// the whole path decides. `f.key_found` is set to [`NO_KEY`], so a drop
/// event names no entry's states.
#[inline(always)]
fn unknown_syn(f: &mut Facts, cfg: &Config) -> Option<Reason> {
    if machine::check(u16::from_be(f.src.port), u16::from_be(f.dst.port), &f.seg).is_err() {
        return None;
    }
    f.key_found = NO_KEY;
    let port = u16::from_be(f.dst.port) as u32;
    if !port_allowed(cfg, port) {
        return Some(Reason::PortClosed);
    }
    if let Some(r) = admit::by_source(cfg, 0, true) {
        return Some(r);
    }
    let now = clock::now();
    let ep = window::epoch(now, window::bucket_width_ns(cfg.half_open_timeout_ms));
    let (Some(global), Some(port_count)) = (GLOBAL.get(0), PORTS.get(port)) else {
        return None;
    };
    match admit::by_shared(cfg, port_count.live(ep), global.live(ep), false) {
        Admission::Refuse(r) => Some(r),
        Admission::PassUntracked => Some(Reason::OverflowPass),
        Admission::Cookie => Some(Reason::Cookie),
        Admission::Track => {
            f.key_found = 0;
            None
        }
    }
}

/// [`Facts::key_found`] when the key was not made: no entry was looked for.
pub const NO_KEY: u8 = 2;

/// What [`gate_tracked`] need not look up again.
const SKIP_NONE: u32 = 0;
/// Nothing: the known-source filter says there is no entry
/// ([`nothing_tracked`], not [`gate_tracked`]).
const SKIP_ALL: u32 = 1;
/// The established map: [`fast_data`] found no entry there.
const SKIP_ESTABLISHED: u32 = 2;
/// None, and the filter need not be asked: [`fast_data`] found the entry.
const SKIP_FOUND: u32 = 3;

/// The data fast path ([`machine::fast_step`]) for what `fast` does not
/// take (IPv6, a tagged frame), inline: one lookup, no call. `None` when
/// the segment is not for it; `f.key_found` then says whether the
/// established map had an entry.
#[inline(always)]
fn fast_data(f: &mut Facts, side: Side) -> Option<Reason> {
    f.key_found = 0;
    if machine::check(u16::from_be(f.src.port), u16::from_be(f.dst.port), &f.seg).is_err() {
        return None;
    }
    // The key is made here for this lookup only (an IPv4 one straight
    // from the ends); the full path makes `f.key` again. What is kept
    // across the lookup is kept in `f`, not in registers the call would
    // make the program spill to its stack.
    let p = if f.family == AF_INET {
        let src_is_lo;
        (f.key_v4, src_is_lo) = FlowKeyV4::normalise(&f.src, &f.dst);
        f.src_is_lo = src_is_lo as u8;
        crate::table::get_ptr_mut(&f.key_v4)
    } else {
        let src_is_lo;
        (f.key, src_is_lo) = FlowKey::normalise(f.family, &f.src, &f.dst);
        f.src_is_lo = src_is_lo as u8;
        ESTABLISHED_V6.get_ptr_mut(&f.key)
    }?;
    f.key_found = 1;
    let e = unsafe { &mut *p };
    let now = clock::now();
    f.seg.side = side;
    match machine::fast_step(e, e.dir_of(f.src_is_lo != 0), &f.seg, now) {
        Some(_) => Some(Reason::Pass),
        None => None,
    }
}

/// The reason a global function returned as a number. A table lookup
/// (`Reason::from_u32`) here loses its bound on the way to the verifier;
/// the discriminants are the indices (checked below), so this needs none.
#[inline(always)]
fn decode(v: u32) -> Reason {
    if v < Reason::COUNT {
        // SAFETY: `Reason` is `repr(u32)` and its discriminants are exactly
        // 0..COUNT (the assertion below).
        unsafe { core::mem::transmute::<u32, Reason>(v) }
    } else {
        Reason::FailOpen
    }
}

const _: () = {
    let mut i = 0;
    while i < Reason::COUNT as usize {
        assert!(Reason::ALL[i] as u32 == i as u32);
        i += 1;
    }
};

/// What a global function returns for `None`.
const NONE: u32 = u32::MAX;

/// [`tracked`] as a global BPF function (exported, see
/// `handshake-ebpf/build.rs`): the verifier checks it once, on its own,
/// where it checks a static function again for each way its caller
/// reaches it (each path through the parser). Its pointers may be null as
/// the verifier sees them; the answer is a reason, or [`NONE`].
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn gate_tracked(f: *mut Facts, cfg: *const Config, side: u32, skip: u32) -> u32 {
    if f.is_null() || cfg.is_null() {
        return Reason::FailOpen as u32;
    }
    let side = if side == Side::Egress as u32 {
        Side::Egress
    } else {
        Side::Ingress
    };
    match tracked(unsafe { &mut *f }, unsafe { &*cfg }, side, skip) {
        Some(r) => r as u32,
        None => NONE,
    }
}

/// [`pick_up`] as a global BPF function, likewise.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn gate_pick_up(f: *const Facts, cfg: *const Config, cookie: u32) -> u32 {
    if f.is_null() || cfg.is_null() {
        return Reason::FailOpen as u32;
    }
    let f = unsafe { &*f };
    let (key, src_is_lo, now) = key_of(f);
    pick_up(f, &key, src_is_lo, now, unsafe { &*cfg }, cookie != 0) as u32
}

/// The packet's connection key, which end of it the source is, and now,
/// made in the global functions that store an entry: the caller may not
/// have made them ([`nothing_tracked`]). The key on the stack: before 6.2
/// a map helper takes no key from a global function's memory argument.
#[inline(always)]
fn key_of(f: &Facts) -> (FlowKey, bool, u64) {
    let (key, src_is_lo) = FlowKey::normalise(f.family, &f.src, &f.dst);
    (key, src_is_lo, clock::now())
}

/// [`new_syn`] as a global BPF function, likewise.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn gate_new_syn(f: *const Facts, cfg: *const Config, unknown: u32) -> u32 {
    if f.is_null() || cfg.is_null() {
        return Reason::FailOpen as u32;
    }
    let f = unsafe { &*f };
    let (key, src_is_lo, now) = key_of(f);
    new_syn(f, &key, src_is_lo, unsafe { &*cfg }, now, unknown != 0) as u32
}

/// The verdict from the flow's entry, if it has one (`None` also when the
/// packet opens a new connection on a finished tuple). `skip`: what need
/// not be looked up again ([`SKIP_ESTABLISHED`], [`SKIP_FOUND`]).
#[inline(always)]
fn tracked(f: &mut Facts, cfg: &Config, side: Side, skip: u32) -> Option<Reason> {
    let src_is_lo;
    let key;
    (key, src_is_lo) = FlowKey::normalise(f.family, &f.src, &f.dst);
    // Kept on the stack for the lookups (before 6.2 a map helper takes no
    // key from a global function's memory argument), and in `f` for what
    // follows: set before anything can refuse the packet, so a drop event
    // always names this packet's own connection.
    f.key = key;
    f.src_is_lo = src_is_lo as u8;
    if let Err(r) = machine::check(u16::from_be(f.src.port), u16::from_be(f.dst.port), &f.seg) {
        return Some(r);
    }
    // The coarse clock (CLOCK_MONOTONIC_COARSE: the same clock as the
    // controller's, behind it by at most a tick): every timeout here is
    // milliseconds or more, and the fine clock's TSC read was a tenth of
    // an established packet's cost (`clock`).
    let now = clock::now();
    f.now_ns = now;
    f.seg.side = side;
    // The known-source filter: nothing on this tuple (an arriving packet
    // the fast path did not find an entry for; nothing from its source at
    // all is `nothing_tracked`'s).
    if side == Side::Ingress && skip != SKIP_FOUND && known::flow_unknown(cfg, &key) {
        return None;
    }
    if skip != SKIP_ESTABLISHED
        && let Some(r) = established(f, &key, cfg)
    {
        return Some(r);
    }
    half_open(f, &key, cfg)
}

/// A packet of a flow with no entry: a new SYN, or (arriving, with
/// `unknown-flows=verify`) whatever the kernel says it is.
#[inline(always)]
fn untracked(
    f: &mut Facts,
    cfg: &Config,
    side: Side,
    unknown: bool,
    ask: impl FnOnce(&mut Facts) -> Lookup,
) -> Reason {
    // Any other arriving segment of a flow with no entry from a denied
    // prefix (a SYN's list is known already), before the kernel is asked.
    if side == Side::Ingress && !f.seg.is_pure_syn() && prefix::denied(cfg, f.family, &f.src.addr) {
        return Reason::Denied;
    }
    let mut u = machine::untracked(&f.seg);
    if machine::needs_lookup(u, side, cfg.unknown_flows()) {
        let lookup = ask(f);
        u = machine::verified(u, &f.seg, lookup);
    }
    let (src_is_lo, now) = (f.src_is_lo != 0, f.now_ns);
    let (f, key) = (&*f, &f.key);
    match u {
        Untracked::Open if side == Side::Ingress => decode(gate_new_syn(f, cfg, unknown as u32)),
        Untracked::Open => outbound_syn(f, key, src_is_lo, cfg, now),
        Untracked::Ignore => Reason::Pass,
        Untracked::NoConn => Reason::NoConn,
        Untracked::PickUp => decode(gate_pick_up(f, cfg, 0)),
        Untracked::CookieAck => decode(gate_pick_up(f, cfg, 1)),
    }
}

/// A packet of a connection past its handshake; `None` when there is none
/// (or it just ended and the packet opens a new one).
#[inline(never)]
fn established(f: &Facts, key: &FlowKey, cfg: &Config) -> Option<Reason> {
    let (src_is_lo, now) = (f.src_is_lo != 0, f.now_ns);
    let key = &Key::of(key);
    let p = ESTABLISHED.get_ptr_mut(key)?;
    let e = unsafe { &mut *p };
    if machine::finished_expired(e, now, cfg) {
        let _ = ESTABLISHED.remove(key);
        return None;
    }
    match step(e, src_is_lo, &f.seg, now) {
        Step::Update | Step::Promote => Some(Reason::Pass),
        Step::Remove => {
            let _ = ESTABLISHED.remove(key);
            Some(Reason::Pass)
        }
        Step::Reject(r) => Some(r),
        Step::Restart => {
            let _ = ESTABLISHED.remove(key);
            None
        }
    }
}

/// A packet of a half-open attempt; `None` when there is none (or it expired).
#[inline(never)]
fn half_open(f: &Facts, key: &FlowKey, cfg: &Config) -> Option<Reason> {
    let (src_is_lo, now) = (f.src_is_lo != 0, f.now_ns);
    let key_at = &Key::of(key);
    let p = HALF_OPEN.get_ptr_mut(key_at)?;
    let e = unsafe { &mut *p };
    let (client_is_lo, epoch) = (e.client_is_lo() as u8, e.epoch());
    let epoch = if e.has(flags::COUNTED) {
        Some(epoch)
    } else {
        None
    };
    if machine::half_open_expired(e, now, cfg) {
        forget(key, client_is_lo, epoch, cfg);
        return None;
    }
    Some(match step(e, src_is_lo, &f.seg, now) {
        Step::Update => Reason::Pass,
        Step::Promote => {
            let stored = ESTABLISHED.insert(key_at, e, 0);
            // Only an arriving SYN holds a count: its client is remote.
            if epoch.is_some() {
                verify(key, client_is_lo, cfg, now);
            }
            forget(key, client_is_lo, epoch, cfg);
            if stored.is_ok() {
                Reason::Pass
            } else {
                Reason::FailOpen
            }
        }
        Step::Remove | Step::Restart => {
            forget(key, client_is_lo, epoch, cfg);
            Reason::Pass
        }
        Step::Reject(r) => r,
    })
}

/// [`machine::step`] on `e` for a segment from its `lo` end or not.
#[inline(always)]
fn step(e: &mut FlowEntry, src_is_lo: bool, seg: &Segment, now: u64) -> Step {
    let from_client = matches!(e.dir_of(src_is_lo), Dir::FromClient) as u32;
    let v = gate_step(e, from_client, seg, now);
    match v {
        STEP_UPDATE => Step::Update,
        STEP_PROMOTE => Step::Promote,
        STEP_REMOVE => Step::Remove,
        STEP_RESTART => Step::Restart,
        _ => Step::Reject(decode(v & 0xff)),
    }
}

const STEP_UPDATE: u32 = 0;
const STEP_PROMOTE: u32 = 1;
const STEP_REMOVE: u32 = 2;
const STEP_RESTART: u32 = 3;
const STEP_REJECT: u32 = 0x100;

/// The state machine as a global BPF function (exported, see
/// `handshake-ebpf/build.rs`): the verifier checks a global function once,
/// on its own, where it checks a static one again for each way its callers
/// reach it (three callers: a quarter of the XDP program's verification).
/// Scalars and pointers to memory of a known size are what a global
/// function may take, so the step comes back as a number.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn gate_step(
    e: *mut FlowEntry,
    from_client: u32,
    seg: *const Segment,
    now: u64,
) -> u32 {
    // The verifier takes a global function's pointers as possibly null.
    if e.is_null() || seg.is_null() {
        return STEP_REJECT | Reason::FailOpen as u32;
    }
    let (e, seg) = unsafe { (&mut *e, &*seg) };
    let dir = if from_client != 0 {
        Dir::FromClient
    } else {
        Dir::FromServer
    };
    match machine::step(e, dir, seg, now) {
        Step::Update => STEP_UPDATE,
        Step::Promote => STEP_PROMOTE,
        Step::Remove => STEP_REMOVE,
        Step::Restart => STEP_RESTART,
        Step::Reject(r) => STEP_REJECT | r as u32,
    }
}

/// Picks up a flow with no entry as ESTABLISHED: one the kernel has a
/// socket for (or, loosely, any flow) from its first segment, or a cookie
/// handshake's final ACK, whose sender is the client and is then verified.
#[inline(always)]
fn pick_up(
    f: &Facts,
    key: &FlowKey,
    src_is_lo: bool,
    now: u64,
    cfg: &Config,
    cookie: bool,
) -> Reason {
    let mut n = if cookie {
        machine::cookie_pick_up(src_is_lo, now)
    } else {
        machine::pick_up(
            u16::from_be(f.src.port),
            u16::from_be(f.dst.port),
            src_is_lo,
            now,
        )
    };
    // The first segment's numbers learnt, its FIN (if any) followed, as
    // `machine::first_segment` does.
    let _ = step(&mut n, src_is_lo, &f.seg, now);
    if ESTABLISHED.insert(&Key::of(key), &n, 0).is_err() {
        return Reason::FailOpen;
    }
    // After the insert, so a rebuild that clears these bits walks the entry.
    let remote = if f.seg.side == Side::Egress {
        &f.dst.addr
    } else {
        &f.src.addr
    };
    known::mark_flow(cfg, key, remote);
    if cookie {
        verify(key, n.client_is_lo() as u8, cfg, now);
        Reason::CookieAck
    } else {
        Reason::Pass
    }
}

/// The (client, server) states of the connection `key` belongs to, or
/// [`handshake_common::DropEvent::NO_STATE`] for both when it has no entry.
/// For drop events only: a cold path.
#[inline(never)]
pub fn states_of(key: &FlowKey) -> (u8, u8) {
    let key = &Key::of(key);
    let found = match unsafe { ESTABLISHED.get(key) } {
        Some(e) => Some(e),
        None => unsafe { HALF_OPEN.get(key) },
    };
    match found {
        Some(e) => (e.client_state_raw(), e.server_state_raw()),
        None => (
            handshake_common::DropEvent::NO_STATE,
            handshake_common::DropEvent::NO_STATE,
        ),
    }
}

/// An arriving SYN of a flow not tracked yet: admit it under the limits, or
/// not, in the order [`admit::admit_syn`] documents, each stage reading only
/// what it needs. A closed port is refused before any map is touched; a
/// SYN its source's budget refuses reads no shared counter; the verified
/// map is read only where the answer depends on it. A source with no entry
/// is within its cap with a full bucket: its entry is made only when one of
/// its SYNs is tracked, so a refused spoofed flood, or one answered with
/// cookies or passed to the kernel's, leaves the per-source map alone.
#[inline(always)]
fn new_syn(
    f: &Facts,
    key: &FlowKey,
    src_is_lo: bool,
    cfg: &Config,
    now: u64,
    unknown: bool,
) -> Reason {
    let port = u16::from_be(f.dst.port) as u32;
    if !port_allowed(cfg, port) {
        return Reason::PortClosed;
    }
    if f.listed == ALLOW as u8 {
        // Past every cap and rate, holding no half-open count.
        let e = machine::open(&f.seg, src_is_lo, now, 0, false);
        let _ = HALF_OPEN.insert(&Key::of(key), &e, BPF_NOEXIST as u64);
        known::mark_flow(cfg, key, &f.src.addr);
        return Reason::Allowed;
    }
    let width = window::bucket_width_ns(cfg.half_open_timeout_ms);
    let ep = window::epoch(now, width);
    let skey = cfg.source_key(f.family, &f.src.addr);
    let known = if unknown {
        None
    } else {
        SOURCES.get_ptr_mut(&skey)
    };
    let (within_rate, source) = match known {
        Some(src) => (
            admit::take_token(
                unsafe { &mut (*src).syn_tokens },
                now,
                cfg.syn_rate_per_source,
                cfg.syn_burst,
            ),
            unsafe { (*src).half_open.live(ep) },
        ),
        None => (true, 0),
    };
    if let Some(r) = admit::by_source(cfg, source, within_rate) {
        return r;
    }
    let (Some(global), Some(port_count)) = (GLOBAL.get_ptr_mut(0), PORTS.get_ptr_mut(port)) else {
        return Reason::FailOpen;
    };
    let (port_live, global_live) = unsafe { ((*port_count).live(ep), (*global).live(ep)) };
    let verified = !unknown
        && admit::needs_verified(cfg, port_live, global_live)
        && !known::not_verified(cfg, &skey)
        && unsafe { VERIFIED.get(&skey) }.is_some_and(|t| admit::still_verified(*t, now, cfg));
    match admit::by_shared(cfg, port_live, global_live, verified) {
        Admission::Refuse(r) => r,
        // Untracked SYNs make no per-source entry: a spoofed flood answered
        // with cookies (or passed to the kernel's) must not evict real
        // sources' counts and tokens from the LRU map.
        Admission::PassUntracked => Reason::OverflowPass,
        Admission::Cookie => Reason::Cookie,
        Admission::Track => {
            let src = match known {
                Some(p) => p,
                None => match new_source(&skey, cfg, now) {
                    Some(p) => p,
                    None => return Reason::FailOpen,
                },
            };
            let e = machine::open(&f.seg, src_is_lo, now, ep, true);
            if HALF_OPEN
                .insert(&Key::of(key), &e, BPF_NOEXIST as u64)
                .is_ok()
            {
                add(unsafe { &raw mut (*src).half_open }, ep);
                add(port_count, ep);
                add(global, ep);
            }
            // The source's entry and the attempt's are in: their bits are
            // set after them (see `pick_up`).
            known::mark_flow(cfg, key, &f.src.addr);
            // Not stored means another CPU stored this very SYN first.
            Reason::Pass
        }
    }
}

/// The entry of a source whose first SYN is tracked, with that SYN's
/// token taken from its full bucket.
#[inline(always)]
fn new_source(skey: &SourceKey, cfg: &Config, now: u64) -> Option<*mut SourceState> {
    let _ = SOURCES.insert(skey, &NEW_SOURCE, BPF_NOEXIST as u64);
    let p = SOURCES.get_ptr_mut(skey)?;
    admit::take_token(
        unsafe { &mut (*p).syn_tokens },
        now,
        cfg.syn_rate_per_source,
        cfg.syn_burst,
    );
    Some(p)
}

/// A new source's state: inserted from read-only data rather than built on
/// the 512-byte stack, where its 80 bytes do not fit beside the rest.
static NEW_SOURCE: SourceState = SourceState {
    half_open: WindowCounter {
        buckets: [0; window::BUCKETS],
    },
    syn_tokens: admit::TokenBucket {
        nano_tokens: 0,
        refilled_ns: 0,
    },
};

/// Whether `port` (host order) takes SYNs: every port does unless a list
/// is set. A failed lookup fails open.
#[inline(always)]
fn port_allowed(cfg: &Config, port: u32) -> bool {
    if cfg.ports_restricted == 0 {
        return true;
    }
    match ALLOWED_PORTS.get(port / 64) {
        Some(word) => word & (1u64 << (port % 64)) != 0,
        None => true,
    }
}

/// A SYN this host sends: tracked so the gate follows the connection, but
/// it takes no half-open count and meets no limit (the limits protect this
/// host from what arrives).
#[inline(never)]
fn outbound_syn(f: &Facts, key: &FlowKey, src_is_lo: bool, cfg: &Config, now: u64) -> Reason {
    let e = machine::open(&f.seg, src_is_lo, now, 0, false);
    // Not stored: another CPU stored this very SYN first, or the map is full
    // of half-open attempts (the LRU evicts one, so that is rare).
    let _ = HALF_OPEN.insert(&Key::of(key), &e, BPF_NOEXIST as u64);
    known::mark_flow(cfg, key, &f.dst.addr);
    Reason::Pass
}

/// Deletes a half-open entry and gives back its count, if it holds one
/// (`epoch`: the bucket it was counted in). Only the CPU whose delete
/// succeeds gives it back, so racing deletes count once. A function of its
/// own, so its source key does not sit on its callers' stack frames.
#[inline(never)]
fn forget(key: &FlowKey, client_is_lo: u8, epoch: Option<u32>, cfg: &Config) {
    if HALF_OPEN.remove(&Key::of(key)).is_err() {
        return;
    }
    let Some(epoch) = epoch else {
        return;
    };
    let skey = cfg.source_key(key.family, key.client_addr(client_is_lo));
    if let Some(src) = SOURCES.get_ptr_mut(&skey) {
        sub(unsafe { &raw mut (*src).half_open }, epoch);
    }
    let server_port = key.server_port(client_is_lo);
    if let Some(port) = PORTS.get_ptr_mut(u16::from_be(server_port) as u32) {
        sub(port, epoch);
    }
    if let Some(global) = GLOBAL.get_ptr_mut(0) {
        sub(global, epoch);
    }
}

/// Marks the client of a connection whose arriving final ACK completed the
/// handshake as verified: it keeps a share of the global budget reserved.
#[inline(never)]
fn verify(key: &FlowKey, client_is_lo: u8, cfg: &Config, now: u64) {
    let client = key.client_addr(client_is_lo);
    let _ = VERIFIED.insert(&cfg.source_key(key.family, client), &now, 0);
    known::mark_verified(cfg, key.family, client);
}

/// Compare-and-exchange on a bucket shared by all CPUs. The BPF target has no
/// `AtomicU64::compare_exchange` (core does not expose CAS there), so this
/// uses the intrinsic, which LLVM lowers to the BPF_CMPXCHG instruction.
#[inline(always)]
fn cas(slot: *mut u64, old: u64, new: u64) -> Result<(), u64> {
    let (seen, ok) = unsafe {
        atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(slot, old, new)
    };
    if ok { Ok(()) } else { Err(seen) }
}

#[inline(always)]
fn bucket(counter: *mut WindowCounter, ep: u32) -> *mut u64 {
    let slot = window::slot(ep);
    unsafe { &raw mut (*counter).buckets[slot] }
}

#[inline(always)]
fn add(counter: *mut WindowCounter, ep: u32) {
    let b = bucket(counter, ep);
    let mut cur = unsafe { core::ptr::read_volatile(b) };
    for _ in 0..CAS_TRIES {
        match cas(b, cur, window::incremented(cur, ep)) {
            Ok(()) => return,
            Err(v) => cur = v,
        }
    }
}

#[inline(always)]
fn sub(counter: *mut WindowCounter, ep: u32) {
    let b = bucket(counter, ep);
    let mut cur = unsafe { core::ptr::read_volatile(b) };
    for _ in 0..CAS_TRIES {
        let Some(next) = window::decremented(cur, ep) else {
            return;
        };
        match cas(b, cur, next) {
            Ok(()) => return,
            Err(v) => cur = v,
        }
    }
}
