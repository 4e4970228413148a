//! `cargo xtask test`: every test layer, in order, with its time.
//!
//! 1. host: unit tests of the pure state machine, admission, settings and
//!    the lab (no privileges needed);
//! 2. privileged, on this machine's kernel: the `#[ignore]`d tests of
//!    handshake-user — BPF_PROG_TEST_RUN tables of the real programs and
//!    end-to-end tests in network namespaces — one test thread, since they
//!    share kernel state;
//! 3. the same privileged test binaries inside a QEMU guest on a second
//!    kernel (see `vm.rs`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

use crate::{cargo, vm};

#[derive(clap::Args)]
pub struct Options {
    /// Skip the setup step (when you know the machine is ready).
    #[arg(long)]
    no_setup: bool,
    /// Run the host layers only (no VM).
    #[arg(long, conflicts_with = "vm_only")]
    host_only: bool,
    /// Run the VM layer only.
    #[arg(long)]
    vm_only: bool,
    /// The guest kernel: a `vmlinuz-VERSION` whose modules are in
    /// `../lib/modules/VERSION` (an unpacked linux-image package) or in
    /// `/lib/modules/VERSION`. Default: Debian's, fetched by the setup step.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Run only this privileged test file of handshake-user (`cookie` for
    /// tests/cookie.rs), on the host and in the VM; repeatable. The host
    /// unit tests run in full all the same.
    #[arg(long = "test", value_name = "NAME")]
    tests: Vec<String>,
}

const PRIVILEGED_ARGS: &[&str] = &["--ignored", "--test-threads=1"];

/// Differential-fuzzing sequences in the VM layer.
const VM_FUZZ_SEQUENCES: u32 = 3_000;

pub fn run(o: Options) -> anyhow::Result<()> {
    if !o.no_setup {
        crate::setup::run()?;
    }
    let root = crate::workspace_root();
    let mut results: Vec<(&str, bool, Duration)> = Vec::new();
    let mut layer = |name: &'static str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        println!("\n== {name} ==");
        let start = Instant::now();
        let ok = match f() {
            Ok(()) => true,
            Err(e) => {
                println!("{name}: {e:#}");
                false
            }
        };
        results.push((name, ok, start.elapsed()));
    };
    if !o.vm_only {
        // The default members: everything but the eBPF crate, which only builds for BPF.
        layer("host unit tests", &mut || cargo(&root, &["test"]));
        layer("Kubernetes manifests", &mut || manifests(&root));
        layer("the Debian package", &mut || {
            crate::deb::build().and_then(|deb| crate::deb::check(&deb))
        });
        if o.tests.is_empty() || o.tests.iter().any(|t| t == "image") {
            // What the `image` test runs.
            layer("the OCI image", &mut crate::image::build);
        }
        layer("privileged tests, host kernel", &mut || {
            let mut args = vec!["test", "-p", "handshake-user"];
            if o.tests.is_empty() {
                args.push("--tests");
            }
            for t in &o.tests {
                args.extend(["--test", t]);
            }
            args.push("--");
            args.extend_from_slice(PRIVILEGED_ARGS);
            cargo(&root, &args)
        });
    }
    if !o.host_only {
        layer("privileged tests, VM", &mut || {
            run_vm_layer(&root, o.kernel.as_deref(), &o.tests)
        });
    }
    println!("\n== summary ==");
    for (name, ok, took) in &results {
        println!(
            "{:<40} {:>4} {:>7.1}s",
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

/// The manifests under `deploy/kubernetes/`, against Kubernetes' own
/// schemas (strict: no unknown field), with no cluster.
fn manifests(root: &Path) -> anyhow::Result<()> {
    let dir = root.join("deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    let status = Command::new("kubernetes-validate")
        .args(["--strict", "--quiet"])
        .args(&files)
        .status()?;
    if !status.success() {
        bail!("kubernetes-validate refused a manifest");
    }
    println!("{} manifests valid", files.len());
    Ok(())
}

fn run_vm_layer(root: &Path, kernel: Option<&Path>, only: &[String]) -> anyhow::Result<()> {
    let kernel = match kernel {
        Some(image) => vm::Kernel::from_image(image)?,
        None => vm::fetch_kernel()?,
    };
    let mut binaries = privileged_test_binaries(root)?;
    if !only.is_empty() {
        // Test executables are named NAME-HASH.
        binaries.retain(|b| {
            let name = b.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            only.iter()
                .any(|t| name.rsplit_once('-').is_some_and(|(n, _)| n == t))
        });
        if binaries.is_empty() {
            bail!("no privileged test file named {}", only.join(", "));
        }
    }
    let script = vm::dir().join("run.sh");
    let mut text =
        String::from("#!/bin/sh\n# Written by `cargo xtask test`; run by the VM's init.\n");
    text.push_str("echo \"vm: running on $(uname -r)\"\n");
    // The daemon tests scrape metrics on the guest's own loopback.
    text.push_str("ip link set lo up || echo \"vm: could not bring lo up\"\n");
    // An emulated CPU is some twenty times slower: fewer differential
    // sequences there (the host layer runs the full 100,000).
    text.push_str(&format!(
        "export HANDSHAKE_FUZZ_SEQUENCES={VM_FUZZ_SEQUENCES}\n"
    ));
    // What the guest lacks (a container runtime) its tests skip, saying so.
    text.push_str("export HANDSHAKE_IN_VM=1\n");
    text.push_str(&format!(
        "for m in {}; do {} $m || echo \"vm: could not load $m\"; done\n",
        vm::test_modules(),
        vm::dir().join("modprobe").display()
    ));
    text.push_str("status=0\n");
    for b in &binaries {
        let b = b.display();
        text.push_str(&format!(
            "echo \"vm: == {b}\"\n{b} {} || status=1\n",
            PRIVILEGED_ARGS.join(" ")
        ));
    }
    text.push_str("exit $status\n");
    std::fs::create_dir_all(vm::dir())?;
    std::fs::write(&script, text)?;
    // Cargo runs integration tests in their package's directory.
    vm::run_script(&kernel, &script, &root.join("handshake-user"))
}

/// Builds handshake-user's integration tests; returns their executables.
fn privileged_test_binaries(root: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new(env!("CARGO"))
        .args([
            "test",
            "-p",
            "handshake-user",
            "--tests",
            "--no-run",
            "--message-format=json",
        ])
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()?;
    if !out.status.success() {
        bail!("building the test binaries failed");
    }
    let mut v = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_integration_test = msg["reason"] == "compiler-artifact"
            && msg["profile"]["test"] == true
            && msg["target"]["kind"][0] == "test";
        if let (true, Some(exe)) = (is_integration_test, msg["executable"].as_str()) {
            v.push(PathBuf::from(exe));
        }
    }
    if v.is_empty() {
        return Err(anyhow::anyhow!("no integration test binaries")).context("cargo test --no-run");
    }
    v.sort();
    Ok(v)
}
