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
    /// Run as a daemon: attach (or adopt an attached gate), sweep expired
    /// entries, serve Prometheus metrics, log the programs' messages, reload
    /// the config file on SIGHUP and when it changes; serve /healthz and
    /// /readyz beside the metrics; on SIGTERM, detach what it attached.
    /// Under systemd (`Type=notify`) it says READY=1 once the gate is
    /// attached and the metrics are served, feeds the watchdog after each
    /// sweep (WatchdogSec=), and says RELOADING=1 and STOPPING=1. The
    /// Grafana dashboard `deploy/grafana/handshake-gate.json` charts the
    /// metrics.
    ///
    /// Example: handshake-gate run eth0 --config /etc/handshake-gate.toml --metrics 127.0.0.1:9464
    Run(RunArgs),
    /// Trusted prefixes: their SYNs pass every cap and rate (still only to
    /// allowed ports, still validated), tracked without taking a half-open
    /// count. The most specific prefix on either list decides.
    ///
    /// Example: handshake-gate allow eth0 add 198.18.7.0/24 --comment "health checkers"
    Allow(ListArgs),
    /// Refused prefixes: their SYNs, and every segment of theirs the gate
    /// has no connection for, are dropped as `denied` before any other
    /// lookup. Connections already tracked finish, unless added with --cut.
    ///
    /// Example: handshake-gate deny eth0 load /etc/handshake-gate/deny.netset --cut
    Deny(ListArgs),
    /// Follow sampled drop events (reason, source, port, state): who is
    /// flooding; `--pcap FILE` writes the dropped frames for tcpdump and
    /// Wireshark. Needs event-sample set (`set IFACE event-sample=100`).
    ///
    /// Example: handshake-gate events eth0 --json --count 20
    Events(EventsArgs),
    /// Say, changing nothing, whether the gate can be attached here: root,
    /// bpffs, BTF, the kernel and what it offers, the interface and its XDP
    /// hook, the TCP settings, the config file, the maps' memory. Exits
    /// non-zero on an error.
    ///
    /// Example: handshake-gate check eth0 --config /etc/handshake-gate.toml
    Check(CheckArgs),
    /// Print shell completions for handshake-gate to standard output.
    ///
    /// Example: handshake-gate completions bash > /etc/bash_completion.d/handshake-gate
    Completions(CompletionsArgs),
    /// Print the manual page (roff) to standard output.
    ///
    /// Example: handshake-gate manpage > /usr/share/man/man8/handshake-gate.8
    Manpage,
    /// Print a config file with every setting at its default, commented
    /// out, each under its help and range.
    ///
    /// Example: handshake-gate config-template > /etc/handshake-gate/handshake-gate.toml
    ConfigTemplate,
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
    /// IPv4 connections tracked past their handshake (the IPv4 established
    /// map's size, fixed until detach; the least recently seen go first when
    /// full).
    #[arg(long, value_name = "N", default_value_t = handshake_common::ESTABLISHED_CAPACITY)]
    pub max_connections: u32,
    /// IPv6 connections tracked past their handshake (the IPv6 map's size;
    /// by default a quarter of --max-connections, at least 1024).
    #[arg(long, value_name = "N")]
    pub max_connections_v6: Option<u32>,
    /// Prefixes each of the allow and deny lists may hold (fixed until
    /// detach; kernel memory is taken only as prefixes are added).
    #[arg(long, value_name = "N", default_value_t = handshake_common::prefix::DEFAULT_MAX_PREFIXES)]
    pub max_prefixes: u32,
    /// A TOML file of settings (the same keys as --set).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A setting, applied after --config; repeat for more. `handshake-gate set --help` lists them.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Upgrade an attached gate in place: swap this binary's programs in,
    /// atomically, over the pinned maps (tracked connections, counts and
    /// settings stay; --config and --set, if given, are applied after).
    /// Refuses when the pinned maps' layout differs from this version's.
    #[arg(long, conflicts_with_all = ["mode", "max_connections", "max_connections_v6", "max_prefixes", "multiprog"])]
    pub replace: bool,
    #[command(flatten)]
    pub multiprog: MultiprogArgs,
}

