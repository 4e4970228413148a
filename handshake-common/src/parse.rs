//! Header parsing: Ethernet (up to two VLAN tags), IPv4 (honouring IHL),
//! IPv6 (following a bounded chain of extension headers), TCP (honouring the
//! data offset). Every read goes through [`ptr_at`], which checks it against
//! the end of the packet.
//!
//! Written for the kernel programs (each implements [`Packet`] for its
//! context) and the BPF verifier; it lives here so the very same code also
//! runs on the host over a byte slice ([`Bytes`]), where it is fuzzed.
//!
//! Traffic classes let through without TCP tracking, on purpose:
//! - anything that is not IPv4/IPv6 (ARP, LLDP, MPLS, …) and any IP protocol
//!   but TCP: the gate is about TCP handshakes;
//! - non-first IPv4/IPv6 fragments: they carry no TCP header, and no SYN can
//!   be rebuilt from them without the first fragment, which the gate parses
//!   (a first fragment too short to hold the TCP header is `Malformed`).
//!
//! Classes counted as `Malformed` (dropped in enforce mode, as the kernel
//! would drop them too): truncated headers, IPv4 IHL < 5 or version ≠ 4,
//! IPv4 total length shorter than its headers or longer than the frame, TCP
//! data offset < 5 or past the end, more than [`MAX_VLAN`] VLAN tags, and an
//! IPv6 extension-header chain longer than [`MAX_EXT`] (it could hide a TCP
//! header the gate would otherwise not see).

use core::mem::size_of;

use crate::flow::{AF_INET, AF_INET6, Endpoint, FlowKey, NO_WSCALE};
use crate::machine::MAX_WSCALE;
use crate::machine::Segment;
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr, tcp::TcpHdr};

/// VLAN tags followed (802.1Q and 802.1ad): a double-tagged (QinQ) frame is
/// the most that is deployed.
const MAX_VLAN: usize = 2;
/// IPv6 extension headers followed before the chain counts as malformed:
/// hop-by-hop, routing, fragment and destination options each once, as RFC
/// 8200 orders them.
const MAX_EXT: usize = 4;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;

/// The facts of a TCP packet that the tracker needs. Lives in a per-CPU
/// scratch map, not on the 512-byte BPF stack.
#[repr(C)]
pub struct Facts {
    pub family: u8,
    pub src: Endpoint,
    pub dst: Endpoint,
    pub seg: Segment,
    /// The flow's normalised key, filled in by the tracker (kept here, off
    /// the stack).
    pub key: FlowKey,
    /// `key` as the IPv4 maps take it, for the data fast path's lookup
    /// (which runs in the program itself, where a key in map memory will
    /// do; a global function's lookups take theirs from the stack).
    pub key_v4: crate::FlowKeyV4,
    /// 1 when the source is the key's `lo` end (filled in with `key`).
    pub src_is_lo: u8,
    /// 1 when the kernel programs' data fast path found `key` in the
    /// established map; 2 when a refusal came before `key` was made (no
    /// entry was looked for: the known-source filter said none exists).
    pub key_found: u8,
    /// The prefix list of an arriving SYN's source ([`crate::prefix::ALLOW`],
    /// [`crate::prefix::DENY`]; 0: none, or not looked up).
    pub listed: u8,
    /// What the kernel programs' data fast path found of the packet (their
    /// own encoding), carried here rather than in a register so the BPF
    /// verifier does not walk everything after it once for each value.
    pub tried: u8,
    /// The TCP header's length in bytes, options included (20 to 60).
    pub th_len: u8,
    /// When the tracker first looked at the packet (monotonic ns).
    pub now_ns: u64,
    /// Where the IP header starts (after Ethernet and VLAN tags).
    pub l3: u16,
    /// Where the TCP header starts.
    pub l4: u16,
    /// Room for `overflow=cookie`: the SYN's options, then the reply.
    pub cookie: CookieScratch,
}

