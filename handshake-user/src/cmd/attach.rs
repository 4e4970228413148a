use handshake_common::Config;
use handshake_user::gate::{self, AttachMode};
use handshake_user::settings;

use crate::args::{AttachArgs, ModeArg};

pub fn run(a: AttachArgs, netns: Option<&str>) -> anyhow::Result<()> {
    // The whole configuration is checked before anything is loaded.
    let mut cfg = Config::DEFAULT;
    if let Some(path) = &a.config {
        cfg = settings::from_file(&cfg, path)?;
    }
    let cfg = settings::apply_all(&cfg, &a.set)?;
    let mode = match a.mode {
        ModeArg::Auto => AttachMode::Auto,
        ModeArg::Native => AttachMode::Native,
        ModeArg::Skb => AttachMode::Skb,
    };
    let dir = gate::attach(&a.iface, netns, mode, &cfg)?;
    println!(
        "attached to {} ({} mode, {}), pinned in {}",
        a.iface,
        settings::mode_name(&cfg),
        describe_caps(&cfg),
        dir.display()
    );
    Ok(())
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
        "max-half-open {}, per source {}",
        cap(cfg.max_half_open),
        cap(cfg.max_half_open_per_source)
    )
}
