//! Attaching, replacing and detaching the gate as one unit, and undoing a
//! half-done attach.

use std::path::{Path, PathBuf};

use aya::maps::MapInfo;
use aya::programs::{
    ProgramError, SchedClassifier, Xdp, XdpMode,
    links::{FdLink, PinnedLink},
    xdp::XdpLink,
};
use aya::{Ebpf, EbpfLoader, VerifierLogLevel};
use handshake_common::{LAYOUT_VERSION, maps, meta};

use super::Gate;
use super::egress::{EgressLink, attach_tc, detach_tc_filter, swap_egress};
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
    /// Capacity of the IPv4 established map: connections tracked past
    /// their handshake before the least recently seen are evicted.
    pub max_connections: u32,
    /// Likewise, the IPv6 one.
    pub max_connections_v6: u32,
    /// Join libxdp's multi-program dispatcher at this run priority instead
    /// of taking the XDP hook alone.
    pub multiprog: Option<u32>,
    /// Capacity of each prefix list (allow, deny).
    pub max_prefixes: u32,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            mode: AttachMode::Auto,
            max_connections: handshake_common::ESTABLISHED_CAPACITY,
            max_connections_v6: handshake_common::ESTABLISHED_V6_CAPACITY,
            max_prefixes: handshake_common::prefix::DEFAULT_MAX_PREFIXES,
            multiprog: None,
        }
    }
}

/// Bounds of `--max-connections`: at least a small server's worth, at most
/// what a 64-bit kernel allocates for an LRU hash without trouble.
pub const MIN_CONNECTIONS: u32 = 1_024;

pub const MAX_CONNECTIONS: u32 = 16 * 1_048_576;

/// Every map the controller pins, by name.
pub const MAP_NAMES: [&str; 20] = [
    maps::CONFIG,
    maps::COUNTERS,
    maps::EGRESS,
    maps::HALF_OPEN_V4,
    maps::HALF_OPEN_V6,
    maps::ESTABLISHED_V4,
    maps::ESTABLISHED_V6,
    maps::SOURCES,
    maps::GLOBAL,
    maps::PORTS,
    maps::ALLOWED_PORTS,
    maps::VERIFIED,
    maps::META,
    maps::EVENTS,
    maps::AYA_LOGS,
    maps::COUNTED,
    maps::KNOWN,
    maps::KNOWN_GEN,
    maps::PREFIXES_V4,
    maps::PREFIXES_V6,
];

/// Maps a gate attached by an older version may lack: `attach --replace`
/// creates them, and the controller does without them until it does.
pub const OPTIONAL_MAPS: [&str; 3] = [maps::COUNTED, maps::KNOWN, maps::KNOWN_GEN];

/// Maps whose capacity `--max-connections`, `--max-connections-v6` or
/// `--max-prefixes` sets.
const SIZED_MAPS: [&str; 5] = [
    maps::ESTABLISHED_V4,
    maps::ESTABLISHED_V6,
    maps::KNOWN,
    maps::PREFIXES_V4,
    maps::PREFIXES_V6,
];

/// Bounds of `--max-prefixes`.
pub const MIN_PREFIXES: u32 = 16;
pub const MAX_PREFIXES: u32 = 1 << 24;

/// The IPv6 established map's size: as given, or by default a quarter of
/// the IPv4 one's (at least 1,024).
pub fn v6_connections(max_connections: u32, v6: Option<u32>) -> u32 {
    v6.unwrap_or(handshake_common::v6_share(max_connections))
}

/// Entries of the known-source filter's map for a gate of
/// `max_connections` IPv4 and `max_connections_v6` IPv6 connections.
pub fn known_words(max_connections: u32, max_connections_v6: u32) -> u32 {
    use handshake_common::{HALF_OPEN_CAPACITY, SOURCES_CAPACITY, VERIFIED_CAPACITY, known};
    let entries = u64::from(max_connections)
        + u64::from(max_connections_v6)
        + 2 * u64::from(HALF_OPEN_CAPACITY)
        + u64::from(SOURCES_CAPACITY)
        + u64::from(VERIFIED_CAPACITY);
    known::map_words(known::log2_bits_for(entries))
}

