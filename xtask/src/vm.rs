//! The VM layer of `cargo xtask test`: the privileged tests again, inside a
//! QEMU guest booted on a second kernel (Debian's 6.1 by default).
//!
//! Why this way: the guest mounts the host's root file system read-only
//! over 9p (virtio-9p) and runs the very test binaries and tools the host
//! runs (ip, tc, nft, ss, nstat, hping3…), so nothing has to be copied or
//! kept in step. The initramfs is tiny: our own static init (`vm-init`), and
//! the virtio and 9p modules it needs to reach the host. Everything else the
//! guest kernel needs it loads on demand through a `modprobe` wrapper that
//! points at the unpacked package's modules.
//!
//! - Kernel: the package `linux-image-amd64` depends on, downloaded with
//!   `apt-get download` and unpacked under `target/vm/kernel/` by the setup
//!   step (never installed into the host's /boot), `depmod`ed there.
//! - Acceleration: KVM is tried first with a short boot probe; if the guest
//!   does not answer in time (KVM guests hang at boot on some hosts), TCG.
//! - The runner watches the serial console: `init: success|failure` ends
//!   the run; a kernel panic, a soft lockup or the time limit kill QEMU, and
//!   the console's tail is shown.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

/// Where the kernel packages, the init's build and the initramfs go.
pub fn dir() -> PathBuf {
    crate::workspace_root().join("target/vm")
}

/// The metapackage whose dependency names the kernel to test on.
const KERNEL_META: &str = "linux-image-amd64";
/// How long the KVM probe may take to reach the init.
const KVM_PROBE: Duration = Duration::from_secs(20);
/// How long the whole guest run may take: the emulated CPU makes it about
/// 11 minutes on a machine of two cores (most of it the verifier, loading
/// the programs for each test harness), so this leaves room for a slow day.
const RUN_LIMIT: Duration = Duration::from_secs(30 * 60);
/// Modules the init loads from the initramfs to reach the host's root.
const BOOT_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p"];
/// Modules loaded before the tests (the rest load on demand).
const TEST_MODULES: &[&str] = &[
    "veth",
    "sch_ingress",
    "cls_bpf",
    "nf_tables",
    "inet_diag",
    "tcp_diag",
];

/// An unpacked kernel: its image, its version and the root its
/// `lib/modules/VERSION` is under.
pub struct Kernel {
    pub image: PathBuf,
    pub version: String,
    pub modules_root: PathBuf,
}

/// Fetches and unpacks the default test kernel if it is not there yet.
pub fn fetch_kernel() -> anyhow::Result<Kernel> {
    let deps = output(Command::new("apt-cache").args(["depends", KERNEL_META]))?;
    let package = deps
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("apt-cache depends {KERNEL_META}: no linux-image dependency"))?
        .to_string();
    let root = dir().join("kernel").join(&package);
    let ready = root.join(".ready");
    if !ready.exists() {
        println!("setup: test kernel {package}: downloading and unpacking");
        let _ = std::fs::remove_dir_all(&root);
        let download = dir().join("download");
        std::fs::create_dir_all(&download)?;
        let fetch = || {
            run(Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&download))
        };
        if fetch().is_err() {
            // Package lists older than the mirror: refresh them once.
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            fetch()?;
        }
        let deb = std::fs::read_dir(&download)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{package}_")))
            })
            .context("apt-get download left no .deb")?;
        std::fs::create_dir_all(&root)?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let image = image_in(&root)?;
        let version = version_of(&image)?;
        run(Command::new("depmod").arg("-b").arg(&root).arg(&version))?;
        std::fs::remove_file(&deb)?;
        std::fs::write(&ready, "")?;
    } else {
        println!("setup: test kernel {package}: present");
    }
    Kernel::from_image(&image_in(&root)?)
}

