//! libxdp's multi-program protocol, spoken here so that the gate can share
//! an interface's XDP hook with xdp-filter, xdp-loader and every other
//! libxdp user (xdp-tools' `lib/libxdp/protocol.org`, version 2).
//!
//! The hook holds a *dispatcher*: libxdp's own precompiled `xdp_dispatcher`
//! program (`xdp-dispatcher.o`, shipped with libxdp and loaded here as
//! libxdp loads it, its `.rodata` configuration filled in), which calls up
//! to ten stub functions `prog0`…`prog9` in turn. Each component program is
//! loaded as an `freplace` extension of one stub, in order of its run
//! priority; its return code either goes on to the next (the chain-call
//! actions) or ends the chain. The component programs and their links are
//! pinned under `/sys/fs/bpf/xdp/dispatch-IFINDEX-DID/` (`progN-prog`,
//! `progN-link`), and every change holds `flock` on `/sys/fs/bpf/xdp`.
//!
//! A change never edits a dispatcher: it builds a new one with the new set
//! of components (the ones already there attached to it a second time),
//! pins it, swaps it onto the hook atomically (`XDP_FLAGS_REPLACE`, or
//! `XDP_FLAGS_UPDATE_IF_NOEXIST` on an empty hook) and only then unpins the
//! old one. A failure before the swap leaves the old one as it was.

use std::fs::File;
use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData};
use aya::programs::{Extension, ProgramFd, ProgramInfo, Xdp, links::FdLink};
use aya::{Ebpf, EbpfLoader};

use crate::GateError;
use crate::hook::{self, program_info};

/// Component slots of a dispatcher.
pub const MAX_PROGS: usize = 10;
/// `XDP_DISPATCHER_MAGIC`: the configuration's first byte.
pub const MAGIC: u8 = 236;
/// The protocol version spoken here (libxdp 1.3's).
pub const VERSION: u8 = 2;
/// What a stub returns; always a chain-call action, so that an empty slot
/// goes on to the next.
pub const RETVAL: u32 = 31;
/// The run priority libxdp gives a program that names none.
pub const LIBXDP_DEFAULT_PRIORITY: u32 = 50;
/// The dispatcher program's name.
pub const PROGRAM: &str = "xdp_dispatcher";
/// Where the dispatcher's object is looked for: `LIBXDP_OBJECT_PATH`, as
/// libxdp looks, else where distributions install libxdp's BPF objects.
const OBJECT_DIRS: [&str; 4] = [
    "/usr/lib/x86_64-linux-gnu/bpf",
    "/usr/lib64/bpf",
    "/usr/lib/bpf",
    "/usr/local/lib/bpf",
];
const OBJECT: &str = "xdp-dispatcher.o";

/// `struct xdp_dispatcher_config` (version 2): the dispatcher's `.rodata`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub magic: u8,
    pub dispatcher_version: u8,
    pub num_progs_enabled: u8,
    pub is_xdp_frags: u8,
    pub chain_call_actions: [u32; MAX_PROGS],
    pub run_prios: [u32; MAX_PROGS],
    pub program_flags: [u32; MAX_PROGS],
}

// SAFETY: repr(C), integers only, no padding (4 bytes then u32s).
unsafe impl aya::Pod for Config {}

const _: () = assert!(size_of::<Config>() == 124);

/// One component of a dispatcher, as its configuration and pins say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The component program's kernel id and name.
    pub id: u32,
    pub name: String,
    pub priority: u32,
    /// The XDP actions that go on to the next program (a bit per action;
    /// the stub's [`RETVAL`] bit left out).
    pub chain_call_actions: u32,
    /// The flags it was loaded with (`BPF_F_XDP_HAS_FRAGS` or 0).
    pub flags: u32,
}

/// A dispatcher on an interface's hook.
#[derive(Clone, Debug)]
pub struct Dispatcher {
    pub ifindex: u32,
    /// The dispatcher program's kernel id (the `DID` of its pin directory).
    pub id: u32,
    /// The `IFLA_XDP_FLAGS` mode bit it is attached in.
    pub mode: u32,
    pub slots: Vec<Slot>,
}

