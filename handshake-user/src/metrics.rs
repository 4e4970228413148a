//! Prometheus metrics of an attached gate, read from its maps at each
//! scrape (so they are right whoever changed what, and cost nothing between
//! scrapes), in the OpenMetrics text format.
//!
//! The names (all prefixed `handshake_gate_`):
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `packets_total` | counter | `direction` (`in`: XDP, `out`: TC egress), `reason` |
//! | `dropped_total` | counter | `reason` (drop reasons only) |
//! | `connections` | gauge | `side` (`client`, `server`), `state` |
//! | `half_open` | gauge | |
//! | `limit` | gauge | `setting` (every numeric setting) |
//! | `mode` | gauge | `mode` (1 for the current one) |
//! | `overflow` | gauge | `action` (1 for the current one) |
//! | `map_entries` | gauge | `map` (`half_open`, `established`) |
//! | `map_capacity` | gauge | `map` |
//! | `prefixes` | gauge | `list` (`allow`, `deny`): prefixes on each list |
//! | `prefix_capacity` | gauge | prefixes each list may hold |
//! | `counts_age_seconds` | gauge | age of `connections` and `map_entries`: 0 when counted for the scrape, the time since the daemon's last sweep when kept from it (tables of 131,072 entries or more) |
//! | `swept_total` | counter | `map`: entries the daemon's sweeper deleted |
//! | `cookies_sent_total` | counter | SYN-ACKs with a SYN cookie sent from XDP (`overflow=cookie`) |

use handshake_common::{Reason, TcpState};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::GateError;
use crate::gate::{Gate, Snapshot};
use crate::settings::{self, KEYS};

/// The content type of what [`render`] returns.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Entries the sweeper deleted so far: (half-open, established).
pub type Swept = (u64, u64);

/// One scrape's worth of readings.
#[derive(Debug)]
struct Scrape {
    snap: Snapshot,
    /// Capacities of the half-open and established tables, both
    /// families' maps together.
    capacity: (u64, u64),
    swept: Swept,
}

/// The gate's metrics, as OpenMetrics text.
pub fn render(gate: &Gate, swept: Swept) -> Result<String, GateError> {
    let scrape = Scrape {
        snap: gate.snapshot(0, false)?,
        capacity: {
            let (h, e) = gate.map_capacity()?;
            let sum = |c: [u32; 2]| u64::from(c[0]) + u64::from(c[1]);
            (sum(h), sum(e))
        },
        swept,
    };
    let mut registry = Registry::default();
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    Ok(out)
}

