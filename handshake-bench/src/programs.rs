//! What loading the programs costs: the verifier's time and the
//! instructions it processed for each, and the size of what it let
//! through (translated instructions, the JIT's image). The verifier's
//! time is what every `attach`, every test harness and the VM layer pay.

use std::time::Instant;

use crate::median;
use aya::EbpfLoader;
use aya::programs::{SchedClassifier, Xdp};
use handshake_common::maps;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Program {
    pub name: &'static str,
    /// Wall time of the load (the verifier, mostly), ms, median of `loads`.
    pub load_ms: f64,
    pub loads: usize,
    /// Instructions the verifier processed (its `processed N insns`).
    pub verified_insns: Option<u32>,
    /// BPF instructions after verification (8 bytes each).
    pub xlated_insns: Option<u32>,
    /// Bytes of machine code from the JIT.
    pub jited_bytes: u32,
}

pub fn run(loads: usize) -> anyhow::Result<Vec<Program>> {
    let mut out = Vec::new();
    for name in [maps::XDP_PROGRAM, maps::TC_PROGRAM] {
        let mut times = Vec::new();
        let mut info = None;
        for _ in 0..loads {
            let mut ebpf = EbpfLoader::new().load(handshake_user::ebpf_object())?;
            let p = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow::anyhow!("no {name} in the object"))?;
            let start = Instant::now();
            let i = if name == maps::XDP_PROGRAM {
                let x: &mut Xdp = p.try_into()?;
                x.load()?;
                let took = start.elapsed();
                times.push(took.as_secs_f64() * 1e3);
                x.info()?
            } else {
                let t: &mut SchedClassifier = p.try_into()?;
                t.load()?;
                times.push(start.elapsed().as_secs_f64() * 1e3);
                t.info()?
            };
            info = Some(i);
        }
        let i = info.ok_or_else(|| anyhow::anyhow!("no load of {name}"))?;
        out.push(Program {
            name,
            load_ms: median(times),
            loads,
            verified_insns: i.verified_instruction_count(),
            xlated_insns: i.size_translated().map(|b| b / 8),
            jited_bytes: i.size_jitted(),
        });
    }
    Ok(out)
}
