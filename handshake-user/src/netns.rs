//! `--netns NAME`: act inside a named network namespace (as `ip netns` names
//! them) while the mount namespace, and so the host's bpffs, stays the same.

use std::path::PathBuf;

use nix::sched::{CloneFlags, setns};

use crate::GateError;

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_RUN_DIR: &str = "/var/run/netns";

/// Moves the calling thread into network namespace `name`. Call it before
/// starting any thread that should be in that namespace (the CLI calls it
/// first thing, so all of its work happens there).
pub fn enter(name: &str) -> Result<(), GateError> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(GateError::NetnsNotFound {
            name: name.into(),
            path: PathBuf::from(NETNS_RUN_DIR),
        });
    }
    let path = PathBuf::from(NETNS_RUN_DIR).join(name);
    let file = std::fs::File::open(&path).map_err(|_| GateError::NetnsNotFound {
        name: name.into(),
        path: path.clone(),
    })?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(|source| GateError::NetnsEnter {
        name: name.into(),
        source,
    })
}
