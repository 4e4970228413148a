//! The control plane with the maps full: `status`, a metrics scrape and
//! `conns`, each with 1M tracked connections beside the same command on
//! the same gate while it was empty, in the same run; and one sweep of the
//! 1M in the kernel beside one from the controller.
//!
//! `status` and the scrape are timed with the daemon running, as it runs
//! in production (sweeping every 5 s, the default): on the full gate they
//! take the count its sweep keeps. `status --fresh` is the count made for
//! the look, as on a gate with no daemon.

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aya::maps::{Array, Map, MapData};
use handshake_common::{maps, table::Slot};
use handshake_lab::Lab;

use crate::memory::{Attached, attach, fill};

#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Control {
    /// Connections stored for the full figures.
    pub connections: u32,
    /// Runs of each command (the figures are medians).
    pub runs: usize,
    /// Medians, ms: (empty gate, full gate).
    pub status_ms: (f64, f64),
    /// `status --fresh`: the maps counted for the look.
    pub status_fresh_ms: (f64, f64),
    pub scrape_ms: (f64, f64),
    /// One sweep (nothing expired): in the kernel, from the controller.
    pub sweep_ms: (f64, f64),
    /// One rebuild of the known-source filter (the daemon's every
    /// `REBUILD_EVERY`th sweep adds it).
    pub rebuild_ms: f64,
    /// `conns --json` of every connection to /dev/null.
    pub conns_json_ms: (f64, f64),
    /// From starting `conns` to its first row on stdout.
    pub first_row_ms: (f64, f64),
    /// Peak resident memory of `conns --json`, MiB.
    pub conns_rss_mib: (f64, f64),
}

/// Medians of `n` timings of `f`, in ms.
fn timed(n: usize, mut f: impl FnMut() -> anyhow::Result<Duration>) -> anyhow::Result<f64> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(f()?.as_secs_f64() * 1e3);
    }
    Ok(crate::median(v))
}

/// Runs the controller to the end, its output thrown away; how long it took.
fn run_cli(gate: &Path, a: &Attached, args: &[&str]) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let child = Command::new(gate)
        .args(["--netns", &a.lab.server.name])
        .args(args)
        .stdout(Stdio::null())
        .spawn()?;
    let status = child.wait_with_output()?.status;
    let took = t.elapsed();
    anyhow::ensure!(status.success(), "handshake-gate {} failed", args.join(" "));
    Ok(took)
}

/// The command's own peak resident memory in MiB, as GNU time reports it
/// (`%M`). Not `wait4`'s rusage of our own child: a child's `ru_maxrss`
/// keeps the high-water mark of the memory it was forked with, so it would
/// report this benchmark's pages, not the command's. GNU time's own are a
/// megabyte or two.
fn peak_rss(gate: &Path, a: &Attached, args: &[&str]) -> anyhow::Result<f64> {
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(gate)
        .args(["--netns", &a.lab.server.name])
        .args(args)
        .stdout(Stdio::null())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "time handshake-gate {} failed",
        args.join(" ")
    );
    let kib: f64 = String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .trim()
        .parse()?;
    Ok(kib / 1024.0)
}

/// From starting `conns` to its first row (the line after the header).
fn first_row(gate: &Path, a: &Attached) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let mut child = Command::new(gate)
        .args(["--netns", &a.lab.server.name, "conns", &a.lab.server_if])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut out = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    out.read_line(&mut line)?; // the header
    line.clear();
    out.read_line(&mut line)?;
    let took = t.elapsed();
    let mut rest = Vec::new();
    let _ = out.read_to_end(&mut rest);
    anyhow::ensure!(child.wait()?.success(), "conns failed");
    anyhow::ensure!(!line.is_empty(), "conns printed no row");
    Ok(took)
}

/// The daemon on the lab's gate serving metrics, for scrapes.
struct Daemon {
    child: Child,
    url: String,
}