/// The cookie path's working space, off the 512-byte stack.
#[repr(C)]
pub struct CookieScratch {
    /// The SYN's TCP header: the fixed 20 bytes, then room for
    /// [`crate::cookie::OPTIONS_BUF`] bytes of options.
    pub tcp: [u8; TCP_HEADER_BUF],
    /// The frame's head, copied out in one piece: the link-layer header
    /// (Ethernet and up to two VLAN tags), the SYN's fixed IP header and
    /// its TCP header. The reply is built over the IP header, after the
    /// link-layer one, and the whole written back in one piece.
    pub frame: [u8; COOKIE_FRAME_BUF],
}

/// The room [`CookieScratch::frame`] keeps for the reply's IP and TCP
/// headers (the verifier sees the reply's length only as masked, up to 103).
pub const COOKIE_REPLY_BUF: usize = 128;
/// [`CookieScratch::frame`]'s size, as the BPF verifier must see every
/// access fit: the TCP header placed at most 83 bytes in, its 80 bytes and
/// the options walk's 64 past its fixed 20; the reply's room after a
/// link-layer header of up to 31.
pub const COOKIE_FRAME_BUF: usize = 168;
const _: () = assert!(COOKIE_FRAME_BUF >= 83 + 20 + crate::cookie::OPTIONS_BUF);
const _: () = assert!(COOKIE_FRAME_BUF >= 31 + COOKIE_REPLY_BUF);

impl CookieScratch {
    pub const EMPTY: CookieScratch = CookieScratch {
        tcp: [0; TCP_HEADER_BUF],
        frame: [0; COOKIE_FRAME_BUF],
    };
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A TCP packet; its facts are in the `out` argument of [`parse`].
    Tcp,
    NotTcp,
    Malformed,
}

/// What the parser needs of a program's context: where the packet's bytes
/// are. XDP sees the frame as it arrived; TC egress sees the skb's linear
/// part, which the egress program first makes cover the headers.
#[expect(
    clippy::len_without_is_empty,
    reason = "a packet here is never empty: the parser only asks how long it is"
)]
pub trait Packet {
    fn data(&self) -> usize;
    fn data_end(&self) -> usize;
    /// The whole packet's length: the IP lengths are checked against it.
    /// For TC this counts the skb's paged data too (a TSO segment's payload
    /// sits there); XDP programs here see single-buffer frames.
    fn len(&self) -> usize;
    /// Copies `len` bytes of the packet from `offset` into `to` (for a
    /// SYN's TCP header with its options: 21 to 60 bytes); false if they
    /// are not all in the packet.
    fn load(&self, offset: usize, to: &mut [u8; TCP_HEADER_BUF], len: usize) -> bool;
    /// Whether TCP checksums are checked here, where they matter (an RST's):
    /// on what arrives; what leaves may carry a checksum the NIC completes.
    fn checks_checksums(&self) -> bool;
    /// The ones'-complement sum of `buf`'s first `len` bytes (a TCP header
    /// [`Packet::load`] just copied: `len` a multiple of 4, 20 to 60) as
    /// big-endian 16-bit words, folded to 16 bits; `None` when it cannot be
    /// had. The kernel programs ask the kernel (`bpf_csum_diff`): the loop
    /// cost their verification a walk per word on each way to it.
    fn header_sum(&self, buf: &[u8; TCP_HEADER_BUF], len: usize) -> Option<u32> {
        Some(words_sum(buf, len))
    }
}

/// The ones'-complement sum of `buf`'s first `len` bytes (rounded down to
/// an even count, at most 60) as big-endian 16-bit words, folded to 16 bits.
#[inline(always)]
pub fn words_sum(buf: &[u8; TCP_HEADER_BUF], len: usize) -> u32 {
    let mut sum = 0u32;
    // Constant trip counts and indexes, so the BPF code has no bounds checks.
    for i in 0..30 {
        if 2 * i < len {
            sum += u32::from(u16::from_be_bytes([buf[2 * i], buf[2 * i + 1]]));
        }
    }
    fold(sum)
}

