//! `overflow=cookie`: a SYN over the cap answered from XDP with a SYN-ACK
//! carrying a SYN cookie the kernel makes. First through BPF_PROG_TEST_RUN
//! in a namespace with a real listener (every byte of the reply checked
//! with etherparse), then end to end. Needs root; `cargo xtask test` runs it.

mod common;

use std::net::SocketAddr;

use common::*;
use etherparse::{NetSlice, SlicedPacket, TcpOptionElement, TransportSlice};
use handshake_common::cookie::Options;
use handshake_common::{Config, Mode, Overflow, Reason};
use handshake_lab::{EchoServer, Lab, Netns, connect_each};
use socket2::{Domain, Socket, Type};
use std::net::IpAddr;
use std::time::Duration;

const PORT: u16 = 8080;
const CLOSED_PORT: u16 = 8081;
const SRV4: &str = "198.18.0.1";
const SRV6: &str = "2001:db8::1";

/// One tracked SYN fills the global budget; every later SYN overflows.
fn cfg(options: Options) -> Config {
    Config {
        max_half_open: 1,
        max_half_open_per_source: 0,
        verified_reserve_pct: 0,
        overflow: Overflow::Cookie as u32,
        cookie_options: options.to_bits(),
        ..Config::DEFAULT
    }
}

/// Listening sockets on PORT for IPv4 and IPv6, in the calling thread's
/// namespace.
fn listen() -> Vec<Socket> {
    let mut v = Vec::new();
    for (domain, addr) in [
        (Domain::IPV4, SocketAddr::from(([0, 0, 0, 0], PORT))),
        (
            Domain::IPV6,
            SocketAddr::from(([0u16, 0, 0, 0, 0, 0, 0, 0], PORT)),
        ),
    ] {
        let s = Socket::new(domain, Type::STREAM, None).unwrap();
        if domain == Domain::IPV6 {
            s.set_only_v6(true).unwrap();
        }
        s.set_reuse_address(true).unwrap();
        s.bind(&addr.into()).unwrap();
        s.listen(128).unwrap();
        v.push(s);
    }
    v
}

