//! The Grafana dashboard against a real Prometheus: Debian's `prometheus`
//! scrapes the daemon (and node_exporter, whose SYN-cookie counters the
//! dashboard shows beside the gate's) every second while a spoofed flood
//! meets the caps, and every query of `deploy/grafana/handshake-gate.json`,
//! its template variable's included, is evaluated through the HTTP API:
//! each must parse and return at least one series, and the values that are
//! known must be what they should (a drop rate above zero during the flood,
//! the half-open count within its cap). Needs root (the lab, the gate);
//! `cargo xtask test` runs it, and installs Prometheus.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::cli::flood_of;
use common::daemon::*;
use handshake_lab::{Segments, Sources};
use serde_json::Value;

/// A child process killed on drop, and a directory removed with it.
struct Running {
    child: Child,
    dir: Option<PathBuf>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn wait_until_up(url: &str, what: &str) {
    let start = Instant::now();
    while ureq::get(url).call().is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{what} did not come up at {url}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every expression the dashboard evaluates: each panel's targets and the
/// template variable's query (`label_values(m, l)` as the series it reads).
fn dashboard_queries() -> Vec<String> {
    let dash: Value =
        serde_json::from_str(include_str!("../../deploy/grafana/handshake-gate.json")).unwrap();
    fn walk(v: &Value, out: &mut Vec<String>) {
        for p in v["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                if let Some(e) = t["expr"].as_str() {
                    out.push(e.to_string());
                }
            }
            walk(p, out);
        }
    }
    let mut out = Vec::new();
    walk(&dash, &mut out);
    for var in dash["templating"]["list"].as_array().into_iter().flatten() {
        if let Some(q) = var["definition"].as_str()
            && let Some(inner) = q
                .strip_prefix("label_values(")
                .and_then(|r| r.strip_suffix(')'))
        {
            let (metric, label) = inner.rsplit_once(',').unwrap();
            out.push(format!("group by ({}) ({})", label.trim(), metric.trim()));
        }
    }
    out
}

/// The dashboard's variables as Grafana fills them: every instance, and a
/// rate window of a few scrapes.
fn substituted(expr: &str) -> String {
    expr.replace("$__rate_interval", "5s")
        .replace("$instance", ".*")
}

#[test]
#[ignore = "privileged: needs root, netns and XDP; run by `cargo xtask test`"]
fn every_dashboard_query_returns_series_from_a_real_prometheus_under_a_flood() {
    if std::env::var_os("HANDSHAKE_IN_VM").is_some() {
        println!(
            "skipped in the VM: the dashboard's queries do not touch the kernel (the host layer runs them)"
        );
        return;
    }
    let (lab, addr, _server) = lab_with_server("dsh");
    let _cleanup = DetachOnDrop(&lab);
    let cfg = config_file(
        "dsh",
        "max-half-open = 100\nmax-half-open-per-source = 10\nhalf-open-timeout-ms = 30000\n",
    );
    let d = Daemon::start(&lab, "dsh", &["--config", cfg.to_str().unwrap()]);
    let gate_target = d
        .metrics
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();

    let node_port = free_port();
    let node = Running {
        child: Command::new("prometheus-node-exporter")
            .args([
                &format!("--web.listen-address=127.0.0.1:{node_port}"),
                "--collector.disable-defaults",
                "--collector.netstat",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus-node-exporter (installed by `cargo xtask setup`)"),
        dir: None,
    };
    wait_until_up(
        &format!("http://127.0.0.1:{node_port}/metrics"),
        "node_exporter",
    );

    let dir = std::env::temp_dir().join(format!("hg-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n\
             \x20 - job_name: handshake-gate\n    static_configs:\n      - targets: ['{gate_target}']\n\
             \x20 - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:{node_port}']\n"
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let api = format!("http://127.0.0.1:{prom_port}/api/v1");
    let _prom = Running {
        child: Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus (installed by `cargo xtask setup`)"),
        dir: Some(dir.clone()),
    };
    wait_until_up(&format!("{api}/status/buildinfo"), "Prometheus");
    let query = |expr: &str, at: f64| -> Value {
        let mut r = ureq::get(&format!("{api}/query"))
            .query("query", expr)
            .query("time", format!("{at:.3}"))
            .config()
            .http_status_as_error(false)
            .build()
            .call()
            .expect("Prometheus answers");
        let body: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        assert_eq!(body["status"], "success", "{expr}: {body:#}");
        body["data"]["result"].clone()
    };
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    // Both targets scraped a few times before the flood.
    let start = Instant::now();
    while query("up", now()).as_array().unwrap().len() < 2
        || query("up == 0", now())
            .as_array()
            .is_some_and(|r| !r.is_empty())
    {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the targets never came up"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Four seconds of spoofed SYNs: the caps refuse most.
    let sent = flood_of(
        Segments::Syn,
        &lab,
        addr,
        Sources::Range {
            first: "198.19.0.0".parse().unwrap(),
            count: 20_000,
        },
        20_000,
        Some(5_000),
    );
    assert!(sent > 10_000, "the flood sent {sent}");
    let during = now() - 1.0;
    // Let the last scrapes of the flood land.
    std::thread::sleep(Duration::from_secs(3));

    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    for expr in &queries {
        let result = query(&substituted(expr), during);
        assert!(
            !result.as_array().unwrap().is_empty(),
            "the dashboard's query returned no series: {expr}"
        );
    }
    // The values that are known.
    let value = |r: &Value| -> f64 { r[1].as_str().unwrap().parse().unwrap() };
    let find = |needle: &str| -> String {
        let q = queries.iter().find(|q| q.contains(needle));
        substituted(q.unwrap_or_else(|| panic!("no query with {needle}")))
    };
    let drops = query(&find("handshake_gate_dropped_total"), during);
    let dropping: f64 = drops
        .as_array()
        .unwrap()
        .iter()
        .map(|s| value(&s["value"]))
        .sum();
    assert!(dropping > 0.0, "no drop rate during the flood: {drops:#}");
    let half_open = value(&query(&find("(handshake_gate_half_open{"), during)[0]["value"]);
    let cap = value(&query(&find("setting=\"max-half-open\""), during)[0]["value"]);
    assert_eq!(cap, 100.0);
    assert!(
        half_open > 0.0 && half_open <= cap,
        "half-open {half_open} against the cap {cap}"
    );
    drop(node);
    let _ = std::fs::remove_file(cfg);
}
