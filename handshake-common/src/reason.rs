//! Why a packet got its verdict. Every packet the XDP program sees is counted
//! under exactly one reason, at its single exit point.

/// Index into the `COUNTERS` (see [`Reason::counter_slot`]) and `EGRESS` per-CPU arrays.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// A TCP packet the gate let through.
    Pass = 0,
    /// Not TCP (ARP, UDP, ICMP, …), or a non-first IP fragment: passed untouched.
    NotTcp = 1,
    /// Truncated or inconsistent headers (IHL < 5, data offset < 5, a header
    /// past the end of the packet).
    Malformed = 2,
    /// SYN over the per-source half-open cap.
    PerSource = 3,
    /// SYN over the per-destination-port half-open cap.
    PerPort = 4,
    /// SYN over the global half-open cap.
    Global = 5,
    /// SYN over the per-source SYN rate (token bucket).
    SynRate = 6,
    /// SYN to a port that is not in `allowed-ports`; or, with
    /// `overflow=cookie`, a SYN over a cap to a port nothing listens on
    /// (the kernel would only answer it with a reset).
    PortClosed = 7,
    /// A packet that claims to complete a tracked handshake with the wrong
    /// acknowledgement number.
    BadAck = 8,
    /// A map update or lookup failed; the packet passed (fail open).
    FailOpen = 9,
    /// A SYN over the global or per-port cap, passed untracked so the
    /// kernel's own SYN cookies answer it (`overflow=pass`).
    OverflowPass = 10,
    /// A flag combination no TCP sends: SYN with FIN or RST, or a segment
    /// that is neither SYN nor RST and carries no ACK (NULL, FIN alone,
    /// XMAS without ACK). Checked before any lookup, so such packets never
    /// move a tracked connection's state.
    BadFlags = 11,
    /// A SYN over the global or per-port cap, answered from XDP with a SYN
    /// cookie (`overflow=cookie`): neither passed nor tracked. In the egress
    /// counts: the cookie SYN-ACKs sent (they leave from XDP, unseen by the
    /// egress program).
    Cookie = 12,
    /// A SYN `overflow=cookie` would answer, but no cookie could be made
    /// (the kernel refused one: `tcp_syncookies` is not 2, or the
    /// listener's accept queue is full; or headers the gate cannot answer
    /// for): passed to the kernel, which decides.
    CookieFail = 13,
    /// A segment other than a SYN of a flow the gate has no entry for,
    /// arriving, for which the kernel has no socket either (`bpf_skc_lookup_tcp`
    /// finds none, or only a listener and the segment carries no valid
    /// SYN cookie): an ACK, FIN, RST or data flood, a scan, a SYN-ACK
    /// reflection. Dropped without creating state (`unknown-flows=verify`).
    NoConn = 14,
    /// An arriving RST or FIN whose sequence numbers lie outside the
    /// connection's window (or, for an RST in the handshake, that the kernel
    /// would not accept): the kernel would ignore it, and the record is
    /// left as it was.
    BadSeq = 15,
    /// An arriving RST inside the window but not at the expected number,
    /// or a SYN on a live connection (RFC 5961): passed, the record
    /// unchanged; the kernel answers with a challenge ACK.
    Challenge = 16,
    /// An arriving data or ACK segment outside the connection's window:
    /// passed without moving the record (the kernel drops it itself and
    /// answers with a duplicate ACK).
    OutOfWindow = 17,
    /// An arriving ACK with no entry that completes a SYN-cookie handshake
    /// (`bpf_tcp_check_syncookie`: the gate's own cookies with
    /// `overflow=cookie`, or the kernel's): passed, tracked ESTABLISHED, and
    /// its source verified.
    CookieAck = 18,
    /// An arriving RST whose TCP checksum is wrong: the kernel discards it
    /// before TCP looks at it, so it moves nothing.
    BadChecksum = 19,
    /// An arriving SYN from a prefix on the deny list, or any other
    /// arriving segment of a flow with no entry from one: dropped before
    /// any other map is read.
    Denied = 20,
    /// An arriving SYN from a prefix on the allow list: tracked past every
    /// cap and rate, taking no half-open count.
    Allowed = 21,
}