/// Sharing the XDP hook with other programs through libxdp's dispatcher.
#[derive(Debug, clap::Args)]
pub struct MultiprogArgs {
    /// Run the XDP program as one of libxdp's multi-program dispatcher
    /// (as xdp-loader and xdp-filter do), beside the programs already in it;
    /// on an empty hook, make the dispatcher. Needs libxdp's dispatcher
    /// object (`apt install libxdp1`) and a kernel with the BPF trampoline.
    #[arg(long)]
    pub multiprog: bool,
    /// With --multiprog: the run priority, lowest first. The default runs
    /// the gate after xdp-filter (10) and libxdp's default (50), so it sees
    /// what reaches the TCP stack.
    #[arg(long, value_name = "N", requires = "multiprog",
          default_value_t = handshake_user::gate::multiprog::DEFAULT_PRIORITY)]
    pub priority: u32,
}

impl MultiprogArgs {
    pub fn priority(&self) -> Option<u32> {
        self.multiprog.then_some(self.priority)
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The network interface to protect, or `default-route`: the one this
    /// network namespace's default route leaves by (for a fleet whose NICs
    /// are named differently).
    pub iface: String,
    /// A TOML file of settings, applied at start and again on SIGHUP and
    /// whenever it changes (its directory is watched, so a Kubernetes
    /// ConfigMap's symlink swap counts); a file that does not parse or
    /// validate leaves the running settings as they are, and says why in
    /// the log.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where to serve Prometheus metrics (`/metrics`), in the host's network
    /// namespace even with --netns; `off` serves none.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464", value_parser = parse_listen)]
    pub metrics: Listen,
    /// Leave the gate attached on SIGTERM / SIGINT (it is always left when
    /// the daemon adopted a gate attached before it started).
    #[arg(long)]
    pub keep: bool,
    /// Seconds between sweeps of expired entries.
    #[arg(long, value_name = "SECS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub sweep_interval: u64,
    /// XDP attach mode, when the daemon attaches.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
    /// IPv4 connections tracked past their handshake, when the daemon attaches.
    #[arg(long, value_name = "N", default_value_t = handshake_common::ESTABLISHED_CAPACITY)]
    pub max_connections: u32,
    /// IPv6 connections tracked past their handshake (the IPv6 map's size;
    /// by default a quarter of --max-connections, at least 1024).
    #[arg(long, value_name = "N")]
    pub max_connections_v6: Option<u32>,
    /// Prefixes each list may hold, when the daemon attaches.
    #[arg(long, value_name = "N", default_value_t = handshake_common::prefix::DEFAULT_MAX_PREFIXES)]
    pub max_prefixes: u32,
    /// When the daemon attaches.
    #[command(flatten)]
    pub multiprog: MultiprogArgs,
}

/// Where `run` serves its metrics.
#[derive(Clone, Copy, Debug)]
pub enum Listen {
    Off,
    At(std::net::SocketAddr),
}

fn parse_listen(s: &str) -> Result<Listen, String> {
    if s == "off" {
        return Ok(Listen::Off);
    }
    s.parse()
        .map(Listen::At)
        .map_err(|_| format!("{s:?} is not ADDR:PORT (like 127.0.0.1:9464 or [::1]:9464) or off"))
}

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// The network interface.
    pub iface: String,
    /// One JSON object per line (stable field names) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events (default: follow until interrupted).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Also write each event's frame (its first 128 bytes) to FILE as
    /// pcapng, the reason and states in each packet's comment, for tcpdump
    /// and Wireshark; `-` writes it to standard output alone, so
    /// `events IFACE --pcap - | tcpdump -nr -` works.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The network interface to protect.
    pub iface: String,
    /// A TOML file of settings to check (and whose needs to check).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The IPv4 established map's size the attach would use.
    #[arg(long, value_name = "N", default_value_t = handshake_common::ESTABLISHED_CAPACITY)]
    pub max_connections: u32,
    /// IPv6 connections tracked past their handshake (the IPv6 map's size;
    /// by default a quarter of --max-connections, at least 1024).
    #[arg(long, value_name = "N")]
    pub max_connections_v6: Option<u32>,
    /// The prefix lists' size the attach would use.
    #[arg(long, value_name = "N", default_value_t = handshake_common::prefix::DEFAULT_MAX_PREFIXES)]
    pub max_prefixes: u32,
    /// One JSON object (stable field names) instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The network interface.
    pub iface: String,
    #[command(subcommand)]
    pub action: ListAction,
}