/// A 32-bit ones'-complement sum folded to 16 bits.
#[inline(always)]
pub fn fold(sum: u32) -> u32 {
    let s = (sum & 0xffff) + (sum >> 16);
    (s & 0xffff) + (s >> 16)
}

/// Room for a TCP header with the longest options, and to spare for the
/// option walk ([`crate::cookie::parse_options`]).
pub const TCP_HEADER_BUF: usize = 20 + crate::cookie::OPTIONS_BUF;

/// A pointer to a `T` at `offset`, if the whole `T` lies inside the packet.
#[inline(always)]
pub fn ptr_at<C: Packet, T>(ctx: &C, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// A `T` (`u16`, `u32`, `u64`) read from the packet at `p`, which
/// [`ptr_at`] has bounds-checked; the caller turns it from network order.
///
/// In the kernel programs this is one load of the whole word: headers sit
/// at even offsets but not always at multiples of the word, and LLVM, told
/// the truth about that, reads a byte at a time; the BPF verifier allows
/// unaligned packet access where the CPU does (x86), and the JIT emits one
/// instruction, as for C programs' header structs. On the host, where this
/// code is fuzzed, the read is unaligned-safe.
#[inline(always)]
unsafe fn word<T: Copy>(p: *const u8) -> T {
    #[cfg(target_arch = "bpf")]
    {
        // SAFETY: in the packet (bounds-checked); see above on alignment.
        unsafe { core::ptr::read(p.cast::<T>()) }
    }
    #[cfg(not(target_arch = "bpf"))]
    {
        // SAFETY: in the packet (bounds-checked).
        unsafe { core::ptr::read_unaligned(p.cast::<T>()) }
    }
}

/// Where the IP header starts and which protocol it is, after the VLAN tags.
#[inline(always)]
fn l3<C: Packet>(ctx: &C) -> Result<(usize, u16), Parsed> {
    let eth: *const EthHdr = ptr_at(ctx, 0).ok_or(Parsed::Malformed)?;
    // Unaligned: a frame may start anywhere (the host fuzzes this code).
    let mut proto = u16::from_be(unsafe { word::<u16>((&raw const (*eth).ether_type).cast()) });
    let mut off = EthHdr::LEN;
    for _ in 0..MAX_VLAN {
        if proto != ETH_P_8021Q && proto != ETH_P_8021AD {
            return Ok((off, proto));
        }
        // TCI (2 bytes), then the inner EtherType.
        let inner: *const [u8; 2] = ptr_at(ctx, off + 2).ok_or(Parsed::Malformed)?;
        proto = u16::from_be(unsafe { word::<u16>(inner.cast()) });
        off += 4;
    }
    if proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        return Err(Parsed::Malformed);
    }
    Ok((off, proto))
}

/// Whether the packet is surely not TCP, from its first headers alone: an
/// EtherType other than IPv4 or IPv6, or a well-formed IPv4 header of
/// another protocol. Where this says true, [`parse`] says
/// [`Parsed::NotTcp`] (the host fuzz checks it); false says nothing. The
/// XDP program asks it first, so such a packet costs a few reads and one
/// counter, with no scratch space and no facts written.
#[inline(always)]
pub fn surely_not_tcp<C: Packet>(ctx: &C) -> bool {
    let Ok((off, proto)) = l3(ctx) else {
        return false;
    };
    match proto {
        ETH_P_IP => {
            let Some(ip_ptr) = ptr_at::<C, Ipv4Hdr>(ctx, off) else {
                return false;
            };
            let ip = unsafe { &*ip_ptr };
            ip.version() == 4 && ip.ihl() as usize >= Ipv4Hdr::LEN && ip.proto != IPPROTO_TCP
        }
        ETH_P_IPV6 => false,
        _ => true,
    }
}

