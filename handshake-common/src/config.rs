//! The live configuration: one entry of the `CONFIG` array map, written by the
//! controller and read by the kernel programs on every packet.

/// What the gate does with a packet whose reason is a drop.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Pass everything and track nothing.
    Off = 0,
    /// Track and count would-be drops, but pass every packet.
    Monitor = 1,
    /// Drop what the limits and the state machine reject.
    Enforce = 2,
}

impl Mode {
    pub const fn from_u32(v: u32) -> Mode {
        match v {
            1 => Mode::Monitor,
            2 => Mode::Enforce,
            _ => Mode::Off,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Monitor => "monitor",
            Mode::Enforce => "enforce",
        }
    }
}

/// What happens to a SYN that would exceed the global or the per-port
/// half-open cap (a source over its own cap is always refused).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// Drop it (counted as `global` or `per_port`).
    Drop = 0,
    /// Pass it untracked, so the kernel's own SYN cookies answer it
    /// (counted as `overflow_pass`).
    Pass = 1,
    /// Answer it from XDP with a SYN-ACK carrying a SYN cookie the local
    /// kernel accepts, keeping no state; the kernel never sees the SYN
    /// (counted as `cookie`).
    Cookie = 2,
}

impl Overflow {
    pub const fn from_u32(v: u32) -> Overflow {
        match v {
            1 => Overflow::Pass,
            2 => Overflow::Cookie,
            _ => Overflow::Drop,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Overflow::Drop => "drop",
            Overflow::Pass => "pass",
            Overflow::Cookie => "cookie",
        }
    }
}

/// What happens to an arriving segment (not a SYN) of a flow the gate has
/// no entry for.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownFlows {
    /// Ask the kernel: a socket for the exact 4-tuple makes it real
    /// (picked up), a listener and a valid SYN cookie makes it a cookie
    /// handshake's final ACK (picked up, source verified); anything else is
    /// dropped as `no_conn`, with no state kept. Right for a gate on the
    /// host that owns the sockets.
    Verify = 0,
    /// Pick every such flow up as ESTABLISHED, never dropping it: for a
    /// gate in front of sockets in another namespace (a bridge to
    /// containers), where no lookup can find them.
    PickUp = 1,
}

impl UnknownFlows {
    pub const fn from_u32(v: u32) -> UnknownFlows {
        match v {
            1 => UnknownFlows::PickUp,
            _ => UnknownFlows::Verify,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            UnknownFlows::Verify => "verify",
            UnknownFlows::PickUp => "pick-up",
        }
    }
}

/// The limits. A cap of 0 means "no cap". All fields are host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// A [`Mode`].
    pub mode: u32,
    /// An [`Overflow`].
    pub overflow: u32,
    /// Global cap on half-open attempts (0: none).
    pub max_half_open: u32,
    /// Cap on half-open attempts per source address or prefix (0: none).
    pub max_half_open_per_source: u32,
    /// Cap on half-open attempts per destination port (0: none).
    pub max_half_open_per_port: u32,
    /// IPv4 sources are aggregated by this prefix length (32: per address).
    pub source_prefix_v4: u32,
    /// IPv6 sources are aggregated by this prefix length (128: per address).
    pub source_prefix_v6: u32,
    /// SYNs per second each source may send (token bucket refill; 0: no limit).
    pub syn_rate_per_source: u32,
    /// Token bucket depth for `syn_rate_per_source`.
    pub syn_burst: u32,
    /// Share of `max_half_open` (percent) kept for recently verified sources.
    pub verified_reserve_pct: u32,
    /// A source that completed a handshake counts as verified for this long.
    pub verified_ttl_s: u32,
    /// 1: only ports in the `ALLOWED_PORTS` bitmap take SYNs; 0: every port.
    pub ports_restricted: u32,
    /// A half-open attempt with no final ACK after this long is forgotten.
    pub half_open_timeout_ms: u32,
    /// Maximum segment lifetime; TIME_WAIT lasts twice this.
    pub msl_ms: u32,
    /// One in this many dropped arriving packets is reported as a
    /// [`crate::DropEvent`] (0: none).
    pub event_sample: u32,
    /// 1: with `overflow=cookie`, the controller sets
    /// `net.ipv4.tcp_timestamps=2` so cookies can carry window scaling and
    /// SACK; 0: it leaves timestamps as they are (the MSS only, unless
    /// they are 2 already).
    pub cookie_timestamps: u32,
    /// What the SYN-ACKs of `overflow=cookie` may carry besides the MSS,
    /// written by the controller from the namespace's TCP settings (see
    /// [`crate::cookie::Options`]); 0: the MSS only.
    pub cookie_options: u32,
    /// An [`UnknownFlows`].
    pub unknown_flows: u32,
    /// Which prefix lists have entries ([`crate::prefix::ALLOW`],
    /// [`crate::prefix::DENY`] bits), so the tries are looked up only then.
    /// Kept by the controller as it writes the lists; not a setting.
    pub prefix_lists: u32,
}

const _: () = assert!(core::mem::size_of::<Config>() == 76);

impl Config {
    /// Defaults: enforce, a global cap far below the map's capacity with a
    /// fifth of it kept for sources verified in the last ten minutes, a
    /// per-source cap that a busy NAT still fits under, no per-port cap or
    /// SYN rate (a burst of 20 once a rate is set), every port open, a 5 s
    /// half-open timeout (the kernel's own is 63 s), and Linux's 60 s
    /// TIME_WAIT (MSL 30 s); no drop events until asked for; unknown flows
    /// checked against the kernel's sockets.
    pub const DEFAULT: Config = Config {
        mode: Mode::Enforce as u32,
        overflow: Overflow::Drop as u32,
        max_half_open: 16_384,
        max_half_open_per_source: 64,
        max_half_open_per_port: 0,
        source_prefix_v4: 32,
        source_prefix_v6: 128,
        syn_rate_per_source: 0,
        syn_burst: 20,
        verified_reserve_pct: 20,
        verified_ttl_s: 600,
        ports_restricted: 0,
        half_open_timeout_ms: 5_000,
        msl_ms: 30_000,
        event_sample: 0,
        cookie_timestamps: 1,
        cookie_options: 0,
        unknown_flows: UnknownFlows::Verify as u32,
        prefix_lists: 0,
    };

    pub const fn mode(&self) -> Mode {
        Mode::from_u32(self.mode)
    }

    pub const fn overflow(&self) -> Overflow {
        Overflow::from_u32(self.overflow)
    }

    pub const fn unknown_flows(&self) -> UnknownFlows {
        UnknownFlows::from_u32(self.unknown_flows)
    }

    /// The source-map key of `addr` under the prefix settings.
    #[inline(always)]
    pub fn source_key(&self, family: u8, addr: &[u8; 16]) -> crate::SourceKey {
        let prefix = if family == crate::flow::AF_INET {
            self.source_prefix_v4
        } else {
            self.source_prefix_v6
        };
        crate::SourceKey::new(family, addr, prefix)
    }

    pub const fn half_open_timeout_ns(&self) -> u64 {
        self.half_open_timeout_ms as u64 * 1_000_000
    }

    /// How long TIME_WAIT lasts: 2·MSL.
    pub const fn time_wait_ns(&self) -> u64 {
        2 * self.msl_ms as u64 * 1_000_000
    }
}

impl Default for Config {
    fn default() -> Self {
        Config::DEFAULT
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), only u32 fields, no padding (size asserted above).
unsafe impl aya::Pod for Config {}
