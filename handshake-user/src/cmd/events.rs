use std::io::Write;
use std::os::fd::AsFd as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use handshake_common::event::FRAME_BYTES;
use pcap_file::DataLink;
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::pcapng::blocks::enhanced_packet::{EnhancedPacketBlock, EnhancedPacketOption};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};

use handshake_common::{DropEvent, Reason};
use handshake_user::gate::Gate;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde_json::json;

use crate::args::EventsArgs;

/// How long one wait for the next event lasts before the deadline is
/// checked again.
const POLL_MS: u16 = 200;

pub fn run(a: EventsArgs, netns: Option<&str>) -> anyhow::Result<()> {
    let gate = Gate::open(&a.iface, netns)?;
    let sample = gate.config()?.event_sample;
    if sample == 0 {
        eprintln!(
            "note: event-sample is 0, so no events are written; turn them on with `handshake-gate set {} event-sample=N` (one in N drops)",
            a.iface
        );
    }
    let mut ring = gate.events()?;
    let mut pcap = a
        .pcap
        .as_deref()
        .map(|p| Pcap::open(p, &a.iface))
        .transpose()?;
    // With the frames on standard output, nothing else goes there.
    let quiet = a.pcap.as_deref() == Some(std::path::Path::new("-"));
    let deadline = a.timeout.map(|s| Instant::now() + Duration::from_secs(s));
    let mut seen = 0u64;
    loop {
        while let Some(item) = ring.next() {
            let Some(e) = decode(&item) else { continue };
            if let Some(p) = pcap.as_mut() {
                p.write(&e)?;
            }
            if !quiet {
                if a.json {
                    println!("{}", to_json(&e));
                } else {
                    println!("{}", to_text(&e));
                }
            }
            seen += 1;
            if a.count.is_some_and(|n| seen >= n) {
                return Ok(());
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(());
        }
        let mut fds = [PollFd::new(ring.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(POLL_MS)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// Dropped frames as pcapng, one Enhanced Packet Block each, with the
/// event's reason and states in the block's comment; timestamps in
/// nanoseconds of the wall clock.
struct Pcap {
    w: PcapNgWriter<Box<dyn Write>>,
    /// The wall clock minus the monotonic one, ns (the events carry the latter).
    offset_ns: i128,
}

impl Pcap {
    fn open(path: &std::path::Path, iface: &str) -> anyhow::Result<Pcap> {
        let out: Box<dyn Write> = if path == std::path::Path::new("-") {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::File::create(path)
                    .with_context(|| format!("could not create {}", path.display()))?,
            )
        };
        let mut w = PcapNgWriter::new(out)?;
        w.write_pcapng_block(InterfaceDescriptionBlock {
            linktype: DataLink::ETHERNET,
            snaplen: FRAME_BYTES as u32,
            options: vec![
                InterfaceDescriptionOption::IfName(iface.to_string().into()),
                // EPB timestamps in nanoseconds.
                InterfaceDescriptionOption::IfTsResol(9),
                InterfaceDescriptionOption::IfDescription(
                    "arriving packets handshake-gate dropped, sampled (event-sample)".into(),
                ),
            ],
        })?;
        w.get_mut().flush()?;
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos() as i128;
        let offset_ns = wall - handshake_user::monotonic_ns() as i128;
        Ok(Pcap { w, offset_ns })
    }

    fn write(&mut self, e: &DropEvent) -> anyhow::Result<()> {
        let captured = usize::from(e.captured).min(FRAME_BYTES);
        let wall = (i128::from(e.time_ns) + self.offset_ns).max(0) as u64;
        self.w.write_pcapng_block(EnhancedPacketBlock {
            interface_id: 0,
            timestamp: Duration::from_nanos(wall),
            original_len: u32::from(e.wire_len).max(captured as u32),
            data: e.frame[..captured].into(),
            options: vec![EnhancedPacketOption::Comment(to_text(e).into())],
        })?;
        // Each frame as it comes, for `--pcap - | tcpdump -r -`.
        self.w.get_mut().flush()?;
        Ok(())
    }
}

/// An event from the ring's bytes (the kernel writes whole records).
fn decode(bytes: &[u8]) -> Option<DropEvent> {
    (bytes.len() >= size_of::<DropEvent>())
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DropEvent>()) })
}

fn reason(e: &DropEvent) -> &'static str {
    Reason::from_u32(e.reason.into()).map_or("unknown", |r| r.name())
}

fn state(s: Option<handshake_common::TcpState>) -> Option<&'static str> {
    s.map(|s| s.name())
}

fn endpoint(family: u8, addr: &[u8; 16], port: u16) -> Option<String> {
    let port = u16::from_be(port);
    match family {
        handshake_common::flow::AF_INET => Some(format!(
            "{}:{port}",
            std::net::Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3])
        )),
        handshake_common::flow::AF_INET6 => {
            Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(*addr)))
        }
        _ => None,
    }
}

fn to_json(e: &DropEvent) -> serde_json::Value {
    json!({
        "time_ns": e.time_ns,
        "reason": reason(e),
        "dropped": e.dropped != 0,
        "source": endpoint(e.family, &e.src_addr, e.src_port),
        "destination": endpoint(e.family, &e.dst_addr, e.dst_port),
        "destination_port": (e.family != 0).then(|| u16::from_be(e.dst_port)),
        "tcp_flags": flags(e.tcp_flags),
        "client_state": state(e.client_state()),
        "server_state": state(e.server_state()),
    })
}

fn to_text(e: &DropEvent) -> String {
    let src = endpoint(e.family, &e.src_addr, e.src_port).unwrap_or_else(|| "-".into());
    let dst = endpoint(e.family, &e.dst_addr, e.dst_port).unwrap_or_else(|| "-".into());
    let states = match (state(e.client_state()), state(e.server_state())) {
        (Some(c), Some(s)) => format!("{c}/{s}"),
        _ => "untracked".into(),
    };
    format!(
        "{:<12} {} {src} -> {dst} [{}] {states}",
        reason(e),
        if e.dropped != 0 {
            "dropped"
        } else {
            "would drop"
        },
        flags(e.tcp_flags)
    )
}

/// The TCP flags as letters, like tcpdump: S, A, F, R, P, U.
fn flags(f: u8) -> String {
    use handshake_common::machine::tcp;
    [
        (tcp::SYN, 'S'),
        (tcp::ACK, 'A'),
        (tcp::FIN, 'F'),
        (tcp::RST, 'R'),
        (tcp::PSH, 'P'),
        (tcp::URG, 'U'),
    ]
    .iter()
    .filter(|(bit, _)| f & bit != 0)
    .map(|(_, c)| *c)
    .collect()
}
