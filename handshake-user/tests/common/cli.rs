//! Driving the real `handshake-gate` binary against a lab's server side.

use std::path::PathBuf;
use std::process::Command;

use handshake_lab::{Flood, Lab, Sources};
use serde_json::Value;

pub const GATE: &str = env!("CARGO_BIN_EXE_handshake-gate");

/// Runs the CLI; returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    cli_with(args, &[])
}

/// Runs the CLI with extra environment variables; returns (success, stdout, stderr).
pub fn cli_with(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    outcome(Command::new(GATE).args(args).envs(env.iter().copied()))
}

/// Runs `cmd` to its end; (success, stdout, stderr).
pub fn outcome(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn pin_dir(lab: &Lab) -> PathBuf {
    PathBuf::from(format!(
        "/sys/fs/bpf/handshake-gate/netns/{}/{}",
        lab.server.name, lab.server_if
    ))
}

/// The gate attached to the lab's server interface. Detaches (and removes
/// the pins) on drop, also when the test panics.
pub struct Attached<'a> {
    pub lab: &'a Lab,
}

impl<'a> Attached<'a> {
    pub fn new(lab: &'a Lab, settings: &[&str]) -> Attached<'a> {
        let mut args = vec!["--netns", &lab.server.name, "attach", &lab.server_if];
        for s in settings {
            args.extend(["--set", s]);
        }
        let (ok, out, err) = cli(&args);
        assert!(ok, "attach failed: {err}");
        assert!(out.contains("attached to"), "{out}");
        Attached { lab }
    }

    /// Runs a command against this gate (`--netns NS CMD IFACE ARGS…`);
    /// panics with its stderr if it fails.
    pub fn run(&self, cmd: &str, args: &[&str]) -> String {
        let mut all = vec!["--netns", &self.lab.server.name, cmd, &self.lab.server_if];
        all.extend_from_slice(args);
        let (ok, out, err) = cli(&all);
        assert!(ok, "{cmd} failed: {err}");
        out
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.run("status", &["--json"])).expect("status --json is JSON")
    }

    pub fn conns(&self) -> Vec<Value> {
        serde_json::from_str(&self.run("conns", &["--json"])).expect("conns --json is JSON")
    }
}

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        let _ = cli(&[
            "--netns",
            &self.lab.server.name,
            "detach",
            &self.lab.server_if,
        ]);
        let _ = handshake_user::pins::remove_dir(&pin_dir(self.lab));
    }
}

/// Floods `addr` with one SYN from each of `count` spoofed sources of
/// 198.19.0.0/16 (routed to the client side, answered by no one), paced
/// ([`COUNTED_RATE`]); returns how many were sent.
pub fn spoofed_flood(lab: &Lab, addr: std::net::SocketAddr, count: u32) -> u64 {
    let sources = Sources::Range {
        first: "198.19.0.0".parse().unwrap(),
        count,
    };
    flood_of(
        handshake_lab::Segments::Syn,
        lab,
        addr,
        sources,
        count.into(),
        Some(COUNTED_RATE),
    )
}

/// The pace of the floods whose every packet a test counts: unpaced, a
/// sender outruns the receiving veth's queue (256 frames) on a loaded
/// machine or in the VM, and what it drops there never reaches the gate.
const COUNTED_RATE: u64 = 10_000;

/// Floods `addr` from the lab's client namespace with `count` SYNs from
/// `sources`, as fast as it goes (10 s at most); returns how many were sent.
pub fn flood(
    lab: &Lab,
    addr: std::net::SocketAddr,
    sources: Sources,
    count: u64,
    threads: usize,
) -> u64 {
    Flood {
        segments: handshake_lab::Segments::Syn,
        target: addr,
        sources,
        count,
        max_time: std::time::Duration::from_secs(10),
        rate: None,
        threads,
    }
    .run(&lab.client)
    .expect("flood")
    .sent
}

/// A paced flood ([`COUNTED_RATE`]) of ACKs that belong to no connection:
/// random sources from 198.19.0.0/16, ports and numbers.
pub fn ack_flood(lab: &Lab, addr: std::net::SocketAddr, count: u32) -> u64 {
    let sources = Sources::Range {
        first: "198.19.0.0".parse().unwrap(),
        count,
    };
    flood_of(
        handshake_lab::Segments::Ack,
        lab,
        addr,
        sources,
        count.into(),
        Some(COUNTED_RATE),
    )
}

/// A flood of `count` `segments` to `addr` from `sources`, paced at `rate`
/// a second (or as fast as it goes); how many were sent.
pub fn flood_of(
    segments: handshake_lab::Segments,
    lab: &Lab,
    addr: std::net::SocketAddr,
    sources: Sources,
    count: u64,
    rate: Option<u64>,
) -> u64 {
    Flood {
        segments,
        target: addr,
        sources,
        count,
        max_time: std::time::Duration::from_secs(10),
        rate,
        threads: 1,
    }
    .run(&lab.client)
    .expect("flood")
    .sent
}
