//! `handshake-gate`: the controller CLI.

mod args;
mod cmd;

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = args::Cli::parse();
    match cmd::run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("handshake-gate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
