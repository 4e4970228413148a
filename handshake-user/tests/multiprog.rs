//! The gate as one program of libxdp's multi-program dispatcher
//! (`attach --multiprog`), beside Debian's xdp-filter and xdp-loader (the
//! reference implementation, installed by `cargo xtask setup`): in either
//! order, through `attach --replace` and a killed daemon, and refused on a
//! hook whose program is no dispatcher. Needs root and a kernel with the
//! BPF trampoline (the VM layer's 6.1); on one without (this host's 6.18)
//! libxdp itself cannot make a dispatcher, and the tests say so and skip.
//! `cargo xtask test` runs it.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::cli::flood_of;
use common::daemon::Daemon;
use common::xdptools::{Filter, hook_id, loader_status, port_hits};
use common::{Attached, cli, pin_dir, spoofed_flood};
use handshake_lab::{EchoServer, Lab, Segments, Sources};
use serde_json::Value;

/// The port the gate guards (an echo server listens).
const GUARDED: u16 = 8080;
/// The port xdp-filter drops (an echo server listens there too, so a
/// segment that got through would be answered).
const BLOCKED: u16 = 9999;

struct Setup {
    lab: Lab,
    _servers: [EchoServer; 2],
}

fn setup(tag: &str) -> Setup {
    let lab = Lab::new(tag).expect("lab");
    let at = |port| SocketAddr::new(Lab::SERVER_V4.into(), port);
    let servers = [
        EchoServer::start(&lab.server, at(GUARDED), 1024).expect("server"),
        EchoServer::start(&lab.server, at(BLOCKED), 128).expect("server"),
    ];
    Setup {
        lab,
        _servers: servers,
    }
}

/// xdp-filter loaded, if libxdp could put it in a dispatcher here; `None`
/// (said on stdout) on a kernel without the BPF trampoline.
fn filter_in_dispatcher(lab: &Lab) -> Option<Filter<'_>> {
    let f = Filter::load(lab, &[]).expect("xdp-filter load");
    if loader_status(lab).contains("xdp_dispatcher") {
        return Some(f);
    }
    println!(
        "skipped: this kernel has no BPF trampoline (freplace), so libxdp loaded xdp-filter \
         alone, without its dispatcher; the VM layer's 6.1 runs this test"
    );
    None
}

/// A connection from the client namespace, if one is made within 0.7 s.
fn connect(lab: &Lab, port: u16) -> Option<TcpStream> {
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), port);
    lab.client
        .run(move || {
            Ok(TcpStream::connect_timeout(
                &addr,
                Duration::from_millis(700),
            )?)
        })
        .ok()
}

/// The filter drops the blocked port; the gate tracks a connection to
/// the guarded one (its state, as `conns` shows it, is what `ss` says).
fn both_work(gate: &Attached, what: &str) {
    assert!(
        connect(gate.lab, BLOCKED).is_none(),
        "{what}: a connection to the filtered port got through"
    );
    let c = connect(gate.lab, GUARDED).unwrap_or_else(|| panic!("{what}: no connection"));
    let port = c.local_addr().unwrap().port();
    std::thread::sleep(Duration::from_millis(200));
    let conns = gate.conns();
    let tracked = conns.iter().find(|c| {
        c["client"]
            .as_str()
            .is_some_and(|s| s.ends_with(&format!(":{port}")))
    });
    let tracked =
        tracked.unwrap_or_else(|| panic!("{what}: the connection is not tracked: {conns:?}"));
    assert_eq!(tracked["server_state"], "ESTABLISHED", "{what}: {tracked}");
    let ss = gate
        .lab
        .server
        .run(move || {
            Ok(std::process::Command::new("ss")
                .args([
                    "-Htn",
                    "state",
                    "established",
                    &format!("( dport = :{port} )"),
                ])
                .output()?)
        })
        .unwrap();
    assert!(
        String::from_utf8_lossy(&ss.stdout).contains(&format!(":{port}")),
        "{what}: ss does not show the connection the gate tracks"
    );
}

/// Sets its flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The TCP segments the gate's XDP program has seen (every reason but
/// `not_tcp`).
fn tcp_packets(gate: &Attached) -> u64 {
    let s = gate.status();
    s["packets"]
        .as_object()
        .expect("packets by reason")
        .iter()
        .filter(|(r, _)| r.as_str() != "not_tcp")
        .map(|(_, n)| n.as_u64().unwrap())
        .sum()
}

