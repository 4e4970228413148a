//! The allow and deny prefix lists: CIDRs an operator trusts (health
//! checkers, an office, a load balancer), whose SYNs pass every cap and
//! rate, and CIDRs refused outright. Both lists live in one longest-prefix
//! trie per address family (`PREFIXES_V4`, `PREFIXES_V6`), so the most
//! specific prefix decides: an allowed /32 inside a denied /16 is allowed.
//! A prefix is on one list at most (the controller refuses the same prefix
//! on both).
//!
//! What each list does, arriving only (the egress program never asks):
//! - `deny`: a SYN from a denied prefix is dropped as
//!   [`crate::Reason::Denied`] before any other map is read; so is any other
//!   segment of a flow with no entry. A connection tracked before its
//!   prefix was denied is left to finish (the controller's `--cut` deletes
//!   such entries, so their next segment is one of a flow with no entry).
//! - `allow`: a SYN from an allowed prefix meets no cap and no rate: it is
//!   tracked without taking a half-open count (so it never uses the
//!   unverified budget), counted as [`crate::Reason::Allowed`]. It still
//!   meets `allowed-ports`, and its handshake is validated like any other.
//!
//! The lookups are made only while a list has entries ([`Config::prefix_lists`]
//! says which), and never for a segment of a tracked connection.
//!
//! [`Config::prefix_lists`]: crate::Config::prefix_lists

use crate::flow::AF_INET;

/// [`PrefixRule::list`] and a bit of [`crate::Config::prefix_lists`]: the
/// allow list.
pub const ALLOW: u32 = 1;
/// Likewise, the deny list.
pub const DENY: u32 = 2;

/// Bytes of an operator's note kept with each prefix.
pub const COMMENT_LEN: usize = 56;

/// The value of a prefix in the tries. The programs read `list` only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixRule {
    /// [`ALLOW`] or [`DENY`].
    pub list: u32,
    /// When it was added (seconds since the Unix epoch, for `list`).
    pub added_s: u32,
    /// The operator's note, UTF-8, zero-padded.
    pub comment: [u8; COMMENT_LEN],
}

const _: () = assert!(core::mem::size_of::<PrefixRule>() == 64);

#[cfg(feature = "user")]
// SAFETY: repr(C), no padding (size asserted above).
unsafe impl aya::Pod for PrefixRule {}

/// Default capacity of each list (`attach --max-prefixes`).
pub const DEFAULT_MAX_PREFIXES: u32 = 65_536;

/// Entries of each family's trie for lists of `max_prefixes` each: both
/// lists may be all of one family.
pub const fn trie_entries(max_prefixes: u32) -> u32 {
    max_prefixes.saturating_mul(2)
}

/// A prefix on a list, as the model and the controller hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Listed {
    pub family: u8,
    /// Network byte order; an IPv4 address in the first four bytes.
    pub addr: [u8; 16],
    pub len: u8,
    /// [`ALLOW`] or [`DENY`].
    pub list: u32,
}

impl Listed {
    /// An IPv4 prefix on `list`.
    pub fn v4(a: [u8; 4], len: u8, list: u32) -> Listed {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&a);
        Listed {
            family: AF_INET,
            addr,
            len,
            list,
        }
    }

    /// Whether `addr` (of `family`) is inside this prefix.
    pub fn covers(&self, family: u8, addr: &[u8; 16]) -> bool {
        if family != self.family {
            return false;
        }
        let bits = self.len as usize;
        let whole = bits / 8;
        if self.addr[..whole] != addr[..whole] {
            return false;
        }
        let rest = bits % 8;
        rest == 0 || {
            let mask = 0xffu8 << (8 - rest);
            self.addr[whole] & mask == addr[whole] & mask
        }
    }
}

/// The list of the longest prefix in `lists` that covers `addr`, as the
/// tries answer; 0 when none does.
pub fn classify(lists: &[Listed], family: u8, addr: &[u8; 16]) -> u32 {
    lists
        .iter()
        .filter(|p| p.covers(family, addr))
        .max_by_key(|p| p.len)
        .map_or(0, |p| p.list)
}

/// The key bytes of `addr` in its family's trie.
#[inline(always)]
pub fn v4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// Whether `family` is IPv4 (its trie is `PREFIXES_V4`).
#[inline(always)]
pub const fn is_v4(family: u8) -> bool {
    family == AF_INET
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::AF_INET6;

    fn at(a: [u8; 4]) -> [u8; 16] {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&a);
        addr
    }

    #[test]
    fn the_most_specific_prefix_decides() {
        let lists = [
            Listed::v4([198, 18, 0, 0], 16, DENY),
            Listed::v4([198, 18, 7, 0], 24, ALLOW),
            Listed::v4([198, 18, 7, 128], 25, DENY),
        ];
        assert_eq!(classify(&lists, AF_INET, &at([198, 18, 1, 1])), DENY);
        assert_eq!(classify(&lists, AF_INET, &at([198, 18, 7, 1])), ALLOW);
        assert_eq!(classify(&lists, AF_INET, &at([198, 18, 7, 200])), DENY);
        assert_eq!(classify(&lists, AF_INET, &at([198, 19, 7, 1])), 0);
        assert_eq!(classify(&lists, AF_INET6, &at([198, 18, 7, 1])), 0);
    }

    #[test]
    fn odd_lengths_and_the_whole_space() {
        let lists = [
            Listed::v4([198, 18, 0, 0], 15, DENY),
            Listed::v4([0; 4], 0, ALLOW),
        ];
        assert_eq!(classify(&lists, AF_INET, &at([198, 19, 255, 1])), DENY);
        assert_eq!(classify(&lists, AF_INET, &at([198, 20, 0, 1])), ALLOW);
        let host = [Listed::v4([198, 18, 0, 9], 32, ALLOW)];
        assert_eq!(classify(&host, AF_INET, &at([198, 18, 0, 9])), ALLOW);
        assert_eq!(classify(&host, AF_INET, &at([198, 18, 0, 8])), 0);
    }
}
