//! Attaching, detaching, and a handle on an attached gate through its pins.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap, IterableMap as _, Map, MapData, MapInfo, PerCpuArray, RingBuf};
use aya::programs::{
    LinkOrder, ProgramError, ProgramInfo, SchedClassifier, TcAttachType, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle},
    xdp::XdpLink,
};
use aya::{Ebpf, EbpfLoader, VerifierLogLevel};
use handshake_common::flow::{AF_INET, Endpoint};
use handshake_common::{
    Config, FlowEntry, FlowKey, LAYOUT_VERSION, Overflow, Reason, SourceKey, SourceState, TcpState,
    WindowCounter, machine, maps, meta, window,
};

use crate::settings::Settings;
use crate::{GateError, pins};

/// How the XDP program is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// Let the kernel choose: native where the driver supports it, else generic.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: works on every interface, slower.
    Skb,
}

impl AttachMode {
    fn xdp(self) -> XdpMode {
        match self {
            AttachMode::Auto => XdpMode::Default,
            AttachMode::Native => XdpMode::Driver,
            AttachMode::Skb => XdpMode::Skb,
        }
    }
}

/// How `attach` loads and attaches the programs (fixed until detach).
#[derive(Clone, Copy, Debug)]
pub struct AttachOptions {
    pub mode: AttachMode,
    /// Capacity of the established map: connections tracked past their
    /// handshake before the least recently seen are evicted.
    pub max_connections: u32,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            mode: AttachMode::Auto,
            max_connections: handshake_common::ESTABLISHED_CAPACITY,
        }
    }
}

/// Bounds of `--max-connections`: at least a small server's worth, at most
/// what a 64-bit kernel allocates for an LRU hash without trouble.
pub const MIN_CONNECTIONS: u32 = 1_024;
pub const MAX_CONNECTIONS: u32 = 16 * 1_048_576;

/// Every map the controller pins, by name.
pub const MAP_NAMES: [&str; 14] = [
    maps::CONFIG,
    maps::COUNTERS,
    maps::DROPPED,
    maps::EGRESS,
    maps::HALF_OPEN,
    maps::ESTABLISHED,
    maps::SOURCES,
    maps::GLOBAL,
    maps::PORTS,
    maps::ALLOWED_PORTS,
    maps::VERIFIED,
    maps::META,
    maps::EVENTS,
    maps::AYA_LOGS,
];

/// Undoes a half-done attach on drop unless [`Rollback::commit`] was
/// called: removes the pin directory (links held only by this process then
/// detach as their owners drop) and a netlink TC filter, which no process
/// holds.
struct Rollback<'a> {
    dir: PathBuf,
    iface: &'a str,
    tc_filter: bool,
    done: bool,
}

impl Rollback<'_> {
    fn commit(mut self) {
        self.done = true;
    }
}

impl Drop for Rollback<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        // Put back any TCP setting `overflow=cookie` changed.
        if let Ok(mut gate) = Gate::open_dir(self.dir.clone())
            && let Err(e) = gate.restore_sysctls(&mut Vec::new())
        {
            log::warn!("after a failed attach: {e}");
        }
        if self.tc_filter
            && let Err(e) = detach_tc_filter(self.iface)
        {
            log::warn!("could not remove the TC filter after a failed attach: {e}");
        }
        if let Err(e) = pins::remove_dir(&self.dir) {
            log::warn!(
                "could not remove {} after a failed attach: {e}",
                self.dir.display()
            );
        }
    }
}

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