impl Dispatcher {
    /// Its pin directory.
    pub fn dir(&self) -> PathBuf {
        dir(self.ifindex, self.id)
    }
}

/// What the hook of an interface holds, for the protocol.
#[derive(Clone, Debug)]
pub enum Hook {
    Empty,
    Dispatcher(Dispatcher),
    /// A program that is not a dispatcher this protocol version can change.
    Other {
        id: u32,
        name: Option<String>,
        why: String,
    },
}

/// libxdp's state directory in bpffs: `$LIBXDP_BPFFS/xdp`, by default
/// `/sys/fs/bpf/xdp`.
pub fn state_dir() -> PathBuf {
    let bpffs = std::env::var_os("LIBXDP_BPFFS").unwrap_or_else(|| "/sys/fs/bpf".into());
    Path::new(&bpffs).join("xdp")
}

/// The pin directory of dispatcher `id` on `ifindex`.
pub fn dir(ifindex: u32, id: u32) -> PathBuf {
    state_dir().join(format!("dispatch-{ifindex}-{id}"))
}

/// libxdp's lock: `flock(LOCK_EX)` on its state directory, held until
/// dropped.
pub struct Lock(#[allow(dead_code, reason = "held for its lock")] nix::fcntl::Flock<File>);

/// How long [`Lock::take`] waits for another holder (libxdp's tools hold it
/// for milliseconds).
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Lock {
    pub fn take() -> Result<Lock, GateError> {
        let dir = state_dir();
        std::fs::create_dir_all(&dir)
            .map_err(GateError::step(format!("create {}", dir.display())))?;
        let start = std::time::Instant::now();
        loop {
            let f = File::open(&dir).map_err(GateError::step(format!("open {}", dir.display())))?;
            match nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(Lock(lock)),
                Err((_, nix::errno::Errno::EWOULDBLOCK)) if start.elapsed() < LOCK_WAIT => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err((_, e)) => {
                    return Err(GateError::step(format!(
                        "take libxdp's lock on {} (another process has held it for {} s?)",
                        dir.display(),
                        LOCK_WAIT.as_secs()
                    ))(e));
                }
            }
        }
    }
}

/// Reads what the hook of `ifindex` holds; a dispatcher with its slots
/// (call it holding the [`Lock`]: its pins are read, and may be changing).
pub fn read(ifindex: u32) -> Result<Hook, GateError> {
    let Some((id, mode)) =
        hook::xdp_hook(ifindex).map_err(GateError::step("ask who holds the XDP hook"))?
    else {
        return Ok(Hook::Empty);
    };
    let info = program_info(id);
    let name = info
        .as_ref()
        .and_then(|p| p.name_as_str().map(str::to_string));
    let other = |why: &str| Hook::Other {
        id,
        name: name.clone(),
        why: why.to_string(),
    };
    let Some(info) = info else {
        return Ok(other("its program could not be read"));
    };
    if name.as_deref() != Some(PROGRAM) {
        return Ok(other("it is not using a dispatcher"));
    }
    let config = match config_of(&info) {
        Ok(c) => c,
        Err(why) => return Ok(other(&why)),
    };
    if config.magic != MAGIC || config.dispatcher_version != VERSION {
        return Ok(other(&format!(
            "a dispatcher of version {} (magic {}), not the version {VERSION} spoken here",
            config.dispatcher_version, config.magic
        )));
    }
    let n = usize::from(config.num_progs_enabled).min(MAX_PROGS);
    let d = dir(ifindex, id);
    let mut slots = Vec::with_capacity(n);
    for i in 0..n {
        let pin = d.join(format!("prog{i}-prog"));
        let p = ProgramInfo::from_pin(&pin)
            .map_err(GateError::step(format!("read {}", pin.display())))?;
        slots.push(Slot {
            id: p.id(),
            name: p.name_as_str().unwrap_or("?").to_string(),
            priority: config.run_prios[i],
            chain_call_actions: config.chain_call_actions[i] & !(1 << RETVAL),
            flags: config.program_flags[i],
        });
    }
    Ok(Hook::Dispatcher(Dispatcher {
        ifindex,
        id,
        mode,
        slots,
    }))
}

