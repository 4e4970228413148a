//! The demo's and the benchmark's lab scenario: a real echo server, real
//! clients and SYN floods, each flood against the kernel alone and then with
//! the gate, with two kinds of client measured in every phase, all at once
//! while the flood runs: returning clients (198.18.0.2, which completed
//! handshakes before the flood, so the gate counts it as verified) and new
//! clients, each from an address the server has never seen
//! (198.18.16.0/20).
//!
//! Two floods, each at a fixed rate for a fixed time:
//! - a few real addresses (198.18.0.66–.68) that never answer the SYN-ACKs:
//!   the per-source cap stops them;
//! - spoofed sources, 50,000 addresses of 198.19.0.0/16, whose SYN-ACKs go
//!   to nobody: they fill the gate's global budget, the verified reserve
//!   keeps the returning clients in, `overflow=pass` hands the excess to
//!   the kernel's SYN cookies so new clients get in too, and
//!   `overflow=cookie` answers the excess with SYN cookies from XDP, so new
//!   clients get in and the kernel never sees the flood beyond the budget.
//!
//! The kernel alone runs with its default `tcp_syncookies=1` and, for the
//! spoofed flood, once more with `tcp_syncookies=0`: the seed's classic
//! failure, where the SYN queue fills and real clients are turned away.
//! Every phase has its own listening port, so no phase inherits another's
//! SYN queue. The gate is driven through its CLI, as an operator would.
//!
//! The client side's interface carries an XDP program that passes
//! everything (the gate itself in mode `off`) in every phase: on a veth
//! pair, the SYN-ACKs the server side's XDP program sends back (`XDP_TX`)
//! are delivered only to a peer with an XDP program.
//!
//! Each phase also counts the SYN-ACKs sent toward the spoofed addresses
//! (they reach the client namespace, which does not forward them:
//! `IpInAddrErrors` there, or with the live-frames sender the sink's drops,
//! see `live::Sink`) and the machine's busy CPU while the flood runs.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::bail;

use crate::{ConnectReport, EchoServer, Flood, Lab, Sources, connect_each};

/// How hard the floods push and how many clients try.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Flood rate, SYNs per second.
    pub rate: u64,
    /// Flood duration, seconds.
    pub seconds: u64,
    /// Returning and new clients per phase (each).
    pub clients: usize,
    /// The flood sender: the object holding the live-frames sender
    /// ([`crate::LiveFlood`], line rate), or None for the raw-socket one
    /// ([`crate::Flood`], below a million packets a second).
    pub live: Option<&'static [u8]>,
}

pub const GATE_SETTINGS: &[&str] = &["max-half-open=1024", "max-half-open-per-source=20"];
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);
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
    Plan {
        name: "spoofed, gate, overflow=cookie",
        flood: FloodKind::Spoofed,
        defence: Defence::Gate(&["overflow=cookie"]),
    },
];

pub struct Phase {
    pub name: &'static str,
    pub returning: ConnectReport,
    pub new: ConnectReport,
    pub flood_sent: u64,
    /// Half-open sockets the server's kernel held at the end.
    pub syn_recv: usize,
    /// Packets the gate dropped in XDP (None: the kernel alone).
    pub xdp_dropped: Option<u64>,
    /// `status` of the gate at the end of the phase, as an operator sees it.
    pub gate_status: Option<String>,
    /// SYN-ACKs (and any other reply) that reached the spoofed addresses.
    pub spoofed_replies: u64,
    /// Busy CPU of the whole machine while the flood ran, CPU-seconds.
    pub busy_cpu_s: f64,
    /// How long the flood ran, seconds.
    pub flood_s: f64,
}

/// Runs every phase in `lab`, the gate being the CLI at `gate_bin`.
pub fn run_all(lab: &Lab, gate_bin: &Path, load: &Load) -> anyhow::Result<Vec<Phase>> {
    run_some(lab, gate_bin, load, &[], CLIENT_TIMEOUT)
}

/// The names of the phases, in order.
pub fn phase_names() -> impl Iterator<Item = &'static str> {
    PLAN.iter().map(|p| p.name)
}

/// Runs the phases named in `only` (every phase if it is empty), each
/// client waiting up to `client_timeout` for its echo.
pub fn run_some(
    lab: &Lab,
    gate_bin: &Path,
    load: &Load,
    only: &[&str],
    client_timeout: Duration,
) -> anyhow::Result<Vec<Phase>> {
    // New clients come from 198.18.16.0/20, one fresh address per connection.
    lab.server.ip(&[
        "route",
        "add",
        "198.18.16.0/20",
        "via",
        &Lab::CLIENT_V4.to_string(),
    ])?;
    let gate = Gate { bin: gate_bin, lab };
    // With live frames, the sink drops the spoofed sources' replies as
    // they arrive; with raw sockets, the gate in mode off passes them to
    // the client namespace's stack, which drops them (`IpInAddrErrors`).
    let sink = match load.live {
        Some(object) => Some(crate::live::Sink::attach(lab, object)?),
        None => {
            let peer = ["attach", &lab.client_if, "--set", "mode=off"];
            gate.run_in(&lab.client, &peer)?;
            None
        }
    };
    let mut phases = Vec::new();
    let mut result = Ok(());
    for (i, plan) in PLAN.iter().enumerate() {
        if !only.is_empty() && !only.contains(&plan.name) {
            continue;
        }
        let port = 8080 + i as u16;
        let phase = fresh_addresses(lab, i, load.clients).and_then(|new_clients| {
            run_phase(lab, &gate, plan, port, new_clients, load, client_timeout)
        });
        match phase {
            Ok(p) => phases.push(p),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    match sink {
        Some(sink) => drop(sink),
        None => {
            gate.run_in(&lab.client, &["detach", &lab.client_if])?;
        }
    }
    result.map(|()| phases)
}

/// Busy and total jiffies of all CPUs (`/proc/stat`).
pub fn cpu_jiffies() -> anyhow::Result<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    anyhow::ensure!(v.len() >= 8, "unexpected /proc/stat: {line}");
    // user nice system idle iowait irq softirq steal
    let busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7];
    Ok((busy, busy + v[3] + v[4]))
}