/// The image of the kernel unpacked under `root` (boot/vmlinuz-VERSION).
fn image_in(root: &Path) -> anyhow::Result<PathBuf> {
    std::fs::read_dir(root.join("boot"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no boot/vmlinuz-* under {}", root.display()))
}

/// VERSION of a file named vmlinuz-VERSION.
fn version_of(image: &Path) -> anyhow::Result<String> {
    image
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .map(str::to_string)
        .with_context(|| format!("{}: expected a file named vmlinuz-VERSION", image.display()))
}

impl Kernel {
    /// A kernel image named `vmlinuz-VERSION`, with its modules under
    /// `../lib/modules/VERSION` (an unpacked package) or `/lib/modules/VERSION`.
    pub fn from_image(image: &Path) -> anyhow::Result<Kernel> {
        let version = version_of(image)?;
        let beside = image
            .parent()
            .and_then(Path::parent)
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let modules_root = [beside, PathBuf::from("/")]
            .into_iter()
            .find(|r| {
                r.join("lib/modules")
                    .join(&version)
                    .join("modules.dep")
                    .exists()
            })
            .with_context(|| {
                format!(
                    "no modules.dep for {version} beside {} or in /lib/modules",
                    image.display()
                )
            })?;
        Ok(Kernel {
            image: image.canonicalize()?,
            version,
            modules_root: modules_root.canonicalize()?,
        })
    }

    fn modules(&self) -> PathBuf {
        self.modules_root.join("lib/modules").join(&self.version)
    }

    /// `modules` and what they depend on, dependencies first, as paths.
    fn closure(&self, modules: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
        let dep = std::fs::read_to_string(self.modules().join("modules.dep"))?;
        let deps: std::collections::HashMap<&str, Vec<&str>> = dep
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| (m, d.split_whitespace().collect()))
            .collect();
        let by_name = |name: &str| {
            deps.keys().copied().find(|k| {
                Path::new(k)
                    .file_name()
                    .is_some_and(|f| f.to_string_lossy().split('.').next() == Some(name))
            })
        };
        fn visit<'a>(
            m: &'a str,
            deps: &std::collections::HashMap<&'a str, Vec<&'a str>>,
            out: &mut Vec<&'a str>,
        ) {
            if out.contains(&m) {
                return;
            }
            for d in deps.get(m).into_iter().flatten() {
                visit(d, deps, out);
            }
            out.push(m);
        }
        let mut order = Vec::new();
        for name in modules {
            // A module built into the kernel has no file: nothing to load.
            if let Some(m) = by_name(name) {
                visit(m, &deps, &mut order);
            }
        }
        Ok(order.into_iter().map(|m| self.modules().join(m)).collect())
    }
}

/// Builds the guest's init as a static binary.
fn build_init() -> anyhow::Result<PathBuf> {
    let target_dir = dir().join("init-build");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "-q",
            "--release",
            "-p",
            "vm-init",
            "--target",
            "x86_64-unknown-linux-gnu",
        ])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(crate::workspace_root())
        .status()?;
    if !status.success() {
        bail!("building the VM's init failed");
    }
    Ok(target_dir.join("x86_64-unknown-linux-gnu/release/vm-init"))
}

/// Writes the initramfs: the init, the boot modules and their order.
fn build_initramfs(kernel: &Kernel) -> anyhow::Result<PathBuf> {
    let init = build_init()?;
    let modules = kernel.closure(BOOT_MODULES)?;
    let path = dir().join("initramfs.cpio");
    let mut entries: Vec<(String, Vec<u8>, u32)> = vec![
        ("dev".into(), Vec::new(), 0o040755),
        ("proc".into(), Vec::new(), 0o040755),
        ("sys".into(), Vec::new(), 0o040755),
        ("sysroot".into(), Vec::new(), 0o040755),
        ("modules".into(), Vec::new(), 0o040755),
        ("init".into(), std::fs::read(&init)?, 0o100755),
    ];
    let mut order = String::new();
    for m in &modules {
        let name = m.file_name().unwrap().to_string_lossy().into_owned();
        order.push_str(&format!("/modules/{name}\n"));
        entries.push((format!("modules/{name}"), std::fs::read(m)?, 0o100644));
    }
    entries.push(("modules.order".into(), order.into_bytes(), 0o100644));
    let file = std::fs::File::create(&path)?;
    let inputs = entries
        .into_iter()
        .enumerate()
        .map(|(i, (name, data, mode))| {
            let builder = cpio::newc::Builder::new(&name)
                .ino(i as u32 + 1)
                .mode(mode)
                .nlink(1);
            (builder, std::io::Cursor::new(data))
        });
    cpio::write_cpio(inputs, file)?;
    Ok(path)
}

/// Which accelerator QEMU runs the guest with.
#[derive(Clone, Copy, Debug)]
enum Accel {
    Kvm,
    Tcg,
}

