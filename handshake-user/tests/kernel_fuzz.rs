//! The kernel-differential fuzz: the gate's record against the kernel's own
//! sockets, segment by segment. A real connection between the lab's client
//! and server, the gate on the server's interface in enforce mode (and, in
//! the second test, on the client's); random segments on the connection's
//! own 4-tuple injected from the other end's address with a raw socket: FINs and data past the right edge of the
//! server's window, FINs inside it but behind a gap, RSTs inside it and far
//! outside, a bare FIN and an RST at exactly the next number with a wrong
//! checksum, SYNs on the live tuple, ACKs of data never sent, old
//! duplicates. None of these is one the server's kernel acts on, so after
//! each one both of the gate's columns must still be what the kernel
//! reports for each end (`/proc/net/tcp` of each namespace, read in
//! process), and every few segments a round trip through the connection
//! must still work (the gate dropped nothing the kernel would take). Each
//! connection then closes for real, client first, and the columns must
//! follow the kernel's through TIME_WAIT; the next connection reuses the
//! same 4-tuple.
//!
//! `HSG_KFUZZ_SEED` replays a run, `HSG_KFUZZ_SEGMENTS` sets its length
//! (5,000 by default); a failure prints the seed and the segments of the
//! connection that failed. Needs root; `cargo xtask test` runs it.

mod common;

use std::io::{Read, Seek, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use handshake_common::flow::{AF_INET, Endpoint};
use handshake_common::{FlowEntry, FlowKey, TcpState};
use handshake_lab::{Lab, Netns};
use handshake_user::gate::Gate;
use socket2::{Domain, Protocol, Socket, Type};

const PORT: u16 = 8080;
const CLIENT_PORT: u16 = 41_000;
/// Segments per connection before it closes.
const PER_CONNECTION: usize = 500;
/// A round trip through the connection every this many segments.
const ECHO_EVERY: usize = 25;

/// `/proc/net/tcp` of one namespace, opened there, read from anywhere.
struct ProcTcp(std::fs::File);

impl ProcTcp {
    fn open(ns: &Netns) -> ProcTcp {
        ns.run(|| Ok(std::fs::File::open("/proc/thread-self/net/tcp")?))
            .map(ProcTcp)
            .expect("open /proc/net/tcp in the namespace")
    }

    /// The state of the socket from `local` to `peer` (CLOSED: none).
    fn state(&mut self, local: SocketAddr, peer: SocketAddr) -> TcpState {
        let mut text = String::new();
        self.0.rewind().unwrap();
        self.0.read_to_string(&mut text).unwrap();
        let hex = |a: SocketAddr| match a {
            SocketAddr::V4(v) => format!(
                "{:08X}:{:04X}",
                u32::from_le_bytes(v.ip().octets()),
                v.port()
            ),
            SocketAddr::V6(_) => unreachable!("IPv4 only"),
        };
        let (l, p) = (hex(local), hex(peer));
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 3 && f[1] == l && f[2] == p {
                return match f[3] {
                    "01" => TcpState::Established,
                    "02" => TcpState::SynSent,
                    "03" => TcpState::SynRcvd,
                    "04" => TcpState::FinWait1,
                    "05" => TcpState::FinWait2,
                    "06" => TcpState::TimeWait,
                    "08" => TcpState::CloseWait,
                    "09" => TcpState::LastAck,
                    "0A" => TcpState::Listen,
                    "0B" => TcpState::Closing,
                    _ => TcpState::Closed,
                };
            }
        }
        TcpState::Closed
    }
}

/// What is injected, relative to the gate's record of the connection.
#[derive(Clone, Copy, Debug)]
enum Kind {
    FinPastEdge,
    DataPastEdge,
    FinBehindGap,
    FinBadChecksum,
    RstBadChecksum,
    RstInWindow,
    RstFarOut,
    SynOnLiveTuple,
    AckOfUnsentData,
    OldData,
}

const KINDS: [Kind; 10] = [
    Kind::FinPastEdge,
    Kind::DataPastEdge,
    Kind::FinBehindGap,
    Kind::FinBadChecksum,
    Kind::RstBadChecksum,
    Kind::RstInWindow,
    Kind::RstFarOut,
    Kind::SynOnLiveTuple,
    Kind::AckOfUnsentData,
    Kind::OldData,
];

