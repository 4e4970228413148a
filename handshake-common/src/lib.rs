//! Types shared by the handshake-gate kernel programs and the controller, and
//! the pure functions that decide every verdict.
//!
//! The kernel programs only gather facts from a packet and apply what these
//! functions return, so the whole decision logic is tested on the host with a
//! fake clock (`now_ns` is always an argument, never read here).
//!
//! Byte order: fields that hold wire data (addresses, ports) stay in network
//! byte order and say so; sequence numbers and every other number are in host
//! byte order.
#![no_std]

#[cfg(test)]
extern crate std;

#[cfg(feature = "model")]
extern crate alloc;

pub mod admit;
pub mod config;
pub mod cookie;
pub mod event;
pub mod flood;
pub mod flow;
#[cfg(feature = "model")]
pub mod fuzz;
pub mod known;
pub mod machine;
#[cfg(feature = "model")]
pub mod model;
pub mod parse;
pub mod prefix;
pub mod reason;
pub mod table;
pub mod tally;
pub mod window;

pub use config::{Config, Mode, Overflow, UnknownFlows};
pub use event::DropEvent;
pub use flow::{FlowEntry, FlowKey, FlowKeyV4, SeqState, SourceKey, SourceState, TcpState};
pub use reason::Reason;
pub use window::WindowCounter;

/// Names of the programs and maps in the kernel object; the controller pins
/// each map under its name.
pub mod maps {
    /// The XDP program (arriving packets).
    pub const XDP_PROGRAM: &str = "handshake_in";
    /// The TC classifier on egress (leaving packets).
    pub const TC_PROGRAM: &str = "handshake_out";
    /// Benchmark baselines in the same object (never attached by the
    /// controller): an XDP program that passes, one that drops, and a TC
    /// program that passes, each without looking at the packet.
    pub const NOOP_XDP: &str = "noop_xdp";
    pub const DROP_XDP: &str = "drop_xdp";
    pub const NOOP_TC: &str = "noop_tc";
    /// Counts the connection maps for `status` and the metrics (run, never
    /// attached; see [`crate::tally`]).
    pub const TALLY_PROGRAM: &str = "tally_conns";
    /// One-entry array holding [`crate::Config`].
    pub const CONFIG: &str = "CONFIG";
    /// Per-CPU array of `u64` counts of arriving packets (XDP): slot
    /// [`crate::Reason`] for those passed (a would-be drop in `monitor` mode
    /// among them), slot `Reason + Reason::SLOTS` for those dropped, so each
    /// packet takes one update (see [`crate::Reason::counter_slot`]).
    pub const COUNTERS: &str = "COUNTERS";
    /// Per-CPU array of `u64` counts of leaving packets (TC egress) indexed
    /// by [`crate::Reason`]; the egress program never drops.
    pub const EGRESS: &str = "EGRESS";
    /// LRU hash [`crate::FlowKeyV4`] → [`crate::FlowEntry`] of IPv4
    /// half-open attempts.
    pub const HALF_OPEN_V4: &str = "HALF_OPEN_V4";
    /// LRU hash [`crate::FlowKey`] → [`crate::FlowEntry`] of IPv6 half-open
    /// attempts.
    pub const HALF_OPEN_V6: &str = "HALF_OPEN_V6";
    /// LRU hash [`crate::FlowKeyV4`] → [`crate::FlowEntry`] of IPv4
    /// connections past the handshake (established and closing).
    pub const ESTABLISHED_V4: &str = "ESTABLISHED_V4";
    /// LRU hash [`crate::FlowKey`] → [`crate::FlowEntry`] of IPv6
    /// connections past the handshake.
    pub const ESTABLISHED_V6: &str = "ESTABLISHED_V6";
    /// The half-open table: its IPv4 map, then its IPv6 map. Each family
    /// has a map of its own so that an IPv4 key is 12 bytes, not 40.
    pub const HALF_OPEN: [&str; 2] = [HALF_OPEN_V4, HALF_OPEN_V6];
    /// The established table, likewise.
    pub const ESTABLISHED: [&str; 2] = [ESTABLISHED_V4, ESTABLISHED_V6];
    /// LRU hash [`crate::SourceKey`] → [`crate::SourceState`].
    pub const SOURCES: &str = "SOURCES";
    /// One-entry array holding the global half-open [`crate::WindowCounter`].
    pub const GLOBAL: &str = "GLOBAL";
    /// Array of [`crate::PORT_COUNT`] half-open [`crate::WindowCounter`]s,
    /// one per destination port (host byte order index).
    pub const PORTS: &str = "PORTS";
    /// Array of [`crate::PORT_WORDS`] `u64`s: a bitmap of the ports that take
    /// SYNs when `ports_restricted` is set; port `p` is bit `p % 64` of word
    /// `p / 64`.
    pub const ALLOWED_PORTS: &str = "ALLOWED_PORTS";
    /// LRU hash [`crate::SourceKey`] → `u64`: when each source last completed
    /// a handshake (monotonic ns). Only completed handshakes enter it, so a
    /// spoofed flood cannot push the verified sources out.
    pub const VERIFIED: &str = "VERIFIED";
    /// Array of [`crate::meta::LEN`] `u64`s the controller keeps beside the
    /// maps: the layout version of the pinned maps and what it needs to
    /// replace or remove the egress filter (see [`crate::meta`]). The
    /// programs never read it.
    pub const META: &str = "META";
    /// One-entry array holding the [`crate::tally::Counted`] the last
    /// in-kernel sweep left; the packet programs never read it.
    pub const COUNTED: &str = "COUNTED";
    /// Array of `u64`s: the known-source filter's two halves, one after the
    /// other (see [`crate::known`]); sized by `--max-connections`.
    pub const KNOWN: &str = "KNOWN";
    /// One-entry array holding the filter's [`crate::known::Gen`] word.
    pub const KNOWN_GEN: &str = "KNOWN_GEN";
    /// LPM trie of IPv4 prefixes (`Key<[u8; 4]>`) → [`crate::prefix::PrefixRule`]:
    /// the allow and deny lists' IPv4 prefixes (see [`crate::prefix`]);
    /// sized by `attach --max-prefixes`.
    pub const PREFIXES_V4: &str = "PREFIXES_V4";
    /// Likewise for IPv6 (`Key<[u8; 16]>`).
    pub const PREFIXES_V6: &str = "PREFIXES_V6";
    /// Ring buffer of sampled [`crate::DropEvent`]s (`event-sample`).
    pub const EVENTS: &str = "EVENTS";
    /// aya-log's ring buffer of the programs' log records (defined by
    /// aya-log-ebpf); pinned with the rest, so a daemon reading it keeps
    /// reading across `attach --replace`.
    pub const AYA_LOGS: &str = "AYA_LOGS";
}

