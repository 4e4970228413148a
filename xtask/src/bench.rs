//! `cargo xtask bench`: builds the controller and the benchmark in release
//! mode and runs `handshake-bench`, which writes `target/bench/report.md`,
//! `report.json` and `packets.svg` and prints the report. A quick run takes
//! about fifteen minutes; `--full` runs longer. `docs/BENCHMARKS.md` keeps the
//! latest committed results.

use std::process::Command;

use anyhow::bail;

#[derive(clap::Args)]
pub struct Options {
    /// Skip the setup step.
    #[arg(long)]
    no_setup: bool,
    /// Longer runs: more repeats, flows, flood runs and seconds.
    #[arg(long)]
    full: bool,
    /// Only the program loads: the verifier's time and instruction counts
    /// (seconds, not minutes).
    #[arg(long)]
    programs_only: bool,
    /// Only the program loads, where each packet class's time goes (a
    /// `perf` profile of the programs under BPF_PROG_TEST_RUN) and the
    /// per-packet costs: about a minute.
    #[arg(long)]
    profile: bool,
    /// Only the per-packet costs (BPF_PROG_TEST_RUN), each beside its
    /// no-op: seconds.
    #[arg(long)]
    packets: bool,
    /// Only the control plane with 1M connections (`status`, a metrics
    /// scrape, `conns`), next to the same commands on an empty gate: about
    /// a minute.
    #[arg(long)]
    control: bool,
    /// Only what the prefix lists cost a SYN and an unknown ACK (under a
    /// minute).
    #[arg(long)]
    lists: bool,
    /// Only the floods at line rate (the lab's live-frames sender against
    /// the gate, the kernel alone and nftables SYNPROXY): about five minutes.
    #[arg(long)]
    flood: bool,
    /// Only the gate's per-packet cost inside libxdp's dispatcher next to
    /// its cost alone, in the VM layer's guest (this host's kernel has no
    /// BPF trampoline, which the dispatcher needs); the report is printed.
    #[arg(long)]
    dispatcher: bool,
}

#[derive(clap::Args)]
pub struct SoakOptions {
    /// Skip the setup step.
    #[arg(long)]
    no_setup: bool,
    /// How long to run.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
}

/// `cargo xtask soak`: the long run of `handshake-bench --soak` (not part
/// of `cargo xtask test`); writes `target/soak/soak.md` and `soak.json`.
pub fn soak(o: SoakOptions) -> anyhow::Result<()> {
    if !o.no_setup {
        crate::setup::run()?;
    }
    let root = crate::workspace_root();
    build(&root)?;
    let status = Command::new(root.join("target/release/handshake-bench"))
        .arg("--out")
        .arg(root.join("target/soak"))
        .arg("--gate")
        .arg(root.join("target/release/handshake-gate"))
        .arg("--soak")
        .arg(o.minutes.to_string())
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("the soak run failed");
    }
    println!(
        "
soak: wrote target/soak/soak.md and soak.json"
    );
    Ok(())
}

pub fn build(root: &std::path::Path) -> anyhow::Result<()> {
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "handshake-user",
            "-p",
            "handshake-bench",
        ])
        .current_dir(root)
        .status()?;
    if !status.success() {
        bail!("building the benchmark failed");
    }
    Ok(())
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !o.no_setup {
        crate::setup::run()?;
    }
    let root = crate::workspace_root();
    build(&root)?;
    if o.dispatcher {
        return in_vm(&root, o.full);
    }
    let mut cmd = Command::new(root.join("target/release/handshake-bench"));
    cmd.arg("--out")
        .arg(root.join("target/bench"))
        .arg("--gate")
        .arg(root.join("target/release/handshake-gate"))
        .current_dir(&root);
    if o.full {
        cmd.arg("--full");
    }
    if o.programs_only {
        cmd.arg("--programs-only");
    }
    if o.profile {
        cmd.arg("--profile");
    }
    if o.packets {
        cmd.arg("--packets");
    }
    if o.control {
        cmd.arg("--control");
    }
    if o.lists {
        cmd.arg("--lists");
    }
    if o.flood {
        cmd.arg("--flood");
    }
    if !cmd.status()?.success() {
        bail!("the benchmark failed");
    }
    println!("\nbench: wrote target/bench/report.md, report.json and packets.svg");
    Ok(())
}

/// `--dispatcher`: `handshake-bench --dispatcher` run in the VM layer's
/// guest, which sees this host's files read-only: its report goes to the
/// guest's /run/tmp and to the console, which is printed here.
fn in_vm(root: &std::path::Path, full: bool) -> anyhow::Result<()> {
    let kernel = crate::vm::fetch_kernel()?;
    let script = crate::vm::dir().join("bench.sh");
    std::fs::create_dir_all(crate::vm::dir())?;
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n# Written by `cargo xtask bench --dispatcher`; run by the VM's init.\n\
             echo \"vm: running on $(uname -r)\"\n\
             exec {} --dispatcher --out /run/tmp/bench{}\n",
            root.join("target/release/handshake-bench").display(),
            if full { " --full" } else { "" }
        ),
    )?;
    crate::vm::run_script(&kernel, &script, root)?;
    println!("\nbench: the report is above, from the VM's console");
    Ok(())
}
