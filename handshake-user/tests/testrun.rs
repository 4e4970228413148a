//! The real XDP program driven with BPF_PROG_TEST_RUN: packets in, verdicts,
//! counters and map contents out. Needs root; `cargo xtask test` runs it.

mod common;

use common::*;
use handshake_common::machine::tcp::{ACK, FIN, RST, SYN};
use handshake_common::{Config, Mode, Reason, TcpState, UnknownFlows};
use handshake_user::settings::Settings;

const SRV: &str = "198.18.0.1";
const ATK: &str = "198.18.0.66";

fn cfg(per_source: u32, global: u32) -> Config {
    Config {
        max_half_open_per_source: per_source,
        max_half_open: global,
        ..Config::DEFAULT
    }
}

/// An arriving SYN (from `src:sport` to the server's `dport`, with `vlans`
/// tags) and the reason it must be counted under.
struct Syn {
    src: &'static str,
    sport: u16,
    dport: u16,
    vlans: usize,
    reason: Reason,
}

const fn s(src: &'static str, sport: u16, dport: u16, reason: Reason) -> Syn {
    Syn {
        src,
        sport,
        dport,
        vlans: 0,
        reason,
    }
}

/// One case: settings as an operator writes them, SYNs with their reasons,
/// and the half-open attempts left.
struct Case {
    name: &'static str,
    settings: &'static [&'static str],
    syns: Vec<Syn>,
    half_open_after: usize,
}

const B: &str = "198.18.0.67";
const C: &str = "198.18.0.68";
const V6A: &str = "2001:db8::66";
const V6B: &str = "2001:db8::67";
use Reason::{Global, OverflowPass, Pass, PerPort, PerSource, PortClosed, SynRate};