impl Reason {
    /// Number of reasons: the length of the counter arrays.
    pub const COUNT: u32 = 22;

    /// Slots of the counter arrays: more than [`Reason::COUNT`], so a new
    /// reason does not change the maps' layout (`attach --replace` keeps
    /// the counters across versions).
    pub const SLOTS: u32 = 32;

    /// Every reason, in index order.
    pub const ALL: [Reason; Self::COUNT as usize] = [
        Reason::Pass,
        Reason::NotTcp,
        Reason::Malformed,
        Reason::PerSource,
        Reason::PerPort,
        Reason::Global,
        Reason::SynRate,
        Reason::PortClosed,
        Reason::BadAck,
        Reason::FailOpen,
        Reason::OverflowPass,
        Reason::BadFlags,
        Reason::Cookie,
        Reason::CookieFail,
        Reason::NoConn,
        Reason::BadSeq,
        Reason::Challenge,
        Reason::OutOfWindow,
        Reason::CookieAck,
        Reason::BadChecksum,
        Reason::Denied,
        Reason::Allowed,
    ];

    /// The `COUNTERS` slot of an arriving packet with this reason: the
    /// reason's index if it passed, plus [`Reason::SLOTS`] if it was dropped.
    pub const fn counter_slot(self, dropped: bool) -> u32 {
        self as u32 + if dropped { Self::SLOTS } else { 0 }
    }

    /// The reason with this index, if there is one.
    pub const fn from_u32(v: u32) -> Option<Reason> {
        if v < Self::COUNT {
            Some(Self::ALL[v as usize])
        } else {
            None
        }
    }

    /// Whether a packet with this reason is dropped in `enforce` mode (a
    /// `cookie` SYN is answered instead, and does not pass either).
    pub const fn is_drop(self) -> bool {
        !matches!(
            self,
            Reason::Pass
                | Reason::NotTcp
                | Reason::FailOpen
                | Reason::OverflowPass
                | Reason::Cookie
                | Reason::CookieFail
                | Reason::Challenge
                | Reason::OutOfWindow
                | Reason::CookieAck
                | Reason::Allowed
        )
    }

    /// Stable snake_case name, used in `status --json` and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::Pass => "pass",
            Reason::NotTcp => "not_tcp",
            Reason::Malformed => "malformed",
            Reason::PerSource => "per_source",
            Reason::PerPort => "per_port",
            Reason::Global => "global",
            Reason::SynRate => "syn_rate",
            Reason::PortClosed => "port_closed",
            Reason::BadAck => "bad_ack",
            Reason::FailOpen => "fail_open",
            Reason::OverflowPass => "overflow_pass",
            Reason::BadFlags => "bad_flags",
            Reason::Cookie => "cookie",
            Reason::CookieFail => "cookie_fail",
            Reason::NoConn => "no_conn",
            Reason::BadSeq => "bad_seq",
            Reason::Challenge => "challenge",
            Reason::OutOfWindow => "out_of_window",
            Reason::CookieAck => "cookie_ack",
            Reason::BadChecksum => "bad_checksum",
            Reason::Denied => "denied",
            Reason::Allowed => "allowed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{} out of place", r.name());
        }
    }

    #[test]
    fn from_u32_inverts_the_index() {
        for r in Reason::ALL {
            assert_eq!(Reason::from_u32(r as u32), Some(r));
        }
        assert_eq!(Reason::from_u32(Reason::COUNT), None);
    }

    #[test]
    fn only_admissions_and_fail_open_pass() {
        let passing: std::vec::Vec<_> = Reason::ALL
            .iter()
            .filter(|r| !r.is_drop())
            .map(|r| r.name())
            .collect();
        assert_eq!(
            passing,
            [
                "pass",
                "not_tcp",
                "fail_open",
                "overflow_pass",
                "cookie",
                "cookie_fail",
                "challenge",
                "out_of_window",
                "cookie_ack",
                "allowed"
            ]
        );
    }
}
