//! Legitimate clients under flood: the demo's scenario (see
//! `handshake_lab::scenario`), its figures kept for the report.

use std::path::Path;
use std::time::Duration;

use handshake_lab::Lab;
use handshake_lab::scenario::{self, Load};

#[derive(Clone, Debug, serde::Serialize)]
pub struct ClientRow {
    pub phase: &'static str,
    pub returning_ok: usize,
    pub returning_of: usize,
    pub returning_p50_ms: Option<f64>,
    pub returning_p99_ms: Option<f64>,
    pub new_ok: usize,
    pub new_of: usize,
    pub new_p50_ms: Option<f64>,
    pub new_p99_ms: Option<f64>,
    pub server_syn_recv: usize,
    pub xdp_dropped: Option<u64>,
    pub spoofed_replies: u64,
}

fn ms(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() * 1e3)
}

pub fn run(gate: &Path, load: &Load) -> anyhow::Result<Vec<ClientRow>> {
    let lab = Lab::new("bcli")?;
    Ok(scenario::run_all(&lab, gate, load)?
        .into_iter()
        .map(|p| ClientRow {
            phase: p.name,
            returning_ok: p.returning.succeeded,
            returning_of: p.returning.attempted,
            returning_p50_ms: ms(p.returning.quantile(0.5)),
            returning_p99_ms: ms(p.returning.quantile(0.99)),
            new_ok: p.new.succeeded,
            new_of: p.new.attempted,
            new_p50_ms: ms(p.new.quantile(0.5)),
            new_p99_ms: ms(p.new.quantile(0.99)),
            server_syn_recv: p.syn_recv,
            xdp_dropped: p.xdp_dropped,
            spoofed_replies: p.spoofed_replies,
        })
        .collect())
}
