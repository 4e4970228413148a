//! The report: Markdown for people, JSON for programs, an SVG chart.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::clients::ClientRow;
use crate::control::Control;
use crate::flood::{Config, Meter};
use crate::memory::Memory;
use crate::packets::Cost;
use crate::profile::ClassProfile;
use crate::programs::Program;
use crate::scale::{Growth, Parallel};

#[derive(serde::Serialize)]
pub struct Report {
    pub mode: &'static str,
    pub machine: Machine,
    pub programs: Vec<Program>,
    pub profiles: Vec<ClassProfile>,
    pub packets: Vec<Cost>,
    pub growth: Vec<Growth>,
    pub parallel: Option<Parallel>,
    /// The flood table at line rate (the live-frames meter).
    pub line_rate: Option<Meter>,
    #[serde(skip)]
    pub clients_load: handshake_lab::scenario::Load,
    pub clients: Vec<ClientRow>,
    pub memory: Option<Memory>,
    pub control: Option<Control>,
    pub dispatcher: Vec<crate::dispatch::Row>,
    /// What the prefix lists cost (`crate::lists`).
    pub lists: Vec<crate::lists::Row>,
}

/// Where the figures came from.
#[derive(serde::Serialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
}

impl Machine {
    fn here() -> Machine {
        let kernel = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_string())
            })
            .unwrap_or_default();
        Machine {
            kernel,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
        }
    }
}

fn goal(ratio: f64, goal: Option<f64>) -> String {
    match goal {
        Some(g) if ratio <= g => format!("≤ {g}× — met"),
        Some(g) => format!("≤ {g}× — **not met**"),
        None => "—".into(),
    }
}

