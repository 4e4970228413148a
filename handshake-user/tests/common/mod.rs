//! Shared support for the privileged tests: a loaded (not attached) gate to
//! drive with `BPF_PROG_TEST_RUN`, and packets built with etherparse.
#![allow(
    dead_code,
    unused_imports,
    reason = "each test binary uses part of this module"
)]

pub mod cli;
pub use cli::{Attached, GATE, cli, cli_with, flood, pin_dir};

use std::net::IpAddr;

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use etherparse::{PacketBuilder, VlanId};
use handshake_common::{Config, FlowEntry, FlowKey, Reason, WindowCounter, maps, window};

pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
/// The egress program's only verdict: let the packet leave.
pub const TC_ACT_OK: u32 = 0;

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// The real programs, XDP ingress and TC egress, sharing their maps,
/// loaded but attached nowhere.
pub struct Harness {
    pub ebpf: Ebpf,
}

impl Harness {
    pub fn new(cfg: Config) -> Harness {
        let mut ebpf = EbpfLoader::new()
            .load(handshake_user::ebpf_object())
            .expect("load the BPF object");
        let xdp: &mut Xdp = ebpf
            .program_mut(maps::XDP_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        xdp.load().expect("the verifier accepts the XDP program");
        let tc: &mut SchedClassifier = ebpf
            .program_mut(maps::TC_PROGRAM)
            .unwrap()
            .try_into()
            .unwrap();
        tc.load()
            .expect("the verifier accepts the TC egress program");
        let mut h = Harness { ebpf };
        h.set(cfg);
        h
    }

    /// A harness with `settings` in its maps, as `attach` writes them.
    pub fn with(settings: &handshake_user::settings::Settings) -> Harness {
        let mut h = Harness::new(settings.config);
        let mut a: Array<_, u64> =
            Array::try_from(h.ebpf.map_mut(maps::ALLOWED_PORTS).unwrap()).unwrap();
        for (i, w) in settings.port_bitmap().into_iter().enumerate() {
            a.set(i as u32, w, 0).unwrap();
        }
        h.set(settings.config);
        h
    }

    pub fn set(&mut self, cfg: Config) {
        let mut a: Array<_, Config> =
            Array::try_from(self.ebpf.map_mut(maps::CONFIG).unwrap()).unwrap();
        a.set(0, cfg, 0).unwrap();
    }

    /// Runs one arriving packet through the XDP program; returns its action.
    pub fn run(&self, pkt: &[u8]) -> u32 {
        let xdp: &Xdp = self.program(maps::XDP_PROGRAM);
        xdp.test_run(packet(pkt))
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }

    /// Runs one leaving packet through the TC egress program; returns its action.
    pub fn run_out(&self, pkt: &[u8]) -> u32 {
        let tc: &SchedClassifier = self.program(maps::TC_PROGRAM);
        tc.test_run(packet(pkt))
            .expect("BPF_PROG_TEST_RUN")
            .return_value
    }

    fn program<'a, P>(&'a self, name: &str) -> &'a P
    where
        &'a P: TryFrom<&'a aya::programs::Program, Error = aya::programs::ProgramError>,
    {
        self.ebpf.program(name).unwrap().try_into().unwrap()
    }

    fn per_cpu_sum(&self, map: &str, r: Reason) -> u64 {
        let a: PerCpuArray<_, u64> = PerCpuArray::try_from(self.ebpf.map(map).unwrap()).unwrap();
        a.get(&(r as u32), 0).unwrap().iter().sum()
    }

    /// Arriving packets counted under `r`, summed over CPUs.
    pub fn count(&self, r: Reason) -> u64 {
        self.per_cpu_sum(maps::COUNTERS, r)
    }

    /// Leaving packets counted under `r`, summed over CPUs.
    pub fn count_out(&self, r: Reason) -> u64 {
        self.per_cpu_sum(maps::EGRESS, r)
    }

    fn flows(&self, name: &str) -> Vec<(FlowKey, FlowEntry)> {
        let m: HashMap<&MapData, FlowKey, FlowEntry> =
            HashMap::try_from(self.ebpf.map(name).unwrap()).unwrap();
        m.iter().map(Result::unwrap).collect()
    }