#[rustfmt::skip]
fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "per-source cap: at the cap passes, one over drops, another source passes",
            settings: &["max-half-open-per-source=3"],
            syns: vec![s(ATK, 1000, 80, Pass), s(ATK, 1001, 80, Pass), s(ATK, 1002, 80, Pass),
                       s(ATK, 1003, 80, PerSource), s(B, 1003, 80, Pass)],
            half_open_after: 4,
        },
        Case {
            name: "retransmitted SYNs are not counted twice",
            settings: &["max-half-open-per-source=1"],
            syns: vec![s(ATK, 1000, 80, Pass), s(ATK, 1000, 80, Pass), s(ATK, 1000, 80, Pass),
                       s(ATK, 1001, 80, PerSource)],
            half_open_after: 1,
        },
        Case {
            name: "global cap: the fifth source is refused",
            settings: &["max-half-open=4", "max-half-open-per-source=1"],
            syns: vec![s(ATK, 1, 80, Pass), s(B, 1, 80, Pass), s(C, 1, 80, Pass),
                       s("198.18.0.69", 1, 80, Pass), s("198.18.0.70", 1, 80, Global)],
            half_open_after: 4,
        },
        Case {
            name: "global cap with overflow=pass: the fifth passes untracked",
            settings: &["max-half-open=4", "max-half-open-per-source=1", "overflow=pass"],
            syns: vec![s(ATK, 1, 80, Pass), s(B, 1, 80, Pass), s(C, 1, 80, Pass),
                       s("198.18.0.69", 1, 80, Pass), s("198.18.0.70", 1, 80, OverflowPass)],
            half_open_after: 4,
        },
        Case {
            name: "per-port cap: a third SYN to port 80 is refused, port 81 is not",
            settings: &["max-half-open-per-port=2"],
            syns: vec![s(ATK, 1, 80, Pass), s(B, 1, 80, Pass), s(C, 1, 80, PerPort),
                       s(C, 1, 81, Pass)],
            half_open_after: 3,
        },
        Case {
            name: "per-port cap with overflow=pass",
            settings: &["max-half-open-per-port=2", "overflow=pass"],
            syns: vec![s(ATK, 1, 80, Pass), s(B, 1, 80, Pass), s(C, 1, 80, OverflowPass)],
            half_open_after: 2,
        },
        Case {
            name: "SYN rate: the burst passes, the next is refused, another source is not",
            settings: &["syn-rate-per-source=1", "syn-burst=3"],
            syns: vec![s(ATK, 1, 80, Pass), s(ATK, 2, 80, Pass), s(ATK, 3, 80, Pass),
                       s(ATK, 4, 80, SynRate), s(B, 4, 80, Pass)],
            half_open_after: 4,
        },
        Case {
            name: "SYN rate per /24: neighbours share one bucket",
            settings: &["syn-rate-per-source=1", "syn-burst=2", "source-prefix-v4=24"],
            syns: vec![s(ATK, 1, 80, Pass), s(B, 1, 80, Pass), s(C, 1, 80, SynRate),
                       s("198.18.1.5", 1, 80, Pass)],
            half_open_after: 3,
        },
        Case {
            name: "allowed ports: SYNs to any other port are refused",
            settings: &["allowed-ports=80,443"],
            syns: vec![s(ATK, 1, 22, PortClosed), s(ATK, 1, 80, Pass), s(ATK, 1, 443, Pass),
                       s(ATK, 1, 8080, PortClosed)],
            half_open_after: 2,
        },
        Case {
            name: "a SYN to a closed port takes no slot of its source",
            settings: &["allowed-ports=80", "max-half-open-per-source=1"],
            syns: vec![s(ATK, 1, 22, PortClosed), s(ATK, 2, 22, PortClosed), s(ATK, 1, 80, Pass),
                       s(ATK, 2, 80, PerSource)],
            half_open_after: 1,
        },
        Case {
            name: "single and double VLAN tags do not hide a SYN from the caps",
            settings: &["max-half-open-per-source=2"],
            syns: vec![Syn { vlans: 1, ..s(ATK, 1, 80, Pass) }, Syn { vlans: 2, ..s(ATK, 2, 80, Pass) },
                       Syn { vlans: 2, ..s(ATK, 3, 80, PerSource) }, s(ATK, 4, 80, PerSource)],
            half_open_after: 2,
        },
        Case {
            name: "IPv6 SYNs are tracked and capped",
            settings: &["max-half-open-per-source=2"],
            syns: vec![s(V6A, 1, 80, Pass), Syn { vlans: 1, ..s(V6A, 2, 80, Pass) },
                       s(V6A, 3, 80, PerSource), s(V6B, 3, 80, Pass)],
            half_open_after: 3,
        },
        Case {
            name: "IPv6 sources aggregated per /64",
            settings: &["max-half-open-per-source=2", "source-prefix-v6=64"],
            syns: vec![s(V6A, 1, 80, Pass), s(V6B, 1, 80, Pass), s("2001:db8::1:2", 1, 80, PerSource),
                       s("2001:db8:0:1::2", 1, 80, Pass)],
            half_open_after: 3,
        },
    ]
}

fn server_for(src: &str) -> &'static str {
    if src.contains(':') {
        "2001:db8::1"
    } else {
        SRV
    }
}

