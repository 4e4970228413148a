use std::net::IpAddr;

use handshake_common::TcpState;
use handshake_user::gate::{Conn, Gate};
use serde_json::json;

use crate::args::ConnsArgs;
use crate::cmd::status::table;

/// `addr:port`, IPv6 in brackets.
fn addr((ip, port): (IpAddr, u16)) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

pub fn run(a: ConnsArgs, netns: Option<&str>) -> anyhow::Result<()> {
    let state = match &a.state {
        None => None,
        Some(s) => Some(TcpState::from_name(s).ok_or_else(|| {
            let names: Vec<_> = TcpState::ALL.iter().map(|s| s.name()).collect();
            anyhow::anyhow!("unknown state {s:?}: expected one of {}", names.join(", "))
        })?),
    };
    let gate = Gate::open(&a.iface, netns)?;
    let cfg = gate.config()?;
    let now = handshake_user::monotonic_ns();
    let mut conns: Vec<Conn> = gate
        .conns(&cfg, now)?
        .into_iter()
        .filter(|c| {
            state.is_none_or(|s| c.entry.client_state() == s || c.entry.server_state() == s)
        })
        .filter(|c| a.port.is_none_or(|p| c.client.1 == p || c.server.1 == p))
        .filter(|c| a.source.is_none_or(|net| net.contains(&c.client.0)))
        .collect();
    conns.sort_by_key(|c| c.entry.created_ns);
    let age_ms = |c: &Conn| now.saturating_sub(c.entry.created_ns) / 1_000_000;
    let idle_ms = |c: &Conn| now.saturating_sub(c.entry.last_seen_ns) / 1_000_000;

    if a.json {
        let out: Vec<_> = conns
            .iter()
            .map(|c| {
                json!({
                    "client": addr(c.client),
                    "server": addr(c.server),
                    "client_state": c.entry.client_state().name(),
                    "server_state": c.entry.server_state().name(),
                    "age_ms": age_ms(c),
                    "idle_ms": idle_ms(c),
                    "half_open": c.half_open,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let mut t = table(
        &[
            "client",
            "server",
            "client state",
            "server state",
            "age",
            "last seen",
        ],
        4,
    );
    for c in &conns {
        t.add_row(vec![
            addr(c.client),
            addr(c.server),
            c.entry.client_state().name().to_string(),
            c.entry.server_state().name().to_string(),
            format!("{:.1}s", age_ms(c) as f64 / 1000.0),
            format!("{:.1}s ago", idle_ms(c) as f64 / 1000.0),
        ]);
    }
    println!("{t}");
    println!("{} connection(s)", conns.len());
    Ok(())
}
