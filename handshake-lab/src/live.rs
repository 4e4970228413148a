//! A line-rate flood sender: the `flood_tx` XDP program (built with the
//! gate's programs, handed in as an ELF object) run with `BPF_PROG_RUN` and
//! `BPF_F_TEST_XDP_LIVE_FRAMES` in the client namespace. The kernel turns
//! its `XDP_TX` into a transmit out of the client's veth, so each frame
//! reaches the server's veth, and whatever runs there, without a socket, a
//! copy or a system call per packet: on one CPU it delivers some 16 million
//! frames a second into an `XDP_DROP`, where the raw-socket sender
//! ([`crate::Flood`]) tops out below one million. On veth the receiver's
//! work runs on the sending CPU, when each batch of frames is flushed.
//!
//! Each frame is written whole from a template (`handshake_common::flood`)
//! with a random source from the flood's range, a random port and sequence
//! number, and valid checksums. Sources are checked against the ranges
//! floods may use; every flood is bounded in frames and in time.
//!
//! What a sender hands over is not what a receiver sees: a veth ring that
//! overflows drops frames before any program runs. [`xdp_packets`] reads
//! what the receiver's XDP program saw.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use aya::maps::Array;
use aya::programs::{TestRun as _, TestRunAttrs, TestRunOptions, Xdp};
use handshake_common::flood::{FloodSpec, TEMPLATE_WORDS};
use handshake_common::flow::{AF_INET, AF_INET6};

use crate::flood::bounded;
use crate::{FloodReport, Lab, Netns, Segments, Sources};

/// The sender program and its map in the object.
pub const PROGRAM: &str = "flood_tx";
const SPEC_MAP: &str = "FLOOD_SPEC";
/// Frames per kernel batch (the kernel's default, NAPI's budget).
const BATCH: u32 = 64;
/// Frames per `BPF_PROG_RUN` when unpaced: large enough that the system
/// call is noise, small enough that the time bound is checked often.
const CHUNK: u64 = 1 << 16;

/// A flood of live frames from the lab's client side to its server side.
#[derive(Clone, Debug)]
pub struct LiveFlood {
    pub segments: Segments,
    pub target: SocketAddr,
    pub sources: Sources,
    /// Source ports: the first and how many (at most up to 65535).
    pub ports: (u16, u16),
    /// At most this many frames…
    pub count: u64,
    /// …and for at most this long.
    pub max_time: Duration,
    /// Frames per second; None: as fast as the CPU sends them.
    pub rate: Option<u64>,
    /// The CPU to send from (and so, on veth, to receive on).
    pub cpu: Option<usize>,
}

impl LiveFlood {
    /// A flood of `segments` to `target` from `sources`, unpaced, from
    /// ports 1024–61023, at most `count` frames and `max_time`.
    pub fn new(
        segments: Segments,
        target: SocketAddr,
        sources: Sources,
        count: u64,
        max_time: Duration,
    ) -> LiveFlood {
        LiveFlood {
            segments,
            target,
            sources,
            ports: (1024, 60_000),
            count,
            max_time,
            rate: None,
            cpu: None,
        }
    }

    /// Sends the flood from `lab`'s client namespace, `object` being the
    /// ELF object that holds [`PROGRAM`]; returns the frames handed to the
    /// kernel and the time it took.
    pub fn run(&self, lab: &Lab, object: &'static [u8]) -> anyhow::Result<FloodReport> {
        self.check()?;
        let (ifindex, client_mac) = link(&lab.client, &lab.client_if)?;
        let (_, server_mac) = link(&lab.server, &lab.server_if)?;
        let spec = self.spec(client_mac, server_mac)?;
        let me = self.clone();
        lab.client.run(move || me.send(object, spec, ifindex))
    }

    fn check(&self) -> anyhow::Result<()> {
        bounded(self.target, &self.sources, self.count, self.max_time)?;
        anyhow::ensure!(
            self.ports.1 > 0 && u32::from(self.ports.0) + u32::from(self.ports.1) <= 65_536,
            "source ports {:?} out of range",
            self.ports
        );
        Ok(())
    }

