//! The deployment files agree with what the binary and the image provide:
//! the DaemonSet's image is the one `cargo xtask image` tags, its
//! arguments are flags `run` takes, its port is the one the image exposes
//! and the metrics listen on, its probes are the paths the daemon answers,
//! its mounts are where the binary looks (bpffs, the config file of the
//! ConfigMap). No privileges needed.

use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

const GATE: &str = env!("CARGO_BIN_EXE_handshake-gate");

fn doc(text: &str) -> Yaml {
    YamlLoader::load_from_str(text).expect("YAML").remove(0)
}

fn daemonset() -> Yaml {
    doc(include_str!("../../deploy/kubernetes/daemonset.yaml"))
}

fn container(ds: &Yaml) -> &Yaml {
    &ds["spec"]["template"]["spec"]["containers"][0]
}

fn strings(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .expect("a list")
        .iter()
        .map(|v| v.as_str().expect("a string").to_string())
        .collect()
}

fn run_help() -> String {
    let out = Command::new(GATE).args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

const CONTAINERFILE: &str = include_str!("../../deploy/image/Containerfile");

#[test]
fn the_daemonset_runs_the_image_cargo_xtask_image_builds() {
    let ds = daemonset();
    let c = container(&ds);
    assert_eq!(
        c["image"].as_str(),
        Some(concat!(
            "localhost/handshake-gate:",
            env!("CARGO_PKG_VERSION")
        ))
    );
    // The image's entry point is `handshake-gate run`: the args are run's.
    assert!(
        CONTAINERFILE.contains(r#"ENTRYPOINT ["/handshake-gate", "run"]"#),
        "{CONTAINERFILE}"
    );
}

#[test]
fn every_flag_of_the_daemonset_is_one_run_takes() {
    let help = run_help();
    let args = strings(&container(&daemonset())["args"]);
    assert_eq!(args[0], handshake_user::route::DEFAULT_ROUTE, "{args:?}");
    assert!(help.contains("default-route"), "{help}");
    for flag in args.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "run takes no {flag}"
        );
    }
    assert!(
        args.contains(&"--keep".to_string()),
        "a pod that stops must leave the gate attached"
    );
}

#[test]
fn the_port_the_probes_and_the_mounts_are_the_binary_s() {
    let ds = daemonset();
    let c = container(&ds);
    let args = strings(&c["args"]);
    let after = |flag: &str| {
        let i = args
            .iter()
            .position(|a| a == flag)
            .unwrap_or_else(|| panic!("no {flag}"));
        args[i + 1].clone()
    };
    // The metrics (and the probes) on the port the image exposes.
    let port = c["ports"][0]["containerPort"].as_i64().unwrap();
    assert!(
        after("--metrics").ends_with(&format!(":{port}")),
        "{args:?}"
    );
    assert!(CONTAINERFILE.contains(&format!("EXPOSE {port}")));
    assert_eq!(c["ports"][0]["name"].as_str(), Some("metrics"));
    for (probe, path) in [
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ] {
        assert_eq!(c[probe]["httpGet"]["path"].as_str(), Some(path), "{probe}");
        assert_eq!(
            c[probe]["httpGet"]["port"].as_str(),
            Some("metrics"),
            "{probe}"
        );
    }
    let help = run_help();
    assert!(
        help.contains("/healthz") && help.contains("/readyz"),
        "{help}"
    );
    let ann = &ds["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        ann["prometheus.io/port"].as_str(),
        Some(port.to_string().as_str())
    );
    assert_eq!(ann["prometheus.io/path"].as_str(), Some("/metrics"));

    // bpffs where the binary pins, the config file where --config says.
    let mounts = c["volumeMounts"].as_vec().unwrap();
    let mount = |name: &str| {
        mounts
            .iter()
            .find(|m| m["name"].as_str() == Some(name))
            .unwrap_or_else(|| panic!("no mount {name}"))
    };
    assert_eq!(
        mount("bpffs")["mountPath"].as_str(),
        Some(handshake_user::pins::BPFFS)
    );
    let volumes = ds["spec"]["template"]["spec"]["volumes"].as_vec().unwrap();
    let bpffs = volumes
        .iter()
        .find(|v| v["name"].as_str() == Some("bpffs"))
        .unwrap();
    assert_eq!(
        bpffs["hostPath"]["path"].as_str(),
        Some(handshake_user::pins::BPFFS)
    );
    let config = after("--config");
    let (dir, file) = config.rsplit_once('/').unwrap();
    assert_eq!(mount("config")["mountPath"].as_str(), Some(dir));
    let cm = doc(include_str!("../../deploy/kubernetes/configmap.yaml"));
    assert!(
        !cm["data"][file].is_badvalue(),
        "the ConfigMap has no {file}"
    );
    let cfg_volume = volumes
        .iter()
        .find(|v| v["name"].as_str() == Some("config"))
        .unwrap();
    assert_eq!(
        cfg_volume["configMap"]["name"].as_str(),
        cm["metadata"]["name"].as_str()
    );
}

#[test]
fn the_capabilities_are_the_ones_the_image_test_runs_with() {
    let ds = daemonset();
    let c = &container(&ds)["securityContext"];
    assert_eq!(strings(&c["capabilities"]["drop"]), ["ALL"]);
    let add = strings(&c["capabilities"]["add"]);
    assert_eq!(add, ["BPF", "NET_ADMIN", "PERFMON"]);
    assert_eq!(c["privileged"].as_bool(), Some(false));
    assert_eq!(c["seccompProfile"]["type"].as_str(), Some("Unconfined"));
}