/// Loads the gate on `iface`, with `config`, and pins it all under
/// [`pins::dir`]: the XDP program on ingress and the TC program on egress,
/// as one unit. The process can exit afterwards; the gate keeps working.
/// On any failure nothing stays attached or pinned, and the error names the
/// step that failed. Returns the pin directory and what was changed
/// outside the gate (see [`Gate::set_settings`]).
pub fn attach(
    iface: &str,
    netns: Option<&str>,
    options: AttachOptions,
    settings: &Settings,
) -> Result<(PathBuf, Vec<String>), GateError> {
    let mode = options.mode;
    pins::require_root()?;
    pins::require_bpffs()?;
    crate::settings::validate(settings)?;
    if !(MIN_CONNECTIONS..=MAX_CONNECTIONS).contains(&options.max_connections) {
        return Err(GateError::Setting(
            crate::settings::SettingError::BadValue {
                key: "max-connections",
                value: options.max_connections.to_string(),
                expected: format!("a whole number from {MIN_CONNECTIONS} to {MAX_CONNECTIONS}"),
            },
        ));
    }
    let ifindex =
        nix::net::if_::if_nametoindex(iface).map_err(|_| GateError::UnknownInterface {
            name: iface.into(),
            netns: netns.map(str::to_string),
        })?;
    let dir = pins::dir(iface, netns)?;
    if dir.exists() {
        return Err(GateError::AlreadyAttached {
            iface: iface.into(),
            dir,
        });
    }

    pins::create_dir(&dir)?;
    let mut rollback = Rollback {
        dir: dir.clone(),
        iface,
        tc_filter: false,
        done: false,
    };
    // Loading creates every map and pins it in `dir`.
    let mut ebpf = load(&dir, Some(options.max_connections))?;
    load_programs(&mut ebpf)?;
    // Through the pins, as every later command does.
    let mut gate = Gate::open_dir(dir.clone())?;
    gate.set_meta(meta::LAYOUT, LAYOUT_VERSION)?;
    let notes = gate.set_settings(settings)?;
    xdp_program(&mut ebpf)
        .pin(dir.join(pins::XDP_PROG))
        .map_err(GateError::step("pin the XDP program"))?;
    tc_program(&mut ebpf)
        .pin(dir.join(pins::TC_PROG))
        .map_err(GateError::step("pin the TC egress program"))?;

    // Egress first: by the time SYNs are admitted, their SYN-ACKs are seen.
    match attach_tc(tc_program(&mut ebpf), iface, &mut rollback)? {
        EgressLink::Tcx(link) => {
            link.pin(dir.join(pins::TC_LINK))
                .map_err(GateError::step("pin the TC egress link"))?;
        }
        EgressLink::Filter { priority, handle } => {
            gate.set_meta(meta::TC_PRIORITY, priority.into())?;
            gate.set_meta(meta::TC_HANDLE, u32::from(handle).into())?;
        }
    }
    fail_point("xdp")?;

    let xdp = xdp_program(&mut ebpf);
    let link_id = xdp
        .attach_to_if_index(ifindex, mode.xdp())
        .map_err(|e| GateError::Step {
            step: format!(
                "attach the XDP program to {iface} in {} mode{}",
                match mode {
                    AttachMode::Auto => "auto",
                    AttachMode::Native => "native",
                    AttachMode::Skb => "skb",
                },
                if mode == AttachMode::Native {
                    " (try --mode skb)"
                } else {
                    ""
                }
            ),
            source: Box::new(e),
        })?;
    let link = xdp
        .take_link(link_id)
        .map_err(GateError::step("take the XDP link"))?;
    let link: FdLink = link.try_into().map_err(GateError::step(
        "hold the XDP link (the kernel attached it without a BPF link, which cannot be pinned)",
    ))?;
    link.pin(dir.join(pins::XDP_LINK))
        .map_err(GateError::step("pin the XDP link"))?;
    rollback.commit();
    Ok((dir, notes))
}

/// A test hook: `HANDSHAKE_GATE_FAIL_AT=xdp` makes attach fail just before
/// the XDP program is attached, with the egress program already in place,
/// so the tests can check that a failed attach leaves nothing behind.
fn fail_point(at: &str) -> Result<(), GateError> {
    if std::env::var("HANDSHAKE_GATE_FAIL_AT").is_ok_and(|v| v == at) {
        return Err(GateError::Step {
            step: format!("continue past the injected failure at {at:?}"),
            source: Box::new(std::io::Error::other("HANDSHAKE_GATE_FAIL_AT is set")),
        });
    }
    Ok(())
}

fn xdp_program(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(maps::XDP_PROGRAM)
        .expect("the object defines the XDP program")
        .try_into()
        .expect("an XDP program")
}

fn tc_program(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    ebpf.program_mut(maps::TC_PROGRAM)
        .expect("the object defines the TC program")
        .try_into()
        .expect("a TC classifier")
}

/// How the egress program hangs on the interface.
enum EgressLink {
    /// A TCX link, to pin.
    Tcx(FdLink),
    /// A netlink filter on the `clsact` qdisc, found again by these.
    Filter { priority: u16, handle: TcHandle },
}

