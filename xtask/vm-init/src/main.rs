//! The init of the test VM (`cargo xtask test`'s VM layer).
//!
//! The initramfs holds this program, the few modules it needs to reach the
//! host (virtio, 9p) and `/modules.order`, their load order. It mounts the
//! host's root file system read-only over 9p, lays proc, sysfs, devtmpfs,
//! a tmpfs on /run (with `$TMPDIR` in it), bpffs and debugfs over it,
//! changes root into it, and runs the
//! script named on the kernel command line (`hsgate.run=PATH`, in
//! `hsgate.cwd=DIR`) with `/bin/sh`. It prints one line `init: success` or
//! `init: failure` — the runner reads it from the serial console — and
//! powers the machine off. `hsgate.probe` makes it stop after printing the
//! kernel version (the runner's acceleration probe).
//!
//! Built statically, since nothing of the host's is there yet when it starts.

use std::collections::HashMap;
use std::ffi::CString;
use std::path::Path;
use std::process::Command;

use nix::kmod::init_module;
use nix::mount::{MsFlags, mount};
use nix::sys::reboot::{RebootMode, reboot};

type Error = Box<dyn std::error::Error>;

fn main() {
    let ok = match run() {
        Ok(ok) => ok,
        Err(e) => {
            println!("init: error: {e}");
            false
        }
    };
    println!("init: {}", if ok { "success" } else { "failure" });
    nix::unistd::sync();
    let _ = reboot(RebootMode::RB_POWER_OFF);
}

fn run() -> Result<bool, Error> {
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::empty(), None)?;
    mount_fs("proc", "/proc", "proc", MsFlags::empty(), None)?;
    mount_fs("sysfs", "/sys", "sysfs", MsFlags::empty(), None)?;
    let release = nix::sys::utsname::uname()?
        .release()
        .to_string_lossy()
        .into_owned();
    println!("init: guest kernel {release}");
    let args = cmdline()?;
    if args.contains_key("hsgate.probe") {
        return Ok(true);
    }
    let order = std::fs::read_to_string("/modules.order").map_err(at("read /modules.order"))?;
    for line in order.lines() {
        load_module(line)?;
    }
    let root = "/sysroot";
    mount_fs(
        "hostroot",
        root,
        "9p",
        MsFlags::MS_RDONLY,
        Some("trans=virtio,version=9p2000.L,msize=524288,cache=loose"),
    )?;
    for (src, dir, fstype) in [
        ("proc", "proc", "proc"),
        ("sysfs", "sys", "sysfs"),
        ("devtmpfs", "dev", "devtmpfs"),
        // Not over /tmp: the workspace may live there. Scratch files go to
        // $TMPDIR, on this tmpfs.
        ("tmpfs", "run", "tmpfs"),
        ("bpf", "sys/fs/bpf", "bpf"),
        ("debugfs", "sys/kernel/debug", "debugfs"),
    ] {
        mount_fs(
            src,
            &format!("{root}/{dir}"),
            fstype,
            MsFlags::empty(),
            None,
        )?;
    }
    let _ = mount_fs(
        "devpts",
        &format!("{root}/dev/pts"),
        "devpts",
        MsFlags::empty(),
        None,
    );
    std::fs::create_dir(format!("{root}/run/tmp")).map_err(at("create /run/tmp"))?;
    nix::unistd::chroot(root).map_err(at("chroot into the host's root"))?;
    let cwd = args.get("hsgate.cwd").map_or("/", String::as_str);
    nix::unistd::chdir(cwd).map_err(at(&format!("chdir {cwd}")))?;
    if let Some(modprobe) = args.get("hsgate.modprobe") {
        // The kernel's own module requests (a veth, a qdisc) go through the
        // runner's wrapper, which knows where this kernel's modules are.
        std::fs::write("/proc/sys/kernel/modprobe", modprobe)
            .map_err(at("set /proc/sys/kernel/modprobe"))?;
    }
    let script = args
        .get("hsgate.run")
        .ok_or("no hsgate.run= on the kernel command line")?;
    let status = Command::new("/bin/sh")
        .arg(script)
        .env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("HOME", "/root")
        .env("TMPDIR", "/run/tmp")
        .env("TERM", "dumb")
        .env("RUST_BACKTRACE", "1")
        .status()
        .map_err(at(&format!("run /bin/sh {script}")))?;
    Ok(status.success())
}

fn mount_fs(
    src: &str,
    dir: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), Error> {
    mount(Some(src), dir, Some(fstype), flags, data)
        .map_err(|e| format!("mount {fstype} on {dir}: {e}").into())
}

/// `key=value` and bare `key` words of the kernel command line.
fn cmdline() -> Result<HashMap<String, String>, Error> {
    Ok(std::fs::read_to_string("/proc/cmdline")?
        .split_whitespace()
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (w.to_string(), String::new()),
        })
        .collect())
}

/// Labels an error with the step that failed.
fn at<E: std::fmt::Display>(step: &str) -> impl FnOnce(E) -> Error + '_ {
    move |e| format!("{step}: {e}").into()
}

fn load_module(path: &str) -> Result<(), Error> {
    let image = std::fs::read(Path::new(path)).map_err(at(&format!("read {path}")))?;
    match init_module(&image, &CString::default()) {
        // Built in, or loaded already as another module's dependency.
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!("load {path}: {e}").into()),
    }
}
