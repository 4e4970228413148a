//! The gate beside libxdp's own tools (Debian's xdp-tools, installed by
//! `cargo xtask setup`) on the lab's server interface: each refuses a hook
//! the other holds, saying so, and nothing is left half attached. On a
//! kernel with the BPF trampoline (the VM layer's 6.1) xdp-filter sits in
//! libxdp's multi-program dispatcher; without one (this host's 6.18) libxdp
//! loads it alone. Needs root; `cargo xtask test` runs it.

mod common;

use common::xdptools::{Filter, hook_id, tool};
use common::{Attached, cli, pin_dir};
use handshake_lab::Lab;

#[test]
#[ignore = "privileged: needs root, netns, XDP and xdp-tools; run by `cargo xtask test`"]
fn the_gate_and_xdp_tools_each_refuse_a_hook_the_other_holds() {
    let lab = Lab::new("xdpi").expect("lab");
    let iface = lab.server_if.clone();

    // xdp-filter first: the gate refuses, by the holder's name and id.
    let filter = Filter::load(&lab, &[]).expect("xdp-filter load");
    let (_, status, _) = tool(&lab, &["xdp-loader", "status", &iface]);
    let id = hook_id(&lab).expect("xdp-filter put a program on the hook");
    let (ok, _, err) = cli(&["--netns", &lab.server.name, "attach", &iface]);
    assert!(!ok, "the gate attached over xdp-filter");
    assert!(
        err.contains(&format!("the XDP hook of {iface} is taken by program "))
            && err.contains(&format!("(id {id})")),
        "{err}"
    );
    // Where the kernel has a trampoline, libxdp put the filter in its
    // dispatcher, and the gate says so.
    if status.contains("xdp_dispatcher") {
        assert!(
            err.contains("\"xdp_dispatcher\"")
                && err.contains("libxdp's multi-program dispatcher")
                && err.contains("--multiprog"),
            "{err}"
        );
    }
    println!("with xdp-filter on the hook:\n{status}\nthe gate said: {err}");
    assert!(!pin_dir(&lab).exists(), "a refused attach left pins");
    assert_eq!(
        hook_id(&lab),
        Some(id),
        "the refused attach touched the hook"
    );

    // Freed, the hook takes the gate; then xdp-filter is refused, and the
    // gate stays as it was.
    drop(filter);
    assert_eq!(hook_id(&lab), None, "xdp-filter unload left a program");
    let gate = Attached::new(&lab, &[]);
    let ours = hook_id(&lab).expect("the gate's program on the hook");
    let (ok, _, err) = tool(&lab, &["xdp-filter", "load", &iface]);
    let _filter = Filter(&lab);
    assert!(!ok, "xdp-filter loaded over the gate");
    assert!(err.contains("not using a dispatcher"), "{err}");
    assert_eq!(
        hook_id(&lab),
        Some(ours),
        "xdp-filter moved the gate's program"
    );
    let s = gate.status();
    assert_eq!(s["mode"], "enforce", "{s:#}");
}
