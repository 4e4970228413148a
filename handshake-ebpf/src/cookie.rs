//! `overflow=cookie`: answers a SYN over a cap with a SYN-ACK carrying a
//! SYN cookie, from XDP, keeping no state. The kernel makes the cookie
//! (`bpf_tcp_gen_syncookie`, for the listening socket the SYN is for), so
//! it accepts the client's ACK and creates the connection; the SYN itself
//! never reaches it. Needs `net.ipv4.tcp_syncookies=2` in the namespace,
//! which the controller sets.
//!
//! The headers are copied into scratch memory and the reply written back
//! with `bpf_xdp_load_bytes` / `bpf_xdp_store_bytes` (two calls: the
//! headers out, the reply in), which check their bounds at run time: no
//! length read from the packet has to be proven to the verifier against
//! the packet's end. A reply longer than the SYN
//! (an MSS option where the SYN had none) takes its room from the frame's
//! headroom, which XDP always has, not from its tailroom, which a frame
//! may lack.

use aya_ebpf::{
    bindings::{tcphdr, xdp_md},
    helpers::generated::{
        bpf_sk_release, bpf_tcp_gen_syncookie, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
        bpf_xdp_load_bytes, bpf_xdp_store_bytes,
    },
    programs::XdpContext,
};
use handshake_common::{
    Config,
    cookie::{self, MAX_REPLY, Options, Reply},
    flow::AF_INET,
    parse::COOKIE_REPLY_BUF,
};

use crate::parse::Facts;

/// How answering went.
pub enum Outcome {
    /// The SYN became the SYN-ACK: transmit it (`XDP_TX`).
    Sent,
    /// Nothing listens on the SYN's port: the kernel would only reset it.
    NoListener,
    /// No cookie could be made (the kernel refused one, or the headers
    /// could not be read): the SYN is untouched, pass it.
    Failed,
}

/// Answers the SYN in `f` (parsed from this frame) with a cookie SYN-ACK,
/// through [`gate_cookie`].
#[inline(always)]
pub fn reply(ctx: &XdpContext, f: &mut Facts, cfg: &Config) -> Outcome {
    match gate_cookie(ctx.ctx, f, cfg) {
        SENT => Outcome::Sent,
        NO_LISTENER => Outcome::NoListener,
        _ => Outcome::Failed,
    }
}

const SENT: u32 = 0;
const NO_LISTENER: u32 = 1;
const FAILED: u32 = 2;

/// The cookie path as a global BPF function (exported, see
/// `handshake-ebpf/build.rs`): the verifier checks it once, on its own,
/// rather than again for each way the XDP program reaches it (that was
/// more than a quarter of the program's verification).
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn gate_cookie(ctx: *mut xdp_md, f: *mut Facts, cfg: *const Config) -> u32 {
    // The verifier takes a global function's pointers as possibly null.
    if f.is_null() || cfg.is_null() {
        return FAILED;
    }
    let ctx = XdpContext::new(ctx);
    match answer(&ctx, unsafe { &mut *f }, unsafe { &*cfg }) {
        Outcome::Sent => SENT,
        Outcome::NoListener => NO_LISTENER,
        Outcome::Failed => FAILED,
    }
}

