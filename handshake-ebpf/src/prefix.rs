//! The allow and deny lists' tries (`handshake_common::prefix`): which list,
//! if any, the longest prefix covering an arriving packet's source is on.

use aya_ebpf::maps::lpm_trie::Key;
use handshake_common::Config;
use handshake_common::prefix::{self, DENY};

use crate::{PREFIXES_V4, PREFIXES_V6};

/// The list of `addr`'s longest covering prefix; 0 when none covers it.
#[inline(always)]
pub fn list_of(family: u8, addr: &[u8; 16]) -> u32 {
    let rule = if prefix::is_v4(family) {
        PREFIXES_V4.get(Key::new(32, prefix::v4(addr)))
    } else {
        PREFIXES_V6.get(Key::new(128, *addr))
    };
    rule.map_or(0, |r| r.list)
}

/// Whether an arriving packet from `addr` is on the deny list (looked up
/// only while that list has entries).
#[inline(always)]
pub fn denied(cfg: &Config, family: u8, addr: &[u8; 16]) -> bool {
    cfg.prefix_lists & DENY != 0 && list_of(family, addr) == DENY
}
