//! `status` counts the connection maps in the kernel; these tests hold its
//! counts against the maps themselves, read entry by entry here, and
//! against `conns`, after each thing that changes the maps behind the
//! programs' backs or in their own way: a real connection's RST, entries
//! past their expiry, entries evicted from a full table, and
//! `attach --replace` (and on a gate whose counting program is missing,
//! as one attached by an older version); and, on a table large enough for
//! it, the count the daemon's in-kernel sweep keeps. Needs root; `cargo
//! xtask test` runs it.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::daemon::{Daemon, metric};
use common::{Attached, cli, pin_dir};
use handshake_common::flow::{AF_INET, tick};
use handshake_common::machine::Expiry;
use handshake_common::tally::Tally;
use handshake_common::{FlowEntry, FlowKey, TcpState, maps};
use handshake_lab::{EchoServer, Lab};
use handshake_user::conns::ConnMap;
use handshake_user::gate::Gate;
use serde_json::Value;

const PORT: u16 = 8080;

/// The maps' entries counted here, entry by entry, at this moment.
fn count_maps(dir: &Path) -> Tally {
    let cfg = Gate::open_dir(dir.to_path_buf()).unwrap().config().unwrap();
    let x = Expiry::of(&cfg, handshake_user::monotonic_ns());
    let mut t = Tally::default();
    for (names, half_open) in [(maps::HALF_OPEN, true), (maps::ESTABLISHED, false)] {
        let m = ConnMap::from_pins(dir, names).unwrap();
        for (_, e) in m.entries().unwrap() {
            t.add(&e, half_open, &x);
        }
    }
    t
}

/// What `status`, the maps counted here and `conns` say, in that order.
struct Look {
    status: Value,
    maps: Tally,
    conns: Vec<Value>,
}

impl Look {
    fn take(gate: &Attached) -> Look {
        Look {
            status: gate.status(),
            maps: count_maps(&pin_dir(gate.lab)),
            conns: gate.conns(),
        }
    }

    /// Where the three disagree, if they do.
    fn disagreement(&self) -> Option<String> {
        let (s, maps) = (&self.status, &self.maps);
        for (side, counts) in [("client", &maps.client), ("server", &maps.server)] {
            for st in TcpState::ALL {
                let shown = s["states"][side][st.name()].as_u64().unwrap();
                let listed = self
                    .conns
                    .iter()
                    .filter(|c| c[format!("{side}_state")] == st.name())
                    .count() as u64;
                let counted = counts[st as usize];
                if shown != counted || listed != counted {
                    return Some(format!(
                        "{side} {}: status {shown}, conns {listed}, the maps {counted}",
                        st.name()
                    ));
                }
            }
        }
        let entries = (
            s["map_entries"]["half_open"].as_u64(),
            s["map_entries"]["established"].as_u64(),
        );
        let want = (Some(maps.entries[0]), Some(maps.entries[1]));
        if s["connections"] != maps.live || self.conns.len() as u64 != maps.live || entries != want
        {
            return Some(format!(
                "connections: status {}, conns {}, the maps {}; entries: status {entries:?}, \
                 the maps {want:?}",
                s["connections"],
                self.conns.len(),
                maps.live
            ));
        }
        None
    }
}

/// Checks that `status`, the maps counted here and `conns` agree on every
/// count; returns the maps' count. Nothing moves the maps meanwhile (no
/// traffic, no daemon), so any difference is a wrong count; a second look
/// is taken to tell one from the maps moving after all.
fn check(gate: &Attached, what: &str) -> Tally {
    let first = Look::take(gate);
    let Some(why) = first.disagreement() else {
        return first.maps;
    };
    std::thread::sleep(Duration::from_secs(1));
    let again = Look::take(gate);
    panic!(
        "{what}: {why}\n  a second after: {}\n  the maps then: {:?}\n  and again: {:?}\n{:#}",
        again.disagreement().unwrap_or_else(|| "all agree".into()),
        first.maps,
        again.maps,
        first.status
    );
}

