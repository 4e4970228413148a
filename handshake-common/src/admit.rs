//! Admission of a new arriving SYN: the seed's three defences — close the
//! services that are not needed (`allowed-ports`), cap concurrent half-open
//! attempts (per source, per port, global), keep the half-open timeout short
//! — plus a per-source SYN rate, and a share of the global budget kept for
//! sources that completed a handshake recently, so that a spoofed flood
//! filling the budget does not lock out the clients the server already knows.

use crate::config::{Config, Overflow};
use crate::reason::Reason;

/// Half-open attempts in force when a new SYN arrives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Attempts from the SYN's source (address or prefix).
    pub source: u32,
    /// Attempts to the SYN's destination port.
    pub port: u32,
    /// Attempts in all.
    pub global: u32,
}

/// What is known about a new SYN besides the counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynFacts {
    /// Its destination port is open (in `allowed-ports`, or no list is set).
    pub port_allowed: bool,
    /// Its source had a SYN token (or no rate is set).
    pub within_rate: bool,
    /// Its source completed a handshake within `verified-ttl-s`.
    pub verified: bool,
}

/// What to do with a new SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Track it as a half-open attempt and pass it.
    Track,
    /// Pass it without tracking: over the global or per-port cap with
    /// `overflow=pass`, so the kernel's own SYN cookies answer it (counted
    /// as `overflow_pass`).
    PassUntracked,
    /// Answer it with a SYN cookie, untracked: over the global or per-port
    /// cap with `overflow=cookie` (counted as `cookie`).
    Cookie,
    /// Refuse it for this reason.
    Refuse(Reason),
}

/// The part of `max_half_open` an unverified source may use: the rest is
/// kept for verified sources (`verified_reserve_pct`, rounded down).
pub const fn unverified_budget(cfg: &Config) -> u32 {
    let reserve = (cfg.max_half_open as u64 * cfg.verified_reserve_pct as u64 / 100) as u32;
    cfg.max_half_open - reserve
}

/// Decides on a new SYN, cheapest and most specific first: a closed port,
/// then the source's rate, then the source's own cap (that source is the
/// attacker, whatever the other budgets say), then the port's cap, then the
/// global budget. Over the port or global cap, `overflow` decides.
///
/// The kernel program takes the same decision in its two stages,
/// [`by_source`] then [`by_shared`], so that a SYN its source's budget
/// refuses never reads the shared counters, and it looks up whether the
/// source is verified only when [`needs_verified`] says the answer matters.
pub fn admit_syn(cfg: &Config, occ: &Occupancy, f: &SynFacts) -> Admission {
    if !f.port_allowed {
        return Admission::Refuse(Reason::PortClosed);
    }
    if let Some(r) = by_source(cfg, occ.source, f.within_rate) {
        return Admission::Refuse(r);
    }
    by_shared(cfg, occ.port, occ.global, f.verified)
}

/// The source's own budget: its SYN rate, then its half-open cap.
#[inline(always)]
pub fn by_source(cfg: &Config, source: u32, within_rate: bool) -> Option<Reason> {
    if !within_rate {
        return Some(Reason::SynRate);
    }
    if cfg.max_half_open_per_source != 0 && source >= cfg.max_half_open_per_source {
        return Some(Reason::PerSource);
    }
    None
}

/// The budgets shared with other sources: the port's cap, then the global
/// one (with its share kept for verified sources).
#[inline(always)]
pub fn by_shared(cfg: &Config, port: u32, global: u32, verified: bool) -> Admission {
    let over = if cfg.max_half_open_per_port != 0 && port >= cfg.max_half_open_per_port {
        Some(Reason::PerPort)
    } else if cfg.max_half_open != 0 {
        let budget = if verified {
            cfg.max_half_open
        } else {
            unverified_budget(cfg)
        };
        (global >= budget).then_some(Reason::Global)
    } else {
        None
    };
    match (over, cfg.overflow()) {
        (None, _) => Admission::Track,
        (Some(r), Overflow::Drop) => Admission::Refuse(r),
        (Some(_), Overflow::Pass) => Admission::PassUntracked,
        (Some(_), Overflow::Cookie) => Admission::Cookie,
    }
}

/// Whether [`by_shared`]'s answer depends on the source being verified:
/// only when the global count is inside the reserved share (and the port's
/// cap has not decided first).
#[inline(always)]
pub fn needs_verified(cfg: &Config, port: u32, global: u32) -> bool {
    let port_full = cfg.max_half_open_per_port != 0 && port >= cfg.max_half_open_per_port;
    !port_full
        && cfg.max_half_open != 0
        && global >= unverified_budget(cfg)
        && global < cfg.max_half_open
}

