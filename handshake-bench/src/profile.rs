//! Where each class's nanoseconds go: `perf record` (the `cpu-clock`
//! software event, which needs no hardware counters) samples this process
//! while `BPF_PROG_TEST_RUN` repeats one packet of the class through the
//! real program, and `perf report` splits the samples by symbol. With
//! `net.core.bpf_jit_kallsyms=1` every BPF function (the program, each
//! `inline(never)` stage, each global `gate_*` function) has a symbol of
//! its own; the helpers the programs call (map lookups, the clock, the
//! socket lookup) are kernel functions, and what the no-op's profile also
//! shows is the harness (the test-run loop and its timer).
//!
//! A share times the class's measured cost is that symbol's nanoseconds
//! per packet. Map lookups of different maps share one kernel function, so
//! the table says how many lookups each class makes.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use handshake_common::{Config, maps};
use handshake_user::testrun::Harness;

const SRV: &str = "198.18.0.1";

/// One symbol's part of a class's cost.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Share {
    pub symbol: String,
    /// `program` (BPF code), `harness` (also in the no-op's profile) or
    /// `kernel` (a helper or what it calls).
    pub kind: &'static str,
    pub percent: f64,
    pub ns: f64,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct ClassProfile {
    pub class: &'static str,
    pub program: &'static str,
    /// What the class does, in lookups and helper calls.
    pub path: &'static str,
    pub ns: f64,
    pub baseline_ns: f64,
    pub shares: Vec<Share>,
}

/// Why a profile could not be taken (no perf), or the profiles.
pub fn run(repeat: u32) -> anyhow::Result<Vec<ClassProfile>> {
    anyhow::ensure!(
        Command::new("perf")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success()),
        "perf is not installed (cargo xtask setup installs linux-perf)"
    );
    let _ = std::fs::write("/proc/sys/net/core/bpf_jit_kallsyms", "1");
    let dir = std::env::temp_dir().join(format!("handshake-profile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let out = profiles(&dir, repeat);
    let _ = std::fs::remove_dir_all(&dir);
    out
}

fn profiles(dir: &Path, repeat: u32) -> anyhow::Result<Vec<ClassProfile>> {
    let mut h = Harness::new(Config {
        max_half_open_per_source: 1,
        ..Config::DEFAULT
    });
    let udp = handshake_lab::packet::udp("198.18.0.2", SRV);
    let noop = sample(dir, "noop", &mut h, maps::NOOP_XDP, false, &udp, repeat)?;
    let noop_tc = sample(dir, "noop_tc", &mut h, maps::NOOP_TC, true, &udp, repeat)?;
    let harness: Vec<String> = noop
        .1
        .iter()
        .chain(&noop_tc.1)
        .filter(|(_, p)| *p >= 1.0)
        .map(|(s, _)| s.clone())
        .collect();
    let mut out = Vec::new();
    let mut push = |class, program, path, base: f64, (ns, shares): (f64, Vec<(String, f64)>)| {
        out.push(ClassProfile {
            class,
            program,
            path,
            ns,
            baseline_ns: base,
            shares: shares
                .into_iter()
                .map(|(symbol, percent)| Share {
                    kind: if symbol.starts_with("bpf_prog_") {
                        "program"
                    } else if harness.contains(&symbol) {
                        "harness"
                    } else {
                        "kernel"
                    },
                    ns: percent / 100.0 * ns,
                    symbol,
                    percent,
                })
                .collect(),
        });
    };
    let r = sample(dir, "udp", &mut h, maps::XDP_PROGRAM, false, &udp, repeat)?;
    push("non-TCP (UDP)", "xdp", "parse", noop.0, r);

    let sc = crate::scale::scene(&mut h);
    let r = sample(
        dir,
        "syn",
        &mut h,
        maps::XDP_PROGRAM,
        false,
        &sc.over,
        repeat,
    )?;
    push(
        "SYN dropped over a cap",
        "xdp",
        "parse, the known-source filter (the source's bit set, the new tuple's clear, so neither connection map is looked in), clock, one lookup (the source's entry); refused by the source's own cap, so no shared counter and no verified lookup",
        noop.0,
        r,
    );

    let r = sample(
        dir,
        "data",
        &mut h,
        maps::XDP_PROGRAM,
        false,
        &sc.data,
        repeat,
    )?;
    push(
        "data, established connection",
        "xdp",
        "parse, the known-source filter (the source's bit set), the key, clock, one established lookup, the data fast path inline (no call)",
        noop.0,
        r,
    );
    let r = sample(
        dir,
        "data_out",
        &mut h,
        maps::TC_PROGRAM,
        true,
        &sc.leaving,
        repeat,
    )?;
    push(
        "data, established connection, leaving",
        "tc",
        "parse, the key, clock, one established lookup, the data fast path inline (no call)",
        noop_tc.0,
        r,
    );
    Ok(out)
}

/// Runs `pkt` through `program` for about a second under `perf record`;
/// the mean ns per run and the symbols' shares (percent) of the samples.
fn sample(
    dir: &Path,
    name: &str,
    h: &mut Harness,
    program: &str,
    egress: bool,
    pkt: &[u8],
    repeat: u32,
) -> anyhow::Result<(f64, Vec<(String, f64)>)> {
    // Loads the program (a baseline is loaded on first use) outside the window.
    h.time(program, egress, pkt, 1);
    let data = dir.join(format!("{name}.data"));
    let mut perf = Command::new("perf")
        .args(["record", "-q", "-e", "cpu-clock", "-F", "20000", "-o"])
        .arg(&data)
        .args(["-p", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    std::thread::sleep(Duration::from_millis(300));
    let (start, mut total, mut runs) = (Instant::now(), Duration::ZERO, 0u64);
    while start.elapsed() < Duration::from_secs(1) {
        total += h.time(program, egress, pkt, repeat) * repeat;
        runs += u64::from(repeat);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(perf.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )?;
    perf.wait()?;
    let report = Command::new("perf")
        .args([
            "report",
            "--stdio",
            "-q",
            "--sort",
            "sym",
            "--percent-limit",
            "0.5",
            "-i",
        ])
        .arg(&data)
        .stderr(Stdio::null())
        .output()?;
    anyhow::ensure!(report.status.success(), "perf report failed on {name}");
    let shares = parse_report(&String::from_utf8_lossy(&report.stdout));
    anyhow::ensure!(!shares.is_empty(), "perf recorded nothing for {name}");
    Ok((total.as_nanos() as f64 / runs as f64, shares))
}

/// `perf report --sort sym` lines: `  12.34%  [k] symbol`; kernel symbols
/// only (the harness's user space is outside the runs' time).
fn parse_report(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter_map(|l| {
            let (pct, rest) = l.trim().split_once('%')?;
            let sym = rest.trim().strip_prefix("[k]")?.trim();
            Some((sym.to_string(), pct.trim().parse().ok()?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_perf_report_lines() {
        let r = super::parse_report(
            "    41.20%  [k] bpf_prog_1a2b_handshake_in\n     3.00%  [.] main\n     7.5%  [k] __htab_map_lookup_elem\n",
        );
        assert_eq!(
            r,
            vec![
                ("bpf_prog_1a2b_handshake_in".to_string(), 41.2),
                ("__htab_map_lookup_elem".to_string(), 7.5)
            ]
        );
    }
}
