//! The handshake-gate controller library: loads the kernel programs on an
//! interface, pins them so they outlive the process, tunes their limits and
//! reads back their state.

pub mod batch;
pub mod conns;
pub mod dispatcher;
pub mod error;
pub mod gate;
pub mod hook;
pub mod metrics;
pub mod netns;
pub mod pins;
pub mod prefixes;
pub mod route;
pub mod settings;
pub mod sysctl;
pub mod testrun;

pub use error::GateError;

/// The kernel programs' ELF object, built by `build.rs` with aya-build.
pub fn ebpf_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/handshake"))
}

/// The lab's line-rate flood sender (`handshake_lab::live`), built with
/// the gate's programs but never attached by the controller.
pub fn flood_object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flood"))
}

/// The kernel's monotonic clock (the programs read its coarse variant,
/// `bpf_ktime_get_coarse_ns`, which lags it by at most a tick).
pub fn monotonic_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always readable");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}