/// What to do with a prefix list.
#[derive(Debug, Subcommand)]
pub enum ListAction {
    /// Put prefixes on the list (a prefix already there takes the new comment).
    Add {
        /// Prefixes or bare addresses (198.18.7.0/24, 2001:db8::/48, 198.18.9.1).
        #[arg(required = true, value_name = "CIDR", value_parser = parse_cidr)]
        prefixes: Vec<ipnet::IpNet>,
        /// A note kept with each (56 bytes at most; `list` shows it).
        #[arg(long, value_name = "TEXT", default_value = "")]
        comment: String,
        /// Deny only: also delete the connections already tracked from
        /// these prefixes, so their next segment is dropped as well.
        #[arg(long)]
        cut: bool,
    },
    /// Take prefixes off the list.
    Del {
        /// Prefixes on the list, as added (a bare address is its /32 or /128).
        #[arg(required = true, value_name = "CIDR", value_parser = parse_cidr)]
        prefixes: Vec<ipnet::IpNet>,
    },
    /// Show the list: prefix, when added, comment.
    List {
        /// One JSON array (stable field names) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put every prefix of a file on the list: one a line, `#` comments
    /// (a comment after a prefix becomes its note), the FireHOL netset
    /// format; `-` reads standard input. All or nothing.
    Load {
        /// The file of prefixes (`-`: standard input).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Make the list exactly the file's prefixes (others come off).
        #[arg(long)]
        replace: bool,
        /// The note of each prefix whose line has none.
        #[arg(long, value_name = "TEXT", default_value = "")]
        comment: String,
        /// Deny only: as for `add --cut`.
        #[arg(long)]
        cut: bool,
    },
    /// Empty the list.
    Flush,
}

#[derive(Debug, clap::Args)]
pub struct CompletionsArgs {
    /// The shell.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The network interface.
    pub iface: String,
    /// Print JSON (stable field names) instead of tables.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Refresh every SECS seconds, with the rate of each verdict since the
    /// last refresh, until interrupted.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub watch: Option<u64>,
    /// With --watch: stop after this many refreshes.
    #[arg(long, value_name = "N", requires = "watch")]
    pub count: Option<u64>,
    /// Count the connections by state now, even on a large table whose
    /// count the daemon's last sweep left (see the counts' age).
    #[arg(long)]
    pub fresh: bool,
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
    /// Print JSON (stable field names) instead of a table: one array,
    /// written a row at a time.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many rows.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Row order: `table` prints them as the maps are read (half-open
    /// first), holding nothing; `oldest` prints the oldest first, which
    /// holds every matching row in memory, or only N with --limit N.
    #[arg(long, value_enum, default_value_t = ConnsOrder::Table)]
    pub order: ConnsOrder,
}

/// The order of `conns`' rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConnsOrder {
    /// As the maps are read.
    Table,
    /// Oldest first.
    Oldest,
}

#[derive(Debug, clap::Args)]
#[command(after_help = handshake_user::settings::KEYS_HELP.as_str())]
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
