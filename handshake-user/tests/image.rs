//! The OCI image (`cargo xtask image`; `cargo xtask test` builds it first)
//! run the way a DaemonSet pod runs it: podman with runc, the lab's server
//! namespace as its network (a pod's host network), the host's bpffs
//! mounted, a ConfigMap-style directory as its config, and only the
//! capabilities the gate needs (BPF, NET_ADMIN, PERFMON; the runtime's
//! default seccomp filter refuses `bpf()`, so the pod runs unconfined). The
//! gate attaches, caps a flood, serves its metrics and health checks,
//! follows a ConfigMap update with no signal, outlives the killed
//! container, and a new container adopts it. Needs root and podman; runs on
//! the host only (the VM layer's guest has no container runtime).

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::GATE;
use handshake_lab::{EchoServer, Lab, Sources};
use serde_json::Value;

const IMAGE: &str = concat!("localhost/handshake-gate:", env!("CARGO_PKG_VERSION"));

fn podman(args: &[&str]) -> (bool, String) {
    said(
        Command::new("podman")
            .args(args)
            .output()
            .expect("run podman (installed by `cargo xtask setup`)"),
    )
}

/// Whether a command succeeded, and what it printed on both streams.
fn said(out: std::process::Output) -> (bool, String) {
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The controller in the lab's server namespace, as a pod's own
/// `handshake-gate` would be (no `--netns`: the pins of the host's view).
fn gate(lab: &Lab, args: &[&str]) -> (bool, String) {
    said(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", lab.server.name))
            .arg(GATE)
            .args(args)
            .output()
            .expect("run nsenter"),
    )
}

fn status(lab: &Lab) -> Value {
    let (ok, out) = gate(lab, &["status", &lab.server_if, "--json"]);
    assert!(ok, "status: {out}");
    serde_json::from_str(&out).expect("status --json")
}

/// GET `path` from the daemon, inside the lab's server namespace.
fn get(lab: &Lab, path: &str) -> Option<(u16, String)> {
    // Where the DaemonSet has it listen: the node's address.
    let url = format!("http://{}:9464{path}", Lab::SERVER_V4);
    lab.server
        .run(move || {
            let mut r = ureq::get(&url)
                .config()
                .http_status_as_error(false)
                .build()
                .call()?;
            Ok((r.status().as_u16(), r.body_mut().read_to_string()?))
        })
        .ok()
}

fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(30), "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The daemon's container; removed on drop. Its logs are kept for the
/// failure messages.
struct Pod {
    name: String,
}

/// The DaemonSet's container as the manifest has it: its capabilities and
/// its arguments, the node's address and interface filled in (the lab's
/// server address and interface: the labs have no default route).
fn manifest_pod(lab: &Lab) -> (String, Vec<String>) {
    use yaml_rust2::YamlLoader;
    let ds = YamlLoader::load_from_str(include_str!("../../deploy/kubernetes/daemonset.yaml"))
        .expect("the DaemonSet is YAML")
        .remove(0);
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let list = |y: &yaml_rust2::Yaml| -> Vec<String> {
        y.as_vec()
            .expect("a list")
            .iter()
            .map(|v| v.as_str().expect("a string").to_string())
            .collect()
    };
    let caps = list(&c["securityContext"]["capabilities"]["add"]).join(",");
    let args = list(&c["args"])
        .into_iter()
        .map(|a| {
            if a == handshake_user::route::DEFAULT_ROUTE {
                lab.server_if.clone()
            } else {
                a.replace("$(NODE_IP)", &Lab::SERVER_V4.to_string())
            }
        })
        .collect();
    (caps, args)
}

impl Pod {
    fn start(lab: &Lab, name: &str, config_dir: &Path) -> Pod {
        let net = format!("ns:/run/netns/{}", lab.server.name);
        let config = format!("{}:/etc/handshake-gate:ro", config_dir.display());
        let (caps, args) = manifest_pod(lab);
        let mut all: Vec<&str> = vec![
            "--runtime",
            "runc",
            "run",
            "-d",
            "--name",
            name,
            "--cap-drop",
            "all",
            "--cap-add",
            &caps,
            "--security-opt",
            "seccomp=unconfined",
            "--read-only",
            "--network",
            &net,
            "-v",
            "/sys/fs/bpf:/sys/fs/bpf",
            "-v",
            &config,
            "--env",
            "RUST_LOG=info",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            IMAGE,
        ];
        all.extend(args.iter().map(String::as_str));
        let (ok, out) = podman(&all);
        assert!(ok, "podman run: {out}");
        Pod { name: name.into() }
    }

    /// A pod's SIGTERM (`podman stop`): the daemon must leave the gate
    /// attached.
    fn stop_leaving_the_gate(&self) {
        let (ok, out) = podman(&["stop", "-t", "10", &self.name]);
        assert!(ok, "{out}");
        assert!(
            self.logs().contains("left the gate attached"),
            "{}",
            self.logs()
        );
    }

    fn logs(&self) -> String {
        podman(&["logs", &self.name]).1
    }

    fn wait_for_log(&self, what: &str) {
        let start = Instant::now();
        while !self.logs().contains(what) {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the container never logged {what:?}:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        let _ = podman(&["rm", "-f", &self.name]);
    }
}

/// A ConfigMap's mount: `gate.toml` through `..data`, swapped atomically.
struct ConfigMap {
    root: PathBuf,
    version: u32,
}

impl ConfigMap {
    fn new(text: &str) -> ConfigMap {
        let root = std::env::temp_dir().join(format!("hg-img-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let mut c = ConfigMap { root, version: 0 };
        c.update(text);
        std::os::unix::fs::symlink("..data/gate.toml", c.root.join("gate.toml")).unwrap();
        c
    }

    fn update(&mut self, text: &str) {
        self.version += 1;
        let data = format!("..2026_12_02_{}", self.version);
        std::fs::create_dir(self.root.join(&data)).unwrap();
        std::fs::write(self.root.join(&data).join("gate.toml"), text).unwrap();
        std::os::unix::fs::symlink(&data, self.root.join("..data_tmp")).unwrap();
        std::fs::rename(self.root.join("..data_tmp"), self.root.join("..data")).unwrap();
    }
}

impl Drop for ConfigMap {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Detaches the gate the containers left (on purpose) attached.
struct Detach<'a>(&'a Lab);

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        let _ = gate(self.0, &["detach", &self.0.server_if]);
        // Whatever the detach left (it fails on a gate it cannot read):
        // the pins hold the programs, so they go too.
        if let Ok(dir) = handshake_user::pins::dir(&self.0.server_if, None) {
            let _ = handshake_user::pins::remove_dir(&dir);
        }
    }
}

#[test]
#[ignore = "privileged: needs root, netns, XDP and podman; run by `cargo xtask test`"]
fn the_image_runs_as_a_daemonset_pod_would() {
    if std::env::var_os("HANDSHAKE_IN_VM").is_some() {
        println!("skipped in the VM layer: its guest has no container runtime");
        return;
    }
    let (exists, _) = podman(&["image", "exists", IMAGE]);
    assert!(
        exists,
        "no image {IMAGE}: build it with `cargo xtask image`"
    );
    let lab = Lab::new("img").expect("lab");
    lab.server.ip(&["link", "set", "lo", "up"]).unwrap();
    let addr = SocketAddr::new(Lab::SERVER_V4.into(), 8080);
    let _server = EchoServer::start(&lab.server, addr, 1024).expect("server");
    let mut cm = ConfigMap::new("max-half-open-per-source = 10\n");
    let _detach = Detach(&lab);
    let name = format!("hg-img-{}", std::process::id());

    let pod = Pod::start(&lab, &name, &cm.root);
    pod.wait_for_log("running:");
    assert_eq!(
        get(&lab, "/readyz"),
        Some((200, "ok\n".into())),
        "{}",
        pod.logs()
    );
    assert_eq!(get(&lab, "/healthz"), Some((200, "ok\n".into())));
    let (code, metrics) = get(&lab, "/metrics").expect("metrics");
    assert_eq!(code, 200);
    assert!(metrics.contains("handshake_gate_limit{setting=\"max-half-open-per-source\"} 10"));

    // It caps a flood from one source at its limit.
    let flood = |src: &str| {
        let sent = common::flood(&lab, addr, Sources::One(src.parse().unwrap()), 100, 1);
        assert_eq!(sent, 100);
    };
    flood("198.18.0.66");
    assert_eq!(status(&lab)["drops"]["per_source"], 90);

    // The ConfigMap changes: the new limit holds with no signal.
    cm.update("max-half-open-per-source = 25\n");
    eventually("the ConfigMap's new limit in force", || {
        status(&lab)["limits"]["max-half-open-per-source"] == 25
    });
    pod.wait_for_log("the config file changed: reloaded");

    // A rolling update (SIGTERM, then a new pod) under a flood from a new
    // source: every SYN over its cap of 25 is dropped all through it, none
    // passes unprotected.
    let before = status(&lab)["drops"]["per_source"].as_u64().unwrap();
    let sent = std::thread::scope(|scope| {
        let flooding = scope.spawn(|| {
            handshake_lab::Flood {
                segments: handshake_lab::Segments::Syn,
                target: addr,
                sources: Sources::One("198.18.0.68".parse().unwrap()),
                // 2.5 s: shorter than the half-open timeout (5 s), so the
                // source's 25 admitted attempts all still count at its end.
                count: 2_000,
                max_time: Duration::from_secs(20),
                rate: Some(800),
                threads: 1,
            }
            .run(&lab.client)
            .expect("flood")
            .sent
        });
        std::thread::sleep(Duration::from_millis(200));
        let swap = Instant::now();
        pod.stop_leaving_the_gate();
        drop(pod);
        let pod = Pod::start(&lab, &name, &cm.root);
        pod.wait_for_log("adopted the gate");
        let swapped_in = swap.elapsed();
        let sent = flooding.join().expect("the flood");
        println!("the pods swapped in {:.2} s", swapped_in.as_secs_f64());
        (sent, pod)
    });
    let (sent, pod) = sent;
    let dropped = status(&lab)["drops"]["per_source"].as_u64().unwrap() - before;
    println!(
        "rolling update under a flood: {sent} SYNs, {dropped} dropped, {} admitted",
        sent - dropped
    );
    assert_eq!(
        dropped,
        sent - 25,
        "SYNs passed unprotected during the rolling update"
    );
    let before = status(&lab)["drops"]["per_source"].as_u64().unwrap();

    // Killed, the container leaves the gate protecting.
    let (ok, out) = podman(&["kill", &name]);
    assert!(ok, "{out}");
    drop(pod);
    flood("198.18.0.67");
    let after_kill = status(&lab)["drops"]["per_source"].as_u64().unwrap();
    assert_eq!(
        after_kill - before,
        75,
        "the gate stopped protecting with no pod"
    );

    // A new container adopts it, counts and all.
    let pod = Pod::start(&lab, &name, &cm.root);
    pod.wait_for_log("adopted the gate");
    eventually("the new container ready", || {
        get(&lab, "/readyz") == Some((200, "ok\n".into()))
    });
    let (_, metrics) = get(&lab, "/metrics").expect("metrics");
    assert!(
        metrics.contains(&format!(
            "handshake_gate_dropped_total{{reason=\"per_source\"}} {after_kill}"
        )),
        "{metrics}"
    );
    // Stopped (a rolling update's SIGTERM), an adopting daemon leaves it attached.
    pod.stop_leaving_the_gate();
    assert_eq!(status(&lab)["mode"], "enforce");
}
