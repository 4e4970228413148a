//! The machine's time per flood frame at line rate, for the gate against
//! the XDP_DROP floor, the kernel alone and nftables SYNPROXY.
//!
//! The meter is the lab's live-frames sender (`handshake_lab::LiveFlood`):
//! an XDP program run with `BPF_PROG_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES`
//! in the client namespace, its `XDP_TX` sent out of the client's veth. On
//! veth the receiving side's work (its XDP program, and for what passes, the
//! kernel's TCP stack) runs on the sending CPU, in the same system call,
//! each time a batch of 64 frames is flushed. So one pinned CPU does
//! everything, the sender's own few tens of nanoseconds included, and
//!
//! - the absorbed rate is the frames the receiver's XDP program saw
//!   (`ethtool -S`, `rx_queue_0_xdp_packets`) over the run's wall time;
//! - ns per frame is its inverse; over the floor, the floor's subtracted
//!   (the floor is `drop_xdp`: sender, veth and the cheapest receive).
//!
//! The rows without an XDP program of their own (the kernel alone,
//! SYNPROXY) carry the no-op XDP program on the server's veth: veth hands
//! XDP frames only to a peer with NAPI on, and it counts what arrived. The
//! client's veth carries the lab's sink (`handshake_lab::live::Sink`), which
//! drops the backscatter (SYN-ACKs, resets to the spoofed ranges) at the
//! cost of an XDP drop and counts it, as the demo's does.
//!
//! `other CPU %` is the busy share of the CPUs the meter did not pin, over
//! the run: work that spilled there (ksoftirqd, a deferred timer) is not in
//! the ns column, so the column says how much there was.
//!
//! One raw-socket row (the sender all earlier figures came from) measures
//! what that sender delivers into the same floor, for the ratio.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::median;
use handshake_common::maps;
use handshake_lab::live::{Sink, xdp_drops, xdp_packets};
use handshake_lab::{EchoServer, Flood, Lab, LiveFlood, Segments, Sources, connect_many};
use handshake_user::testrun::PeerXdp;

/// What receives the flood on the server's side.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Config {
    /// `drop_xdp`: the floor.
    Floor,
    /// The gate with its defaults.
    Gate,
    /// The gate, `max-half-open=1024`.
    GateSmall,
    /// That, with `overflow=pass`.
    GatePass,
    /// That, with `overflow=cookie`.
    GateCookie,
    /// The gate, `allowed-ports=80`, the flood to another port.
    GateClosed,
    /// No XDP program but the no-op; `tcp_syncookies=1`.
    Kernel,
    /// nftables SYNPROXY with conntrack (the nftables wiki's recipe).
    Synproxy,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Floor => "floor: XDP_DROP",
            Config::Gate => "the gate, defaults",
            Config::GateSmall => "the gate, max-half-open=1024",
            Config::GatePass => "the gate, max-half-open=1024 overflow=pass",
            Config::GateCookie => "the gate, max-half-open=1024 overflow=cookie",
            Config::GateClosed => "the gate, allowed-ports refusing the port",
            Config::Kernel => "kernel alone, tcp_syncookies=1",
            Config::Synproxy => "nftables SYNPROXY + conntrack",
        }
    }

    /// The gate's settings for this row (None: not the gate).
    pub fn gate_settings(self) -> Option<&'static [&'static str]> {
        match self {
            Config::Gate => Some(&[]),
            Config::GateSmall => Some(&["max-half-open=1024", "max-half-open-per-source=20"]),
            Config::GatePass => Some(&[
                "max-half-open=1024",
                "max-half-open-per-source=20",
                "overflow=pass",
            ]),
            Config::GateCookie => Some(&[
                "max-half-open=1024",
                "max-half-open-per-source=20",
                "overflow=cookie",
            ]),
            Config::GateClosed => Some(&["allowed-ports=80"]),
            _ => None,
        }
    }
}

/// The configurations measured for each kind of flood.
const SYN_ROWS: &[Config] = &[
    Config::Floor,
    Config::Gate,
    Config::GateSmall,
    Config::GatePass,
    Config::GateCookie,
    Config::GateClosed,
    Config::Kernel,
    Config::Synproxy,
];
const ACK_ROWS: &[Config] = &[
    Config::Floor,
    Config::Gate,
    Config::Kernel,
    Config::Synproxy,
];

