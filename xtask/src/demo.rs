//! `cargo xtask demo`: a lab with a real echo server, real clients and SYN
//! floods at line rate, each flood against the kernel alone and then with
//! the gate, and a before/after report with the flood meter's cost per SYN
//! (`handshake-bench --demo`; the phases are `handshake_lab::scenario`'s).

use std::process::Command;

use anyhow::bail;

#[derive(clap::Args)]
pub struct Options {
    /// Skip the setup step.
    #[arg(long)]
    no_setup: bool,
    /// Flood rate, SYNs per second (from the live-frames sender).
    #[arg(long, default_value_t = 1_000_000)]
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
    println!("demo: building the gate and the lab's meter");
    crate::bench::build(&root)?;
    let status = Command::new(root.join("target/release/handshake-bench"))
        .arg("--demo")
        .args(["--rate", &o.rate.to_string()])
        .args(["--seconds", &o.seconds.to_string()])
        .args(["--clients", &o.clients.to_string()])
        .arg("--gate")
        .arg(root.join("target/release/handshake-gate"))
        .current_dir(&root)
        .status()?;
    if !status.success() {
        bail!("the demo failed");
    }
    Ok(())
}