/// Runs every case in enforce mode, where the drop reasons drop, and in
/// monitor mode, where the same reasons are counted and everything passes.
#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn table() {
    // One harness, emptied between cases: a load is the slow part in an
    // emulated VM.
    let mut h = Harness::new(Config::DEFAULT);
    for case in cases() {
        let ports: Vec<u16> = case.syns.iter().map(|s| s.dport).collect();
        for mode in ["enforce", "monitor"] {
            let mut args: Vec<String> = case.settings.iter().map(|s| s.to_string()).collect();
            args.push(format!("mode={mode}"));
            let settings = handshake_user::settings::apply_all(&Settings::default(), &args)
                .unwrap_or_else(|e| panic!("{}: {e}", case.name));
            h.reset(&ports);
            h.reset_counters();
            h.apply(&settings);
            let name = format!("{} ({mode})", case.name);
            for (i, syn_) in case.syns.iter().enumerate() {
                let pkt =
                    syn(syn_.src, syn_.sport, server_for(syn_.src), syn_.dport).vlans(syn_.vlans);
                let want = if syn_.reason.is_drop() && mode == "enforce" {
                    XDP_DROP
                } else {
                    XDP_PASS
                };
                assert_eq!(
                    h.run(&pkt.bytes()),
                    want,
                    "{name}: SYN {i} ({})",
                    syn_.reason.name()
                );
            }
            for r in Reason::ALL {
                let want = case.syns.iter().filter(|s| s.reason == r).count() as u64;
                assert_eq!(h.count(r), want, "{name}: counter {}", r.name());
            }
            assert_eq!(
                h.half_open_entries().len(),
                case.half_open_after,
                "{name}: half-open entries"
            );
            assert_eq!(
                h.global_half_open(&settings.config) as usize,
                case.half_open_after,
                "{name}: global half-open count"
            );
        }
    }
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn mode_off_and_non_tcp_pass_untracked() {
    let h = Harness::new(Config {
        mode: Mode::Off as u32,
        ..cfg(1, 1)
    });
    for p in 1000..1005 {
        assert_eq!(h.run(&syn(ATK, p, SRV, 80).bytes()), XDP_PASS);
    }
    assert_eq!(h.count(Reason::Pass), 5);
    assert!(h.half_open_entries().is_empty());
    let h = Harness::new(cfg(1, 1));
    assert_eq!(h.run(&udp(ATK, SRV)), XDP_PASS);
    assert_eq!(h.run(&udp(ATK, SRV)), XDP_PASS);
    assert_eq!(h.count(Reason::NotTcp), 2);
}

