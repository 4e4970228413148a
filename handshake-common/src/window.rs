//! Half-open counts that cannot leak.
//!
//! A half-open attempt is counted in the time bucket it started in. A bucket
//! is a `u64` holding `epoch << 32 | count`; `epoch` is `now / width`, and a
//! bucket counts only while its epoch is one of the last [`BUCKETS`] epochs.
//! The width is chosen so that [`BUCKETS`] − 1 buckets cover the half-open
//! timeout, so an attempt stops counting between `timeout` and
//! `timeout · BUCKETS / (BUCKETS − 1)` after it started, whether or not
//! anything ever sees it again: a spoofed flood's counts return to exactly 0
//! with no sweeper running, and an entry evicted from the LRU map gives its
//! count back when its bucket ages out. A completed handshake or an RST gives
//! its count back at once by decrementing the bucket it was counted in (if
//! that bucket has not been reused since).
//!
//! The kernel updates buckets with compare-and-exchange using
//! [`incremented`] and [`decremented`], so counts are exact across CPUs up to a
//! bounded number of retries (an exhausted retry leaves the count one too high
//! until the bucket ages out; it never underflows). Changing the timeout
//! changes the width, which makes existing buckets look stale: counts restart
//! from 0 at that moment (documented for `set half-open-timeout-ms`).

/// Buckets per counter.
pub const BUCKETS: usize = 8;

/// A windowed count: global (one in the `GLOBAL` array, shared by all CPUs)
/// or per source (in [`crate::SourceState`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowCounter {
    pub buckets: [u64; BUCKETS],
}

const _: () = assert!(core::mem::size_of::<WindowCounter>() == 8 * BUCKETS);

#[cfg(feature = "user")]
// SAFETY: repr(C), only u64 fields.
unsafe impl aya::Pod for WindowCounter {}

/// Width of one bucket, in ns, for a half-open timeout: `BUCKETS - 1` buckets
/// cover at least the timeout. Never 0.
pub const fn bucket_width_ns(timeout_ms: u32) -> u64 {
    let timeout_ns = timeout_ms as u64 * 1_000_000;
    let w = timeout_ns.div_ceil(BUCKETS as u64 - 1);
    if w == 0 { 1 } else { w }
}

/// The epoch `now_ns` falls in (wraps; only differences are compared).
pub const fn epoch(now_ns: u64, width_ns: u64) -> u32 {
    (now_ns / width_ns) as u32
}

/// The bucket index an epoch uses.
pub const fn slot(epoch: u32) -> usize {
    epoch as usize % BUCKETS
}

const fn bucket_epoch(b: u64) -> u32 {
    (b >> 32) as u32
}

const fn bucket_count(b: u64) -> u32 {
    b as u32
}

/// Whether a bucket stamped `bucket_epoch` still counts at `now_epoch`.
pub const fn is_live(bucket_epoch: u32, now_epoch: u32) -> bool {
    now_epoch.wrapping_sub(bucket_epoch) < BUCKETS as u32
}

/// The bucket value after counting one more attempt in `epoch`: a bucket left
/// from an older epoch starts again from 1.
pub const fn incremented(bucket: u64, epoch: u32) -> u64 {
    if bucket_epoch(bucket) == epoch && bucket_count(bucket) != u32::MAX {
        bucket + 1
    } else if bucket_epoch(bucket) == epoch {
        bucket
    } else {
        ((epoch as u64) << 32) | 1
    }
}

/// The bucket value after giving back one attempt counted in `epoch`, or
/// `None` when there is nothing to give back (the bucket has been reused by a
/// later epoch, or is already 0).
pub const fn decremented(bucket: u64, epoch: u32) -> Option<u64> {
    if bucket_epoch(bucket) == epoch && bucket_count(bucket) > 0 {
        Some(bucket - 1)
    } else {
        None
    }
}