/// Attaches the egress program: a TCX link to pin where the kernel has TCX,
/// else a netlink filter (recorded in `rollback`), which needs no pin.
fn attach_tc(
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
fn detach_tc_filter(iface: &str) -> Result<(), TcError> {
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

/// Loads the object with every map pinned in `dir`: a map already pinned
/// there is reused as it is (`attach --replace`), a missing one is created
/// and pinned. `max_connections` sizes a new established map.
fn load(dir: &Path, max_connections: Option<u32>) -> Result<Ebpf, GateError> {
    let mut loader = EbpfLoader::new();
    for name in MAP_NAMES {
        loader.map_pin_path(name, dir.join(name));
    }
    if let Some(n) = max_connections {
        loader.map_max_entries(maps::ESTABLISHED, n);
    }
    loader
        .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS)
        .load(crate::ebpf_object())
        .map_err(GateError::step("load the gate's BPF object (maps)"))
}

/// The pin directory of a gate attached to `iface`, after the checks every
/// command against an attached gate makes: root, bpffs, and the pins there.
fn attached_dir(iface: &str, netns: Option<&str>) -> Result<PathBuf, GateError> {
    pins::require_root()?;
    pins::require_bpffs()?;
    let dir = pins::dir(iface, netns)?;
    if !dir.exists() {
        return Err(GateError::NotAttached {
            iface: iface.into(),
            dir,
        });
    }
    Ok(dir)
}

/// Swaps new programs (this binary's) into an attached gate, atomically for
/// each direction, over the pinned maps: every tracked connection, count and
/// setting stays. Refuses, changing nothing, when the pinned maps' layout is
/// not this binary's. Egress goes first, as in [`attach`]; if the ingress
/// swap then fails, the old egress program is put back.
pub fn replace(iface: &str, netns: Option<&str>) -> Result<PathBuf, GateError> {
    let dir = attached_dir(iface, netns)?;
    check_layout(&dir)?;
    let mut ebpf = load(&dir, None)?;
    load_programs(&mut ebpf)?;

    swap_egress(tc_program(&mut ebpf), &dir, iface)?;
    let ingress =
        fail_point("replace-xdp").and_then(|()| swap_ingress(xdp_program(&mut ebpf), &dir));
    if let Err(e) = ingress {
        let mut old = SchedClassifier::from_pin(dir.join(pins::TC_PROG)).map_err(
            GateError::step("open the old TC egress program to put it back"),
        )?;
        swap_egress(&mut old, &dir, iface)?;
        return Err(e);
    }
    for (pin, what) in [(pins::XDP_PROG, "XDP"), (pins::TC_PROG, "TC egress")] {
        std::fs::remove_file(dir.join(pin))
            .map_err(GateError::step(format!("unpin the old {what} program")))?;
    }
    xdp_program(&mut ebpf)
        .pin(dir.join(pins::XDP_PROG))
        .map_err(GateError::step("pin the new XDP program"))?;
    tc_program(&mut ebpf)
        .pin(dir.join(pins::TC_PROG))
        .map_err(GateError::step("pin the new TC egress program"))?;
    Ok(dir)
}

/// Puts `tc` in the egress program's place: in the pinned TCX link, or in
/// the netlink filter `META` records, replaced in place.
fn swap_egress(tc: &mut SchedClassifier, dir: &Path, iface: &str) -> Result<(), GateError> {
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

/// Puts `xdp` in the pinned XDP link's place.
fn swap_ingress(xdp: &mut Xdp, dir: &Path) -> Result<(), GateError> {
    let fd: FdLink = PinnedLink::from_pin(dir.join(pins::XDP_LINK))
        .map_err(GateError::step("open the pinned XDP link"))?
        .into();
    let link = XdpLink::try_from(fd).map_err(GateError::step("use the XDP link"))?;
    let id = xdp
        .attach_to_link(link)
        .map_err(GateError::step("swap the XDP program"))?;
    // The pin keeps the link: dropping this handle only closes it.
    drop(xdp.take_link(id));
    Ok(())
}

/// Checks that the maps pinned in `dir` are what this binary's programs
/// expect: each present, of the same type, key and value sizes (and, but
/// for the established map, which `--max-connections` sizes, capacity),
/// and made under the same [`LAYOUT_VERSION`].
pub fn check_layout(dir: &Path) -> Result<(), GateError> {
    let obj = aya_obj::Object::parse(crate::ebpf_object())
        .map_err(GateError::step("read this binary's BPF object"))?;
    let incompatible = |map: &str, why: String| GateError::IncompatibleLayout {
        map: map.to_string(),
        why,
    };
    for name in MAP_NAMES {
        let want = obj
            .maps
            .get(name)
            .ok_or_else(|| incompatible(name, "this binary does not define it".into()))?;
        let have = MapInfo::from_pin(dir.join(name))
            .map_err(|_| incompatible(name, "not pinned (made by an older version?)".into()))?;
        let have_type = have.map_type().map(|t| t as u32).unwrap_or(u32::MAX);
        let mut diffs = Vec::new();
        if have_type != want.map_type() {
            diffs.push(format!("type {} vs {}", have_type, want.map_type()));
        }
        if have.key_size() != want.key_size() {
            diffs.push(format!(
                "key {} vs {} bytes",
                have.key_size(),
                want.key_size()
            ));
        }
        if have.value_size() != want.value_size() {
            diffs.push(format!(
                "value {} vs {} bytes",
                have.value_size(),
                want.value_size()
            ));
        }
        if name != maps::ESTABLISHED && have.max_entries() != want.max_entries() {
            diffs.push(format!(
                "{} vs {} entries",
                have.max_entries(),
                want.max_entries()
            ));
        }
        if !diffs.is_empty() {
            return Err(incompatible(
                name,
                format!("pinned vs this binary: {}", diffs.join(", ")),
            ));
        }
    }
    let version = Gate::open_dir(dir.to_path_buf())?.meta(meta::LAYOUT)?;
    if version != LAYOUT_VERSION {
        return Err(incompatible(
            maps::META,
            format!("layout version {version}, this binary's is {LAYOUT_VERSION}"),
        ));
    }
    Ok(())
}

/// Loads both programs into the kernel (through the verifier).
fn load_programs(ebpf: &mut Ebpf) -> Result<(), GateError> {
    xdp_program(ebpf).load().map_err(|e| verifier("XDP", e))?;
    tc_program(ebpf)
        .load()
        .map_err(|e| verifier("TC egress", e))
}

/// Turns a load error into the verifier's last lines, which say why.
fn verifier(program: &'static str, e: ProgramError) -> GateError {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(12)..].join("\n");
            GateError::Verifier {
                program,
                log_tail: format!("{io_error}\n{tail}"),
            }
        }
        other => GateError::step(format!("load the {program} program"))(other),
    }
}