/// Classifies a packet, filling `out` for TCP.
/// An IPv4 segment with ACK alone (or ACK and PSH) in an untagged frame,
/// checked in place by [`data_v4`]: what the programs' data fast path
/// takes. Its numbers stay in the packet until [`DataV4::segment`] reads
/// them (after the lookup, so they take no room on the stack across it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataV4 {
    /// The source address as it lies in the packet.
    pub src: [u8; 4],
    pub dst: [u8; 4],
    /// Network byte order.
    pub src_port: u16,
    /// Network byte order.
    pub dst_port: u16,
    flags: u8,
    payload_len: u32,
    /// The TCP header, checked to lie inside the packet.
    tcp: *const u8,
}

impl DataV4 {
    /// The segment [`parse`] would give (its side
    /// [`crate::machine::Side::Ingress`]: the caller sets it).
    #[inline(always)]
    pub fn segment(&self) -> Segment {
        use crate::machine::{Side, csum};
        let t = self.tcp;
        Segment {
            flags: self.flags,
            seq: u32::from_be(unsafe { word::<u32>(t.add(4)) }),
            ack: u32::from_be(unsafe { word::<u32>(t.add(8)) }),
            payload_len: self.payload_len,
            window: u16::from_be(unsafe { word::<u16>(t.add(14)) }),
            wscale: NO_WSCALE,
            side: Side::Ingress,
            csum: csum::UNCHECKED,
        }
    }
}

/// The data fast path's check: an IPv4 segment with ACK alone or ACK and
/// PSH, nonzero ports and no VLAN tag, taken in place; `None` for every
/// other packet, which [`parse`] then takes whole. It makes the same checks
/// on what it reads, and [`DataV4::segment`] reads what [`parse`] reads
/// (the fuzz target holds the two to agreeing).
#[inline(always)]
pub fn data_v4<C: Packet>(ctx: &C) -> Option<DataV4> {
    use crate::machine::tcp;
    let eth: *const EthHdr = ptr_at(ctx, 0)?;
    if u16::from_be(unsafe { word::<u16>((&raw const (*eth).ether_type).cast()) }) != ETH_P_IP {
        return None;
    }
    let off = EthHdr::LEN;
    let ip_ptr: *const Ipv4Hdr = ptr_at(ctx, off)?;
    let ip = unsafe { &*ip_ptr };
    let b = ip_ptr.cast::<u8>();
    let ihl = ip.ihl() as usize;
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN || ip.proto != IPPROTO_TCP {
        return None;
    }
    if u16::from_be(unsafe { word::<u16>(b.add(6)) }) & 0x1fff != 0 {
        return None;
    }
    let tot_len = u16::from_be(unsafe { word::<u16>(b.add(2)) }) as usize;
    if tot_len > ctx.len() - off {
        return None;
    }
    let l4_len = tot_len.checked_sub(ihl)?;
    let th_ptr: *const TcpHdr = ptr_at(ctx, off + (ihl & 0x3c))?;
    let doff = unsafe { &*th_ptr }.doff() as usize * 4;
    if doff < TcpHdr::LEN || doff > l4_len {
        return None;
    }
    let t = th_ptr.cast::<u8>();
    let flags = unsafe { *t.add(13) };
    let (src_port, dst_port) = unsafe { (word::<u16>(t), word::<u16>(t.add(2))) };
    if flags & !tcp::PSH != tcp::ACK || src_port == 0 || dst_port == 0 {
        return None;
    }
    let addr = |at: usize| unsafe { word::<u32>(b.add(at)) }.to_ne_bytes();
    Some(DataV4 {
        src: addr(12),
        dst: addr(16),
        src_port,
        dst_port,
        flags,
        payload_len: (l4_len - doff) as u32,
        tcp: t,
    })
}

#[inline(always)]
pub fn parse<C: Packet>(ctx: &C, out: &mut Facts) -> Parsed {
    let (off, proto) = match l3(ctx) {
        Ok(v) => v,
        Err(p) => return p,
    };
    let r = match proto {
        ETH_P_IP => ipv4(ctx, off, out),
        ETH_P_IPV6 => ipv6(ctx, off, out),
        _ => return Parsed::NotTcp,
    };
    match r {
        Ok(p) | Err(p) => p,
    }
}

