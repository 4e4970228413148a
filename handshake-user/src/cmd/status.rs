use std::io::IsTerminal as _;
use std::time::Duration;

use comfy_table::{CellAlignment, Table, presets::NOTHING};
use handshake_common::{Overflow, Reason, cookie};
use handshake_user::dispatcher::Dispatcher;
use handshake_user::gate::{Counts, Gate, Snapshot, multiprog};
use handshake_user::settings::KEYS;
use serde_json::{Map, Value, json};

use crate::args::StatusArgs;

/// Sources listed under "top sources".
const TOP: usize = 5;

pub fn run(a: StatusArgs, netns: Option<&str>) -> anyhow::Result<()> {
    let gate = Gate::open(&a.iface, netns)?;
    if let Some(secs) = a.watch {
        return watch(&gate, &a, netns, secs);
    }
    let snap = gate.snapshot(TOP, a.fresh)?;
    let hook = hook(&gate, &a.iface);
    if a.json {
        let mut v = json(&a.iface, netns, &snap);
        v["xdp"] = hook_json(&hook);
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", text(&a.iface, netns, &snap, None));
        print!("{}", hook_text(&hook));
    }
    Ok(())
}

/// Where the gate's XDP program runs: alone on the hook (`None`), or in
/// libxdp's dispatcher (its programs, or why the gate is not among them).
type Placement = Option<Result<Dispatcher, String>>;

fn hook(gate: &Gate, iface: &str) -> Placement {
    let priority = gate
        .meta(handshake_common::meta::DISPATCHER_PRIORITY)
        .unwrap_or(0);
    if priority == 0 {
        return None;
    }
    let placed = (|| {
        let id = gate.xdp_program_id().map_err(|e| e.to_string())?;
        let ifindex = nix::net::if_::if_nametoindex(iface).map_err(|e| e.to_string())?;
        multiprog::placement(ifindex, id)
    })();
    Some(placed)
}

fn hook_json(p: &Placement) -> Value {
    match p {
        None => json!({ "dispatcher": null }),
        Some(Err(why)) => json!({ "dispatcher": null, "problem": why }),
        Some(Ok(d)) => json!({
            "dispatcher": {
                "id": d.id,
                "programs": d.slots.iter().map(|s| json!({
                    "name": s.name, "id": s.id, "priority": s.priority,
                })).collect::<Vec<_>>(),
            }
        }),
    }
}

fn hook_text(p: &Placement) -> String {
    match p {
        None => String::new(),
        Some(Err(why)) => format!("\nXDP: in libxdp's dispatcher, but {why}\n"),
        Some(Ok(d)) => {
            let mut t = table(&["dispatcher program", "id", "priority"], 1);
            for s in &d.slots {
                t.add_row(vec![
                    s.name.clone(),
                    s.id.to_string(),
                    s.priority.to_string(),
                ]);
            }
            format!(
                "\nXDP: in libxdp's dispatcher (id {}), in this order:\n{t}\n",
                d.id
            )
        }
    }
}

/// `--watch`: the status again every `secs` seconds, with each verdict's
/// rate since the previous refresh. On a terminal each refresh replaces the
/// last; otherwise refreshes follow one another.
fn watch(gate: &Gate, a: &StatusArgs, netns: Option<&str>, secs: u64) -> anyhow::Result<()> {
    let clear = std::io::stdout().is_terminal();
    let mut prev: Option<Snapshot> = None;
    let mut shown = 0u64;
    loop {
        let snap = gate.snapshot(TOP, a.fresh)?;
        let page = text(&a.iface, netns, &snap, prev.as_ref());
        if clear {
            print!("\x1b[2J\x1b[H{page}");
        } else {
            println!("--- refresh {} ---\n{page}", shown + 1);
        }
        shown += 1;
        if a.count.is_some_and(|n| shown >= n) {
            return Ok(());
        }
        prev = Some(snap);
        std::thread::sleep(Duration::from_secs(secs));
    }
}

fn json(iface: &str, netns: Option<&str>, s: &Snapshot) -> Value {
    let limits: Map<String, Value> = KEYS
        .iter()
        .map(|k| (k.name.to_string(), k.json(&s.settings)))
        .collect();
    let c = &s.counters;
    let drops: Map<String, Value> = Reason::ALL
        .iter()
        .filter(|r| r.is_drop())
        .map(|r| (r.name().to_string(), c.get(*r).into()))
        .collect();
    let by_reason = |v: &[u64]| -> Map<String, Value> {
        Reason::ALL
            .iter()
            .map(|r| (r.name().to_string(), v[*r as usize].into()))
            .collect()
    };
    let [client, server] = &s.states;
    json!({
        "interface": iface,
        "netns": netns,
        "mode": handshake_user::settings::mode_name(&s.settings.config),
        "limits": limits,
        "prefix_lists": {
            "allow": s.prefixes.0,
            "deny": s.prefixes.1,
            "capacity": s.prefixes.2,
        },
        "half_open": s.half_open,
        "states": { "client": client, "server": server },
        "connections": s.connections,
        "counts": counts_json(s),
        "map_entries": { "half_open": s.map_entries.0, "established": s.map_entries.1 },
        "drops": drops,
        "dropped_packets": c.dropped.iter().sum::<u64>(),
        "packets": by_reason(&c.packets),
        "egress": by_reason(&c.egress),
        "cookies_sent": c.egress[Reason::Cookie as usize],
        "cookies": cookies_json(s),
        "top_sources": s.top_sources.iter().map(|(src, n)| json!({"source": src, "half_open": n})).collect::<Vec<_>>(),
        "top_ports": s.top_ports.iter().map(|(p, n)| json!({"port": p, "half_open": n})).collect::<Vec<_>>(),
    })
}