#[derive(Clone, Debug)]
struct Injected {
    #[expect(dead_code, reason = "read through Debug, in the failing sequence")]
    kind: Kind,
    flags: u8,
    seq: u32,
    ack: u32,
    payload: usize,
    bad_csum: bool,
}

struct Fuzz<'a> {
    lab: &'a Lab,
    /// The gate is on the client's interface (segments are injected from
    /// the server's address), not the server's (from the client's).
    on_client: bool,
    gate: Gate,
    client_tcp: ProcTcp,
    server_tcp: ProcTcp,
    raw: Socket,
    client: SocketAddr,
    server: SocketAddr,
    key: FlowKey,
    rng: fastrand::Rng,
    seed: u64,
    /// This connection's segments, for the failure message.
    log: Vec<Injected>,
}

impl Fuzz<'_> {
    fn entry(&self) -> Option<FlowEntry> {
        self.gate
            .entry(&self.key)
            .expect("read the gate's entry")
            .map(|e| e.0)
    }

    /// The gate's columns and the kernel's, once they agree (or after the
    /// time a segment's effects take, when they do not).
    fn settled(&mut self, limit: Duration) -> Result<(), String> {
        let start = Instant::now();
        loop {
            let gate = self.entry().map(|e| (e.client_state(), e.server_state()));
            let kernel = (
                self.client_tcp.state(self.client, self.server),
                self.server_tcp.state(self.server, self.client),
            );
            let agree = match gate {
                Some(g) => g == kernel,
                None => kernel == (TcpState::Closed, TcpState::Closed),
            };
            if agree {
                return Ok(());
            }
            if start.elapsed() > limit {
                return Err(format!(
                    "the gate says {gate:?} (client, server), the kernel {kernel:?}; entry {:?}",
                    self.entry()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Arriving packets the gate has counted, every reason.
    fn seen(&self) -> u64 {
        self.gate
            .counters()
            .expect("read the counters")
            .packets
            .iter()
            .sum()
    }

    /// Waits until the gate has counted more than `before` arriving packets.
    fn wait_seen(&self, before: u64, limit: Duration) -> bool {
        let start = Instant::now();
        while self.seen() <= before {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{what}\nseed {} (HSG_KFUZZ_SEED={} replays it); this connection's segments, in order:\n{:#?}",
            self.seed, self.seed, self.log
        );
    }

    /// A segment of `kind`, aimed by the gate's record of the connection.
    fn draw(&mut self, e: &FlowEntry, kind: Kind) -> Injected {
        // The remote end sends; the gate's host receives.
        let (remote, local) = if self.on_client {
            (&e.server, &e.client)
        } else {
            (&e.client, &e.server)
        };
        let c = remote.end;
        let (ack, edge) = (local.ack, local.edge);
        let win = edge.wrapping_sub(ack).max(2);
        let r = &mut self.rng;
        let next_ack = local.end;
        let (flags, seq, ack, payload, bad_csum) = match kind {
            Kind::FinPastEdge => (
                FIN | ACK,
                edge.wrapping_add(r.u32(1..win)),
                next_ack,
                0,
                false,
            ),
            Kind::DataPastEdge => (
                ACK | PSH,
                edge.wrapping_add(r.u32(1..win)),
                next_ack,
                r.usize(1..200),
                false,
            ),
            // Far enough behind a gap that the connection's own data (a
            // few hundred bytes a connection) never fills it.
            Kind::FinBehindGap => (
                FIN | ACK,
                c.wrapping_add(r.u32(10_000..(win / 2).max(10_001))),
                next_ack,
                0,
                false,
            ),
            Kind::FinBadChecksum => (FIN | ACK, c, next_ack, 0, true),
            Kind::RstBadChecksum => (RST, c, 0, 0, true),
            Kind::RstInWindow => (RST, c.wrapping_add(r.u32(1..win)), 0, 0, false),
            Kind::RstFarOut => (RST, c.wrapping_add(r.u32(1 << 30..3 << 30)), 0, 0, false),
            Kind::SynOnLiveTuple => (SYN, r.u32(..), 0, 0, false),
            Kind::AckOfUnsentData => (
                ACK,
                c,
                next_ack.wrapping_add(r.u32(100_000..1 << 30)),
                0,
                false,
            ),
            Kind::OldData => (
                ACK | PSH,
                c.wrapping_sub(r.u32(70_000..1 << 28)),
                next_ack,
                r.usize(1..200),
                false,
            ),
        };
        Injected {
            kind,
            flags,
            seq,
            ack,
            payload,
            bad_csum,
        }
    }

    fn send(&self, s: &Injected) {
        let (from, to) = if self.on_client {
            (self.server, self.client)
        } else {
            (self.client, self.server)
        };
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (from.ip(), to.ip()) else {
            unreachable!("IPv4 only")
        };
        let mut tcp = etherparse::TcpHeader::new(from.port(), to.port(), s.seq, 64_240);
        tcp.fin = s.flags & FIN != 0;
        tcp.syn = s.flags & SYN != 0;
        tcp.rst = s.flags & RST != 0;
        tcp.psh = s.flags & PSH != 0;
        tcp.ack = s.flags & ACK != 0;
        tcp.acknowledgment_number = s.ack;
        let payload = vec![b'!'; s.payload];
        tcp.checksum = tcp
            .calc_checksum_ipv4_raw(src.octets(), dst.octets(), &payload)
            .unwrap();
        if s.bad_csum {
            tcp.checksum ^= 0x0400;
        }
        let ip = etherparse::Ipv4Header::new(
            (tcp.header_len() + payload.len()) as u16,
            64,
            etherparse::IpNumber::TCP,
            src.octets(),
            dst.octets(),
        )
        .unwrap();
        let mut pkt = Vec::new();
        ip.write(&mut pkt).unwrap();
        tcp.write(&mut pkt).unwrap();
        pkt.extend_from_slice(&payload);
        let to: socket2::SockAddr = SocketAddr::new(to.ip(), 0).into();
        self.raw.send_to(&pkt, &to).expect("inject a segment");
    }
}

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;

fn endpoint(a: SocketAddr) -> Endpoint {
    let IpAddr::V4(v) = a.ip() else {
        unreachable!("IPv4 only")
    };
    let mut addr = [0u8; 16];
    addr[..4].copy_from_slice(&v.octets());
    Endpoint {
        addr,
        port: a.port().to_be(),
    }
}

/// One round trip of `what` through the echo connection.
fn echo(s: &mut TcpStream, what: &[u8]) -> std::io::Result<()> {
    s.write_all(what)?;
    let mut back = vec![0u8; what.len()];
    s.read_exact(&mut back)?;
    if back != what {
        return Err(std::io::Error::other("the echo came back changed"));
    }
    Ok(())
}

/// The gate on the server's interface; segments from the client's address.
#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn the_record_follows_the_kernel_segment_by_segment() {
    run(false, 5_000);
}

/// The gate on the client's interface (this host is the client);
/// segments from the server's address.
#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn the_record_follows_the_kernel_on_the_clients_side_too() {
    run(true, 2_500);
}

/// The gate on the lab's client or server interface, detached (with its
/// pins) on drop, also when the test panics.
struct Placed<'a> {
    ns: &'a Netns,
    iface: &'a str,
}

impl<'a> Placed<'a> {
    fn attach(ns: &'a Netns, iface: &'a str) -> Placed<'a> {
        let (ok, _, err) = common::cli(&["--netns", &ns.name, "attach", iface]);
        assert!(ok, "attach failed: {err}");
        Placed { ns, iface }
    }

    fn status(&self) -> serde_json::Value {
        let (ok, out, err) =
            common::cli(&["--netns", &self.ns.name, "status", self.iface, "--json"]);
        assert!(ok, "status failed: {err}");
        serde_json::from_str(&out).expect("status --json")
    }
}