impl Report {
    pub fn new(full: bool) -> Report {
        Report {
            mode: if full { "full" } else { "quick" },
            machine: Machine::here(),
            programs: Vec::new(),
            profiles: Vec::new(),
            packets: Vec::new(),
            growth: Vec::new(),
            parallel: None,
            line_rate: None,
            clients_load: handshake_lab::scenario::Load {
                rate: 0,
                seconds: 0,
                clients: 0,
                live: None,
            },
            clients: Vec::new(),
            memory: None,
            control: None,
            dispatcher: Vec::new(),
            lists: Vec::new(),
        }
    }

    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let m = &self.machine;
        let _ = writeln!(
            s,
            "# handshake-gate benchmarks ({} run)\n\nMachine: {} CPUs ({}), Linux {}.\n",
            self.mode, m.cpus, m.cpu_model, m.kernel
        );
        self.programs_md(&mut s);
        self.profiles_md(&mut s);
        if self.packets.is_empty() {
            self.lists_md(&mut s);
            self.flood_md(&mut s);
            self.control_md(&mut s);
            self.dispatcher_md(&mut s);
            return s;
        }
        let _ = writeln!(
            s,
            "## Per-packet cost (BPF_PROG_TEST_RUN)\n\nEach class next to a no-op program of the same \
             kind (XDP or TC) measured the same way in the same run.\n\n\
             | class | program | gate ns | no-op ns | ratio | goal | method |\n|---|---|---:|---:|---:|---|---|"
        );
        for c in &self.packets {
            let _ = writeln!(
                s,
                "| {} | {} | {:.1} | {:.1} | {:.2}× | {} | {} |",
                c.class,
                c.program,
                c.ns,
                c.baseline_ns,
                c.ratio,
                goal(c.ratio, c.goal),
                c.method
            );
        }
        self.lists_md(&mut s);
        self.scale_md(&mut s);
        self.flood_md(&mut s);
        self.clients_md(&mut s);
        self.memory_md(&mut s);
        self.control_md(&mut s);
        s
    }

    fn lists_md(&self, s: &mut String) {
        let Some(none) = self.lists.first() else {
            return;
        };
        let _ = writeln!(
            s,
            "\n## What the prefix lists cost\n\nA spoofed SYN refused over the global cap and an ACK of no \
             connection (`no_conn`, after the socket lookup), neither from a listed prefix, with this many \
             deny prefixes loaded (inside the packets' own /15, /24 to /32), next to the same packets with \
             no list in the same run (BPF_PROG_TEST_RUN, medians).\n\n\
             | prefixes | SYN ns | SYN ÷ no list | ACK ns | ACK ÷ no list | no-op ns |\n\
             |---:|---:|---:|---:|---:|---:|"
        );
        for r in &self.lists {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.2}× | {:.1} | {:.2}× | {:.1} |",
                r.prefixes,
                r.syn_ns,
                r.syn_ns / none.syn_ns,
                r.ack_ns,
                r.ack_ns / none.ack_ns,
                r.noop_ns
            );
        }
    }

    fn scale_md(&self, s: &mut String) {
        if !self.growth.is_empty() {
            let _ = writeln!(
                s,
                "\n## Cost as the maps fill\n\nThe same packets with the maps empty, then with {} tracked \
                 connections and the per-source map full ({} sources).\n\n\
                 | class | empty ns | full ns | full ÷ empty | goal |\n|---|---:|---:|---:|---|",
                crate::scale::CONNECTIONS,
                crate::scale::SOURCES
            );
            for g in &self.growth {
                let _ = writeln!(
                    s,
                    "| {} | {:.1} | {:.1} | {:.2}× | {} |",
                    g.class,
                    g.empty_ns,
                    g.full_ns,
                    g.ratio,
                    goal(g.ratio, Some(g.goal))
                );
            }
        }
        if let Some(p) = &self.parallel {
            let met = if p.ratio >= p.goal {
                "met"
            } else {
                "**not met**"
            };
            let _ = writeln!(
                s,
                "\nRefused SYNs (the same source over its cap) on one CPU: {:.2} M/s; on {} CPUs at once: \
                 {:.2} M/s, {:.2}× (goal ≥ {}× — {met}).\n",
                p.one_cpu_per_s / 1e6,
                p.cpus,
                p.all_cpus_per_s / 1e6,
                p.ratio,
                p.goal
            );
        }
    }

    fn flood_md(&self, s: &mut String) {
        let Some(m) = &self.line_rate else {
            return;
        };
        let _ = writeln!(
            s,
            "\n## Floods at line rate\n\n\
             The meter: the lab's live-frames sender (an XDP program run with `BPF_PROG_RUN` and \
             `BPF_F_TEST_XDP_LIVE_FRAMES` in the client namespace, its `XDP_TX` sent out of the \
             client's veth), unpaced, pinned to CPU {cpu}, at most {frames} frames or {secs} s \
             per run, 50,000 spoofed sources and random ports, each run in a fresh lab, {runs} rounds \
             (each configuration of a flood once per round, so a slow spell of the machine falls on \
             every row alike). On veth the receiving side's work runs on the sending CPU when each batch \
             of 64 frames is flushed, so that one CPU does all of it: the absorbed rate is what \
             the server's XDP program saw (`ethtool -S`) over the run's wall time, ns per frame \
             its inverse (median of the rounds), and the floor's ns (the sender, veth and an \
             `XDP_DROP`) subtracted gives what the receiving side costs (the median of each \
             round's difference from that round's floor). Rows without an XDP program of their own carry the \
             no-op one (veth needs one to take XDP frames; it counts them). The client's veth \
             drops the backscatter (what is addressed to the spoofed ranges) with `XDP_DROP` and counts it. `spread`: (max − min) ÷ median \
             of the runs; `other CPU`: the busy share of the CPU not pinned, work that spilled \
             there and is not in the ns column.\n\n\
             | flood | configuration | Mpps absorbed | of the floor | ns / frame | ns over the floor | spread | backscatter / frame | other CPU |\n\
             |---|---|---:|---:|---:|---:|---:|---:|---:|",
            cpu = m.cpu,
            frames = m.frames,
            secs = m.seconds,
            runs = m.runs
        );
        let floor = |r: &crate::flood::Row| {
            m.rows.iter().find(|f| {
                f.config == Config::Floor && f.segments == r.segments && f.family == r.family
            })
        };
        for r in &m.rows {
            let of_floor = floor(r).map_or(f64::NAN, |f| r.mpps / f.mpps * 100.0);
            let _ = writeln!(
                s,
                "| {} {} | {} | {:.2} | {:.0}% | {:.0} | {:.0} | {:.0}% | {:.2} | {:.0}% |",
                r.family,
                r.segments,
                r.config_name,
                r.mpps,
                of_floor,
                r.ns,
                r.ns_over_floor,
                r.spread * 100.0,
                r.backscatter as f64 / r.received.max(1) as f64,
                r.other_cpu_pct
            );
        }
        // A SYN row of a configuration that should answer every SYN (the
        // kernel alone, SYNPROXY) but answered most of them not at all
        // measures a drop, not that configuration: said, and left out of
        // the ratios.
        let silent = |r: &crate::flood::Row| {
            r.segments == "SYN"
                && matches!(r.config, Config::Kernel | Config::Synproxy)
                && (r.backscatter as f64) < 0.5 * r.received as f64
        };
        for r in m.rows.iter().filter(|r| silent(r)) {
            let _ = writeln!(
                s,
                "\n**{} {}, {}: answered {} of {} SYNs** (a SYN-ACK to each was expected), so \
                 its row measures a silent drop, not the cost of answering; it is left out of the \
                 ratios below.",
                r.family, r.segments, r.config_name, r.backscatter, r.received
            );
        }
        let get = |c: Config, seg: &str, fam: &str| {
            m.rows
                .iter()
                .find(|r| r.config == c && r.segments == seg && r.family == fam && !silent(r))
        };
        let ratio =
            |a: Config, b: Config, seg: &str, fam: &str| match (get(a, seg, fam), get(b, seg, fam))
            {
                (Some(a), Some(b)) => a.ns_over_floor / b.ns_over_floor,
                _ => f64::NAN,
            };
        let _ = writeln!(s, "\nns over the floor, divided (IPv4 / IPv6):\n");
        for (what, a, b, seg) in [
            (
                "kernel alone ÷ the gate, defaults, SYN",
                Config::Kernel,
                Config::Gate,
                "SYN",
            ),
            (
                "kernel alone ÷ the gate, max-half-open=1024, SYN",
                Config::Kernel,
                Config::GateSmall,
                "SYN",
            ),
            (
                "kernel alone ÷ the gate, overflow=cookie, SYN",
                Config::Kernel,
                Config::GateCookie,
                "SYN",
            ),
            (
                "SYNPROXY ÷ the gate, defaults, SYN",
                Config::Synproxy,
                Config::Gate,
                "SYN",
            ),
            (
                "kernel alone ÷ the gate, ACK",
                Config::Kernel,
                Config::Gate,
                "ACK",
            ),
            (
                "SYNPROXY ÷ the gate, ACK",
                Config::Synproxy,
                Config::Gate,
                "ACK",
            ),
        ] {
            let _ = writeln!(
                s,
                "- {what}: **{:.1}×** / **{:.1}×**",
                ratio(a, b, seg, "IPv4"),
                ratio(a, b, seg, "IPv6")
            );
        }
        let _ = writeln!(
            s,
            "\nThe raw-socket sender (`handshake_lab::Flood`, one thread, `sendmmsg`) delivered \
             {:.2} Mpps into the same floor; the live-frames sender {:.1}× that.",
            m.raw_floor_mpps, m.live_over_raw
        );
    }

    fn programs_md(&self, s: &mut String) {
        if self.programs.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "## Loading the programs\n\nWhat every `attach` (and every test harness) pays: the load's \
             wall time, mostly the verifier's (median of {} loads), the instructions the verifier \
             processed, and the size of what it let through.\n\n\
             | program | load ms | verifier processed insns | insns after verification | JIT image bytes |\n\
             |---|---:|---:|---:|---:|",
            self.programs.first().map_or(0, |p| p.loads)
        );
        let show = |v: Option<u32>| v.map_or("–".to_string(), |v| v.to_string());
        for p in &self.programs {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {} | {} | {} |",
                p.name,
                p.load_ms,
                show(p.verified_insns),
                show(p.xlated_insns),
                p.jited_bytes
            );
        }
        let total: f64 = self.programs.iter().map(|p| p.load_ms).sum();
        let _ = writeln!(s, "\nBoth programs: {total:.0} ms (goal ≤ 150 ms).\n");
    }

    fn profiles_md(&self, s: &mut String) {
        if self.profiles.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "## Where the time goes (perf)\n\nEach class repeated for a second under `perf record -e \
             cpu-clock`; a symbol's share of the samples times the class's cost is its ns per packet. \
             `program`: the BPF code itself (each BPF function, a stage or a global `gate_*` \
             function, is its own symbol); `kernel`: the helpers it calls; `harness`: what the no-op's profile shows too (the test-run loop).\n"
        );
        for p in &self.profiles {
            let _ = writeln!(
                s,
                "### {} ({}): {:.1} ns, no-op {:.1} ns\n\nPath: {}.\n\n| symbol | kind | share | ns |\n|---|---|---:|---:|",
                p.class, p.program, p.ns, p.baseline_ns, p.path
            );
            for sh in &p.shares {
                let _ = writeln!(
                    s,
                    "| `{}` | {} | {:.1}% | {:.1} |",
                    sh.symbol, sh.kind, sh.percent, sh.ns
                );
            }
            let _ = writeln!(s);
        }
    }

    fn clients_md(&self, s: &mut String) {
        if self.clients.is_empty() {
            return;
        }
        let l = &self.clients_load;
        let _ = writeln!(
            s,
            "\n## Legitimate clients under flood\n\nThe demo's scenario: {} returning (verified) and {} \
             new clients per phase, all at once during floods of {} SYN/s for {} s from the live-frames \
             sender; connect times of those that got in. SYN-ACKs to spoofed: replies that reached \
             the spoofed addresses (from the kernel, or from XDP with overflow=cookie). The machine's \
             cost per flood SYN is the line-rate table's (the busy CPU of these runs, from \
             /proc/stat, varied more between runs than between rows).\n\n\
             | phase | returning | p50 ms | p99 ms | new | p50 ms | p99 ms | server SYN_RECV | dropped in XDP | SYN-ACKs to spoofed |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            l.clients, l.clients, l.rate, l.seconds
        );
        let f = |v: Option<f64>| v.map_or("–".into(), |v| format!("{v:.2}"));
        for c in &self.clients {
            let _ = writeln!(
                s,
                "| {} | {}/{} | {} | {} | {}/{} | {} | {} | {} | {} | {} |",
                c.phase,
                c.returning_ok,
                c.returning_of,
                f(c.returning_p50_ms),
                f(c.returning_p99_ms),
                c.new_ok,
                c.new_of,
                f(c.new_p50_ms),
                f(c.new_p99_ms),
                c.server_syn_recv,
                c.xdp_dropped.map_or("–".into(), |d| d.to_string()),
                c.spoofed_replies,
            );
        }
    }

    fn memory_md(&self, s: &mut String) {
        let Some(m) = &self.memory else { return };
        let _ = writeln!(
            s,
            "\n## Kernel memory\n\nFrom the kernel's own accounting (`memlock` in each map's fdinfo).\n\n\
             | map | entries | bytes |\n|---|---:|---:|"
        );
        for mm in &m.default_maps {
            let _ = writeln!(s, "| {} | {} | {} |", mm.map, mm.max_entries, mm.bytes);
        }
        let _ = writeln!(
            s,
            "| **total at the default sizes** | | **{}** ({:.1} MiB) |\n\n\
             With `--max-connections 1048576` (the established map preallocates every slot, so its \
             size does not change as it fills):\n\n| connections stored | established map bytes | bytes per connection |\n|---:|---:|---:|",
            m.default_total,
            m.default_total as f64 / 1_048_576.0
        );
        for (n, bytes, per) in &m.at {
            let _ = writeln!(s, "| {n} | {bytes} | {per:.0} |");
        }
    }

    fn dispatcher_md(&self, s: &mut String) {
        if self.dispatcher.is_empty() {
            return;
        }
        let _ = writeln!(
            s,
            "\n## Inside libxdp's dispatcher\n\nThe same packet through the gate's XDP program alone \
             and through libxdp's dispatcher holding it in its one slot (an `freplace` extension), \
             beside the no-op, in the same run (medians of BPF_PROG_TEST_RUN calls).\n\n\
             | class | gate alone ns | in the dispatcher ns | no-op ns | ratio | overhead ns |\n\
             |---|---:|---:|---:|---:|---:|"
        );
        for r in &self.dispatcher {
            let _ = writeln!(
                s,
                "| {} | {:.1} | {:.1} | {:.1} | {:.2}× | {:.1} |",
                r.class, r.alone_ns, r.dispatched_ns, r.noop_ns, r.ratio, r.overhead_ns
            );
        }
    }

    fn control_md(&self, s: &mut String) {
        let Some(c) = &self.control else { return };
        let _ = writeln!(
            s,
            "\n## Control plane with 1M connections\n\n\
             Each command run {} times on one gate, first with one connection stored, then with \
             {} (medians). The daemon runs, sweeping every 5 s (the default): on the full gate \
             `status` and the scrape take the count its last sweep kept; `status --fresh` counts \
             the maps in the kernel for the look; `conns` streams them.\n\n\
             | command | empty gate | 1M connections | ratio | goal |\n|---|---:|---:|---:|---|",
            c.runs, c.connections
        );
        let row = |s: &mut String, name: &str, (e, f): (f64, f64), unit: &str, goal: &str| {
            let _ = writeln!(
                s,
                "| {name} | {e:.1} {unit} | {f:.1} {unit} | {:.2}× | {goal} |",
                f / e
            );
        };
        row(s, "`status`", c.status_ms, "ms", "≤ 50 ms and ≤ 3× empty");
        row(s, "`status --fresh`", c.status_fresh_ms, "ms", "-");
        row(
            s,
            "metrics scrape (`/metrics`)",
            c.scrape_ms,
            "ms",
            "≤ 100 ms",
        );
        row(
            s,
            "`conns --json` to /dev/null",
            c.conns_json_ms,
            "ms",
            "≤ 1500 ms",
        );
        row(s, "`conns`: its first row", c.first_row_ms, "ms", "≤ 50 ms");
        row(
            s,
            "`conns --json`: peak RSS",
            c.conns_rss_mib,
            "MiB",
            "≤ 64 MiB",
        );
        let (kernel, here) = c.sweep_ms;
        let _ = writeln!(
            s,
            "\nOne sweep of the {} connections (none expired): {kernel:.1} ms in the kernel, \
             {here:.1} ms from the controller ({:.2}× the kernel's).",
            c.connections,
            here / kernel
        );
        let _ = writeln!(
            s,
            "One rebuild of the known-source filter over them: {:.1} ms in the kernel (the daemon \
             adds one to every {}th sweep).",
            c.rebuild_ms,
            handshake_user::gate::REBUILD_EVERY
        );
    }

    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::write(dir.join("report.md"), self.markdown())?;
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        if self.packets.is_empty() {
            return Ok(());
        }
        self.chart(&dir.join("packets.svg"))
    }

    /// Per-packet cost as a ratio to the no-op, one bar per class.
    fn chart(&self, path: &Path) -> anyhow::Result<()> {
        let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let n = self.packets.len() as u32;
        let top = self.packets.iter().map(|c| c.ratio).fold(1.0f64, f64::max) * 1.15;
        let labels: Vec<&str> = self.packets.iter().map(|c| c.class).collect();
        let mut chart = ChartBuilder::on(&root)
            .caption("per-packet cost, × the no-op program", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0u32..n, 0f64..top)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n as usize)
            .x_label_formatter(&|i| labels.get(*i as usize).map_or(String::new(), |s| short(s)))
            .y_desc("ratio")
            .draw()?;
        chart.draw_series(self.packets.iter().enumerate().map(|(i, c)| {
            let i = i as u32;
            Rectangle::new([(i, 0.0), (i + 1, c.ratio)], BLUE.mix(0.6).filled())
        }))?;
        chart.draw_series(self.packets.iter().enumerate().map(|(i, c)| {
            Text::new(
                format!("{:.2}×", c.ratio),
                (i as u32, c.ratio),
                ("sans-serif", 14),
            )
        }))?;
        root.present()?;
        Ok(())
    }
}

/// A class name short enough for an axis label.
fn short(s: &str) -> String {
    s.split([' ', ',']).take(2).collect::<Vec<_>>().join(" ")
}
