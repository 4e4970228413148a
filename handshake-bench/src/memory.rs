//! Kernel memory, from the kernel's own map accounting (`memlock:` in each
//! map's fdinfo).

use std::os::fd::{AsFd as _, AsRawFd as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use aya::maps::{Array, IterableMap as _, Map, MapData};
use handshake_common::flow::{AF_INET, tick};
use handshake_common::table::{Geometry, Header, Slot, place};
use handshake_common::{FlowEntry, FlowKey, TcpState, maps};
use handshake_lab::Lab;

#[derive(Clone, Debug, serde::Serialize)]
pub struct MapMemory {
    pub map: String,
    pub max_entries: u32,
    pub bytes: u64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Memory {
    /// Every map at the default sizes.
    pub default_maps: Vec<MapMemory>,
    pub default_total: u64,
    /// The IPv4 established map sized for 1M connections, after 100k and
    /// after 1M were stored: (connections, bytes of the map, bytes per connection).
    pub at: Vec<(u64, u64, f64)>,
}

/// The kernel's accounting of a map's memory.
pub(crate) fn memlock(map: &MapData) -> anyhow::Result<u64> {
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no memlock in the fdinfo of a map"))
}

pub(crate) fn pinned_maps(dir: &Path) -> anyhow::Result<Vec<(String, MapData)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let name = e?.file_name().to_string_lossy().into_owned();
        if name.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            v.push((name.clone(), MapData::from_pin(dir.join(&name))?));
        }
    }
    v.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(v)
}

pub(crate) struct Attached<'a> {
    pub gate: &'a Path,
    pub lab: &'a Lab,
}

impl Attached<'_> {
    fn cli(&self, args: &[&str], out: Stdio) -> anyhow::Result<()> {
        let status = Command::new(self.gate)
            .args(["--netns", &self.lab.server.name])
            .args(args)
            .stdout(out)
            .status()?;
        anyhow::ensure!(status.success(), "handshake-gate {} failed", args.join(" "));
        Ok(())
    }

    pub fn dir(&self) -> PathBuf {
        handshake_user::pins::dir(&self.lab.server_if, Some(&self.lab.server.name))
            .expect("the lab's names are plain")
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let _ = self.cli(&["detach", &self.lab.server_if], Stdio::null());
    }
}

pub(crate) fn attach<'a>(
    gate: &'a Path,
    lab: &'a Lab,
    extra: &[&str],
) -> anyhow::Result<Attached<'a>> {
    let a = Attached { gate, lab };
    let mut args = vec!["attach", &lab.server_if];
    args.extend_from_slice(extra);
    a.cli(&args, Stdio::null())?;
    Ok(a)
}

/// Stores established connections `from..to` (198.19.x.y to 198.18.0.1:80)
/// in the IPv4 established map.
pub fn fill<T: std::borrow::BorrowMut<MapData>>(
    table: &mut Array<T, Slot>,
    from: u32,
    to: u32,
) -> anyhow::Result<()> {
    let now = handshake_user::monotonic_ns();
    // The table as it is, placed into here as the programs would place
    // each key; only the slots that change are written back.
    let mut mirror: Vec<Slot> = vec![Slot::default(); table.len() as usize];
    handshake_user::batch::for_each_batch(table.map(), |batch: &[(u32, Slot)]| {
        for (i, s) in batch {
            mirror[*i as usize] = *s;
        }
        std::ops::ControlFlow::Continue(())
    })?;
    let header = Header::of_slot(&mirror[0]);
    anyhow::ensure!(header.buckets != 0, "the table has no header");
    let g = Geometry::of(&header);
    let mut written = Vec::new();
    for i in from..to {
        let mut k = FlowKey {
            family: AF_INET,
            lo_port: 80u16.to_be(),
            hi_port: (1024 + (i % 60_000) as u16).to_be(),
            ..FlowKey::default()
        };
        k.lo_addr[..4].copy_from_slice(&[198, 18, 0, 1]);
        k.hi_addr[..4]
            .copy_from_slice(&(u32::from_be_bytes([198, 19, 0, 0]) + i / 60_000).to_be_bytes());
        let mut e = FlowEntry {
            created: tick(now),
            last_seen: tick(now),
            ..FlowEntry::default()
        };
        e.set_states(TcpState::Established, TcpState::Established);
        let k = k.v4();
        let at = place(&g, &k, |i| Ok::<_, ()>(mirror[i as usize])).expect("a slot");
        mirror[at as usize] = Slot {
            key: k,
            used: 1,
            entry: e,
        };
        written.push(at);
    }
    for at in written {
        table.set(at, mirror[at as usize], 0)?;
    }
    Ok(())
}

pub fn run(gate: &Path) -> anyhow::Result<Memory> {
    let lab = Lab::new("bmem")?;
    let default_maps = {
        let a = attach(gate, &lab, &[])?;
        pinned_maps(&a.dir())?
            .iter()
            .map(|(name, m)| {
                Ok(MapMemory {
                    map: name.clone(),
                    max_entries: m.info()?.max_entries(),
                    bytes: memlock(m)?,
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    let default_total = default_maps.iter().map(|m| m.bytes).sum();

    const MILLION: u32 = 1 << 20;
    let a = attach(gate, &lab, &["--max-connections", &MILLION.to_string()])?;
    let data = MapData::from_pin(a.dir().join(maps::ESTABLISHED_V4))?;
    let mut est: Array<MapData, Slot> = Array::try_from(Map::Array(data))?;
    let mut at = Vec::new();
    let mut stored = 0;
    for n in [100_000u32, 1_000_000] {
        eprintln!("bench: storing {n} connections");
        fill(&mut est, stored, n)?;
        stored = n;
        let bytes = memlock(est.map())?;
        at.push((u64::from(n), bytes, bytes as f64 / f64::from(n)));
    }
    Ok(Memory {
        default_maps,
        default_total,
        at,
    })
}
