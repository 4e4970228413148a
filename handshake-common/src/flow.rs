//! Flow keys and the per-connection record.

use crate::admit::TokenBucket;
use crate::window::WindowCounter;

/// The TCP states of the seed's diagrams, one per side of a connection.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TcpState {
    Closed = 0,
    Listen = 1,
    SynSent = 2,
    SynRcvd = 3,
    Established = 4,
    FinWait1 = 5,
    FinWait2 = 6,
    CloseWait = 7,
    Closing = 8,
    LastAck = 9,
    TimeWait = 10,
}

impl TcpState {
    pub const ALL: [TcpState; 11] = [
        TcpState::Listen,
        TcpState::SynSent,
        TcpState::SynRcvd,
        TcpState::Established,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::CloseWait,
        TcpState::Closing,
        TcpState::LastAck,
        TcpState::TimeWait,
        TcpState::Closed,
    ];

    pub const fn from_u8(v: u8) -> Option<TcpState> {
        Some(match v {
            0 => TcpState::Closed,
            1 => TcpState::Listen,
            2 => TcpState::SynSent,
            3 => TcpState::SynRcvd,
            4 => TcpState::Established,
            5 => TcpState::FinWait1,
            6 => TcpState::FinWait2,
            7 => TcpState::CloseWait,
            8 => TcpState::Closing,
            9 => TcpState::LastAck,
            10 => TcpState::TimeWait,
            _ => return None,
        })
    }

    /// The name as the seed (and `ss`, with `-` for `_`) writes it.
    pub const fn name(self) -> &'static str {
        match self {
            TcpState::Closed => "CLOSED",
            TcpState::Listen => "LISTEN",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRcvd => "SYN_RCVD",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait1 => "FIN_WAIT_1",
            TcpState::FinWait2 => "FIN_WAIT_2",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::Closing => "CLOSING",
            TcpState::LastAck => "LAST_ACK",
            TcpState::TimeWait => "TIME_WAIT",
        }
    }

    pub fn from_name(s: &str) -> Option<TcpState> {
        TcpState::ALL
            .into_iter()
            .find(|st| st.name().eq_ignore_ascii_case(s))
    }
}

/// Address family of a key.
pub const AF_INET: u8 = 4;
pub const AF_INET6: u8 = 6;

/// A connection's 4-tuple, direction-normalised: the (address, port) pair
/// that sorts lower is `lo`, so both directions of a flow find the same entry
/// with one lookup. [`FlowEntry::client_is_lo`] says which end is the client.
///
/// Addresses and ports are in network byte order; an IPv4 address fills the
/// first 4 bytes and the rest is zero.
///
/// Aligned to 8 (the layout is the same): copies and comparisons of the
/// addresses then take two 8-byte moves each in the kernel programs rather
/// than byte loops.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FlowKey {
    pub lo_addr: [u8; 16],
    pub hi_addr: [u8; 16],
    /// Network byte order.
    pub lo_port: u16,
    /// Network byte order.
    pub hi_port: u16,
    /// [`AF_INET`] or [`AF_INET6`].
    pub family: u8,
    pub _pad: [u8; 3],
}

const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);

/// The key of the IPv4 connection maps: [`FlowKey`]'s fields without the
/// room for IPv6 addresses, the family and the padding. 12 bytes against
/// 40, so the kernel hashes and compares a third as much on every lookup,
/// and a slot of the map takes 24 bytes less.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct FlowKeyV4 {
    pub lo_addr: [u8; 4],
    pub hi_addr: [u8; 4],
    /// Network byte order.
    pub lo_port: u16,
    /// Network byte order.
    pub hi_port: u16,
}

const _: () = assert!(core::mem::size_of::<FlowKeyV4>() == 12);

impl FlowKeyV4 {
    /// [`FlowKey::normalise`]'s key for an IPv4 packet, made straight from
    /// its ends (the same order: address, then port), and whether `src`
    /// ended up as `lo`.
    #[inline(always)]
    pub fn normalise(src: &Endpoint, dst: &Endpoint) -> (FlowKeyV4, bool) {
        let word = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
        FlowKeyV4::of(word(&src.addr), src.port, word(&dst.addr), dst.port)
    }