/// Detaches the gate (both programs) from `iface` and removes its pins.
pub fn detach(iface: &str, netns: Option<&str>) -> Result<Vec<String>, GateError> {
    let dir = attached_dir(iface, netns)?;
    let mut notes = Vec::new();
    // Ingress first, so no SYN is admitted whose SYN-ACK goes unseen.
    unpin_link(&dir.join(pins::XDP_LINK), "XDP")?;
    let tc_link = dir.join(pins::TC_LINK);
    if tc_link.exists() {
        unpin_link(&tc_link, "TC egress")?;
    } else {
        detach_tc_filter(iface).map_err(GateError::step(format!(
            "remove the TC egress filter from {iface}"
        )))?;
    }
    // After the programs are gone: no cookie is made from here on.
    Gate::open_dir(dir.clone())?.restore_sysctls(&mut notes)?;
    pins::remove_dir(&dir).map_err(GateError::step(format!("remove {}", dir.display())))?;
    Ok(notes)
}

/// Unpins a link; with no process holding it, that detaches its program.
fn unpin_link(pin: &Path, what: &str) -> Result<(), GateError> {
    if !pin.exists() {
        return Ok(());
    }
    let link = PinnedLink::from_pin(pin)
        .map_err(GateError::step(format!("open the pinned {what} link")))?;
    let fd_link = link
        .unpin()
        .map_err(GateError::step(format!("unpin the {what} link")))?;
    drop(fd_link);
    Ok(())
}

/// Packet counts per reason, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Arriving packets that got each reason (would-be drops included in
    /// monitor mode).
    pub packets: [u64; Reason::COUNT as usize],
    /// Arriving packets actually dropped for each reason.
    pub dropped: [u64; Reason::COUNT as usize],
    /// Leaving packets per reason (the egress program never drops).
    pub egress: [u64; Reason::COUNT as usize],
}

impl Counters {
    pub fn get(&self, r: Reason) -> u64 {
        self.packets[r as usize]
    }
}

/// A tracked connection, as `conns` and `status` see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conn {
    pub client: (IpAddr, u16),
    pub server: (IpAddr, u16),
    pub entry: FlowEntry,
    /// Still in the half-open map.
    pub half_open: bool,
}