/// The dispatcher's programs, as the gate's `status --json` lists them.
fn neighbours(gate: &Attached) -> Vec<(String, u64)> {
    let s = gate.status();
    s["xdp"]["dispatcher"]["programs"]
        .as_array()
        .unwrap_or_else(|| panic!("status shows no dispatcher: {:#}", s["xdp"]))
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["priority"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// libxdp's pin directories of the server interface's dispatchers.
fn dispatch_dirs(lab: &Lab) -> Vec<PathBuf> {
    let iface = lab.server_if.clone();
    let ifindex = lab
        .server
        .run(move || Ok(nix::net::if_::if_nametoindex(iface.as_str())?))
        .unwrap();
    let prefix = format!("dispatch-{ifindex}-");
    std::fs::read_dir("/sys/fs/bpf/xdp")
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default()
}

fn attach_multiprog<'a>(lab: &'a Lab, extra: &[&str]) -> Attached<'a> {
    let mut args = vec![
        "--netns",
        &lab.server.name,
        "attach",
        &lab.server_if,
        "--multiprog",
        "--set",
        "max-half-open=64",
    ];
    args.extend_from_slice(extra);
    let (ok, out, err) = cli(&args);
    assert!(ok, "attach --multiprog: {err}");
    assert!(out.contains("in libxdp's dispatcher at priority"), "{out}");
    Attached { lab }
}

#[test]
#[ignore = "privileged: needs root, netns, XDP, xdp-tools and the BPF trampoline; run by `cargo xtask test`"]
fn the_gate_joins_xdp_filters_dispatcher_and_leaves_it_working() {
    let s = setup("mpa");
    let lab = &s.lab;
    let Some(filter) = filter_in_dispatcher(lab) else {
        // Nor can the gate: it says why, and leaves nothing behind.
        let (ok, _, err) = cli(&[
            "--netns",
            &lab.server.name,
            "attach",
            &lab.server_if,
            "--multiprog",
        ]);
        assert!(!ok, "attach --multiprog worked without a trampoline");
        assert!(err.contains("trampoline"), "{err}");
        assert_eq!(
            hook_id(lab),
            None,
            "the failed attach left a program on the hook"
        );
        assert!(
            dispatch_dirs(lab).is_empty() && !pin_dir(lab).exists(),
            "pins left behind"
        );
        println!("without a trampoline, attach --multiprog said: {err}");
        return;
    };
    filter.deny_port(BLOCKED);
    let gate = attach_multiprog(lab, &[]);
    let status = loader_status(lab);
    assert!(
        status.contains("handshake_in") && status.contains("xdpfilt"),
        "xdp-loader does not list both:\n{status}"
    );
    println!("xdp-loader status with both:\n{status}");
    // In run order: the filter (10), then the gate (100).
    let listed = neighbours(&gate);
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        listed[0].0.starts_with("xdpfilt") && listed[0].1 == 10,
        "{listed:?}"
    );
    assert_eq!(listed[1], ("handshake_in".to_string(), 100));
    both_work(&gate, "the gate after xdp-filter");

    // `attach --replace` under a flood to the filtered port: the filter runs
    // first, so the gate sees a segment of it only if the filter was off
    // the hook for a moment. Not one gets past it, while it drops them.
    // (A second for the last connection's closing segments to arrive.)
    std::thread::sleep(Duration::from_secs(1));
    let hits = port_hits(lab, BLOCKED);
    let seen = tcp_packets(&gate);
    let stop = AtomicBool::new(false);
    let sent = AtomicU64::new(0);
    let before = gate.status()["xdp"].clone();
    std::thread::scope(|t| {
        t.spawn(|| {
            // Gently (2,000 a second): an emulated guest's two CPUs must
            // still load the new programs meanwhile.
            let blocked = SocketAddr::new(Lab::SERVER_V4.into(), BLOCKED);
            let mut first = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let sources = Sources::Range {
                    first: std::net::Ipv4Addr::from(0xc613_0000 + first).into(),
                    count: 200,
                };
                first = (first + 200) % 60_000;
                let n = flood_of(Segments::Syn, lab, blocked, sources, 200, Some(2_000));
                sent.fetch_add(n, Ordering::Relaxed);
            }
        });
        // Stops the flood however this ends (a failed assert included).
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(300));
        let out = gate.run("attach", &["--replace"]);
        assert!(out.contains("replaced"), "{out}");
        std::thread::sleep(Duration::from_millis(300));
    });
    let sent = sent.load(Ordering::Relaxed);
    println!("attach --replace under a flood of {sent} SYNs to the filtered port");
    assert_eq!(
        tcp_packets(&gate),
        seen,
        "segments to the filtered port got past xdp-filter during --replace"
    );
    let dropped = port_hits(lab, BLOCKED) - hits;
    assert!(
        dropped >= sent * 9 / 10,
        "xdp-filter did not drop the flood: {dropped} hits of {sent} sent"
    );
    assert_ne!(
        gate.status()["xdp"],
        before,
        "the gate's program was not swapped"
    );
    assert_eq!(neighbours(&gate).len(), 2);
    both_work(&gate, "after --replace");

    // The gate still caps a spoofed SYN flood (64 half-open at most).
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), GUARDED);
    assert_eq!(spoofed_flood(lab, addr, 300), 300);
    let st = gate.status();
    assert!(st["half_open"].as_u64().unwrap() <= 64, "{st:#}");
    assert!(
        st["drops"]["global"].as_u64().unwrap() >= 200,
        "{:#}",
        st["drops"]
    );

    // The gate leaves; the filter and its dispatcher stay.
    drop(gate);
    assert!(!pin_dir(lab).exists(), "detach left the gate's pins");
    let status = loader_status(lab);
    assert!(
        status.contains("xdp_dispatcher")
            && status.contains("xdpfilt")
            && !status.contains("handshake_in"),
        "after detach:\n{status}"
    );
    assert!(
        connect(lab, BLOCKED).is_none(),
        "the filter stopped after detach"
    );
    assert_eq!(dispatch_dirs(lab).len(), 1, "{:?}", dispatch_dirs(lab));
    drop(filter);
    assert_eq!(hook_id(lab), None);
    assert_eq!(
        dispatch_dirs(lab),
        Vec::<PathBuf>::new(),
        "pins left behind"
    );
}

