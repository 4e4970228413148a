//! A lab for the gate's end-to-end tests, demo and benchmarks: two network
//! namespaces joined by a veth pair, real TCP servers and clients inside them,
//! and bounded flood senders: raw sockets ([`Flood`]) and live frames at
//! line rate ([`LiveFlood`]).
//!
//! Traffic never leaves the namespaces the lab creates: addresses come from
//! 198.18.0.0/15 and 2001:db8::/32, there is no default route, and every flood
//! is bounded in packet count and time. Everything the lab creates is removed
//! when it drops, also on panic.

pub mod flood;
pub mod hold;
pub mod live;
pub mod netns;
pub mod packet;
pub mod scenario;
pub mod tcp;

pub use flood::{Flood, FloodReport, Segments, Sources};
pub use hold::{Hold, Hook, kernel_state, listening};
pub use live::LiveFlood;
pub use netns::{Lab, Netns};
pub use tcp::{ConnectReport, EchoServer, connect_each, connect_many};

/// Runs a command, failing with its stderr if it does not succeed.
pub fn run(cmd: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| anyhow::anyhow!("could not run {cmd}: {e}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