/// Completes a handshake from `src` through both programs.
fn handshake(h: &Harness, src: &str, sport: u16) {
    let s = syn(src, sport, SRV, 80);
    assert_eq!(h.run(&s.bytes()), XDP_PASS, "{src}: SYN");
    let k = 9_000;
    assert_eq!(
        h.run_out(&s.reverse().seg(SYN, k, Some(s.seq + 1), 0).bytes()),
        TC_ACT_OK
    );
    assert_eq!(
        h.run(&s.then_ack(k + 1).bytes()),
        XDP_PASS,
        "{src}: final ACK"
    );
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn the_known_source_filter_knows_every_source_with_an_entry() {
    let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
    let mut h = Harness::new(cfg(1, 1_000));
    assert_eq!(h.known(ip(ATK)), Some(false), "built empty at once");
    assert_eq!(h.run(&syn(ATK, 1, SRV, 80).bytes()), XDP_PASS);
    assert_eq!(
        h.known(ip(ATK)),
        Some(true),
        "a tracked SYN marks its source"
    );
    // Its count is found on a new tuple: the per-source map was looked in.
    assert_eq!(h.run(&syn(ATK, 2, SRV, 80).bytes()), XDP_DROP);
    assert_eq!(h.count(Reason::PerSource), 1);
    // Its own tuple is known: a retransmitted SYN finds its attempt.
    assert_eq!(h.run(&syn(ATK, 1, SRV, 80).bytes()), XDP_PASS);
    assert_eq!(h.count(Reason::PerSource), 1);
    // A rebuild keeps what is in the maps...
    h.rebuild_known();
    assert_eq!(h.known(ip(ATK)), Some(true));
    assert_eq!(h.run(&syn(ATK, 3, SRV, 80).bytes()), XDP_DROP);
    assert_eq!(h.count(Reason::PerSource), 2);
    // ...and the far end of a connection this host opens.
    let out = syn(SRV, 50_000, "198.18.9.9", 443);
    assert_eq!(h.run_out(&out.bytes()), TC_ACT_OK);
    assert_eq!(h.known(ip("198.18.9.9")), Some(true));
    // ...whose SYN-ACK then finds the attempt by its tuple's bit.
    let syn_ack = out.reverse().seg(SYN | ACK, 9_000, Some(out.seq + 1), 0);
    assert_eq!(h.run(&syn_ack.bytes()), XDP_PASS);
    assert_eq!(h.count(Reason::NoConn), 0);
    assert!(
        h.half_open_entries()
            .iter()
            .any(|e| e.server_state() == TcpState::SynRcvd),
        "the SYN-ACK moved the attempt"
    );
    // Swept, forgotten: the sweep's rebuild clears what left the maps
    // (the source's count ages out with its window; its entry stays
    // until the LRU or a new SYN needs the room, so its bit stays too).
    let later = handshake_user::monotonic_ns() + 600_000_000_000;
    let (out, _) = h.sweep(later, 0);
    assert_eq!(out.rebuilt, 1);
    assert_eq!(h.known(ip("198.18.9.9")), Some(false));
    assert_eq!(h.known(ip(ATK)), Some(true), "its per-source entry is left");
    // Under other prefix lengths the filter is not used until rebuilt.
    let wider = Config {
        source_prefix_v4: 24,
        ..cfg(1, 1_000)
    };
    let mut a: aya::maps::Array<_, Config> =
        aya::maps::Array::try_from(h.ebpf.map_mut(handshake_common::maps::CONFIG).unwrap())
            .unwrap();
    a.set(0, wider, 0).unwrap();
    assert_eq!(h.known(ip(ATK)), None);
    h.set(wider);
    // Its /32 entry is never looked up under /24: no bit for it.
    assert_eq!(h.known(ip(ATK)), Some(false));
    assert_eq!(h.run(&syn(ATK, 4, SRV, 80).bytes()), XDP_PASS);
    assert_eq!(h.known(ip("198.18.0.77")), Some(true), "ATK's /24");
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn verified_sources_keep_their_reserve_when_the_budget_fills() {
    // Budget 10, 40 % reserved: unverified sources get 6.
    let h = Harness::new(Config {
        max_half_open: 10,
        max_half_open_per_source: 0,
        verified_reserve_pct: 40,
        ..Config::DEFAULT
    });
    handshake(&h, "198.18.0.2", 40_000);
    // A spoofed flood fills what unverified sources may use.
    for i in 0..6 {
        let src = format!("198.19.0.{i}");
        assert_eq!(h.run(&syn(&src, 1, SRV, 80).bytes()), XDP_PASS, "{src}");
    }
    assert_eq!(h.run(&syn("198.19.1.1", 1, SRV, 80).bytes()), XDP_DROP);
    assert_eq!(h.count(Reason::Global), 1);
    // The verified client still gets in, up to the whole budget.
    for p in 0..4 {
        assert_eq!(
            h.run(&syn("198.18.0.2", 41_000 + p, SRV, 80).bytes()),
            XDP_PASS
        );
    }
    assert_eq!(h.run(&syn("198.18.0.2", 42_000, SRV, 80).bytes()), XDP_DROP);
    assert_eq!(h.count(Reason::Global), 2);
    // A verification expires.
    let mut h2 = Harness::new(Config {
        max_half_open: 2,
        max_half_open_per_source: 0,
        verified_reserve_pct: 50,
        verified_ttl_s: 1,
        ..Config::DEFAULT
    });
    handshake(&h2, "198.18.0.2", 40_000);
    assert_eq!(h2.run(&syn(ATK, 1, SRV, 80).bytes()), XDP_PASS);
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    assert_eq!(
        h2.run(&syn("198.18.0.2", 40_001, SRV, 80).bytes()),
        XDP_DROP
    );
    // ...and a new one restores it.
    h2.set(Config {
        max_half_open: 3,
        max_half_open_per_source: 0,
        verified_reserve_pct: 34,
        verified_ttl_s: 60,
        ..Config::DEFAULT
    });
    handshake(&h2, "198.18.0.2", 40_002);
    // Unverified sources use their 2 of 3 (ATK's attempt still counts)...
    assert_eq!(h2.run(&syn(B, 1, SRV, 80).bytes()), XDP_PASS);
    assert_eq!(h2.run(&syn(C, 1, SRV, 80).bytes()), XDP_DROP);
    // ...and the newly verified client gets the reserved one.
    assert_eq!(
        h2.run(&syn("198.18.0.2", 40_003, SRV, 80).bytes()),
        XDP_PASS
    );
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn final_ack_promotes_and_gives_the_count_back() {
    let c = cfg(1, 10);
    let h = Harness::new(c);
    let s = syn(ATK, 1000, SRV, 80);
    assert_eq!(h.run(&s.bytes()), XDP_PASS);
    assert_eq!(h.global_half_open(&c), 1);
    // At the per-source cap now.
    assert_eq!(h.run(&syn(ATK, 1001, SRV, 80).bytes()), XDP_DROP);
    // The server's SYN-ACK leaves through the egress program.
    let k = 77_000;
    let syn_ack = s.reverse().seg(SYN, k, Some(s.seq + 1), 0);
    assert_eq!(h.run_out(&syn_ack.bytes()), TC_ACT_OK);
    assert_eq!(h.run(&s.then_ack(k + 1).bytes()), XDP_PASS);
    assert!(h.half_open_entries().is_empty());
    let est = h.established_entries();
    assert_eq!(est.len(), 1);
    assert_eq!(
        (est[0].client_state(), est[0].server_state()),
        (TcpState::Established, TcpState::Established)
    );
    assert_eq!(h.global_half_open(&c), 0, "the count was not given back");
    // The source may open a new attempt again.
    assert_eq!(h.run(&syn(ATK, 1001, SRV, 80).bytes()), XDP_PASS);
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn rst_closes_a_half_open_attempt() {
    let c = cfg(1, 10);
    let h = Harness::new(c);
    let s = syn(ATK, 1000, SRV, 80);
    assert_eq!(h.run(&s.bytes()), XDP_PASS);
    assert_eq!(h.run(&s.then_rst().bytes()), XDP_PASS);
    assert!(h.half_open_entries().is_empty());
    assert_eq!(h.global_half_open(&c), 0);
    assert_eq!(h.run(&syn(ATK, 1001, SRV, 80).bytes()), XDP_PASS);
}

/// A real connection between two addresses of a namespace's loopback
/// (198.18.0.1:80 the server, 198.18.0.2 the client), so the kernel has
/// sockets for a tuple the tests then send segments of.
fn real_connection() -> (
    std::net::TcpListener,
    std::net::TcpStream,
    std::net::TcpStream,
) {
    let l = std::net::TcpListener::bind((SRV, 80)).unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"198.18.0.2:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.connect(
        &"198.18.0.1:80"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    let client: std::net::TcpStream = sock.into();
    let (server, _) = l.accept().unwrap();
    (l, client, server)
}

/// A namespace with 198.18.0.1 and .2 on its loopback, for [`real_connection`].
fn sockets_netns(tag: &str) -> handshake_lab::Netns {
    let ns = handshake_lab::Netns::new(&format!("{tag}{}", std::process::id() % 100_000)).unwrap();
    ns.ip(&["link", "set", "lo", "up"]).unwrap();
    for a in ["198.18.0.1/32", "198.18.0.2/32"] {
        ns.ip(&["addr", "add", a, "dev", "lo"]).unwrap();
    }
    ns
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn unknown_flows_ask_the_kernel() {
    let ns = sockets_netns("uf");
    ns.run(|| {
        let (_l, client, server) = real_connection();
        let cport = client.local_addr()?.port();
        for mode in [Mode::Enforce, Mode::Monitor] {
            let h = Harness::new(Config {
                mode: mode as u32,
                ..cfg(1, 1)
            });
            let drop = if mode == Mode::Enforce {
                XDP_DROP
            } else {
                XDP_PASS
            };
            // Data of the real connection, which began before the gate:
            // the kernel has its socket, so it is picked up, with the
            // higher port as the client.
            let mut data = syn("198.18.0.2", cport, SRV, 80).seg(0, 5_000, Some(7_000), 0);
            data.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
            assert_eq!(h.run(&data.bytes()), XDP_PASS);
            let est = h.established_entries();
            assert_eq!(est.len(), 1);
            assert_eq!(est[0].client_state(), TcpState::Established);
            assert_eq!(h.count(Reason::Pass), 1);
            // The same from a port the kernel has no socket for: an ACK, a
            // FIN, data, an RST, a SYN-ACK; to the listening port or not.
            for (sport, dport, flags) in [
                (cport + 1, 80, 0),
                (cport + 1, 80, FIN),
                (40_001, 81, 0),
                (40_002, 81, RST),
                (40_003, 80, RST),
                (40_004, 80, SYN),
            ] {
                let mut t = syn("198.18.0.2", sport, SRV, dport).seg(flags, 9, Some(9), 0);
                t.payload = b"x".to_vec();
                assert_eq!(h.run(&t.bytes()), drop, "{sport} → {dport} {flags:#x}");
            }
            assert_eq!(h.count(Reason::NoConn), 6);
            assert_eq!(h.established_entries().len(), 1, "no entry for no_conn");
            assert!(h.half_open_entries().is_empty());
            // With pick-up, the loose policy: every one is tracked.
            let mut c = h.config();
            c.unknown_flows = UnknownFlows::PickUp as u32;
            let mut h = h;
            h.set(c);
            let t = syn("198.18.0.2", 40_009, SRV, 81).seg(0, 9, Some(9), 0);
            assert_eq!(h.run(&t.bytes()), XDP_PASS);
            assert_eq!(h.established_entries().len(), 2);
        }
        // A socket in TIME_WAIT (the client closed first): its connection
        // is over; passed untracked.
        drop(client);
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(server);
        std::thread::sleep(std::time::Duration::from_millis(100));
        let h = Harness::new(cfg(1, 1));
        let ack = syn(SRV, 80, "198.18.0.2", cport).seg(FIN, 1, Some(1), 0);
        assert_eq!(h.run(&ack.bytes()), XDP_PASS);
        assert_eq!(h.count(Reason::Pass), 1);
        Ok(())
    })
    .unwrap();
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn counts_return_to_zero_after_the_timeout() {
    let c = Config {
        // Long enough that the checks below fit inside it even in a slow
        // emulated VM.
        half_open_timeout_ms: 1_000,
        ..cfg(3, 100)
    };
    let h = Harness::new(c);
    for p in 1000..1003 {
        assert_eq!(h.run(&syn(ATK, p, SRV, 80).bytes()), XDP_PASS);
    }
    assert_eq!(h.run(&syn(ATK, 1003, SRV, 80).bytes()), XDP_DROP);
    assert_eq!(h.global_half_open(&c), 3);
    // Timeout plus one bucket (1000 ms · 8/7) and some slack.
    std::thread::sleep(std::time::Duration::from_millis(1_300));
    assert_eq!(h.global_half_open(&c), 0, "counts leaked past the timeout");
    assert_eq!(h.run(&syn(ATK, 1003, SRV, 80).bytes()), XDP_PASS);
    // The expired attempt's retransmission starts a new attempt.
    assert_eq!(h.run(&syn(ATK, 1000, SRV, 80).bytes()), XDP_PASS);
    assert_eq!(h.global_half_open(&c), 2);
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn raising_the_cap_live_admits_at_once() {
    let mut h = Harness::new(cfg(2, 100));
    for p in 1000..1002 {
        assert_eq!(h.run(&syn(ATK, p, SRV, 80).bytes()), XDP_PASS);
    }
    assert_eq!(h.run(&syn(ATK, 1002, SRV, 80).bytes()), XDP_DROP);
    h.set(cfg(3, 100));
    assert_eq!(h.run(&syn(ATK, 1002, SRV, 80).bytes()), XDP_PASS);
    assert_eq!(h.run(&syn(ATK, 1003, SRV, 80).bytes()), XDP_DROP);
    // Aggregating by /24 puts a neighbour in the same budget.
    h.set(Config {
        source_prefix_v4: 24,
        ..cfg(3, 100)
    });
    assert_eq!(h.run(&syn("198.18.0.67", 1000, SRV, 80).bytes()), XDP_PASS);
}

#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn batched_reads_see_every_entry_once() {
    use aya::maps::{HashMap, IterableMap as _, MapData};
    use handshake_common::{FlowEntry, FlowKey, maps};
    let mut h = Harness::new(cfg(0, 0));
    // More than two batches' worth, so the position token is followed.
    let n = 2 * handshake_user::batch::BATCH as usize + 123;
    {
        let mut m: HashMap<&mut MapData, FlowKey, FlowEntry> =
            HashMap::try_from(h.ebpf.map_mut(maps::ESTABLISHED_V6).unwrap()).unwrap();
        for i in 0..n as u32 {
            let mut k = FlowKey::default();
            k.lo_addr[..4].copy_from_slice(&i.to_be_bytes());
            let e = FlowEntry {
                created: i,
                ..FlowEntry::default()
            };
            m.insert(k, e, 0).unwrap();
        }
    }
    let m: HashMap<&MapData, FlowKey, FlowEntry> =
        HashMap::try_from(h.ebpf.map(maps::ESTABLISHED_V6).unwrap()).unwrap();
    let mut got: Vec<u64> = handshake_user::batch::read_all::<FlowKey, FlowEntry>(m.map())
        .expect("BPF_MAP_LOOKUP_BATCH")
        .into_iter()
        .map(|(k, e)| {
            assert_eq!(
                u32::from_be_bytes(k.lo_addr[..4].try_into().unwrap()),
                e.created,
                "a value under the wrong key"
            );
            u64::from(e.created)
        })
        .collect();
    got.sort_unstable();
    assert_eq!(got, (0..n as u64).collect::<Vec<_>>());
}

/// A drop event names the dropped packet's own connection: a packet refused
/// before any lookup (`bad_flags`, port 0) right after a tracked one must not
/// carry the tracked one's tuple or states.
#[test]
#[ignore = "privileged: needs root and BPF; run by `cargo xtask test`"]
fn drop_events_name_the_dropped_packets_own_connection() {
    use handshake_common::DropEvent;
    let mut h = Harness::new(Config {
        event_sample: 1,
        ..cfg(0, 0)
    });
    handshake(&h, ATK, 4000);
    let tracked = syn(ATK, 4000, SRV, 80);
    // A NULL segment (no flag at all) on another tuple, after a packet of
    // the tracked connection.
    assert_eq!(h.run(&tracked.then_ack(9_001).bytes()), XDP_PASS);
    let null = syn(ATK, 4001, SRV, 80).seg(0, 7, None, 0);
    assert_eq!(h.run(&null.bytes()), XDP_DROP);
    let mut ring =
        aya::maps::RingBuf::try_from(h.ebpf.map_mut(handshake_common::maps::EVENTS).unwrap())
            .unwrap();
    let item = ring.next().expect("an event for the NULL segment");
    assert_eq!(item.len(), std::mem::size_of::<DropEvent>());
    let e: DropEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
    assert_eq!(e.reason, Reason::BadFlags as u8);
    assert_eq!(
        u16::from_be(e.src_port),
        4001,
        "the event names another packet"
    );
    assert_eq!(
        (e.client_state, e.server_state),
        (DropEvent::NO_STATE, DropEvent::NO_STATE),
        "the tracked connection's states on a packet of no connection"
    );
}