/// Undoes a half-done attach on drop unless [`Rollback::commit`] was
/// called: removes the pin directory (links held only by this process then
/// detach as their owners drop) and a netlink TC filter, which no process
/// holds.
pub(super) struct Rollback<'a> {
    dir: PathBuf,
    iface: &'a str,
    pub(super) tc_filter: bool,
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
    for (key, value, min, max) in [
        (
            "max-connections",
            options.max_connections,
            MIN_CONNECTIONS,
            MAX_CONNECTIONS,
        ),
        (
            "max-connections-v6",
            options.max_connections_v6,
            MIN_CONNECTIONS,
            MAX_CONNECTIONS,
        ),
        (
            "max-prefixes",
            options.max_prefixes,
            MIN_PREFIXES,
            MAX_PREFIXES,
        ),
    ] {
        if !(min..=max).contains(&value) {
            return Err(GateError::Setting(
                crate::settings::SettingError::BadValue {
                    key,
                    value: value.to_string(),
                    expected: format!("a whole number from {min} to {max}"),
                },
            ));
        }
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
    match options.multiprog {
        Some(_) => super::multiprog::check_hook(iface, ifindex)?,
        None => hook_is_free(iface, ifindex)?,
    }

    pins::create_dir(&dir)?;
    let mut rollback = Rollback {
        dir: dir.clone(),
        iface,
        tc_filter: false,
        done: false,
    };
    // Loading creates every map and pins it in `dir`.
    let multiprog = options.multiprog.is_some();
    let mut ebpf = load(&dir, Some(&options), multiprog)?;
    load_programs(&mut ebpf, multiprog)?;
    // Through the pins, as every later command does.
    let mut gate = Gate::open_dir(dir.clone())?;
    gate.set_meta(meta::LAYOUT, LAYOUT_VERSION)?;
    let notes = gate.set_settings(settings)?;
    if !multiprog {
        xdp_program(&mut ebpf)
            .pin(dir.join(pins::XDP_PROG))
            .map_err(GateError::step("pin the XDP program"))?;
    }
    tc_program(&mut ebpf)
        .pin(dir.join(pins::TC_PROG))
        .map_err(GateError::step("pin the TC egress program"))?;
    pin_tally(&mut ebpf, &dir)?;
    // The maps are empty: the filter is built at once, before any packet.
    gate.rebuild_known()?;

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

    if let Some(priority) = options.multiprog {
        gate.set_meta(meta::DISPATCHER_PRIORITY, u64::from(priority) + 1)?;
        super::multiprog::join(&mut ebpf, &dir, iface, ifindex, mode, priority)?;
        rollback.commit();
        return Ok((dir, notes));
    }
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

/// Refuses, before anything is made, an interface whose XDP hook holds a
/// program already: by its name and id, and how to free the hook (or, for
/// libxdp's dispatcher, to join it with `--multiprog`). A hook that cannot
/// be asked about is left to the attach itself to find out.
fn hook_is_free(iface: &str, ifindex: u32) -> Result<(), GateError> {
    let holder = match crate::hook::xdp_program(ifindex) {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(()),
        Err(e) => {
            log::debug!("could not ask who holds the XDP hook of {iface}: {e}");
            return Ok(());
        }
    };
    let what_to_do = if holder.is_dispatcher() {
        format!(
            "it is libxdp's multi-program dispatcher (xdp-loader, xdp-filter): add \
             --multiprog to run the gate as one of its programs (`xdp-loader status {iface}` \
             lists them)"
        )
    } else if holder.name.as_deref() == Some(maps::XDP_PROGRAM) {
        format!(
            "it is a gate program whose pins are gone (removed by hand?): remove it with \
             `ip link set dev {iface} xdp off`, then attach again"
        )
    } else {
        format!(
            "the gate needs the hook to itself: remove that program first (`xdp-loader unload \
             {iface} --all` if libxdp's tools loaded it, `ip link set dev {iface} xdp off` if \
             something else attached it through netlink; one held by a BPF link goes when its \
             owner lets go: `bpftool link` lists them), then attach again"
        )
    };
    Err(GateError::HookTaken {
        iface: iface.into(),
        id: holder.id,
        name: holder.name,
        what_to_do,
    })
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

fn tally_program(ebpf: &mut Ebpf) -> &mut Xdp {
    ebpf.program_mut(maps::TALLY_PROGRAM)
        .expect("the object defines the counting program")
        .try_into()
        .expect("an XDP program")
}

fn tc_program(ebpf: &mut Ebpf) -> &mut SchedClassifier {
    ebpf.program_mut(maps::TC_PROGRAM)
        .expect("the object defines the TC program")
        .try_into()
        .expect("a TC classifier")
}

/// Loads the object with every map pinned in `dir`: a map already pinned
/// there is reused as it is (`attach --replace`), a missing one is created
/// and pinned. `options` size new maps.
fn load(dir: &Path, options: Option<&AttachOptions>, extension: bool) -> Result<Ebpf, GateError> {
    let mut loader = EbpfLoader::new();
    if extension {
        // Loaded later, as an extension of a dispatcher's slot.
        loader.extension(maps::XDP_PROGRAM);
    }
    for name in MAP_NAMES {
        loader.map_pin_path(name, dir.join(name));
    }
    if let Some(o) = options {
        loader.map_max_entries(
            maps::ESTABLISHED_V4,
            handshake_common::table::entries(o.max_connections),
        );
        loader.map_max_entries(maps::ESTABLISHED_V6, o.max_connections_v6);
        loader.map_max_entries(
            maps::KNOWN,
            known_words(o.max_connections, o.max_connections_v6),
        );
        let tries = handshake_common::prefix::trie_entries(o.max_prefixes);
        loader.map_max_entries(maps::PREFIXES_V4, tries);
        loader.map_max_entries(maps::PREFIXES_V6, tries);
    }
    let mut ebpf = loader
        .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS)
        .load(crate::ebpf_object())
        .map_err(GateError::step("load the gate's BPF object (maps)"))?;
    // A table just made gets its header (a reused one keeps its own)
    // before any program that reads it is attached.
    crate::conns::init_loaded(&mut ebpf)
        .map_err(GateError::step("write the established table's header"))?;
    Ok(ebpf)
}

/// The pin directory of a gate attached to `iface`, after the checks every
/// command against an attached gate makes: root, bpffs, and the pins there.
pub(super) fn attached_dir(iface: &str, netns: Option<&str>) -> Result<PathBuf, GateError> {
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
    let priority = Gate::open_dir(dir.clone())?.meta(meta::DISPATCHER_PRIORITY)?;
    if priority != 0 {
        return replace_in_dispatcher(iface, &dir, (priority - 1) as u32);
    }
    let mut ebpf = load(&dir, None, false)?;
    load_programs(&mut ebpf, false)?;

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
    pin_tally(&mut ebpf, &dir)?;
    // The new programs mark the filter now; a filter made just now (the
    // old gate had none) becomes usable with this first build.
    Gate::open_dir(dir.clone())?.rebuild_known()?;
    Ok(dir)
}

/// [`replace`] for a gate in libxdp's dispatcher: the new XDP program takes
/// the old one's slot in a new dispatcher that keeps every neighbour, swapped
/// onto the hook at once, so none of them stops for a packet.
fn replace_in_dispatcher(iface: &str, dir: &Path, priority: u32) -> Result<PathBuf, GateError> {
    let mut ebpf = load(dir, None, true)?;
    load_programs(&mut ebpf, true)?;
    swap_egress(tc_program(&mut ebpf), dir, iface)?;
    let swapped = fail_point("replace-xdp")
        .and_then(|()| super::multiprog::swap(&mut ebpf, dir, iface, priority));
    if let Err(e) = swapped {
        let mut old = SchedClassifier::from_pin(dir.join(pins::TC_PROG)).map_err(
            GateError::step("open the old TC egress program to put it back"),
        )?;
        swap_egress(&mut old, dir, iface)?;
        return Err(e);
    }
    std::fs::remove_file(dir.join(pins::TC_PROG))
        .map_err(GateError::step("unpin the old TC egress program"))?;
    tc_program(&mut ebpf)
        .pin(dir.join(pins::TC_PROG))
        .map_err(GateError::step("pin the new TC egress program"))?;
    pin_tally(&mut ebpf, dir)?;
    Gate::open_dir(dir.to_path_buf())?.rebuild_known()?;
    Ok(dir.to_path_buf())
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
/// expect: each present (but for the [`OPTIONAL_MAPS`]), of the same type,
/// key and value sizes (and, but for the established map, which
/// `--max-connections` sizes, capacity), and made under the same
/// [`LAYOUT_VERSION`].
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
        if OPTIONAL_MAPS.contains(&name) && !dir.join(name).exists() {
            continue;
        }
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
        if !SIZED_MAPS.contains(&name) && have.max_entries() != want.max_entries() {
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

/// Loads the programs into the kernel (through the verifier); the XDP
/// program, an extension for a dispatcher, only later and there.
fn load_programs(ebpf: &mut Ebpf, extension: bool) -> Result<(), GateError> {
    if !extension {
        xdp_program(ebpf).load().map_err(|e| verifier("XDP", e))?;
    }
    tc_program(ebpf)
        .load()
        .map_err(|e| verifier("TC egress", e))?;
    tally_program(ebpf)
        .load()
        .map_err(|e| verifier("counting", e))
}

/// Pins the counting program in `dir`, in place of one pinned there before.
fn pin_tally(ebpf: &mut Ebpf, dir: &Path) -> Result<(), GateError> {
    let pin = dir.join(pins::TALLY_PROG);
    if pin.exists() {
        std::fs::remove_file(&pin).map_err(GateError::step("unpin the old counting program"))?;
    }
    tally_program(ebpf)
        .pin(pin)
        .map_err(GateError::step("pin the counting program"))
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
    if Gate::open_dir(dir.clone())?.meta(meta::DISPATCHER_PRIORITY)? != 0 {
        notes.extend(super::multiprog::leave(&dir, iface)?);
    } else {
        unpin_link(&dir.join(pins::XDP_LINK), "XDP")?;
    }
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
