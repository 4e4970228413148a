//! `overflow=cookie`: the pure part of answering a SYN from XDP with a SYN
//! cookie. The XDP program asks the kernel for the cookie itself
//! (`bpf_tcp_gen_syncookie`, so the kernel accepts the client's ACK) and
//! uses what is here to read the SYN's options and build the SYN-ACK.
//!
//! A SYN cookie keeps only what fits in the sequence number: the MSS, as
//! one of four values. When the client offered timestamps, and this
//! namespace has `net.ipv4.tcp_timestamps=2` (timestamps without a random
//! per-connection offset, which XDP cannot know), the low six bits of the
//! SYN-ACK's timestamp carry the client's window scale and SACK permission,
//! exactly as the kernel's own cookies do (`cookie_init_timestamp`), and
//! the kernel reads them back from the echoed timestamp. Otherwise the
//! connection has neither: no window scaling (at most 64 KiB in flight)
//! and no SACK. ECN is never offered.

/// Bytes of TCP options a header may carry.
pub const MAX_OPTIONS: usize = 40;
/// The longest reply: an IPv6 header and a TCP header with options.
pub const MAX_REPLY: usize = 40 + 20 + MAX_OPTIONS;

/// The TCP window the SYN-ACK advertises (never scaled in a SYN segment).
pub const WINDOW: u16 = 65_535;
/// The hop limit or TTL of the SYN-ACK, as Linux sends it.
pub const TTL: u8 = 64;

const TCPOPT_EOL: u8 = 0;
const TCPOPT_NOP: u8 = 1;
const TCPOPT_MSS: u8 = 2;
const TCPOPT_WINDOW: u8 = 3;
const TCPOPT_SACK_PERM: u8 = 4;
const TCPOPT_TIMESTAMP: u8 = 8;

/// The kernel's encoding of options in a timestamp cookie.
const TS_OPT_WSCALE_MASK: u32 = 0xf;
const TS_OPT_SACK: u32 = 1 << 4;
const TSBITS: u32 = 6;
/// The largest window scale TCP allows.
pub const MAX_WSCALE: u8 = 14;

/// What a SYN offered in its options (its MSS the kernel reads itself).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynOptions {
    /// Its window scale shift, if it offered scaling.
    pub wscale: Option<u8>,
    /// It offered SACK.
    pub sack_ok: bool,
    /// Its timestamp value, if it offered timestamps.
    pub tsval: Option<u32>,
}

/// Size of the buffer [`parse_options`] reads: room past [`MAX_OPTIONS`]
/// for the longest option read at the last position, so no read needs a
/// bounds check.
pub const OPTIONS_BUF: usize = 64;

/// Reads a SYN's options (the first `len` bytes of `opts`: the bytes after
/// the fixed TCP header) as the kernel does: up to an end-of-list, a
/// malformed option, or the end.
///
/// Written for the BPF verifier, which must not explore every way through
/// a loop whose course depends on the data (recent kernels allow no
/// pruning inside a loop until it is fully explored): the walk is unrolled,
/// one step per position, each acting only where the next option starts,
/// so every read is at a constant offset and the verifier sees straight
/// code whose states it can prune.
#[inline(always)]
pub fn parse_options(opts: &[u8; OPTIONS_BUF], len: usize) -> SynOptions {
    let mut walk = Walk {
        out: SynOptions::default(),
        next: 0,
        len,
    };
    macro_rules! steps {
        ($($p:literal)*) => {
            $(
                if !walk.step(opts, $p) {
                    return walk.out;
                }
            )*
        };
    }
    steps!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19
           20 21 22 23 24 25 26 27 28 29 30 31 32 33 34 35 36 37 38 39);
    walk.out
}

/// Where [`parse_options`] is.
struct Walk {
    out: SynOptions,
    /// Where the next option starts.
    next: usize,
    len: usize,
}

