//! `handshake-gate check IFACE`: a preflight that changes nothing. Each item
//! says ok, warning or error, with what to do; an error makes the exit
//! status non-zero.

use std::path::Path;

use handshake_common::{maps, prefix};
use handshake_user::gate::{known_words, v6_connections};
use handshake_user::settings::{self, Settings};
use handshake_user::{pins, sysctl};
use serde::Serialize;

use crate::args::CheckArgs;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum Level {
    Ok,
    Warning,
    Error,
}

#[derive(Debug, Serialize)]
struct Item {
    check: &'static str,
    status: Level,
    detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    fix: Option<String>,
}

fn item(check: &'static str, status: Level, detail: impl Into<String>) -> Item {
    Item {
        check,
        status,
        detail: detail.into(),
        fix: None,
    }
}

impl Item {
    fn fix(mut self, fix: impl Into<String>) -> Item {
        self.fix = Some(fix.into());
        self
    }
}

pub fn run(a: CheckArgs, netns: Option<&str>) -> anyhow::Result<()> {
    let mut items = vec![privileges(), bpffs(), btf()];
    items.extend(kernel());
    // The namespace's own view (sysctls, the interface), when it can be had.
    let entered = match netns {
        Some(ns) if nix::unistd::geteuid().is_root() => match handshake_user::netns::enter(ns) {
            Ok(()) => true,
            Err(e) => {
                items.push(item("netns", Level::Error, e.to_string()));
                false
            }
        },
        Some(_) => {
            items.push(
                item(
                    "netns",
                    Level::Error,
                    "entering a network namespace needs root",
                )
                .fix("run it with sudo"),
            );
            false
        }
        None => true,
    };
    let s = match &a.config {
        Some(path) => match settings::from_file(&Settings::default(), path) {
            Ok(s) => {
                items.push(item(
                    "config",
                    Level::Ok,
                    format!("{} parses and validates", path.display()),
                ));
                s
            }
            Err(e) => {
                items.push(
                    item("config", Level::Error, e.to_string())
                        .fix("fix the file; nothing is loaded until it validates"),
                );
                Settings::default()
            }
        },
        None => Settings::default(),
    };
    if entered {
        items.extend(interface(&a.iface, netns));
        items.extend(sysctls(&s));
    }
    items.push(memory(
        a.max_connections,
        v6_connections(a.max_connections, a.max_connections_v6),
        a.max_prefixes,
    ));

    let errors = items.iter().filter(|i| i.status == Level::Error).count();
    let warnings = items.iter().filter(|i| i.status == Level::Warning).count();
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "interface": a.iface,
                "netns": netns,
                "items": items,
                "errors": errors,
                "warnings": warnings,
            }))?
        );
    } else {
        let mut t = super::status::table(&["check", "status", "detail"], 3);
        for i in &items {
            let detail = match &i.fix {
                Some(f) => format!("{}\n→ {f}", i.detail),
                None => i.detail.clone(),
            };
            let status = match i.status {
                Level::Ok => "ok",
                Level::Warning => "warning",
                Level::Error => "error",
            };
            t.add_row(vec![i.check.to_string(), status.to_string(), detail]);
        }
        println!("{t}\n\n{errors} error(s), {warnings} warning(s)");
    }
    if errors > 0 {
        anyhow::bail!("{errors} check(s) failed");
    }
    Ok(())
}

/// Root, or the capabilities the gate needs.
fn privileges() -> Item {
    if nix::unistd::geteuid().is_root() {
        return item("privileges", Level::Ok, "root");
    }
    let caps = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0);
    let missing: Vec<&str> = [
        (39, "CAP_BPF"),
        (12, "CAP_NET_ADMIN"),
        (21, "CAP_SYS_ADMIN"),
    ]
    .into_iter()
    .filter(|(bit, _)| caps & (1 << bit) == 0)
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        item(
            "privileges",
            Level::Ok,
            "CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN",
        )
    } else {
        item(
            "privileges",
            Level::Error,
            format!("not root, and without {}", missing.join(", ")),
        )
        .fix("run it with sudo (or as the systemd unit, which has them)")
    }
}

