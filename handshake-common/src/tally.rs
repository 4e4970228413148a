//! Counts of the tracked connections by state, as `status` and the metrics
//! show them. The kernel object's `tally_conns` program adds up every entry
//! of both connection maps in the kernel (with `bpf_for_each_map_elem`), so
//! a look at a gate with a million connections copies none of them out; a
//! gate whose pins predate that program is counted by the controller, over
//! the same [`Tally::add`].
//!
//! Run with `sweep` set (by the daemon's sweeper), the same walk deletes
//! the expired entries it meets and leaves its count in the `COUNTED` map as
//! a [`Counted`]: a count the daemon vouches for until its next sweep, so
//! `status` and a metrics scrape of a large table need not walk it again.

use crate::flow::{FlowEntry, TcpState};
use crate::machine::Expiry;

/// How many [`TcpState`]s there are (their discriminants are `0..STATES`).
pub const STATES: usize = TcpState::ALL.len();

/// Entries counted at one moment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Live connections by the client's state (index: the state's value).
    pub client: [u64; STATES],
    /// Live connections by the server's state.
    pub server: [u64; STATES],
    /// Live connections: entries that have not expired.
    pub live: u64,
    /// Entries in each map, (half-open, established), expired ones not yet
    /// swept or replaced included: what fills the map.
    pub entries: [u64; 2],
}

impl Tally {
    /// Counts one entry of the half-open map (`half_open`) or the
    /// established map, judged by `x`.
    #[inline(always)]
    pub fn add(&mut self, e: &FlowEntry, half_open: bool, x: &Expiry) {
        self.entries[!half_open as usize] += 1;
        if !x.expired(e, half_open) {
            self.add_live(e);
        }
    }

    /// What a sweeping walk does with one entry: deletes it if it has
    /// expired (with `delete`, which says whether it went: a packet's
    /// update may win the race) or counts it as [`Tally::add`] does.
    /// Whether it was deleted.
    #[inline(always)]
    pub fn sweep(
        &mut self,
        e: &FlowEntry,
        half_open: bool,
        x: &Expiry,
        delete: impl FnOnce() -> bool,
    ) -> bool {
        let expired = x.expired(e, half_open);
        if expired && delete() {
            return true;
        }
        self.entries[!half_open as usize] += 1;
        if !expired {
            self.add_live(e);
        }
        false
    }

    /// Counts one live entry by its states (not in [`Tally::entries`]).
    #[inline(always)]
    pub fn add_live(&mut self, e: &FlowEntry) {
        self.live += 1;
        self.client[state_index(e.client_state_raw())] += 1;
        self.server[state_index(e.server_state_raw())] += 1;
    }
}

/// Where a stored state is counted: its own slot, or CLOSED's for a value
/// no state has (as [`FlowEntry::client_state`] reads it).
#[inline(always)]
const fn state_index(v: u8) -> usize {
    if (v as usize) < STATES {
        v as usize
    } else {
        TcpState::Closed as usize
    }
}

/// The packet `tally_conns` is run with: the moment to judge expiry by and
/// whether to sweep, in; the counts (and what was swept), out. The fields
/// after `tally` came later: a counting program pinned by an older version
/// leaves them as they went in, so `sweep_done` stays 0 and the caller
/// knows nothing was swept.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TallyPacket {
    pub now_ns: u64,
    pub tally: Tally,
    /// In: non-zero to delete the expired entries met (they are then in
    /// neither `tally.entries` nor the maps) and keep the count.
    pub sweep: u64,
    /// In, with `sweep`: how long the kept count is vouched for, ns (0: do
    /// not keep it).
    pub keep_ns: u64,
    /// Out: entries deleted from each map, (half-open, established).
    pub swept: [u64; 2],
    /// Out: 1 when the program swept as asked.
    pub sweep_done: u64,
    /// In: non-zero to rebuild the known-source filter ([`crate::known`])
    /// in the same walk.
    pub rebuild: u64,
    /// Out: 1 when it was rebuilt; 0 when it was not (no filter, another
    /// rebuild running, or a program from before the filter).
    pub rebuilt: u64,
}

/// The count the last sweep left in the `COUNTED` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counted {
    /// When it was counted (monotonic ns); 0: never.
    pub taken_ns: u64,
    /// Until when the sweeper vouches for it: its next sweep is due before.
    pub until_ns: u64,
    pub tally: Tally,
}

