//! `cargo xtask soak --minutes N`: a long run under changing load. Real
//! clients keep connections open and echo every byte through the gate,
//! floods switch on and off, limits change with `set` mid-run. At the end:
//! established connections lost and bytes lost (both must be 0), the
//! half-open count after each flood once the timeout has passed (must be
//! 0), and the maps' kernel memory over the run (must stay flat).

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use handshake_lab::{EchoServer, Flood, Lab, Sources};

/// Persistent client connections.
const CLIENTS: usize = 16;
/// Each cycle: a flood of this long, then quiet for the rest of the cycle.
const FLOOD: Duration = Duration::from_secs(5);
const CYCLE: Duration = Duration::from_secs(20);
const FLOOD_RATE: u64 = 20_000;
const HALF_OPEN_TIMEOUT_MS: u64 = 2_000;
const SETTINGS: &[&str] = &[
    "max-half-open=1024",
    "max-half-open-per-source=20",
    "half-open-timeout-ms=2000",
];
/// The `set` changes made mid-run, one per cycle, in turn.
const CHANGES: &[&[&str]] = &[
    &["max-half-open-per-source=10"],
    &["syn-rate-per-source=200"],
    &["max-half-open-per-source=20", "syn-rate-per-source=0"],
    &["mode=monitor"],
    &["mode=enforce"],
];

#[derive(Debug, Default, serde::Serialize)]
pub struct Cycle {
    pub minute: f64,
    pub flood: &'static str,
    pub syns_sent: u64,
    pub half_open_during: u64,
    pub half_open_after_timeout: u64,
    pub map_bytes: u64,
    pub change: String,
}

#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub minutes: f64,
    pub clients: usize,
    pub connections_lost: usize,
    pub lost_errors: Vec<String>,
    pub bytes_sent: u64,
    pub bytes_echoed: u64,
    pub bytes_lost: u64,
    pub still_established_in_gate: usize,
    pub cycles: Vec<Cycle>,
    pub dropped_packets: u64,
}

struct Client {
    sent: AtomicU64,
    echoed: AtomicU64,
    lost: std::sync::Mutex<Option<String>>,
}

fn cli(gate: &Path, lab: &Lab, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(gate)
        .args(["--netns", &lab.server.name])
        .args(args)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "handshake-gate {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(gate: &Path, lab: &Lab) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&cli(
        gate,
        lab,
        &["status", &lab.server_if, "--json"],
    )?)?)
}

/// One client: connects, then sends chunks of varying size and checks that
/// each comes back whole, until told to stop or the connection fails.
fn client_loop(addr: SocketAddr, me: Arc<Client>, stop: Arc<AtomicBool>, seed: u64) {
    let fail = |e: String| *me.lost.lock().expect("not poisoned") = Some(e);
    let mut conn = match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
        Ok(c) => c,
        Err(e) => return fail(format!("connect: {e}")),
    };
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let mut x = seed | 1;
    let mut back = vec![0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        // xorshift: sizes and contents that differ from chunk to chunk.
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let n = 1 + (x % 4096) as usize;
        let chunk: Vec<u8> = (0..n).map(|i| (x as usize + i) as u8).collect();
        if let Err(e) = conn.write_all(&chunk) {
            return fail(format!("send: {e}"));
        }
        me.sent.fetch_add(n as u64, Ordering::Relaxed);
        if let Err(e) = conn.read_exact(&mut back[..n]) {
            return fail(format!("echo: {e}"));
        }
        if back[..n] != chunk[..] {
            return fail("echo: the bytes came back changed".into());
        }
        me.echoed.fetch_add(n as u64, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn map_bytes(gate_dir: &Path) -> anyhow::Result<u64> {
    Ok(crate::memory::pinned_maps(gate_dir)?
        .iter()
        .map(|(_, m)| crate::memory::memlock(m).unwrap_or(0))
        .sum())
}

pub fn run(gate: &Path, minutes: f64) -> anyhow::Result<Report> {
    let lab = Lab::new("soak")?;
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), 8080);
    let _server = EchoServer::start(&lab.server, addr, 1024)?;
    let mut args = vec!["attach", lab.server_if.as_str()];
    for s in SETTINGS {
        args.extend(["--set", s]);
    }
    cli(gate, &lab, &args)?;
    let result = soak(gate, &lab, addr, minutes);
    let _ = cli(gate, &lab, &["detach", &lab.server_if]);
    result
}

