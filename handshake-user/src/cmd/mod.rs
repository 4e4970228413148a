//! One module per subcommand.

pub mod attach;
pub mod check;
pub mod conns;
pub mod docs;
pub mod events;
pub mod lists;
pub mod run;
pub mod set;
pub mod status;

use crate::args::{Cli, Command};
use handshake_user::prefixes::List;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    // These only print text from the command-line and settings definitions.
    match &cli.command {
        Command::Completions(a) => return docs::completions(a.shell),
        Command::Manpage => return docs::manpage(),
        Command::ConfigTemplate => {
            print!("{}", handshake_user::settings::commented_defaults());
            return Ok(());
        }
        _ => {}
    }
    // The preflight says what is missing rather than failing on it.
    if let Command::Check(a) = cli.command {
        return check::run(a, cli.netns.as_deref());
    }
    // Every other command touches BPF objects; say so before anything else
    // fails for want of privileges.
    handshake_user::pins::require_root()?;
    // The daemon's metrics socket is opened before entering the namespace,
    // so it serves in the host's namespace, where the operator is.
    let metrics = match &cli.command {
        Command::Run(a) => run::listen(a)?,
        _ => None,
    };
    if let Some(ns) = &cli.netns {
        // First thing, before any thread exists: everything below happens in
        // that namespace, while the mount namespace (and bpffs) stays the host's.
        handshake_user::netns::enter(ns)?;
    }
    let netns = cli.netns.as_deref();
    match cli.command {
        Command::Attach(a) => attach::run(a, netns),
        Command::Detach(a) => {
            let notes = handshake_user::gate::detach(&a.iface, netns)?;
            println!("detached from {}", a.iface);
            print_notes(&notes);
            Ok(())
        }
        Command::Status(a) => status::run(a, netns),
        Command::Conns(a) => conns::run(a, netns),
        Command::Set(a) => set::run(a, netns),
        Command::Run(a) => run::run(a, netns, metrics),
        Command::Events(a) => events::run(a, netns),
        Command::Allow(a) => lists::run(List::Allow, a, netns),
        Command::Deny(a) => lists::run(List::Deny, a, netns),
        Command::Completions(_)
        | Command::Manpage
        | Command::ConfigTemplate
        | Command::Check(_) => {
            unreachable!("handled above")
        }
    }
}

/// What a command changed outside the gate (TCP settings of the
/// namespace), one line each.
fn print_notes(notes: &[String]) {
    for n in notes {
        println!("{n}");
    }
}
