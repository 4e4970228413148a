//! Connection tracking against the maps: finds the flow's entry, runs the
//! pure state machine, stores what it returns and keeps the half-open counts.

use core::intrinsics::{AtomicOrdering, atomic_cxchg};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_coarse_ns};
use handshake_common::{
    Config, FlowKey, Reason, SourceKey, SourceState, WindowCounter,
    admit::{self, Admission},
    flow::flags,
    machine::{self, Lookup, Step, Untracked},
    window,
};

pub use handshake_common::machine::Side;

use crate::parse::Facts;
use crate::{ALLOWED_PORTS, ESTABLISHED, GLOBAL, HALF_OPEN, PORTS, SOURCES, VERIFIED};

/// Compare-and-exchange attempts on a contended bucket before giving up (a
/// lost increment is an undercount until the bucket ages out; a lost
/// decrement an overcount, likewise).
const CAS_TRIES: usize = 4;

/// A TCP packet crossing the protected interface, in either direction.
///
/// Each stage below is its own BPF function (`inline(never)`): the verifier
/// adds up the stack frames of nested calls only, so siblings keep the
/// combined stack under the 512-byte limit.
///
/// `ask` is how the kernel is asked about an arriving segment of a flow
/// with no entry (`unknown-flows=verify`): a socket lookup from XDP.
#[inline(always)]
pub fn track(
    f: &mut Facts,
    cfg: &Config,
    side: Side,
    ask: impl FnOnce(&mut Facts) -> Lookup,
) -> Reason {
    match tracked(f, cfg, side) {
        Some(r) => r,
        None => untracked(f, cfg, side, ask),
    }
}

/// The verdict from the flow's entry, if it has one (`None` also when the
/// packet opens a new connection on a finished tuple).
#[inline(never)]
fn tracked(f: &mut Facts, cfg: &Config, side: Side) -> Option<Reason> {
    if let Err(r) = machine::check(u16::from_be(f.src.port), u16::from_be(f.dst.port), &f.seg) {
        return Some(r);
    }
    // The coarse clock (CLOCK_MONOTONIC_COARSE: the same clock as the
    // controller's, behind it by at most a tick): every timeout here is
    // milliseconds or more, and the fine clock's TSC read was a tenth of
    // an established packet's cost.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let src_is_lo;
    (f.key, src_is_lo) = FlowKey::normalise(f.family, &f.src, &f.dst);
    f.src_is_lo = src_is_lo as u8;
    f.now_ns = now;
    f.seg.side = side;
    if let Some(r) = established(f, cfg) {
        return Some(r);
    }
    half_open(f, cfg)
}

/// A packet of a flow with no entry: a new SYN, or (arriving, with
/// `unknown-flows=verify`) whatever the kernel says it is.
#[inline(always)]
fn untracked(
    f: &mut Facts,
    cfg: &Config,
    side: Side,
    ask: impl FnOnce(&mut Facts) -> Lookup,
) -> Reason {
    let mut u = machine::untracked(&f.seg);
    if machine::needs_lookup(u, side, cfg.unknown_flows()) {
        let lookup = ask(f);
        u = machine::verified(u, &f.seg, lookup);
    }
    let (src_is_lo, now) = (f.src_is_lo != 0, f.now_ns);
    let (f, key) = (&*f, &f.key);
    match u {
        Untracked::Open if side == Side::Ingress => new_syn(f, key, src_is_lo, cfg, now),
        Untracked::Open => outbound_syn(f, key, src_is_lo, now),
        Untracked::Ignore => Reason::Pass,
        Untracked::NoConn => Reason::NoConn,
        Untracked::PickUp => pick_up(f, cfg, false),
        Untracked::CookieAck => pick_up(f, cfg, true),
    }
}