    /// The same from the addresses and ports (network order) themselves.
    #[inline(always)]
    pub fn of(src: [u8; 4], src_port: u16, dst: [u8; 4], dst_port: u16) -> (FlowKeyV4, bool) {
        let order = |a: [u8; 4], port: u16| (u32::from_be_bytes(a), u16::from_be(port));
        let src_is_lo = order(src, src_port) <= order(dst, dst_port);
        let key = if src_is_lo {
            FlowKeyV4 {
                lo_addr: src,
                hi_addr: dst,
                lo_port: src_port,
                hi_port: dst_port,
            }
        } else {
            FlowKeyV4 {
                lo_addr: dst,
                hi_addr: src,
                lo_port: dst_port,
                hi_port: src_port,
            }
        };
        (key, src_is_lo)
    }

    /// The full key this one stands for.
    pub fn widen(&self) -> FlowKey {
        let mut k = FlowKey {
            lo_port: self.lo_port,
            hi_port: self.hi_port,
            family: AF_INET,
            ..FlowKey::default()
        };
        k.lo_addr[..4].copy_from_slice(&self.lo_addr);
        k.hi_addr[..4].copy_from_slice(&self.hi_addr);
        k
    }
}

/// One end of a packet: address and port as on the wire (network order).
/// Aligned to 8, as [`FlowKey`] is.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
}

impl Endpoint {
    /// What normalisation sorts endpoints by: the address's bytes in order,
    /// then the port's number. As words, so that the kernel programs
    /// compare with three loads rather than a byte loop.
    #[inline(always)]
    pub fn order(&self) -> (u64, u64, u16) {
        let (hi, lo) = self.addr.split_at(8);
        (
            u64::from_be_bytes(hi.try_into().unwrap_or([0; 8])),
            u64::from_be_bytes(lo.try_into().unwrap_or([0; 8])),
            u16::from_be(self.port),
        )
    }
}

impl FlowKey {
    /// Builds the normalised key for a packet from `src` to `dst`, and says
    /// whether `src` ended up as `lo`.
    pub fn normalise(family: u8, src: &Endpoint, dst: &Endpoint) -> (FlowKey, bool) {
        let src_is_lo = src.order() <= dst.order();
        let (lo, hi) = if src_is_lo { (src, dst) } else { (dst, src) };
        (
            FlowKey {
                lo_addr: lo.addr,
                hi_addr: hi.addr,
                lo_port: lo.port,
                hi_port: hi.port,
                family,
                _pad: [0, 0, 0],
            },
            src_is_lo,
        )
    }

    /// The IPv4 maps' key for this one (meaningful when `family` is
    /// [`AF_INET`]).
    #[inline(always)]
    pub fn v4(&self) -> FlowKeyV4 {
        let word = |a: &[u8; 16]| [a[0], a[1], a[2], a[3]];
        FlowKeyV4 {
            lo_addr: word(&self.lo_addr),
            hi_addr: word(&self.hi_addr),
            lo_port: self.lo_port,
            hi_port: self.hi_port,
        }
    }

    /// The client's address, given which side is the client.
    #[inline(always)]
    pub const fn client_addr(&self, client_is_lo: u8) -> &[u8; 16] {
        if client_is_lo != 0 {
            &self.lo_addr
        } else {
            &self.hi_addr
        }
    }

    /// The server's port (network order), given which side is the client.
    #[inline(always)]
    pub const fn server_port(&self, client_is_lo: u8) -> u16 {
        if client_is_lo != 0 {
            self.hi_port
        } else {
            self.lo_port
        }
    }

    /// The (client, server) endpoints, given which side is the client.
    pub fn ends(&self, client_is_lo: bool) -> (Endpoint, Endpoint) {
        let lo = Endpoint {
            addr: self.lo_addr,
            port: self.lo_port,
        };
        let hi = Endpoint {
            addr: self.hi_addr,
            port: self.hi_port,
        };
        if client_is_lo { (lo, hi) } else { (hi, lo) }
    }
}

