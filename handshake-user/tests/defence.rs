//! Flood defence end to end: a real server in a network namespace, real
//! clients, the project's flood sender, and the kernel's own counters
//! (`nstat`) as the witness of what reached the server's TCP stack. Needs
//! root; `cargo xtask test` runs it.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::{Attached, flood, spoofed_flood};
use handshake_lab::{EchoServer, Lab, Sources, connect_each, connect_many};

const CONNECT: Duration = Duration::from_secs(1);

fn server(lab: &Lab, port: u16, backlog: i32) -> (SocketAddr, EchoServer) {
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), port);
    (
        addr,
        EchoServer::start(&lab.server, addr, backlog).expect("server"),
    )
}

/// A second address on the client's interface, for a client the server has
/// never seen.
fn new_client_address(lab: &Lab, last_octet: u8) -> IpAddr {
    let a = IpAddr::from([198, 18, 0, last_octet]);
    lab.client
        .ip(&["addr", "add", &format!("{a}/24"), "dev", &lab.client_if])
        .expect("add a client address");
    a
}

/// Waits until the gate's half-open count is 0, or `limit` passes.
fn wait_for_zero(gate: &Attached, limit: Duration) -> serde_json::Value {
    let start = Instant::now();
    loop {
        let s = gate.status();
        if s["half_open"] == 0 || start.elapsed() > limit {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn spoofed_flood_fills_the_budget_but_known_and_new_clients_get_in() {
    let lab = Lab::new("dfa").expect("lab");
    // A small accept queue, so the flood the gate admits fills it and the
    // kernel answers with SYN cookies (tcp_syncookies=1, the default).
    let (addr, _srv) = server(&lab, 8080, 32);
    let gate = Attached::new(
        &lab,
        &[
            "max-half-open=200",
            "max-half-open-per-source=5",
            "verified-reserve-pct=25",
            // Long enough that nothing ages out while a slow (emulated) VM
            // sends the flood and reads the status.
            "half-open-timeout-ms=10000",
        ],
    );
    // A returning client: it completed handshakes before the flood.
    let known = connect_many(&lab.client, addr, 3, CONNECT).unwrap();
    assert_eq!(known.succeeded, 3);
    let fresh = new_client_address(&lab, 3);

    // 2000 spoofed sources from 198.19.0.0/16, one SYN each: they may take
    // 150 of the 200 (25 % is kept for verified sources).
    assert_eq!(spoofed_flood(&lab, addr, 2_000), 2_000);
    let s = gate.status();
    assert_eq!(s["half_open"], 150, "{s:#}");
    assert_eq!(s["drops"]["global"], 1_850, "{s:#}");

    // The returning client still gets in, through the reserve.
    let known = connect_many(&lab.client, addr, 10, CONNECT).unwrap();
    assert_eq!(known.succeeded, 10, "a verified client was locked out");
    // A first-time client is locked out with overflow=drop...
    let new = connect_each(&lab.client, &[fresh], addr, CONNECT).unwrap();
    assert_eq!(new.succeeded, 0, "a new client got in past a full budget");
    // ...and gets in with overflow=pass, answered by the kernel's cookies.
    gate.run("set", &["overflow=pass"]);
    let cookies_before = lab.server.nstat("TcpExtSyncookiesSent").unwrap();
    let new = connect_each(&lab.client, &[fresh; 5], addr, CONNECT).unwrap();
    assert_eq!(new.succeeded, 5, "overflow=pass did not let new clients in");
    let s = gate.status();
    assert!(
        s["packets"]["overflow_pass"].as_u64().unwrap() >= 1,
        "{s:#}"
    );
    assert!(
        lab.server.nstat("TcpExtSyncookiesSent").unwrap() > cookies_before,
        "the kernel did not answer with SYN cookies"
    );
    // Its final ACK carried the kernel's cookie: checked with the kernel,
    // tracked ESTABLISHED, and its source verified...
    assert!(s["packets"]["cookie_ack"].as_u64().unwrap() >= 1, "{s:#}");
    let fresh_conns: Vec<_> = gate
        .conns()
        .into_iter()
        .filter(|c| {
            c["client"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{fresh}:"))
        })
        .collect();
    assert!(
        !fresh_conns.is_empty(),
        "the cookie clients are not tracked"
    );
    for c in &fresh_conns {
        // Past the handshake (the clients may be closing already).
        assert!(
            !["LISTEN", "SYN_RCVD"].contains(&c["server_state"].as_str().unwrap()),
            "{c:#}"
        );
    }
    // ... so with overflow=drop again it gets in through the reserve.
    gate.run("set", &["overflow=drop"]);
    let again = connect_each(&lab.client, &[fresh; 3], addr, CONNECT).unwrap();
    assert_eq!(again.succeeded, 3, "a cookie client was not verified");

    // After the flood, the counts return to 0 by themselves (timeout 10 s,
    // plus one bucket of 10000/7 ms).
    let s = wait_for_zero(&gate, Duration::from_secs(14));
    assert_eq!(s["half_open"], 0, "half-open counts leaked: {s:#}");
    assert_eq!(s["top_sources"], serde_json::json!([]), "{s:#}");
    assert_eq!(s["top_ports"], serde_json::json!([]), "{s:#}");
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn syns_to_a_closed_port_never_reach_the_server() {
    let lab = Lab::new("dfb").expect("lab");
    let (addr, _srv) = server(&lab, 8080, 1024);
    let gate = Attached::new(&lab, &["allowed-ports=8080"]);
    // Resolve the neighbour first, so every flood packet goes out at once.
    assert_eq!(
        connect_many(&lab.client, addr, 1, CONNECT)
            .unwrap()
            .succeeded,
        1
    );
    std::thread::sleep(Duration::from_millis(300));

    let segs = || lab.server.nstat("TcpInSegs").unwrap();
    let before = segs();
    let closed = SocketAddr::new(addr.ip(), 9999);
    assert_eq!(
        flood(
            &lab,
            closed,
            Sources::One("198.18.0.66".parse().unwrap()),
            500,
            1
        ),
        500
    );
    assert_eq!(
        segs(),
        before,
        "SYNs to a closed port reached the server's TCP stack"
    );
    let s = gate.status();
    assert_eq!(s["drops"]["port_closed"], 500, "{s:#}");
    assert_eq!(s["limits"]["allowed-ports"], serde_json::json!([8080]));

    // The witness works: SYNs to the open port do reach the stack.
    assert_eq!(
        flood(
            &lab,
            addr,
            Sources::One("198.18.0.66".parse().unwrap()),
            10,
            1
        ),
        10
    );
    assert!(
        segs() >= before + 10,
        "TcpInSegs did not see SYNs to the open port"
    );

    // Opening the port again lets the next SYNs through.
    gate.run("set", &["allowed-ports=all"]);
    assert_eq!(
        flood(
            &lab,
            closed,
            Sources::One("198.18.0.67".parse().unwrap()),
            5,
            1
        ),
        5
    );
    assert_eq!(gate.status()["drops"]["port_closed"], 500);
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn monitor_mode_passes_everything_and_counts_the_same_drops() {
    let lab = Lab::new("dfc").expect("lab");
    let (addr, _srv) = server(&lab, 8080, 1024);
    let gate = Attached::new(&lab, &["max-half-open-per-source=20", "mode=monitor"]);
    assert_eq!(
        connect_many(&lab.client, addr, 1, CONNECT)
            .unwrap()
            .succeeded,
        1
    );
    std::thread::sleep(Duration::from_millis(300));
    let segs = || lab.server.nstat("TcpInSegs").unwrap();

    let before = segs();
    assert_eq!(
        flood(
            &lab,
            addr,
            Sources::One("198.18.0.66".parse().unwrap()),
            500,
            1
        ),
        500
    );
    let monitor = gate.status();
    assert_eq!(monitor["drops"]["per_source"], 480, "{monitor:#}");
    assert_eq!(
        monitor["dropped_packets"], 0,
        "monitor mode dropped: {monitor:#}"
    );
    assert!(
        segs() >= before + 500,
        "monitor mode kept SYNs from the server"
    );

    // The same flood from another source in enforce mode: the same
    // decisions, now carried out.
    gate.run("set", &["mode=enforce"]);
    let before = segs();
    assert_eq!(
        flood(
            &lab,
            addr,
            Sources::One("198.18.0.77".parse().unwrap()),
            500,
            1
        ),
        500
    );
    let enforce = gate.status();
    assert_eq!(enforce["drops"]["per_source"], 480 + 480, "{enforce:#}");
    assert_eq!(enforce["dropped_packets"], 480, "{enforce:#}");
    assert_eq!(
        segs(),
        before + 20,
        "exactly the admitted SYNs reach the server"
    );
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn syn_rate_and_per_port_caps_hold_against_a_real_flood() {
    let lab = Lab::new("dfd").expect("lab");
    let (addr, _srv) = server(&lab, 8080, 1024);
    let gate = Attached::new(
        &lab,
        &[
            "syn-rate-per-source=10",
            "syn-burst=50",
            "max-half-open-per-source=0",
            "max-half-open-per-port=100",
        ],
    );
    assert_eq!(
        connect_many(&lab.client, addr, 1, CONNECT)
            .unwrap()
            .succeeded,
        1
    );
    // One source sends 1000 SYNs in far less than a second: the burst of 50
    // (and perhaps a token or two that refilled) passes.
    assert_eq!(
        flood(
            &lab,
            addr,
            Sources::One("198.18.0.66".parse().unwrap()),
            1_000,
            1
        ),
        1_000
    );
    let s = gate.status();
    let rate_drops = s["drops"]["syn_rate"].as_u64().unwrap();
    assert!(
        (940..=950).contains(&rate_drops),
        "syn_rate drops {rate_drops}: {s:#}"
    );
    // 300 sources, one SYN each: the port holds at most 100 (less the
    // rate-limited source's 50 or so).
    let many = Sources::Range {
        first: "198.19.1.0".parse().unwrap(),
        count: 300,
    };
    assert_eq!(flood(&lab, addr, many, 300, 1), 300);
    let s = gate.status();
    assert_eq!(s["top_ports"][0]["port"], 8080, "{s:#}");
    assert_eq!(s["top_ports"][0]["half_open"], 100, "{s:#}");
    assert_eq!(s["half_open"], 100, "{s:#}");
    let admitted_rate = 1_000 - rate_drops;
    assert_eq!(s["drops"]["per_port"], 300 - (100 - admitted_rate), "{s:#}");
}

#[test]
#[ignore = "privileged: needs root, netns, XDP and hping3; run by `cargo xtask test`"]
fn an_independent_flooder_meets_the_same_caps() {
    let lab = Lab::new("dfe").expect("lab");
    let (addr, _srv) = server(&lab, 8080, 1024);
    let gate = Attached::new(&lab, &["max-half-open-per-source=25"]);
    assert_eq!(
        connect_many(&lab.client, addr, 1, CONNECT)
            .unwrap()
            .succeeded,
        1
    );
    // hping3: 400 SYNs from the spoofed 198.18.0.66, 200 µs apart, to 8080.
    // It exits non-zero when nothing answers, which is the point here.
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client.name,
            "timeout",
            "20",
            "hping3",
            "-q",
            "-S",
        ])
        .args([
            "-p",
            "8080",
            "-a",
            "198.18.0.66",
            "-c",
            "400",
            "-i",
            "u200",
            "198.18.0.1",
        ])
        .output()
        .expect("run hping3");
    let text = String::from_utf8_lossy(&out.stdout) + String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("400 packets transmitted"), "hping3: {text}");
    let s = gate.status();
    assert_eq!(s["drops"]["per_source"], 400 - 25, "{s:#}");
    assert_eq!(s["top_sources"][0]["source"], "198.18.0.66/32", "{s:#}");
    assert_eq!(s["top_sources"][0]["half_open"], 25, "{s:#}");
}