impl Drop for Placed<'_> {
    fn drop(&mut self) {
        let _ = common::cli(&["--netns", &self.ns.name, "detach", self.iface]);
    }
}

fn run(on_client: bool, default_total: usize) {
    let seed = std::env::var("HSG_KFUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    let total: usize = std::env::var("HSG_KFUZZ_SEGMENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_total);
    let place = if on_client { "client" } else { "server" };
    eprintln!("kernel fuzz, the gate on the {place}: seed {seed}, {total} segments");
    let lab = Lab::new("kfz").expect("lab");
    // Each connection reuses the last one's 4-tuple while it is in
    // TIME_WAIT on the client (which closes first).
    lab.client
        .sysctl("net.ipv4.tcp_tw_reuse=1")
        .expect("tcp_tw_reuse");
    let server = SocketAddr::new(Lab::SERVER_V4.into(), PORT);
    let client = SocketAddr::new(Lab::CLIENT_V4.into(), CLIENT_PORT);
    let listener = lab
        .server
        .run(move || Ok(TcpListener::bind(server)?))
        .expect("listen");
    let (gate_ns, gate_if, remote) = if on_client {
        (&lab.client, lab.client_if.as_str(), &lab.server)
    } else {
        (&lab.server, lab.server_if.as_str(), &lab.client)
    };
    let attached = Placed::attach(gate_ns, gate_if);
    let raw = remote
        .run(|| {
            Ok(Socket::new(
                Domain::IPV4,
                Type::RAW,
                Some(Protocol::from(libc::IPPROTO_RAW)),
            )?)
        })
        .expect("a raw socket in the remote end's namespace");
    let (key, _) = FlowKey::normalise(AF_INET, &endpoint(client), &endpoint(server));
    let mut f = Fuzz {
        lab: &lab,
        on_client,
        gate: Gate::open(gate_if, Some(&gate_ns.name)).expect("open the gate"),
        client_tcp: ProcTcp::open(&lab.client),
        server_tcp: ProcTcp::open(&lab.server),
        raw,
        client,
        server,
        key,
        rng: fastrand::Rng::with_seed(seed),
        seed,
        log: Vec::new(),
    };
    // How long a segment's effects may take to show (the checks return as
    // soon as the columns agree; an emulated machine is slow).
    let settle = Duration::from_secs(1);
    let mut injected = 0;
    let mut connections = 0;
    while injected < total {
        f.log.clear();
        let mut conn = f
            .lab
            .client
            .run(move || {
                let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&client.into())?;
                s.connect_timeout(&server.into(), Duration::from_secs(3))?;
                Ok(TcpStream::from(s))
            })
            .unwrap_or_else(|e| f.fail(&format!("connection {connections}: connect: {e:#}")));
        conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let (mut peer, _) = listener.accept().expect("accept");
        peer.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        let echoer = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            loop {
                match peer.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if peer.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        if echo(&mut conn, b"hello").is_err() {
            f.fail(&format!(
                "connection {connections}: the first round trip failed"
            ));
        }
        if let Err(e) = f.settled(settle) {
            f.fail(&format!(
                "connection {connections}, before any segment: {e}"
            ));
        }
        for i in 0..PER_CONNECTION.min(total - injected) {
            let Some(e) = f.entry() else {
                f.fail(&format!(
                    "connection {connections}: the gate lost the connection"
                ));
            };
            let kind = KINDS[f.rng.usize(..KINDS.len())];
            let s = f.draw(&e, kind);
            let before = f.seen();
            f.send(&s);
            f.log.push(s);
            injected += 1;
            // Compared only once the gate has had the segment.
            if !f.wait_seen(before, settle) {
                f.fail(&format!(
                    "connection {connections}, segment {i}: the gate never saw it"
                ));
            }
            if let Err(e) = f.settled(settle) {
                f.fail(&format!("connection {connections}, after segment {i}: {e}"));
            }
            if i % ECHO_EVERY == ECHO_EVERY - 1
                && echo(&mut conn, &[b'a' + (i % 26) as u8; 16]).is_err()
            {
                f.fail(&format!(
                    "connection {connections}, after segment {i}: a round trip failed (the gate dropped what the kernel takes?)"
                ));
            }
        }
        // The real close, client first: the columns follow the kernel's
        // to TIME_WAIT on the client and nothing left on the server.
        drop(conn);
        echoer.join().unwrap();
        if let Err(e) = f.settled(settle * 3) {
            f.fail(&format!(
                "connection {connections}, after the real close: {e}"
            ));
        }
        let status = attached.status();
        for r in ["bad_ack", "malformed", "no_conn", "bad_flags"] {
            assert_eq!(
                status["drops"][r], 0,
                "connection {connections}: {r} drops, seed {seed}: {status:#}"
            );
        }
        connections += 1;
        // tcp_tw_reuse takes a TIME_WAIT socket over after a second.
        std::thread::sleep(Duration::from_millis(1_100));
    }
    eprintln!(
        "kernel fuzz, the gate on the {place}: {injected} segments over {connections} connections, seed {seed}"
    );
    assert!(connections >= 2, "the tuple was never reused");
}
