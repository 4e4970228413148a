//! `cargo xtask test`: every test layer, in order, with its time.
//!
//! 1. host: unit tests of the pure state machine, config validation and the
//!    lab (no privileges needed);
//! 2. privileged: the `#[ignore]`d tests of handshake-user, which need root —
//!    BPF_PROG_TEST_RUN tables of the real XDP program and end-to-end tests
//!    in network namespaces — one test thread, since they share kernel state.

use std::process::Command;
use std::time::Instant;

use anyhow::bail;

#[derive(clap::Args)]
pub struct Options {
    /// Skip the setup step (when you know the machine is ready).
    #[arg(long)]
    no_setup: bool,
}

struct Layer {
    name: &'static str,
    args: &'static [&'static str],
}

const LAYERS: &[Layer] = &[
    // The default members: everything but the eBPF crate, which only builds for BPF.
    Layer {
        name: "host unit tests",
        args: &["test"],
    },
    Layer {
        name: "privileged tests (BPF_PROG_TEST_RUN, network namespaces)",
        args: &[
            "test",
            "-p",
            "handshake-user",
            "--tests",
            "--",
            "--ignored",
            "--test-threads=1",
        ],
    },
];

pub fn run(o: Options) -> anyhow::Result<()> {
    if !o.no_setup {
        crate::setup::run()?;
    }
    let root = crate::workspace_root();
    let mut results = Vec::new();
    for layer in LAYERS {
        println!("\n== {} ==", layer.name);
        let start = Instant::now();
        let status = Command::new(env!("CARGO"))
            .args(layer.args)
            .current_dir(&root)
            .status()?;
        results.push((layer.name, status.success(), start.elapsed()));
    }
    println!("\n== summary ==");
    for (name, ok, took) in &results {
        println!(
            "{:<60} {:>4} {:>7.1}s",
            name,
            if *ok { "ok" } else { "FAIL" },
            took.as_secs_f64()
        );
    }
    let failed: Vec<_> = results.iter().filter(|r| !r.1).map(|r| r.0).collect();
    if !failed.is_empty() {
        bail!("failed layers: {}", failed.join(", "));
    }
    Ok(())
}
