use handshake_common::Config;
use handshake_user::gate::{self, AttachMode, AttachOptions};
use handshake_user::settings::{self, Settings};

use crate::args::{AttachArgs, ModeArg};

pub fn run(a: AttachArgs, netns: Option<&str>) -> anyhow::Result<()> {
    // The whole configuration is checked before anything is loaded.
    let mut s = Settings::default();
    if let Some(path) = &a.config {
        s = settings::from_file(&s, path)?;
    }
    let s = settings::apply_all(&s, &a.set)?;
    let mode = match a.mode {
        ModeArg::Auto => AttachMode::Auto,
        ModeArg::Native => AttachMode::Native,
        ModeArg::Skb => AttachMode::Skb,
    };
    let options = AttachOptions {
        mode,
        max_connections: a.max_connections,
    };
    let dir = gate::attach(&a.iface, netns, options, &s)?;
    println!(
        "attached to {} ({} mode, {}), pinned in {}",
        a.iface,
        settings::mode_name(&s.config),
        describe_caps(&s.config),
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
