//! Builds the kernel programs with aya-build (nightly + bpf-linker, installed
//! by `cargo xtask setup`) so the binary embeds them. aya-build tells cargo to
//! rebuild when anything under handshake-ebpf/ changes. `AYA_BUILD_SKIP=1`
//! skips it (for tools that only need the host code to type-check).
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../handshake-ebpf");
    // The eBPF crate uses handshake-common too.
    println!(
        "cargo:rerun-if-changed={}",
        concat!(env!("CARGO_MANIFEST_DIR"), "/../handshake-common/src")
    );
    aya_build::build_ebpf(
        [Package {
            name: "handshake-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        Toolchain::default(),
    )
}
