//! The manual page and shell completions come from the command-line
//! definitions and need no privileges.

const GATE: &str = env!("CARGO_BIN_EXE_handshake-gate");

fn run(args: &[&str]) -> String {
    let out = std::process::Command::new(GATE)
        .args(args)
        .output()
        .expect("run handshake-gate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

#[test]
fn the_manual_page_documents_every_command() {
    let page = run(&["manpage"]);
    assert!(
        page.starts_with(".ie") || page.contains(".TH handshake-gate 8"),
        "{page}"
    );
    for cmd in [
        "attach",
        "detach",
        "status",
        "conns",
        "set",
        "run",
        "events",
        "check",
        "allow",
        "deny",
        "completions",
        "manpage",
    ] {
        assert!(
            page.contains(&format!("COMMAND: {}", cmd.to_uppercase())),
            "no section for {cmd}"
        );
    }
    for flag in [
        "\\-\\-replace",
        "\\-\\-metrics",
        "\\-\\-watch",
        "\\-\\-netns",
        "\\-\\-cut",
        "\\-\\-max\\-prefixes",
        "DENY LOAD",
    ] {
        assert!(page.contains(flag), "{flag} is not documented");
    }
}

#[test]
fn completions_cover_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        for cmd in ["attach", "run", "events"] {
            assert!(script.contains(cmd), "{shell} completions lack {cmd}");
        }
    }
}
