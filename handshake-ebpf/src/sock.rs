//! Asking the kernel about a flow the gate has no entry for
//! (`unknown-flows=verify`): is there a socket for this exact 4-tuple in
//! the interface's namespace, and if only its listener, does the segment
//! carry a SYN cookie the kernel accepts? Every socket the lookup returns
//! is released on every path.

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_tuple, tcphdr},
    helpers::generated::{
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_check_syncookie, bpf_xdp_load_bytes,
    },
    programs::XdpContext,
};
use handshake_common::{
    flow::AF_INET,
    machine::{self, Lookup, sk_state},
};

use crate::parse::Facts;

/// `BPF_F_CURRENT_NETNS`: look the socket up in the device's namespace.
const CURRENT_NETNS: u64 = u64::MAX;

/// The lookup tuple of the packet in `f` (its source and destination as
/// they are on the wire), and its size for the helper.
#[inline(always)]
pub fn tuple(f: &Facts) -> (bpf_sock_tuple, u32) {
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let word = |a: &[u8; 16], i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
    let size = if f.family == AF_INET {
        let t = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
        t.saddr = word(&f.src.addr, 0);
        t.daddr = word(&f.dst.addr, 0);
        t.sport = f.src.port;
        t.dport = f.dst.port;
        12
    } else {
        let t = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
        for w in 0..4 {
            t.saddr[w] = word(&f.src.addr, 4 * w);
            t.daddr[w] = word(&f.dst.addr, 4 * w);
        }
        t.sport = f.src.port;
        t.dport = f.dst.port;
        36
    };
    (tuple, size)
}

/// The socket (or listener) an arriving packet is for, or null. The
/// caller releases it.
#[inline(always)]
pub fn find(ctx: &XdpContext, f: &Facts) -> *mut bpf_sock {
    let (mut t, size) = tuple(f);
    unsafe { bpf_skc_lookup_tcp(ctx.ctx.cast(), &mut t, size, CURRENT_NETNS, 0) }
}

/// What the kernel has for the arriving packet in `f`.
#[inline(never)]
pub fn lookup(ctx: &XdpContext, f: &mut Facts) -> Lookup {
    let sk = find(ctx, f);
    if sk.is_null() {
        return Lookup::Nothing;
    }
    let state = unsafe { (*sk).state } as u8;
    let answer = if state != sk_state::LISTEN {
        Lookup::Socket(state)
    } else {
        Lookup::Listener {
            cookie: machine::cookie_candidate(&f.seg) && cookie_ok(ctx, f, sk),
        }
    };
    unsafe { bpf_sk_release(sk.cast()) };
    answer
}

/// Whether the ACK in `f` carries a SYN cookie listener `sk` accepts: the
/// IP header and the fixed TCP header copied out, then checked by the
/// kernel (`bpf_tcp_check_syncookie`, which wants cookies sent in the last
/// two minutes, by the kernel or through `bpf_tcp_gen_syncookie`).
#[inline(always)]
fn cookie_ok(ctx: &XdpContext, f: &mut Facts, sk: *mut bpf_sock) -> bool {
    let xdp = ctx.ctx;
    let ip_len: u32 = if f.family == AF_INET { 20 } else { 40 };
    let (l3, l4) = (f.l3 as u32, f.l4 as u32);
    let c = &mut f.cookie;
    let loaded = unsafe {
        bpf_xdp_load_bytes(xdp, l3, c.frame.as_mut_ptr().cast(), ip_len) == 0
            && bpf_xdp_load_bytes(xdp, l4, c.tcp.as_mut_ptr().cast(), 20) == 0
    };
    loaded
        && unsafe {
            bpf_tcp_check_syncookie(
                sk.cast(),
                c.frame.as_mut_ptr().cast(),
                ip_len,
                c.tcp.as_mut_ptr().cast::<tcphdr>(),
                20,
            )
        } == 0
}
