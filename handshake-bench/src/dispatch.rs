//! The gate's per-packet cost inside libxdp's multi-program dispatcher next
//! to its cost alone, in the same run: the same packet through the gate's
//! XDP program, and through libxdp's dispatcher with the same program in
//! its one slot (loaded from the same object as an `freplace` extension),
//! each `repeat` times under BPF_PROG_TEST_RUN, beside the no-op. Needs a
//! kernel with the BPF trampoline: `cargo xtask bench --dispatcher` runs it
//! in the VM layer's guest.

use std::time::Duration;

use aya::EbpfLoader;
use aya::maps::Array;
use aya::programs::{Extension, TestRun as _, TestRunOptions, Xdp};
use handshake_common::{Config, maps};
use handshake_lab::packet::{syn, udp};
use handshake_user::testrun::{Harness, XDP_DROP, XDP_PASS};

use crate::median;

const SRV: &str = "198.18.0.1";

/// One packet class: the gate alone, in the dispatcher, and the no-op.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub class: &'static str,
    pub alone_ns: f64,
    pub dispatched_ns: f64,
    pub noop_ns: f64,
    /// In the dispatcher ÷ alone.
    pub ratio: f64,
    /// In the dispatcher − alone.
    pub overhead_ns: f64,
}

fn time(xdp: &Xdp, pkt: &[u8], repeat: u32) -> anyhow::Result<(u32, Duration)> {
    let r = xdp.test_run(TestRunOptions {
        data_in: Some(pkt),
        repeat,
        ..TestRunOptions::default()
    })?;
    Ok((r.return_value, r.duration))
}

pub fn run(repeat: u32, calls: usize) -> anyhow::Result<Vec<Row>> {
    // A cap of one attempt per source, so the second SYN is refused.
    let cfg = Config {
        max_half_open_per_source: 1,
        ..Config::DEFAULT
    };
    let mut alone = Harness::new(cfg);
    // The same object again, its XDP program an extension of the
    // dispatcher's slot, with its own maps set alike.
    let mut ext_obj = EbpfLoader::new()
        .extension(maps::XDP_PROGRAM)
        .load(handshake_user::ebpf_object())?;
    let mut c: Array<_, Config> = Array::try_from(ext_obj.map_mut(maps::CONFIG).unwrap())?;
    c.set(0, cfg, 0)?;
    let ext: &mut Extension = ext_obj
        .program_mut(maps::XDP_PROGRAM)
        .expect("the gate's XDP program")
        .try_into()?;
    let dispatcher = handshake_user::dispatcher::unattached(
        ext,
        handshake_user::gate::multiprog::CHAIN_CALL_ACTIONS,
    )?;
    let d: &Xdp = dispatcher
        .program(handshake_user::dispatcher::PROGRAM)
        .expect("the dispatcher")
        .try_into()?;

    let mut rows = Vec::new();
    let udp = udp("198.18.0.2", SRV);
    // Each path holds the one attempt its maps allow this source.
    let first = syn("198.18.0.66", 1, SRV, 80).bytes();
    assert_eq!(alone.run(&first), XDP_PASS);
    assert_eq!(time(d, &first, 1)?.0, XDP_PASS);
    let over = syn("198.18.0.66", 2, SRV, 80).bytes();
    for (class, pkt, want) in [
        ("non-TCP (UDP), passed on", &udp, XDP_PASS),
        ("SYN dropped over a cap", &over, XDP_DROP),
    ] {
        assert_eq!(alone.run(pkt), want, "{class}: the gate alone");
        assert_eq!(time(d, pkt, 1)?.0, want, "{class}: in the dispatcher");
        let mut a = Vec::new();
        let mut b = Vec::new();
        let mut n = Vec::new();
        for _ in 0..calls {
            a.push(alone.time(maps::XDP_PROGRAM, false, pkt, repeat).as_nanos() as f64);
            b.push(time(d, pkt, repeat)?.1.as_nanos() as f64);
            n.push(alone.time(maps::NOOP_XDP, false, pkt, repeat).as_nanos() as f64);
        }
        let (alone_ns, dispatched_ns, noop_ns) = (median(a), median(b), median(n));
        rows.push(Row {
            class,
            alone_ns,
            dispatched_ns,
            noop_ns,
            ratio: dispatched_ns / alone_ns,
            overhead_ns: dispatched_ns - alone_ns,
        });
    }
    Ok(rows)
}