#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub config: Config,
    pub config_name: &'static str,
    /// "SYN" or "ACK".
    pub segments: &'static str,
    /// "IPv4" or "IPv6".
    pub family: &'static str,
    /// Frames per second the receiver's XDP program saw (median).
    pub mpps: f64,
    /// Nanoseconds of the pinned CPU per frame (median).
    pub ns: f64,
    /// Over the floor's, same flood, same run.
    pub ns_over_floor: f64,
    /// (max − min) ÷ median of `ns` over the runs.
    pub spread: f64,
    /// Every run's ns per frame.
    pub runs_ns: Vec<f64>,
    /// Frames handed to the kernel and seen by the receiver (median run).
    pub sent: u64,
    pub received: u64,
    /// Replies that reached the spoofed sources (median run).
    pub backscatter: u64,
    /// Busy share of the other CPUs during the run, percent (median).
    pub other_cpu_pct: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Meter {
    /// Frames per run (at most) and seconds per run (at most).
    pub frames: u64,
    pub seconds: f64,
    pub runs: usize,
    /// The CPU the sender, and so the receiver, ran on.
    pub cpu: usize,
    pub rows: Vec<Row>,
    /// The raw-socket sender into the same floor: frames the floor saw per
    /// second, and the live sender's floor over it.
    pub raw_floor_mpps: f64,
    pub live_over_raw: f64,
}

pub struct Options {
    pub frames: u64,
    pub seconds: f64,
    pub runs: usize,
}

impl Options {
    /// What the bench and the demo both measure with: runs of a second
    /// (at most 10M frames), the median of five, so that the figures of
    /// two runs of the meter can be compared on a noisy machine.
    pub const STANDARD: Options = Options {
        frames: 10_000_000,
        seconds: 1.0,
        runs: 5,
    };
}

const PORT: u16 = 8080;

fn target(v6: bool) -> SocketAddr {
    if v6 {
        SocketAddr::new(Lab::SERVER_V6.into(), PORT)
    } else {
        SocketAddr::new(Lab::SERVER_V4.into(), PORT)
    }
}

/// 50,000 spoofed sources, routed to the client side and answered by no one.
pub fn spoofed(v6: bool) -> Sources {
    Sources::Range {
        first: if v6 {
            "2001:db8:1::".parse().expect("an address")
        } else {
            "198.19.0.0".parse().expect("an address")
        },
        count: 50_000,
    }
}

/// The CPU the meter pins its sender to: the last one.
pub fn meter_cpu() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
}

/// A lab set up for `config`: the server listening, neighbours resolved,
/// the receiving side ready. What it holds goes when it drops.
pub struct Bed {
    pub lab: Lab,
    _server: EchoServer,
    _sink: Sink,
    _programs: Vec<PeerXdp>,
    gate: Option<(std::path::PathBuf, String, String)>,
}

impl Drop for Bed {
    fn drop(&mut self) {
        if let Some((bin, ns, iface)) = &self.gate {
            let _ = Command::new(bin)
                .args(["--netns", ns, "detach", iface])
                .output();
        }
    }
}

impl Bed {
    /// A fresh lab for `config`, the gate being the CLI at `gate_bin`.
    pub fn new(config: Config, gate_bin: &Path, v6: bool) -> anyhow::Result<Bed> {
        let lab = Lab::new("bfl")?;
        let addr = target(v6);
        let server = EchoServer::start(&lab.server, addr, 1024)?;
        // Neighbours resolved before anything is measured.
        anyhow::ensure!(
            connect_many(&lab.client, addr, 1, Duration::from_secs(2))?.succeeded == 1,
            "the lab's server does not answer"
        );
        lab.server.sysctl("net.ipv4.tcp_syncookies=1")?;
        // The backscatter: dropped and counted where it arrives.
        let sink = Sink::attach(&lab, handshake_user::flood_object())?;
        let mut programs = Vec::new();
        let mut gate = None;
        match config {
            Config::Floor => programs.push(PeerXdp::attach_program(
                &lab.server.name,
                &lab.server_if,
                maps::DROP_XDP,
            )?),
            Config::Kernel | Config::Synproxy => {
                programs.push(PeerXdp::attach_program(
                    &lab.server.name,
                    &lab.server_if,
                    maps::NOOP_XDP,
                )?);
                if config == Config::Synproxy {
                    synproxy(&lab)?;
                }
            }
            _ => {
                let settings = config.gate_settings().unwrap_or_default();
                let mut cmd = Command::new(gate_bin);
                cmd.args(["--netns", &lab.server.name, "attach", &lab.server_if]);
                for s in settings {
                    cmd.args(["--set", s]);
                }
                let out = cmd.output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "attach: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                gate = Some((
                    gate_bin.to_path_buf(),
                    lab.server.name.clone(),
                    lab.server_if.clone(),
                ));
            }
        }
        Ok(Bed {
            lab,
            _server: server,
            _sink: sink,
            _programs: programs,
            gate,
        })
    }
}

