//! `cargo xtask demo`: a lab with a real echo server, real clients and SYN
//! floods, each flood against the kernel alone and then with the gate, and
//! a before/after report. The phases are `handshake_lab::scenario`'s.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use handshake_lab::scenario::{self, CLIENT_TIMEOUT, GATE_SETTINGS, Load, Phase};
use handshake_lab::{ConnectReport, Lab};

#[derive(clap::Args)]
pub struct Options {
    /// Skip the setup step.
    #[arg(long)]
    no_setup: bool,
    /// Flood rate, SYNs per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Flood duration, seconds (the flood is also capped at rate × seconds packets).
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// Returning and new clients per phase (each).
    #[arg(long, default_value_t = 20)]
    clients: usize,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !o.no_setup {
        crate::setup::run()?;
    }
    let root = crate::workspace_root();
    println!("demo: building the gate");
    let status = Command::new(env!("CARGO"))
        .args(["build", "-q", "-p", "handshake-user"])
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("building handshake-gate failed");
    }
    let gate_bin = root.join("target/debug/handshake-gate");
    let lab = Lab::new("demo").context("creating the lab (needs root)")?;
    println!(
        "demo: lab up — server {} in netns {}, clients in netns {}",
        Lab::SERVER_V4,
        lab.server.name,
        lab.client.name
    );
    let load = Load {
        rate: o.rate,
        seconds: o.seconds,
        clients: o.clients,
    };
    let phases = scenario::run_all(&lab, &gate_bin, &load)?;
    if let Some(status) = phases.iter().rev().find_map(|p| p.gate_status.as_ref()) {
        println!("\n{status}");
    }
    report(&phases, &load);
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

fn report(phases: &[Phase], o: &Load) {
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
        "flood SYNs",
        "server SYN_RECV",
        "dropped in XDP",
        "SYN-ACKs to spoofed",
        "busy CPU s",
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
        row.push(format!("{:.2}", p.busy_cpu_s));
        t.add_row(row);
    }
    println!(
        "\nlegitimate clients under flood ({} returning and {} new per phase, all at once, {} s \
         connect timeout; floods of {} SYN/s for {} s; gate settings {}):",
        o.clients,
        o.clients,
        CLIENT_TIMEOUT.as_secs(),
        o.rate,
        o.seconds,
        GATE_SETTINGS.join(" ")
    );
    println!("{t}");
    println!(
        "p50/p99: connect (handshake) time of the clients that got in. server SYN_RECV: half-open \
         sockets the server's\nkernel held at the end of the phase. SYN-ACKs to spoofed: replies \
         that reached the spoofed addresses (from the\nkernel, or from XDP with overflow=cookie). \
         busy CPU: the whole machine's while the flood and the clients ran.\nA failed client timed \
         out after {} s.",
        CLIENT_TIMEOUT.as_secs()
    );
}
