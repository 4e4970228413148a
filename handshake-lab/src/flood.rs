//! A bounded SYN flood sender: raw IP sockets, several threads, packets
//! handed to the kernel in batches of [`BATCH`] with `sendmmsg`, spoofed
//! sources drawn only from 198.18.0.0/15 and 2001:db8::/32, bounded in
//! packet count and time.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use socket2::{Domain, Protocol, Socket, Type};

use crate::Netns;

/// Where the flood's source addresses come from.
#[derive(Clone, Debug)]
pub enum Sources {
    /// One address (a real-address flood).
    One(IpAddr),
    /// `count` consecutive addresses from `first` (a spoofed flood).
    Range { first: IpAddr, count: u32 },
}

impl Sources {
    fn pick(&self, i: u64) -> IpAddr {
        match *self {
            Sources::One(a) => a,
            Sources::Range {
                first: IpAddr::V4(a),
                count,
            } => IpAddr::V4(Ipv4Addr::from(u32::from(a) + (i % count as u64) as u32)),
            Sources::Range {
                first: IpAddr::V6(a),
                count,
            } => IpAddr::V6(Ipv6Addr::from(u128::from(a) + (i % count as u64) as u128)),
        }
    }

    /// The first address.
    pub fn first(&self) -> IpAddr {
        self.pick(0)
    }

    /// The last address.
    pub fn last(&self) -> IpAddr {
        self.pick(self.count() as u64 - 1)
    }

    /// How many addresses.
    pub fn count(&self) -> u32 {
        match *self {
            Sources::One(_) => 1,
            Sources::Range { count, .. } => count.max(1),
        }
    }
}

/// Whether an address is in the ranges floods may use.
pub fn allowed(a: IpAddr) -> bool {
    match a {
        // 198.18.0.0/15
        IpAddr::V4(a) => u32::from(a) >> 17 == u32::from(Ipv4Addr::new(198, 18, 0, 0)) >> 17,
        // 2001:db8::/32
        IpAddr::V6(a) => a.segments()[..2] == [0x2001, 0x0db8],
    }
}

/// Refuses a flood that would use an address outside the ranges floods may
/// use, or that is not bounded in packets and time.
pub fn bounded(
    target: SocketAddr,
    sources: &Sources,
    count: u64,
    max_time: Duration,
) -> anyhow::Result<()> {
    for a in [target.ip(), sources.first(), sources.last()] {
        anyhow::ensure!(
            allowed(a),
            "flood address {a} is outside 198.18.0.0/15 and 2001:db8::/32"
        );
    }
    anyhow::ensure!(
        count > 0 && max_time > Duration::ZERO,
        "a flood must be bounded"
    );
    Ok(())
}

/// What a flood sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segments {
    /// SYNs: a SYN flood.
    Syn,
    /// ACKs with numbers that belong to no connection: an ACK flood.
    Ack,
    /// Half SYNs, half such ACKs.
    Mixed,
}

/// A flood: SYNs (or ACKs) to `target` from `sources`, at most `count`
/// packets and at most `max_time`, optionally paced to `rate` packets per
/// second.
#[derive(Clone, Debug)]
pub struct Flood {
    pub segments: Segments,
    pub target: SocketAddr,
    pub sources: Sources,
    pub count: u64,
    pub max_time: Duration,
    /// Packets per second over all threads; None: as fast as possible.
    pub rate: Option<u64>,
    pub threads: usize,
}

#[derive(Clone, Debug)]
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