/// The configuration of a loaded dispatcher, from its one map; why not.
fn config_of(info: &ProgramInfo) -> Result<Config, String> {
    let ids = info
        .map_ids()
        .map_err(|e| format!("its maps could not be read: {e}"))?
        .unwrap_or_default();
    let [map_id] = ids[..] else {
        return Err(format!("a dispatcher has one map, this one {}", ids.len()));
    };
    let data = MapData::from_id(map_id).map_err(|e| format!("its map could not be read: {e}"))?;
    let value_size = data
        .info()
        .map_err(|e| format!("its map could not be read: {e}"))?
        .value_size() as usize;
    if value_size != size_of::<Config>() {
        return Err(format!(
            "its configuration is {value_size} bytes, not {}",
            size_of::<Config>()
        ));
    }
    let map = Map::from_map_data(data).map_err(|e| format!("its map: {e}"))?;
    let array: Array<MapData, Config> =
        Array::try_from(map).map_err(|e| format!("its map: {e}"))?;
    array
        .get(&0, 0)
        .map_err(|e| format!("its configuration could not be read: {e}"))
}

/// libxdp's dispatcher object, read from where libxdp keeps it.
fn object() -> Result<Vec<u8>, GateError> {
    let dirs: Vec<PathBuf> = match std::env::var_os("LIBXDP_OBJECT_PATH") {
        Some(p) => vec![p.into()],
        None => OBJECT_DIRS.iter().map(PathBuf::from).collect(),
    };
    for d in &dirs {
        if let Ok(b) = std::fs::read(d.join(OBJECT)) {
            return Ok(b);
        }
    }
    Err(GateError::step(format!(
        "find libxdp's dispatcher ({OBJECT} in {}; install libxdp: `apt install libxdp1`, or \
         name its directory in LIBXDP_OBJECT_PATH)",
        dirs.iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))(std::io::Error::from(std::io::ErrorKind::NotFound)))
}

/// A component of the dispatcher being built.
pub enum Member<'a> {
    /// One already in a dispatcher: its pinned program and its slot.
    Kept { slot: Slot, pin: PathBuf },
    /// A program not yet loaded: loaded here as an extension of its slot.
    New {
        ext: &'a mut Extension,
        name: String,
        priority: u32,
        chain_call_actions: u32,
    },
}

impl Member<'_> {
    fn key(&self) -> (u32, &str) {
        match self {
            Member::Kept { slot, .. } => (slot.priority, &slot.name),
            Member::New { priority, name, .. } => (*priority, name),
        }
    }
}

/// A dispatcher built and pinned, not yet on the hook.
struct Built {
    /// Keeps the dispatcher program loaded until it is on the hook.
    _ebpf: Ebpf,
    fd: ProgramFd,
    id: u32,
    dir: PathBuf,
}

/// Builds a dispatcher for `members` (sorted here by run priority, ties by
/// name, as libxdp sorts) on `ifindex`, and puts it on the hook: in place
/// of `old` (read under the same [`Lock`]), or on an empty hook. With no
/// members, takes `old` off the hook. Returns the new dispatcher's id.
pub fn install(
    _lock: &Lock,
    ifindex: u32,
    mode: u32,
    mut members: Vec<Member<'_>>,
    old: Option<&Dispatcher>,
) -> Result<Option<u32>, GateError> {
    if members.len() > MAX_PROGS {
        return Err(GateError::step("add a program to the dispatcher")(
            std::io::Error::other(format!("it holds {MAX_PROGS} programs already")),
        ));
    }
    members.sort_by(|a, b| a.key().cmp(&b.key()));
    let old_fd = match old {
        Some(d) => Some(
            program_info(d.id)
                .ok_or_else(|| {
                    GateError::step("open the dispatcher")(std::io::Error::other(
                        "it left the hook meanwhile: try again",
                    ))
                })?
                .fd()
                .map_err(GateError::step("open the dispatcher"))?,
        ),
        None => None,
    };
    let mode = old.map_or(mode, |d| d.mode);
    if members.is_empty() {
        let old = old.expect("something to remove");
        let fd = old_fd.expect("opened above");
        hook::set_xdp(ifindex, -1, Some(fd.as_fd().as_raw_fd()), mode)
            .map_err(GateError::step("take the dispatcher off the hook"))?;
        unpin(&old.dir(), old.slots.len());
        return Ok(None);
    }
    let built = build(ifindex, &mut members)?;
    let flags = mode
        | if old.is_none() {
            hook::flags::UPDATE_IF_NOEXIST
        } else {
            0
        };
    let expected = old_fd.as_ref().map(|f| f.as_fd().as_raw_fd());
    if let Err(e) = hook::set_xdp(ifindex, built.fd.as_fd().as_raw_fd(), expected, flags) {
        unpin(&built.dir, members.len());
        return Err(GateError::step(
            "put the dispatcher on the hook (did it change meanwhile? try again)",
        )(e));
    }
    if let Some(old) = old {
        unpin(&old.dir(), old.slots.len());
    }
    Ok(Some(built.id))
}