/// An attached gate, opened from its pins (by any process, at any time).
pub struct Gate {
    pub dir: PathBuf,
    config: Array<MapData, Config>,
    counters: PerCpuArray<MapData, u64>,
    dropped: PerCpuArray<MapData, u64>,
    egress: PerCpuArray<MapData, u64>,
    half_open: HashMap<MapData, FlowKey, FlowEntry>,
    established: HashMap<MapData, FlowKey, FlowEntry>,
    sources: HashMap<MapData, SourceKey, SourceState>,
    global: Array<MapData, WindowCounter>,
    ports: Array<MapData, WindowCounter>,
    allowed_ports: Array<MapData, u64>,
    meta: Array<MapData, u64>,
}

fn open_map<T>(dir: &Path, name: &str) -> Result<T, GateError>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let data = MapData::from_pin(dir.join(name))
        .map_err(GateError::step(format!("open the pinned {name} map")))?;
    let map = Map::from_map_data(data).map_err(GateError::step(format!("read the {name} map")))?;
    T::try_from(map).map_err(GateError::step(format!(
        "use the {name} map (was it made by another version?)"
    )))
}

impl Gate {
    pub fn open(iface: &str, netns: Option<&str>) -> Result<Gate, GateError> {
        Self::open_dir(attached_dir(iface, netns)?)
    }

    pub fn open_dir(dir: PathBuf) -> Result<Gate, GateError> {
        Ok(Gate {
            config: open_map(&dir, maps::CONFIG)?,
            counters: open_map(&dir, maps::COUNTERS)?,
            dropped: open_map(&dir, maps::DROPPED)?,
            egress: open_map(&dir, maps::EGRESS)?,
            half_open: open_map(&dir, maps::HALF_OPEN)?,
            established: open_map(&dir, maps::ESTABLISHED)?,
            sources: open_map(&dir, maps::SOURCES)?,
            global: open_map(&dir, maps::GLOBAL)?,
            ports: open_map(&dir, maps::PORTS)?,
            allowed_ports: open_map(&dir, maps::ALLOWED_PORTS)?,
            meta: open_map(&dir, maps::META)?,
            dir,
        })
    }

    /// A slot of the `META` array.
    pub fn meta(&self, slot: u32) -> Result<u64, GateError> {
        self.meta
            .get(&slot, 0)
            .map_err(GateError::step("read the META map"))
    }

    pub fn set_meta(&mut self, slot: u32, value: u64) -> Result<(), GateError> {
        self.meta
            .set(slot, value, 0)
            .map_err(GateError::step("write the META map"))
    }

    /// The pinned XDP program's kernel id (aya-log attaches to it).
    pub fn xdp_program_id(&self) -> Result<u32, GateError> {
        Ok(ProgramInfo::from_pin(self.dir.join(pins::XDP_PROG))
            .map_err(GateError::step("read the pinned XDP program"))?
            .id())
    }

    /// The drop-event ring buffer. Reading consumes: one reader at a time.
    pub fn events(&self) -> Result<RingBuf<MapData>, GateError> {
        open_map(&self.dir, maps::EVENTS)
    }

    /// Capacities of the connection maps: (half-open, established).
    pub fn map_capacity(&self) -> Result<(u32, u32), GateError> {
        let cap = |name: &str| -> Result<u32, GateError> {
            Ok(MapInfo::from_pin(self.dir.join(name))
                .map_err(GateError::step(format!("read the {name} map's size")))?
                .max_entries())
        };
        Ok((cap(maps::HALF_OPEN)?, cap(maps::ESTABLISHED)?))
    }

    /// Deletes expired entries: half-open attempts past their timeout and
    /// connections 2·MSL after they finished. Their half-open counts need
    /// nothing: they aged out with their time bucket. Each entry is looked
    /// at again just before it goes, so one that a packet brought back to
    /// life meanwhile stays (a packet landing between that look and the
    /// delete loses its entry; the flow is picked up again as ESTABLISHED).
    /// Returns how many went from each map.
    pub fn sweep(&mut self, cfg: &Config, now_ns: u64) -> Result<(usize, usize), GateError> {
        let half_open = sweep_map(&mut self.half_open, |e| {
            machine::half_open_expired(e, now_ns, cfg)
        })?;
        let established = sweep_map(&mut self.established, |e| {
            machine::finished_expired(e, now_ns, cfg)
        })?;
        Ok((half_open, established))
    }

