//! Operating the gate: the `run` daemon (metrics, SIGHUP, SIGTERM, SIGKILL),
//! `attach --replace` under a live connection, drop events and the
//! `status --watch` view. Real server, real clients, network namespaces;
//! needs root; `cargo xtask test` runs it.

mod common;

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::daemon::*;
use common::{Attached, cli, cli_with, pin_dir};
use handshake_lab::Lab;
use nix::sys::signal::Signal;

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn daemon_serves_metrics_sweeps_reloads_and_detaches_on_sigterm() {
    let (lab, addr, _server) = lab_with_server("opa");
    let _cleanup = DetachOnDrop(&lab);
    let cfg = config_file(
        "opa",
        "max-half-open-per-source = 10\nhalf-open-timeout-ms = 3000\n",
    );
    let mut d = Daemon::start(&lab, "opa", &["--config", cfg.to_str().unwrap()]);
    assert!(pin_dir(&lab).exists(), "the daemon did not attach");
    d.wait_for_log("attached to");
    assert!(
        !d.log().contains("not forwarded"),
        "the programs' log is not forwarded: {}",
        d.log()
    );

    let m = d.scrape();
    for name in [
        "handshake_gate_packets_total",
        "handshake_gate_dropped_total",
        "handshake_gate_connections",
        "handshake_gate_half_open",
        "handshake_gate_limit",
        "handshake_gate_mode",
        "handshake_gate_overflow",
        "handshake_gate_map_entries",
        "handshake_gate_map_capacity",
        "handshake_gate_swept_total",
        "handshake_gate_cookies_sent_total",
    ] {
        assert!(
            m.samples.iter().any(|s| s.metric == name),
            "no metric {name}"
        );
    }
    dashboard_queries_what_is_served(&m);
    assert_eq!(
        metric(
            &m,
            "handshake_gate_limit",
            &[("setting", "max-half-open-per-source")]
        ),
        10.0
    );
    assert_eq!(
        metric(&m, "handshake_gate_mode", &[("mode", "enforce")]),
        1.0
    );
    assert_eq!(
        metric(
            &m,
            "handshake_gate_dropped_total",
            &[("reason", "per_source")]
        ),
        0.0
    );

    // A flood moves the values.
    flood_from(&lab, addr, "198.18.0.66", 200);
    let m = d.scrape();
    assert_eq!(
        metric(
            &m,
            "handshake_gate_dropped_total",
            &[("reason", "per_source")]
        ),
        190.0
    );
    assert_eq!(
        metric(
            &m,
            "handshake_gate_packets_total",
            &[("direction", "in"), ("reason", "per_source")]
        ),
        190.0
    );
    assert_eq!(
        metric(
            &m,
            "handshake_gate_connections",
            &[("side", "client"), ("state", "SYN_SENT")]
        ),
        10.0
    );
    assert_eq!(
        metric(&m, "handshake_gate_map_entries", &[("map", "half_open")]),
        10.0
    );

    // SIGHUP with a good file: the new limit, live.
    std::fs::write(
        &cfg,
        "max-half-open-per-source = 20\nhalf-open-timeout-ms = 3000\n",
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("max-half-open-per-source: 10 -> 20");
    assert_eq!(status(&lab)["limits"]["max-half-open-per-source"], 20);

    // SIGHUP with a bad file: the running settings stay, the log says why.
    std::fs::write(&cfg, "max-half-open-per-source = \"lots\"\n").unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("kept the running settings");
    assert!(d.log().contains("max-half-open-per-source"), "{}", d.log());
    assert_eq!(status(&lab)["limits"]["max-half-open-per-source"], 20);
    assert_eq!(status(&lab)["limits"]["half-open-timeout-ms"], 3000);

    // The sweeper deletes the flood's attempts once they expire.
    eventually("the sweeper empties the half-open map", || {
        let m = d.scrape();
        metric(&m, "handshake_gate_map_entries", &[("map", "half_open")]) == 0.0
            && metric(&m, "handshake_gate_swept_total", &[("map", "half_open")]) == 10.0
    });

    // SIGHUP into overflow=cookie: the namespace's TCP settings change, and
    // the log says so.
    std::fs::write(
        &cfg,
        "max-half-open-per-source = 20\nhalf-open-timeout-ms = 3000\noverflow = \"cookie\"\n",
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    d.wait_for_log("set net.ipv4.tcp_syncookies to 2");
    assert_eq!(status(&lab)["limits"]["overflow"], "cookie");

    // SIGTERM: it attached the gate, so it detaches it, and puts the TCP
    // settings back.
    d.signal(Signal::SIGTERM);
    assert!(d.wait(), "the daemon failed; its log:\n{}", d.log());
    assert!(!pin_dir(&lab).exists(), "pins left after SIGTERM");
    assert!(d.log().contains("detached from"), "{}", d.log());
    assert!(
        d.log().contains("put net.ipv4.tcp_syncookies back to 1"),
        "{}",
        d.log()
    );
    let syncookies = lab
        .server
        .exec("sysctl", &["-n", "net.ipv4.tcp_syncookies"])
        .unwrap();
    assert_eq!(syncookies.trim(), "1");
    let _ = std::fs::remove_file(&cfg);
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn the_gate_outlives_a_killed_daemon_and_an_adopting_daemon_leaves_it_attached() {
    let (lab, addr, _server) = lab_with_server("opb");
    let _cleanup = DetachOnDrop(&lab);
    let cfg = config_file("opb", "max-half-open-per-source = 10\n");
    let mut d = Daemon::start(
        &lab,
        "opb",
        &["--config", cfg.to_str().unwrap(), "--metrics", "off"],
    );
    d.signal(Signal::SIGKILL);
    let _ = d.wait();
    // Nobody runs now; the gate still protects.
    assert!(pin_dir(&lab).exists());
    flood_from(&lab, addr, "198.18.0.66", 100);
    let s = status(&lab);
    assert_eq!(s["drops"]["per_source"], 90, "{s:#}");
    assert_eq!(s["half_open"], 10, "{s:#}");

    // A new daemon adopts the gate, keeps its counts, and leaves it attached.
    let mut d = Daemon::start(&lab, "opb2", &[]);
    d.wait_for_log("adopted the gate");
    let m = d.scrape();
    assert_eq!(
        metric(
            &m,
            "handshake_gate_dropped_total",
            &[("reason", "per_source")]
        ),
        90.0
    );
    d.signal(Signal::SIGTERM);
    assert!(d.wait(), "{}", d.log());
    assert!(
        pin_dir(&lab).exists(),
        "an adopting daemon detached the gate"
    );
    flood_from(&lab, addr, "198.18.0.67", 100);
    assert_eq!(status(&lab)["drops"]["per_source"], 180);
    let _ = std::fs::remove_file(&cfg);
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn daemon_follows_a_configmap_update_and_answers_health_checks() {
    let (lab, _addr, _server) = lab_with_server("opc");
    let _cleanup = DetachOnDrop(&lab);
    let mut cm = ConfigMapDir::new("opc", "max-half-open-per-source = 10\n");
    let file = cm.file();
    let d = Daemon::start(&lab, "opc", &["--config", file.to_str().unwrap()]);
    let per_source = || status(&lab)["limits"]["max-half-open-per-source"].clone();
    assert_eq!(per_source(), 10);
    assert_eq!(get(&d, "/healthz"), (200, "ok\n".into()));
    assert_eq!(get(&d, "/readyz"), (200, "ok\n".into()));

    // The ConfigMap changes: the new limit takes effect with no signal.
    cm.update("max-half-open-per-source = 25\n");
    let start = Instant::now();
    while per_source() != 25 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the swapped file's limit never took effect; the daemon's log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    d.wait_for_log("the config file changed: reloaded");
    // A file that does not validate changes nothing, and the log says why.
    cm.update("max-half-open-per-source = 99999999\n");
    d.wait_for_log("the config file changed: kept the running settings");
    assert_eq!(per_source(), 25);

    // Not ready once the gate is off the hook; alive all along.
    let _ = cli(&["--netns", &lab.server.name, "detach", &lab.server_if]);
    let (code, body) = get(&d, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.starts_with("not ready"), "{body}");
    assert_eq!(get(&d, "/healthz").0, 200);
}

/// systemd's notify protocol against a real notify socket: `READY=1` once
/// the gate is attached and the metrics served, the watchdog fed by the
/// sweeps, `RELOADING=1` then `READY=1` around a reload, `STOPPING=1`.
#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn the_daemon_tells_systemd_ready_reloading_stopping_and_feeds_the_watchdog() {
    use std::os::unix::net::UnixDatagram;
    let (lab, _addr, _server) = lab_with_server("opn");
    let _cleanup = DetachOnDrop(&lab);
    let sock = std::env::temp_dir().join(format!("hg-notify-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&sock);
    let notify = UnixDatagram::bind(&sock).expect("bind the notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    // Waits for a message that has `what`; the messages seen on the way.
    let next = |what: &str| -> Vec<String> {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = notify
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no {what:?} from the daemon: {e}; it sent {seen:?}"));
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = msg.lines().any(|l| l == what);
            seen.push(msg);
            if found {
                return seen;
            }
        }
    };
    let cfg = config_file("opn", "max-half-open-per-source = 10\n");
    let mut d = Daemon::start_env(
        &lab,
        "opn",
        &["--config", cfg.to_str().unwrap()],
        &[
            ("NOTIFY_SOCKET", sock.to_str().unwrap()),
            // Word is wanted every 2 s: the 1 s sweeps give it.
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let ready = next("READY=1");
    assert!(
        ready.last().unwrap().contains("STATUS=protecting "),
        "{ready:?}"
    );
    // Ready means attached and serving.
    assert!(
        pin_dir(&lab).exists(),
        "READY=1 before the gate was attached"
    );
    assert_eq!(get(&d, "/readyz"), (200, "ok\n".into()));
    for _ in 0..3 {
        next("WATCHDOG=1");
    }

    std::fs::write(
        &cfg,
        "max-half-open-per-source = 12\ndeny = [\"198.18.66.0/24 # scanners\"]\n",
    )
    .unwrap();
    d.signal(Signal::SIGHUP);
    let reloading = next("RELOADING=1");
    assert!(
        reloading.last().unwrap().contains("MONOTONIC_USEC="),
        "{reloading:?}"
    );
    next("READY=1");
    let s = status(&lab);
    assert_eq!(s["limits"]["max-half-open-per-source"], 12);
    // The file's deny list, applied with the reload, and said so.
    assert_eq!(s["prefix_lists"]["deny"], 1, "{s:#}");
    d.wait_for_log("prefix lists: 1 added, 0 removed");

    d.signal(Signal::SIGTERM);
    next("STOPPING=1");
    assert!(d.wait(), "the daemon failed on SIGTERM: {}", d.log());
    let _ = std::fs::remove_file(&sock);
}

/// `check` changes nothing and says what an attach would meet: ok on a
/// free hook, an error naming another program that holds it, a config
/// file that does not validate an error, the exit status non-zero then.
#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn check_reports_the_hook_the_config_and_the_kernel_and_changes_nothing() {
    let (lab, _addr, _server) = lab_with_server("opk");
    let _cleanup = DetachOnDrop(&lab);
    let ns = lab.server.name.clone();
    let iface = lab.server_if.clone();
    let check = |extra: &[&str]| -> (bool, serde_json::Value) {
        let mut args = vec!["--netns", &ns, "check", &iface, "--json"];
        args.extend_from_slice(extra);
        let (ok, out, err) = cli(&args);
        let v = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
        (ok, v)
    };
    let status_of = |v: &serde_json::Value, name: &str| -> String {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["check"] == name)
            .unwrap_or_else(|| panic!("no {name} item: {v:#}"))["status"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let good = config_file("opk", "max-half-open = 100\noverflow = \"cookie\"\n");
    let (ok, v) = check(&["--config", good.to_str().unwrap()]);
    assert!(ok, "{v:#}");
    for name in [
        "privileges",
        "bpffs",
        "kernel",
        "interface",
        "xdp hook",
        "config",
        "memory",
    ] {
        assert_eq!(status_of(&v, name), "ok", "{v:#}");
    }
    assert_eq!(v["errors"], 0, "{v:#}");
    assert!(!pin_dir(&lab).exists(), "check attached something");

    let bad = config_file("opk-bad", "max-half-open = -3\n");
    let (ok, v) = check(&["--config", bad.to_str().unwrap()]);
    assert!(!ok, "a bad config file passed: {v:#}");
    assert_eq!(status_of(&v, "config"), "error", "{v:#}");

    // Another program on the hook: an error, naming it.
    {
        let _other = handshake_user::testrun::PeerXdp::attach(&ns, &iface).unwrap();
        let (ok, v) = check(&[]);
        assert!(!ok, "{v:#}");
        assert_eq!(status_of(&v, "xdp hook"), "error", "{v:#}");
        let item = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["check"] == "xdp hook")
            .unwrap()
            .clone();
        assert!(
            item["detail"].as_str().unwrap().contains("noop_xdp"),
            "{item:#}"
        );
        assert!(
            item["fix"].as_str().unwrap().contains("xdp off"),
            "{item:#}"
        );
    }
    // The gate itself on the hook is fine.
    let _gate = Attached::new(&lab, &[]);
    let (ok, v) = check(&[]);
    assert!(ok, "{v:#}");
    assert_eq!(status_of(&v, "xdp hook"), "ok", "{v:#}");
    let _ = std::fs::remove_file(good);
    let _ = std::fs::remove_file(bad);
}

/// `events --pcap`: the dropped frames as pcapng, each with its reason in
/// the packet's comment, read back here and by tcpdump, from a file and
/// from a pipe (`--pcap - | tcpdump -r -`).
#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn events_write_the_dropped_frames_as_pcapng_that_tcpdump_reads() {
    use pcap_file::pcapng::{Block, PcapNgReader};
    let (lab, addr, _server) = lab_with_server("ope");
    let gate = Attached::new(&lab, &["max-half-open-per-source=5", "event-sample=1"]);
    flood_from(&lab, addr, "198.18.0.66", 25);
    let file = std::env::temp_dir().join(format!("hg-ope-{}.pcapng", std::process::id()));
    let path = file.to_str().unwrap();
    let out = gate.run(
        "events",
        &["--pcap", path, "--count", "20", "--timeout", "10"],
    );
    assert_eq!(out.lines().count(), 20, "{out}");

    let mut r = PcapNgReader::new(std::fs::File::open(&file).unwrap()).expect("pcapng");
    let mut frames = 0;
    while let Some(block) = r.next_block() {
        let Block::EnhancedPacket(p) = block.expect("a well-formed block") else {
            continue;
        };
        frames += 1;
        let sliced = etherparse::SlicedPacket::from_ethernet(&p.data).expect("an Ethernet frame");
        let Some(etherparse::NetSlice::Ipv4(ip)) = sliced.net else {
            panic!("not IPv4: {:?}", p.data);
        };
        assert_eq!(ip.header().source(), [198, 18, 0, 66]);
        let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
            panic!("not TCP");
        };
        assert_eq!(tcp.destination_port(), 8080);
        assert!(tcp.syn() && !tcp.ack());
        assert_eq!(p.original_len as usize, p.data.len(), "a SYN fits whole");
        let comment = p.options.iter().find_map(|o| match o {
            pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption::Comment(c) => {
                Some(c.to_string())
            }
            _ => None,
        });
        assert!(
            comment
                .as_deref()
                .is_some_and(|c| c.starts_with("per_source")),
            "{comment:?}"
        );
    }
    assert_eq!(frames, 20);

    let have_tcpdump = Command::new("tcpdump").arg("--version").output().is_ok();
    if !have_tcpdump && std::env::var_os("HANDSHAKE_IN_VM").is_some() {
        println!("skipped in the VM: no tcpdump in the guest");
        let _ = std::fs::remove_file(&file);
        return;
    }
    let (ok, out, err) = common::cli::outcome(Command::new("tcpdump").args(["-nr", path]));
    assert!(ok, "tcpdump could not read it: {err}");
    assert_eq!(out.lines().count(), 20, "{out}");
    for l in out.lines() {
        assert!(
            l.contains("198.18.0.66.") && l.contains("> 198.18.0.1.8080: Flags [S]"),
            "{l}"
        );
    }

    // Through a pipe, as it happens: a new source, five over its cap.
    flood_from(&lab, addr, "198.18.0.67", 10);
    let mut events = Command::new(common::cli::GATE)
        .args(["--netns", &lab.server.name, "events", &lab.server_if])
        .args(["--pcap", "-", "--count", "5", "--timeout", "10"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (ok, out, err) = common::cli::outcome(
        Command::new("tcpdump")
            .args(["-nr", "-"])
            .stdin(events.stdout.take().unwrap()),
    );
    assert!(events.wait().unwrap().success());
    assert!(ok, "tcpdump could not read the pipe: {err}");
    assert_eq!(out.lines().count(), 5, "{out}");
    let _ = std::fs::remove_file(&file);
}

/// The kernel ids of the gate's pinned programs: (XDP, TC egress).
fn program_ids(lab: &Lab) -> (u32, u32) {
    let id = |pin: &str| {
        aya::programs::ProgramInfo::from_pin(pin_dir(lab).join(pin))
            .expect("pinned program")
            .id()
    };
    (id("xdp_prog"), id("tc_prog"))
}

/// Ids of the gate's programs loaded in the kernel now, by name.
fn loaded(name: &str) -> Vec<u32> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .filter(|p| p.name_as_str() == Some(name))
        .map(|p| p.id())
        .collect()
}

/// Waits (2 s at most) until exactly the programs `want` are loaded under
/// `name`: the kernel frees a replaced program from deferred work.
fn loaded_settles(name: &str, want: &[u32]) -> Vec<u32> {
    let start = Instant::now();
    loop {
        let mut have = loaded(name);
        have.sort();
        if have == want || start.elapsed() > Duration::from_secs(2) {
            return have;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server for one connection that echoes until the client closes, with
/// no idle timeout worth the name (an emulated VM can take many seconds
/// between two messages); the lab's echo server gives up after 10 s idle.
fn patient_echo_server(lab: &Lab, addr: SocketAddr) {
    let listener = lab
        .server
        .run(move || Ok(std::net::TcpListener::bind(addr)?))
        .expect("listen");
    std::thread::spawn(move || {
        let Ok((mut conn, _)) = listener.accept() else {
            return;
        };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(600)));
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 || conn.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    });
}

fn echo(conn: &mut TcpStream, msg: &[u8]) {
    conn.write_all(msg).expect("send");
    let mut back = vec![0u8; msg.len()];
    conn.read_exact(&mut back).expect("echo");
    assert_eq!(back, msg);
}

#[test]
#[ignore = "privileged: needs root, netns, XDP and TC; run by `cargo xtask test`"]
fn replace_swaps_the_programs_and_keeps_connections_counts_and_settings() {
    let lab = Lab::new("opc").expect("lab");
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), 8080);
    patient_echo_server(&lab, addr);
    let gate = Attached::new(
        &lab,
        &["max-half-open-per-source=10", "half-open-timeout-ms=60000"],
    );
    let ns = lab.server.name.clone();
    let iface = lab.server_if.clone();
    // A connection made through the gate, open across the swap.
    let mut conn = lab
        .client
        .run(move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?))
        .expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    echo(&mut conn, b"before");
    flood_from(&lab, addr, "198.18.0.66", 20);
    let local = conn.local_addr().unwrap().to_string();
    let find = |conns: Vec<serde_json::Value>| {
        conns
            .into_iter()
            .find(|c| c["client"] == local.as_str())
            .unwrap_or_else(|| panic!("{local} not tracked"))
    };
    let before = find(gate.conns());
    assert_eq!(before["client_state"], "ESTABLISHED");
    assert_eq!(before["server_state"], "ESTABLISHED");
    let s = gate.status();
    assert_eq!(s["half_open"], 10, "{s:#}");
    assert_eq!(s["drops"]["per_source"], 10, "{s:#}");
    let old = program_ids(&lab);

    let (ok, out, err) = cli(&["--netns", &ns, "attach", &iface, "--replace"]);
    assert!(ok, "attach --replace failed: {err}");
    assert!(out.contains("replaced the programs"), "{out}");
    let new = program_ids(&lab);
    assert_ne!(new.0, old.0, "the XDP program was not replaced");
    assert_ne!(new.1, old.1, "the TC program was not replaced");
    // The old programs are gone from the kernel: the links run the new ones.
    assert_eq!(loaded_settles("handshake_in", &[new.0]), [new.0]);
    assert_eq!(loaded_settles("handshake_out", &[new.1]), [new.1]);

    // Same connection, same states, its age not reset; counts and settings kept.
    let after = find(gate.conns());
    assert_eq!(after["client_state"], "ESTABLISHED");
    assert_eq!(after["server_state"], "ESTABLISHED");
    assert!(
        after["age_ms"].as_u64() >= before["age_ms"].as_u64(),
        "{before} / {after}"
    );
    let s = gate.status();
    assert_eq!(s["half_open"], 10, "{s:#}");
    assert_eq!(s["drops"]["per_source"], 10, "{s:#}");
    assert_eq!(s["limits"]["max-half-open-per-source"], 10, "{s:#}");
    let passed = s["packets"]["pass"].as_u64().unwrap();

    // The connection keeps working, through the new programs.
    echo(&mut conn, b"after the swap");
    assert!(gate.status()["packets"]["pass"].as_u64().unwrap() > passed);
    // The new programs enforce with the old counts: that source is still
    // full. The sender repeats its tuples: of these 30, the 10 tracked ones
    // pass as retransmissions, the 10 refused before and 10 new ones are
    // dropped.
    flood_from(&lab, addr, "198.18.0.66", 30);
    assert_eq!(gate.status()["drops"]["per_source"], 30);

    // A failure between the two swaps puts the old egress program back.
    let (ok, _, err) = cli_with(
        &["--netns", &ns, "attach", &iface, "--replace"],
        &[("HANDSHAKE_GATE_FAIL_AT", "replace-xdp")],
    );
    assert!(!ok, "the injected failure did not fail");
    assert!(err.contains("injected failure"), "{err}");
    assert_eq!(program_ids(&lab), new);
    assert_eq!(loaded_settles("handshake_in", &[new.0]), [new.0]);
    assert_eq!(loaded_settles("handshake_out", &[new.1]), [new.1]);
    echo(&mut conn, b"still");

    // Maps of another layout: refused, nothing changed.
    {
        let data = aya::maps::MapData::from_pin(pin_dir(&lab).join("META")).unwrap();
        let mut meta: aya::maps::Array<_, u64> =
            aya::maps::Array::try_from(aya::maps::Map::Array(data)).unwrap();
        meta.set(handshake_common::meta::LAYOUT, 999, 0).unwrap();
    }
    let (ok, _, err) = cli(&["--netns", &ns, "attach", &iface, "--replace"]);
    assert!(!ok, "a replace over another layout succeeded");
    assert!(err.contains("do not fit this version"), "{err}");
    assert!(err.contains("layout version 999"), "{err}");
    assert_eq!(program_ids(&lab), new);
    echo(&mut conn, b"unharmed");

    // A gate attached by a version with one map per connection table (its
    // pin named so): `status` says what to do, and `detach` still works.
    let dir = pin_dir(&lab);
    std::fs::rename(dir.join("HALF_OPEN_V4"), dir.join("HALF_OPEN")).unwrap();
    let (ok, _, err) = cli(&["--netns", &ns, "conns", &iface]);
    assert!(!ok, "conns read a gate of another layout");
    assert!(err.contains("HALF_OPEN_V4"), "{err}");
    assert!(err.contains("detach"), "{err}");
    let (ok, _, err) = cli(&["--netns", &ns, "detach", &iface]);
    assert!(ok, "detach of an older gate: {err}");
    assert!(!dir.exists(), "pins left behind");
    assert_eq!(loaded_settles("handshake_in", &[]), Vec::<u32>::new());
    drop(gate);
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn events_name_the_flooder_and_watch_shows_rates() {
    let (lab, addr, _server) = lab_with_server("opd");
    let gate = Attached::new(&lab, &["max-half-open-per-source=5", "event-sample=1"]);
    flood_from(&lab, addr, "198.18.0.66", 50);
    let out = gate.run("events", &["--json", "--count", "45", "--timeout", "10"]);
    let events: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(events.len(), 45, "{out}");
    for e in &events {
        assert_eq!(e["reason"], "per_source", "{e}");
        assert_eq!(e["dropped"], true, "{e}");
        assert!(
            e["source"].as_str().unwrap().starts_with("198.18.0.66:"),
            "{e}"
        );
        assert_eq!(e["destination"], "198.18.0.1:8080", "{e}");
        assert_eq!(e["destination_port"], 8080, "{e}");
        assert_eq!(e["tcp_flags"], "S", "{e}");
        assert!(e["client_state"].is_null(), "{e}");
    }
    // Sampling: one in 10 (random), so about 5 of the next 50 drops.
    gate.run("set", &["event-sample=10"]);
    flood_from(&lab, addr, "198.18.0.67", 55);
    let out = gate.run("events", &["--json", "--timeout", "1"]);
    let n = out.lines().count();
    assert!(n < 50, "event-sample=10 let {n} of 50 drops through");

    // --watch: two refreshes, the second with rates.
    let out = gate.run("status", &["--watch", "1", "--count", "2"]);
    assert!(out.contains("--- refresh 2 ---"), "{out}");
    assert!(out.contains("arriving/s"), "{out}");
}