/// Bits of [`FlowEntry::flags`].
pub mod flags {
    /// A segment from the server was seen (its SYN-ACK, or for a flow
    /// picked up mid-way any segment), so [`super::FlowEntry::server`]'s
    /// `end` is known.
    pub const SERVER_SEEN: u16 = 1 << 0;
    /// The client sent a FIN (its sequence number is `client.end - 1`: an
    /// end's `end` stops moving once it has sent its FIN).
    pub const CLIENT_FIN: u16 = 1 << 1;
    /// The server sent a FIN (at `server.end - 1`).
    pub const SERVER_FIN: u16 = 1 << 2;
    /// The client's FIN was acknowledged.
    pub const CLIENT_FIN_ACKED: u16 = 1 << 3;
    /// The server's FIN was acknowledged.
    pub const SERVER_FIN_ACKED: u16 = 1 << 4;
    /// The client sent its FIN before it had the server's (active closer).
    pub const CLIENT_CLOSED_FIRST: u16 = 1 << 5;
    /// The server sent its FIN before it had the client's (active closer).
    pub const SERVER_CLOSED_FIRST: u16 = 1 << 6;
    /// Picked up mid-flow: the handshake was never seen, so the window
    /// scales are not known (assumed the largest, 14: a generous window).
    pub const PICKED_UP: u16 = 1 << 7;
    /// The attempt holds a half-open count (an arriving SYN admitted under
    /// the limits, in bucket `epoch`); only such an entry gives one back.
    /// A SYN this host sends is tracked without a count.
    pub const COUNTED: u16 = 1 << 8;
    /// A segment from the client was seen: `client.end` is known.
    pub const CLIENT_SEEN: u16 = 1 << 9;
    /// The client acknowledged something: `client.ack` and `client.edge`
    /// are known.
    pub const CLIENT_ACKED: u16 = 1 << 10;
    /// The server acknowledged something: `server.ack` and `server.edge`
    /// are known.
    pub const SERVER_ACKED: u16 = 1 << 11;
    /// An arriving FIN from the client waits at `fin_pending` for this
    /// host's acknowledgement.
    pub const CLIENT_FIN_PENDING: u16 = 1 << 12;
    /// Likewise from the server.
    pub const SERVER_FIN_PENDING: u16 = 1 << 13;
    /// The client is the key's `lo` end.
    pub const CLIENT_IS_LO: u16 = 1 << 14;
}

/// What the gate has seen of one end's sequence space, from the segments
/// that end sent (conntrack's `td_end`, `td_maxack`, `td_maxend`,
/// `td_maxwin`). Host byte order. Each field is valid only once the
/// entry's flags say so (`*_SEEN` for `end`, `*_ACKED` for the rest).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SeqState {
    /// The sequence number after the last one this end sent (SYN and FIN
    /// count one): where the peer expects its next segment, the peer's
    /// `RCV.NXT` as far as the gate saw. Frozen once it sent its FIN.
    pub end: u32,
    /// The highest acknowledgement number it sent: what it has received.
    pub ack: u32,
    /// The right edge of the highest window it offered (`ack` plus the
    /// window, scaled): the peer may send up to here.
    pub edge: u32,
    /// The largest window it offered, scaled.
    pub maxwin: u32,
}

/// A window scale that was not offered (in [`FlowEntry::client_wscale`],
/// [`FlowEntry::server_wscale`] during the handshake, and in
/// [`crate::machine::Segment::wscale`]).
pub const NO_WSCALE: u8 = 0xff;

/// Times in a [`FlowEntry`] are the monotonic clock in ticks of 2^20 ns
/// (1.048576 ms), as a `u32`: it wraps every 52 days, and a time is only
/// ever compared with now, within ±26 days ([`since_ns`]).
pub const TICK_SHIFT: u32 = 20;

/// The tick `now_ns` falls in.
#[inline(always)]
pub const fn tick(now_ns: u64) -> u32 {
    (now_ns >> TICK_SHIFT) as u32
}

/// How long before `now_ns` the tick `then` was, in ns (whole ticks;
/// negative when `then` is later).
#[inline(always)]
pub const fn since_ns(now_ns: u64, then: u32) -> i64 {
    ((tick(now_ns).wrapping_sub(then) as i32) as i64) << TICK_SHIFT
}

