//! Out-of-state traffic end to end: a real server and client in two
//! network namespaces, the gate on the server's interface, and the
//! kernel's own counters and sockets (`nstat`, `ss`) as the witnesses.
//! An ACK flood for connections that do not exist; connections opened
//! before the gate; blind RST, FIN and SYN injected on a live connection's
//! real 4-tuple. Needs root; `cargo xtask test` runs it.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Attached, ack_flood};
use handshake_lab::{EchoServer, Lab, kernel_state};
use handshake_user::gate::Gate;

const PORT: u16 = 8080;

fn server(lab: &Lab) -> (SocketAddr, EchoServer) {
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), PORT);
    (
        addr,
        EchoServer::start(&lab.server, addr, 128).expect("server"),
    )
}

/// A connection from the client namespace.
fn connect(lab: &Lab, addr: SocketAddr) -> TcpStream {
    let s = lab
        .client
        .run(move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?))
        .expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s
}

/// One round trip through the echo server.
fn echo(s: &mut TcpStream, what: &[u8]) -> std::io::Result<()> {
    s.write_all(what)?;
    let mut back = vec![0u8; what.len()];
    s.read_exact(&mut back)?;
    assert_eq!(back, what);
    Ok(())
}

fn count(status: &serde_json::Value, reason: &str) -> u64 {
    status["packets"][reason].as_u64().unwrap()
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn an_ack_flood_is_dropped_at_xdp_without_state() {
    let lab = Lab::new("oa").expect("lab");
    let (addr, _srv) = server(&lab);
    let gate = Attached::new(&lab, &[]);
    let mut conn = connect(&lab, addr);
    echo(&mut conn, b"before").unwrap();
    let conns_before = gate.conns();
    assert_eq!(conns_before.len(), 1, "{conns_before:#?}");

    // The real connection keeps talking all through the flood.
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let trips = std::sync::Arc::new(AtomicU64::new(0));
    let talker = {
        let (stop, trips) = (stop.clone(), trips.clone());
        let mut conn = conn.try_clone().unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                echo(&mut conn, b"during the flood").expect("the real connection broke");
                trips.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let rsts = || lab.server.nstat("TcpOutRsts").unwrap();
    let segs = || lab.server.nstat("TcpInSegs").unwrap();
    let (rsts0, segs0) = (rsts(), segs());
    let s0 = gate.status();
    let sent = ack_flood(&lab, addr, 5_000);
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, Ordering::Relaxed);
    talker.join().unwrap();
    let s = gate.status();
    let dropped = count(&s, "no_conn") - count(&s0, "no_conn");
    println!(
        "ACK flood, unknown-flows=verify: {dropped} of {sent} dropped as no_conn; \
         server resets sent {}, segments received {} (the real connection's {} round trips)",
        rsts() - rsts0,
        segs() - segs0,
        trips.load(Ordering::Relaxed)
    );
    assert_eq!(dropped, sent, "{s:#}");
    assert_eq!(s["drops"]["no_conn"], s["packets"]["no_conn"]);
    assert_eq!(gate.conns().len(), 1, "the flood created entries");
    assert_eq!(rsts(), rsts0, "the server's stack answered the flood");
    // Each round trip is two segments in (the data and the ACK of the reply).
    let trips = trips.load(Ordering::Relaxed);
    assert!(trips > 0);
    assert!(
        segs() - segs0 <= 2 * trips + 4,
        "flood segments reached the stack"
    );

    // Loose pick-up, for a gate in front of another namespace's sockets:
    // every flood ACK is tracked and passed, and the server's kernel
    // answers each with a reset (whose leaving removes the entry again).
    gate.run("set", &["unknown-flows=pick-up"]);
    assert_eq!(gate.status()["limits"]["unknown-flows"], "pick-up");
    let (rsts0, s0) = (rsts(), gate.status());
    let sent = ack_flood(&lab, addr, 1_000);
    std::thread::sleep(Duration::from_millis(200));
    let s = gate.status();
    println!(
        "ACK flood, unknown-flows=pick-up: {} of {sent} passed; server resets sent {}",
        count(&s, "pass") - count(&s0, "pass"),
        rsts() - rsts0
    );
    assert_eq!(count(&s, "no_conn"), count(&s0, "no_conn"));
    assert!(count(&s, "pass") - count(&s0, "pass") >= sent);
    assert!(
        rsts() - rsts0 >= sent / 2,
        "the kernel did not answer the flood"
    );
    echo(&mut conn, b"after").unwrap();
}

/// The gate's entry for the client's port, read from the pinned maps.
fn entry(lab: &Lab, client_port: u16) -> Option<handshake_user::gate::Conn> {
    let gate = Gate::open(&lab.server_if, Some(&lab.server.name)).expect("open the gate");
    let cfg = gate.config().unwrap();
    gate.conns(&cfg, handshake_user::monotonic_ns())
        .unwrap()
        .into_iter()
        .find(|c| c.client.1 == client_port)
}

/// The gate's two states of the connection, and `ss`'s on each side
/// (`CLOSED` where the kernel has no socket).
fn states(
    lab: &Lab,
    client: SocketAddr,
    server: SocketAddr,
) -> ((String, String), (String, String)) {
    let gate = entry(lab, client.port()).map_or(("none".into(), "none".into()), |c| {
        (
            c.entry.client_state().name().into(),
            c.entry.server_state().name().into(),
        )
    });
    let closed = || "CLOSED".to_string();
    let ss = (
        kernel_state(&lab.client, client, server)
            .unwrap()
            .unwrap_or_else(closed),
        kernel_state(&lab.server, server, client)
            .unwrap()
            .unwrap_or_else(closed),
    );
    (gate, ss)
}

/// Waits until the gate's states equal `ss`'s, or 3 s pass; returns both.
fn settle(
    lab: &Lab,
    client: SocketAddr,
    server: SocketAddr,
) -> ((String, String), (String, String)) {
    let start = Instant::now();
    loop {
        let (gate, ss) = states(lab, client, server);
        if gate == ss || start.elapsed() > Duration::from_secs(3) {
            return (gate, ss);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn connections_opened_before_the_gate_are_picked_up() {
    let lab = Lab::new("ob").expect("lab");
    // An echo server of its own, with no idle timeout: attaching takes a
    // while in an emulated VM, and the connection must outlive it idle.
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), PORT);
    let listener = lab
        .server
        .run(move || Ok(std::net::TcpListener::bind(addr)?))
        .expect("listen");
    let echo_one = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = s.read(&mut buf) {
            if s.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
    let mut conn = connect(&lab, addr);
    echo(&mut conn, b"before the gate").unwrap();
    let client = conn.local_addr().unwrap();

    let gate = Attached::new(&lab, &[]);
    assert!(gate.conns().is_empty());
    echo(&mut conn, b"through the gate").unwrap();
    let (g, ss) = settle(&lab, client, addr);
    assert_eq!(g, ("ESTABLISHED".into(), "ESTABLISHED".into()));
    assert_eq!(g, ss);
    let s = gate.status();
    assert_eq!(count(&s, "no_conn"), 0, "{s:#}");
    // The client closes; the echo server closes in turn.
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    echo_one.join().unwrap();
    let (g, ss) = settle(&lab, client, addr);
    assert_eq!(g, ("TIME_WAIT".into(), "CLOSED".into()), "kernel: {ss:?}");
    assert_eq!(g, ss);
}

/// Sends one TCP segment from the client namespace with the client's real
/// address and port (a raw socket: the client's kernel plays no part), as
/// a blind attacker who knows the 4-tuple would.
fn inject(lab: &Lab, client: SocketAddr, server: SocketAddr, flags: u8, seq: u32, ack: u32) {
    let (IpAddr::V4(c), IpAddr::V4(s)) = (client.ip(), server.ip()) else {
        panic!("IPv4 only")
    };
    let mut b = etherparse::PacketBuilder::ipv4(c.octets(), s.octets(), 64).tcp(
        client.port(),
        server.port(),
        seq,
        64_240,
    );
    if flags & 0x10 != 0 {
        b = b.ack(ack);
    }
    if flags & 0x04 != 0 {
        b = b.rst();
    }
    if flags & 0x01 != 0 {
        b = b.fin();
    }
    if flags & 0x02 != 0 {
        b = b.syn();
    }
    let mut pkt = Vec::new();
    b.write(&mut pkt, &[]).unwrap();
    lab.client
        .run(move || {
            use socket2::{Domain, Protocol, Socket, Type};
            let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::from(255)))?; // IPPROTO_RAW
            sock.send_to(&pkt, &SocketAddr::new(server.ip(), 0).into())?;
            Ok(())
        })
        .unwrap();
    std::thread::sleep(Duration::from_millis(50));
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn blind_injection_cannot_move_a_live_connection() {
    let lab = Lab::new("oc").expect("lab");
    let (addr, _srv) = server(&lab);
    let gate = Attached::new(&lab, &[]);
    let mut conn = connect(&lab, addr);
    echo(&mut conn, b"hello").unwrap();
    let client = conn.local_addr().unwrap();
    let e = entry(&lab, client.port()).expect("tracked").entry;
    let (next, acked) = (e.client.end, e.client.ack);
    let est = ("ESTABLISHED".to_string(), "ESTABLISHED".to_string());
    let challenges = || lab.server.nstat("TcpExtTCPChallengeACK").unwrap();
    const RST: u8 = 0x04;
    const FIN: u8 = 0x01;
    const ACK: u8 = 0x10;
    const SYN: u8 = 0x02;
    let check = |what: &str, reason: &str, before: &serde_json::Value| {
        let s = gate.status();
        assert_eq!(
            count(&s, reason),
            count(before, reason) + 1,
            "{what}: {s:#}"
        );
        let (g, ss) = states(&lab, client, addr);
        assert_eq!(g, est, "{what}: the record moved");
        assert_eq!(g, ss, "{what}");
    };

    // Far outside the window: dropped at XDP, the record as it was.
    for (what, flags, seq) in [
        ("RST far ahead", RST, next.wrapping_add(1 << 30)),
        ("RST far behind", RST | ACK, next.wrapping_sub(1 << 30)),
        ("FIN far ahead", FIN | ACK, next.wrapping_add(1 << 30)),
    ] {
        let s0 = gate.status();
        inject(&lab, client, addr, flags, seq, acked);
        check(what, "bad_seq", &s0);
        echo(&mut conn, what.as_bytes()).unwrap();
    }
    // In the window but not exact: passed, and the kernel answers with a
    // challenge ACK (RFC 5961); the record stays, the connection works.
    for (what, flags, seq) in [
        ("RST in the window", RST, next.wrapping_add(1_000)),
        ("SYN on the live connection", SYN, next.wrapping_add(77)),
    ] {
        // The kernel sends at most one challenge ACK per socket every
        // tcp_invalid_ratelimit (500 ms).
        std::thread::sleep(Duration::from_millis(600));
        let (s0, c0) = (gate.status(), challenges());
        inject(&lab, client, addr, flags, seq, 0);
        check(what, "challenge", &s0);
        assert!(
            challenges() > c0,
            "{what}: the kernel sent no challenge ACK"
        );
        echo(&mut conn, what.as_bytes()).unwrap();
    }
    // The peer's real RST (SO_LINGER 0) closes it: record and sockets go.
    socket2::SockRef::from(&conn)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(conn);
    let (g, ss) = settle(&lab, client, addr);
    assert_eq!(
        g,
        ("none".to_string(), "none".to_string()),
        "kernel: {ss:?}"
    );
    assert_eq!(ss, ("CLOSED".to_string(), "CLOSED".to_string()));
}
