use super::*;

#[test]
fn defaults_are_valid() {
    validate(&Settings::default()).unwrap();
}

#[test]
fn set_numbers_and_choices() {
    let c = apply_all(
        &Settings::default(),
        &[
            "max-half-open-per-source=20",
            "mode=monitor",
            "overflow=PASS",
            "max-half-open=1_000",
        ],
    )
    .unwrap();
    let c = c.config;
    assert_eq!(c.max_half_open_per_source, 20);
    assert_eq!(c.max_half_open, 1000);
    assert_eq!(c.mode(), Mode::Monitor);
    assert_eq!(c.overflow(), Overflow::Pass);
}

#[test]
fn errors_name_the_key_and_the_range() {
    let e = apply_all(&Settings::default(), &["half-open-timeout-ms=5"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "half-open-timeout-ms: \"5\" is not valid: expected a whole number from 100 to 120000"
    );
    let e = apply_all(&Settings::default(), &["mode=block"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "mode: \"block\" is not valid: expected one of off, monitor, enforce"
    );
    let e = apply_all(&Settings::default(), &["max-half-open=-1"]).unwrap_err();
    assert!(e.to_string().contains("from 0 to 65536"), "{e}");
    let e = apply_all(&Settings::default(), &["max-half-open=65537"]).unwrap_err();
    let e2 = apply_all(&Settings::default(), &["allowed-ports=80,0"]).unwrap_err();
    assert!(
        e2.to_string()
            .starts_with("allowed-ports: \"80,0\" is not valid: expected ports from 1 to 65535"),
        "{e2}"
    );
    assert!(matches!(
        e,
        SettingError::BadValue {
            key: "max-half-open",
            ..
        }
    ));
}

#[test]
fn unknown_keys_list_the_known_ones() {
    let e = apply_all(&Settings::default(), &["max-halfopen=3"]).unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("unknown setting \"max-halfopen\""), "{msg}");
    assert!(msg.contains("max-half-open-per-source"), "{msg}");
}

#[test]
fn not_key_value() {
    assert_eq!(
        apply_all(&Settings::default(), &["max-half-open"]).unwrap_err(),
        SettingError::NotKeyValue {
            arg: "max-half-open".into()
        }
    );
}

#[test]
fn per_source_above_global_is_refused() {
    let e = apply_all(
        &Settings::default(),
        &["max-half-open=10", "max-half-open-per-source=11"],
    )
    .unwrap_err();
    assert!(matches!(
        e,
        SettingError::Inconsistent {
            key: "max-half-open-per-source",
            ..
        }
    ));
    // With no global cap, any per-source cap is fine.
    apply_all(
        &Settings::default(),
        &["max-half-open=0", "max-half-open-per-source=500"],
    )
    .unwrap();
}

#[test]
fn a_failed_set_changes_nothing() {
    let before = Settings::default();
    assert!(apply_all(&before, &["max-half-open=7", "mode=nope"]).is_err());
    assert_eq!(before, Settings::default());
}

#[test]
fn toml_file() {
    let c = from_toml(
        &Settings::default(),
        "mode = \"monitor\"\nmax-half-open = 4096\nmax-half-open-per-source = 20\n",
    )
    .unwrap();
    assert_eq!(
        (
            c.config.mode(),
            c.config.max_half_open,
            c.config.max_half_open_per_source
        ),
        (Mode::Monitor, 4096, 20)
    );
    assert!(matches!(
        from_toml(&Settings::default(), "max-half-open = [1]"),
        Err(SettingError::BadValue {
            key: "max-half-open",
            ..
        })
    ));
    assert!(from_toml(&Settings::default(), "nonsense = 1").is_err());
    assert!(from_toml(&Settings::default(), "mode = ").is_err());
}

#[test]
fn show_round_trips_through_apply() {
    let c = apply_all(
        &Settings::default(),
        &[
            "mode=monitor",
            "max-half-open=77",
            "allowed-ports=22,80,8000-8002",
        ],
    )
    .unwrap();
    let args: Vec<String> = KEYS
        .iter()
        .map(|k| format!("{}={}", k.name, k.show(&c)))
        .collect();
    assert_eq!(apply_all(&Settings::default(), &args).unwrap(), c);
}

#[test]
fn port_lists() {
    let s = apply_all(
        &Settings::default(),
        &["allowed-ports= 443, 80,8000-8003,8001"],
    )
    .unwrap();
    assert_eq!(s.allowed_ports, [80, 443, 8000, 8001, 8002, 8003]);
    assert_eq!(s.config.ports_restricted, 1);
    assert_eq!(key("allowed-ports").unwrap().show(&s), "80,443,8000-8003");
    let words = s.port_bitmap();
    assert_eq!(words[1], 1 << 16, "port 80 is bit 16 of word 1");
    assert_eq!(Settings::from_maps(s.config, &words), s);
    let all = apply_all(&s, &["allowed-ports=all"]).unwrap();
    assert!(all.allowed_ports.is_empty());
    assert_eq!(all.config.ports_restricted, 0);
    for bad in ["80-70", "x", "65536", "1-2-3", "80,,81"] {
        assert!(
            apply_all(&s, &[format!("allowed-ports={bad}")]).is_err(),
            "{bad}"
        );
    }
    let t = from_toml(&Settings::default(), "allowed-ports = [80, \"8000-8001\"]").unwrap();
    assert_eq!(t.allowed_ports, [80, 8000, 8001]);
}

#[test]
fn per_port_above_global_is_refused() {
    let e = apply_all(
        &Settings::default(),
        &[
            "max-half-open=10",
            "max-half-open-per-source=0",
            "max-half-open-per-port=11",
        ],
    )
    .unwrap_err();
    assert!(matches!(
        e,
        SettingError::Inconsistent {
            key: "max-half-open-per-port",
            ..
        }
    ));
}

#[test]
fn the_kubernetes_configmap_holds_valid_settings() {
    let yaml = include_str!("../../../deploy/kubernetes/configmap.yaml");
    let body: String = yaml
        .lines()
        .skip_while(|l| l.trim() != "gate.toml: |")
        .skip(1)
        .take_while(|l| l.starts_with("    ") || l.is_empty())
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    assert!(
        body.contains("max-half-open"),
        "no gate.toml in the ConfigMap"
    );
    let s = from_toml(&Settings::default(), &body).expect("the ConfigMap's settings parse");
    validate(&s).unwrap();
    assert_eq!(
        s,
        Settings::default(),
        "the ConfigMap's values are the defaults"
    );
}

#[test]
fn the_commented_defaults_name_every_key_and_parse_to_the_defaults() {
    let text = commented_defaults();
    for k in KEYS {
        assert!(
            text.contains(&format!("\n# {} = ", k.name)),
            "{} is missing",
            k.name
        );
    }
    let uncommented: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| {
            KEYS.iter()
                .any(|k| l.starts_with(&format!("{} = ", k.name)))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    let s = from_toml(&Settings::default(), &uncommented).expect("the defaults parse");
    assert_eq!(s, Settings::default());
}

#[test]
fn the_config_file_sets_the_prefix_lists_from_lines_and_files() {
    let dir = std::env::temp_dir().join(format!("hg-lists-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("deny.netset"),
        "# a netset\n198.18.66.0/24 # scanners\n2001:db8:66::/48\n",
    )
    .unwrap();
    let path = dir.join("gate.toml");
    std::fs::write(
        &path,
        "max-half-open = 100\n\
         allow = [\"198.18.7.0/24 # health checkers\", \"198.18.9.1\"]\n\
         deny-file = \"deny.netset\"\n",
    )
    .unwrap();
    let s = from_file(&Settings::default(), &path).unwrap();
    assert_eq!(s.config.max_half_open, 100);
    let nets = |l: &Option<Vec<Prefix>>| -> Vec<String> {
        l.as_ref()
            .unwrap()
            .iter()
            .map(|p| p.net.to_string())
            .collect()
    };
    assert_eq!(nets(&s.allow), ["198.18.7.0/24", "198.18.9.1/32"]);
    assert_eq!(s.allow.as_ref().unwrap()[0].comment, "health checkers");
    assert_eq!(nets(&s.deny), ["198.18.66.0/24", "2001:db8:66::/48"]);

    // A list the file does not name is left alone; a bad prefix, a
    // prefix on both lists or a missing file refuses the whole file.
    let s = from_toml(&Settings::default(), "mode = \"monitor\"\n").unwrap();
    assert_eq!((s.allow, s.deny), (None, None));
    for (text, says) in [
        ("allow = [\"198.18.0.0/33\"]", "allow list"),
        (
            "deny = [\"198.18.7.0/24\"]\nallow = [\"198.18.7.9/24\"]",
            "on the deny list too",
        ),
        (
            "deny-file = \"/nonexistent/deny.netset\"",
            "/nonexistent/deny.netset",
        ),
        ("allow = \"198.18.7.0/24\"", "expected a list"),
    ] {
        let e = from_toml(&Settings::default(), text)
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{text:?}: {e}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
