//! `handshake-bench`: the measurements behind `cargo xtask bench`. Every
//! figure is reported next to a baseline measured in the same run, as a
//! ratio: absolute times on a shared machine are noise.
//!
//! Writes `report.md`, `report.json` and `packets.svg` to `--out` and prints
//! the Markdown report.

mod clients;
mod control;
mod demo;
mod dispatch;
mod flood;
mod lists;
mod memory;
mod packets;
mod profile;
mod programs;
mod report;
mod scale;
mod soak;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser)]
#[command(name = "handshake-bench")]
struct Args {
    /// Longer runs: more repeats, flows and flood seconds.
    #[arg(long)]
    full: bool,
    /// Where the report goes.
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// The controller binary (a release build, as operators run it).
    #[arg(long, default_value = "target/release/handshake-gate")]
    gate: PathBuf,
    /// Instead of the benchmarks, the soak run (`cargo xtask soak`): this
    /// many minutes; writes soak.md and soak.json to --out.
    #[arg(long, value_name = "MINUTES")]
    soak: Option<f64>,
    /// Only the program loads (verifier time and instruction counts), in
    /// seconds rather than minutes; the report holds that section alone.
    #[arg(long)]
    programs_only: bool,
    /// Only the program loads, where each class's time goes (a `perf`
    /// profile of the programs) and the per-packet costs: about a minute.
    #[arg(long)]
    profile: bool,
    /// Only the per-packet costs, each beside its no-op: seconds.
    #[arg(long)]
    packets: bool,
    /// Only the control plane with 1M connections (`status`, a metrics
    /// scrape, `conns`), next to the same on an empty gate: a minute.
    #[arg(long)]
    control: bool,
    /// Instead of the benchmarks, the demo (`cargo xtask demo`): the lab's
    /// phases at line rate, and the meter's cost per flood SYN beside them.
    #[arg(long)]
    demo: bool,
    /// The demo's flood rate, SYNs per second.
    #[arg(long, default_value_t = demo::RATE)]
    rate: u64,
    /// The demo's flood duration, seconds.
    #[arg(long, default_value_t = 4)]
    seconds: u64,
    /// The demo's returning and new clients per phase (each).
    #[arg(long, default_value_t = 20)]
    clients: usize,
    /// Only what the prefix lists cost a SYN and an unknown ACK (0, 1,
    /// 10,000 and 65,536 prefixes): under a minute.
    #[arg(long)]
    lists: bool,
    /// Only the line-rate flood table (the live-frames meter): a few minutes.
    #[arg(long)]
    flood: bool,
    /// Only the gate's per-packet cost inside libxdp's dispatcher next to
    /// its cost alone (needs the BPF trampoline: `cargo xtask bench
    /// --dispatcher` runs it in the VM).
    #[arg(long)]
    dispatcher: bool,
}

/// The middle value (the upper one of an even count); `v` is not empty.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The line-rate flood table.
fn line_rate(a: &Args) -> anyhow::Result<flood::Meter> {
    eprintln!("bench: flood frames at line rate (live frames)");
    flood::run(
        &a.gate,
        &if a.full {
            flood::Options {
                runs: 9,
                ..flood::Options::STANDARD
            }
        } else {
            flood::Options::STANDARD
        },
    )
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    std::fs::create_dir_all(&a.out)?;
    if let Some(minutes) = a.soak {
        eprintln!("soak: {minutes} minutes");
        let r = soak::run(&a.gate, minutes)?;
        let md = r.markdown();
        std::fs::write(a.out.join("soak.md"), &md)?;
        std::fs::write(a.out.join("soak.json"), serde_json::to_string_pretty(&r)?)?;
        print!("{md}");
        anyhow::ensure!(r.ok(), "the soak run failed a requirement (see the table)");
        return Ok(());
    }
    if a.demo {
        return demo::run(&a.gate, a.rate, a.seconds, a.clients);
    }
    let mut r = report::Report::new(a.full);

    if a.dispatcher {
        r.dispatcher = dispatch::run(if a.full { 1_000_000 } else { 100_000 }, 5)?;
        r.write(&a.out)?;
        print!("{}", r.markdown());
        return Ok(());
    }
    if a.control {
        r.control = Some(control::run(&a.gate, 5)?);
        r.write(&a.out)?;
        print!("{}", r.markdown());
        return Ok(());
    }
    if a.lists {
        r.lists = lists::run(100_000, 5)?;
        r.write(&a.out)?;
        print!("{}", r.markdown());
        return Ok(());
    }
    if a.flood {
        r.line_rate = Some(line_rate(&a)?);
        r.write(&a.out)?;
        print!("{}", r.markdown());
        return Ok(());
    }
    let o = if a.full {
        packets::Options {
            repeat: 1_000_000,
            calls: 9,
            singles: 20_000,
        }
    } else {
        packets::Options {
            repeat: 100_000,
            calls: 5,
            singles: 3_000,
        }
    };
    if a.packets {
        r.packets = packets::run(&o);
        r.write(&a.out)?;
        print!("{}", r.markdown());
        return Ok(());
    }
    eprintln!("bench: program loads (the verifier)");
    r.programs = programs::run(if a.full { 9 } else { 5 })?;
    if a.programs_only {
        r.write(&a.out)?;
        print!("{}", r.markdown());
        return Ok(());
    }
    eprintln!("bench: where the time goes (perf)");
    match profile::run(if a.full { 1_000_000 } else { 200_000 }) {
        Ok(p) => r.profiles = p,
        Err(e) => eprintln!("bench: no profile: {e:#}"),
    }

    eprintln!("bench: per-packet cost (BPF_PROG_TEST_RUN)");
    r.packets = packets::run(&o);
    eprintln!("bench: what the prefix lists cost");
    match lists::run(o.repeat, o.calls) {
        Ok(rows) => r.lists = rows,
        Err(e) => eprintln!("bench: the prefix lists were not measured: {e:#}"),
    }
    eprintln!("bench: cost as the maps fill, and on every CPU at once");
    match scale::run(&scale::Options {
        repeat: o.repeat,
        calls: o.calls,
    }) {
        Ok((growth, parallel)) => {
            r.growth = growth;
            r.parallel = Some(parallel);
        }
        Err(e) => eprintln!("bench: the scale rows were not measured: {e:#}"),
    }
    if a.profile {
        r.write(&a.out)?;
        print!("{}", r.markdown());
        return Ok(());
    }

    r.line_rate = Some(line_rate(&a)?);

    eprintln!("bench: legitimate clients under flood");
    r.clients_load = handshake_lab::scenario::Load {
        rate: demo::RATE,
        seconds: if a.full { 8 } else { 4 },
        clients: 100,
        live: Some(handshake_user::flood_object()),
    };
    r.clients = clients::run(&a.gate, &r.clients_load)?;

    eprintln!("bench: memory");
    r.memory = Some(memory::run(&a.gate)?);
    eprintln!("bench: the control plane");
    r.control = Some(control::run(&a.gate, if a.full { 9 } else { 5 })?);

    r.write(&a.out)?;
    print!("{}", r.markdown());
    Ok(())
}