/// An IPv4 address (as read, in network order) into an
/// [`Endpoint`](crate::flow::Endpoint)'s 16 bytes (8-aligned), the rest
/// zero: two word stores. Written out, since
/// the BPF backend turns an array fill (`= [0; 16]`) into a call of a
/// byte-at-a-time `memset`.
#[inline(always)]
fn put_v4(to: &mut [u8; 16], addr: u32) {
    let words = to.as_mut_ptr().cast::<u64>();
    // SAFETY: `to` is the first field of an `Endpoint`, aligned to 8.
    unsafe {
        words.write(u64::from(addr));
        words.add(1).write(0);
    }
}

/// An IPv6 address from the packet into an
/// [`Endpoint`](crate::flow::Endpoint)'s 16 bytes: two word moves.
#[inline(always)]
fn put_v6(to: &mut [u8; 16], from: *const u8) {
    let words = to.as_mut_ptr().cast::<u64>();
    // SAFETY: `to` is the first field of an `Endpoint`, aligned to 8;
    // `from` is 16 bytes in the packet (bounds-checked).
    unsafe {
        words.write(word::<u64>(from));
        words.add(1).write(word::<u64>(from.add(8)));
    }
}

#[inline(always)]
fn ipv4<C: Packet>(ctx: &C, off: usize, out: &mut Facts) -> Result<Parsed, Parsed> {
    let ip_ptr: *const Ipv4Hdr = ptr_at(ctx, off).ok_or(Parsed::Malformed)?;
    let ip = unsafe { &*ip_ptr };
    let b = ip_ptr.cast::<u8>();
    let ihl = ip.ihl() as usize;
    if ip.version() != 4 || ihl < Ipv4Hdr::LEN {
        return Err(Parsed::Malformed);
    }
    if ip.proto != IPPROTO_TCP {
        return Ok(Parsed::NotTcp);
    }
    // Bytes 6..8: flags and fragment offset (its low 13 bits).
    if u16::from_be(unsafe { word::<u16>(b.add(6)) }) & 0x1fff != 0 {
        return Ok(Parsed::NotTcp);
    }
    let tot_len = u16::from_be(unsafe { word::<u16>(b.add(2)) }) as usize;
    let avail = ctx.len() - off;
    if tot_len > avail {
        return Err(Parsed::Malformed);
    }
    out.family = AF_INET;
    put_v4(&mut out.src.addr, unsafe { word::<u32>(b.add(12)) });
    put_v4(&mut out.dst.addr, unsafe { word::<u32>(b.add(16)) });
    out.l3 = off as u16;
    // IHL is 4 bits of 32-bit words: at most 60 bytes, which the verifier sees.
    let l4 = off + (ihl & 0x3c);
    let l4_len = match tot_len.checked_sub(ihl) {
        Some(n) => n,
        None => return Err(Parsed::Malformed),
    };
    tcp(ctx, l4, l4_len, out)
}