    pub fn config(&self) -> Result<Config, GateError> {
        self.config
            .get(&0, 0)
            .map_err(GateError::step("read the configuration"))
    }

    /// The whole settings: the configuration and the allowed ports.
    pub fn settings(&self) -> Result<Settings, GateError> {
        let config = self.config()?;
        let words = self.port_words()?;
        Ok(Settings::from_maps(config, &words))
    }

    fn port_words(&self) -> Result<Vec<u64>, GateError> {
        let read = GateError::step("read the allowed ports");
        self.allowed_ports
            .iter()
            .collect::<Result<Vec<u64>, _>>()
            .map_err(read)
    }

    /// Writes new settings; the programs use them from their next packet,
    /// with no reattach and no tracked state lost. The port bitmap and the
    /// flag that turns it on are ordered so that no port that is open before
    /// and after is ever closed in between. With `overflow=cookie`, first
    /// sets what the namespace's TCP stack needs for it (see
    /// [`Gate::cookie_sysctls`]); away from it, puts back what it changed.
    /// Returns what it changed outside the gate, for the operator.
    pub fn set_settings(&mut self, s: &Settings) -> Result<Vec<String>, GateError> {
        crate::settings::validate(s)?;
        let mut config = s.config;
        let cookie = config.overflow() == Overflow::Cookie;
        let mut notes = Vec::new();
        if cookie {
            config.cookie_options = self.cookie_sysctls(&config, &mut notes)?.to_bits();
        } else {
            config.cookie_options = 0;
        }
        let s = &Settings {
            config,
            allowed_ports: s.allowed_ports.clone(),
        };
        if s.allowed_ports.is_empty() {
            self.write_config(&s.config)?;
            self.write_ports(s)?;
        } else {
            self.write_ports(s)?;
            self.write_config(&s.config)?;
        }
        if !cookie {
            self.restore_sysctls(&mut notes)?;
        }
        Ok(notes)
    }

    /// Sets `net.ipv4.tcp_syncookies=2` in this namespace (and, with
    /// `cookie-timestamps=on`, `net.ipv4.tcp_timestamps=2`), keeping each
    /// value it replaces in `META` to put back later; returns what the
    /// cookies may then carry. Refuses, changing nothing of its own, where
    /// SYN cookies are not available.
    fn cookie_sysctls(
        &mut self,
        cfg: &Config,
        notes: &mut Vec<String>,
    ) -> Result<handshake_common::cookie::Options, GateError> {
        use crate::sysctl::{self, SYNCOOKIES, TIMESTAMPS};
        let unavailable = |e: GateError| GateError::CookieUnavailable { why: e.to_string() };
        let mut wanted = vec![(SYNCOOKIES, meta::SAVED_SYNCOOKIES)];
        if cfg.cookie_timestamps != 0 {
            wanted.push((TIMESTAMPS, meta::SAVED_TIMESTAMPS));
        } else {
            self.restore(TIMESTAMPS, meta::SAVED_TIMESTAMPS, notes)?;
        }
        // (name, value before, whether its META slot was filled here)
        let mut changed = Vec::new();
        let mut result = Ok(());
        for (name, slot) in wanted {
            let step = sysctl::read(name).and_then(|was| {
                if was != 2 {
                    sysctl::write(name, 2)?;
                    let fresh = self.meta(slot)? == 0;
                    changed.push((name, slot, was, fresh));
                    if fresh {
                        self.set_meta(slot, was + 1)?;
                    }
                }
                Ok(())
            });
            if let Err(e) = step {
                result = Err(e);
                break;
            }
        }
        let options = match result.and_then(|()| sysctl::cookie_options()) {
            Ok(o) => o,
            Err(e) => {
                // Put back what this call changed, so a refusal changes nothing.
                for &(name, slot, was, fresh) in &changed {
                    if let Err(e) = sysctl::write(name, was) {
                        log::warn!("{e}");
                    }
                    if fresh {
                        let _ = self.set_meta(slot, 0);
                    }
                }
                return Err(unavailable(e));
            }
        };
        for (name, _, was, _) in changed {
            notes.push(format!(
                "set {} to 2 in this network namespace (was {was}; put back on detach or when overflow changes)",
                sysctl::dotted(name)
            ));
        }
        notes.push(sysctl::describe(&options));
        Ok(options)
    }

