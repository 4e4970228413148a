use comfy_table::{CellAlignment, Table, presets::NOTHING};
use handshake_common::Reason;
use handshake_user::gate::{self, Gate};
use handshake_user::settings::KEYS;
use serde_json::{Map, Value, json};

use crate::args::StatusArgs;

/// Sources listed under "top sources".
const TOP: usize = 5;

pub fn run(a: StatusArgs, netns: Option<&str>) -> anyhow::Result<()> {
    let gate = Gate::open(&a.iface, netns)?;
    let settings = gate.settings()?;
    let cfg = settings.config;
    let now = handshake_user::monotonic_ns();
    let counters = gate.counters()?;
    let half_open = gate.half_open_now(&cfg, now)?;
    let conns = gate.conns(&cfg, now)?;
    let [client, server] = gate::state_counts(&conns);
    let top = gate.top_sources(&cfg, now, TOP);
    let top_ports = gate.top_ports(&cfg, now, TOP)?;

    if a.json {
        let limits: Map<String, Value> = KEYS
            .iter()
            .map(|k| (k.name.to_string(), k.json(&settings)))
            .collect();
        let drops: Map<String, Value> = Reason::ALL
            .iter()
            .filter(|r| r.is_drop())
            .map(|r| (r.name().to_string(), counters.get(*r).into()))
            .collect();
        let by_reason = |v: &[u64]| -> Map<String, Value> {
            Reason::ALL
                .iter()
                .map(|r| (r.name().to_string(), v[*r as usize].into()))
                .collect()
        };
        let out = json!({
            "interface": a.iface,
            "netns": netns,
            "mode": handshake_user::settings::mode_name(&cfg),
            "limits": limits,
            "half_open": half_open,
            "states": { "client": client, "server": server },
            "drops": drops,
            "dropped_packets": counters.dropped.iter().sum::<u64>(),
            "packets": by_reason(&counters.packets),
            "egress": by_reason(&counters.egress),
            "top_sources": top.iter().map(|(s, n)| json!({"source": s, "half_open": n})).collect::<Vec<_>>(),
            "top_ports": top_ports.iter().map(|(p, n)| json!({"port": p, "half_open": n})).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    println!(
        "handshake-gate on {}{}",
        a.iface,
        netns.map(|n| format!(" (netns {n})")).unwrap_or_default()
    );
    println!();
    let mut t = table(&["limit", "value"], 2);
    for k in KEYS {
        t.add_row(vec![k.name.to_string(), k.show(&settings)]);
    }
    println!("{t}\n");

    println!("half-open now: {half_open}");
    if !top.is_empty() {
        let mut t = table(&["top source", "half-open"], 1);
        for (s, n) in &top {
            t.add_row(vec![s.clone(), n.to_string()]);
        }
        println!("{t}");
    }
    if !top_ports.is_empty() {
        let mut t = table(&["top port", "half-open"], 1);
        for (p, n) in &top_ports {
            t.add_row(vec![p.to_string(), n.to_string()]);
        }
        println!("{t}");
    }
    println!();

    let mut t = table(&["state", "client side", "server side"], 1);
    for (name, c) in &client {
        let s = server[name];
        if *c != 0 || s != 0 {
            t.add_row(vec![name.to_string(), c.to_string(), s.to_string()]);
        }
    }
    if conns.is_empty() {
        println!("no tracked connections\n");
    } else {
        println!("{t}\n");
    }

    let mut t = table(&["verdict", "arriving", "dropped", "leaving"], 1);
    for r in Reason::ALL {
        t.add_row(vec![
            r.name().to_string(),
            counters.packets[r as usize].to_string(),
            if r.is_drop() {
                counters.dropped[r as usize].to_string()
            } else {
                "-".into()
            },
            counters.egress[r as usize].to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}

/// A borderless table headed by `header`; every column after the first
/// `left` columns holds numbers and is right-aligned.
pub fn table(header: &[&str], left: usize) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING);
    t.set_header(header.to_vec());
    for col in t.column_iter_mut().skip(left) {
        col.set_cell_alignment(CellAlignment::Right);
    }
    t
}
