//! Counts of the tracked connections by state, as `status` and the metrics
//! show them. The kernel object's `tally_conns` program adds up every entry
//! of both connection maps in the kernel (with `bpf_for_each_map_elem`), so
//! a look at a gate with a million connections copies none of them out; a
//! gate whose pins predate that program is counted by the controller, over
//! the same [`Tally::add`].

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
        let expired = if half_open {
            self.entries[0] += 1;
            x.half_open(e)
        } else {
            self.entries[1] += 1;
            x.finished(e)
        };
        if expired {
            return;
        }
        self.live += 1;
        self.client[state_index(e.client_state)] += 1;
        self.server[state_index(e.server_state)] += 1;
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

/// The packet `tally_conns` is run with: the moment to judge expiry by,
/// in; the counts, out.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TallyPacket {
    pub now_ns: u64,
    pub tally: Tally,
}

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

    fn entry(client: TcpState, server: TcpState, created_ms: u64, changed_ms: u64) -> FlowEntry {
        FlowEntry {
            created_ns: created_ms * MS,
            changed_ns: changed_ms * MS,
            client_state: client as u8,
            server_state: server as u8,
            ..FlowEntry::default()
        }
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
        est[3].server_state = 200;
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
}