/// Slots of the `META` array.
pub mod meta {
    /// [`crate::LAYOUT_VERSION`] of the gate that made the pinned maps.
    pub const LAYOUT: u32 = 0;
    /// The egress filter's priority, where it is a netlink filter (0: a TCX link).
    pub const TC_PRIORITY: u32 = 1;
    /// The egress filter's handle, where it is a netlink filter.
    pub const TC_HANDLE: u32 = 2;
    /// `net.ipv4.tcp_syncookies` as it was before `overflow=cookie` set it,
    /// plus one (0: the controller changed nothing), to restore on detach.
    pub const SAVED_SYNCOOKIES: u32 = 3;
    /// `net.ipv4.tcp_timestamps` likewise.
    pub const SAVED_TIMESTAMPS: u32 = 4;
    /// The XDP program's run priority plus one where it sits in libxdp's
    /// multi-program dispatcher (0: it holds the hook alone, by its link).
    pub const DISPATCHER_PRIORITY: u32 = 5;
    /// How many prefixes the allow list holds, plus the deny list's count
    /// shifted left by 32, kept as the controller writes them (so `status`
    /// and the metrics need not walk the tries).
    pub const LIST_COUNTS: u32 = 6;
    /// Slots in all (room to grow without changing the map's size).
    pub const LEN: u32 = 8;
}

/// The meaning of the pinned maps' contents. `attach --replace` swaps in new
/// programs over the pinned maps only when this matches (and every map's
/// type and key and value sizes do), so bump it whenever a shared type keeps
/// its size but changes its meaning.
pub const LAYOUT_VERSION: u64 = 6;

/// Capacity of each family's half-open map. `max-half-open` may not exceed
/// it, so with a global cap in force the LRU only ever evicts entries that
/// already expired.
pub const HALF_OPEN_CAPACITY: u32 = 65_536;
/// Capacity of the IPv4 established map (connections past the handshake);
/// `attach --max-connections` sizes it anew.
pub const ESTABLISHED_CAPACITY: u32 = 262_144;
/// Capacity of the IPv6 established map: a quarter of the IPv4 one's unless
/// `attach --max-connections-v6` says otherwise.
pub const ESTABLISHED_V6_CAPACITY: u32 = v6_share(ESTABLISHED_CAPACITY);

/// The IPv6 established map's default size for an IPv4 one of `v4`: a
/// quarter, and at least 1,024.
pub const fn v6_share(v4: u32) -> u32 {
    let q = v4 / 4;
    if q < 1024 { 1024 } else { q }
}
/// Capacity of the per-source map; LRU, so the least recently seen sources go first.
pub const SOURCES_CAPACITY: u32 = 65_536;
/// Capacity of the verified-source map; LRU.
pub const VERIFIED_CAPACITY: u32 = 65_536;
/// TCP ports: the per-port counters have one slot for each.
pub const PORT_COUNT: u32 = 65_536;
/// log2 of the bits in each half of the known-source filter for the default
/// capacities (`attach --max-connections` sizes it anew).
pub const KNOWN_LOG2_BITS: u32 = known::log2_bits_for(
    ESTABLISHED_CAPACITY as u64
        + ESTABLISHED_V6_CAPACITY as u64
        + 2 * HALF_OPEN_CAPACITY as u64
        + SOURCES_CAPACITY as u64
        + VERIFIED_CAPACITY as u64,
);
/// Entries (`u64` words) of the known-source filter's map: both halves.
pub const KNOWN_WORDS: u32 = known::map_words(KNOWN_LOG2_BITS);
/// `u64` words of the allowed-ports bitmap.
pub const PORT_WORDS: u32 = PORT_COUNT / 64;