/// The human view; with `prev`, a per-second rate column for each verdict.
fn text(iface: &str, netns: Option<&str>, s: &Snapshot, prev: Option<&Snapshot>) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "handshake-gate on {iface}{}\n",
        netns.map(|n| format!(" (netns {n})")).unwrap_or_default()
    );
    let mut t = table(&["limit", "value"], 2);
    for k in KEYS {
        t.add_row(vec![k.name.to_string(), k.show(&s.settings)]);
    }
    let _ = writeln!(out, "{t}\n");
    let _ = writeln!(
        out,
        "prefix lists: allow {}, deny {} (room for {} each)\n",
        s.prefixes.0, s.prefixes.1, s.prefixes.2
    );

    let _ = writeln!(out, "half-open now: {}", s.half_open);
    if !s.top_sources.is_empty() {
        let mut t = table(&["top source", "half-open"], 1);
        for (src, n) in &s.top_sources {
            t.add_row(vec![src.clone(), n.to_string()]);
        }
        let _ = writeln!(out, "{t}");
    }
    if !s.top_ports.is_empty() {
        let mut t = table(&["top port", "half-open"], 1);
        for (p, n) in &s.top_ports {
            t.add_row(vec![p.to_string(), n.to_string()]);
        }
        let _ = writeln!(out, "{t}");
    }
    out.push('\n');

    let [client, server] = &s.states;
    let mut t = table(&["state", "client side", "server side"], 1);
    for (name, c) in client {
        let sv = server[name];
        if *c != 0 || sv != 0 {
            t.add_row(vec![name.to_string(), c.to_string(), sv.to_string()]);
        }
    }
    if s.connections == 0 {
        let _ = writeln!(out, "no tracked connections");
    } else {
        let _ = writeln!(out, "{t}");
    }
    if let Counts::Kept { .. } = s.counts {
        let _ = writeln!(
            out,
            "(counted by the daemon's sweep {:.1} s ago; --fresh counts now)",
            s.counts_age_ns() as f64 / 1e9
        );
    }
    out.push('\n');

    let mut header = vec!["verdict", "arriving", "dropped", "leaving"];
    if prev.is_some() {
        header.push("arriving/s");
    }
    let mut t = table(&header, 1);
    let c = &s.counters;
    for r in Reason::ALL {
        let i = r as usize;
        let mut row = vec![
            r.name().to_string(),
            c.packets[i].to_string(),
            if r.is_drop() {
                c.dropped[i].to_string()
            } else {
                "-".into()
            },
            c.egress[i].to_string(),
        ];
        if let Some(p) = prev {
            let secs = (s.taken_ns.saturating_sub(p.taken_ns) as f64 / 1e9).max(1e-3);
            let delta = c.packets[i].saturating_sub(p.counters.packets[i]);
            row.push(format!("{:.0}", delta as f64 / secs));
        }
        t.add_row(row);
    }
    let _ = writeln!(out, "{t}");
    if let Some(line) = cookies_text(s) {
        let _ = writeln!(out, "\n{line}");
    }
    out
}

/// Where the counts by state came from, and how old they are.
fn counts_json(s: &Snapshot) -> Value {
    json!({
        "kept": matches!(s.counts, Counts::Kept { .. }),
        "age_ms": s.counts_age_ns() / 1_000_000,
    })
}

/// What the SYN-ACKs of `overflow=cookie` carry now.
fn cookie_options(s: &Snapshot) -> Option<cookie::Options> {
    (s.settings.config.overflow() == Overflow::Cookie)
        .then(|| cookie::Options::from_bits(s.settings.config.cookie_options))
}

/// The cookies line: how many were sent and what they carry, when
/// `overflow=cookie` is set or some were sent.
fn cookies_text(s: &Snapshot) -> Option<String> {
    let c = &s.counters;
    let sent = c.egress[Reason::Cookie as usize];
    let failed = c.packets[Reason::CookieFail as usize];
    let options = cookie_options(s);
    if options.is_none() && sent == 0 && failed == 0 {
        return None;
    }
    let mut line = format!("cookies: {sent} sent from XDP, {failed} could not be made (passed on)");
    if let Some(o) = options {
        line.push_str(&format!("\n{}", handshake_user::sysctl::describe(&o)));
    }
    Some(line)
}

fn cookies_json(s: &Snapshot) -> Value {
    let c = &s.counters;
    let options = cookie_options(s);
    let carry = options.map(|o| {
        let mut v = vec!["mss"];
        if o.timestamps {
            v.push("timestamps");
            if o.window_scaling {
                v.push("window_scaling");
            }
            if o.sack {
                v.push("sack");
            }
        }
        v
    });
    json!({
        "sent": c.egress[Reason::Cookie as usize],
        "failed": c.packets[Reason::CookieFail as usize],
        "carry": carry,
        "window_scale": options.filter(|o| o.timestamps && o.window_scaling).map(|o| o.rcv_wscale),
    })
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