/// Runs `script` (a shell script on the host's file system) in a guest on
/// `kernel`, with `cwd` as its working directory. Ok when the guest's init
/// reports success.
pub fn run_script(kernel: &Kernel, script: &Path, cwd: &Path) -> anyhow::Result<()> {
    let initramfs = build_initramfs(kernel)?;
    let modprobe = dir().join("modprobe");
    std::fs::write(
        &modprobe,
        format!(
            "#!/bin/sh\n# The guest kernel's modules are not in /lib/modules.\nexec /sbin/modprobe -d {} \"$@\"\n",
            kernel.modules_root.display()
        ),
    )?;
    set_executable(&modprobe)?;
    let accel = probe_kvm(kernel, &initramfs);
    println!("vm: booting {} with {accel:?}", kernel.image.display());
    let append = format!(
        "hsgate.run={} hsgate.cwd={} hsgate.modprobe={}",
        script.display(),
        cwd.display(),
        modprobe.display()
    );
    let outcome = boot(kernel, &initramfs, accel, &append, RUN_LIMIT, true)?;
    match outcome {
        Outcome::Success => Ok(()),
        Outcome::Failure(log) => bail!(
            "the tests failed inside the VM on {}:\n{}",
            kernel.version,
            failures(&log)
        ),
        Outcome::Crashed(why, log) => {
            bail!("the VM {why}; console tail:\n{}", tail(&log, TAIL_LINES))
        }
    }
}

/// What failed, from the console: each failing test, its panic message,
/// then the console's last lines.
fn failures(log: &[String]) -> String {
    let mut out = Vec::new();
    for (i, line) in log.iter().enumerate() {
        if line.starts_with("test ") && line.ends_with("FAILED") {
            out.push(line.clone());
        }
        if line.contains("panicked at") {
            out.extend(log[i..].iter().take(4).map(|l| format!("    {l}")));
        }
    }
    out.push("console tail:".into());
    out.push(tail(log, 15));
    out.join("\n")
}

fn tail(log: &[String], n: usize) -> String {
    log[log.len().saturating_sub(n)..].join("\n")
}

/// The test modules to load before the tests, as shell words.
pub fn test_modules() -> String {
    TEST_MODULES.join(" ")
}

fn probe_kvm(kernel: &Kernel, initramfs: &Path) -> Accel {
    if !Path::new("/dev/kvm").exists() {
        return Accel::Tcg;
    }
    match boot(
        kernel,
        initramfs,
        Accel::Kvm,
        "hsgate.probe",
        KVM_PROBE,
        false,
    ) {
        Ok(Outcome::Success) => Accel::Kvm,
        _ => {
            println!("vm: KVM did not boot the guest within {KVM_PROBE:?}; using TCG");
            Accel::Tcg
        }
    }
}

enum Outcome {
    Success,
    /// The init reported failure; the whole console log.
    Failure(Vec<String>),
    /// Killed: why, and the whole console log.
    Crashed(String, Vec<String>),
}

const TAIL_LINES: usize = 60;

fn boot(
    kernel: &Kernel,
    initramfs: &Path,
    accel: Accel,
    extra: &str,
    limit: Duration,
    echo: bool,
) -> anyhow::Result<Outcome> {
    let (accel_arg, cpu) = match accel {
        Accel::Kvm => ("kvm", "host"),
        Accel::Tcg => ("tcg,thread=multi", "max"),
    };
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-accel", accel_arg, "-cpu", cpu, "-m", "2G", "-smp", "2"])
        .args([
            "-nographic",
            "-no-reboot",
            "-nodefaults",
            "-serial",
            "stdio",
        ])
        .arg("-kernel")
        .arg(&kernel.image)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-fsdev",
            "local,id=root,path=/,security_model=none,readonly=on,multidevs=remap",
        ])
        .args(["-device", "virtio-9p-pci,fsdev=root,mount_tag=hostroot"])
        .arg("-append")
        .arg(format!(
            "console=ttyS0 panic=-1 oops=panic softlockup_panic=1 rdinit=/init quiet {extra}"
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let (tx, rx) = mpsc::channel::<String>();
    for pipe in [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let start = Instant::now();
    let mut log: Vec<String> = Vec::new();
    let outcome = loop {
        let left = limit.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.replace('\r', "");
                if echo {
                    println!("  | {line}");
                }
                log.push(line);
                let line = log.last().expect("just pushed");
                if line.contains("init: success") {
                    break Outcome::Success;
                }
                if line.contains("init: failure") {
                    break Outcome::Failure(log);
                }
                if line.contains("Kernel panic") {
                    break Outcome::Crashed("panicked".into(), log);
                }
                if line.contains("soft lockup") {
                    break Outcome::Crashed("locked up".into(), log);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                break Outcome::Crashed(format!("did not finish within {limit:?}"), log);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break Outcome::Crashed("exited without a verdict".into(), log);
            }
        }
    };
    // The init powers off after its verdict; give it a moment, then make sure.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if child.try_wait()?.is_some() {
            return Ok(outcome);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(outcome)
}

fn set_executable(p: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    output(cmd).map(drop)
}