/// Answers the SYN in `f` (parsed from this frame) with a cookie SYN-ACK.
/// Two copies between the frame and scratch memory (three when IP options
/// or extension headers lie before the TCP header): the headers out, the
/// reply back in, each in one piece.
#[inline(always)]
fn answer(ctx: &XdpContext, f: &mut Facts, cfg: &Config) -> Outcome {
    let xdp = ctx.ctx;
    let (l3, l4) = (f.l3 as u32, f.l4 as u32);
    // Two VLAN tags at most; the mask, on a value the optimiser cannot
    // see through (it would drop the mask after the check), shows the
    // verifier the bound the parser guarantees.
    if !(14..=22).contains(&l3) {
        return Outcome::Failed;
    }
    let l3 = core::hint::black_box(l3) & 0x1f;
    let v4 = f.family == AF_INET;
    let ip_len: u32 = if v4 { 20 } else { 40 };
    // The TCP header's length as the parser found it (20 to 60), in a form
    // whose bounds the verifier derives itself (20 to 80).
    let th_len = f.th_len as u32;
    if !(20..=60).contains(&th_len) {
        return Outcome::Failed;
    }
    let th_len = 20 + (core::hint::black_box(th_len - 20) & 0x3c);
    // Where the TCP header goes in the frame buffer: right after the fixed
    // IP header (at most 62). Masked to one range for both families (20 to
    // 83), so that from here on the verifier's states for IPv4 and IPv6
    // are alike and it walks the options once, not once for each.
    let tcp_at = 20 + (core::hint::black_box(l3 + ip_len - 20) & 0x3f);
    let c = &mut f.cookie;
    let frame = c.frame.as_mut_ptr();
    // The link-layer, IP and TCP headers in one copy; when IPv4 options or
    // IPv6 extension headers lie between the last two, the TCP header in a
    // copy of its own.
    let copied = unsafe {
        if l4 == tcp_at {
            bpf_xdp_load_bytes(xdp, 0, frame.cast(), tcp_at + th_len) == 0
        } else {
            bpf_xdp_load_bytes(xdp, 0, frame.cast(), tcp_at) == 0
                && bpf_xdp_load_bytes(xdp, l4, frame.add(tcp_at as usize).cast(), th_len) == 0
        }
    };
    if !copied {
        return Outcome::Failed;
    }

    let value = match make_cookie(ctx, f, l3, ip_len, tcp_at, th_len) {
        Ok(v) => v,
        Err(o) => return o,
    };
    let c = &mut f.cookie;
    // SAFETY: the options start at most 103 bytes in and the walk reads 64
    // bytes; the buffer holds 168.
    let tcp = unsafe { c.frame.as_ptr().add(tcp_at as usize) };
    let opts = unsafe { &*tcp.add(20).cast::<[u8; cookie::OPTIONS_BUF]>() };
    // The options' length from the copy: a value of its own, not linked to
    // `th_len`, which the helper call made precise, so the verifier can
    // prune the walk's states whatever it learns about this one.
    let opt_len = ((unsafe { *tcp.add(12) } >> 4) as usize * 4).saturating_sub(20);
    let syn = cookie::parse_options(opts, opt_len);
    let host = Options::from_bits(cfg.cookie_options);
    // The coarse clock, read only for a timestamp cookie: behind the TCP
    // clock by at most a tick, so the timestamp is never ahead of the
    // kernel's own next one.
    let now_ns = if syn.tsval.is_some() && host.timestamps {
        crate::clock::now()
    } else {
        0
    };
    let reply = Reply {
        family: f.family,
        client: &f.src,
        server: &f.dst,
        client_seq: f.seg.seq,
        cookie: value as u32,
        mss: (value >> 32) as u16,
        syn,
        host,
        now_ns,
    };
    // The reply goes over the SYN's IP header, after the link-layer one,
    // whose MACs swap.
    for i in 0..6 {
        c.frame.swap(i, 6 + i);
    }
    // SAFETY: `l3` is at most 31 and the frame buffer holds 32 bytes and
    // the reply's room.
    let out = unsafe {
        &mut *c
            .frame
            .as_mut_ptr()
            .add(l3 as usize)
            .cast::<[u8; COOKIE_REPLY_BUF]>()
    };
    let n = cookie::build(&reply, out) as u32;
    write_reply(ctx, c, l3, n)
}

/// Finds the listening socket the SYN is for and has the kernel make its
/// cookie from the copied headers (the IP header at `l3` in the frame
/// buffer, the TCP header at `tcp_at`): the cookie in the low 32 bits, the
/// MSS it encodes above.
#[inline(always)]
fn make_cookie(
    ctx: &XdpContext,
    f: &mut Facts,
    l3: u32,
    ip_len: u32,
    tcp_at: u32,
    th_len: u32,
) -> Result<u64, Outcome> {
    let sk = crate::sock::find(ctx, f);
    if sk.is_null() {
        return Err(Outcome::NoListener);
    }
    let c = &mut f.cookie;
    let value = unsafe {
        bpf_tcp_gen_syncookie(
            sk.cast(),
            c.frame.as_mut_ptr().add(l3 as usize).cast(),
            ip_len,
            c.frame.as_mut_ptr().add(tcp_at as usize).cast::<tcphdr>(),
            th_len,
        )
    };
    unsafe { bpf_sk_release(sk.cast()) };
    if value < 0 {
        return Err(Outcome::Failed);
    }
    Ok(value as u64)
}

/// Makes the frame the reply: sized to the link-layer header (its MACs
/// already swapped) and the `n` bytes of IP and TCP headers built after it
/// in `c.frame`, then written in one piece. A frame too short grows at its
/// head; a longer one is cut at its tail.
#[inline(always)]
fn write_reply(
    ctx: &XdpContext,
    c: &mut handshake_common::parse::CookieScratch,
    l3: u32,
    n: u32,
) -> Outcome {
    let xdp = ctx.ctx;
    // The length goes to a helper as a size, which the verifier must see
    // bounded and non-zero on the very value passed.
    if !(40..=MAX_REPLY as u32).contains(&n) {
        return Outcome::Failed;
    }
    // The bounds the verifier sees come from the masks themselves: a
    // link-layer header of at most 31 bytes and a reply of 40 to 103, in
    // the 168-byte buffer.
    let n = 40 + (core::hint::black_box(n - 40) & 0x3f);
    let l3 = core::hint::black_box(l3) & 0x1f;
    let want = l3 + n;
    let have = (ctx.data_end() - ctx.data()) as u32;
    if have < want {
        // Nothing was written yet: a failure here leaves the SYN as it was.
        if unsafe { bpf_xdp_adjust_head(xdp, -((want - have) as i32)) } != 0 {
            return Outcome::Failed;
        }
    } else if have > want {
        // Cannot fail for a frame this long; should it, the IP length
        // still says where the reply ends and the rest is padding.
        let _ = unsafe { bpf_xdp_adjust_tail(xdp, -((have - want) as i32)) };
    }
    // Inside the frame just sized; a failure would leave a frame that is
    // neither SYN nor SYN-ACK, so it is dropped, not passed.
    if unsafe { bpf_xdp_store_bytes(xdp, 0, c.frame.as_mut_ptr().cast(), want) } == 0 {
        Outcome::Sent
    } else {
        Outcome::NoListener
    }
}