/// One source's SYN token bucket. Tokens are kept in billionths, so a
/// refill is `elapsed_ns × rate` with no division.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenBucket {
    /// Tokens × 10⁹.
    pub nano_tokens: u64,
    /// When it was last refilled (monotonic ns).
    pub refilled_ns: u64,
}

const NANO: u64 = 1_000_000_000;

/// Takes a token for a SYN at `now_ns`, refilling `rate` tokens per second
/// up to `burst`. A new (zeroed) bucket starts full. Always true when
/// `rate` is 0 (no limit). Not atomic: SYNs of one source racing on several
/// CPUs may each take the same token, so a source can exceed its rate by
/// at most one SYN per racing CPU.
pub fn take_token(b: &mut TokenBucket, now_ns: u64, rate: u32, burst: u32) -> bool {
    if rate == 0 {
        return true;
    }
    let full = burst.max(1) as u64 * NANO;
    if b.refilled_ns == 0 {
        b.nano_tokens = full;
    } else {
        // Capping the elapsed time keeps `elapsed × rate` far from overflow.
        let elapsed = now_ns
            .saturating_sub(b.refilled_ns)
            .min(full / rate as u64 + 1);
        b.nano_tokens = (b.nano_tokens + elapsed * rate as u64).min(full);
    }
    b.refilled_ns = now_ns;
    if b.nano_tokens >= NANO {
        b.nano_tokens -= NANO;
        true
    } else {
        false
    }
}