/// nftables SYNPROXY as the nftables wiki sets it up: SYNs untracked in
/// raw prerouting, `synproxy` for untracked and invalid segments to the
/// port in input, what stays invalid dropped; loose pick-up off, so an ACK
/// of no connection is invalid unless it carries a valid cookie.
fn synproxy(lab: &Lab) -> anyhow::Result<()> {
    let rules = format!(
        "table inet hsg_synproxy {{\n\
         chain pre {{ type filter hook prerouting priority raw; policy accept;\n\
           tcp dport {PORT} tcp flags syn notrack\n }}\n\
         chain in {{ type filter hook input priority filter; policy accept;\n\
           tcp dport {PORT} ct state invalid,untracked synproxy mss 1460 wscale 7 timestamp sack-perm\n\
           ct state invalid drop\n }}\n}}\n"
    );
    let path = std::env::temp_dir().join(format!("hsg-synproxy-{}.nft", std::process::id()));
    std::fs::write(&path, rules)?;
    let r = lab
        .server
        .exec("nft", &["-f", &path.to_string_lossy()])
        .map(drop);
    let _ = std::fs::remove_file(&path);
    r?;
    lab.server
        .sysctl("net.netfilter.nf_conntrack_tcp_loose=0")?;
    lab.server.sysctl("net.ipv4.tcp_timestamps=1")
}

/// Busy and total jiffies per CPU (`/proc/stat`'s `cpuN` lines).
fn per_cpu_jiffies() -> anyhow::Result<Vec<(u64, u64)>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    Ok(stat
        .lines()
        .filter(|l| l.starts_with("cpu") && !l.starts_with("cpu "))
        .map(|l| {
            let v: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok())
                .collect();
            let busy =
                v.iter().take(8).sum::<u64>() - v.get(3).unwrap_or(&0) - v.get(4).unwrap_or(&0);
            (busy, v.iter().take(8).sum())
        })
        .collect())
}

/// One measured run: what the flood did to the receiving CPU.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub sent: u64,
    pub received: u64,
    pub elapsed: Duration,
    pub backscatter: u64,
    pub other_cpu_pct: f64,
}

impl Measured {
    pub fn ns(&self) -> f64 {
        self.elapsed.as_secs_f64() * 1e9 / self.received.max(1) as f64
    }
}

/// Runs `flood` (live frames, or the raw-socket sender when `raw`) against
/// the bed and measures it.
pub fn measure(bed: &Bed, flood: &LiveFlood, raw: bool) -> anyhow::Result<Measured> {
    let lab = &bed.lab;
    let seen = || xdp_packets(&lab.server, &lab.server_if);
    let back = || xdp_drops(&lab.client, &lab.client_if);
    let cpu = flood.cpu.unwrap_or_else(meter_cpu);
    let (x0, b0, j0) = (seen()?, back()?, per_cpu_jiffies()?);
    let report = if raw {
        Flood {
            segments: flood.segments,
            target: flood.target,
            sources: flood.sources.clone(),
            count: flood.count,
            max_time: flood.max_time,
            rate: flood.rate,
            threads: 1,
        }
        .run(&lab.client)?
    } else {
        flood.run(lab, handshake_user::flood_object())?
    };
    let (x1, j1) = (seen()?, per_cpu_jiffies()?);
    // What is still on its way when the flood ends arrives within moments.
    std::thread::sleep(Duration::from_millis(100));
    let b1 = back()?;
    let (mut busy, mut total) = (0, 0);
    for (i, (a, b)) in j0.iter().zip(&j1).enumerate() {
        if i != cpu {
            busy += b.0 - a.0;
            total += b.1 - a.1;
        }
    }
    Ok(Measured {
        sent: report.sent,
        received: x1 - x0,
        elapsed: report.elapsed,
        backscatter: b1 - b0,
        other_cpu_pct: busy as f64 * 100.0 / total.max(1) as f64,
    })
}

/// The flood of the meter: `segments` from 50,000 spoofed sources,
/// unpaced, pinned to [`meter_cpu`].
pub fn meter_flood(segments: Segments, v6: bool, config: Config, o: &Options) -> LiveFlood {
    let mut target = target(v6);
    if config == Config::GateClosed {
        // A port the gate does not allow (and nothing listens on).
        target.set_port(PORT + 1);
    }
    let mut f = LiveFlood::new(
        segments,
        target,
        spoofed(v6),
        o.frames,
        Duration::from_secs_f64(o.seconds),
    );
    f.cpu = Some(meter_cpu());
    f
}