impl WindowCounter {
    /// Attempts still counting at `now_epoch`.
    pub fn live(&self, now_epoch: u32) -> u32 {
        let mut sum: u32 = 0;
        let mut i = 0;
        while i < BUCKETS {
            let b = self.buckets[i];
            if bucket_count(b) != 0 && is_live(bucket_epoch(b), now_epoch) {
                sum = sum.saturating_add(bucket_count(b));
            }
            i += 1;
        }
        sum
    }

    /// Host-side (single-threaded) increment, for tests and the reference model.
    pub fn add(&mut self, epoch: u32) {
        let s = slot(epoch);
        self.buckets[s] = incremented(self.buckets[s], epoch);
    }

    /// Host-side (single-threaded) decrement; returns whether anything was given back.
    pub fn sub(&mut self, epoch: u32) -> bool {
        let s = slot(epoch);
        match decremented(self.buckets[s], epoch) {
            Some(v) => {
                self.buckets[s] = v;
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn counts_return_to_zero_after_the_timeout_without_anyone_looking() {
        let timeout_ms = 700;
        let w = bucket_width_ns(timeout_ms);
        assert_eq!(w, 100 * MS);
        let mut c = WindowCounter::default();
        // A flood spread over 350 ms.
        for t in 0..350u64 {
            c.add(epoch(1_000_000 * MS + t * MS, w));
        }
        let start = 1_000_000 * MS;
        assert_eq!(c.live(epoch(start + 350 * MS, w)), 350);
        // Still counted just before the timeout of the last attempt.
        assert!(c.live(epoch(start + 349 * MS + 690 * MS, w)) > 0);
        // Gone, exactly, once timeout + one bucket has passed since the last.
        assert_eq!(c.live(epoch(start + 349 * MS + 800 * MS, w)), 0);
    }

    #[test]
    fn an_attempt_counts_for_at_least_the_timeout() {
        let timeout_ms = 5_000;
        let w = bucket_width_ns(timeout_ms);
        for start_ms in [0u64, 1, 713, 714, 715, 4_999, 123_456] {
            let mut c = WindowCounter::default();
            let t0 = start_ms * MS;
            c.add(epoch(t0, w));
            assert_eq!(
                c.live(epoch(t0 + timeout_ms as u64 * MS - 1, w)),
                1,
                "start {start_ms}"
            );
            let max = timeout_ms as u64 * MS * BUCKETS as u64 / (BUCKETS as u64 - 1) + w;
            assert_eq!(c.live(epoch(t0 + max, w)), 0, "start {start_ms}");
        }
    }

    #[test]
    fn give_back_only_to_the_bucket_it_was_counted_in() {
        let w = bucket_width_ns(700);
        let mut c = WindowCounter::default();
        let e = epoch(0, w);
        c.add(e);
        c.add(e);
        assert!(c.sub(e));
        assert_eq!(c.live(e), 1);
        // A later epoch reusing the same slot: the old attempt cannot be given back.
        let later = e + BUCKETS as u32;
        c.add(later);
        assert!(!c.sub(e));
        assert_eq!(c.live(later), 1);
    }

    #[test]
    fn never_underflows() {
        let mut c = WindowCounter::default();
        assert!(!c.sub(3));
        assert_eq!(decremented(3u64 << 32, 3), None);
        assert_eq!(c.live(3), 0);
    }

    #[test]
    fn saturates_instead_of_wrapping() {
        let full = ((9u64) << 32) | u32::MAX as u64;
        assert_eq!(incremented(full, 9), full);
    }

    #[test]
    fn epochs_wrap_without_resurrecting_counts() {
        let mut c = WindowCounter::default();
        let e = u32::MAX - 1;
        c.add(e);
        assert_eq!(c.live(e.wrapping_add(3)), 1);
        assert_eq!(c.live(e.wrapping_add(BUCKETS as u32)), 0);
    }

    #[test]
    fn tiny_timeouts_still_have_a_width() {
        assert_eq!(bucket_width_ns(0), 1);
        assert!(bucket_width_ns(1) >= 1);
    }
}
