//! Cost per flood SYN on the server, against the floor and the kernel alone.
//!
//! A lab (two namespaces, a veth pair), a real listening server, and the
//! project's flood sender at a fixed rate from spoofed sources whose
//! SYN-ACKs go to nobody. On veth much of the receive work runs in the
//! sender's context, so what is measured is the busy CPU of the whole
//! machine over the run (`/proc/stat`), for:
//! 1. the floor: a program that drops everything (`drop_xdp`) on the
//!    server's interface — sending plus the cheapest possible receive;
//! 2. the gate, attached with its defaults, and with the demo's smaller
//!    budget under each overflow action (`drop`, `pass`, `cookie`);
//! 3. the kernel alone (no XDP, `tcp_syncookies=1`, the default).
//!
//! Then the same for an ACK flood (ACKs of no connection, from the same
//! spoofed sources): the floor, the gate with its defaults
//! (`unknown-flows=verify`: each dropped as `no_conn` after a socket
//! lookup), and the kernel alone, which answers each with a reset.
//!
//! The client side carries a no-op XDP program in every run: on veth, the
//! cookie SYN-ACKs the gate sends back with `XDP_TX` reach only a peer
//! with an XDP program. The SYN-ACKs sent toward the spoofed addresses are
//! counted where they arrive, in the client namespace, which does not
//! forward them (`IpInAddrErrors`), so those sent from XDP count too.
//!
//! Each run gets a fresh lab, so no SYN-ACK retransmission of an earlier
//! run is paid for by a later one. Medians over several runs.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::median;
use aya::programs::{Xdp, XdpMode};
use handshake_common::maps;
use handshake_lab::scenario::{cpu_jiffies, jiffy_s};
use handshake_lab::{EchoServer, Flood, Lab, Segments, Sources, connect_many};
use handshake_user::testrun::PeerXdp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Config {
    Floor,
    Gate,
    /// The gate with the demo's smaller global budget.
    GateSmall,
    /// That, with `overflow=pass`.
    GatePass,
    /// That, with `overflow=cookie`.
    GateCookie,
    Kernel,
    /// An ACK flood against the floor, the gate (defaults) and the kernel alone.
    AckFloor,
    AckGate,
    AckKernel,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Floor => "floor: XDP_DROP",
            Config::Gate => "the gate (defaults)",
            Config::GateSmall => "the gate, max-half-open=1024",
            Config::GatePass => "the gate, max-half-open=1024, overflow=pass",
            Config::GateCookie => "the gate, max-half-open=1024, overflow=cookie",
            Config::Kernel => "kernel alone (tcp_syncookies=1)",
            Config::AckFloor => "ACK flood, floor: XDP_DROP",
            Config::AckGate => "ACK flood, the gate (defaults)",
            Config::AckKernel => "ACK flood, kernel alone",
        }
    }

    /// What the flood sends.
    pub fn segments(self) -> Segments {
        match self {
            Config::AckFloor | Config::AckGate | Config::AckKernel => Segments::Ack,
            _ => Segments::Syn,
        }
    }

    /// The floor this configuration's extra time is measured over.
    fn floor(self) -> Config {
        match self.segments() {
            Segments::Ack => Config::AckFloor,
            Segments::Syn => Config::Floor,
        }
    }
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct FloodCost {
    pub config: Config,
    /// Busy CPU of the whole machine per flood SYN, µs (median).
    pub cpu_us_per_syn: f64,
    /// Over the floor's, µs per SYN.
    pub extra_us_per_syn: f64,
    /// Replies that reached the spoofed sources during the paced run (the
    /// SYN-ACKs, from the kernel or from XDP), median.
    pub backscatter: u64,
    pub sent: u64,
    /// Every paced run's busy CPU seconds, as measured.
    pub cpu_runs: Vec<f64>,
    /// The sender's rate, unpaced, SYNs per second.
    pub max_rate: f64,
    /// 1 / `max_rate`, µs: the machine's time per SYN when saturated.
    pub saturated_us_per_syn: f64,
    /// Over the floor's, µs.
    pub saturated_extra_us: f64,
}

pub struct Options {
    pub rate: u64,
    pub seconds: u64,
    pub runs: usize,
}

const PORT: u16 = 8080;

fn spoofed() -> Sources {
    Sources::Range {
        first: "198.19.0.0".parse().expect("an address"),
        count: 60_000,
    }
}