    fn spec(&self, src_mac: [u8; 6], dst_mac: [u8; 6]) -> anyhow::Result<FloodSpec> {
        let (family, src, dst, count) = match (self.sources.first(), self.target.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let (mut a, mut b) = ([0; 16], [0; 16]);
                a[..4].copy_from_slice(&s.octets());
                b[..4].copy_from_slice(&d.octets());
                (AF_INET, a, b, self.sources.count())
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                // Only the last 32 bits vary: the range must not carry out of them.
                let lo = u32::from_be_bytes(s.octets()[12..].try_into()?);
                anyhow::ensure!(
                    u64::from(lo) + u64::from(self.sources.count()) <= 1 << 32,
                    "an IPv6 source range must stay within its last 32 bits"
                );
                (AF_INET6, s.octets(), d.octets(), self.sources.count())
            }
            _ => anyhow::bail!("source and target families differ"),
        };
        let ack_share = match self.segments {
            Segments::Syn => 0,
            Segments::Ack => 256,
            Segments::Mixed => 128,
        };
        Ok(FloodSpec::new(
            family,
            src,
            count,
            self.ports.0,
            self.ports.1,
            dst,
            self.target.port(),
            src_mac,
            dst_mac,
            ack_share,
        ))
    }

    /// Runs in the client namespace.
    fn send(
        &self,
        object: &'static [u8],
        spec: FloodSpec,
        ifindex: u32,
    ) -> anyhow::Result<FloodReport> {
        if let Some(cpu) = self.cpu {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu)?;
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)?;
        }
        let mut ebpf = aya::EbpfLoader::new().load(object)?;
        Array::<_, FloodSpec>::try_from(
            ebpf.map_mut(SPEC_MAP)
                .ok_or_else(|| anyhow::anyhow!("no {SPEC_MAP} map in the flood object"))?,
        )?
        .set(0, spec, 0)?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| anyhow::anyhow!("no {PROGRAM} program in the flood object"))?
            .try_into()?;
        prog.load()?;
        let _holder = Holder::attach(prog)?;
        let mut frame = [0u8; 8 * TEMPLATE_WORDS];
        for (c, w) in frame.chunks_exact_mut(8).zip(spec.template) {
            c.copy_from_slice(&w.to_ne_bytes());
        }
        let frame = &frame[..spec.len as usize];
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&spec.len.to_ne_bytes());
        ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
        let chunk = match self.rate {
            // About a millisecond's worth per call, in whole batches.
            Some(r) => (r / 1000).clamp(u64::from(BATCH), CHUNK),
            None => CHUNK,
        };
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < self.count && start.elapsed() < self.max_time {
            if let Some(r) = self.rate {
                let due = start + Duration::from_secs_f64(sent as f64 / r as f64);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let n = chunk.min(self.count - sent);
            let opts = TestRunOptions {
                data_in: Some(frame),
                ctx_in: Some(&ctx),
                repeat: n as u32,
                attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                ..Default::default()
            };
            prog.test_run(opts)
                .map_err(|e| anyhow::anyhow!("BPF_PROG_RUN with live frames: {e}"))?;
            sent += n;
        }
        Ok(FloodReport {
            sent,
            elapsed: start.elapsed(),
        })
    }
}

/// The sender program attached (natively) to a veth pair of its own, down
/// and never sent to, for as long as the value lives. A program that is on
/// no native XDP hook is patched into the kernel's XDP dispatcher at the
/// start of every `BPF_PROG_RUN` and out at its end, each time waiting for
/// an RCU grace period: several milliseconds a call, most of a run's time
/// at any useful chunk size. Attached somewhere, it stays in, and each
/// call only takes a reference. Made and used in the namespace the calling
/// thread is in; the pair goes with the namespace at the latest.
struct Holder {
    name: String,
}

