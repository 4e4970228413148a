//! The command line. Doc comments here are the `--help` text.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// A kernel-assisted TCP handshake gate: tracks SYN / SYN-ACK / ACK in XDP,
/// drops excess half-open attempts and reports every connection's state.
///
/// Example: handshake-gate attach eth0 --set max-half-open-per-source=20
#[derive(Debug, Parser)]
#[command(name = "handshake-gate", version, propagate_version = true)]
pub struct Cli {
    /// Act inside this network namespace (as named by `ip netns`); pins stay
    /// in the host's /sys/fs/bpf. Use this instead of `ip netns exec`.
    #[arg(long, global = true, value_name = "NAME")]
    pub netns: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the gate on an interface, pin it and exit; it keeps working.
    ///
    /// Example: handshake-gate attach eth0 --config /etc/handshake-gate.toml --set mode=monitor
    Attach(AttachArgs),
    /// Remove the gate from an interface, with all its pins.
    ///
    /// Example: handshake-gate detach eth0
    Detach(IfaceArgs),
    /// Show limits, half-open totals, connection states and verdict counters.
    ///
    /// Example: handshake-gate status eth0 --json
    Status(StatusArgs),
    /// List tracked connections, like `ss`: both ends' states, age, last seen.
    ///
    /// Example: handshake-gate conns eth0 --state SYN_RCVD --source 198.18.0.0/24 --json
    Conns(ConnsArgs),
    /// Change limits of an attached gate, live (no reattach, no lost state).
    ///
    /// Example: handshake-gate set eth0 max-half-open-per-source=20 mode=enforce
    Set(SetArgs),
}

#[derive(Debug, clap::Args)]
pub struct IfaceArgs {
    /// The network interface.
    pub iface: String,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum ModeArg {
    /// Native where the driver supports it, else generic.
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP: works everywhere, slower.
    Skb,
}

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// The network interface to protect.
    pub iface: String,
    /// XDP attach mode.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
    /// Connections tracked past their handshake (the established map's
    /// size, fixed until detach; the least recently seen go first when full).
    #[arg(long, value_name = "N", default_value_t = handshake_common::ESTABLISHED_CAPACITY)]
    pub max_connections: u32,
    /// A TOML file of settings (the same keys as --set).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A setting, applied after --config; repeat for more. `handshake-gate set --help` lists them.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The network interface.
    pub iface: String,
    /// Print JSON (stable field names) instead of tables.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ConnsArgs {
    /// The network interface.
    pub iface: String,
    /// Only connections with this state on either side (e.g. SYN_SENT, TIME_WAIT).
    #[arg(long, value_name = "STATE")]
    pub state: Option<String>,
    /// Only connections to or from this port.
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Only connections whose client address is in this prefix
    /// (e.g. 198.18.0.0/24, 2001:db8::/64; a bare address means just it).
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr)]
    pub source: Option<ipnet::IpNet>,
    /// Print JSON (stable field names) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
#[command(after_help = crate::cmd::set::KEYS_HELP.as_str())]
pub struct SetArgs {
    /// The network interface.
    pub iface: String,
    /// Settings to change.
    #[arg(required = true, value_name = "KEY=VALUE")]
    pub settings: Vec<String>,
}

/// A prefix, or a bare address as its own /32 or /128.
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            format!("{s:?} is not an address or prefix (like 198.18.0.0/24 or 2001:db8::/64)")
        })
}
