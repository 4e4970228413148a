//! `cargo xtask demo`: a lab with a real echo server, real clients and SYN
//! floods, each flood against the kernel alone and then with the gate, and
//! a before/after report.
//!
//! Two kinds of client are measured in every phase, all at once while the
//! flood runs: returning clients (198.18.0.2, which completed handshakes
//! before the flood, so the gate counts it as verified) and new clients,
//! each from an address the server has never seen (198.18.16.0/20).
//!
//! Two floods, each at `--rate` SYNs per second for `--seconds`:
//! - a few real addresses (198.18.0.66–.68) that never answer the SYN-ACKs:
//!   the per-source cap stops them;
//! - spoofed sources, 50,000 addresses of 198.19.0.0/16, whose SYN-ACKs go
//!   to nobody: they fill the gate's global budget, the verified reserve
//!   keeps the returning clients in, and `overflow=pass` hands the excess to
//!   the kernel's SYN cookies so new clients get in too.
//!
//! The kernel alone runs with its default `tcp_syncookies=1` and, for the
//! spoofed flood, once more with `tcp_syncookies=0`: the seed's classic
//! failure, where the SYN queue fills and real clients are turned away.
//! Every phase has its own listening port, so no phase inherits another's
//! SYN queue.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use handshake_lab::{ConnectReport, EchoServer, Flood, Lab, Sources, connect_each};

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

/// The settings the gate runs with in the demo.
const GATE_SETTINGS: &[&str] = &["max-half-open=1024", "max-half-open-per-source=20"];
const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
/// Clients start this long after the flood, once it has filled what it can.
const CLIENTS_AFTER: Duration = Duration::from_secs(1);
const LISTEN_BACKLOG: i32 = 128;

#[derive(Clone, Copy, PartialEq, Eq)]
enum FloodKind {
    None,
    FewSources,
    Spoofed,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Defence {
    /// The kernel alone, with this `tcp_syncookies`.
    Kernel(u8),
    /// The gate, with these settings on top of [`GATE_SETTINGS`].
    Gate(&'static [&'static str]),
}

struct Plan {
    name: &'static str,
    flood: FloodKind,
    defence: Defence,
}

const PLAN: &[Plan] = &[
    Plan {
        name: "no flood, kernel alone",
        flood: FloodKind::None,
        defence: Defence::Kernel(1),
    },
    Plan {
        name: "no flood, gate",
        flood: FloodKind::None,
        defence: Defence::Gate(&[]),
    },
    Plan {
        name: "3 real sources, kernel alone",
        flood: FloodKind::FewSources,
        defence: Defence::Kernel(1),
    },
    Plan {
        name: "3 real sources, gate",
        flood: FloodKind::FewSources,
        defence: Defence::Gate(&[]),
    },
    Plan {
        name: "spoofed, kernel alone",
        flood: FloodKind::Spoofed,
        defence: Defence::Kernel(1),
    },
    Plan {
        name: "spoofed, kernel, no cookies",
        flood: FloodKind::Spoofed,
        defence: Defence::Kernel(0),
    },
    Plan {
        name: "spoofed, gate, overflow=drop",
        flood: FloodKind::Spoofed,
        defence: Defence::Gate(&["overflow=drop"]),
    },
    Plan {
        name: "spoofed, gate, overflow=pass",
        flood: FloodKind::Spoofed,
        defence: Defence::Gate(&["overflow=pass"]),
    },
];

struct Phase {
    name: &'static str,
    returning: ConnectReport,
    new: ConnectReport,
    flood_sent: u64,
    syn_recv: usize,
    xdp_dropped: Option<u64>,
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
    // New clients come from 198.18.16.0/20, one fresh address per connection.
    lab.server.ip(&[
        "route",
        "add",
        "198.18.16.0/20",
        "via",
        &Lab::CLIENT_V4.to_string(),
    ])?;
    let gate = Gate {
        bin: &gate_bin,
        lab: &lab,
    };

    let mut phases = Vec::new();
    for (i, plan) in PLAN.iter().enumerate() {
        let port = 8080 + i as u16;
        let new_clients = fresh_addresses(&lab, i, o.clients)?;
        phases.push(run_phase(&lab, &gate, plan, port, new_clients, &o)?);
    }
    report(&phases, &o);
    Ok(())
}

/// `n` addresses the server has never seen, on the client's interface.
fn fresh_addresses(lab: &Lab, phase: usize, n: usize) -> anyhow::Result<Vec<IpAddr>> {
    (0..n)
        .map(|i| {
            let a = Ipv4Addr::new(198, 18, 16 + phase as u8, 1 + i as u8);
            lab.client
                .ip(&["addr", "add", &format!("{a}/32"), "dev", &lab.client_if])?;
            Ok(IpAddr::V4(a))
        })
        .collect()
}