/// Whether at least `span_ns` went by from the tick `then` to `now_ns`.
#[inline(always)]
pub const fn elapsed(now_ns: u64, then: u32, span_ns: u64) -> bool {
    since_ns(now_ns, then) >= span_ns as i64
}

/// The nibble of [`FlowEntry::wscales`] that says no scale was offered.
const NO_SHIFT: u8 = 0xf;

/// A tracked connection. Used by both the half-open and the established
/// maps. 48 bytes, so that an IPv4 slot (the kernel's 48-byte element
/// header, the 12-byte key rounded to 16, this, and a 16-byte bucket) is
/// 128 bytes: two cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowEntry {
    /// The client's sequence space. In the handshake, `client.end` is
    /// J+1, what the SYN-ACK must acknowledge.
    pub client: SeqState,
    /// The server's; `server.end` is K+1 once [`flags::SERVER_SEEN`],
    /// what the final ACK must acknowledge.
    pub server: SeqState,
    /// When the first packet was seen ([`tick`]s).
    pub created: u32,
    /// When the last packet was seen ([`tick`]s; on the data fast path at
    /// most once a second). A finished connection's TIME_WAIT is timed
    /// from here, so a segment that arrives in it (a retransmitted FIN)
    /// starts it again, as the kernel's does.
    pub last_seen: u32,
    /// Two numbers that are never needed at once: while the entry holds a
    /// half-open count ([`flags::COUNTED`], before the handshake is done),
    /// the bucket epoch it was counted in ([`FlowEntry::epoch`]); once an
    /// arriving FIN waits ([`flags::CLIENT_FIN_PENDING`] or
    /// [`flags::SERVER_FIN_PENDING`]), that FIN's sequence number
    /// ([`FlowEntry::fin_pending`]). A FIN before the final ACK overwrites
    /// the epoch: the count then ages out with its bucket rather than
    /// being given back.
    pub epoch_or_fin: u32,
    /// [`flags`] bits.
    pub flags: u16,
    /// The client's [`TcpState`] in the low four bits, the server's in the
    /// high four.
    pub states: u8,
    /// The client's window shift in the low four bits, the server's in the
    /// high four: what the client offered in its SYN (at most 14) until
    /// the SYN-ACK settles both (0 unless both ends offered one); 15 for
    /// none ([`NO_WSCALE`] as [`FlowEntry::client_wscale`] says it).
    pub wscales: u8,
}

const _: () = assert!(core::mem::size_of::<FlowEntry>() == 48);

impl FlowEntry {
    pub fn client_state(&self) -> TcpState {
        TcpState::from_u8(self.client_state_raw()).unwrap_or(TcpState::Closed)
    }

    pub fn server_state(&self) -> TcpState {
        TcpState::from_u8(self.server_state_raw()).unwrap_or(TcpState::Closed)
    }

    /// The client's state as stored (a [`TcpState`]'s number).
    #[inline(always)]
    pub const fn client_state_raw(&self) -> u8 {
        self.states & 0xf
    }

    /// The server's, likewise.
    #[inline(always)]
    pub const fn server_state_raw(&self) -> u8 {
        self.states >> 4
    }

    #[inline(always)]
    pub fn set_states(&mut self, client: TcpState, server: TcpState) {
        self.states = client as u8 | (server as u8) << 4;
    }

    /// The client's window shift (0 to 14), or [`NO_WSCALE`].
    #[inline(always)]
    pub const fn client_wscale(&self) -> u8 {
        shift_of(self.wscales & 0xf)
    }

    /// The server's, likewise.
    #[inline(always)]
    pub const fn server_wscale(&self) -> u8 {
        shift_of(self.wscales >> 4)
    }

    /// Stores both shifts ([`NO_WSCALE`] for none; above 14 is 14).
    #[inline(always)]
    pub fn set_wscales(&mut self, client: u8, server: u8) {
        self.wscales = nibble_of(client) | nibble_of(server) << 4;
    }