#[inline(always)]
fn ipv6<C: Packet>(ctx: &C, off: usize, out: &mut Facts) -> Result<Parsed, Parsed> {
    let ip: *const Ipv6Hdr = ptr_at(ctx, off).ok_or(Parsed::Malformed)?;
    let ip = unsafe { &*ip };
    if ip.vcf[0] >> 4 != 6 {
        return Err(Parsed::Malformed);
    }
    out.family = AF_INET6;
    put_v6(&mut out.src.addr, ip.src_addr.as_ptr());
    put_v6(&mut out.dst.addr, ip.dst_addr.as_ptr());
    out.l3 = off as u16;
    let mut payload = ip.payload_len() as usize;
    if payload > ctx.len() - off - Ipv6Hdr::LEN {
        return Err(Parsed::Malformed);
    }
    let mut next = ip.next_hdr;
    let mut l4 = off + Ipv6Hdr::LEN;
    for _ in 0..MAX_EXT {
        let len = match next {
            IPPROTO_TCP => return tcp(ctx, l4, payload, out),
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let h: *const [u8; 2] = ptr_at(ctx, l4).ok_or(Parsed::Malformed)?;
                let h = unsafe { *h };
                next = h[0];
                (h[1] as usize + 1) * 8
            }
            IPV6_FRAGMENT => {
                let h: *const [u8; 4] = ptr_at(ctx, l4).ok_or(Parsed::Malformed)?;
                let h = unsafe { *h };
                // Fragment offset: the upper 13 bits of bytes 2..4.
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Ok(Parsed::NotTcp);
                }
                next = h[0];
                8
            }
            _ => return Ok(Parsed::NotTcp),
        };
        payload = match payload.checked_sub(len) {
            Some(p) => p,
            None => return Err(Parsed::Malformed),
        };
        // An extension header is at most 2 KiB; the mask keeps the offset
        // visibly bounded for the verifier.
        l4 = (l4 + len) & 0x3fff;
    }
    if next == IPPROTO_TCP {
        return tcp(ctx, l4, payload, out);
    }
    Err(Parsed::Malformed)
}

#[inline(always)]
fn tcp<C: Packet>(ctx: &C, off: usize, l4_len: usize, out: &mut Facts) -> Result<Parsed, Parsed> {
    let th_ptr: *const TcpHdr = ptr_at(ctx, off).ok_or(Parsed::Malformed)?;
    let th = unsafe { &*th_ptr };
    let doff = th.doff() as usize * 4;
    if doff < TcpHdr::LEN || doff > l4_len {
        return Err(Parsed::Malformed);
    }
    // Byte 13 of the header is the flag byte; read through the pointer that
    // was bounds-checked, so the verifier sees the check.
    let b = th_ptr.cast::<u8>();
    let flags = unsafe { *b.add(13) };
    out.l4 = off as u16;
    out.th_len = doff as u8;
    // Ports stay in network order.
    out.src.port = unsafe { word::<u16>(b) };
    out.dst.port = unsafe { word::<u16>(b.add(2)) };
    let wscale = if flags & crate::machine::tcp::SYN != 0 && doff > TcpHdr::LEN {
        syn_wscale(ctx, off, doff, &mut out.cookie.tcp)
    } else {
        NO_WSCALE
    };
    let payload_len = (l4_len - doff) as u32;
    let closes = flags & (crate::machine::tcp::RST | crate::machine::tcp::FIN) != 0;
    let csum = if closes && payload_len == 0 && ctx.checks_checksums() {
        header_checksum(ctx, off, doff, out)
    } else {
        crate::machine::csum::UNCHECKED
    };
    out.seg = Segment {
        flags,
        seq: u32::from_be(unsafe { word::<u32>(b.add(4)) }),
        ack: u32::from_be(unsafe { word::<u32>(b.add(8)) }),
        payload_len,
        window: u16::from_be(unsafe { word::<u16>(b.add(14)) }),
        wscale,
        side: crate::machine::Side::Ingress,
        csum,
    };
    Ok(Parsed::Tcp)
}

/// The TCP checksum of a bare RST or FIN (no data), over the
/// pseudo-header (`out`'s addresses, filled in by the IP parsers) and its
/// header (copied into `out.cookie.tcp`, free on any segment but a SYN):
/// the kernel discards a segment whose checksum is wrong, so the gate must
/// not act on it. One that carries data is not checked here: an RST with
/// data (RFC 9293 allows it; Linux sends none) moves nothing, a FIN with
/// data counts once this host acknowledges it.
#[inline(always)]
fn header_checksum<C: Packet>(ctx: &C, off: usize, doff: usize, out: &mut Facts) -> u8 {
    use crate::machine::csum;
    if !ctx.load(off, &mut out.cookie.tcp, doff) {
        return csum::UNCHECKED;
    }
    // Constant trip counts and indexes, so the BPF code has no bounds checks.
    let addrs = if out.family == AF_INET { 2 } else { 8 };
    let (src, dst) = (&out.src.addr, &out.dst.addr);
    let Some(header) = ctx.header_sum(&out.cookie.tcp, doff) else {
        return csum::UNCHECKED;
    };
    let mut sum = 6 + doff as u32 + header;
    for i in 0..8 {
        if i < addrs {
            sum += u32::from(u16::from_be_bytes([src[2 * i], src[2 * i + 1]]));
            sum += u32::from(u16::from_be_bytes([dst[2 * i], dst[2 * i + 1]]));
        }
    }
    if fold(sum) == 0xffff {
        csum::GOOD
    } else {
        csum::BAD
    }
}