impl Daemon {
    fn start(gate: &Path, a: &Attached) -> anyhow::Result<Daemon> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(gate)
            .args(["--netns", &a.lab.server.name, "run", &a.lab.server_if])
            .args(["--metrics", &listen])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let d = Daemon {
            child,
            url: format!("http://{listen}/metrics"),
        };
        let start = Instant::now();
        while d.scrape().is_err() {
            anyhow::ensure!(
                start.elapsed() < Duration::from_secs(30),
                "the daemon never served metrics"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn scrape(&self) -> anyhow::Result<Duration> {
        let t = Instant::now();
        let body = ureq::get(&self.url)
            .call()?
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()?;
        anyhow::ensure!(
            body.contains("handshake_gate_connections"),
            "not the gate's metrics"
        );
        Ok(t.elapsed())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Killed, it leaves the gate attached (as on any exit).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One figure of each row on the gate as it is.
struct Figures {
    status: f64,
    fresh: f64,
    scrape: f64,
    conns: f64,
    first: f64,
    rss: f64,
}

fn measure(gate: &Path, a: &Attached, runs: usize, kept: bool) -> anyhow::Result<Figures> {
    let iface = a.lab.server_if.clone();
    let d = Daemon::start(gate, a)?;
    if kept {
        wait_for_kept(a)?;
    }
    // Past the daemon's start-up (and its first sweep), on both gates.
    std::thread::sleep(Duration::from_secs(1));
    let status = timed(runs, || run_cli(gate, a, &["status", &iface]))?;
    let fresh = timed(runs, || run_cli(gate, a, &["status", &iface, "--fresh"]))?;
    let scrape = timed(runs, || d.scrape())?;
    drop(d);
    let conns = timed(runs, || run_cli(gate, a, &["conns", &iface, "--json"]))?;
    let rss = peak_rss(gate, a, &["conns", &iface, "--json"])?;
    let first = timed(runs, || first_row(gate, a))?;
    Ok(Figures {
        status,
        fresh,
        scrape,
        conns,
        first,
        rss,
    })
}

/// Waits (30 s at most) until the daemon's first sweep has left its count.
fn wait_for_kept(a: &Attached) -> anyhow::Result<()> {
    let g = handshake_user::gate::Gate::open_dir(a.dir())?;
    let start = Instant::now();
    while g.kept(handshake_user::monotonic_ns())?.is_none() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "the daemon's sweep never left a count"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// Medians of `runs` sweeps of the gate (nothing to delete): in the kernel,
/// then from the controller, ms.
fn sweeps(a: &Attached, runs: usize) -> anyhow::Result<(f64, f64)> {
    let mut g = handshake_user::gate::Gate::open_dir(a.dir())?;
    let cfg = g.config()?;
    let mut once = |here: bool| -> anyhow::Result<Duration> {
        let t = Instant::now();
        let now = handshake_user::monotonic_ns();
        let swept = if here {
            g.sweep_here(&cfg, now)?
        } else {
            g.sweep(&cfg, now, 0, false)?
        };
        let took = t.elapsed();
        anyhow::ensure!(swept == (0, 0), "the bench's entries expired: {swept:?}");
        Ok(took)
    };
    let kernel = timed(runs, || once(false))?;
    let here = timed(runs, || once(true))?;
    Ok((kernel, here))
}

/// Median of `runs` rebuilds of the known-source filter, ms.
fn rebuilds(a: &Attached, runs: usize) -> anyhow::Result<f64> {
    let mut g = handshake_user::gate::Gate::open_dir(a.dir())?;
    timed(runs, || {
        let t = Instant::now();
        anyhow::ensure!(g.rebuild_known()?, "the filter was not rebuilt");
        Ok(t.elapsed())
    })
}

pub fn run(gate: &Path, runs: usize) -> anyhow::Result<Control> {
    const MILLION: u32 = 1 << 20;
    let lab = Lab::new("bctl")?;
    let a = attach(gate, &lab, &["--max-connections", &MILLION.to_string()])?;
    let data = MapData::from_pin(a.dir().join(maps::ESTABLISHED_V4))?;
    let mut est: Array<MapData, Slot> = Array::try_from(Map::Array(data))?;
    // One connection, so `conns` has a first row to time.
    fill(&mut est, 0, 1)?;
    eprintln!("bench: control plane, empty gate");
    let empty = measure(gate, &a, runs, false)?;
    eprintln!("bench: storing {MILLION} connections");
    fill(&mut est, 1, MILLION)?;
    eprintln!("bench: control plane with {MILLION} connections");
    let full = measure(gate, &a, runs, true)?;
    eprintln!("bench: sweeps of {MILLION} connections");
    let sweep_ms = sweeps(&a, runs)?;
    let rebuild_ms = rebuilds(&a, runs)?;
    Ok(Control {
        connections: MILLION,
        runs,
        status_ms: (empty.status, full.status),
        status_fresh_ms: (empty.fresh, full.fresh),
        scrape_ms: (empty.scrape, full.scrape),
        sweep_ms,
        rebuild_ms,
        conns_json_ms: (empty.conns, full.conns),
        first_row_ms: (empty.first, full.first),
        conns_rss_mib: (empty.rss, full.rss),
    })
}