/// `t`'s frame with 8 bytes between its IP and TCP headers: IPv4 options
/// (NOPs; the header length, total length and header checksum fixed) or an
/// IPv6 hop-by-hop header (PadN; the payload length fixed), so that the TCP
/// header is not where the fixed IP header ends.
fn with_header_between(t: &Tcp) -> Vec<u8> {
    let mut b = t.bytes();
    let l3 = 14 + 4 * t.vlans;
    let word = |b: &[u8], at: usize| u16::from_be_bytes([b[at], b[at + 1]]);
    if t.src.is_ipv4() {
        b.splice(l3 + 20..l3 + 20, [1u8; 8]);
        b[l3] = 0x47;
        let total = word(&b, l3 + 2) + 8;
        b[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
        b[l3 + 10..l3 + 12].fill(0);
        let mut sum: u32 = (0..14).map(|i| u32::from(word(&b, l3 + 2 * i))).sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        b[l3 + 10..l3 + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    } else {
        let next = b[l3 + 6];
        b[l3 + 6] = 0;
        b.splice(l3 + 40..l3 + 40, [next, 0, 1, 4, 0, 0, 0, 0]);
        let payload = word(&b, l3 + 4) + 8;
        b[l3 + 4..l3 + 6].copy_from_slice(&payload.to_be_bytes());
    }
    b
}

/// What a reply must be, checked field by field.
fn check_syn_ack(name: &str, syn: &Tcp, out: &[u8], host: Options) {
    let p = SlicedPacket::from_ethernet(out).unwrap_or_else(|e| panic!("{name}: {e}"));
    let eth = match &p.link {
        Some(etherparse::LinkSlice::Ethernet2(e)) => e,
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(
        eth.source(),
        [0x02, 0, 0, 0, 0, 0x01],
        "{name}: MACs swapped"
    );
    assert_eq!(eth.destination(), [0x02, 0, 0, 0, 0, 0x02], "{name}");
    assert_eq!(p.vlan().is_some(), syn.vlans > 0, "{name}: VLAN tag kept");
    let Some(TransportSlice::Tcp(tcp)) = &p.transport else {
        panic!("{name}: not TCP: {:?}", p.transport);
    };
    // Addresses swapped; valid checksums.
    let sum = match &p.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            assert_eq!(h.source_addr().to_string(), syn.dst.to_string(), "{name}");
            assert_eq!(h.destination_addr().to_string(), syn.src.to_string());
            let hdr = h.to_header();
            assert_eq!(
                hdr.header_checksum,
                hdr.calc_header_checksum(),
                "{name}: IPv4 checksum"
            );
            assert_eq!(h.total_len() as usize, 20 + tcp.slice().len(), "{name}");
            assert_eq!(h.ttl(), 64);
            tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap()
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            assert_eq!(h.source_addr().to_string(), syn.dst.to_string(), "{name}");
            assert_eq!(h.destination_addr().to_string(), syn.src.to_string());
            assert_eq!(h.payload_length() as usize, tcp.slice().len(), "{name}");
            tcp.calc_checksum_ipv6(h.source(), h.destination()).unwrap()
        }
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(tcp.checksum(), sum, "{name}: TCP checksum");
    assert_eq!(tcp.source_port(), syn.dport, "{name}");
    assert_eq!(tcp.destination_port(), syn.sport, "{name}");
    assert!(tcp.syn() && tcp.ack(), "{name}: SYN|ACK");
    assert!(!(tcp.fin() || tcp.rst() || tcp.psh() || tcp.urg() || tcp.ece() || tcp.cwr()));
    assert_eq!(
        tcp.acknowledgment_number(),
        syn.seq.wrapping_add(1),
        "{name}"
    );
    assert!(tcp.payload().is_empty(), "{name}: no payload");

    let opts: Vec<TcpOptionElement> = tcp
        .options_iterator()
        .map(|o| o.unwrap_or_else(|e| panic!("{name}: {e:?}")))
        .collect();
    let mss = opts.iter().find_map(|o| match o {
        TcpOptionElement::MaximumSegmentSize(m) => Some(*m),
        _ => None,
    });
    let offered_mss = syn.options.iter().find_map(|o| match o {
        TcpOptionElement::MaximumSegmentSize(m) => Some(*m),
        _ => None,
    });
    // The kernel's cookie MSS table: the largest entry not above what the
    // client offered; when it offered none, the smallest: 536 for IPv4,
    // 1220 for IPv6 (its minimum MTU less the headers).
    let mss = mss.unwrap_or_else(|| panic!("{name}: no MSS option"));
    match offered_mss {
        Some(m) => assert!(mss <= m && mss >= 1220, "{name}: MSS {mss} for {m}"),
        None if syn.src.is_ipv4() => assert_eq!(mss, 536, "{name}"),
        None => assert_eq!(mss, 1220, "{name}"),
    }
    let ts_offered = syn.options.iter().find_map(|o| match o {
        TcpOptionElement::Timestamp(v, _) => Some(*v),
        _ => None,
    });
    let ts = opts.iter().find_map(|o| match o {
        TcpOptionElement::Timestamp(v, e) => Some((*v, *e)),
        _ => None,
    });
    let ws = opts.iter().find_map(|o| match o {
        TcpOptionElement::WindowScale(w) => Some(*w),
        _ => None,
    });
    let sack = opts
        .iter()
        .any(|o| matches!(o, TcpOptionElement::SelectiveAcknowledgementPermitted));
    match ts_offered.filter(|_| host.timestamps) {
        None => {
            assert_eq!(opts.len(), 1, "{name}: the MSS only: {opts:?}");
        }
        Some(tsval) => {
            let (v, e) = ts.unwrap_or_else(|| panic!("{name}: no timestamp: {opts:?}"));
            assert_eq!(e, tsval, "{name}: the client's timestamp echoed");
            // The low six bits: the client's window scale (7) and SACK.
            assert_eq!(v & 0xf, 7, "{name}: window scale in the cookie");
            assert_ne!(v & 0x10, 0, "{name}: SACK in the cookie");
            assert_eq!(ws, Some(host.rcv_wscale), "{name}: our window scale");
            assert!(sack, "{name}: SACK permitted");
            assert_eq!(tcp.slice().len(), 40, "{name}");
        }
    }
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn a_syn_over_the_cap_comes_back_as_a_cookie_syn_ack() {
    let ns = Netns::new(&format!("ck{}", std::process::id() % 100_000)).unwrap();
    ns.sysctl("net.ipv4.tcp_syncookies=2").unwrap();
    ns.sysctl("net.ipv4.tcp_timestamps=2").unwrap();
    ns.run(|| {
        let _listeners = listen();
        let ts = handshake_user::sysctl::cookie_options()?;
        assert!(ts.timestamps, "{ts:?}");
        // One harness, emptied between cases: a load is the slow part in
        // an emulated VM.
        let mut h = Harness::new(cfg(Options::default()));
        for (label, host) in [("MSS only", Options::default()), ("timestamps", ts)] {
            for (src, dst) in [("198.18.0.66", SRV4), ("2001:db8::66", SRV6)] {
                for (kind, syn, between) in [
                    ("bare", syn(src, 40_000, dst, PORT), false),
                    (
                        "Linux options",
                        syn(src, 40_001, dst, PORT).linux_options(0x1234_5678),
                        false,
                    ),
                    (
                        "Linux options, two VLAN tags",
                        syn(src, 40_002, dst, PORT).linux_options(7).vlans(2),
                        false,
                    ),
                    (
                        "Linux options, IP options or an extension header",
                        syn(src, 40_003, dst, PORT).linux_options(9),
                        true,
                    ),
                ] {
                    let name = format!("{label}, {src}, {kind}");
                    let frame = |t: &Tcp| {
                        if between {
                            with_header_between(t)
                        } else {
                            t.bytes()
                        }
                    };
                    h.reset(&[PORT]);
                    h.reset_counters();
                    h.set(cfg(host));
                    // The first SYN takes the whole budget.
                    let mut first = syn.with_seq(1);
                    first.sport = 1;
                    assert_eq!(h.run(&frame(&first)), XDP_PASS, "{name}");
                    let syn = syn.with_seq(0xffff_ffff);
                    let (action, out) = h.run_with_output(&frame(&syn));
                    assert_eq!(action, XDP_TX, "{name}");
                    check_syn_ack(&name, &syn, &out, host);
                    assert_eq!(h.count(Reason::Cookie), 1, "{name}");
                    assert_eq!(h.count_out(Reason::Cookie), 1, "{name}: cookies sent");
                    assert_eq!(h.half_open_entries().len(), 1, "{name}: no state kept");
                }
            }
        }
        Ok(())
    })
    .unwrap();
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn the_final_ack_of_a_cookie_is_checked_with_the_kernel_and_verifies_its_source() {
    let ns = Netns::new(&format!("ca{}", std::process::id() % 100_000)).unwrap();
    ns.sysctl("net.ipv4.tcp_syncookies=2").unwrap();
    ns.run(|| {
        let _listeners = listen();
        // A budget of 2, one of them kept for verified sources.
        let h = Harness::new(Config {
            max_half_open: 2,
            verified_reserve_pct: 50,
            ..cfg(Options::default())
        });
        let (a, b) = ("198.18.0.65", "198.18.0.66");
        assert_eq!(h.run(&syn(a, 1, SRV4, PORT).bytes()), XDP_PASS);
        let s = syn(b, 40_000, SRV4, PORT).with_seq(7);
        let (action, out) = h.run_with_output(&s.bytes());
        assert_eq!(action, XDP_TX);
        let p = SlicedPacket::from_ethernet(&out).unwrap();
        let Some(TransportSlice::Tcp(reply)) = &p.transport else {
            panic!("not TCP")
        };
        let cookie = reply.sequence_number();
        // A forged ACK (a wrong cookie) is no connection: dropped, nothing kept.
        let forged = s.seg(0, 8, Some(cookie.wrapping_add(1 + (1 << 28))), 0);
        assert_eq!(h.run(&forged.bytes()), XDP_DROP);
        assert_eq!(h.count(Reason::NoConn), 1);
        assert!(h.established_entries().is_empty());
        // The real one: passed, tracked ESTABLISHED with the sender as the
        // client, the source verified.
        let ack = s.seg(0, 8, Some(cookie.wrapping_add(1)), 0);
        assert_eq!(h.run(&ack.bytes()), XDP_PASS);
        assert_eq!(h.count(Reason::CookieAck), 1);
        let est = h.established_entries();
        assert_eq!(est.len(), 1);
        assert_eq!(
            (est[0].client_state(), est[0].server_state()),
            (
                handshake_common::TcpState::Established,
                handshake_common::TcpState::Established
            )
        );
        // The budget is full for unverified sources, not for this one.
        assert_eq!(h.run(&syn("198.18.0.67", 1, SRV4, PORT).bytes()), XDP_TX);
        assert_eq!(h.run(&syn(b, 40_001, SRV4, PORT).bytes()), XDP_PASS);
        assert_eq!(h.half_open_entries().len(), 2);
        Ok(())
    })
    .unwrap();
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn no_cookie_without_a_listener_or_syncookies_2_and_none_in_monitor_mode() {
    let ns = Netns::new(&format!("cl{}", std::process::id() % 100_000)).unwrap();
    ns.sysctl("net.ipv4.tcp_syncookies=2").unwrap();
    let ns_name = ns.name.clone();
    ns.run(move || {
        let _listeners = listen();
        let h = Harness::new(cfg(Options::default()));
        assert_eq!(h.run(&syn("198.18.0.65", 1, SRV4, PORT).bytes()), XDP_PASS);

        // Nothing listens: the kernel would only reset it; dropped.
        let closed = syn("198.18.0.66", 40_000, SRV4, CLOSED_PORT).bytes();
        assert_eq!(h.run(&closed), XDP_DROP);
        assert_eq!(h.count(Reason::PortClosed), 1);

        // Monitor mode: counted as a cookie, passed untouched.
        let mut c = h.config();
        c.mode = Mode::Monitor as u32;
        let mut h = h;
        h.set(c);
        let s = syn("198.18.0.67", 40_000, SRV4, PORT)
            .linux_options(5)
            .bytes();
        let (action, out) = h.run_with_output(&s);
        assert_eq!((action, &out), (XDP_PASS, &s));
        assert_eq!(h.count(Reason::Cookie), 1);
        assert_eq!(h.count_out(Reason::Cookie), 0, "nothing sent");

        // With tcp_syncookies=1 the kernel makes no cookie for XDP: the SYN
        // passes as it came (the frame shrunk back), counted cookie_fail.
        c.mode = Mode::Enforce as u32;
        h.set(c);
        handshake_lab::run(
            "ip",
            &[
                "netns",
                "exec",
                &ns_name,
                "sysctl",
                "-qw",
                "net.ipv4.tcp_syncookies=1",
            ],
        )?;
        let (action, out) = h.run_with_output(&s);
        assert_eq!((action, &out), (XDP_PASS, &s));
        assert_eq!(h.count(Reason::CookieFail), 1);
        assert_eq!(h.count_out(Reason::Cookie), 0);
        Ok(())
    })
    .unwrap();
}

/// A server-side TCP setting, read in the lab's server namespace.
fn sysctl(ns: &Netns, name: &str) -> String {
    ns.exec("sysctl", &["-n", name]).unwrap().trim().to_string()
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn new_clients_get_in_through_a_spoofed_flood_and_the_kernel_never_sees_it() {
    let lab = Lab::new("cke").expect("lab");
    let _peer = PeerXdp::attach(&lab.client.name, &lab.client_if).expect("the client's XDP");
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), PORT);
    let _srv = EchoServer::start(&lab.server, addr, 128).expect("server");
    let before = (
        sysctl(&lab.server, "net.ipv4.tcp_syncookies"),
        sysctl(&lab.server, "net.ipv4.tcp_timestamps"),
    );
    assert_eq!(before, ("1".to_string(), "1".to_string()), "Linux defaults");
    let gate = Attached::new(
        &lab,
        &[
            "max-half-open=200",
            "max-half-open-per-source=5",
            "verified-reserve-pct=25",
            // Long enough that the flood's attempts still fill the budget
            // when the new clients come, even in a slow (emulated) VM.
            "half-open-timeout-ms=60000",
            "overflow=cookie",
        ],
    );
    assert_eq!(sysctl(&lab.server, "net.ipv4.tcp_syncookies"), "2");
    assert_eq!(sysctl(&lab.server, "net.ipv4.tcp_timestamps"), "2");
    let s = gate.status();
    assert_eq!(
        s["cookies"]["carry"],
        serde_json::json!(["mss", "timestamps", "window_scaling", "sack"]),
        "{s:#}"
    );

    // Resolve the neighbour first, so every flood packet goes out at once.
    let fresh: Vec<IpAddr> = (10..30)
        .map(|i| {
            let a = IpAddr::from([198, 18, 0, i]);
            lab.client
                .ip(&["addr", "add", &format!("{a}/32"), "dev", &lab.client_if])
                .unwrap();
            a
        })
        .collect();
    let warm = connect_each(&lab.client, &fresh[..1], addr, Duration::from_secs(2)).unwrap();
    assert_eq!(warm.succeeded, 1);

    let kernel_cookies = lab.server.nstat("TcpExtSyncookiesSent").unwrap();
    assert_eq!(spoofed_flood(&lab, addr, 2_000), 2_000);
    let s = gate.status();
    // 150 of the budget's 200 for unverified sources; the rest answered
    // from XDP, never seen by the kernel, which answered only those 150.
    assert_eq!(s["half_open"], 150, "{s:#}");
    assert_eq!(s["cookies_sent"], 1_850, "{s:#}");
    assert_eq!(s["packets"]["cookie"], 1_850, "{s:#}");
    assert_eq!(s["drops"]["global"], 0, "{s:#}");
    let sent_by_kernel = lab.server.nstat("TcpExtSyncookiesSent").unwrap() - kernel_cookies;
    assert_eq!(
        sent_by_kernel, 150,
        "the kernel saw more than the admitted SYNs"
    );

    // First-time clients, over the full budget, get in on the gate's
    // cookies, which the kernel accepts; data goes both ways.
    let accepted = lab.server.nstat("TcpExtSyncookiesRecv").unwrap();
    let new = connect_each(&lab.client, &fresh[1..], addr, Duration::from_secs(3)).unwrap();
    assert_eq!(
        new.succeeded,
        19,
        "new clients were locked out: {:#}\nserver: {}\nclient: {}",
        gate.status(),
        lab.server
            .exec("nstat", &["-az", "TcpExt*", "Tcp*"])
            .unwrap(),
        lab.client.exec("nstat", &["-az", "Tcp*", "Ip*"]).unwrap()
            + &lab.server.exec("ethtool", &["-S", &lab.server_if]).unwrap()
            + &lab.client.exec("ethtool", &["-S", &lab.client_if]).unwrap()
    );
    let s = gate.status();
    assert_eq!(s["cookies_sent"], 1_850 + 19, "{s:#}");
    // Their final ACKs were checked with the kernel (bpf_tcp_check_syncookie):
    // tracked, and their sources verified ...
    assert!(s["packets"]["cookie_ack"].as_u64().unwrap() >= 19, "{s:#}");
    let tracked = gate
        .conns()
        .iter()
        .filter(|c| {
            let ip = c["client"].as_str().unwrap().rsplit_once(':').unwrap().0;
            fresh[1..].contains(&ip.parse().unwrap())
        })
        .count();
    assert!(tracked >= 19, "{tracked} of the cookie clients tracked");
    // ... so their next connections come in through the reserve, with no
    // cookie.
    let again = connect_each(&lab.client, &fresh[1..], addr, Duration::from_secs(3)).unwrap();
    assert_eq!(again.succeeded, 19);
    let s = gate.status();
    assert_eq!(
        s["cookies_sent"],
        1_850 + 19,
        "verified clients got cookies: {s:#}"
    );
    assert!(
        lab.server.nstat("TcpExtSyncookiesRecv").unwrap() - accepted >= 19,
        "the kernel did not take the cookies"
    );
    assert_eq!(
        lab.server
            .exec("ss", &["-Htan", "state", "syn-recv"])
            .unwrap()
            .trim(),
        "",
        "half-open sockets in the server's kernel"
    );

    // Changing overflow away puts the settings back, and says so; back to
    // cookie sets them again.
    let out = gate.run("set", &["overflow=drop"]);
    assert!(
        out.contains("put net.ipv4.tcp_syncookies back to 1"),
        "{out}"
    );
    assert_eq!(sysctl(&lab.server, "net.ipv4.tcp_syncookies"), "1");
    assert_eq!(sysctl(&lab.server, "net.ipv4.tcp_timestamps"), "1");
    let out = gate.run("set", &["overflow=cookie", "cookie-timestamps=off"]);
    assert!(out.contains("set net.ipv4.tcp_syncookies to 2"), "{out}");
    assert!(out.contains("carry the MSS only"), "{out}");
    assert_eq!(sysctl(&lab.server, "net.ipv4.tcp_timestamps"), "1");
    assert_eq!(
        gate.status()["cookies"]["carry"],
        serde_json::json!(["mss"])
    );

    drop(gate);
    assert_eq!(
        (
            sysctl(&lab.server, "net.ipv4.tcp_syncookies"),
            sysctl(&lab.server, "net.ipv4.tcp_timestamps"),
        ),
        before,
        "detach put the settings back"
    );
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn four_ways_against_one_spoofed_flood() {
    use handshake_lab::scenario::{self, Load};
    let lab = Lab::new("ck4").expect("lab");
    let load = Load {
        rate: 5_000,
        seconds: 2,
        clients: 100,
        live: None,
    };
    let only = [
        "spoofed, kernel alone",
        "spoofed, gate, overflow=drop",
        "spoofed, gate, overflow=pass",
        "spoofed, gate, overflow=cookie",
    ];
    // An echo timeout generous for a slow VM, yet shorter than the time the
    // flood's attempts hold the budget (the half-open timeout, 5 s).
    let phases = scenario::run_some(
        &lab,
        std::path::Path::new(GATE),
        &load,
        &only,
        Duration::from_millis(2_500),
    )
    .expect("the phases ran");
    let names: Vec<_> = phases.iter().map(|p| p.name).collect();
    assert_eq!(names, only, "every phase ran, in order");
    for p in &phases {
        eprintln!(
            "{:32} new clients {:3}/{}, p50 {:?}, p99 {:?}; SYN-ACKs to spoofed {:6}; server SYN_RECV {:3}; busy CPU {:.2} s",
            p.name,
            p.new.succeeded,
            p.new.attempted,
            p.new.quantile(0.5),
            p.new.quantile(0.99),
            p.spoofed_replies,
            p.syn_recv,
            p.busy_cpu_s
        );
    }
    let [kernel, drop, _pass, cookie] = &phases[..] else {
        unreachable!()
    };
    assert!(
        cookie.new.succeeded >= 99,
        "overflow=cookie: {:?}",
        cookie.new
    );
    assert_eq!(
        cookie.syn_recv, 0,
        "flood entries in the server's SYN queue"
    );
    // The flood beyond the budget was answered, not dropped (with drop,
    // only the admitted tenth is answered, by the kernel).
    assert!(
        cookie.spoofed_replies * 2 > cookie.flood_sent,
        "{} SYN-ACKs for {} flood SYNs: {}",
        cookie.spoofed_replies,
        cookie.flood_sent,
        cookie.gate_status.as_deref().unwrap_or_default()
    );
    // The others, as the seed describes them: the kernel's queue is full of
    // the flood; with overflow=drop the new clients are locked out.
    assert!(kernel.syn_recv > 0);
    assert_eq!(drop.new.succeeded, 0, "overflow=drop let new clients in");
}

/// A spoofed flood answered with cookies makes no per-source entries, so
/// it cannot evict a real-address attacker's count from the LRU map: the
/// attacker, at its cap before the flood, is still refused under its own
/// reason after some 90,000 new spoofed sources (more than the map's
/// 65,536 entries) were answered with cookies.
#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn a_real_address_flood_stays_capped_beside_a_spoofed_cookie_flood() {
    let lab = Lab::new("ckc").expect("lab");
    // The cookie SYN-ACKs arrive on the client side only with an XDP program there.
    let _peer = PeerXdp::attach(&lab.client.name, &lab.client_if).expect("the client's XDP");
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), PORT);
    let _srv = EchoServer::start(&lab.server, addr, 128).expect("server");
    // The neighbours resolved, so the attacker's first SYNs go out at once.
    let warm = handshake_lab::connect_many(&lab.client, addr, 1, Duration::from_secs(2)).unwrap();
    assert_eq!(warm.succeeded, 1);
    let gate = Attached::new(
        &lab,
        &[
            "max-half-open=1024",
            "max-half-open-per-source=20",
            "verified-reserve-pct=0",
            "half-open-timeout-ms=120000",
            "overflow=cookie",
        ],
    );
    // 40 SYNs from the attacker's one address, paced, all counted.
    let attacker = || {
        let sent = common::cli::flood_of(
            handshake_lab::Segments::Syn,
            &lab,
            addr,
            handshake_lab::flood::Sources::One(IpAddr::from([198, 18, 0, 66])),
            40,
            Some(10_000),
        );
        assert_eq!(sent, 40);
        settle(&lab);
    };
    attacker();
    let s = gate.status();
    assert_eq!(s["drops"]["per_source"], 20, "{s:#}");
    assert_eq!(s["half_open"], 20, "{s:#}");

    // SYNs from 100,000 spoofed sources of 198.18.64.0 onwards, paced so
    // that the veth's queue keeps up, until 150,000 were answered with
    // cookies (some 78,000 distinct sources, more than the per-source
    // map holds): the first fill the budget, the rest get cookies.
    let mut spoofed = handshake_lab::LiveFlood::new(
        handshake_lab::Segments::Syn,
        addr,
        handshake_lab::flood::Sources::Range {
            first: IpAddr::from([198, 18, 64, 0]),
            count: 100_000,
        },
        50_000,
        Duration::from_secs(10),
    );
    spoofed.rate = Some(200_000);
    let started = std::time::Instant::now();
    let cookies = loop {
        spoofed
            .run(&lab, handshake_user::flood_object())
            .expect("the spoofed flood");
        settle(&lab);
        let s = gate.status();
        let cookies = s["cookies_sent"].as_u64().unwrap();
        if cookies >= 150_000 {
            assert_eq!(s["half_open"], 1024, "{s:#}");
            break cookies;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "{s:#}");
    };

    attacker();
    let s = gate.status();
    // The sender's ports follow the packet's index: the first 20 repeat
    // the first round's tracked tuples (retransmissions, which pass and
    // are not counted twice), the other 20 are new and over the cap.
    assert_eq!(
        s["drops"]["per_source"], 40,
        "the attacker's count was lost to the spoofed flood: {s:#}"
    );
    assert_eq!(
        s["cookies_sent"], cookies,
        "the attacker got cookies: {s:#}"
    );
}

/// Waits until the server's XDP program has seen every frame on its way
/// (a flood's last batches may still be in the veth's queue when the
/// sender returns): its count unchanged for 200 ms.
fn settle(lab: &Lab) {
    let seen = || handshake_lab::live::xdp_packets(&lab.server, &lab.server_if).unwrap();
    let mut last = seen();
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(200));
        let now = seen();
        if now == last {
            return;
        }
        last = now;
    }
    panic!("the server's XDP program kept receiving for 20 s");
}
