//! `cargo xtask demo`: the lab's phases (`handshake_lab::scenario`: a real
//! echo server, returning and new clients, floods against the kernel alone
//! and the gate) with floods from the live-frames sender, then the flood
//! meter of `cargo xtask bench` on the same configurations, so the cost per
//! flood SYN printed here is the bench's, measured the same way.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use handshake_lab::scenario::{self, CLIENT_TIMEOUT, GATE_SETTINGS, Load, Phase};
use handshake_lab::{ConnectReport, Lab};

use crate::flood::{self, Config};

/// The demo's flood rate: more SYNs a second than the kernel alone absorbs
/// on one CPU of a machine of this kind (about 0.7 million), fewer than the
/// gate does (see docs/BENCHMARKS.md).
pub const RATE: u64 = 1_000_000;

pub fn run(gate_bin: &Path, rate: u64, seconds: u64, clients: usize) -> anyhow::Result<()> {
    let lab = Lab::new("demo").context("creating the lab (needs root)")?;
    println!(
        "demo: lab up — server {} in netns {}, clients in netns {}",
        Lab::SERVER_V4,
        lab.server.name,
        lab.client.name
    );
    let load = Load {
        rate,
        seconds,
        clients,
        live: Some(handshake_user::flood_object()),
    };
    let phases = scenario::run_all(&lab, gate_bin, &load)?;
    drop(lab);
    println!("demo: the flood meter (the bench's), on the same configurations");
    let meter = flood::demo(gate_bin, &flood::Options::STANDARD)?;
    if let Some(status) = phases.iter().rev().find_map(|p| p.gate_status.as_ref()) {
        println!("\n{status}");
    }
    report(&phases, &load, &meter);
    Ok(())
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2}", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

fn clients(r: &ConnectReport) -> [String; 3] {
    [
        format!(
            "{}/{} ({:.0}%)",
            r.succeeded,
            r.attempted,
            r.success_rate() * 100.0
        ),
        ms(r.quantile(0.5)),
        ms(r.quantile(0.99)),
    ]
}

/// The meter's configuration for a phase, where it has one.
fn metered(phase: &str) -> Option<Config> {
    match phase {
        "spoofed, kernel alone" => Some(Config::Kernel),
        "spoofed, gate, overflow=drop" => Some(Config::GateSmall),
        "spoofed, gate, overflow=pass" => Some(Config::GatePass),
        "spoofed, gate, overflow=cookie" => Some(Config::GateCookie),
        _ => None,
    }
}

fn report(phases: &[Phase], o: &Load, meter: &flood::Meter) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "phase",
        "returning clients",
        "p50 ms",
        "p99 ms",
        "new clients",
        "p50 ms",
        "p99 ms",
        "flood SYNs sent",
        "server SYN_RECV",
        "dropped in XDP",
        "SYN-ACKs to spoofed",
        "ns / flood SYN (spread), vs the kernel alone",
    ]);
    for p in phases {
        let mut row = vec![p.name.to_string()];
        row.extend(clients(&p.returning));
        row.extend(clients(&p.new));
        row.push(p.flood_sent.to_string());
        row.push(p.syn_recv.to_string());
        row.push(
            p.xdp_dropped
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
        );
        row.push(p.spoofed_replies.to_string());
        let kernel = meter.rows.iter().find(|r| r.config == Config::Kernel);
        row.push(
            metered(p.name)
                .and_then(|c| meter.rows.iter().find(|r| r.config == c))
                .map(|r| match kernel {
                    Some(k) if r.config != Config::Kernel => {
                        let x = k.ns_over_floor / r.ns_over_floor;
                        format!(
                            "{:.0} (±{:.0}%), {:.1}× {}",
                            r.ns_over_floor,
                            r.spread * 50.0,
                            if x >= 1.0 { x } else { 1.0 / x },
                            if x >= 1.0 { "less" } else { "more" }
                        )
                    }
                    _ => format!("{:.0} (±{:.0}%)", r.ns_over_floor, r.spread * 50.0),
                })
                .unwrap_or_else(|| "-".into()),
        );
        t.add_row(row);
    }
    println!(
        "\nlegitimate clients under flood ({} returning and {} new per phase, all at once, {} s \
         connect timeout; floods of {} SYN/s for {} s from the live-frames sender; gate settings {}):",
        o.clients,
        o.clients,
        CLIENT_TIMEOUT.as_secs(),
        o.rate,
        o.seconds,
        GATE_SETTINGS.join(" ")
    );
    println!("{t}");
    println!(
        "p50/p99: connect (handshake) time of the clients that got in; a failed client timed out \
         after {} s.\nflood SYNs sent: what the sender handed over in the time (it shares the CPU \
         with the receiving side's work, so a\nreceiver that costs more gets fewer). server \
         SYN_RECV: half-open sockets the server's kernel held at the end.\nSYN-ACKs to spoofed: \
         replies that reached the spoofed addresses (from the kernel, or from XDP with \
         overflow=cookie).\nns / flood SYN: the receiving side's CPU time per spoofed SYN at line \
         rate, over an XDP_DROP's, from `cargo xtask bench`'s\nflood meter run just now on the same \
         configuration (median of {} rounds of a second; ± half the spread between runs), and how many\ntimes less than the kernel alone's in the same run: this machine's speed drifts between runs, the ratio far less.",
        CLIENT_TIMEOUT.as_secs(),
        meter.runs
    );
}
