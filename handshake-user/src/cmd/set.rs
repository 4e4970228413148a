use handshake_user::gate::Gate;
use handshake_user::settings::{self, KEYS};

use crate::args::SetArgs;

pub fn run(a: SetArgs, netns: Option<&str>) -> anyhow::Result<()> {
    let mut gate = Gate::open(&a.iface, netns)?;
    let old = gate.settings()?;
    let new = settings::apply_all(&old, &a.settings)?;
    let notes = gate.set_settings(&new)?;
    for k in KEYS {
        let (before, after) = (k.show(&old), k.show(&new));
        if before != after {
            println!("{}: {before} -> {after}", k.name);
        }
    }
    super::print_notes(&notes);
    Ok(())
}