/// Seconds per jiffy of `/proc/stat`.
pub fn jiffy_s() -> f64 {
    1.0 / nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .unwrap_or(100) as f64
}

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
        self.run_in(&self.lab.server, args)
    }

    fn run_in(&self, ns: &crate::Netns, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(self.bin)
            .arg("--netns")
            .arg(&ns.name)
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
    o: &Load,
    client_timeout: Duration,
) -> anyhow::Result<Phase> {
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), port);
    let _server = EchoServer::start(&lab.server, addr, LISTEN_BACKLOG)?;
    let cookies = match plan.defence {
        Defence::Kernel(c) => c,
        Defence::Gate(_) => 1,
    };
    lab.server
        .sysctl(&format!("net.ipv4.tcp_syncookies={cookies}"))?;
    eprintln!("scenario: {}", plan.name);
    let server_xdp = match plan.defence {
        Defence::Gate(extra) => {
            let mut args = vec!["attach", &lab.server_if];
            for s in GATE_SETTINGS.iter().chain(extra) {
                args.extend(["--set", s]);
            }
            gate.run(&args)?;
            true
        }
        // Live frames reach a veth only through an XDP program (it takes
        // XDP frames only then): the gate in mode `off`, which passes
        // everything and tracks nothing, stands in for the no-op.
        Defence::Kernel(_) if o.live.is_some() => {
            gate.run(&["attach", &lab.server_if, "--set", "mode=off"])?;
            true
        }
        Defence::Kernel(_) => false,
    };
    let result = (|| {
        // The returning client has been here before the flood.
        let returning = [IpAddr::V4(Lab::CLIENT_V4)];
        connect_each(&lab.client, &returning, addr, client_timeout)?;
        let returning = vec![returning[0]; o.clients];
        let replies = || match o.live {
            Some(_) => crate::live::xdp_drops(&lab.client, &lab.client_if),
            None => lab.client.nstat("IpInAddrErrors"),
        };
        let replies_before = replies()?;
        let (returning, new, sent, busy_cpu_s, flood_s) = clients_under_flood(
            lab,
            addr,
            plan.flood,
            &returning,
            &new_clients,
            o,
            client_timeout,
        )?;
        let spoofed_replies = replies()? - replies_before;
        let (xdp_dropped, gate_status) = match plan.defence {
            Defence::Gate(_) => {
                let s: serde_json::Value =
                    serde_json::from_str(&gate.run(&["status", &lab.server_if, "--json"])?)?;
                let text = format!(
                    "$ handshake-gate --netns {} status {}\n{}",
                    lab.server.name,
                    lab.server_if,
                    gate.run(&["status", &lab.server_if])?
                );
                (s["dropped_packets"].as_u64(), Some(text))
            }
            Defence::Kernel(_) => (None, None),
        };
        anyhow::Ok(Phase {
            name: plan.name,
            returning,
            new,
            flood_sent: sent,
            syn_recv: syn_recv(lab, port)?,
            xdp_dropped,
            gate_status,
            spoofed_replies,
            busy_cpu_s,
            flood_s,
        })
    })();
    if server_xdp {
        gate.run(&["detach", &lab.server_if])?;
    }
    result
}

/// Starts the flood, lets it fill what it can, then connects the returning
/// and the new clients, all at once. Returns both reports, the SYNs sent,
/// and the busy CPU-seconds and seconds the flood took.
fn clients_under_flood(
    lab: &Lab,
    addr: SocketAddr,
    kind: FloodKind,
    returning: &[IpAddr],
    new: &[IpAddr],
    o: &Load,
    client_timeout: Duration,
) -> anyhow::Result<(ConnectReport, ConnectReport, u64, f64, f64)> {
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
    let (busy0, _) = cpu_jiffies()?;
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        let flood = sources.map(|sources| {
            s.spawn(move || match o.live {
                Some(object) => {
                    let mut f = crate::LiveFlood::new(
                        crate::Segments::Syn,
                        addr,
                        sources,
                        o.rate * o.seconds,
                        Duration::from_secs(o.seconds),
                    );
                    f.rate = Some(o.rate);
                    f.run(lab, object)
                }
                None => Flood {
                    segments: crate::Segments::Syn,
                    target: addr,
                    sources,
                    count: o.rate * o.seconds,
                    max_time: Duration::from_secs(o.seconds),
                    rate: Some(o.rate),
                    threads: 1,
                }
                .run(&lab.client),
            })
        });
        if flood.is_some() {
            std::thread::sleep(CLIENTS_AFTER);
        }
        let back = s.spawn(|| connect_each(&lab.client, returning, addr, client_timeout));
        let new = connect_each(&lab.client, new, addr, client_timeout);
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
        let (busy1, _) = cpu_jiffies()?;
        let busy = (busy1 - busy0) as f64 * jiffy_s();
        Ok((back?, new?, sent, busy, started.elapsed().as_secs_f64()))
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
