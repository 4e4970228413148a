//! The gate as one program of libxdp's multi-program dispatcher
//! (`attach --multiprog`): joining the dispatcher on the hook (or making
//! one), leaving it, and what `status` and the daemon's readiness say of
//! it. The protocol itself is [`crate::dispatcher`].

use std::path::Path;

use aya::Ebpf;
use aya::programs::{Extension, ProgramInfo};
use handshake_common::maps;

use super::AttachMode;
use crate::dispatcher::{self, Hook, Lock, Member};
use crate::{GateError, pins};

/// The gate's run priority in a dispatcher unless `--priority` says
/// otherwise: after xdp-filter (10) and libxdp's default (50), so that the
/// gate sees only what the programs before it let through, which is what
/// reaches this host's TCP stack and what its states must follow (a SYN a
/// blocklist drops after the gate admitted it would hold a half-open slot
/// for a connection the server never saw).
pub const DEFAULT_PRIORITY: u32 = 100;

/// The XDP actions after which the dispatcher goes on to the next program:
/// XDP_PASS only (a drop, and a cookie sent with XDP_TX, end the chain).
pub const CHAIN_CALL_ACTIONS: u32 = 1 << crate::testrun::XDP_PASS;

fn netlink_mode(mode: AttachMode) -> u32 {
    match mode {
        AttachMode::Auto => 0,
        AttachMode::Native => crate::hook::flags::DRV_MODE,
        AttachMode::Skb => crate::hook::flags::SKB_MODE,
    }
}

fn refusal(iface: &str, id: u32, name: Option<String>, why: &str) -> GateError {
    GateError::HookTaken {
        iface: iface.into(),
        id,
        name,
        what_to_do: format!(
            "{why}, so the gate cannot join it: remove that program first (`xdp-loader unload \
             {iface} --all` if libxdp's tools loaded it, `ip link set dev {iface} xdp off` \
             otherwise), or attach without --multiprog to replace nothing and take the hook \
             alone once it is free"
        ),
    }
}

/// Checks, before anything is loaded, that the hook of `ifindex` is empty
/// or holds a dispatcher the gate can join.
pub(super) fn check_hook(iface: &str, ifindex: u32) -> Result<(), GateError> {
    let _lock = Lock::take()?;
    match dispatcher::read(ifindex)? {
        Hook::Empty => Ok(()),
        Hook::Dispatcher(d) if d.slots.len() >= dispatcher::MAX_PROGS => {
            Err(GateError::step(format!("join the dispatcher on {iface}"))(
                std::io::Error::other(format!(
                    "it holds {} programs, all it has room for",
                    d.slots.len()
                )),
            ))
        }
        Hook::Dispatcher(_) => Ok(()),
        Hook::Other { id, name, why } => Err(refusal(iface, id, name, &why)),
    }
}

/// Puts the gate's XDP program (`ebpf`'s, marked an extension and not yet
/// loaded) into the dispatcher on `ifindex` at `priority`, making one on
/// an empty hook, and pins it in `dir` as the gate's XDP program. On
/// failure the hook is as it was.
pub(super) fn join(
    ebpf: &mut Ebpf,
    dir: &Path,
    iface: &str,
    ifindex: u32,
    mode: AttachMode,
    priority: u32,
) -> Result<(), GateError> {
    let lock = Lock::take()?;
    let old = match dispatcher::read(ifindex)? {
        Hook::Empty => None,
        Hook::Dispatcher(d) => Some(d),
        Hook::Other { id, name, why } => return Err(refusal(iface, id, name, &why)),
    };
    let ext = gate_extension(ebpf);
    let mut members = old
        .as_ref()
        .map(|d| dispatcher::kept(d, None))
        .unwrap_or_default();
    members.push(gate_member(ext, priority));
    dispatcher::install(&lock, ifindex, netlink_mode(mode), members, old.as_ref())?;
    if let Err(e) = ext.pin(dir.join(pins::XDP_PROG)) {
        let id = ext.info().map(|i| i.id()).ok();
        drop(lock);
        let _ = leave_by_id(ifindex, id);
        return Err(GateError::step("pin the XDP program")(e));
    }
    Ok(())
}