/// The window scale a SYN (or SYN-ACK) offers, from its options, copied
/// out of the packet (see [`wscale_option`]).
#[inline(always)]
fn syn_wscale<C: Packet>(ctx: &C, off: usize, doff: usize, buf: &mut [u8; TCP_HEADER_BUF]) -> u8 {
    if !ctx.load(off, buf, doff) {
        return NO_WSCALE;
    }
    wscale_option(buf, doff - TcpHdr::LEN)
}

/// The window scale among the `len` option bytes after the fixed header
/// in `buf`, read where the common stacks put it, so that it costs a few
/// reads at fixed places (a walk of the options, even with `bpf_loop`, at
/// least doubled the programs' verification time):
/// - `MSS, NOP, WS` (Windows, macOS, the BSDs);
/// - `MSS, NOP, NOP, SACK_PERM, NOP, WS` (Linux without timestamps);
/// - `MSS, SACK_PERM, TS, NOP, WS` and `MSS, NOP, NOP, TS, NOP, WS` (Linux).
///
/// The MSS alone (or nothing) means no window scale ([`NO_WSCALE`]); any
/// other layout gives the largest shift, [`MAX_WSCALE`]: the window the
/// gate assumes is then never narrower than the real one, only wider.
///
/// A function of its own in the kernel programs: its reads need registers
/// the programs would otherwise spill to a frame at the bottom of their
/// deepest chain of calls.
#[inline(never)]
pub fn wscale_option(buf: &[u8; TCP_HEADER_BUF], len: usize) -> u8 {
    let o = |i: usize| buf[TcpHdr::LEN + i];
    if len == 0 || (len == 4 && o(0) == 2 && o(1) == 4) {
        return NO_WSCALE;
    }
    if len >= 8 && o(0) == 2 && o(1) == 4 {
        if o(4) == 1 && o(5) == 3 && o(6) == 3 {
            return o(7);
        }
        if len >= 12 && o(6) == 4 && o(7) == 2 && o(8) == 1 && o(9) == 3 && o(10) == 3 {
            return o(11);
        }
        if len >= 20 && o(6) == 8 && o(7) == 10 && o(16) == 1 && o(17) == 3 && o(18) == 3 {
            return o(19);
        }
    }
    MAX_WSCALE
}

/// A packet in memory on the host, for tests and fuzzing.
pub struct Bytes<'a>(pub &'a [u8]);