impl Walk {
    /// Position `p` of the walk; false when the walk is over.
    #[inline(always)]
    fn step(&mut self, opts: &[u8; OPTIONS_BUF], p: usize) -> bool {
        if p >= self.len {
            return false;
        }
        if p != self.next {
            return true;
        }
        let kind = opts[p];
        if kind == TCPOPT_EOL {
            return false;
        }
        if kind == TCPOPT_NOP {
            self.next = p + 1;
            return true;
        }
        if p + 1 >= self.len {
            return false;
        }
        let size = opts[p + 1] as usize;
        if size < 2 || p + size > self.len {
            return false;
        }
        match (kind, size) {
            (TCPOPT_WINDOW, 3) => self.out.wscale = Some(opts[p + 2]),
            (TCPOPT_SACK_PERM, 2) => self.out.sack_ok = true,
            (TCPOPT_TIMESTAMP, 10) => {
                self.out.tsval = Some(u32::from_be_bytes([
                    opts[p + 2],
                    opts[p + 3],
                    opts[p + 4],
                    opts[p + 5],
                ]));
            }
            _ => {}
        }
        self.next = p + size;
        true
    }
}

/// What the SYN-ACKs may carry besides the MSS: the namespace's TCP
/// settings, as the controller found them. Kept in `Config::cookie_options`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// `net.ipv4.tcp_timestamps` is 2: timestamp cookies work.
    pub timestamps: bool,
    /// `net.ipv4.tcp_sack` is on.
    pub sack: bool,
    /// `net.ipv4.tcp_window_scaling` is on.
    pub window_scaling: bool,
    /// The window scale the kernel will use for a cookie connection on
    /// this host (it computes it again when the ACK arrives; the SYN-ACK
    /// must announce the same).
    pub rcv_wscale: u8,
}

impl Options {
    const TIMESTAMPS: u32 = 1;
    const SACK: u32 = 2;
    const WINDOW_SCALING: u32 = 4;
    const WSCALE_SHIFT: u32 = 8;

    pub const fn to_bits(self) -> u32 {
        (self.timestamps as u32 * Self::TIMESTAMPS)
            | (self.sack as u32 * Self::SACK)
            | (self.window_scaling as u32 * Self::WINDOW_SCALING)
            | ((self.rcv_wscale as u32 & 0xf) << Self::WSCALE_SHIFT)
    }

    pub const fn from_bits(b: u32) -> Options {
        let ws = ((b >> Self::WSCALE_SHIFT) & 0xf) as u8;
        Options {
            timestamps: b & Self::TIMESTAMPS != 0,
            sack: b & Self::SACK != 0,
            window_scaling: b & Self::WINDOW_SCALING != 0,
            rcv_wscale: if ws > MAX_WSCALE { MAX_WSCALE } else { ws },
        }
    }

    /// The window scale the kernel computes for a connection it makes from
    /// a cookie (`tcp_select_initial_window`): from the largest receive
    /// buffer allowed, `max(tcp_rmem[2], rmem_max)`, as a shift above 64 KiB.
    pub fn kernel_wscale(tcp_rmem_max: u64, rmem_max: u64) -> u8 {
        let space = tcp_rmem_max.max(rmem_max).min(u32::MAX as u64).max(1);
        let log = 63 - space.leading_zeros() as i32;
        (log - 15).clamp(0, MAX_WSCALE as i32) as u8
    }
}

/// The TCP timestamp of a timestamp cookie at `now_ns` (the kernel's
/// millisecond TCP clock runs on the monotonic clock; the programs pass its
/// coarse reading, at most a tick behind): the clock with its low six bits
/// replaced by the options, never ahead of the clock.
pub fn ts_cookie(now_ns: u64, wscale: Option<u8>, sack: bool) -> u32 {
    let now = (now_ns / 1_000_000) as u32;
    let mut options = match wscale {
        Some(w) if w > MAX_WSCALE => MAX_WSCALE as u32,
        Some(w) => w as u32,
        None => TS_OPT_WSCALE_MASK,
    };
    if sack {
        options |= TS_OPT_SACK;
    }
    let ts = ((now >> TSBITS) << TSBITS) | options;
    if ts > now {
        ts.wrapping_sub(1 << TSBITS)
    } else {
        ts
    }
}