fn soak(gate: &Path, lab: &Lab, addr: SocketAddr, minutes: f64) -> anyhow::Result<Report> {
    let dir = handshake_user::pins::dir(&lab.server_if, Some(&lab.server.name))?;
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<Arc<Client>> = (0..CLIENTS)
        .map(|_| {
            Arc::new(Client {
                sent: AtomicU64::new(0),
                echoed: AtomicU64::new(0),
                lost: std::sync::Mutex::new(None),
            })
        })
        .collect();
    let threads: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let (c, stop) = (c.clone(), stop.clone());
            lab.client.spawn(move || {
                client_loop(addr, c, stop, 0x9e37_79b9 * (i as u64 + 1));
                Ok(())
            })
        })
        .collect();

    let start = Instant::now();
    let total = Duration::from_secs_f64(minutes * 60.0);
    let mut report = Report {
        clients: CLIENTS,
        ..Report::default()
    };
    let mut n = 0usize;
    while start.elapsed() + CYCLE <= total || n == 0 {
        let cycle_start = Instant::now();
        let (kind, sources) = if n.is_multiple_of(2) {
            (
                "spoofed (50,000 addresses)",
                Sources::Range {
                    first: "198.19.0.0".parse()?,
                    count: 50_000,
                },
            )
        } else {
            (
                "three real addresses",
                Sources::Range {
                    first: "198.18.0.66".parse()?,
                    count: 3,
                },
            )
        };
        let sent = Flood {
            segments: handshake_lab::Segments::Syn,
            target: addr,
            sources,
            count: FLOOD_RATE * FLOOD.as_secs(),
            max_time: FLOOD + Duration::from_secs(2),
            rate: Some(FLOOD_RATE),
            threads: 1,
        }
        .run(&lab.client)?
        .sent;
        let during = status(gate, lab)?["half_open"].as_u64().unwrap_or(u64::MAX);
        // The half-open timeout plus one bucket (timeout / 7), and a margin.
        std::thread::sleep(Duration::from_millis(HALF_OPEN_TIMEOUT_MS * 8 / 7 + 500));
        let after = status(gate, lab)?["half_open"].as_u64().unwrap_or(u64::MAX);
        let change = CHANGES[n % CHANGES.len()];
        let mut set = vec!["set", lab.server_if.as_str()];
        set.extend_from_slice(change);
        cli(gate, lab, &set)?;
        let cycle = Cycle {
            minute: start.elapsed().as_secs_f64() / 60.0,
            flood: kind,
            syns_sent: sent,
            half_open_during: during,
            half_open_after_timeout: after,
            map_bytes: map_bytes(&dir)?,
            change: change.join(" "),
        };
        eprintln!(
            "soak: {:5.1} min  {:<28} {:>7} SYNs  half-open {:>5} during, {} after  {}",
            cycle.minute, cycle.flood, sent, during, after, cycle.change
        );
        report.cycles.push(cycle);
        n += 1;
        if let Some(rest) = CYCLE.checked_sub(cycle_start.elapsed()) {
            std::thread::sleep(rest);
        }
    }

    // Before the clients stop: every one of their connections still
    // tracked, both ends ESTABLISHED.
    let conns: Vec<serde_json::Value> = serde_json::from_str(&cli(
        gate,
        lab,
        &["conns", &lab.server_if, "--json", "--port", "8080"],
    )?)?;
    let client_ip = Lab::CLIENT_V4.to_string();
    report.still_established_in_gate = conns
        .iter()
        .filter(|c| {
            c["client"]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{client_ip}:")))
                && c["client_state"] == "ESTABLISHED"
                && c["server_state"] == "ESTABLISHED"
        })
        .count();
    report.dropped_packets = status(gate, lab)?["dropped_packets"].as_u64().unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    report.minutes = start.elapsed().as_secs_f64() / 60.0;
    for c in &clients {
        report.bytes_sent += c.sent.load(Ordering::Relaxed);
        report.bytes_echoed += c.echoed.load(Ordering::Relaxed);
        if let Some(e) = c.lost.lock().expect("not poisoned").clone() {
            report.connections_lost += 1;
            report.lost_errors.push(e);
        }
    }
    // A chunk in flight when the clients were told to stop is not lost.
    report.bytes_lost = report.bytes_sent - report.bytes_echoed;
    Ok(report)
}

impl Report {
    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut s = String::new();
        let mem: Vec<u64> = self.cycles.iter().map(|c| c.map_bytes).collect();
        let (lo, hi) = (
            mem.iter().min().copied().unwrap_or(0),
            mem.iter().max().copied().unwrap_or(0),
        );
        let _ = writeln!(s, "| measure | result |\n|---|---:|");
        let _ = writeln!(s, "| duration | {:.1} min |", self.minutes);
        let _ = writeln!(
            s,
            "| client connections kept open, echoing | {} |",
            self.clients
        );
        let _ = writeln!(
            s,
            "| established connections lost | {} |",
            self.connections_lost
        );
        let _ = writeln!(
            s,
            "| bytes sent / echoed back / lost | {} / {} / {} |",
            self.bytes_sent, self.bytes_echoed, self.bytes_lost
        );
        let _ = writeln!(
            s,
            "| client connections ESTABLISHED in the gate at the end | {} of {} |",
            self.still_established_in_gate, self.clients
        );
        let _ = writeln!(
            s,
            "| floods / half-open after each flood + timeout, all 0 | {} / {} |",
            self.cycles.len(),
            self.cycles.iter().all(|c| c.half_open_after_timeout == 0)
        );
        let _ = writeln!(
            s,
            "| maps' kernel memory, min / max over the run | {lo} / {hi} bytes |"
        );
        let _ = writeln!(s, "| packets the gate dropped | {} |", self.dropped_packets);
        let _ = writeln!(
            s,
            "\n| minute | flood | SYNs | half-open during | after timeout | map bytes | then `set` |\n|---:|---|---:|---:|---:|---:|---|"
        );
        for c in &self.cycles {
            let _ = writeln!(
                s,
                "| {:.1} | {} | {} | {} | {} | {} | `{}` |",
                c.minute,
                c.flood,
                c.syns_sent,
                c.half_open_during,
                c.half_open_after_timeout,
                c.map_bytes,
                c.change
            );
        }
        if !self.lost_errors.is_empty() {
            let _ = writeln!(s, "\nLost connections: {:?}", self.lost_errors);
        }
        s
    }

    /// Whether the run met every requirement.
    pub fn ok(&self) -> bool {
        let mem: Vec<u64> = self.cycles.iter().map(|c| c.map_bytes).collect();
        self.connections_lost == 0
            && self.bytes_lost == 0
            && self.still_established_in_gate == self.clients
            && self.cycles.iter().all(|c| c.half_open_after_timeout == 0)
            && mem.iter().min() == mem.iter().max()
    }
}
