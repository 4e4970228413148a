//! `cargo xtask image`: the OCI image, built with no registry: a static
//! (musl) release build of the controller, staged under `target/image/`
//! and put in an image `FROM scratch` by podman (`deploy/image/Containerfile`),
//! tagged `localhost/handshake-gate:VERSION` and `:latest`.

use std::process::Command;

use anyhow::{Context as _, bail};

/// The musl target the image's binary is built for (added by setup).
pub const TARGET: &str = "x86_64-unknown-linux-musl";
/// The image's name (podman's local store; no registry is involved).
pub const NAME: &str = "localhost/handshake-gate";
/// What the image may weigh at most.
const MAX_BYTES: u64 = 20_000_000;

#[derive(clap::Args)]
pub struct Options {
    /// Skip `cargo xtask setup`.
    #[arg(long)]
    pub no_setup: bool,
}

pub fn run(o: Options) -> anyhow::Result<()> {
    if !o.no_setup {
        crate::setup::run()?;
    }
    build()
}

/// Builds the binary and the image; prints the image's tag and size.
pub fn build() -> anyhow::Result<()> {
    let root = crate::workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    crate::cargo(
        &root,
        &[
            "build",
            "--release",
            "-p",
            "handshake-user",
            "--bin",
            "handshake-gate",
            "--target",
            TARGET,
        ],
    )
    .with_context(|| format!("the static build for {TARGET}"))?;
    let stage = root.join("target/image");
    std::fs::create_dir_all(&stage)?;
    let bin = root.join(format!("target/{TARGET}/release/handshake-gate"));
    std::fs::copy(&bin, stage.join("handshake-gate"))
        .with_context(|| format!("copy {}", bin.display()))?;
    let tag = format!("{NAME}:{version}");
    let status = Command::new("podman")
        .args(["build", "--quiet", "-f"])
        .arg(root.join("deploy/image/Containerfile"))
        .args(["--build-arg", &format!("VERSION={version}")])
        .args(["-t", &tag, "-t", &format!("{NAME}:latest")])
        .arg(&stage)
        .status()
        .context("run podman (installed by `cargo xtask setup`)")?;
    if !status.success() {
        bail!("podman build failed");
    }
    let size = Command::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", &tag])
        .output()?;
    let bytes: u64 = String::from_utf8_lossy(&size.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    println!(
        "image: {tag}, {:.1} MB (at most {:.0} MB)",
        bytes as f64 / 1e6,
        MAX_BYTES as f64 / 1e6
    );
    if bytes == 0 || bytes > MAX_BYTES {
        bail!("the image weighs {bytes} bytes; at most {MAX_BYTES} are allowed");
    }
    Ok(())
}