/// Whether a source verified at `verified_ns` (0: never) still counts as
/// verified at `now_ns`.
pub const fn still_verified(verified_ns: u64, now_ns: u64, cfg: &Config) -> bool {
    verified_ns != 0 && now_ns.saturating_sub(verified_ns) < cfg.verified_ttl_s as u64 * NANO
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verified_is_looked_up_only_where_it_changes_the_answer() {
        for (max, pct, per_port) in [
            (10, 20, 0),
            (10, 0, 0),
            (0, 20, 0),
            (10, 50, 3),
            (7, 100, 0),
        ] {
            let cfg = Config {
                max_half_open: max,
                verified_reserve_pct: pct,
                max_half_open_per_port: per_port,
                ..Config::DEFAULT
            };
            for port in 0..5 {
                for global in 0..12 {
                    let (yes, no) = (
                        by_shared(&cfg, port, global, true),
                        by_shared(&cfg, port, global, false),
                    );
                    assert_eq!(
                        yes != no,
                        needs_verified(&cfg, port, global),
                        "max {max} reserve {pct}% per-port {per_port}: port {port} global {global}"
                    );
                }
            }
        }
    }

    const OPEN: SynFacts = SynFacts {
        port_allowed: true,
        within_rate: true,
        verified: false,
    };

    fn occ(source: u32, port: u32, global: u32) -> Occupancy {
        Occupancy {
            source,
            port,
            global,
        }
    }

    #[test]
    fn order_and_boundaries() {
        let cfg = Config {
            max_half_open: 10,
            max_half_open_per_source: 3,
            max_half_open_per_port: 5,
            verified_reserve_pct: 0,
            ..Config::DEFAULT
        };
        let closed = SynFacts {
            port_allowed: false,
            within_rate: false,
            ..OPEN
        };
        let fast = SynFacts {
            within_rate: false,
            ..OPEN
        };
        #[rustfmt::skip]
        let table = [
            (occ(0, 0, 0), OPEN, Admission::Track),
            (occ(2, 4, 9), OPEN, Admission::Track),
            (occ(0, 0, 0), closed, Admission::Refuse(Reason::PortClosed)),
            (occ(0, 0, 0), fast, Admission::Refuse(Reason::SynRate)),
            (occ(3, 0, 0), OPEN, Admission::Refuse(Reason::PerSource)),
            (occ(3, 5, 10), OPEN, Admission::Refuse(Reason::PerSource)),
            (occ(2, 5, 0), OPEN, Admission::Refuse(Reason::PerPort)),
            (occ(2, 5, 10), OPEN, Admission::Refuse(Reason::PerPort)),
            (occ(0, 4, 10), OPEN, Admission::Refuse(Reason::Global)),
        ];
        for (o, f, want) in table {
            assert_eq!(admit_syn(&cfg, &o, &f), want, "{o:?} {f:?}");
        }
    }

    #[test]
    fn overflow_pass_applies_to_the_port_and_global_caps_only() {
        let cfg = Config {
            max_half_open: 10,
            max_half_open_per_source: 3,
            max_half_open_per_port: 5,
            verified_reserve_pct: 0,
            overflow: Overflow::Pass as u32,
            ..Config::DEFAULT
        };
        assert_eq!(
            admit_syn(&cfg, &occ(0, 5, 0), &OPEN),
            Admission::PassUntracked
        );
        assert_eq!(
            admit_syn(&cfg, &occ(0, 0, 10), &OPEN),
            Admission::PassUntracked
        );
        assert_eq!(
            admit_syn(&cfg, &occ(3, 0, 0), &OPEN),
            Admission::Refuse(Reason::PerSource)
        );
    }

    #[test]
    fn overflow_cookie_applies_to_the_port_and_global_caps_only() {
        let cfg = Config {
            max_half_open: 10,
            max_half_open_per_source: 3,
            max_half_open_per_port: 5,
            verified_reserve_pct: 0,
            overflow: Overflow::Cookie as u32,
            ..Config::DEFAULT
        };
        assert_eq!(admit_syn(&cfg, &occ(0, 4, 9), &OPEN), Admission::Track);
        assert_eq!(admit_syn(&cfg, &occ(0, 5, 0), &OPEN), Admission::Cookie);
        assert_eq!(admit_syn(&cfg, &occ(0, 0, 10), &OPEN), Admission::Cookie);
        assert_eq!(
            admit_syn(&cfg, &occ(3, 0, 10), &OPEN),
            Admission::Refuse(Reason::PerSource)
        );
    }

    #[test]
    fn verified_sources_keep_the_reserve() {
        let cfg = Config {
            max_half_open: 100,
            max_half_open_per_source: 0,
            verified_reserve_pct: 25,
            ..Config::DEFAULT
        };
        assert_eq!(unverified_budget(&cfg), 75);
        let verified = SynFacts {
            verified: true,
            ..OPEN
        };
        assert_eq!(admit_syn(&cfg, &occ(0, 0, 74), &OPEN), Admission::Track);
        assert_eq!(
            admit_syn(&cfg, &occ(0, 0, 75), &OPEN),
            Admission::Refuse(Reason::Global)
        );
        assert_eq!(admit_syn(&cfg, &occ(0, 0, 75), &verified), Admission::Track);
        assert_eq!(admit_syn(&cfg, &occ(0, 0, 99), &verified), Admission::Track);
        assert_eq!(
            admit_syn(&cfg, &occ(0, 0, 100), &verified),
            Admission::Refuse(Reason::Global)
        );
        // Rounded down: 10 % of 4 reserves nothing.
        let small = Config {
            max_half_open: 4,
            verified_reserve_pct: 10,
            ..cfg
        };
        assert_eq!(unverified_budget(&small), 4);
    }

    #[test]
    fn no_caps_admit_anything() {
        let cfg = Config {
            max_half_open: 0,
            max_half_open_per_source: 0,
            max_half_open_per_port: 0,
            ..Config::DEFAULT
        };
        let o = occ(1 << 30, 1 << 30, 1 << 30);
        assert_eq!(admit_syn(&cfg, &o, &OPEN), Admission::Track);
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn token_bucket_allows_the_burst_then_the_rate() {
        let mut b = TokenBucket::default();
        let t0 = 1_000_000 * MS;
        // A new bucket is full: `burst` SYNs at once, then refused.
        for i in 0..5 {
            assert!(take_token(&mut b, t0, 10, 5), "burst SYN {i}");
        }
        assert!(!take_token(&mut b, t0, 10, 5));
        // 10 per second: one token every 100 ms.
        assert!(!take_token(&mut b, t0 + 99 * MS, 10, 5));
        assert!(take_token(&mut b, t0 + 100 * MS, 10, 5));
        assert!(!take_token(&mut b, t0 + 150 * MS, 10, 5));
        // A long pause refills to the burst, not beyond.
        let later = t0 + 3_600_000 * MS;
        for _ in 0..5 {
            assert!(take_token(&mut b, later, 10, 5));
        }
        assert!(!take_token(&mut b, later, 10, 5));
    }

    #[test]
    fn token_bucket_off_and_extreme_values() {
        let mut b = TokenBucket::default();
        for _ in 0..1000 {
            assert!(take_token(&mut b, 7, 0, 0));
        }
        assert_eq!(b, TokenBucket::default(), "rate 0 leaves the bucket alone");
        let mut b = TokenBucket::default();
        assert!(take_token(&mut b, u64::MAX, u32::MAX, u32::MAX));
        // Burst 0 behaves as 1.
        let mut b = TokenBucket::default();
        assert!(take_token(&mut b, 5 * MS, 1, 0));
        assert!(!take_token(&mut b, 5 * MS, 1, 0));
    }

    #[test]
    fn verification_expires() {
        let cfg = Config {
            verified_ttl_s: 2,
            ..Config::DEFAULT
        };
        assert!(!still_verified(0, 5, &cfg));
        assert!(still_verified(MS, MS + 1_999 * MS, &cfg));
        assert!(!still_verified(MS, MS + 2_000 * MS, &cfg));
    }
}
