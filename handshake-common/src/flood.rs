//! The lab's line-rate flood frames: what the sender program (`flood_tx`,
//! run with `BPF_PROG_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES`) writes into
//! every frame before it sends it with `XDP_TX`.
//!
//! Live frames recycle their pages without restoring them, and a receiver's
//! `XDP_TX` (a cookie SYN-ACK written in place) changes what the next frame
//! holds, so the whole header is written from [`FloodSpec::template`] every
//! time, then the varied fields: the source address's last four bytes (the
//! whole IPv4 address; the low 32 bits of an IPv6 one), the source port, the
//! sequence and acknowledgement numbers and the flags. The checksums are the
//! template's partial sums (everything that does not vary, computed once by
//! [`FloodSpec::new`]) plus the varied words, so every frame carries valid
//! IPv4 and TCP checksums for a few additions.
//!
//! The addresses a flood may use are checked by the lab before a spec is
//! made (198.18.0.0/15 and 2001:db8::/32 only).

use crate::flow::AF_INET;
use crate::machine::tcp;

/// Frame length: Ethernet, IPv4 (no options), TCP (no options).
pub const V4_LEN: usize = 14 + 20 + 20;
/// Frame length: Ethernet, IPv6 (no extension headers), TCP (no options).
pub const V6_LEN: usize = 14 + 40 + 20;
/// The template's room, in 8-byte words (the IPv6 frame, rounded up).
pub const TEMPLATE_WORDS: usize = V6_LEN.div_ceil(8);

/// Where the TCP header starts, per family.
const V4_TCP: usize = 14 + 20;
const V6_TCP: usize = 14 + 40;
/// Where the varied last four bytes of the source address are, per family.
const V4_SRC_LO: usize = 14 + 12;
const V6_SRC_LO: usize = 14 + 8 + 12;
/// The IPv4 header checksum.
const V4_IP_CSUM: usize = 14 + 10;
/// The window every frame advertises (as a fresh Linux connection does).
const WINDOW: u16 = 64_240;

/// One flood, as the sender program reads it from its one-entry map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodSpec {
    /// The frame with every varied field zero; the first `len` bytes are
    /// sent. Wire order throughout.
    pub template: [u64; TEMPLATE_WORDS],
    /// [`AF_INET`] or [`crate::flow::AF_INET6`].
    pub family: u32,
    /// [`V4_LEN`] or [`V6_LEN`].
    pub len: u32,
    /// The first source's last four bytes, as a number (host order).
    pub src_first: u32,
    /// How many consecutive sources from `src_first` (at least 1).
    pub src_count: u32,
    /// The first source port and how many ports from it (at least 1).
    pub port_first: u32,
    pub port_count: u32,
    /// Of every 256 frames, how many are ACKs of no connection; the rest
    /// are SYNs (0: a SYN flood; 256: an ACK flood).
    pub ack_share: u32,
    /// The IPv4 header's one's-complement sum without the varied source
    /// word pair and the checksum (0 for IPv6, which has none).
    pub ip_sum: u32,
    /// The TCP checksum's sum (pseudo-header included) without the varied
    /// words: source address low, source port, sequence, acknowledgement,
    /// data offset and flags.
    pub tcp_sum: u32,
    pub _pad: u32,
}

const _: () = assert!(core::mem::size_of::<FloodSpec>() == 8 * TEMPLATE_WORDS + 40);

#[cfg(feature = "user")]
unsafe impl aya::Pod for FloodSpec {}

/// The numbers one frame varies, drawn from three random words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Varied {
    pub src_lo: u32,
    pub sport: u16,
    pub seq: u32,
    pub ack: u32,
    /// Data offset (5 words) and flags, as the TCP header's 13th and 14th bytes.
    pub offset_flags: u16,
}

