//! Errors a user of the controller can meet, each with what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GateError {
    #[error("this command needs root (CAP_BPF and CAP_NET_ADMIN): run it with sudo")]
    NotRoot,

    #[error(
        "{name:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces, not . or ..)"
    )]
    BadInterfaceName { name: String },

    #[error("no interface named {name:?}{where_}: check `ip link`", where_ = netns_suffix(.netns))]
    UnknownInterface { name: String, netns: Option<String> },

    #[error("the gate is already attached to {iface} (pins in {}): detach it first with `handshake-gate detach {iface}`", .dir.display())]
    AlreadyAttached { iface: String, dir: PathBuf },

    #[error("the XDP hook of {iface} is taken by {}; {what_to_do}", hook_holder(.name, *.id))]
    HookTaken {
        iface: String,
        id: u32,
        name: Option<String>,
        what_to_do: String,
    },

    #[error("the gate is not attached to {iface} (no pins in {})", .dir.display())]
    NotAttached { iface: String, dir: PathBuf },

    #[error("no BPF filesystem at {}: mount it with `mount -t bpf bpf {}`", .path.display(), .path.display())]
    BpffsMissing { path: PathBuf },

    #[error("no BPF filesystem at {}: this looks like `ip netns exec {netns}`, which remounts /sys so pins made here would vanish with the command; run `handshake-gate --netns {netns} …` from the host instead", .path.display())]
    BpffsHiddenByNetnsExec { path: PathBuf, netns: String },

    #[error("network namespace {name:?} not found (looked for {}): check `ip netns list`", .path.display())]
    NetnsNotFound { name: String, path: PathBuf },

    #[error("could not enter network namespace {name:?}")]
    NetnsEnter {
        name: String,
        #[source]
        source: nix::Error,
    },

    #[error(
        "the pinned maps do not fit this version of the gate ({map}: {why}); `attach --replace` keeps the maps, so it cannot upgrade across this change: run `handshake-gate detach` then `attach` (connections already open are picked up as ESTABLISHED)"
    )]
    IncompatibleLayout { map: String, why: String },

    #[error("the kernel refused the {program} program:\n{log_tail}")]
    Verifier {
        program: &'static str,
        log_tail: String,
    },

    #[error("could not {step}")]
    Step {
        step: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },

    #[error("could not {action} {name} in this network namespace: {why}")]
    Sysctl {
        name: String,
        action: &'static str,
        why: String,
    },

    #[error(
        "overflow=cookie is not possible here: {why}; nothing was changed (overflow=drop and overflow=pass work without it)"
    )]
    CookieUnavailable { why: String },

    #[error(transparent)]
    Setting(#[from] crate::settings::SettingError),
}

fn hook_holder(name: &Option<String>, id: u32) -> String {
    match name {
        Some(n) => format!("program {n:?} (id {id})"),
        None => format!("program id {id}"),
    }
}

fn netns_suffix(netns: &Option<String>) -> String {
    match netns {
        Some(n) => format!(" in network namespace {n:?}"),
        None => String::new(),
    }
}

impl GateError {
    /// Wraps a lower-level error with the step that failed.
    pub fn step<E>(step: impl Into<String>) -> impl FnOnce(E) -> GateError
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let step = step.into();
        move |e| GateError::Step {
            step,
            source: Box::new(e),
        }
    }
}