impl Holder {
    fn attach(prog: &mut Xdp) -> anyhow::Result<Holder> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "hsgf{}{}",
            std::process::id() % 100_000,
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let peer = format!("{name}p");
        crate::run(
            "ip",
            &["link", "add", &name, "type", "veth", "peer", "name", &peer],
        )?;
        let holder = Holder { name };
        // The link is owned by the program: it goes when the pair does.
        prog.attach(&holder.name, aya::programs::XdpMode::Driver)?;
        Ok(holder)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = crate::run("ip", &["link", "del", &self.name]);
    }
}

/// `spoofed_sink` (in the sender's object) on the lab's client veth, for as
/// long as the value lives: what is addressed to the spoofed ranges (a
/// spoofed flood's SYN-ACKs and resets) is dropped on arrival and counted
/// ([`xdp_packets`] of the client's veth), the real clients' packets pass.
/// A real host sends such replies off to the internet; without the sink
/// they would queue in the client namespace's stack in front of the real
/// clients' replies. With an XDP program there, the veth also takes the
/// frames a server-side `XDP_TX` sends back (cookie SYN-ACKs).
pub struct Sink {
    _ebpf: aya::Ebpf,
}

impl Sink {
    pub fn attach(lab: &Lab, object: &'static [u8]) -> anyhow::Result<Sink> {
        let iface = lab.client_if.clone();
        lab.client.run(move || {
            let mut ebpf = aya::EbpfLoader::new().load(object)?;
            let prog: &mut Xdp = ebpf
                .program_mut(SINK)
                .ok_or_else(|| anyhow::anyhow!("no {SINK} program in the flood object"))?
                .try_into()?;
            prog.load()?;
            prog.attach(&iface, aya::programs::XdpMode::Driver)?;
            Ok(Sink { _ebpf: ebpf })
        })
    }
}

/// The client side's program of the sender's object.
const SINK: &str = "spoofed_sink";

/// An interface's index and MAC address in `ns` (`ip -j link show`).
pub fn link(ns: &Netns, iface: &str) -> anyhow::Result<(u32, [u8; 6])> {
    let out = ns.ip(&["-j", "link", "show", "dev", iface])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let l = &v[0];
    let index = l["ifindex"]
        .as_u64()
        .ok_or_else(|| anyhow::anyhow!("no ifindex for {iface}: {out}"))?;
    let mac = l["address"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no address for {iface}: {out}"))?;
    let mut m = [0u8; 6];
    for (b, h) in m.iter_mut().zip(mac.split(':')) {
        *b = u8::from_str_radix(h, 16)?;
    }
    Ok((index as u32, m))
}

/// Frames the XDP program on `iface` (in `ns`) has seen, over all its
/// receive queues (`ethtool -S`: veth's `rx_queue_N_xdp_packets`).
pub fn xdp_packets(ns: &Netns, iface: &str) -> anyhow::Result<u64> {
    xdp_stat(ns, iface, "xdp_packets")
}

/// Frames the XDP program on `iface` (in `ns`) dropped
/// (`rx_queue_N_xdp_drops`).
pub fn xdp_drops(ns: &Netns, iface: &str) -> anyhow::Result<u64> {
    xdp_stat(ns, iface, "xdp_drops")
}

/// A veth receive-queue statistic, summed over the queues.
fn xdp_stat(ns: &Netns, iface: &str, stat: &str) -> anyhow::Result<u64> {
    let out = ns.exec("ethtool", &["-S", iface])?;
    let mut found = false;
    let mut total = 0;
    for l in out.lines() {
        let Some((k, v)) = l.trim().split_once(':') else {
            continue;
        };
        if k.starts_with("rx_queue_") && k.strip_suffix(stat).is_some_and(|q| q.ends_with('_')) {
            total += v.trim().parse::<u64>()?;
            found = true;
        }
    }
    anyhow::ensure!(found, "{iface} reports no {stat} counts: {out}");
    Ok(total)
}
