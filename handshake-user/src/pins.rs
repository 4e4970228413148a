//! Where the gate's pins live, and the checks before touching them.
//!
//! Layout: `/sys/fs/bpf/handshake-gate/host/IFACE/` for an interface of the
//! host's own network namespace, `/sys/fs/bpf/handshake-gate/netns/NAME/IFACE/`
//! for one in the named namespace. Each holds the XDP program (`xdp_prog`)
//! and its link (`xdp_link`), the TC egress program (`tc_prog`) and, where
//! the kernel has TCX (6.6+), its link (`tc_link`; older kernels hold a
//! netlink filter instead, which needs no pin), the counting program
//! (`tally_prog`), and one pin per map, by the map's name. Directories are created owner-only (0700); the kernel creates
//! pins 0600.

use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use crate::GateError;

/// Where bpffs is expected.
pub const BPFFS: &str = "/sys/fs/bpf";
/// The gate's own directory on bpffs.
pub const ROOT: &str = "/sys/fs/bpf/handshake-gate";
/// Pin of the XDP program.
pub const XDP_PROG: &str = "xdp_prog";
/// Pin of the XDP link (removing it, with no process holding the link, detaches).
pub const XDP_LINK: &str = "xdp_link";
/// Pin of the TC egress program.
pub const TC_PROG: &str = "tc_prog";
/// Pin of the TC egress TCX link (Linux 6.6+).
pub const TC_LINK: &str = "tc_link";
/// Pin of the program that counts the connection maps in the kernel for
/// `status` and the metrics (run, never attached). A gate attached by a
/// version without it is counted by reading the maps instead.
pub const TALLY_PROG: &str = "tally_prog";

/// `statfs` magic of a BPF filesystem.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// The pin directory of `iface` in `netns` (None: the host's namespace).
/// Both names become path components, so each must be a plain name: an
/// interface name as the kernel accepts one, a namespace name without `/`
/// (so `../..` cannot point a command at another directory).
pub fn dir(iface: &str, netns: Option<&str>) -> Result<PathBuf, GateError> {
    check_iface_name(iface)?;
    match netns {
        None => Ok(Path::new(ROOT).join("host").join(iface)),
        Some(ns) => {
            if !plain_name(ns) {
                return Err(GateError::NetnsNotFound {
                    name: ns.into(),
                    path: PathBuf::from(crate::netns::NETNS_RUN_DIR),
                });
            }
            Ok(Path::new(ROOT).join("netns").join(ns).join(iface))
        }
    }
}

/// A name usable as one path component: not empty, not `.` or `..`, no `/`
/// and no NUL.
fn plain_name(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains(['/', '\0'])
}

/// The kernel's own rule for interface names (`dev_valid_name`): 1 to 15
/// bytes, not `.` or `..`, no `/`, `:` or white space.
pub fn check_iface_name(iface: &str) -> Result<(), GateError> {
    let ok = plain_name(iface)
        && iface.len() < libc::IFNAMSIZ
        && !iface.contains(':')
        && !iface.chars().any(char::is_whitespace);
    if ok {
        Ok(())
    } else {
        Err(GateError::BadInterfaceName {
            name: iface.to_string(),
        })
    }
}

/// Fails unless the process runs as root.
pub fn require_root() -> Result<(), GateError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(GateError::NotRoot)
    }
}

/// Fails unless bpffs is mounted at [`BPFFS`], telling `ip netns exec` (which
/// remounts /sys and so hides it) apart from a host that never mounted it.
pub fn require_bpffs() -> Result<(), GateError> {
    let path = PathBuf::from(BPFFS);
    if let Ok(st) = nix::sys::statfs::statfs(&path)
        && st.filesystem_type().0 as u64 == BPF_FS_MAGIC
    {
        return Ok(());
    }
    if let Some(name) = named_netns_of_self() {
        return Err(GateError::BpffsHiddenByNetnsExec { path, netns: name });
    }
    Err(GateError::BpffsMissing { path })
}

/// The `ip netns` name of the namespace this process runs in, if it has one
/// (as it does under `ip netns exec NAME`).
fn named_netns_of_self() -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let own = std::fs::metadata("/proc/self/ns/net").ok()?;
    std::fs::read_dir(crate::netns::NETNS_RUN_DIR)
        .ok()?
        .filter_map(Result::ok)
        .find_map(|e| {
            let m = std::fs::metadata(e.path()).ok()?;
            (m.ino() == own.ino() && m.dev() == own.dev())
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
}

/// Creates `dir` and its parents, owner-only.
pub fn create_dir(dir: &Path) -> Result<(), GateError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(GateError::step(format!(
            "create the pin directory {}",
            dir.display()
        )))
}

/// Removes a pin directory and every pin in it, then the parents it leaves
/// empty up to [`ROOT`] (which stays).
pub fn remove_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        for entry in std::fs::read_dir(dir)? {
            std::fs::remove_file(entry?.path())?;
        }
        std::fs::remove_dir(dir)?;
    }
    let mut parent = dir.parent();
    while let Some(p) = parent {
        if p == Path::new(ROOT) || !p.starts_with(ROOT) || std::fs::remove_dir(p).is_err() {
            break;
        }
        parent = p.parent();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_cannot_leave_the_pin_directory() {
        for bad in [
            "",
            ".",
            "..",
            "../../etc",
            "a/b",
            "eth0:1",
            "eth 0",
            "sixteen-chars-xx",
            "nul\0",
        ] {
            assert!(
                matches!(dir(bad, None), Err(GateError::BadInterfaceName { .. })),
                "{bad:?} was accepted"
            );
        }
        assert_eq!(
            dir("eth0", None).unwrap(),
            Path::new("/sys/fs/bpf/handshake-gate/host/eth0")
        );
        assert_eq!(
            dir("veth-1.100", Some("lab")).unwrap(),
            Path::new("/sys/fs/bpf/handshake-gate/netns/lab/veth-1.100")
        );
        for bad in ["", "..", "a/../../b"] {
            assert!(
                dir("eth0", Some(bad)).is_err(),
                "netns {bad:?} was accepted"
            );
        }
    }
}