    /// Puts back every TCP setting `overflow=cookie` changed.
    pub fn restore_sysctls(&mut self, notes: &mut Vec<String>) -> Result<(), GateError> {
        use crate::sysctl::{SYNCOOKIES, TIMESTAMPS};
        self.restore(SYNCOOKIES, meta::SAVED_SYNCOOKIES, notes)?;
        self.restore(TIMESTAMPS, meta::SAVED_TIMESTAMPS, notes)
    }

    fn restore(&mut self, name: &str, slot: u32, notes: &mut Vec<String>) -> Result<(), GateError> {
        let saved = self.meta(slot)?;
        if saved == 0 {
            return Ok(());
        }
        crate::sysctl::write(name, saved - 1)?;
        self.set_meta(slot, 0)?;
        notes.push(format!(
            "put {} back to {} in this network namespace",
            crate::sysctl::dotted(name),
            saved - 1
        ));
        Ok(())
    }

    fn write_config(&mut self, cfg: &Config) -> Result<(), GateError> {
        self.config
            .set(0, cfg, 0)
            .map_err(GateError::step("write the configuration"))
    }

    fn write_ports(&mut self, s: &Settings) -> Result<(), GateError> {
        let old = self.port_words()?;
        for (i, w) in s.port_bitmap().into_iter().enumerate() {
            if old.get(i) != Some(&w) {
                self.allowed_ports
                    .set(i as u32, w, 0)
                    .map_err(GateError::step("write the allowed ports"))?;
            }
        }
        Ok(())
    }

    pub fn counters(&self) -> Result<Counters, GateError> {
        let mut c = Counters::default();
        for r in Reason::ALL {
            let i = r as u32;
            let sum = |m: &PerCpuArray<MapData, u64>| -> Result<u64, GateError> {
                Ok(m.get(&i, 0)
                    .map_err(GateError::step("read the counters"))?
                    .iter()
                    .sum())
            };
            c.packets[i as usize] = sum(&self.counters)?;
            c.dropped[i as usize] = sum(&self.dropped)?;
            c.egress[i as usize] = sum(&self.egress)?;
        }
        Ok(c)
    }

    /// The global half-open count the limits use now.
    pub fn half_open_now(&self, cfg: &Config, now_ns: u64) -> Result<u32, GateError> {
        let g = self
            .global
            .get(&0, 0)
            .map_err(GateError::step("read the global half-open count"))?;
        Ok(g.live(now_epoch(cfg, now_ns)))
    }

    /// Destination ports with attempts counting now, the most first.
    pub fn top_ports(
        &self,
        cfg: &Config,
        now_ns: u64,
        n: usize,
    ) -> Result<Vec<(u16, u32)>, GateError> {
        let ep = now_epoch(cfg, now_ns);
        let all: Vec<(u32, WindowCounter)> = match crate::batch::read_all(self.ports.map()) {
            Ok(v) => v,
            Err(e) if crate::batch::unsupported(&e) => self
                .ports
                .iter()
                .enumerate()
                .filter_map(|(i, c)| Some((i as u32, c.ok()?)))
                .collect(),
            Err(e) => return Err(GateError::step("read the per-port counts")(e)),
        };
        let mut v: Vec<(u16, u32)> = all
            .into_iter()
            .map(|(port, c)| (port as u16, c.live(ep)))
            .filter(|(_, c)| *c > 0)
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        Ok(v)
    }