fn bpffs() -> Item {
    match pins::require_bpffs() {
        Ok(()) => item(
            "bpffs",
            Level::Ok,
            "a BPF filesystem is mounted at /sys/fs/bpf",
        ),
        Err(e) => item("bpffs", Level::Error, e.to_string()).fix("mount -t bpf bpf /sys/fs/bpf"),
    }
}

fn btf() -> Item {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        item(
            "btf",
            Level::Ok,
            "the kernel has BTF (/sys/kernel/btf/vmlinux)",
        )
    } else {
        item(
            "btf",
            Level::Warning,
            "the kernel has no BTF: the gate loads without it, but libxdp's dispatcher (--multiprog) needs it",
        )
        .fix("a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    }
}

/// The kernel's version, and what it means here.
fn kernel() -> Vec<Item> {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let version = kernel_version();
    let at_least = |v: (u32, u32)| version >= v;
    let mut out = vec![if at_least((6, 1)) {
        item(
            "kernel",
            Level::Ok,
            format!("Linux {release} (tested: 6.1 and 6.18)"),
        )
    } else {
        item(
            "kernel",
            Level::Warning,
            format!("Linux {release}: older than the oldest kernel the gate is tested on (6.1)"),
        )
        .fix("a 6.1 or later kernel")
    }];
    out.push(item(
        "egress hook",
        Level::Ok,
        if at_least((6, 6)) {
            "a TCX link (Linux 6.6 and later)"
        } else {
            "a filter on a clsact qdisc (before Linux 6.6), removed by name on detach"
        },
    ));
    let libxdp = handshake_user::dispatcher::state_dir();
    out.push(if at_least((5, 10)) {
        item(
            "--multiprog",
            Level::Ok,
            format!(
                "the kernel has the BPF trampoline (freplace) libxdp's dispatcher needs; its state lives in {}",
                libxdp.display()
            ),
        )
    } else {
        item("--multiprog", Level::Warning, "no BPF trampoline before Linux 5.10: the gate can only take the hook alone")
    });
    out.push(if at_least((5, 3)) {
        item(
            "cookie helpers",
            Level::Ok,
            "bpf_tcp_gen_syncookie and bpf_tcp_check_syncookie (overflow=cookie, cookie ACKs)",
        )
    } else {
        item(
            "cookie helpers",
            Level::Error,
            "no SYN-cookie helpers before Linux 5.3",
        )
        .fix("a 6.1 or later kernel")
    });
    out
}

/// Drivers whose XDP runs in the driver (native), as of Linux 6.x.
const NATIVE_XDP: &[&str] = &[
    "veth",
    "virtio_net",
    "tun",
    "bonding",
    "netdevsim",
    "mlx4_en",
    "mlx5_core",
    "i40e",
    "ice",
    "ixgbe",
    "ixgbevf",
    "igb",
    "igc",
    "idpf",
    "bnxt_en",
    "nfp",
    "qede",
    "ena",
    "gve",
    "sfc",
    "hv_netvsc",
    "thunder-nicvf",
    "mvneta",
    "mvpp2",
    "stmmac",
    "fec",
    "dpaa2_eth",
    "cpsw",
    "enetc",
];

fn interface(iface: &str, netns: Option<&str>) -> Vec<Item> {
    let Ok(ifindex) = nix::net::if_::if_nametoindex(iface) else {
        return vec![
            item(
                "interface",
                Level::Error,
                format!("no interface named {iface:?}"),
            )
            .fix("check `ip link`"),
        ];
    };
    let mut out = vec![item(
        "interface",
        Level::Ok,
        format!("{iface} (index {ifindex})"),
    )];
    let attached = pins::dir(iface, netns).is_ok_and(|d| d.exists());
    out.push(match handshake_user::hook::xdp_program(ifindex) {
        Ok(None) => item("xdp hook", Level::Ok, "free"),
        Ok(Some(_)) if attached => item(
            "xdp hook",
            Level::Ok,
            "the gate is attached already (`attach --replace` upgrades it in place)",
        ),
        Ok(Some(p)) if p.is_dispatcher() => item(
            "xdp hook",
            Level::Warning,
            format!("libxdp's dispatcher holds it (program id {})", p.id),
        )
        .fix("attach with --multiprog to join it"),
        Ok(Some(p)) => item(
            "xdp hook",
            Level::Error,
            format!(
                "program {} (id {}) holds it; attach would refuse",
                p.name.as_deref().unwrap_or("?"),
                p.id
            ),
        )
        .fix(format!(
            "free it (`ip link set dev {iface} xdp off`, or `xdp-loader unload {iface} --all`), or have it in libxdp's dispatcher and use --multiprog"
        )),
        Err(e) => item("xdp hook", Level::Warning, format!("could not ask: {e}")),
    });
    out.push(match driver(iface) {
        Some(d) if NATIVE_XDP.contains(&d.as_str()) => {
            item("native xdp", Level::Ok, format!("driver {d} runs XDP natively"))
        }
        Some(d) => item(
            "native xdp",
            Level::Warning,
            format!("driver {d} is not known to run XDP natively: --mode auto falls back to generic (skb) XDP, slower"),
        )
        .fix("a NIC whose driver supports XDP, for line rate"),
        None => item("native xdp", Level::Warning, "the driver could not be read"),
    });
    out
}

/// The interface's driver, as `ethtool -i` names it.
fn driver(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    const ETHTOOL_GDRVINFO: u32 = 3;
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in req.ifr_name.iter_mut().zip(iface.bytes().take(15)) {
        *d = s as libc::c_char;
    }
    req.ifr_ifru.ifru_data = (&raw mut info).cast();
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
    if fd < 0 {
        return None;
    }
    // The request's type is the C library's: glibc's c_ulong, musl's c_int.
    #[allow(clippy::unnecessary_cast, reason = "a cast only under musl")]
    let request = libc::SIOCETHTOOL as libc::Ioctl;
    let r = unsafe { libc::ioctl(fd, request, &raw mut req) };
    unsafe { libc::close(fd) };
    if r < 0 {
        return None;
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// The TCP settings the gate's settings lean on.
fn sysctls(s: &Settings) -> Vec<Item> {
    use handshake_common::Overflow;
    let mut out = Vec::new();
    let overflow = s.config.overflow();
    match sysctl::read(sysctl::SYNCOOKIES) {
        Ok(v) => out.push(match overflow {
            Overflow::Cookie if v == 2 => item("tcp_syncookies", Level::Ok, "2, as overflow=cookie needs"),
            Overflow::Cookie => item(
                "tcp_syncookies",
                Level::Ok,
                format!("{v}: overflow=cookie sets it to 2 at attach and puts {v} back at detach"),
            ),
            Overflow::Pass if v == 0 => item(
                "tcp_syncookies",
                Level::Warning,
                "0: overflow=pass hands SYNs over the caps to a kernel that will not answer them with cookies",
            )
            .fix("sysctl net.ipv4.tcp_syncookies=1"),
            _ => item("tcp_syncookies", Level::Ok, format!("{v}")),
        }),
        Err(e) => out.push(item("tcp_syncookies", Level::Warning, e.to_string())),
    }
    match sysctl::read(sysctl::TIMESTAMPS) {
        Ok(v) => out.push(
            if overflow == Overflow::Cookie && s.config.cookie_timestamps != 0 && v != 2 {
                item(
                    "tcp_timestamps",
                    Level::Ok,
                    format!("{v}: cookie-timestamps=on sets it to 2 at attach, so cookies carry window scaling and SACK"),
                )
            } else {
                item("tcp_timestamps", Level::Ok, format!("{v}"))
            },
        ),
        Err(e) => out.push(item("tcp_timestamps", Level::Warning, e.to_string())),
    }
    out
}

/// The kernel memory the maps take at these sizes (the hash maps are
/// preallocated; the tries take memory only as prefixes are added), against
/// what is free and the memlock limit.
fn memory(max_connections: u32, max_connections_v6: u32, max_prefixes: u32) -> Item {
    let Ok(obj) = aya_obj::Object::parse(handshake_user::ebpf_object()) else {
        return item(
            "memory",
            Level::Warning,
            "could not read the programs' maps",
        );
    };
    let cpus = aya::util::nr_cpus().unwrap_or(1) as u64;
    let round8 = |v: u32| u64::from(v).div_ceil(8) * 8;
    let mut bytes = 0u64;
    for name in handshake_user::gate::MAP_NAMES {
        let Some(m) = obj.maps.get(name) else {
            continue;
        };
        let entries = u64::from(match name {
            maps::ESTABLISHED_V4 => handshake_common::table::entries(max_connections),
            maps::ESTABLISHED_V6 => max_connections_v6,
            maps::KNOWN => known_words(max_connections, max_connections_v6),
            maps::PREFIXES_V4 | maps::PREFIXES_V6 => prefix::trie_entries(max_prefixes),
            _ => m.max_entries(),
        });
        bytes += match m.map_type() {
            // Hash maps: a 48-byte element header, key and value, and a
            // 16-byte bucket for each slot rounded up to a power of two.
            1 | 5 | 9 | 10 => {
                entries * (48 + round8(m.key_size()) + round8(m.value_size()))
                    + entries.next_power_of_two() * 16
            }
            2 => entries * round8(m.value_size()),
            6 => entries * round8(m.value_size()) * cpus,
            27 => entries,
            _ => 0,
        };
    }
    let available = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemAvailable:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kb| kb * 1024);
    let mib = |b: u64| b as f64 / 1_048_576.0;
    let detail = format!(
        "the maps take about {:.0} MiB (--max-connections {max_connections}, --max-connections-v6 {max_connections_v6}, --max-prefixes {max_prefixes}; {:.1} MiB more when both prefix lists are full){}",
        mib(bytes),
        mib(u64::from(max_prefixes) * 2 * 96),
        available
            .map(|a| format!(", {:.0} MiB available", mib(a)))
            .unwrap_or_default()
    );
    // Before Linux 5.11 BPF memory counts against RLIMIT_MEMLOCK; since,
    // against the memory cgroup.
    let memcg = kernel_version() >= (5, 11);
    let memlock = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_MEMLOCK)
        .map(|(soft, _)| soft)
        .unwrap_or(u64::MAX);
    let limit = if memlock == nix::sys::resource::RLIM_INFINITY {
        "unlimited".to_string()
    } else {
        format!("{:.0} MiB", mib(memlock))
    };
    match available {
        Some(a) if bytes > a => {
            item("memory", Level::Error, detail).fix("a smaller --max-connections, or free memory")
        }
        _ if !memcg && bytes > memlock => item(
            "memory",
            Level::Error,
            format!("{detail}; this kernel counts it against RLIMIT_MEMLOCK ({limit})"),
        )
        .fix("raise it: `ulimit -l unlimited`, or LimitMEMLOCK=infinity in the unit"),
        Some(a) if bytes > a / 2 => item("memory", Level::Warning, detail)
            .fix("the maps would take over half of the available memory"),
        _ if memcg => item(
            "memory",
            Level::Ok,
            format!(
                "{detail}; charged to the memory cgroup (Linux 5.11 and later), not RLIMIT_MEMLOCK ({limit})"
            ),
        ),
        _ => item(
            "memory",
            Level::Ok,
            format!("{detail}; within RLIMIT_MEMLOCK ({limit})"),
        ),
    }
}

/// The running kernel's (major, minor) version.
fn kernel_version() -> (u32, u32) {
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}
