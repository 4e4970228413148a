//! Packets for the BPF_PROG_TEST_RUN tests and benchmarks, built with
//! etherparse: Ethernet (optionally VLAN-tagged), IPv4 or IPv6, TCP or UDP.

use std::net::IpAddr;

use etherparse::{PacketBuilder, TcpOptionElement, VlanId};

const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

/// TCP flag bits, as in the header's flag byte.
pub mod tcp {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
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
    /// TCP options.
    pub options: Vec<TcpOptionElement>,
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
        options: Vec::new(),
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

    /// The options a Linux client's SYN carries: MSS 1460, SACK permitted,
    /// timestamp `tsval`, window scale 7 (in Linux's order and padding).
    pub fn linux_options(&self, tsval: u32) -> Tcp {
        use TcpOptionElement::*;
        Tcp {
            options: vec![
                MaximumSegmentSize(1460),
                SelectiveAcknowledgementPermitted,
                Timestamp(tsval, 0),
                Noop,
                WindowScale(7),
            ],
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
        let mut b = ip
            .tcp(self.sport, self.dport, self.seq, 64_240)
            .options(&self.options)
            .expect("TCP options fit in 40 bytes");
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