/// Writes the SYN-ACK's options into `out`; returns their length (4, 16
/// or 20 bytes, a multiple of 4). The MSS always; with a timestamp cookie,
/// SACK permission, the timestamp and the window scale as the SYN offered
/// them and the host allows, laid out as Linux lays them out.
pub fn syn_ack_options(
    out: &mut [u8; 20],
    mss: u16,
    syn: &SynOptions,
    host: Options,
    now_ns: u64,
) -> usize {
    let m = mss.to_be_bytes();
    out[..4].copy_from_slice(&[TCPOPT_MSS, 4, m[0], m[1]]);
    let Some(tsecr) = syn.tsval.filter(|_| host.timestamps) else {
        return 4;
    };
    let sack = syn.sack_ok && host.sack;
    let wscale = syn.wscale.filter(|_| host.window_scaling);
    let tsval = ts_cookie(now_ns, wscale, sack).to_be_bytes();
    let tsecr = tsecr.to_be_bytes();
    let lead = if sack {
        [TCPOPT_SACK_PERM, 2]
    } else {
        [TCPOPT_NOP, TCPOPT_NOP]
    };
    out[4..16].copy_from_slice(&[
        lead[0],
        lead[1],
        TCPOPT_TIMESTAMP,
        10,
        tsval[0],
        tsval[1],
        tsval[2],
        tsval[3],
        tsecr[0],
        tsecr[1],
        tsecr[2],
        tsecr[3],
    ]);
    if wscale.is_none() {
        return 16;
    }
    out[16..20].copy_from_slice(&[TCPOPT_NOP, TCPOPT_WINDOW, 3, host.rcv_wscale]);
    20
}

/// The one's-complement sum of `data` as big-endian 16-bit words (an odd
/// last byte padded with zero), added to `acc`.
pub fn sum16(data: &[u8], mut acc: u32) -> u32 {
    let mut i = 0;
    while i + 1 < data.len() {
        acc += u16::from_be_bytes([data[i], data[i + 1]]) as u32;
        i += 2;
    }
    if i < data.len() {
        acc += (data[i] as u32) << 8;
    }
    acc
}

/// The Internet checksum of a sum from [`sum16`].
pub fn checksum(mut acc: u32) -> u16 {
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// What the SYN-ACK is made of.
pub struct Reply<'a> {
    /// [`crate::flow::AF_INET`] or [`crate::flow::AF_INET6`].
    pub family: u8,
    /// The SYN's source (an IPv4 address in its first four bytes), port in
    /// network order: the SYN-ACK's destination.
    pub client: &'a crate::flow::Endpoint,
    /// The SYN's destination: the SYN-ACK's source.
    pub server: &'a crate::flow::Endpoint,
    /// The SYN's sequence number.
    pub client_seq: u32,
    /// The cookie: the SYN-ACK's sequence number.
    pub cookie: u32,
    pub mss: u16,
    pub syn: SynOptions,
    pub host: Options,
    /// The clock for a timestamp cookie (monotonic ns); read only when the
    /// SYN offered timestamps and the host allows timestamp cookies.
    pub now_ns: u64,
}

