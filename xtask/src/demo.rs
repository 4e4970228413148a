//! `cargo xtask demo`: a lab with a real echo server, real clients and a SYN
//! flood, first against the kernel alone, then with the gate attached.
//!
//! The flood comes from one address (198.18.0.66) that never answers the
//! server's SYN-ACKs, so each flood SYN the kernel accepts holds a SYN_RECV
//! slot for about a minute. The kernel-alone phase runs with
//! `tcp_syncookies=0`, the classic failure the seed describes: the SYN queue
//! fills and real clients' SYNs are dropped. With the gate, the source gets
//! `max-half-open-per-source` attempts and the rest is dropped in XDP before
//! the kernel spends anything on it.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, bail};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use handshake_lab::{ConnectReport, EchoServer, Flood, Lab, Sources, connect_many};

#[derive(clap::Args)]
pub struct Options {
    /// Skip the setup step.
    #[arg(long)]
    no_setup: bool,
    /// Flood rate, SYNs per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Flood duration, seconds (the flood is also capped at rate × seconds packets).
    #[arg(long, default_value_t = 6)]
    seconds: u64,
    /// Client connections per phase.
    #[arg(long, default_value_t = 30)]
    clients: usize,
}

struct Phase {
    name: &'static str,
    clients: ConnectReport,
    flood_sent: u64,
    syn_recv: usize,
    xdp_dropped: Option<u64>,
}

const CLIENT_TIMEOUT: Duration = Duration::from_secs(1);

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
        "demo: lab up — server {} in netns {}, client {} in netns {}",
        Lab::SERVER_V4,
        lab.server.name,
        Lab::CLIENT_V4,
        lab.client.name
    );
    lab.server.sysctl("net.ipv4.tcp_syncookies=0")?;
    let mut phases = Vec::new();

    // 1. No flood: the baseline.
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), 8080);
    let _s1 = EchoServer::start(&lab.server, addr, 128)?;
    println!("demo: phase 1 — no flood");
    phases.push(Phase {
        name: "no flood",
        clients: connect_many(&lab.client, addr, o.clients, CLIENT_TIMEOUT)?,
        flood_sent: 0,
        syn_recv: syn_recv(&lab, 8080)?,
        xdp_dropped: None,
    });

    // 2. Flood, kernel alone.
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), 8081);
    let _s2 = EchoServer::start(&lab.server, addr, 128)?;
    println!(
        "demo: phase 2 — {} SYN/s for {} s, kernel alone (tcp_syncookies=0)",
        o.rate, o.seconds
    );
    let (clients, sent) = under_flood(&lab, addr, &o)?;
    phases.push(Phase {
        name: "flood, kernel alone",
        clients,
        flood_sent: sent,
        syn_recv: syn_recv(&lab, 8081)?,
        xdp_dropped: None,
    });

    // 3. Flood, gate attached.
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), 8082);
    let _s3 = EchoServer::start(&lab.server, addr, 128)?;
    let gate = |args: &[&str]| -> anyhow::Result<String> {
        let out = Command::new(&gate_bin)
            .arg("--netns")
            .arg(&lab.server.name)
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
    };
    print!(
        "demo: phase 3 — the same flood with the gate: {}",
        gate(&[
            "attach",
            &lab.server_if,
            "--set",
            "max-half-open-per-source=20"
        ])?
    );
    let result = (|| {
        let (clients, sent) = under_flood(&lab, addr, &o)?;
        let status: serde_json::Value =
            serde_json::from_str(&gate(&["status", &lab.server_if, "--json"])?)?;
        phases.push(Phase {
            name: "flood, gate attached",
            clients,
            flood_sent: sent,
            syn_recv: syn_recv(&lab, 8082)?,
            xdp_dropped: status["dropped_packets"].as_u64(),
        });
        println!(
            "\n$ handshake-gate --netns {} status {}",
            lab.server.name, lab.server_if
        );
        print!("{}", gate(&["status", &lab.server_if])?);
        anyhow::Ok(())
    })();
    gate(&["detach", &lab.server_if])?;
    result?;

    report(&phases, &o);
    Ok(())
}

/// Starts the flood, lets it fill the queue for a second, then connects the clients.
fn under_flood(lab: &Lab, addr: SocketAddr, o: &Options) -> anyhow::Result<(ConnectReport, u64)> {
    let flood = Flood {
        target: addr,
        sources: Sources::One("198.18.0.66".parse()?),
        count: o.rate * o.seconds,
        max_time: Duration::from_secs(o.seconds),
        rate: Some(o.rate),
        threads: 1,
    };
    std::thread::scope(|s| {
        let f = s.spawn(|| flood.run(&lab.client));
        std::thread::sleep(Duration::from_secs(1));
        let clients = connect_many(&lab.client, addr, o.clients, CLIENT_TIMEOUT);
        let sent = f
            .join()
            .map_err(|_| anyhow::anyhow!("flood thread panicked"))??
            .sent;
        Ok((clients?, sent))
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
    d.map(|d| format!("{:.2} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

fn report(phases: &[Phase], o: &Options) {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "phase",
        "clients connected",
        "connect p50",
        "connect p99",
        "flood SYNs sent",
        "server SYN_RECV",
        "dropped in XDP",
    ]);
    for p in phases {
        t.add_row(vec![
            p.name.to_string(),
            format!(
                "{}/{} ({:.0}%)",
                p.clients.succeeded,
                p.clients.attempted,
                p.clients.success_rate() * 100.0
            ),
            ms(p.clients.quantile(0.5)),
            ms(p.clients.quantile(0.99)),
            p.flood_sent.to_string(),
            p.syn_recv.to_string(),
            p.xdp_dropped
                .map(|d| d.to_string())
                .unwrap_or_else(|| "-".into()),
        ]);
    }
    println!(
        "\nbefore / after ({} clients per phase, {} s connect timeout, flood {} SYN/s from 198.18.0.66):",
        o.clients,
        CLIENT_TIMEOUT.as_secs(),
        o.rate
    );
    println!("{t}");
    println!(
        "server SYN_RECV: half-open sockets the server's kernel held for the flood at the end. With the gate,\n\
         the flooding source gets max-half-open-per-source (20) attempts per half-open timeout (5 s), so a\n\
         flood longer than the timeout gets a second 20. Clients that failed timed out after {} s.",
        CLIENT_TIMEOUT.as_secs()
    );
}
