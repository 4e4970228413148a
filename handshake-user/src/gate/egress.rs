//! The egress program's hook: a TCX link where the kernel has TCX (6.6+),
//! else a netlink filter on a `clsact` qdisc.

use std::path::Path;

use aya::programs::{
    LinkOrder, SchedClassifier, TcAttachType,
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
};
use handshake_common::{maps, meta};

use super::Gate;
use super::lifecycle::Rollback;
use crate::{GateError, pins};

/// How the egress program is attached on this kernel: a TCX link (Linux
/// 6.6+), pinned like the XDP link, or else a netlink filter on a `clsact`
/// qdisc, which stays attached with no process holding it and is removed by
/// the program's name. `HANDSHAKE_GATE_TC_ATTACH=netlink` forces the
/// netlink way, so the tests cover it on a TCX kernel too.
fn tcx_available() -> bool {
    use aya::util::KernelVersion;
    if std::env::var("HANDSHAKE_GATE_TC_ATTACH").is_ok_and(|v| v == "netlink") {
        return false;
    }
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(6, 6, 0))
}

/// How the egress program hangs on the interface.
pub(super) enum EgressLink {
    /// A TCX link, to pin.
    Tcx(FdLink),
    /// A netlink filter on the `clsact` qdisc, found again by these.
    Filter { priority: u16, handle: TcHandle },
}

/// Attaches the egress program: a TCX link to pin where the kernel has TCX,
/// else a netlink filter (recorded in `rollback`), which needs no pin.
pub(super) fn attach_tc(
    tc: &mut SchedClassifier,
    iface: &str,
    rollback: &mut Rollback<'_>,
) -> Result<EgressLink, GateError> {
    if tcx_available() {
        let id = tc
            .attach_with_options(
                iface,
                TcAttachType::Egress,
                TcAttachOptions::TcxOrder(LinkOrder::default()),
            )
            .map_err(GateError::step(format!(
                "attach the TC egress program to {iface} (TCX)"
            )))?;
        let link = tc
            .take_link(id)
            .map_err(GateError::step("take the TC egress link"))?;
        let link: FdLink = link
            .try_into()
            .map_err(GateError::step("hold the TC egress link"))?;
        return Ok(EgressLink::Tcx(link));
    }
    match tc::qdisc_add_clsact(iface) {
        Ok(()) => {}
        // Already there (another tool's filters may hang off it): share it.
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => {
            return Err(GateError::step(format!(
                "add the clsact qdisc to {iface} for the TC egress program"
            ))(e));
        }
    }
    let id = tc
        .attach_with_options(
            iface,
            TcAttachType::Egress,
            TcAttachOptions::Netlink(NlOptions::default()),
        )
        .map_err(GateError::step(format!(
            "attach the TC egress program to {iface} (netlink)"
        )))?;
    rollback.tc_filter = true;
    let link = tc
        .take_link(id)
        .map_err(GateError::step("take the TC egress filter"))?;
    let where_ = (link.priority(), link.handle());
    // Dropping the link would remove the filter; it must outlive this process.
    std::mem::forget(link);
    match where_ {
        (Ok(priority), Ok(handle)) => Ok(EgressLink::Filter { priority, handle }),
        (Err(e), _) | (_, Err(e)) => Err(GateError::step("read the TC egress filter's handle")(e)),
    }
}

/// Removes the netlink egress filter by the program's name; nothing to do
/// when there is none (or the interface is gone).
pub(super) fn detach_tc_filter(iface: &str) -> Result<(), TcError> {
    match tc::qdisc_detach_program(iface, TcAttachType::Egress, maps::TC_PROGRAM) {
        Err(TcError::IoError(e))
            if matches!(e.kind(), std::io::ErrorKind::NotFound)
                || e.raw_os_error() == Some(libc::ENODEV) =>
        {
            Ok(())
        }
        other => other,
    }
}

/// Puts `tc` in the egress program's place: in the pinned TCX link, or in
/// the netlink filter `META` records, replaced in place.
pub(super) fn swap_egress(
    tc: &mut SchedClassifier,
    dir: &Path,
    iface: &str,
) -> Result<(), GateError> {
    let pin = dir.join(pins::TC_LINK);
    let link = if pin.exists() {
        let fd: FdLink = PinnedLink::from_pin(&pin)
            .map_err(GateError::step("open the pinned TC egress link"))?
            .into();
        SchedClassifierLink::try_from(fd).map_err(GateError::step("use the TC egress link"))?
    } else {
        let gate = Gate::open_dir(dir.to_path_buf())?;
        let priority = gate.meta(meta::TC_PRIORITY)?;
        let handle = gate.meta(meta::TC_HANDLE)?;
        SchedClassifierLink::attached(
            iface,
            TcAttachType::Egress,
            priority as u16,
            TcHandle::from(handle as u32),
            None,
        )
        .map_err(GateError::step(format!(
            "find the TC egress filter on {iface}"
        )))?
    };
    let id = tc
        .attach_to_link(link)
        .map_err(GateError::step("swap the TC egress program"))?;
    let link = tc
        .take_link(id)
        .map_err(GateError::step("take the TC egress link"))?;
    // Dropping a netlink link would remove the filter; a TCX link stays
    // through its pin either way.
    std::mem::forget(link);
    Ok(())
}
