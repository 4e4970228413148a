//! The TCP settings of the network namespace the controller runs in, which
//! `overflow=cookie` depends on: the kernel makes a cookie for an XDP
//! program only with `net.ipv4.tcp_syncookies=2`, and reads options back
//! from a timestamp cookie only as its own settings allow. `/proc/sys/net`
//! shows the namespace of the thread that opens it, so these read and
//! write the interface's namespace once `--netns` is entered.

use std::path::{Path, PathBuf};

use handshake_common::cookie;

use crate::GateError;

const ROOT: &str = "/proc/sys/net";

pub const SYNCOOKIES: &str = "ipv4/tcp_syncookies";
pub const TIMESTAMPS: &str = "ipv4/tcp_timestamps";
const SACK: &str = "ipv4/tcp_sack";
const WINDOW_SCALING: &str = "ipv4/tcp_window_scaling";
const TCP_RMEM: &str = "ipv4/tcp_rmem";
const RMEM_MAX: &str = "core/rmem_max";

/// The dotted name, as `sysctl` writes it.
pub fn dotted(name: &str) -> String {
    format!("net.{}", name.replace('/', "."))
}

fn path(name: &str) -> PathBuf {
    Path::new(ROOT).join(name)
}

/// The whole text of a setting.
fn read_text(name: &str) -> Result<String, GateError> {
    std::fs::read_to_string(path(name)).map_err(|e| GateError::Sysctl {
        name: dotted(name),
        action: "read",
        why: e.to_string(),
    })
}

/// A setting holding one number (for several, the last).
pub fn read(name: &str) -> Result<u64, GateError> {
    let text = read_text(name)?;
    text.split_whitespace()
        .last()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| GateError::Sysctl {
            name: dotted(name),
            action: "read",
            why: format!("{:?} is not a number", text.trim()),
        })
}

pub fn write(name: &str, value: u64) -> Result<(), GateError> {
    std::fs::write(path(name), value.to_string()).map_err(|e| GateError::Sysctl {
        name: dotted(name),
        action: "write",
        why: e.to_string(),
    })?;
    // Some writes are accepted and ignored (a value out of range for this
    // kernel): read it back.
    let now = read(name)?;
    if now != value {
        return Err(GateError::Sysctl {
            name: dotted(name),
            action: "write",
            why: format!("wrote {value}, it reads back {now}"),
        });
    }
    Ok(())
}

/// Linux's default `net.core.rmem_max`.
const DEFAULT_RMEM_MAX: u64 = 212_992;

/// What the cookie SYN-ACKs may carry under the namespace's settings now.
pub fn cookie_options() -> Result<cookie::Options, GateError> {
    let timestamps = read(TIMESTAMPS)? == 2;
    // Some kernels (6.1 among them) keep `net.core.rmem_max` for the whole
    // host and show it in the host's namespace only: elsewhere its default
    // is assumed (`tcp_rmem`'s maximum, 6 MiB by default, decides unless
    // it was raised above that).
    let rmem_max = if path(RMEM_MAX).exists() {
        read(RMEM_MAX)?
    } else {
        DEFAULT_RMEM_MAX
    };
    Ok(cookie::Options {
        timestamps,
        sack: read(SACK)? != 0,
        window_scaling: read(WINDOW_SCALING)? != 0,
        rcv_wscale: cookie::Options::kernel_wscale(read(TCP_RMEM)?, rmem_max),
    })
}

/// In words, for the operator.
pub fn describe(o: &cookie::Options) -> String {
    if !o.timestamps {
        return "cookie SYN-ACKs carry the MSS only: net.ipv4.tcp_timestamps is not 2, so cookie connections have no window scaling (64 KiB in flight at most) and no SACK".into();
    }
    let mut kept = vec!["the MSS".to_string()];
    if o.window_scaling {
        kept.push(format!("window scaling (shift {})", o.rcv_wscale));
    }
    if o.sack {
        kept.push("SACK".into());
    }
    format!(
        "cookie SYN-ACKs carry {} to clients that offer timestamps; the MSS only to the rest",
        kept.join(", ")
    )
}