/// One measured run of `config` under `segments`, in a fresh lab.
fn one_run(
    config: Config,
    segments: Segments,
    v6: bool,
    gate_bin: &Path,
    o: &Options,
    run: usize,
) -> anyhow::Result<Measured> {
    let bed = Bed::new(config, gate_bin, v6)?;
    let m = measure(&bed, &meter_flood(segments, v6, config, o), false)?;
    eprintln!(
        "bench: line rate, {:?} {} {}, run {}: {:.2} Mpps seen, {:.0} ns/frame, {} sent, {} back, other CPU {:.0}%",
        segments,
        if v6 { "IPv6" } else { "IPv4" },
        config.name(),
        run + 1,
        m.received as f64 / m.elapsed.as_secs_f64() / 1e6,
        m.ns(),
        m.sent,
        m.backscatter,
        m.other_cpu_pct
    );
    Ok(m)
}

/// The rows of one flood (`segments`, one family) against `configs`, the
/// first of which is the floor. The runs go round by round (each
/// configuration once per round), so that a slow spell of this shared
/// machine falls on every row alike, and a row's time over the floor is
/// the median of its rounds' differences from the floor's run of the same
/// round.
fn rows(
    configs: &[Config],
    segments: Segments,
    v6: bool,
    gate_bin: &Path,
    o: &Options,
) -> anyhow::Result<Vec<Row>> {
    let mut runs: Vec<Vec<Measured>> = vec![Vec::new(); configs.len()];
    for round in 0..o.runs {
        for (i, &config) in configs.iter().enumerate() {
            runs[i].push(one_run(config, segments, v6, gate_bin, o, round)?);
        }
    }
    let floor: Vec<f64> = runs[0].iter().map(Measured::ns).collect();
    Ok(configs
        .iter()
        .zip(&runs)
        .map(|(&config, runs)| {
            let ns: Vec<f64> = runs.iter().map(Measured::ns).collect();
            let mid = median(ns.clone());
            let m = runs
                .iter()
                .find(|m| m.ns() == mid)
                .copied()
                .unwrap_or(runs[0]);
            let max = ns.iter().copied().fold(f64::MIN, f64::max);
            let min = ns.iter().copied().fold(f64::MAX, f64::min);
            let over: Vec<f64> = ns.iter().zip(&floor).map(|(n, f)| n - f).collect();
            Row {
                config,
                config_name: config.name(),
                segments: match segments {
                    Segments::Syn => "SYN",
                    Segments::Ack => "ACK",
                    Segments::Mixed => "mixed",
                },
                family: if v6 { "IPv6" } else { "IPv4" },
                mpps: 1e3 / mid,
                ns: mid,
                ns_over_floor: median(over),
                spread: (max - min) / mid,
                runs_ns: ns,
                sent: m.sent,
                received: m.received,
                backscatter: m.backscatter,
                other_cpu_pct: median(runs.iter().map(|m| m.other_cpu_pct).collect()),
            }
        })
        .collect())
}

pub fn run(gate_bin: &Path, o: &Options) -> anyhow::Result<Meter> {
    run_rows(
        gate_bin,
        o,
        &[false, true],
        &[(Segments::Syn, SYN_ROWS), (Segments::Ack, ACK_ROWS)],
        true,
    )
}

/// The demo's rows: IPv4 SYN floods against what its spoofed phases run.
pub fn demo(gate_bin: &Path, o: &Options) -> anyhow::Result<Meter> {
    run_rows(
        gate_bin,
        o,
        &[false],
        &[(
            Segments::Syn,
            &[
                Config::Floor,
                Config::GateSmall,
                Config::GatePass,
                Config::GateCookie,
                Config::Kernel,
            ],
        )],
        false,
    )
}

fn run_rows(
    gate_bin: &Path,
    o: &Options,
    families: &[bool],
    floods: &[(Segments, &[Config])],
    raw_row: bool,
) -> anyhow::Result<Meter> {
    let mut all: Vec<Row> = Vec::new();
    for &v6 in families {
        for &(segments, configs) in floods {
            all.extend(rows(configs, segments, v6, gate_bin, o)?);
        }
    }
    let raw_floor_mpps = if raw_row {
        eprintln!("bench: line rate, the raw-socket sender into the floor");
        let bed = Bed::new(Config::Floor, gate_bin, false)?;
        let raw = measure(
            &bed,
            &meter_flood(Segments::Syn, false, Config::Floor, o),
            true,
        )?;
        raw.received as f64 / raw.elapsed.as_secs_f64() / 1e6
    } else {
        f64::NAN
    };
    let live_floor = all.first().map_or(f64::NAN, |r| r.mpps);
    Ok(Meter {
        frames: o.frames,
        seconds: o.seconds,
        runs: o.runs,
        cpu: meter_cpu(),
        rows: all,
        raw_floor_mpps,
        live_over_raw: live_floor / raw_floor_mpps,
    })
}