/// Writes the SYN-ACK's IP and TCP headers, checksums included, into `out`;
/// returns their length. The IPv4 header has no options and the IPv6 one
/// no extension headers, whatever the SYN had. The checksums are summed
/// from the values as they are written, not read back from `out` (a BPF
/// program reads its buffer a byte at a time).
pub fn build<const N: usize>(r: &Reply, out: &mut [u8; N]) -> usize {
    const { assert!(N >= MAX_REPLY) };
    let mut opts = [0u8; 20];
    let opt_len = syn_ack_options(&mut opts, r.mss, &r.syn, r.host, r.now_ns);
    let tcp_len = 20 + opt_len;
    let v4 = r.family == crate::flow::AF_INET;
    let ip_len = if v4 { 20 } else { 40 };
    let (src, dst) = (&r.server.addr, &r.client.addr);
    // Both addresses' words: in the pseudo-header, and in the IPv4 header.
    let addr_len = if v4 { 4 } else { 16 };
    let addrs = sum16(&dst[..addr_len], sum16(&src[..addr_len], 0));
    if v4 {
        let total = (ip_len + tcp_len) as u16;
        let tot = total.to_be_bytes();
        // Version and length, total length, flags (DF), TTL and protocol.
        let sum = addrs + 0x4500 + u32::from(total) + 0x4000 + ((TTL as u32) << 8 | 6);
        let c = checksum(sum).to_be_bytes();
        out[..20].copy_from_slice(&[
            0x45, 0, tot[0], tot[1], 0, 0, 0x40, 0, TTL, 6, c[0], c[1], src[0], src[1], src[2],
            src[3], dst[0], dst[1], dst[2], dst[3],
        ]);
    } else {
        let plen = (tcp_len as u16).to_be_bytes();
        out[..8].copy_from_slice(&[0x60, 0, 0, 0, plen[0], plen[1], 6, TTL]);
        out[8..24].copy_from_slice(src);
        out[24..40].copy_from_slice(dst);
    }
    let (sport, dport) = (u16::from_be(r.server.port), u16::from_be(r.client.port));
    let seq = r.cookie;
    let ack = r.client_seq.wrapping_add(1);
    let offset_flags = (((tcp_len / 4) as u16) << 12)
        | u16::from(crate::machine::tcp::SYN | crate::machine::tcp::ACK);
    // The pseudo-header (the addresses, the protocol, the TCP length), then
    // the header's words as written (its checksum and urgent pointer 0)
    // and the options'.
    let word = |v: u32| (v >> 16) + (v & 0xffff);
    let sum = addrs
        + 6
        + tcp_len as u32
        + u32::from(sport)
        + u32::from(dport)
        + word(seq)
        + word(ack)
        + u32::from(offset_flags)
        + u32::from(WINDOW);
    let c = checksum(sum16(&opts[..opt_len], sum)).to_be_bytes();
    let (sp, dp) = (sport.to_be_bytes(), dport.to_be_bytes());
    let (seq, ack) = (seq.to_be_bytes(), ack.to_be_bytes());
    let (of, win) = (offset_flags.to_be_bytes(), WINDOW.to_be_bytes());
    let t = &mut out[ip_len..ip_len + tcp_len];
    t[..20].copy_from_slice(&[
        sp[0], sp[1], dp[0], dp[1], seq[0], seq[1], seq[2], seq[3], ack[0], ack[1], ack[2], ack[3],
        of[0], of[1], win[0], win[1], c[0], c[1], 0, 0,
    ]);
    t[20..].copy_from_slice(&opts[..opt_len]);
    ip_len + tcp_len
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(opts: &[u8]) -> SynOptions {
        let mut buf = [0u8; OPTIONS_BUF];
        buf[..opts.len()].copy_from_slice(opts);
        parse_options(&buf, opts.len())
    }

    /// The options of a Linux client's SYN: MSS 1460, SACK permitted,
    /// timestamp, NOP, window scale 7.
    const LINUX_SYN: [u8; 20] = [
        2, 4, 5, 180, 4, 2, 8, 10, 0, 0, 0x12, 0x34, 0, 0, 0, 0, 1, 3, 3, 7,
    ];

    #[test]
    fn reads_a_linux_syn() {
        assert_eq!(
            parse(&LINUX_SYN),
            SynOptions {
                wscale: Some(7),
                sack_ok: true,
                tsval: Some(0x1234),
            }
        );
    }

    #[test]
    fn stops_at_the_end_of_list_and_at_malformed_options() {
        assert_eq!(parse(&[]), SynOptions::default());
        assert_eq!(parse(&[0, 4, 2]), SynOptions::default());
        // A length of 0 or 1, or past the end, ends the list.
        assert_eq!(parse(&[4, 0, 4, 2]), SynOptions::default());
        assert_eq!(parse(&[8, 10, 0, 0]), SynOptions::default());
        let sack_then_junk = parse(&[4, 2, 3, 1, 9]);
        assert!(sack_then_junk.sack_ok);
        assert_eq!(sack_then_junk.wscale, None);
        // Wrong sizes are ignored, not believed.
        assert_eq!(parse(&[3, 4, 7, 0]), SynOptions::default());
        // Forty NOPs end without looping for ever.
        assert_eq!(parse(&[1; 40]), SynOptions::default());
    }

    #[test]
    fn options_round_trip_through_their_bits() {
        for o in [
            Options::default(),
            Options {
                timestamps: true,
                sack: true,
                window_scaling: true,
                rcv_wscale: 14,
            },
            Options {
                timestamps: true,
                sack: false,
                window_scaling: true,
                rcv_wscale: 7,
            },
        ] {
            assert_eq!(Options::from_bits(o.to_bits()), o);
        }
    }

    #[test]
    fn kernel_wscale_follows_the_largest_buffer() {
        // Linux defaults: tcp_rmem[2] 6 MiB, rmem_max 208 KiB.
        assert_eq!(Options::kernel_wscale(6 * 1024 * 1024, 212_992), 7);
        assert_eq!(Options::kernel_wscale(32 * 1024 * 1024, 212_992), 10);
        assert_eq!(Options::kernel_wscale(4096, 4096), 0);
        assert_eq!(Options::kernel_wscale(u64::MAX, 0), 14);
    }

    #[test]
    fn timestamp_cookies_encode_as_the_kernel_does() {
        let ms = 1_000_000u64;
        // Clock 1000 ms = 0b1111101000: low six bits 0b101000 (40).
        let ts = ts_cookie(1000 * ms, Some(7), true);
        assert_eq!(ts & 0x3f, 7 | TS_OPT_SACK);
        assert!(ts <= 1000 && 1000 - ts < 64, "{ts}");
        // Options above the clock's low bits (970 = 960 + 10): one step back.
        let ts = ts_cookie(970 * ms, None, true);
        assert_eq!(ts & 0x3f, 0xf | TS_OPT_SACK);
        assert_eq!(ts, 960 - 64 + 0x1f);
        // A window scale above 14 is taken as 14, as the kernel does.
        assert_eq!(ts_cookie(1 << 40, Some(15), false) & 0xf, 14);
        // Near zero the clock wraps, as the kernel's 32-bit timestamps do.
        assert_eq!(ts_cookie(0, None, false), 0u32.wrapping_sub(64) | 0xf);
    }

    #[test]
    fn mss_only_unless_timestamps_carry_the_rest() {
        let syn = parse(&LINUX_SYN);
        let mut out = [0u8; 20];
        let none = Options::default();
        assert_eq!(syn_ack_options(&mut out, 1460, &syn, none, 0), 4);
        assert_eq!(out[..4], [2, 4, 5, 180]);
        let all = Options {
            timestamps: true,
            sack: true,
            window_scaling: true,
            rcv_wscale: 7,
        };
        let no_ts = SynOptions { tsval: None, ..syn };
        assert_eq!(syn_ack_options(&mut out, 1460, &no_ts, all, 0), 4);
        let now = 5_000_000_000;
        assert_eq!(syn_ack_options(&mut out, 1460, &syn, all, now), 20);
        let tsval = ts_cookie(now, Some(7), true).to_be_bytes();
        assert_eq!(
            out,
            [
                2, 4, 5, 180, 4, 2, 8, 10, tsval[0], tsval[1], tsval[2], tsval[3], 0, 0, 0x12,
                0x34, 1, 3, 3, 7
            ]
        );
        let no_sack_ws = Options {
            sack: false,
            window_scaling: false,
            ..all
        };
        assert_eq!(syn_ack_options(&mut out, 536, &syn, no_sack_ws, now), 16);
        assert_eq!(out[4..8], [1, 1, 8, 10]);
        assert_eq!(
            ts_cookie(now, None, false).to_be_bytes(),
            out[8..12],
            "the cookie says: no scaling, no SACK"
        );
    }

    #[test]
    fn checksums_verify_to_zero() {
        let data = [
            0x45u8, 0, 0, 60, 0x1c, 0x46, 0x40, 0, 0x40, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        let c = checksum(sum16(&data, 0)).to_be_bytes();
        let mut d = data;
        d[10] = c[0];
        d[11] = c[1];
        assert_eq!(checksum(sum16(&d, 0)), 0);
        assert_eq!(sum16(&[1, 2, 3], 0), 0x0102 + 0x0300);
    }
}