/// A packet of a connection past its handshake; `None` when there is none
/// (or it just ended and the packet opens a new one).
#[inline(never)]
fn established(f: &Facts, cfg: &Config) -> Option<Reason> {
    let (key, src_is_lo, now) = (&f.key, f.src_is_lo != 0, f.now_ns);
    let p = ESTABLISHED.get_ptr_mut(key)?;
    let e = unsafe { &mut *p };
    if machine::finished_expired(e, now, cfg) {
        let _ = ESTABLISHED.remove(key);
        return None;
    }
    let dir = e.dir_of(src_is_lo);
    match machine::step(e, dir, &f.seg, now) {
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
fn half_open(f: &Facts, cfg: &Config) -> Option<Reason> {
    let (key, src_is_lo, now) = (&f.key, f.src_is_lo != 0, f.now_ns);
    let p = HALF_OPEN.get_ptr_mut(key)?;
    let e = unsafe { &mut *p };
    let (client_is_lo, epoch) = (e.client_is_lo, e.epoch);
    let epoch = if e.has(flags::COUNTED) {
        Some(epoch)
    } else {
        None
    };
    if machine::half_open_expired(e, now, cfg) {
        forget(key, client_is_lo, epoch, cfg);
        return None;
    }
    let dir = e.dir_of(src_is_lo);
    Some(match machine::step(e, dir, &f.seg, now) {
        Step::Update => Reason::Pass,
        Step::Promote => {
            let stored = ESTABLISHED.insert(key, e, 0);
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

/// Picks up a flow with no entry as ESTABLISHED: one the kernel has a
/// socket for (or, loosely, any flow) from its first segment, or a cookie
/// handshake's final ACK, whose sender is the client and is then verified.
#[inline(never)]
fn pick_up(f: &Facts, cfg: &Config, cookie: bool) -> Reason {
    let (key, src_is_lo, now) = (&f.key, f.src_is_lo != 0, f.now_ns);
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
    machine::first_segment(&mut n, src_is_lo, &f.seg, now);
    if ESTABLISHED.insert(key, &n, 0).is_err() {
        return Reason::FailOpen;
    }
    if cookie {
        verify(key, n.client_is_lo, cfg, now);
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
    let found = match unsafe { ESTABLISHED.get(key) } {
        Some(e) => Some(e),
        None => unsafe { HALF_OPEN.get(key) },
    };
    match found {
        Some(e) => (e.client_state, e.server_state),
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
/// its SYNs is let through, so a refused spoofed flood leaves the
/// per-source map alone.
#[inline(never)]
fn new_syn(f: &Facts, key: &FlowKey, src_is_lo: bool, cfg: &Config, now: u64) -> Reason {
    let port = u16::from_be(f.dst.port) as u32;
    if !port_allowed(cfg, port) {
        return Reason::PortClosed;
    }
    let width = window::bucket_width_ns(cfg.half_open_timeout_ms);
    let ep = window::epoch(now, width);
    let skey = cfg.source_key(f.family, &f.src.addr);
    let known = SOURCES.get_ptr_mut(&skey);
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
    let verified = admit::needs_verified(cfg, port_live, global_live)
        && unsafe { VERIFIED.get(&skey) }.is_some_and(|t| admit::still_verified(*t, now, cfg));
    let admission = admit::by_shared(cfg, port_live, global_live, verified);
    if let Admission::Refuse(r) = admission {
        return r;
    }
    let src = match known {
        Some(p) => p,
        None => match new_source(&skey, cfg, now) {
            Some(p) => p,
            None => return Reason::FailOpen,
        },
    };
    match admission {
        Admission::Refuse(r) => r,
        Admission::PassUntracked => Reason::OverflowPass,
        Admission::Cookie => Reason::Cookie,
        Admission::Track => {
            let e = machine::open(&f.seg, src_is_lo, now, ep, true);
            if HALF_OPEN.insert(key, &e, BPF_NOEXIST as u64).is_ok() {
                add(unsafe { &raw mut (*src).half_open }, ep);
                add(port_count, ep);
                add(global, ep);
            }
            // Not stored means another CPU stored this very SYN first.
            Reason::Pass
        }
    }
}

/// The entry of a source whose first SYN is let through, with that SYN's
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
fn outbound_syn(f: &Facts, key: &FlowKey, src_is_lo: bool, now: u64) -> Reason {
    let e = machine::open(&f.seg, src_is_lo, now, 0, false);
    // Not stored: another CPU stored this very SYN first, or the map is full
    // of half-open attempts (the LRU evicts one, so that is rare).
    let _ = HALF_OPEN.insert(key, &e, BPF_NOEXIST as u64);
    Reason::Pass
}

/// Deletes a half-open entry and gives back its count, if it holds one
/// (`epoch`: the bucket it was counted in). Only the CPU whose delete
/// succeeds gives it back, so racing deletes count once. A function of its
/// own, so its source key does not sit on its callers' stack frames.
#[inline(never)]
fn forget(key: &FlowKey, client_is_lo: u8, epoch: Option<u32>, cfg: &Config) {
    if HALF_OPEN.remove(key).is_err() {
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