impl Packet for Bytes<'_> {
    fn data(&self) -> usize {
        self.0.as_ptr() as usize
    }
    fn data_end(&self) -> usize {
        self.0.as_ptr() as usize + self.0.len()
    }
    fn len(&self) -> usize {
        self.0.len()
    }
    fn load(&self, offset: usize, to: &mut [u8; TCP_HEADER_BUF], len: usize) -> bool {
        match self.0.get(offset..offset + len) {
            Some(b) if len <= 60 => {
                to[..len].copy_from_slice(b);
                true
            }
            _ => false,
        }
    }
    fn checks_checksums(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(o: &[u8]) -> ([u8; TCP_HEADER_BUF], usize) {
        let mut b = [0u8; TCP_HEADER_BUF];
        b[20..20 + o.len()].copy_from_slice(o);
        (b, o.len())
    }

    #[test]
    fn window_scale_where_the_common_stacks_put_it() {
        let mss = [2, 4, 0x05, 0xb4];
        let ts = [8, 10, 1, 2, 3, 4, 0, 0, 0, 0];
        let cases: [(&[&[u8]], u8); 7] = [
            // Windows, macOS, BSD.
            (&[&mss, &[1, 3, 3, 8]], 8),
            // Linux without timestamps.
            (&[&mss, &[1, 1, 4, 2, 1, 3, 3, 7]], 7),
            // Linux.
            (&[&mss, &[4, 2], &ts, &[1, 3, 3, 9]], 9),
            (&[&mss, &[1, 1], &ts, &[1, 3, 3, 6]], 6),
            // The MSS alone, or nothing: no scaling.
            (&[&mss], NO_WSCALE),
            (&[], NO_WSCALE),
            // Another order: the widest window.
            (&[&[3, 3, 2], &[1], &mss], MAX_WSCALE),
        ];
        for (parts, want) in cases {
            let all: std::vec::Vec<u8> = parts.concat();
            let (b, len) = opts(&all);
            assert_eq!(wscale_option(&b, len), want, "{all:?}");
        }
    }

    /// An IPv4 frame, Ethernet to TCP: `flags`, `payload` bytes of data.
    fn v4_segment(flags: u8, payload: usize) -> std::vec::Vec<u8> {
        let mut f = std::vec![0u8; 14 + 20 + 20 + payload];
        f[12..14].copy_from_slice(&ETH_P_IP.to_be_bytes());
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((40 + payload) as u16).to_be_bytes());
        f[23] = IPPROTO_TCP;
        f[26..30].copy_from_slice(&[198, 18, 0, 2]);
        f[30..34].copy_from_slice(&[198, 18, 0, 1]);
        f[34..36].copy_from_slice(&40_000u16.to_be_bytes());
        f[36..38].copy_from_slice(&80u16.to_be_bytes());
        f[38..42].copy_from_slice(&1_001u32.to_be_bytes());
        f[42..46].copy_from_slice(&9_001u32.to_be_bytes());
        f[46] = 0x50;
        f[47] = flags;
        f[48..50].copy_from_slice(&502u16.to_be_bytes());
        f
    }

    #[cfg(feature = "model")]
    #[test]
    fn the_fast_paths_parse_gives_what_the_whole_parser_gives() {
        use crate::machine::tcp;
        let mut facts = crate::fuzz::empty_facts();
        for flags in [tcp::ACK, tcp::ACK | tcp::PSH] {
            let f = v4_segment(flags, 100);
            let d = data_v4(&Bytes(&f)).expect("an ACK with data is the fast path's");
            assert!(parse(&Bytes(&f), &mut facts) == Parsed::Tcp);
            assert_eq!(d.segment(), facts.seg);
            assert_eq!(
                (&d.src[..], &d.dst[..]),
                (&facts.src.addr[..4], &facts.dst.addr[..4])
            );
            assert_eq!((d.src_port, d.dst_port), (facts.src.port, facts.dst.port));
            assert_eq!(d.segment().payload_len, 100);
        }
        // Everything else is the whole parser's: other flags, a cut frame,
        // a length past the frame, a tag, a zero port.
        for flags in [
            tcp::SYN,
            tcp::SYN | tcp::ACK,
            tcp::FIN | tcp::ACK,
            tcp::RST,
            0,
        ] {
            assert_eq!(data_v4(&Bytes(&v4_segment(flags, 0))), None, "{flags:#x}");
        }
        let f = v4_segment(tcp::ACK, 10);
        assert_eq!(data_v4(&Bytes(&f[..f.len() - 11])), None);
        let mut tagged = f[..12].to_vec();
        tagged.extend_from_slice(&[0x81, 0, 0, 10]);
        tagged.extend_from_slice(&f[12..]);
        assert_eq!(data_v4(&Bytes(&tagged)), None);
        assert!(parse(&Bytes(&tagged), &mut facts) == Parsed::Tcp);
        let mut zero = f.clone();
        zero[34..36].fill(0);
        assert_eq!(data_v4(&Bytes(&zero)), None);
    }
}