#[test]
#[ignore = "privileged: needs root, netns, XDP, xdp-tools and the BPF trampoline; run by `cargo xtask test`"]
fn xdp_filter_joins_the_gates_dispatcher_through_replace_and_a_killed_daemon() {
    let s = setup("mpb");
    let lab = &s.lab;
    // Only to learn whether this kernel can make a dispatcher.
    if filter_in_dispatcher(lab).is_none() {
        return;
    }
    assert_eq!(hook_id(lab), None);
    let gate = attach_multiprog(lab, &["--priority", "5"]);
    assert!(
        loader_status(lab).contains("xdp_dispatcher"),
        "{}",
        loader_status(lab)
    );
    assert_eq!(neighbours(&gate), vec![("handshake_in".to_string(), 5)]);

    let filter = Filter::load(lab, &[]).expect("xdp-filter joins the gate's dispatcher");
    filter.deny_port(BLOCKED);
    let names: Vec<String> = neighbours(&gate).into_iter().map(|p| p.0).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert_eq!(
        names[0], "handshake_in",
        "priority 5 runs before xdp-filter's 10"
    );
    both_work(&gate, "xdp-filter after the gate");

    // `attach --replace` swaps the gate's program in a new dispatcher that
    // keeps the filter, in its order.
    let before: Value = gate.status();
    let out = gate.run("attach", &["--replace"]);
    assert!(out.contains("replaced"), "{out}");
    let names: Vec<String> = neighbours(&gate).into_iter().map(|p| p.0).collect();
    assert!(names.len() == 2 && names[0] == "handshake_in", "{names:?}");
    assert_ne!(
        gate.status()["xdp"],
        before["xdp"],
        "the gate's program was not swapped"
    );
    both_work(&gate, "after --replace");

    // A daemon adopts the gate, is ready, and is killed: the gate and the
    // filter stay.
    let d = Daemon::start(lab, "mpb", &[]);
    let (code, body) = common::daemon::get(&d, "/readyz");
    assert_eq!(code, 200, "{body}");
    drop(d);
    assert_eq!(neighbours(&gate).len(), 2);
    both_work(&gate, "after the daemon was killed");

    // xdp-filter leaves: the gate stays in its dispatcher, alone.
    drop(filter);
    assert_eq!(neighbours(&gate), vec![("handshake_in".to_string(), 5)]);
    assert!(connect(lab, GUARDED).is_some());
    // The gate leaves last: the dispatcher goes, and every pin with it.
    drop(gate);
    assert_eq!(hook_id(lab), None, "the dispatcher stayed on the hook");
    assert_eq!(
        dispatch_dirs(lab),
        Vec::<PathBuf>::new(),
        "pins left behind"
    );
    assert!(!pin_dir(lab).exists());
}

#[test]
#[ignore = "privileged: needs root, netns, XDP and xdp-tools; run by `cargo xtask test`"]
fn attach_multiprog_refuses_a_hook_that_holds_no_dispatcher() {
    let s = setup("mpc");
    let lab = &s.lab;
    // libxdp's own way to load a program alone.
    let _filter = Filter::load(lab, &[("LIBXDP_SKIP_DISPATCHER", "1")]).expect("xdp-filter load");
    let id = hook_id(lab).expect("xdp-filter on the hook");
    let iface = &lab.server_if;
    let (ok, _, err) = cli(&["--netns", &lab.server.name, "attach", iface, "--multiprog"]);
    assert!(!ok, "attach --multiprog joined a lone program");
    assert!(
        err.contains(&format!("(id {id})")) && err.contains("not using a dispatcher"),
        "{err}"
    );
    assert_eq!(
        hook_id(lab),
        Some(id),
        "the refused attach touched the hook"
    );
    assert!(!pin_dir(lab).exists(), "a refused attach left pins");
}
