//! Shell completions and the manual page, generated from the command-line
//! definitions, so they never disagree with `--help`.

use clap::CommandFactory as _;

use crate::args::Cli;

pub fn completions(shell: clap_complete::Shell) -> anyhow::Result<()> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "handshake-gate", &mut std::io::stdout());
    Ok(())
}

/// One page: the main command, then a section per subcommand.
pub fn manpage() -> anyhow::Result<()> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone()).section("8");
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        let name = sub.get_name();
        out.extend_from_slice(format!(".SH \"COMMAND: {}\"\n", name.to_uppercase()).as_bytes());
        section(&mut out, format!("handshake-gate {name}"), sub, true)?;
        // A command's own verbs (`allow add`, `deny list`, …), each under
        // its own heading.
        for verb in sub.get_subcommands().filter(|s| s.get_name() != "help") {
            let heading = format!("{name} {}", verb.get_name()).to_uppercase();
            out.extend_from_slice(format!(".SS \"{heading}\"\n").as_bytes());
            let full = format!("handshake-gate {name} IFACE {}", verb.get_name());
            section(&mut out, full, verb, false)?;
        }
    }
    man.render_version_section(&mut out)?;
    std::io::Write::write_all(&mut std::io::stdout(), &out)?;
    Ok(())
}

/// One command's synopsis (named `full`), description, options and extra
/// text, with `.SS` headings where `headed`.
fn section(
    out: &mut Vec<u8>,
    full: String,
    cmd: &clap::Command,
    headed: bool,
) -> anyhow::Result<()> {
    // Shown in its synopsis; leaked, as the command lives until exit anyway.
    let full: &'static str = Box::leak(full.into_boxed_str());
    let page = clap_mangen::Man::new(cmd.clone().name(full));
    if headed {
        out.extend_from_slice(b".SS SYNOPSIS\n");
    }
    let mut synopsis = Vec::new();
    page.render_synopsis_section(&mut synopsis)?;
    out.extend(strip_heading(&synopsis));
    let mut desc = Vec::new();
    page.render_description_section(&mut desc)?;
    out.extend(strip_heading(&desc));
    let mut opts = Vec::new();
    page.render_options_section(&mut opts)?;
    if !opts.is_empty() {
        if headed {
            out.extend_from_slice(b".SS OPTIONS\n");
        }
        out.extend(strip_heading(&opts));
    }
    let mut after = Vec::new();
    page.render_extra_section(&mut after)?;
    out.extend(strip_heading(&after));
    Ok(())
}

/// A rendered section without its `.SH` heading line, to nest it under ours.
fn strip_heading(section: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(section);
    text.lines()
        .filter(|l| !l.starts_with(".SH "))
        .flat_map(|l| format!("{l}\n").into_bytes())
        .collect()
}
