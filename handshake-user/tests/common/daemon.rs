//! The `run` daemon driven as a child process, and what the daemon tests
//! share: a lab with an echo server, the status and metrics readers, a
//! ConfigMap-style config directory, the dashboard's cross-check.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use handshake_lab::{EchoServer, Lab, Sources};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::cli::{GATE, cli, pin_dir};

/// A `handshake-gate run` child process; its log goes to a file the test
/// reads. Killed on drop (also when the test panics).
pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    pub metrics: String,
}

impl Daemon {
    pub fn start(lab: &Lab, tag: &str, extra: &[&str]) -> Daemon {
        Daemon::start_env(lab, tag, extra, &[])
    }

    /// [`Daemon::start`] with more environment variables.
    pub fn start_env(lab: &Lab, tag: &str, extra: &[&str], env: &[(&str, &str)]) -> Daemon {
        let port = free_port();
        let log = std::env::temp_dir().join(format!("hg-{tag}-{}.log", std::process::id()));
        let file = std::fs::File::create(&log).expect("log file");
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "--netns",
            &lab.server.name,
            "run",
            &lab.server_if,
            "--sweep-interval",
            "1",
        ];
        if !extra.contains(&"--metrics") {
            args.extend(["--metrics", &listen]);
        }
        args.extend_from_slice(extra);
        let child = Command::new(GATE)
            .args(&args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start the daemon");
        let d = Daemon {
            child,
            log,
            metrics: format!("http://{listen}/metrics"),
        };
        d.wait_for_log("running: SIGHUP");
        d
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (60 s at most: loading the programs through the verifier of an
    /// emulated VM takes a while) until the log has `what`; panics with the
    /// log if not.
    pub fn wait_for_log(&self, what: &str) {
        let start = Instant::now();
        while !self.log().contains(what) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the daemon never logged {what:?}; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn signal(&self, s: Signal) {
        kill(Pid::from_raw(self.child.id() as i32), s).expect("signal the daemon");
    }

    /// Waits (30 s at most) for the daemon to exit; whether it succeeded.
    pub fn wait(&mut self) -> bool {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.success();
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the daemon did not stop; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Scrapes the metrics endpoint and parses it as Prometheus text.
    pub fn scrape(&self) -> prometheus_parse::Scrape {
        let body = ureq::get(&self.metrics)
            .call()
            .expect("scrape the metrics")
            .body_mut()
            .read_to_string()
            .expect("metrics body");
        prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
            .unwrap_or_else(|e| panic!("not Prometheus text: {e}\n{body}"))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Detaches the lab's gate on drop, however it was attached.
pub struct DetachOnDrop<'a>(pub &'a Lab);

impl Drop for DetachOnDrop<'_> {
    fn drop(&mut self) {
        let lab = self.0;
        let _ = cli(&["--netns", &lab.server.name, "detach", &lab.server_if]);
        let _ = handshake_user::pins::remove_dir(&pin_dir(lab));
    }
}

/// A lab with an echo server on 198.18.0.1:8080.
pub fn lab_with_server(tag: &str) -> (Lab, SocketAddr, EchoServer) {
    let lab = Lab::new(tag).expect("lab");
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), 8080);
    let server = EchoServer::start(&lab.server, addr, 1024).expect("server");
    (lab, addr, server)
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// The value of the sample `name` whose labels include `labels`.
pub fn metric(s: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    use prometheus_parse::Value;
    let sample = s
        .samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
        .unwrap_or_else(|| panic!("no sample {name}{labels:?}"));
    match sample.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        _ => panic!("{name} is not a number"),
    }
}

pub fn status(lab: &Lab) -> serde_json::Value {
    let (ok, out, err) = cli(&[
        "--netns",
        &lab.server.name,
        "status",
        &lab.server_if,
        "--json",
    ]);
    assert!(ok, "status: {err}");
    serde_json::from_str(&out).expect("status --json")
}

pub fn flood_from(lab: &Lab, addr: SocketAddr, src: &str, count: u64) {
    let sent = super::cli::flood(lab, addr, Sources::One(src.parse().unwrap()), count, 1);
    assert_eq!(sent, count);
}

/// Polls `f` (10 s at most) until it holds; panics with `what` if it never does.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "never: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn config_file(tag: &str, text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("hg-{tag}-{}.toml", std::process::id()));
    std::fs::write(&p, text).expect("write the config");
    p
}

/// Every gate metric the Grafana dashboard queries is one the daemon
/// serves, with the label values the queries pick.
pub fn dashboard_queries_what_is_served(m: &prometheus_parse::Scrape) {
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../../../deploy/grafana/handshake-gate.json"))
            .expect("the dashboard is JSON");
    let mut checked = 0;
    for panel in dash["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            // Each `handshake_gate_NAME{matchers}` in the query.
            for (at, _) in expr.match_indices("handshake_gate_") {
                let rest = &expr[at..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                    .unwrap_or(rest.len());
                let name = &rest[..end];
                let wanted: Vec<(&str, &str)> = rest[end..]
                    .strip_prefix('{')
                    .and_then(|r| r.split_once('}'))
                    .map(|(inner, _)| {
                        inner
                            .split(',')
                            .filter_map(|m| m.trim().split_once("=\""))
                            .filter(|(_, v)| !v.contains('$'))
                            .map(|(k, v)| (k.trim(), v.trim_end_matches('"')))
                            .collect()
                    })
                    .unwrap_or_default();
                assert!(
                    m.samples.iter().any(|x| x.metric == name
                        && wanted.iter().all(|(k, v)| x.labels.get(k) == Some(*v))),
                    "the dashboard's panel {:?} queries {name}{wanted:?}, which is not served",
                    panel["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(
        checked >= 10,
        "only {checked} queries of the gate's metrics"
    );
}

/// A directory laid out as Kubernetes mounts a ConfigMap: the file is a
/// symlink through `..data`, itself a symlink to a timestamped directory;
/// an update writes a new such directory and renames a new `..data` over
/// the old one, with no signal to anyone.
pub struct ConfigMapDir {
    pub root: PathBuf,
    version: u32,
}

impl ConfigMapDir {
    pub fn new(tag: &str, text: &str) -> ConfigMapDir {
        let root = std::env::temp_dir().join(format!("hg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let mut d = ConfigMapDir { root, version: 0 };
        d.update(text);
        std::os::unix::fs::symlink("..data/gate.toml", d.file()).unwrap();
        d
    }

    pub fn file(&self) -> PathBuf {
        self.root.join("gate.toml")
    }

    pub fn update(&mut self, text: &str) {
        self.version += 1;
        let data = format!("..2026_12_02_{}", self.version);
        std::fs::create_dir(self.root.join(&data)).unwrap();
        std::fs::write(self.root.join(&data).join("gate.toml"), text).unwrap();
        let tmp = self.root.join("..data_tmp");
        std::os::unix::fs::symlink(&data, &tmp).unwrap();
        std::fs::rename(&tmp, self.root.join("..data")).unwrap();
    }
}

impl Drop for ConfigMapDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// GET `path` from the daemon's HTTP server: (status code, body).
pub fn get(d: &Daemon, path: &str) -> (u16, String) {
    let url = d.metrics.replace("/metrics", path);
    let mut r = ureq::get(&url)
        .config()
        .http_status_as_error(false)
        .build()
        .call()
        .expect("the daemon answers");
    let code = r.status().as_u16();
    (code, r.body_mut().read_to_string().unwrap_or_default())
}