/// One measured flood in a fresh lab: (busy CPU seconds, backscatter, sent, elapsed).
fn one(
    config: Config,
    gate_bin: &Path,
    rate: Option<u64>,
    o: &Options,
) -> anyhow::Result<(f64, u64, u64, Duration)> {
    let lab = Lab::new("bfl")?;
    let _peer = PeerXdp::attach(&lab.client.name, &lab.client_if)?;
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), PORT);
    let _server = EchoServer::start(&lab.server, addr, 1024)?;
    // Neighbours resolved before anything is measured.
    anyhow::ensure!(
        connect_many(&lab.client, addr, 1, Duration::from_secs(2))?.succeeded == 1,
        "the lab's server does not answer"
    );
    let _floor = match config {
        Config::Floor | Config::AckFloor => Some(attach_drop(&lab)?),
        Config::Gate
        | Config::GateSmall
        | Config::GatePass
        | Config::GateCookie
        | Config::AckGate => {
            let mut cmd = Command::new(gate_bin);
            cmd.args(["--netns", &lab.server.name, "attach", &lab.server_if]);
            if !matches!(config, Config::Gate | Config::AckGate) {
                cmd.args([
                    "--set",
                    "max-half-open=1024",
                    "--set",
                    "max-half-open-per-source=20",
                ]);
            }
            match config {
                Config::GatePass => cmd.args(["--set", "overflow=pass"]),
                Config::GateCookie => cmd.args(["--set", "overflow=cookie"]),
                _ => &mut cmd,
            };
            let out = cmd.output()?;
            anyhow::ensure!(
                out.status.success(),
                "attach: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
        Config::Kernel | Config::AckKernel => None,
    };
    std::thread::sleep(Duration::from_millis(200));
    let replies = || lab.client.nstat("IpInAddrErrors");
    let (seg0, (busy0, _)) = (replies()?, cpu_jiffies()?);
    let report = Flood {
        segments: config.segments(),
        target: addr,
        sources: spoofed(),
        count: rate.map_or(u64::MAX / 2, |r| r * o.seconds),
        max_time: Duration::from_secs(o.seconds),
        rate,
        threads: 1,
    }
    .run(&lab.client)?;
    let (busy1, _) = cpu_jiffies()?;
    // What is still on its way when the flood ends arrives within moments.
    std::thread::sleep(Duration::from_millis(200));
    let backscatter = replies()? - seg0;
    if !matches!(
        config,
        Config::Floor | Config::Kernel | Config::AckFloor | Config::AckKernel
    ) {
        let _ = Command::new(gate_bin)
            .args(["--netns", &lab.server.name, "detach", &lab.server_if])
            .output();
    }
    Ok((
        (busy1 - busy0) as f64 * jiffy_s(),
        backscatter,
        report.sent,
        report.elapsed,
    ))
}

/// Attaches `drop_xdp` to the lab's server interface, from inside its
/// namespace; detached when the returned object drops.
fn attach_drop(lab: &Lab) -> anyhow::Result<aya::Ebpf> {
    let iface = lab.server_if.clone();
    lab.server.run(move || {
        let mut ebpf = aya::EbpfLoader::new().load(handshake_user::ebpf_object())?;
        let xdp: &mut Xdp = ebpf
            .program_mut(maps::DROP_XDP)
            .ok_or_else(|| anyhow::anyhow!("no {} in the object", maps::DROP_XDP))?
            .try_into()?;
        xdp.load()?;
        xdp.attach(&iface, XdpMode::default())?;
        Ok(ebpf)
    })
}

pub fn run(gate_bin: &Path, o: &Options) -> anyhow::Result<Vec<FloodCost>> {
    let mut out: Vec<FloodCost> = Vec::new();
    for config in [
        Config::Floor,
        Config::Gate,
        Config::GateSmall,
        Config::GatePass,
        Config::GateCookie,
        Config::Kernel,
        Config::AckFloor,
        Config::AckGate,
        Config::AckKernel,
    ] {
        let (mut per_syn, mut back, mut sent, mut cpu_runs) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for run in 0..o.runs {
            eprintln!(
                "bench: flood, {} (run {} of {})",
                config.name(),
                run + 1,
                o.runs
            );
            let (cpu, b, s, took) = one(config, gate_bin, Some(o.rate), o)?;
            eprintln!(
                "bench:   {cpu:.3} CPU-s busy, {s} SYNs sent in {:.2} s, {b} segments back",
                took.as_secs_f64()
            );
            per_syn.push(cpu * 1e6 / s.max(1) as f64);
            cpu_runs.push(cpu);
            back.push(b as f64);
            sent.push(s as f64);
        }
        eprintln!("bench: flood, {}, unpaced", config.name());
        let (_, _, s, elapsed) = one(config, gate_bin, None, o)?;
        out.push(FloodCost {
            config,
            cpu_us_per_syn: median(per_syn),
            extra_us_per_syn: 0.0,
            backscatter: median(back) as u64,
            sent: median(sent) as u64,
            cpu_runs,
            max_rate: s as f64 / elapsed.as_secs_f64(),
            saturated_us_per_syn: elapsed.as_secs_f64() * 1e6 / s.max(1) as f64,
            saturated_extra_us: 0.0,
        });
    }
    let floors: Vec<(Config, f64, f64)> = out
        .iter()
        .map(|c| (c.config, c.cpu_us_per_syn, c.saturated_us_per_syn))
        .collect();
    for c in &mut out {
        let floor = c.config.floor();
        if let Some(&(_, paced, sat)) = floors.iter().find(|f| f.0 == floor) {
            c.extra_us_per_syn = c.cpu_us_per_syn - paced;
            c.saturated_extra_us = c.saturated_us_per_syn - sat;
        }
    }
    Ok(out)
}