/// The CLI, acting on the lab's server interface.
struct Gate<'a> {
    bin: &'a std::path::Path,
    lab: &'a Lab,
}

impl Gate<'_> {
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(self.bin)
            .arg("--netns")
            .arg(&self.lab.server.name)
            .args(args)
            .output()?;
        if !out.status.success() {
            bail!(
                "handshake-gate {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

fn run_phase(
    lab: &Lab,
    gate: &Gate,
    plan: &Plan,
    port: u16,
    new_clients: Vec<IpAddr>,
    o: &Options,
) -> anyhow::Result<Phase> {
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), port);
    let _server = EchoServer::start(&lab.server, addr, LISTEN_BACKLOG)?;
    let cookies = match plan.defence {
        Defence::Kernel(c) => c,
        Defence::Gate(_) => 1,
    };
    lab.server
        .sysctl(&format!("net.ipv4.tcp_syncookies={cookies}"))?;
    println!("demo: {}", plan.name);
    if let Defence::Gate(extra) = plan.defence {
        let mut args = vec!["attach", &lab.server_if];
        for s in GATE_SETTINGS.iter().chain(extra) {
            args.extend(["--set", s]);
        }
        gate.run(&args)?;
    }
    let result = (|| {
        // The returning client has been here before the flood.
        let returning = [IpAddr::V4(Lab::CLIENT_V4)];
        connect_each(&lab.client, &returning, addr, CLIENT_TIMEOUT)?;
        let returning = vec![returning[0]; o.clients];
        let (returning, new, sent) =
            clients_under_flood(lab, addr, plan.flood, &returning, &new_clients, o)?;
        let xdp_dropped = match plan.defence {
            Defence::Gate(_) => {
                let s: serde_json::Value =
                    serde_json::from_str(&gate.run(&["status", &lab.server_if, "--json"])?)?;
                s["dropped_packets"].as_u64()
            }
            Defence::Kernel(_) => None,
        };
        anyhow::Ok(Phase {
            name: plan.name,
            returning,
            new,
            flood_sent: sent,
            syn_recv: syn_recv(lab, port)?,
            xdp_dropped,
        })
    })();
    if let Defence::Gate(_) = plan.defence {
        if plan.name.ends_with("overflow=pass") {
            println!(
                "\n$ handshake-gate --netns {} status {}",
                lab.server.name, lab.server_if
            );
            print!("{}", gate.run(&["status", &lab.server_if])?);
        }
        gate.run(&["detach", &lab.server_if])?;
    }
    result
}

/// Starts the flood, lets it fill what it can, then connects the returning
/// and the new clients, all at once.
fn clients_under_flood(
    lab: &Lab,
    addr: SocketAddr,
    kind: FloodKind,
    returning: &[IpAddr],
    new: &[IpAddr],
    o: &Options,
) -> anyhow::Result<(ConnectReport, ConnectReport, u64)> {
    let sources = match kind {
        FloodKind::None => None,
        FloodKind::FewSources => Some(Sources::Range {
            first: "198.18.0.66".parse()?,
            count: 3,
        }),
        FloodKind::Spoofed => Some(Sources::Range {
            first: "198.19.0.0".parse()?,
            count: 50_000,
        }),
    };
    std::thread::scope(|s| {
        let flood = sources.map(|sources| {
            s.spawn(move || {
                Flood {
                    target: addr,
                    sources,
                    count: o.rate * o.seconds,
                    max_time: Duration::from_secs(o.seconds),
                    rate: Some(o.rate),
                    threads: 1,
                }
                .run(&lab.client)
            })
        });
        if flood.is_some() {
            std::thread::sleep(CLIENTS_AFTER);
        }
        let back = s.spawn(|| connect_each(&lab.client, returning, addr, CLIENT_TIMEOUT));
        let new = connect_each(&lab.client, new, addr, CLIENT_TIMEOUT);
        let back = back
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
        let sent = match flood {
            Some(f) => {
                f.join()
                    .map_err(|_| anyhow::anyhow!("flood thread panicked"))??
                    .sent
            }
            None => 0,
        };
        Ok((back?, new?, sent))
    })
}

/// Half-open sockets the server's kernel holds on `port`.
fn syn_recv(lab: &Lab, port: u16) -> anyhow::Result<usize> {
    let out = lab.server.exec(
        "ss",
        &["-Htan", "state", "syn-recv", &format!("sport = :{port}")],
    )?;
    Ok(out.lines().filter(|l| !l.trim().is_empty()).count())
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

fn report(phases: &[Phase], o: &Options) {
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
         sockets the server's\nkernel held at the end of the phase. A failed client timed out after \
         {} s.",
        CLIENT_TIMEOUT.as_secs()
    );
}
