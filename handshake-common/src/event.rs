//! Sampled drop events: what the XDP program writes to the `EVENTS` ring
//! buffer for one in `event-sample` dropped packets, so an operator sees who
//! is flooding (`handshake-gate events`).

use crate::flow::TcpState;

/// One dropped (or, in `monitor` mode, would-be dropped) arriving packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropEvent {
    /// When it arrived (monotonic ns, `bpf_ktime_get_ns`).
    pub time_ns: u64,
    /// Source address (network byte order; IPv4 in the first 4 bytes).
    pub src_addr: [u8; 16],
    /// Destination address (network byte order).
    pub dst_addr: [u8; 16],
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    /// A [`crate::Reason`].
    pub reason: u8,
    /// [`crate::flow::AF_INET`], [`crate::flow::AF_INET6`], or 0 when the
    /// headers could not be read (`malformed`): then addresses and ports are 0.
    pub family: u8,
    /// The TCP flag byte (0 when `family` is 0).
    pub tcp_flags: u8,
    /// The tracked connection's client state, or [`DropEvent::NO_STATE`]
    /// when the packet belongs to no tracked connection (a refused SYN).
    pub client_state: u8,
    /// The tracked connection's server state, or [`DropEvent::NO_STATE`].
    pub server_state: u8,
    /// 1 when the packet was actually dropped (enforce), 0 in monitor mode.
    pub dropped: u8,
    pub _pad: [u8; 2],
    /// Bytes of the frame in `frame` (its first [`FRAME_BYTES`] at most).
    pub captured: u16,
    /// The frame's length on the wire (its linear part, as XDP sees it).
    pub wire_len: u16,
    /// The frame from its Ethernet header on: what `events --pcap` writes.
    pub frame: [u8; FRAME_BYTES],
}

/// Bytes of each dropped frame an event carries: every header the gate
/// reads (Ethernet, two VLAN tags, IPv6 with extension headers, TCP with
/// options) fits.
pub const FRAME_BYTES: usize = 128;

const _: () = assert!(core::mem::size_of::<DropEvent>() == 56 + FRAME_BYTES);

impl DropEvent {
    /// A state slot holding no state.
    pub const NO_STATE: u8 = 0xff;

    pub fn client_state(&self) -> Option<TcpState> {
        TcpState::from_u8(self.client_state)
    }

    pub fn server_state(&self) -> Option<TcpState> {
        TcpState::from_u8(self.server_state)
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), integer fields only, padding explicit, size asserted.
unsafe impl aya::Pod for DropEvent {}