/// Stores `n` established-map entries from 198.19.0.0/16 (no socket has
/// them) in `states`, last seen `changed_s` seconds from now (before it
/// if negative; after it, so that they stay in TIME_WAIT however slowly the
/// test runs, if positive).
fn store(dir: &Path, first: u32, n: u32, states: (TcpState, TcpState), changed_s: i64) {
    let mut m = ConnMap::from_pins(dir, maps::ESTABLISHED).unwrap();
    let now = handshake_user::monotonic_ns();
    for i in first..first + n {
        let mut k = FlowKey {
            family: AF_INET,
            lo_port: PORT.to_be(),
            hi_port: (10_000 + (i % 50_000) as u16).to_be(),
            ..FlowKey::default()
        };
        k.lo_addr[..4].copy_from_slice(&Lab::SERVER_V4.octets());
        k.hi_addr[..4].copy_from_slice(&(0xc613_0000u32 + i / 50_000 + 1).to_be_bytes());
        let mut e = FlowEntry {
            created: tick(now),
            // TIME_WAIT is timed from the last segment seen.
            last_seen: tick(now.wrapping_add_signed(changed_s * 1_000_000_000)),
            ..FlowEntry::default()
        };
        e.set_states(states.0, states.1);
        m.insert(&k, &e, 0).unwrap();
    }
    // Written from here, not by packets: the known-source filter learns
    // them so, as it does after `set`.
    handshake_user::gate::Gate::open_dir(dir.to_path_buf())
        .unwrap()
        .rebuild_known()
        .unwrap();
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn status_counts_exactly_after_rst_expiry_eviction_and_replace() {
    let lab = Lab::new("cnt").expect("lab");
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), PORT);
    let _srv = EchoServer::start(&lab.server, addr, 128).expect("server");
    // TIME_WAIT lasts 2·MSL = 2 s here; the established map holds 1,024.
    let (ok, _, err) = cli(&[
        "--netns",
        &lab.server.name,
        "attach",
        &lab.server_if,
        "--max-connections",
        "1024",
        "--max-connections-v6",
        "2048",
        "--set",
        "msl-ms=1000",
    ]);
    assert!(ok, "attach: {err}");
    let gate = Attached { lab: &lab };
    let dir = pin_dir(&lab);
    // Each family's established map has the size it was given: the IPv4
    // table two slots a connection and its header.
    for (name, want) in [
        (maps::ESTABLISHED_V4, 2 * 1024 + 1),
        (maps::ESTABLISHED_V6, 2048),
    ] {
        let info = aya::maps::MapInfo::from_pin(dir.join(name)).unwrap();
        assert_eq!(info.max_entries(), want, "{name}");
    }

    let conns: Vec<TcpStream> = (0..3)
        .map(|_| {
            lab.client
                .run(move || Ok(TcpStream::connect_timeout(&addr, Duration::from_secs(2))?))
                .expect("connect")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let t = check(&gate, "three connections");
    assert_eq!(t.server[TcpState::Established as usize], 3);

    // An RST from the client at the right number ends its connection.
    let mut conns = conns;
    let last = conns.pop().unwrap();
    socket2::SockRef::from(&last)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(last);
    std::thread::sleep(Duration::from_millis(200));
    let t = check(&gate, "after an RST");
    assert_eq!(t.server[TcpState::Established as usize], 2);
    assert_eq!(t.entries[1], 2, "the reset connection's entry went");

    // The other two close (the client first, or the echo server after
    // its idle timeout on a slow machine): then, once TIME_WAIT (2 s here)
    // is over, they are stored but no longer connections. From here on no
    // packet moves the maps.
    drop(conns);
    let finished = |counts: &[u64; handshake_common::tally::STATES]| {
        counts[TcpState::TimeWait as usize] + counts[TcpState::Closed as usize]
    };
    let start = std::time::Instant::now();
    loop {
        let t = count_maps(&dir);
        if finished(&t.client) == 2 && finished(&t.server) == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "never closed: {t:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    check(&gate, "two finished connections");
    std::thread::sleep(Duration::from_millis(2_500));
    let t = check(&gate, "after their TIME_WAIT");
    assert_eq!((t.live, t.entries[1]), (0, 2));

    // Stored finished connections: 20 still in TIME_WAIT, 30 past it
    // (counted in the map's entries, not as connections).
    let done = (TcpState::TimeWait, TcpState::Closed);
    store(&dir, 0, 20, done, 3_600);
    store(&dir, 20, 30, done, -3);
    let t = check(&gate, "with expired entries");
    assert_eq!(t.client[TcpState::TimeWait as usize], 20);
    assert_eq!((t.live, t.entries[1]), (20, 52));

    // More than the table's slots (two for each of the 1,024 connections
    // it is sized for): stores over entries, behind the programs' backs.
    let live = (TcpState::Established, TcpState::Established);
    store(&dir, 100, 2_500, live, 0);
    let t = check(&gate, "after eviction");
    assert!(t.entries[1] <= 2 * 1_024 && t.entries[1] > 1_500, "{t:?}");

    // New programs over the same maps count the same.
    let out = gate.run("attach", &["--replace"]);
    assert!(out.contains("replaced"), "{out}");
    assert_eq!(check(&gate, "after --replace"), t);

    // A gate without the counting program (attached by an older version)
    // is counted by the controller, to the same figures.
    std::fs::remove_file(dir.join(handshake_user::pins::TALLY_PROG)).unwrap();
    assert_eq!(check(&gate, "counted by the controller"), t);
}

/// What `status` says of the counts against the maps' count `t`: where
/// they differ, if they do.
fn status_differs(s: &Value, t: &Tally) -> Option<String> {
    let shown = (
        s["connections"].as_u64(),
        s["map_entries"]["half_open"].as_u64(),
        s["map_entries"]["established"].as_u64(),
        s["states"]["server"][TcpState::Established.name()].as_u64(),
    );
    let want = (
        Some(t.live),
        Some(t.entries[0]),
        Some(t.entries[1]),
        Some(t.server[TcpState::Established as usize]),
    );
    (shown != want).then(|| format!("status {shown:?}, the maps {want:?}"))
}

/// Waits (60 s at most) until `status` takes its counts from the daemon's
/// sweep; that status.
fn until_kept(gate: &Attached, d: &Daemon) -> Value {
    let start = std::time::Instant::now();
    loop {
        let s = gate.status();
        if s["counts"]["kept"] == true {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "status never took the sweep's count: {}\nthe daemon's log:\n{}",
            s["counts"],
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn a_large_tables_count_is_kept_by_the_daemons_in_kernel_sweep() {
    let lab = Lab::new("cntk").expect("lab");
    // TIME_WAIT lasts 2 s here.
    let gate = Attached::new(&lab, &["msl-ms=1000"]);
    let dir = pin_dir(&lab);
    let n = handshake_user::gate::KEPT_FROM as u32 + 8_928;
    let live = (TcpState::Established, TcpState::Established);
    let done = (TcpState::TimeWait, TcpState::Closed);
    store(&dir, 0, n, live, 0);
    store(&dir, n, 500, done, -3);
    // No daemon: counted for each look, the expired entries included.
    let s = gate.status();
    assert_eq!(s["counts"]["kept"], false, "{}", s["counts"]);
    let t = count_maps(&dir);
    assert_eq!((t.live, t.entries[1]), (u64::from(n), u64::from(n) + 500));
    assert_eq!(status_differs(&s, &t), None);

    // The daemon's sweep (every second, vouched for two) deletes the
    // expired entries in the kernel and leaves its count, which `status`
    // and the metrics take.
    let d = Daemon::start(&lab, "cntk", &[]);
    let s = until_kept(&gate, &d);
    let t = count_maps(&dir);
    assert_eq!(
        (t.live, t.entries[1]),
        (u64::from(n), u64::from(n)),
        "the sweep deleted the 500 expired entries"
    );
    assert_eq!(status_differs(&s, &t), None, "the kept count is the maps'");
    assert!(
        s["counts"]["age_ms"].as_u64().unwrap() < 2_000,
        "{}",
        s["counts"]
    );
    let m = d.scrape();
    assert_eq!(
        metric(&m, "handshake_gate_swept_total", &[("map", "established")]),
        500.0
    );
    let age = metric(&m, "handshake_gate_counts_age_seconds", &[]);
    assert!((0.0..2.0).contains(&age), "counts_age_seconds {age}");
    assert_eq!(
        metric(
            &m,
            "handshake_gate_connections",
            &[("side", "server"), ("state", "ESTABLISHED")]
        ),
        f64::from(n)
    );

    // `--fresh` counts now: ten more stored show at once.
    store(&dir, n + 500, 10, live, 0);
    let fresh: Value =
        serde_json::from_str(&gate.run("status", &["--json", "--fresh"])).expect("JSON");
    assert_eq!(fresh["counts"]["kept"], false);
    assert_eq!(status_differs(&fresh, &count_maps(&dir)), None);

    // A daemon that stops withdraws its count: the next look counts.
    d.signal(nix::sys::signal::Signal::SIGTERM);
    let mut d = d;
    assert!(d.wait(), "the daemon stopped cleanly:\n{}", d.log());
    let s = gate.status();
    assert_eq!(s["counts"]["kept"], false, "{}", s["counts"]);
    assert_eq!(status_differs(&s, &count_maps(&dir)), None);

    // One killed cannot: its count stands until two sweeps are missed,
    // then the looks count again.
    let d = Daemon::start(&lab, "cntk2", &[]);
    until_kept(&gate, &d);
    drop(d);
    std::thread::sleep(Duration::from_millis(2_500));
    let s = gate.status();
    assert_eq!(s["counts"]["kept"], false, "{}", s["counts"]);
    assert_eq!(status_differs(&s, &count_maps(&dir)), None);
}
