//! Whether a packet's cost grows with the work: the established-data and
//! refused-SYN classes with the maps empty and again with a million tracked
//! connections and a full per-source map, and refused SYNs on every CPU at
//! once against one CPU alone (a cache line written by every refused SYN
//! would keep two CPUs from doubling the rate).

use std::time::{Duration, Instant};

use crate::median;
use aya::maps::{HashMap, MapData};
use handshake_common::{Config, SourceKey, SourceState, flow::AF_INET, maps};
use handshake_lab::packet::{Tcp, syn, tcp};
use handshake_user::testrun::{Harness, XDP_DROP, XDP_PASS};

const SRV: &str = "198.18.0.1";
const J: u32 = 1_000;
const K: u32 = 9_000;
/// Tracked connections in the full run.
pub const CONNECTIONS: u32 = 1 << 20;
/// Sources in the per-source map in the full run (its capacity).
pub const SOURCES: u32 = handshake_common::SOURCES_CAPACITY;

/// One class, empty against full.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Growth {
    pub class: &'static str,
    pub empty_ns: f64,
    pub full_ns: f64,
    pub ratio: f64,
    pub goal: f64,
}

/// Refused SYNs per second on one CPU and on every CPU at once.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Parallel {
    pub cpus: usize,
    pub one_cpu_per_s: f64,
    pub all_cpus_per_s: f64,
    pub ratio: f64,
    pub goal: f64,
}

pub struct Options {
    pub repeat: u32,
    pub calls: usize,
}

/// The steady packets of one scene: a data segment of an established
/// connection each way, and a SYN its source's cap refuses.
pub struct Scene {
    pub data: Vec<u8>,
    pub leaving: Vec<u8>,
    pub over: Vec<u8>,
}

/// Sets up in `h` one established connection (198.18.0.2:40000 to port
/// 80) and one source over its cap (`max-half-open-per-source=1`), and
/// returns the packets that meet them. Shared with the profile.
pub fn scene(h: &mut Harness) -> Scene {
    let c = syn("198.18.0.2", 40_000, SRV, 80);
    assert_eq!(h.run(&c.bytes()), XDP_PASS);
    h.run_out(&c.reverse().seg(tcp::SYN, K, Some(J + 1), 0).bytes());
    assert_eq!(h.run(&c.then_ack(K + 1).bytes()), XDP_PASS);
    let first: Tcp = syn("198.18.0.66", 1, SRV, 80);
    assert_eq!(h.run(&first.bytes()), XDP_PASS);
    let over = syn("198.18.0.66", 2, SRV, 80).bytes();
    assert_eq!(h.run(&over), XDP_DROP, "the cap refuses the second SYN");
    Scene {
        data: c.seg(0, J + 1, Some(K + 1), 100).bytes(),
        leaving: c.reverse().seg(0, K + 1, Some(J + 1), 100).bytes(),
        over,
    }
}

fn steady(h: &mut Harness, pkt: &[u8], o: &Options) -> f64 {
    median(
        (0..o.calls)
            .map(|_| h.time(maps::XDP_PROGRAM, false, pkt, o.repeat).as_nanos() as f64)
            .collect(),
    )
}

/// Fills the per-source and verified maps with `n` sources each
/// (198.18.128.0 on, verified now).
pub fn fill_sources(h: &mut Harness, n: u32) -> anyhow::Result<()> {
    let mut m: HashMap<&mut MapData, SourceKey, SourceState> =
        HashMap::try_from(h.ebpf.map_mut(maps::SOURCES).expect("SOURCES"))?;
    for i in 0..n {
        let addr = (u32::from_be_bytes([198, 18, 128, 0]) + i).to_be_bytes();
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&addr);
        m.insert(SourceKey::new(AF_INET, &a, 32), SourceState::default(), 0)?;
    }
    let mut v: HashMap<&mut MapData, SourceKey, u64> =
        HashMap::try_from(h.ebpf.map_mut(maps::VERIFIED).expect("VERIFIED"))?;
    let now = handshake_user::monotonic_ns();
    for i in 0..n {
        let addr = (u32::from_be_bytes([198, 18, 128, 0]) + i).to_be_bytes();
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&addr);
        v.insert(SourceKey::new(AF_INET, &a, 32), now, 0)?;
    }
    // Written from here, not by packets: the filter learns them so.
    h.rebuild_known();
    Ok(())
}

pub fn run(o: &Options) -> anyhow::Result<(Vec<Growth>, Parallel)> {
    let cfg = Config {
        max_half_open_per_source: 1,
        ..Config::DEFAULT
    };
    let mut empty = Harness::sized(cfg, CONNECTIONS);
    let sc = scene(&mut empty);
    let empty_ns = [
        steady(&mut empty, &sc.data, o),
        steady(&mut empty, &sc.over, o),
    ];
    let parallel = parallel(&empty, &sc.over, o.repeat)?;
    drop(empty);

    let mut full = Harness::sized(cfg, CONNECTIONS);
    eprintln!("bench: storing {CONNECTIONS} connections and {SOURCES} sources");
    {
        let mut est: aya::maps::Array<&mut MapData, _> = aya::maps::Array::try_from(
            full.ebpf
                .map_mut(maps::ESTABLISHED_V4)
                .expect("ESTABLISHED_V4"),
        )?;
        crate::memory::fill(&mut est, 0, CONNECTIONS - 1)?;
    }
    fill_sources(&mut full, SOURCES - 1)?;
    let sc = scene(&mut full);
    let full_ns = [
        steady(&mut full, &sc.data, o),
        steady(&mut full, &sc.over, o),
    ];
    let rows = ["data, established connection", "SYN dropped over a cap"]
        .into_iter()
        .zip(empty_ns.into_iter().zip(full_ns))
        .map(|(class, (e, f))| Growth {
            class,
            empty_ns: e,
            full_ns: f,
            ratio: f / e,
            goal: 1.5,
        })
        .collect();
    Ok((rows, parallel))
}

/// The refused SYN on one CPU, then on each CPU at once (one thread pinned
/// to each, `BPF_PROG_TEST_RUN` runs where its caller runs), for a second at a time.
fn parallel(h: &Harness, pkt: &[u8], repeat: u32) -> anyhow::Result<Parallel> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // One thread per CPU in `on`, each pinned there.
    let rate = |on: &[usize]| -> f64 {
        std::thread::scope(|s| {
            let workers: Vec<_> = on
                .iter()
                .map(|&cpu| {
                    s.spawn(move || {
                        let mut set = nix::sched::CpuSet::new();
                        let _ = set.set(cpu);
                        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set);
                        let (start, mut runs) = (Instant::now(), 0u64);
                        while start.elapsed() < Duration::from_secs(1) {
                            h.time_shared(maps::XDP_PROGRAM, pkt, repeat);
                            runs += u64::from(repeat);
                        }
                        runs as f64 / start.elapsed().as_secs_f64()
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap_or(0.0)).sum()
        })
    };
    // Each CPU alone and all at once, alternating, best of three each: the
    // first second also pays for warming up, a shared machine's noise only
    // ever slows a run, and CPUs of a VM need not be equally fast (one CPU's
    // rate is the fastest one's).
    let all_cpus: Vec<usize> = (0..cpus).collect();
    let (mut one, mut all) = (0f64, 0f64);
    for _ in 0..3 {
        for &cpu in &all_cpus {
            one = one.max(rate(&[cpu]));
        }
        all = all.max(rate(&all_cpus));
    }
    Ok(Parallel {
        cpus,
        one_cpu_per_s: one,
        all_cpus_per_s: all,
        ratio: all / one,
        goal: 1.8,
    })
}