/// Loads a dispatcher for `members` (in their order) and attaches and pins
/// each of them in it; on failure nothing of it stays pinned. It is loaded
/// without XDP frags (`BPF_F_XDP_HAS_FRAGS`), whatever the members: the
/// gate's program does not handle multi-buffer packets, and the frags flag
/// of a program loaded here comes only from its section's name, which
/// libxdp's object does not give; so a dispatcher the gate leaves, whose
/// other programs all handle frags, stays without them until libxdp
/// rebuilds it.
fn build(ifindex: u32, members: &mut [Member<'_>]) -> Result<Built, GateError> {
    let mut config = Config {
        magic: MAGIC,
        dispatcher_version: VERSION,
        num_progs_enabled: members.len() as u8,
        ..Config::default()
    };
    for (i, m) in members.iter().enumerate() {
        let (chain, flags) = match m {
            Member::Kept { slot, .. } => (slot.chain_call_actions, slot.flags),
            Member::New {
                chain_call_actions, ..
            } => (*chain_call_actions, 0),
        };
        config.chain_call_actions[i] = chain | 1 << RETVAL;
        config.run_prios[i] = m.key().0;
        config.program_flags[i] = flags;
    }
    let (ebpf, fd, id) = load_dispatcher(&config)?;
    let dir = dir(ifindex, id);
    std::fs::create_dir_all(&dir).map_err(GateError::step(format!("create {}", dir.display())))?;
    let alone = members.len() == 1;
    for (i, m) in members.iter_mut().enumerate() {
        if let Err(e) = attach_member(m, &fd, &dir, i, alone) {
            unpin(&dir, i + 1);
            return Err(e);
        }
    }
    Ok(Built {
        _ebpf: ebpf,
        fd,
        id,
        dir,
    })
}

/// Loads libxdp's dispatcher with `config`: the loaded object, the
/// program's descriptor and its kernel id.
fn load_dispatcher(config: &Config) -> Result<(Ebpf, ProgramFd, u32), GateError> {
    let bytes = object()?;
    let mut ebpf = EbpfLoader::new()
        .override_global("conf", config, true)
        .load(&bytes)
        .map_err(GateError::step("load libxdp's dispatcher"))?;
    let prog: &mut Xdp = ebpf
        .program_mut(PROGRAM)
        .ok_or_else(|| {
            GateError::step("load libxdp's dispatcher")(std::io::Error::other(format!(
                "{OBJECT} has no program {PROGRAM}"
            )))
        })?
        .try_into()
        .map_err(GateError::step("load libxdp's dispatcher"))?;
    prog.load()
        .map_err(GateError::step("load libxdp's dispatcher"))?;
    let fd = prog
        .fd()
        .and_then(|f| f.try_clone().map_err(Into::into))
        .map_err(GateError::step("load libxdp's dispatcher"))?;
    let id = prog
        .info()
        .map_err(GateError::step("read the dispatcher"))?
        .id();
    Ok((ebpf, fd, id))
}

/// Attaches one member to stub `prog{i}` of the dispatcher `fd` and pins
/// its program and link in `dir`.
fn attach_member(
    m: &mut Member<'_>,
    fd: &ProgramFd,
    dir: &Path,
    i: usize,
    alone: bool,
) -> Result<(), GateError> {
    let slot = format!("prog{i}");
    // A lone program replaces the dispatcher's own function, as libxdp
    // does, so that it costs no more than the trampoline's jump; the pins
    // are named after slot 0 all the same.
    let stub = if alone {
        PROGRAM.to_string()
    } else {
        slot.clone()
    };
    let mut kept;
    let (ext, link) = match m {
        Member::Kept { pin, slot } => {
            kept = Extension::from_pin(&*pin)
                .map_err(GateError::step(format!("open {}", pin.display())))?;
            let link = kept
                .attach_to_program(fd, &stub)
                .map_err(GateError::step(format!(
                    "attach {} to the dispatcher",
                    slot.name
                )))?;
            (&mut kept, link)
        }
        Member::New { ext, name, .. } => {
            let target = fd
                .try_clone()
                .map_err(GateError::step("open the dispatcher"))?;
            ext.load(target, &stub).map_err(GateError::step(format!(
                "load {name} into the dispatcher as an freplace extension (this needs a kernel \
                 with the BPF trampoline, CONFIG_FUNCTION_TRACER; without one libxdp's tools \
                 load their programs alone, and the gate can only take the hook alone: attach \
                 without --multiprog)"
            )))?;
            let link = ext
                .attach()
                .map_err(GateError::step(format!("attach {name} to the dispatcher")))?;
            (&mut **ext, link)
        }
    };
    let link: FdLink = ext
        .take_link(link)
        .map_err(GateError::step("take the dispatcher link"))?
        .into();
    link.pin(dir.join(format!("{slot}-link")))
        .map_err(GateError::step("pin the dispatcher link"))?;
    ext.pin(dir.join(format!("{slot}-prog")))
        .map_err(GateError::step("pin the dispatcher's program"))?;
    Ok(())
}

/// libxdp's dispatcher loaded with `ext` (an extension of an object loaded
/// with [`EbpfLoader::extension`], not yet loaded itself) in its one slot,
/// attached nowhere and pinned nowhere: for running packets through it with
/// `BPF_PROG_TEST_RUN` (the benchmark of its cost). The dispatcher program
/// is [`PROGRAM`] in what is returned; `ext` holds its link.
pub fn unattached(ext: &mut Extension, chain_call_actions: u32) -> Result<Ebpf, GateError> {
    let mut config = Config {
        magic: MAGIC,
        dispatcher_version: VERSION,
        num_progs_enabled: 1,
        ..Config::default()
    };
    config.chain_call_actions[0] = chain_call_actions | 1 << RETVAL;
    config.run_prios[0] = LIBXDP_DEFAULT_PRIORITY;
    let (ebpf, fd, _) = load_dispatcher(&config)?;
    ext.load(fd, "prog0")
        .map_err(GateError::step("load the extension into the dispatcher"))?;
    ext.attach()
        .map_err(GateError::step("attach the extension to the dispatcher"))?;
    Ok(ebpf)
}

/// Removes the pins of a dispatcher's first `n` slots and its directory:
/// the links go, and with them the components' attachment to it.
fn unpin(dir: &Path, n: usize) {
    for i in 0..n {
        for what in ["link", "prog"] {
            let _ = std::fs::remove_file(dir.join(format!("prog{i}-{what}")));
        }
    }
    if let Err(e) = std::fs::remove_dir(dir) {
        log::warn!("could not remove {}: {e}", dir.display());
    }
}

/// The pin of the component program with kernel id `id` in `d`, with its
/// slot, if `d` holds it.
pub fn find(d: &Dispatcher, id: u32) -> Option<(usize, &Slot)> {
    d.slots.iter().enumerate().find(|(_, s)| s.id == id)
}

/// The members of `d` but the one with kernel id `leave`, as they are.
pub fn kept(d: &Dispatcher, leave: Option<u32>) -> Vec<Member<'static>> {
    d.slots
        .iter()
        .enumerate()
        .filter(|(_, s)| Some(s.id) != leave)
        .map(|(i, s)| Member::Kept {
            slot: s.clone(),
            pin: d.dir().join(format!("prog{i}-prog")),
        })
        .collect()
}
