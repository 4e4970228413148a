//! Project tasks. `cargo xtask setup | test | demo | bench | soak | image | deb`.

mod bench;
mod deb;
mod demo;
mod image;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what this machine lacks to build and test the gate (idempotent).
    Setup,
    /// Set up, then run every test layer: host unit tests, the privileged tests
    /// (BPF_PROG_TEST_RUN tables, network-namespace end to end) on this
    /// kernel, then the same privileged tests in a QEMU guest on a second kernel.
    Test(test::Options),
    /// Set up, then measure: per-packet cost, floods at line rate against
    /// the kernel alone and nftables SYNPROXY, clients under flood, memory,
    /// control plane.
    Bench(bench::Options),
    /// Set up, then a long run (10 minutes by default): clients echoing
    /// through the gate, floods on and off, limits changed mid-run; reports
    /// connections and bytes lost, half-open counts and map memory.
    Soak(bench::SoakOptions),
    /// Set up, then run the lab: a real server, real clients and SYN floods
    /// at line rate, without and with the gate, and print a before/after
    /// report with the flood meter's cost per SYN.
    Demo(demo::Options),
    /// Set up, then build the OCI image (a static binary `FROM scratch`,
    /// with podman, no registry): `localhost/handshake-gate:VERSION`.
    Image(image::Options),
    /// Set up, then build and check the Debian package (cargo-deb): the
    /// binary, the systemd unit, the manual page, completions and a
    /// commented default config.
    Deb(deb::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Test(o) => test::run(o),
        Command::Demo(o) => demo::run(o),
        Command::Bench(o) => bench::run(o),
        Command::Soak(o) => bench::soak(o),
        Command::Image(o) => image::run(o),
        Command::Deb(o) => deb::run(o),
    }
}

/// Runs cargo (the one running this task) in `root` with `args`.
pub fn cargo(root: &std::path::Path, args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new(env!("CARGO"))
        .args(args)
        .current_dir(root)
        .status()?;
    if !status.success() {
        anyhow::bail!("cargo {} failed", args.join(" "));
    }
    Ok(())
}

/// The workspace root (the parent of this crate's directory).
pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask sits in the workspace")
        .to_path_buf()
}
