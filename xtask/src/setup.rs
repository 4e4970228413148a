//! `cargo xtask setup`: installs what a fresh machine lacks, skipping what is
//! already there, so a second run takes seconds.
//!
//! - Debian packages: LLVM 22 (bpf-linker links against it), hping3 (an
//!   independent SYN flooder), iproute2 and ethtool (the lab), nftables (the
//!   state tests hold back chosen segments to freeze a connection in a state),
//!   kmod and qemu-system-x86 (the VM layer), linux-perf (the bench's profile),
//!   xdp-tools (libxdp's xdp-filter and xdp-loader, which the tests put on
//!   the hook beside the gate), podman with runc (the OCI image and its test),
//!   GNU time (the bench's peak memory of a command), tcpdump (reads what
//!   `events --pcap` writes), Prometheus and its node exporter (evaluate the
//!   dashboard's queries against the daemon).
//! - The musl target for stable (the image's static binary).
//! - cargo-deb (the Debian package, `cargo xtask deb`).
//! - kubernetes-validate (PyPI), which checks the manifests under
//!   `deploy/kubernetes/` against Kubernetes' own schemas, offline.
//! - The nightly toolchain's `rust-src` (the BPF target builds `core` from source).
//! - bpf-linker 0.13.0, built against Debian's LLVM 22.
//! - bpffs mounted at /sys/fs/bpf (where the gate pins itself).
//! - The VM layer's kernel: Debian's, unpacked under target/vm/kernel/.

use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};

const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "hping3",
    "iproute2",
    "ethtool",
    "nftables",
    "kmod",
    "qemu-system-x86",
    "linux-perf",
    "xdp-tools",
    "podman",
    "runc",
    "netavark",
    "aardvark-dns",
    "time",
    "tcpdump",
    "prometheus",
    "prometheus-node-exporter",
];
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

fn step(name: &str) {
    println!("setup: {name}");
}

fn ok(cmd: &mut Command) -> bool {
    cmd.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn output(cmd: &mut Command) -> String {
    cmd.output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("could not start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

pub fn run() -> anyhow::Result<()> {
    let start = Instant::now();
    if !nix_is_root() {
        bail!("setup installs system packages and mounts bpffs: run it as root");
    }

    let missing: Vec<&str> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            !output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .contains("install ok installed")
        })
        .collect();
    if missing.is_empty() {
        step("Debian packages: all present");
    } else {
        step(&format!(
            "Debian packages: installing {}",
            missing.join(" ")
        ));
        run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
        run_cmd(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }

    if output(Command::new("rustup").args(["toolchain", "list"]))
        .lines()
        .any(|l| l.starts_with("nightly"))
    {
        step("nightly toolchain: present");
    } else {
        step("nightly toolchain: installing");
        run_cmd(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    if output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .lines()
    .any(|l| l.starts_with("rust-src"))
    {
        step("rust-src for nightly: present");
    } else {
        step("rust-src for nightly: installing");
        run_cmd(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    if output(Command::new("rustup").args(["target", "list", "--installed"]))
        .lines()
        .any(|l| l == crate::image::TARGET)
    {
        step(&format!("{}: present", crate::image::TARGET));
    } else {
        step(&format!("{}: installing", crate::image::TARGET));
        run_cmd(Command::new("rustup").args(["target", "add", crate::image::TARGET]))?;
    }

    if ok(Command::new("kubernetes-validate").arg("--version")) {
        step("kubernetes-validate: present");
    } else {
        step("kubernetes-validate (PyPI): installing");
        run_cmd(Command::new("python3").args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "kubernetes-validate",
        ]))?;
    }

    let deb = output(Command::new("cargo").args(["deb", "--version"]));
    if deb.contains(crate::deb::CARGO_DEB_VERSION) {
        step(&format!(
            "cargo-deb {}: present",
            crate::deb::CARGO_DEB_VERSION
        ));
    } else {
        step(&format!(
            "cargo-deb {}: building (about two minutes)",
            crate::deb::CARGO_DEB_VERSION
        ));
        run_cmd(Command::new("cargo").args([
            "install",
            "cargo-deb",
            "--locked",
            "--version",
            crate::deb::CARGO_DEB_VERSION,
        ]))?;
    }

    let linker = output(Command::new("bpf-linker").arg("--version"));
    if linker.trim() == format!("bpf-linker {BPF_LINKER_VERSION}") {
        step(&format!("bpf-linker {BPF_LINKER_VERSION}: present"));
    } else {
        step(&format!(
            "bpf-linker {BPF_LINKER_VERSION}: building against LLVM 22 (about two minutes)"
        ));
        run_cmd(
            Command::new("cargo")
                .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
                .args(["--no-default-features", "--features", "llvm-22", "--force"])
                // Debian keeps LLVM 22 outside the default search path.
                .env("LLVM_PREFIX", LLVM_PREFIX),
        )?;
    }

    if ok(Command::new("sh").args(["-c", "stat -f -c %T /sys/fs/bpf | grep -q bpf_fs"])) {
        step("bpffs at /sys/fs/bpf: mounted");
    } else {
        step("bpffs at /sys/fs/bpf: mounting");
        run_cmd(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    crate::vm::fetch_kernel()?;
    println!("setup: done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn nix_is_root() -> bool {
    output(Command::new("id").arg("-u")).trim() == "0"
}