/// Sums the 16-bit big-endian words of `b` (an even length).
const fn sum_words(b: &[u8], mut sum: u32) -> u32 {
    let mut i = 0;
    while i + 1 < b.len() {
        sum += ((b[i] as u32) << 8) | b[i + 1] as u32;
        i += 2;
    }
    sum
}

/// Folds a one's-complement sum to 16 bits and complements it.
#[inline(always)]
pub const fn finish(sum: u32) -> u16 {
    let s = (sum & 0xffff) + (sum >> 16);
    let s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
const fn words32(v: u32) -> u32 {
    (v >> 16) + (v & 0xffff)
}

impl FloodSpec {
    /// A flood from `src_count` consecutive sources starting at `src`
    /// (whose first 12 bytes, for IPv6, stay as given), ports
    /// `port_first..port_first + port_count`, to `dst`:`dport`, between the
    /// MAC addresses `src_mac` and `dst_mac`; IPv4 addresses in the first
    /// four bytes of the 16. `ack_share`: see the field.
    #[expect(
        clippy::too_many_arguments,
        reason = "one flat description of the flood"
    )]
    pub fn new(
        family: u8,
        src: [u8; 16],
        src_count: u32,
        port_first: u16,
        port_count: u16,
        dst: [u8; 16],
        dport: u16,
        src_mac: [u8; 6],
        dst_mac: [u8; 6],
        ack_share: u32,
    ) -> FloodSpec {
        let mut f = [0u8; 8 * TEMPLATE_WORDS];
        f[..6].copy_from_slice(&dst_mac);
        f[6..12].copy_from_slice(&src_mac);
        let (len, tcp_at, src_lo_at) = if family == AF_INET {
            f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
            let ip = &mut f[14..34];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&40u16.to_be_bytes());
            ip[6] = 0x40; // don't fragment
            ip[8] = 64; // TTL
            ip[9] = 6; // TCP
            ip[12..16].copy_from_slice(&src[..4]);
            ip[16..20].copy_from_slice(&dst[..4]);
            (V4_LEN, V4_TCP, V4_SRC_LO)
        } else {
            f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
            let ip = &mut f[14..54];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&20u16.to_be_bytes());
            ip[6] = 6; // next header: TCP
            ip[7] = 64; // hop limit
            ip[8..24].copy_from_slice(&src);
            ip[24..40].copy_from_slice(&dst);
            (V6_LEN, V6_TCP, V6_SRC_LO)
        };
        let src_first = u32::from_be_bytes([
            f[src_lo_at],
            f[src_lo_at + 1],
            f[src_lo_at + 2],
            f[src_lo_at + 3],
        ]);
        // The varied source bytes are summed per frame, not here.
        f[src_lo_at..src_lo_at + 4].fill(0);
        f[tcp_at + 2..tcp_at + 4].copy_from_slice(&dport.to_be_bytes());
        f[tcp_at + 14..tcp_at + 16].copy_from_slice(&WINDOW.to_be_bytes());
        let ip_sum = if family == AF_INET {
            sum_words(&f[14..34], 0)
        } else {
            0
        };
        // The pseudo-header: both addresses (the source's varied bytes
        // zero), the protocol and the TCP length.
        let (addrs, proto_len) = if family == AF_INET {
            (&f[26..34], 6 + 20)
        } else {
            (&f[22..54], 6 + 20)
        };
        let tcp_sum = sum_words(&f[tcp_at..tcp_at + 20], sum_words(addrs, proto_len));
        let mut template = [0u64; TEMPLATE_WORDS];
        for (w, b) in template.iter_mut().zip(f.chunks_exact(8)) {
            *w = u64::from_ne_bytes(b.try_into().unwrap_or([0; 8]));
        }
        FloodSpec {
            template,
            family: family as u32,
            len: len as u32,
            src_first,
            src_count: src_count.max(1),
            port_first: port_first as u32,
            port_count: (port_count as u32).max(1),
            ack_share,
            ip_sum,
            tcp_sum,
            _pad: 0,
        }
    }

    /// What one frame varies, from three random words.
    #[inline(always)]
    pub fn vary(&self, r: [u32; 3]) -> Varied {
        let ack = (r[2] & 0xff) < self.ack_share;
        Varied {
            src_lo: self
                .src_first
                .wrapping_add(r[0].checked_rem(self.src_count).unwrap_or(0)),
            sport: (self.port_first + (r[2] >> 8).checked_rem(self.port_count).unwrap_or(0)) as u16,
            seq: r[1],
            ack: if ack { r[0] ^ r[1].rotate_left(13) } else { 0 },
            offset_flags: (5 << 12) | if ack { tcp::ACK } else { tcp::SYN } as u16,
        }
    }

    /// Writes the frame for `r` at `p`: the template's `len` bytes, then
    /// the varied fields and both checksums.
    ///
    /// # Safety
    /// `p` must be 8-byte aligned (live frames' data is) and valid for
    /// `self.len` bytes of writes; the sender program checks this against
    /// the packet's end, per family ([`FloodSpec::write_v4`] and
    /// [`FloodSpec::write_v6`], so the verifier sees each bound).
    #[inline(always)]
    pub unsafe fn write(&self, p: *mut u8, r: [u32; 3]) {
        // SAFETY: as the caller vouches.
        unsafe {
            if self.family == AF_INET as u32 {
                self.write_v4(p, r)
            } else {
                self.write_v6(p, r)
            }
        }
    }

    /// [`FloodSpec::write`] of an IPv4 frame ([`V4_LEN`] bytes at `p`).
    ///
    /// # Safety
    /// `p` is 8-byte aligned and valid for [`V4_LEN`] bytes of writes.
    #[inline(always)]
    pub unsafe fn write_v4(&self, p: *mut u8, r: [u32; 3]) {
        let v = self.vary(r);
        let t = &self.template;
        // SAFETY: the caller vouches for V4_LEN bytes at an aligned `p`.
        unsafe {
            self.head(p);
            // The last 6 bytes: 48..54.
            let b = t[6].to_ne_bytes();
            p.add(48)
                .cast::<u32>()
                .write(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
            p.add(52)
                .cast::<u16>()
                .write(u16::from_ne_bytes([b[4], b[5]]));
            let ip = finish(self.ip_sum + words32(v.src_lo));
            put16(p, V4_IP_CSUM, ip);
            self.tcp(p, V4_TCP, V4_SRC_LO, &v);
        }
    }

    /// [`FloodSpec::write`] of an IPv6 frame ([`V6_LEN`] bytes at `p`).
    ///
    /// # Safety
    /// `p` is 8-byte aligned and valid for [`V6_LEN`] bytes of writes.
    #[inline(always)]
    pub unsafe fn write_v6(&self, p: *mut u8, r: [u32; 3]) {
        let v = self.vary(r);
        let t = &self.template;
        // SAFETY: the caller vouches for V6_LEN bytes at an aligned `p`.
        unsafe {
            self.head(p);
            let w = p.cast::<u64>();
            for (i, word) in t.iter().enumerate().skip(V4_LEN / 8).take(3) {
                w.add(i).write(*word);
            }
            let b = t[9].to_ne_bytes();
            p.add(72)
                .cast::<u16>()
                .write(u16::from_ne_bytes([b[0], b[1]]));
            self.tcp(p, V6_TCP, V6_SRC_LO, &v);
        }
    }

    /// The first 48 bytes, common to both families' frames.
    #[inline(always)]
    unsafe fn head(&self, p: *mut u8) {
        let w = p.cast::<u64>();
        for (i, word) in self.template.iter().enumerate().take(V4_LEN / 8) {
            // SAFETY: within the frame, as the callers' callers vouch.
            unsafe { w.add(i).write(*word) };
        }
    }

    /// The varied source bytes and TCP fields, and the TCP checksum.
    #[inline(always)]
    unsafe fn tcp(&self, p: *mut u8, tcp_at: usize, src_at: usize, v: &Varied) {
        let sum = self.tcp_sum
            + words32(v.src_lo)
            + v.sport as u32
            + words32(v.seq)
            + words32(v.ack)
            + v.offset_flags as u32;
        // SAFETY: within the frame, as the callers' callers vouch.
        unsafe {
            put16(p, src_at, (v.src_lo >> 16) as u16);
            put16(p, src_at + 2, v.src_lo as u16);
            put16(p, tcp_at, v.sport);
            put16(p, tcp_at + 4, (v.seq >> 16) as u16);
            put16(p, tcp_at + 6, v.seq as u16);
            put16(p, tcp_at + 8, (v.ack >> 16) as u16);
            put16(p, tcp_at + 10, v.ack as u16);
            put16(p, tcp_at + 12, v.offset_flags);
            put16(p, tcp_at + 16, finish(sum));
        }
    }
}