    pub fn half_open_entries(&self) -> Vec<FlowEntry> {
        self.flows(maps::HALF_OPEN)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    pub fn established_entries(&self) -> Vec<FlowEntry> {
        self.flows(maps::ESTABLISHED)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// The global half-open count the limits see now.
    pub fn global_half_open(&self, cfg: &Config) -> u32 {
        let a: Array<_, WindowCounter> =
            Array::try_from(self.ebpf.map(maps::GLOBAL).unwrap()).unwrap();
        let w = window::bucket_width_ns(cfg.half_open_timeout_ms);
        a.get(&0, 0)
            .unwrap()
            .live(window::epoch(handshake_user::monotonic_ns(), w))
    }
}

fn packet(pkt: &[u8]) -> TestRunOptions<'_> {
    TestRunOptions {
        data_in: Some(pkt),
        ..Default::default()
    }
}

/// A TCP segment to build.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: Option<u32>,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub payload: Vec<u8>,
    /// VLAN tags: 0, 1 or 2.
    pub vlans: usize,
}

pub fn syn(src: &str, sport: u16, dst: &str, dport: u16) -> Tcp {
    Tcp {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport,
        dport,
        seq: 1_000,
        ack: None,
        syn: true,
        fin: false,
        rst: false,
        payload: Vec::new(),
        vlans: 0,
    }
}

impl Tcp {
    /// The final ACK of the handshake (client → server).
    pub fn then_ack(&self, ack: u32) -> Tcp {
        Tcp {
            syn: false,
            seq: self.seq + 1,
            ack: Some(ack),
            ..self.clone()
        }
    }

    /// A segment from the other end of this flow.
    pub fn reverse(&self) -> Tcp {
        Tcp {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            ..self.clone()
        }
    }

    /// This flow's segment with exactly these flags (SYN, FIN, RST from
    /// `flags`; ACK when `ack` is given), seq, ack and payload length.
    pub fn seg(&self, flags: u8, seq: u32, ack: Option<u32>, payload: usize) -> Tcp {
        use handshake_common::machine::tcp;
        Tcp {
            syn: flags & tcp::SYN != 0,
            fin: flags & tcp::FIN != 0,
            rst: flags & tcp::RST != 0,
            seq,
            ack,
            payload: vec![b'x'; payload],
            ..self.clone()
        }
    }

    pub fn then_rst(&self) -> Tcp {
        Tcp {
            syn: false,
            rst: true,
            seq: self.seq + 1,
            ..self.clone()
        }
    }

    pub fn with_seq(&self, seq: u32) -> Tcp {
        Tcp {
            seq,
            ..self.clone()
        }
    }

    pub fn vlans(&self, n: usize) -> Tcp {
        Tcp {
            vlans: n,
            ..self.clone()
        }
    }

    pub fn bytes(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(SRC_MAC, DST_MAC);
        let v = |id| VlanId::try_new(id).unwrap();
        let ip = match (self.vlans, self.src, self.dst) {
            (0, IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
            (1, IpAddr::V4(s), IpAddr::V4(d)) => {
                eth.single_vlan(v(10)).ipv4(s.octets(), d.octets(), 64)
            }
            (2, IpAddr::V4(s), IpAddr::V4(d)) => {
                eth.double_vlan(v(10), v(20))
                    .ipv4(s.octets(), d.octets(), 64)
            }
            (0, IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
            (1, IpAddr::V6(s), IpAddr::V6(d)) => {
                eth.single_vlan(v(10)).ipv6(s.octets(), d.octets(), 64)
            }
            (2, IpAddr::V6(s), IpAddr::V6(d)) => {
                eth.double_vlan(v(10), v(20))
                    .ipv6(s.octets(), d.octets(), 64)
            }
            other => panic!("cannot build {other:?}"),
        };
        let mut b = ip.tcp(self.sport, self.dport, self.seq, 64_240);
        if self.syn {
            b = b.syn();
        }
        if self.fin {
            b = b.fin();
        }
        if self.rst {
            b = b.rst();
        }
        if let Some(a) = self.ack {
            b = b.ack(a);
        }
        let mut out = Vec::new();
        b.write(&mut out, &self.payload).unwrap();
        out
    }
}

/// A UDP datagram (not TCP: must pass untouched).
pub fn udp(src: &str, dst: &str) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (src.parse().unwrap(), dst.parse().unwrap()) else {
        panic!("IPv4 only")
    };
    let mut out = Vec::new();
    PacketBuilder::ethernet2(SRC_MAC, DST_MAC)
        .ipv4(s.octets(), d.octets(), 64)
        .udp(5353, 53)
        .write(&mut out, b"query")
        .unwrap();
    out
}