    /// Sources with attempts counting now, the most first.
    pub fn top_sources(&self, cfg: &Config, now_ns: u64, n: usize) -> Vec<(String, u32)> {
        let ep = now_epoch(cfg, now_ns);
        let mut v: Vec<(String, u32)> = self
            .sources
            .iter()
            .filter_map(Result::ok)
            .map(|(k, s)| (source_name(&k), s.half_open.live(ep)))
            .filter(|(_, c)| *c > 0)
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    /// Every connection still tracked (expired entries left out), read in
    /// batches.
    pub fn conns(&self, cfg: &Config, now_ns: u64) -> Result<Vec<Conn>, GateError> {
        Ok(self.conns_and_fill(cfg, now_ns)?.0)
    }

    /// [`Gate::conns`], and from the same read the entries in each
    /// connection map, (half-open, established), expired ones included
    /// (they hold their slot until swept or replaced).
    fn conns_and_fill(
        &self,
        cfg: &Config,
        now_ns: u64,
    ) -> Result<(Vec<Conn>, (usize, usize)), GateError> {
        let mut out = Vec::new();
        let mut fill = [0usize; 2];
        for (i, (map, half_open)) in [(&self.half_open, true), (&self.established, false)]
            .into_iter()
            .enumerate()
        {
            let flows = read_flows(map)?;
            fill[i] = flows.len();
            for (k, e) in flows {
                let expired = if half_open {
                    machine::half_open_expired(&e, now_ns, cfg)
                } else {
                    machine::finished_expired(&e, now_ns, cfg)
                };
                if !expired {
                    let (c, s) = k.ends(e.client_is_lo != 0);
                    out.push(Conn {
                        client: endpoint(k.family, &c),
                        server: endpoint(k.family, &s),
                        entry: e,
                        half_open,
                    });
                }
            }
        }
        Ok((out, (fill[0], fill[1])))
    }
}

/// A flow map's entries: in batches, or by a walk where the kernel cannot
/// batch.
fn read_flows(
    map: &HashMap<MapData, FlowKey, FlowEntry>,
) -> Result<Vec<(FlowKey, FlowEntry)>, GateError> {
    match crate::batch::read_all(map.map()) {
        Ok(v) => Ok(v),
        Err(e) if crate::batch::unsupported(&e) => Ok(map.iter().filter_map(Result::ok).collect()),
        Err(e) => Err(GateError::step("read the connection maps")(e)),
    }
}

/// Deletes the entries of `map` that are `expired`, looking at each again
/// just before it goes; how many went.
fn sweep_map(
    map: &mut HashMap<MapData, FlowKey, FlowEntry>,
    expired: impl Fn(&FlowEntry) -> bool,
) -> Result<usize, GateError> {
    let mut removed = 0;
    for (k, e) in read_flows(map)? {
        if expired(&e) && map.get(&k, 0).is_ok_and(|now| expired(&now)) && map.remove(&k).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}

fn now_epoch(cfg: &Config, now_ns: u64) -> u32 {
    window::epoch(now_ns, window::bucket_width_ns(cfg.half_open_timeout_ms))
}

fn ip(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

fn endpoint(family: u8, e: &Endpoint) -> (IpAddr, u16) {
    (ip(family, &e.addr), u16::from_be(e.port))
}

fn source_name(k: &SourceKey) -> String {
    format!("{}/{}", ip(k.family, &k.addr), k.prefix_len)
}

/// Counts of connections per state, for each side.
pub fn state_counts(conns: &[Conn]) -> [BTreeMap<&'static str, u64>; 2] {
    let mut client = BTreeMap::new();
    let mut server = BTreeMap::new();
    for s in TcpState::ALL {
        client.insert(s.name(), 0);
        server.insert(s.name(), 0);
    }
    for c in conns {
        *client.entry(c.entry.client_state().name()).or_insert(0) += 1;
        *server.entry(c.entry.server_state().name()).or_insert(0) += 1;
    }
    [client, server]
}

/// Everything `status`, its `--watch` view and the metrics show, read at
/// one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub settings: Settings,
    pub counters: Counters,
    /// The global half-open count the limits use now.
    pub half_open: u32,
    /// Live connections per state: client side, server side.
    pub states: [BTreeMap<&'static str, u64>; 2],
    /// Live connections in all.
    pub connections: usize,
    /// Entries in each connection map, (half-open, established), expired
    /// ones not yet swept included.
    pub map_entries: (usize, usize),
    pub top_sources: Vec<(String, u32)>,
    pub top_ports: Vec<(u16, u32)>,
    /// When it was read (monotonic ns).
    pub taken_ns: u64,
}

impl Gate {
    /// Reads a [`Snapshot`], with the `top` busiest sources and ports.
    pub fn snapshot(&self, top: usize) -> Result<Snapshot, GateError> {
        let settings = self.settings()?;
        let cfg = settings.config;
        let now = crate::monotonic_ns();
        let (conns, map_entries) = self.conns_and_fill(&cfg, now)?;
        Ok(Snapshot {
            map_entries,
            counters: self.counters()?,
            half_open: self.half_open_now(&cfg, now)?,
            states: state_counts(&conns),
            connections: conns.len(),
            top_sources: self.top_sources(&cfg, now, top),
            top_ports: self.top_ports(&cfg, now, top)?,
            taken_ns: now,
            settings,
        })
    }
}