    /// Whether the client is the key's `lo` end.
    #[inline(always)]
    pub const fn client_is_lo(&self) -> bool {
        self.has(flags::CLIENT_IS_LO)
    }

    /// The half-open bucket epoch the attempt was counted in; meaningful
    /// while [`flags::COUNTED`] (see [`FlowEntry::epoch_or_fin`]).
    #[inline(always)]
    pub const fn epoch(&self) -> u32 {
        self.epoch_or_fin
    }

    /// The sequence number of an arriving FIN the receiving kernel has not
    /// acknowledged yet, if [`flags::CLIENT_FIN_PENDING`] or
    /// [`flags::SERVER_FIN_PENDING`]: it moves the teardown once this
    /// host's ACK covers it (the kernel took it: in order, checksum good).
    #[inline(always)]
    pub const fn fin_pending(&self) -> u32 {
        self.epoch_or_fin
    }

    #[inline(always)]
    pub fn set_fin_pending(&mut self, seq: u32) {
        self.epoch_or_fin = seq;
    }

    pub const fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Which end sent a packet whose source is the key's `lo` end when
    /// `src_is_lo`.
    #[inline(always)]
    pub const fn dir_of(&self, src_is_lo: bool) -> crate::machine::Dir {
        if self.client_is_lo() == src_is_lo {
            crate::machine::Dir::FromClient
        } else {
            crate::machine::Dir::FromServer
        }
    }
}

const fn shift_of(nibble: u8) -> u8 {
    if nibble == NO_SHIFT {
        NO_WSCALE
    } else {
        nibble
    }
}

const fn nibble_of(shift: u8) -> u8 {
    if shift == NO_WSCALE {
        NO_SHIFT
    } else if shift > crate::machine::MAX_WSCALE {
        crate::machine::MAX_WSCALE
    } else {
        shift
    }
}

/// Key of the per-source map: the source address masked to the configured
/// prefix (network byte order), its family and the prefix length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct SourceKey {
    pub addr: [u8; 16],
    pub family: u8,
    pub prefix_len: u8,
    pub _pad: [u8; 2],
}

const _: () = assert!(core::mem::size_of::<SourceKey>() == 20);

impl SourceKey {
    /// The key for `addr` aggregated to `prefix_len` bits. Masks two `u64`
    /// halves rather than walking bytes: the kernel programs call this on
    /// every new SYN, and this way it needs next to no stack.
    #[inline(always)]
    pub fn new(family: u8, addr: &[u8; 16], prefix_len: u32) -> SourceKey {
        let width: u32 = if family == AF_INET { 32 } else { 128 };
        let prefix = if prefix_len > width {
            width
        } else {
            prefix_len
        };
        let mut hi_bytes = [0u8; 8];
        let mut lo_bytes = [0u8; 8];
        hi_bytes.copy_from_slice(&addr[..8]);
        lo_bytes.copy_from_slice(&addr[8..]);
        let hi = u64::from_be_bytes(hi_bytes) & high_mask(prefix);
        let lo = u64::from_be_bytes(lo_bytes) & high_mask(prefix.saturating_sub(64));
        let mut masked = [0u8; 16];
        masked[..8].copy_from_slice(&hi.to_be_bytes());
        masked[8..].copy_from_slice(&lo.to_be_bytes());
        SourceKey {
            addr: masked,
            family,
            prefix_len: prefix as u8,
            _pad: [0; 2],
        }
    }
}

/// A `u64` whose top `bits` bits are set (all of them from 64 on).
#[inline(always)]
const fn high_mask(bits: u32) -> u64 {
    if bits >= 64 {
        u64::MAX
    } else if bits == 0 {
        0
    } else {
        u64::MAX << (64 - bits)
    }
}

/// Per-source state: its half-open count and its SYN token bucket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceState {
    pub half_open: WindowCounter,
    pub syn_tokens: TokenBucket,
}

