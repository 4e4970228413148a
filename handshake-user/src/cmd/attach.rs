use handshake_common::Config;
use handshake_user::gate::{self, AttachMode, AttachOptions, Gate, v6_connections};
use handshake_user::settings::{self, Settings};

use crate::args::{AttachArgs, ModeArg};

pub fn run(a: AttachArgs, netns: Option<&str>) -> anyhow::Result<()> {
    if a.replace {
        return replace(a, netns);
    }
    // The whole configuration is checked before anything is loaded.
    let s = settings_from(&Settings::default(), &a)?;
    let options = AttachOptions {
        mode: attach_mode(a.mode),
        max_connections: a.max_connections,
        max_connections_v6: v6_connections(a.max_connections, a.max_connections_v6),
        max_prefixes: a.max_prefixes,
        multiprog: a.multiprog.priority(),
    };
    let (dir, notes) = gate::attach(&a.iface, netns, options, &s)?;
    println!(
        "attached to {} ({} mode, {}){}, pinned in {}",
        a.iface,
        settings::mode_name(&s.config),
        describe_caps(&s.config),
        options
            .multiprog
            .map(|p| format!(" in libxdp's dispatcher at priority {p}"))
            .unwrap_or_default(),
        dir.display()
    );
    super::print_notes(&notes);
    Ok(())
}

/// `attach --replace`: new programs over the pinned maps, then any
/// `--config` / `--set` over the settings the gate already has.
fn replace(a: AttachArgs, netns: Option<&str>) -> anyhow::Result<()> {
    let before = Gate::open(&a.iface, netns)?;
    let current = before.settings()?;
    // Checked before anything changes.
    let wanted = settings_from(&current, &a)?;
    let dir = gate::replace(&a.iface, netns)?;
    let mut after = Gate::open_dir(dir.clone())?;
    let notes = if wanted != current {
        after.set_settings(&wanted)?
    } else {
        Vec::new()
    };
    let now = handshake_user::monotonic_ns();
    let kept = after.tally(&wanted.config, now)?.live;
    println!(
        "replaced the programs on {} in place; {kept} tracked connection(s) and every count and setting kept, pinned in {}",
        a.iface,
        dir.display()
    );
    super::print_notes(&notes);
    Ok(())
}

fn settings_from(base: &Settings, a: &AttachArgs) -> anyhow::Result<Settings> {
    let mut s = base.clone();
    if let Some(path) = &a.config {
        s = settings::from_file(&s, path)?;
    }
    Ok(settings::apply_all(&s, &a.set)?)
}

pub fn attach_mode(m: ModeArg) -> AttachMode {
    match m {
        ModeArg::Auto => AttachMode::Auto,
        ModeArg::Native => AttachMode::Native,
        ModeArg::Skb => AttachMode::Skb,
    }
}

fn describe_caps(cfg: &Config) -> String {
    let cap = |v: u32| {
        if v == 0 {
            "none".to_string()
        } else {
            v.to_string()
        }
    };
    format!(
        "max-half-open {}, per source {}, overflow {}",
        cap(cfg.max_half_open),
        cap(cfg.max_half_open_per_source),
        settings::overflow_name(cfg)
    )
}