impl Flood {
    /// Sends the flood from inside `ns` and waits for it to finish.
    pub fn run(&self, ns: &Netns) -> anyhow::Result<FloodReport> {
        bounded(self.target, &self.sources, self.count, self.max_time)?;
        let sent = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let threads = self.threads.max(1);
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let me = self.clone();
                let sent = sent.clone();
                ns.spawn(move || me.worker(t, threads, &sent, start))
            })
            .collect();
        for h in handles {
            h.join()
                .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
        }
        Ok(FloodReport {
            sent: sent.load(Ordering::Relaxed),
            elapsed: start.elapsed(),
        })
    }

    fn worker(
        &self,
        t: usize,
        threads: usize,
        sent: &AtomicU64,
        start: Instant,
    ) -> anyhow::Result<()> {
        let domain = if self.target.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        // IPPROTO_RAW: we write the IP header ourselves (IP_HDRINCL implied).
        let sock = Socket::new(domain, Type::RAW, Some(Protocol::from(libc::IPPROTO_RAW)))?;
        let dest: socket2::SockAddr = SocketAddr::new(self.target.ip(), 0).into();
        let per_thread =
            self.count / threads as u64 + u64::from((t as u64) < self.count % threads as u64);
        let per_thread_rate = self.rate.map(|r| (r as f64 / threads as f64).max(1.0));
        let mut batch: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
        let mut i = 0;
        while i < per_thread && start.elapsed() < self.max_time {
            if let Some(r) = per_thread_rate {
                let due = start + Duration::from_secs_f64(i as f64 / r);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
            }
            batch.clear();
            let n = (per_thread - i).min(BATCH as u64);
            for j in 0..n {
                batch.push(self.packet((i + j) * threads as u64 + t as u64)?);
            }
            sent.fetch_add(send_batch(&sock, &dest, &batch), Ordering::Relaxed);
            i += n;
        }
        Ok(())
    }

    /// The `n`th segment of the flood: its source, source port and sequence
    /// (and acknowledgement) numbers all follow from `n`.
    fn packet(&self, n: u64) -> anyhow::Result<Vec<u8>> {
        let src = self.sources.pick(n);
        let sport = 1024 + (n % 60_000) as u16;
        let seq = (n as u32).wrapping_mul(2_654_435_761);
        let mut buf = Vec::with_capacity(60);
        let builder = match (src, self.target.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
            (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
            _ => anyhow::bail!("source and target families differ"),
        };
        let tcp = builder.tcp(sport, self.target.port(), seq, 64_240);
        let ack = match self.segments {
            Segments::Syn => false,
            Segments::Ack => true,
            Segments::Mixed => n % 2 == 1,
        };
        match ack {
            false => tcp.syn().write(&mut buf, &[])?,
            true => tcp
                .ack(seq.rotate_left(13) ^ 0x5bd1_e995)
                .write(&mut buf, &[])?,
        }
        Ok(buf)
    }
}

/// Packets handed to the kernel per `sendmmsg` call.
const BATCH: usize = 64;

/// Sends `packets` to `dest` with as few `sendmmsg` calls as the kernel
/// allows; returns how many it took.
fn send_batch(sock: &Socket, dest: &socket2::SockAddr, packets: &[Vec<u8>]) -> u64 {
    use std::os::fd::AsRawFd as _;
    let mut iovs: Vec<libc::iovec> = packets
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let mut msgs: Vec<libc::mmsghdr> = iovs
        .iter_mut()
        .map(|iov| {
            // SAFETY: an all-zero msghdr is a valid empty message.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = dest.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = dest.len();
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut done = 0;
    while done < msgs.len() {
        // SAFETY: every header points at a live iovec, buffer and address.
        let rc = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs[done..].as_mut_ptr(),
                (msgs.len() - done) as u32,
                0,
            )
        };
        if rc <= 0 {
            // A full queue or an unreachable neighbour: skip the rest of
            // this batch rather than spin (a flood is best effort).
            break;
        }
        done += rc as usize;
    }
    done as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_benchmark_and_documentation_ranges() {
        assert!(allowed("198.18.0.1".parse().unwrap()));
        assert!(allowed("198.19.255.255".parse().unwrap()));
        assert!(!allowed("198.20.0.1".parse().unwrap()));
        assert!(!allowed("10.0.0.1".parse().unwrap()));
        assert!(allowed("2001:db8::66".parse().unwrap()));
        assert!(!allowed("2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn ranges_cycle_within_their_count() {
        let s = Sources::Range {
            first: "198.18.100.0".parse().unwrap(),
            count: 300,
        };
        assert_eq!(s.pick(0), "198.18.100.0".parse::<IpAddr>().unwrap());
        assert_eq!(s.pick(299), "198.18.101.43".parse::<IpAddr>().unwrap());
        assert_eq!(s.pick(300), s.pick(0));
        assert_eq!(s.last(), s.pick(299));
    }
}