const _: () = assert!(core::mem::size_of::<SourceState>() == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all five): repr(C), integer fields only, padding made explicit
    // and sizes asserted above.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::FlowKeyV4 {}
    unsafe impl aya::Pod for super::FlowEntry {}
    unsafe impl aya::Pod for super::SourceKey {}
    unsafe impl aya::Pod for super::SourceState {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], port: u16) -> Endpoint {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&a);
        Endpoint {
            addr,
            port: port.to_be(),
        }
    }

    #[test]
    fn both_directions_give_the_same_key() {
        let c = v4([198, 18, 0, 2], 40_000);
        let s = v4([198, 18, 0, 1], 80);
        let (k1, c_lo) = FlowKey::normalise(AF_INET, &c, &s);
        let (k2, s_lo) = FlowKey::normalise(AF_INET, &s, &c);
        assert_eq!(k1, k2);
        assert_ne!(c_lo, s_lo);
        assert_eq!(k1.ends(c_lo), (c, s));
        assert_eq!(k1.v4().widen(), k1);
        assert_eq!(k1.v4().lo_addr, [198, 18, 0, 1]);
    }

    #[test]
    fn the_ipv4_key_is_the_full_keys_own() {
        let ends = [
            v4([198, 18, 0, 2], 40_000),
            v4([198, 18, 0, 1], 80),
            v4([198, 18, 0, 1], 256),
            v4([198, 18, 0, 1], 2),
            v4([198, 19, 255, 255], 65_535),
            v4([0, 0, 0, 0], 0),
        ];
        for a in &ends {
            for b in &ends {
                let (wide, a_lo) = FlowKey::normalise(AF_INET, a, b);
                assert_eq!(FlowKeyV4::normalise(a, b), (wide.v4(), a_lo));
            }
        }
    }

    #[test]
    fn ports_compare_as_numbers_not_bytes() {
        // 256 (0x0100) is larger than 2 (0x0002) although its first byte is
        // smaller in little-endian memory.
        let a = v4([198, 18, 0, 1], 256);
        let b = v4([198, 18, 0, 1], 2);
        let (k, a_lo) = FlowKey::normalise(AF_INET, &a, &b);
        assert!(!a_lo);
        assert_eq!(u16::from_be(k.lo_port), 2);
    }

    #[test]
    fn source_keys_aggregate_by_prefix() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[198, 18, 7, 201]);
        let k = SourceKey::new(AF_INET, &a, 24);
        assert_eq!(&k.addr[..4], &[198, 18, 7, 0]);
        let k = SourceKey::new(AF_INET, &a, 20);
        assert_eq!(&k.addr[..4], &[198, 18, 0, 0]);
        let k = SourceKey::new(AF_INET, &a, 99);
        assert_eq!(k.prefix_len, 32);
        assert_eq!(&k.addr[..4], &[198, 18, 7, 201]);

        let v6: [u8; 16] = [
            0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
        ];
        let k = SourceKey::new(AF_INET6, &v6, 64);
        assert_eq!(
            k.addr,
            [0x20, 0x01, 0x0d, 0xb8, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn every_prefix_length_masks_bit_by_bit() {
        let addr: [u8; 16] = core::array::from_fn(|i| 0xA5 ^ (i as u8).wrapping_mul(37));
        for family in [AF_INET, AF_INET6] {
            let width = if family == AF_INET { 32 } else { 128 };
            for prefix in 0..=130u32 {
                let k = SourceKey::new(family, &addr, prefix);
                let p = prefix.min(width);
                for bit in 0..128u32 {
                    let (byte, shift) = ((bit / 8) as usize, 7 - bit % 8);
                    let want = if bit < p {
                        (addr[byte] >> shift) & 1
                    } else {
                        0
                    };
                    assert_eq!(
                        (k.addr[byte] >> shift) & 1,
                        want,
                        "family {family} /{prefix} bit {bit}"
                    );
                }
                assert_eq!(k.prefix_len as u32, p);
            }
        }
    }

    #[test]
    fn state_names_round_trip() {
        for s in TcpState::ALL {
            assert_eq!(TcpState::from_name(s.name()), Some(s));
            assert_eq!(TcpState::from_u8(s as u8), Some(s));
        }
        assert_eq!(TcpState::from_name("syn_rcvd"), Some(TcpState::SynRcvd));
        assert_eq!(TcpState::from_u8(11), None);
    }
}
