//! `cargo xtask deb`: the Debian package, built with cargo-deb (installed
//! by setup) from a release build and what the binary itself generates:
//! the manual page, the shell completions and a commented default config.
//! Its systemd unit is `packaging/handshake-gate@.service` with the
//! package's paths.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::cargo;

/// The cargo-deb release setup installs.
pub const CARGO_DEB_VERSION: &str = "3.8.0";

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
    let deb = build()?;
    check(&deb)?;
    println!("package: {}", deb.display());
    Ok(())
}

/// Builds the package; its path.
pub fn build() -> anyhow::Result<PathBuf> {
    let root = crate::workspace_root();
    cargo(
        &root,
        &[
            "build",
            "--release",
            "-p",
            "handshake-user",
            "--bin",
            "handshake-gate",
        ],
    )?;
    let stage = root.join("target/deb");
    let _ = std::fs::remove_dir_all(&stage);
    std::fs::create_dir_all(stage.join("completions"))?;
    let gate = root.join("target/release/handshake-gate");
    let generated = |args: &[&str], to: &Path| -> anyhow::Result<()> {
        let out = Command::new(&gate).args(args).output()?;
        if !out.status.success() {
            bail!("handshake-gate {} failed", args.join(" "));
        }
        std::fs::write(to, out.stdout).with_context(|| format!("write {}", to.display()))
    };
    generated(&["manpage"], &stage.join("handshake-gate.8"))?;
    generated(&["config-template"], &stage.join("handshake-gate.toml"))?;
    for shell in ["bash", "zsh", "fish"] {
        generated(
            &["completions", shell],
            &stage.join("completions").join(shell),
        )?;
    }
    // The unit as a source install has it, with the package's paths.
    let unit = std::fs::read_to_string(root.join("packaging/handshake-gate@.service"))?
        .replace("/usr/local/sbin/handshake-gate", "/usr/sbin/handshake-gate")
        .replace(
            "/etc/handshake-gate.toml",
            "/etc/handshake-gate/handshake-gate.toml",
        );
    std::fs::write(stage.join("handshake-gate@.service"), unit)?;
    let out = Command::new(env!("CARGO"))
        .args(["deb", "--no-build", "-p", "handshake-user", "--output"])
        .arg(&stage)
        .current_dir(&root)
        .output()
        .context("run cargo deb (installed by `cargo xtask setup`)")?;
    if !out.status.success() {
        bail!("cargo deb failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    Ok(PathBuf::from(path))
}

/// What the package must hold, read back with dpkg-deb, and its binary run
/// from an unpacked copy.
pub fn check(deb: &Path) -> anyhow::Result<()> {
    let field = |name: &str| -> anyhow::Result<String> {
        let out = Command::new("dpkg-deb")
            .arg("-f")
            .arg(deb)
            .arg(name)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    if field("Package")? != "handshake-gate" {
        bail!("the package is not named handshake-gate");
    }
    // cargo-deb adds the Debian revision: 0.1.0-1.
    if !field("Version")?.starts_with(&format!("{}-", env!("CARGO_PKG_VERSION"))) {
        bail!("the package's version is not {}", env!("CARGO_PKG_VERSION"));
    }
    let list = Command::new("dpkg-deb").arg("-c").arg(deb).output()?;
    let list = String::from_utf8_lossy(&list.stdout);
    for want in [
        "./usr/sbin/handshake-gate",
        "./lib/systemd/system/handshake-gate@.service",
        "./usr/share/man/man8/handshake-gate.8",
        "./usr/share/bash-completion/completions/handshake-gate",
        "./usr/share/zsh/vendor-completions/_handshake-gate",
        "./usr/share/fish/vendor_completions.d/handshake-gate.fish",
        "./etc/handshake-gate/handshake-gate.toml",
    ] {
        // (The manual page is compressed: `.8.gz`.)
        if !list.lines().any(|l| l.contains(want)) {
            bail!("the package lacks {want}:\n{list}");
        }
    }
    let unpacked = std::env::temp_dir().join(format!("hg-deb-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&unpacked);
    let status = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&unpacked)
        .status()?;
    if !status.success() {
        bail!("dpkg-deb -x failed");
    }
    let version = Command::new(unpacked.join("usr/sbin/handshake-gate"))
        .arg("--version")
        .output()?;
    let unit =
        std::fs::read_to_string(unpacked.join("lib/systemd/system/handshake-gate@.service"))?;
    let _ = std::fs::remove_dir_all(&unpacked);
    if !String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")) {
        bail!("the packaged binary does not say its version");
    }
    if !unit.contains("ExecStart=/usr/sbin/handshake-gate run %i --config /etc/handshake-gate/handshake-gate.toml") {
        bail!("the packaged unit does not start the packaged binary with the packaged config");
    }
    println!("package checked: {}", deb.display());
    Ok(())
}