fn counter<const N: usize>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = ([(&'static str, String); N], u64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn gauge<const N: usize>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = ([(&'static str, String); N], i64)>,
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Scrape {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.snap;
        let c = &s.counters;
        let by_reason = |dir: &'static str, v: &[u64; Reason::COUNT as usize]| {
            Reason::ALL
                .into_iter()
                .map(|r| {
                    (
                        [("direction", dir.to_string()), ("reason", r.name().into())],
                        v[r as usize],
                    )
                })
                .collect::<Vec<_>>()
        };
        counter(
            &mut enc,
            "handshake_gate_packets",
            "Packets seen, by direction and the reason for their verdict (in monitor mode, drop reasons count would-be drops).",
            by_reason("in", &c.packets)
                .into_iter()
                .chain(by_reason("out", &c.egress)),
        )?;
        counter(
            &mut enc,
            "handshake_gate_dropped",
            "Arriving packets actually dropped, by reason.",
            Reason::ALL
                .into_iter()
                .filter(|r| r.is_drop())
                .map(|r| ([("reason", r.name().to_string())], c.dropped[r as usize])),
        )?;
        let [client, server] = &s.states;
        let states = |side: &'static str, m: &std::collections::BTreeMap<&'static str, u64>| {
            TcpState::ALL
                .into_iter()
                .map(|st| {
                    (
                        [("side", side.to_string()), ("state", st.name().to_string())],
                        m.get(st.name()).copied().unwrap_or(0) as i64,
                    )
                })
                .collect::<Vec<_>>()
        };
        gauge(
            &mut enc,
            "handshake_gate_connections",
            "Tracked connections by the state of each side.",
            states("client", client)
                .into_iter()
                .chain(states("server", server)),
        )?;
        ConstGauge::new(i64::from(s.half_open)).encode(enc.encode_descriptor(
            "handshake_gate_half_open",
            "Half-open attempts counting against the global cap now.",
            None,
            MetricType::Gauge,
        )?)?;
        gauge(
            &mut enc,
            "handshake_gate_limit",
            "The numeric settings, by name.",
            KEYS.iter().filter_map(|k| {
                let v = k.json(&s.settings).as_i64()?;
                Some(([("setting", k.name.to_string())], v))
            }),
        )?;
        let mode = settings::mode_name(&s.settings.config);
        gauge(
            &mut enc,
            "handshake_gate_mode",
            "1 for the current mode.",
            ["off", "monitor", "enforce"]
                .into_iter()
                .map(|m| ([("mode", m.to_string())], (m == mode) as i64)),
        )?;
        let overflow = settings::overflow_name(&s.settings.config);
        gauge(
            &mut enc,
            "handshake_gate_overflow",
            "1 for the current action on a SYN over the global or per-port cap.",
            settings::OVERFLOWS
                .iter()
                .map(|a| ([("action", a.to_string())], (*a == overflow) as i64)),
        )?;
        let unknown = s.settings.config.unknown_flows().name();
        gauge(
            &mut enc,
            "handshake_gate_unknown_flows",
            "1 for the current policy for arriving segments of flows with no entry.",
            settings::UNKNOWN_FLOWS
                .iter()
                .map(|p| ([("policy", p.to_string())], (*p == unknown) as i64)),
        )?;
        let maps = |half: i64, est: i64| {
            [
                ([("map", "half_open".to_string())], half),
                ([("map", "established".to_string())], est),
            ]
        };
        gauge(
            &mut enc,
            "handshake_gate_map_entries",
            "Entries in each connection map, expired ones not yet swept included.",
            maps(s.map_entries.0 as i64, s.map_entries.1 as i64),
        )?;
        gauge(
            &mut enc,
            "handshake_gate_prefixes",
            "Prefixes on each prefix list.",
            [
                ([("list", "allow".to_string())], s.prefixes.0 as i64),
                ([("list", "deny".to_string())], s.prefixes.1 as i64),
            ],
        )?;
        ConstGauge::new(i64::from(s.prefixes.2)).encode(enc.encode_descriptor(
            "handshake_gate_prefix_capacity",
            "Prefixes each prefix list may hold.",
            None,
            MetricType::Gauge,
        )?)?;
        ConstGauge::new(s.counts_age_ns() as f64 / 1e9).encode(enc.encode_descriptor(
            "handshake_gate_counts_age_seconds",
            "How old the connection counts and map entries are: 0 when counted for this scrape, \
             the time since the daemon's last sweep when a large table's count is kept from it.",
            None,
            MetricType::Gauge,
        )?)?;
        gauge(
            &mut enc,
            "handshake_gate_map_capacity",
            "Capacity of each connection table (its IPv4 and IPv6 maps together).",
            maps(self.capacity.0 as i64, self.capacity.1 as i64),
        )?;
        counter(
            &mut enc,
            "handshake_gate_cookies_sent",
            "SYN-ACKs carrying a SYN cookie sent from XDP (overflow=cookie); they leave unseen by the egress program.",
            [(
                [("via", "xdp".to_string())],
                c.egress[Reason::Cookie as usize],
            )],
        )?;
        counter(
            &mut enc,
            "handshake_gate_swept",
            "Expired entries the daemon's sweeper deleted, by map.",
            [
                ([("map", "half_open".to_string())], self.swept.0),
                ([("map", "established".to_string())], self.swept.1),
            ],
        )?;
        Ok(())
    }
}
