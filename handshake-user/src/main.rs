//! `handshake-gate`: the controller CLI.

mod args;
mod cmd;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let cli = args::Cli::parse();
    // The daemon says what it does (and forwards the programs' log);
    // one-shot commands stay quiet but for warnings.
    let level = match cli.command {
        args::Command::Run(_) => "info",
        _ => "warn",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handshake-gate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