/// `attach --replace` in a dispatcher: the gate's new XDP program (`ebpf`'s,
/// an extension not yet loaded) in place of the one pinned in `dir`, in a
/// new dispatcher with every neighbour kept, swapped onto the hook at once;
/// then pinned in `dir` in the old one's place.
pub(super) fn swap(
    ebpf: &mut Ebpf,
    dir: &Path,
    iface: &str,
    priority: u32,
) -> Result<(), GateError> {
    let ifindex = ifindex(iface)?;
    let pin = dir.join(pins::XDP_PROG);
    let old_id = ProgramInfo::from_pin(&pin)
        .map_err(GateError::step("read the pinned XDP program"))?
        .id();
    let lock = Lock::take()?;
    let d = match dispatcher::read(ifindex)? {
        Hook::Dispatcher(d) if dispatcher::find(&d, old_id).is_some() => d,
        _ => {
            return Err(GateError::step(
                "find the gate in the interface's dispatcher",
            )(std::io::Error::other(
                "the dispatcher on the hook does not hold it: detach, then attach --multiprog",
            )));
        }
    };
    let ext = gate_extension(ebpf);
    let mut members = dispatcher::kept(&d, Some(old_id));
    members.push(gate_member(ext, priority));
    dispatcher::install(&lock, ifindex, d.mode, members, Some(&d))?;
    // Pinned beside the old one (bpffs takes no dot in a name), then
    // renamed over it: the pin is never
    // missing (without it the gate could not find its slot to leave).
    let new = dir.join(format!("{}_new", pins::XDP_PROG));
    ext.pin(&new)
        .map_err(GateError::step("pin the new XDP program"))?;
    std::fs::rename(&new, &pin).map_err(GateError::step("pin the new XDP program"))
}

/// The gate's XDP program in `ebpf`, loaded as an extension.
fn gate_extension(ebpf: &mut Ebpf) -> &mut Extension {
    ebpf.program_mut(maps::XDP_PROGRAM)
        .expect("the object defines the XDP program")
        .try_into()
        .expect("loaded as an extension")
}

/// The gate's program as a new member of a dispatcher, at `priority`.
fn gate_member(ext: &mut Extension, priority: u32) -> Member<'_> {
    Member::New {
        ext,
        name: maps::XDP_PROGRAM.to_string(),
        priority,
        chain_call_actions: CHAIN_CALL_ACTIONS,
    }
}

fn ifindex(iface: &str) -> Result<u32, GateError> {
    nix::net::if_::if_nametoindex(iface).map_err(|e| {
        GateError::step(format!("find {iface}"))(std::io::Error::from_raw_os_error(e as i32))
    })
}

/// Takes the gate's program (pinned in `dir`) out of the dispatcher on
/// `iface`, and the dispatcher off the hook if it was the last program;
/// what it found, for the operator.
pub(super) fn leave(dir: &Path, iface: &str) -> Result<Vec<String>, GateError> {
    let Ok(ifindex) = ifindex(iface) else {
        // Its dispatcher went with it.
        return Ok(vec![format!("{iface} is gone, and its dispatcher with it")]);
    };
    // Without its pin (a replace cut short), the gate's slot is found by
    // its program's name: one gate per interface.
    let id = ProgramInfo::from_pin(dir.join(pins::XDP_PROG))
        .map(|p| p.id())
        .ok();
    leave_by_id(ifindex, id)
}

fn leave_by_id(ifindex: u32, id: Option<u32>) -> Result<Vec<String>, GateError> {
    let lock = Lock::take()?;
    let found = match dispatcher::read(ifindex)? {
        Hook::Dispatcher(d) => {
            let slot = d
                .slots
                .iter()
                .find(|s| id.map_or(s.name == maps::XDP_PROGRAM, |id| s.id == id))
                .map(|s| s.id);
            slot.map(|id| (d, id))
        }
        _ => None,
    };
    let Some((d, id)) = found else {
        return Ok(vec![
            "the gate's XDP program was no longer in the interface's dispatcher".into(),
        ]);
    };
    let rest = dispatcher::kept(&d, Some(id));
    let note = if rest.is_empty() {
        "it was the dispatcher's last program: the dispatcher went too".to_string()
    } else {
        format!(
            "the dispatcher stays, with {}",
            d.slots
                .iter()
                .filter(|s| s.id != id)
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    dispatcher::install(&lock, ifindex, d.mode, rest, Some(&d))?;
    Ok(vec![note])
}

/// Where the gate's XDP program (kernel id `id`) is on the hook of
/// `ifindex`: the dispatcher holding it, or why it is not there.
pub fn placement(ifindex: u32, id: u32) -> Result<dispatcher::Dispatcher, String> {
    let _lock = Lock::take().map_err(|e| e.to_string())?;
    match dispatcher::read(ifindex).map_err(|e| e.to_string())? {
        Hook::Dispatcher(d) if dispatcher::find(&d, id).is_some() => Ok(d),
        Hook::Dispatcher(d) => Err(format!(
            "the dispatcher on the hook (id {}) does not hold the gate's XDP program",
            d.id
        )),
        Hook::Empty => Err("the XDP hook is empty".into()),
        Hook::Other { id, name, .. } => Err(format!(
            "the XDP hook holds {} (id {id}), not the dispatcher",
            name.as_deref().unwrap_or("a program")
        )),
    }
}