/// The lab's spoofed ranges, where floods' sources come from and their
/// replies go: 198.19.0.0/16 and 2001:db8:1::/48 (`handshake_lab::Lab`
/// routes them to the client side).
pub const SPOOFED_V4: (u32, u32) = (0xc613_0000, 16);
pub const SPOOFED_V6: (u64, u32) = (0x2001_0db8_0001_0000, 48);

/// Whether a frame of this ethertype, with this IPv4 destination (its bytes
/// 30–33) or IPv6 destination's first 8 bytes (38–45), is addressed to a
/// spoofed range.
#[inline(always)]
pub const fn spoofed(ethertype: u16, v4_dst: u32, v6_dst_hi: u64) -> bool {
    match ethertype {
        0x0800 => v4_dst >> (32 - SPOOFED_V4.1) == SPOOFED_V4.0 >> (32 - SPOOFED_V4.1),
        0x86dd => v6_dst_hi >> (64 - SPOOFED_V6.1) == SPOOFED_V6.0 >> (64 - SPOOFED_V6.1),
        _ => false,
    }
}

/// Writes `v` big-endian at `p + at` (an even offset of an aligned frame).
#[inline(always)]
unsafe fn put16(p: *mut u8, at: usize, v: u16) {
    // SAFETY: within the frame, as [`FloodSpec::write`]'s caller vouches.
    unsafe { p.add(at).cast::<u16>().write(v.to_be()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::AF_INET6;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut x = [0; 16];
        x[..4].copy_from_slice(&a);
        x
    }

    fn v6(last: [u8; 4]) -> [u8; 16] {
        let mut x = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        x[12..].copy_from_slice(&last);
        x
    }

    /// One's-complement sum over a whole header (its checksum included)
    /// folds to 0xffff when the checksum is right.
    fn valid(sum: u32) -> bool {
        finish(sum) == 0
    }

    fn frame(spec: &FloodSpec, r: [u32; 3]) -> [u64; TEMPLATE_WORDS] {
        let mut buf = [0xa5a5_a5a5_a5a5_a5a5u64; TEMPLATE_WORDS];
        unsafe { spec.write(buf.as_mut_ptr().cast(), r) };
        buf
    }

    fn bytes(w: &[u64; TEMPLATE_WORDS]) -> [u8; 8 * TEMPLATE_WORDS] {
        let mut b = [0; 8 * TEMPLATE_WORDS];
        for (c, x) in b.chunks_exact_mut(8).zip(w) {
            c.copy_from_slice(&x.to_ne_bytes());
        }
        b
    }

    #[test]
    fn every_v4_frame_has_valid_checksums_and_stays_in_its_ranges() {
        let spec = FloodSpec::new(
            AF_INET,
            v4([198, 19, 0, 0]),
            50_000,
            1024,
            60_000,
            v4([198, 18, 0, 1]),
            8080,
            [2, 0, 0, 0, 0, 2],
            [2, 0, 0, 0, 0, 1],
            128,
        );
        let mut rng = fastrand::Rng::with_seed(7);
        let (mut syns, mut acks) = (0, 0);
        for _ in 0..2_000 {
            let r = [rng.u32(..), rng.u32(..), rng.u32(..)];
            let f = bytes(&frame(&spec, r));
            assert_eq!(&f[..6], &[2, 0, 0, 0, 0, 1]);
            assert_eq!(&f[12..14], &[0x08, 0x00]);
            assert!(valid(sum_words(&f[14..34], 0)), "IPv4 header checksum");
            let src = u32::from_be_bytes(f[26..30].try_into().unwrap());
            assert!((0xc613_0000..0xc613_0000 + 50_000).contains(&src));
            let tcp = &f[34..54];
            let pseudo = sum_words(&f[26..34], 6 + 20);
            assert!(valid(sum_words(tcp, pseudo)), "TCP checksum");
            let sport = u16::from_be_bytes([tcp[0], tcp[1]]);
            assert!((1024..61_024).contains(&sport));
            assert_eq!(u16::from_be_bytes([tcp[2], tcp[3]]), 8080);
            match tcp[13] {
                tcp::SYN => syns += 1,
                tcp::ACK => acks += 1,
                x => panic!("flags {x:#x}"),
            }
            assert_eq!(tcp[12], 0x50);
        }
        assert!(syns > 800 && acks > 800, "{syns} SYNs, {acks} ACKs");
    }

    #[test]
    fn every_v6_frame_has_a_valid_checksum() {
        let spec = FloodSpec::new(
            AF_INET6,
            v6([0, 0, 0, 0]),
            50_000,
            1024,
            60_000,
            v6([0, 0, 0, 1]),
            443,
            [2, 0, 0, 0, 0, 2],
            [2, 0, 0, 0, 0, 1],
            0,
        );
        let mut rng = fastrand::Rng::with_seed(9);
        for _ in 0..2_000 {
            let r = [rng.u32(..), rng.u32(..), rng.u32(..)];
            let f = bytes(&frame(&spec, r));
            assert_eq!(&f[12..14], &[0x86, 0xdd]);
            assert_eq!(&f[18..20], &[0, 20], "payload length");
            let tcp = &f[54..74];
            let pseudo = sum_words(&f[22..54], 6 + 20);
            assert!(valid(sum_words(tcp, pseudo)), "TCP checksum");
            assert_eq!(tcp[13], tcp::SYN);
            assert_eq!(
                &f[22..34],
                &v6([0; 4])[..12],
                "the fixed part of the source"
            );
        }
    }

    #[test]
    fn only_the_spoofed_ranges_are_sunk() {
        assert!(spoofed(0x0800, 0xc613_0102, 0));
        assert!(
            !spoofed(0x0800, 0xc612_0002, 0),
            "198.18.0.2: a real client"
        );
        assert!(spoofed(0x86dd, 0, 0x2001_0db8_0001_0000));
        assert!(
            !spoofed(0x86dd, 0, 0x2001_0db8_0000_0000),
            "2001:db8::/64: the lab's link"
        );
        assert!(!spoofed(0x0806, 0xc613_0102, 0), "ARP passes");
    }

    /// A frame a receiver rewrote in place (a cookie SYN-ACK) is whole again.
    #[test]
    fn a_rewritten_frame_is_restored() {
        let spec = FloodSpec::new(
            AF_INET,
            v4([198, 19, 0, 0]),
            10,
            1024,
            10,
            v4([198, 18, 0, 1]),
            80,
            [2; 6],
            [4; 6],
            0,
        );
        let clean = frame(&spec, [1, 2, 3]);
        let mut dirty = [u64::MAX; TEMPLATE_WORDS];
        unsafe { spec.write(dirty.as_mut_ptr().cast(), [1, 2, 3]) };
        assert_eq!(bytes(&clean)[..V4_LEN], bytes(&dirty)[..V4_LEN]);
    }
}