impl Counted {
    /// Whether it may stand for a count at `now_ns`.
    pub fn current(&self, now_ns: u64) -> bool {
        self.taken_ns != 0 && self.taken_ns <= now_ns && now_ns < self.until_ns
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), `u64`s only (no padding).
unsafe impl aya::Pod for Counted {}

const _: () = {
    let mut i = 0;
    while i < STATES {
        assert!((TcpState::ALL[i] as usize) < STATES);
        i += 1;
    }
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use crate::machine::{finished_expired, half_open_expired};

    const MS: u64 = 1_000_000;

    fn entry(client: TcpState, server: TcpState, created_ms: u64, seen_ms: u64) -> FlowEntry {
        let mut e = FlowEntry {
            created: crate::flow::tick(created_ms * MS),
            last_seen: crate::flow::tick(seen_ms * MS),
            ..FlowEntry::default()
        };
        e.set_states(client, server);
        e
    }

    #[test]
    fn counts_live_entries_by_state_and_every_entry_by_map() {
        let cfg = Config::default();
        let now = 100_000 * MS;
        let x = Expiry::of(&cfg, now);
        let mut t = Tally::default();
        let half = [
            entry(TcpState::SynSent, TcpState::Listen, 99_999, 99_999),
            // Older than any half-open timeout: expired, still stored.
            entry(TcpState::SynSent, TcpState::Listen, 0, 0),
        ];
        let est = [
            entry(TcpState::Established, TcpState::Established, 0, 0),
            entry(TcpState::TimeWait, TcpState::Closed, 0, 99_999),
            // Finished long ago: expired.
            entry(TcpState::TimeWait, TcpState::Closed, 0, 0),
            // A value no state has counts as CLOSED, as it reads.
            entry(TcpState::Established, TcpState::Established, 0, 0),
        ];
        let mut est = est;
        est[3].states |= 0xf0;
        for e in &half {
            t.add(e, true, &x);
        }
        for e in &est {
            t.add(e, false, &x);
        }
        assert_eq!(t.entries, [2, 4]);
        let live_half = half
            .iter()
            .filter(|e| !half_open_expired(e, now, &cfg))
            .count();
        let live_est = est
            .iter()
            .filter(|e| !finished_expired(e, now, &cfg))
            .count();
        assert_eq!(t.live as usize, live_half + live_est);
        assert_eq!(t.live, 4);
        let c = |s: TcpState| t.client[s as usize];
        let s = |st: TcpState| t.server[st as usize];
        assert_eq!(c(TcpState::SynSent), 1);
        assert_eq!(c(TcpState::Established), 2);
        assert_eq!(c(TcpState::TimeWait), 1);
        assert_eq!(s(TcpState::Listen), 1);
        assert_eq!(s(TcpState::Established), 1);
        assert_eq!(s(TcpState::Closed), 2);
        assert_eq!(t.client.iter().sum::<u64>(), t.live);
        assert_eq!(t.server.iter().sum::<u64>(), t.live);
    }

    #[test]
    fn a_sweep_deletes_the_expired_and_counts_the_rest_as_add_does() {
        let cfg = Config::default();
        let now = 100_000 * MS;
        let x = Expiry::of(&cfg, now);
        let fresh = entry(TcpState::SynSent, TcpState::Listen, 99_999, 99_999);
        let stale = entry(TcpState::SynSent, TcpState::Listen, 0, 0);
        let done = entry(TcpState::TimeWait, TcpState::Closed, 0, 0);
        let live = entry(TcpState::Established, TcpState::Established, 0, 0);
        let all = [(fresh, true), (stale, true), (done, false), (live, false)];
        let (mut swept, mut added, mut refused) =
            (Tally::default(), Tally::default(), Tally::default());
        let mut deleted = 0;
        for (e, half_open) in &all {
            let mut asked = false;
            if swept.sweep(e, *half_open, &x, || {
                asked = true;
                true
            }) {
                deleted += 1;
            }
            assert_eq!(asked, x.expired(e, *half_open), "{e:?}");
            added.add(e, *half_open, &x);
            // A delete that fails (a packet won the race) leaves it counted.
            assert!(!refused.sweep(e, *half_open, &x, || false));
        }
        assert_eq!(deleted, 2);
        assert_eq!(refused, added);
        assert_eq!(swept.entries, [1, 1], "the deleted are no longer entries");
        assert_eq!(
            (swept.live, swept.client, swept.server),
            (added.live, added.client, added.server)
        );
    }
}
