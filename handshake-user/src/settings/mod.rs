//! The tunable limits: names, parsing, validation and the TOML config file.
//!
//! One table, [`KEYS`], describes every setting; `--set KEY=VALUE`, `set`, the
//! config file, `status` and `--help` all read it. The settings are the
//! [`Config`] the programs read from the `CONFIG` map plus the allowed-ports
//! list, which the programs read as a bitmap from the `ALLOWED_PORTS` map.

use std::path::Path;

use handshake_common::{Config, HALF_OPEN_CAPACITY, Mode, Overflow, PORT_WORDS};

use crate::prefixes::{self, List, Prefix};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SettingError {
    #[error("unknown setting {key:?}; known settings: {known}", known = known_keys())]
    UnknownKey { key: String },

    #[error("{key}: {value:?} is not valid: expected {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: String,
    },

    #[error("expected KEY=VALUE, got {arg:?}")]
    NotKeyValue { arg: String },

    #[error("{key}: {why}")]
    Inconsistent { key: &'static str, why: String },

    #[error("config file {path}: {why}")]
    File { path: String, why: String },

    #[error("{list} list: {why}")]
    List { list: &'static str, why: String },
}

/// Everything an operator tunes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The limits; `ports_restricted` follows `allowed_ports`;
    /// `prefix_lists` is kept by the gate as it writes the lists.
    pub config: Config,
    /// Ports that take SYNs, sorted, no repeats; empty: every port.
    pub allowed_ports: Vec<u16>,
    /// The allow list, where the config file sets it (`allow`,
    /// `allow-file`): written as the whole list. `None`: the list is left
    /// as it is (managed with `handshake-gate allow`).
    pub allow: Option<Vec<Prefix>>,
    /// The deny list, likewise.
    pub deny: Option<Vec<Prefix>>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            config: Config::DEFAULT,
            allowed_ports: Vec::new(),
            allow: None,
            deny: None,
        }
    }
}

impl Settings {
    /// The allowed-ports bitmap as the `ALLOWED_PORTS` map holds it: port `p`
    /// is bit `p % 64` of word `p / 64`.
    pub fn port_bitmap(&self) -> Vec<u64> {
        let mut words = vec![0u64; PORT_WORDS as usize];
        for &p in &self.allowed_ports {
            words[p as usize / 64] |= 1 << (p % 64);
        }
        words
    }

    /// Settings from the `CONFIG` and `ALLOWED_PORTS` maps' contents.
    pub fn from_maps(config: Config, words: &[u64]) -> Settings {
        let allowed_ports = if config.ports_restricted == 0 {
            Vec::new()
        } else {
            (0..=u16::MAX)
                .filter(|&p| {
                    words
                        .get(p as usize / 64)
                        .is_some_and(|w| w & (1 << (p % 64)) != 0)
                })
                .collect()
        };
        Settings {
            config,
            allowed_ports,
            allow: None,
            deny: None,
        }
    }

    /// The list the settings set, if they set it.
    pub fn list(&self, list: List) -> Option<&[Prefix]> {
        match list {
            List::Allow => self.allow.as_deref(),
            List::Deny => self.deny.as_deref(),
        }
    }
}

/// How a setting's value is written and checked.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// An integer in `min..=max`.
    Number { min: u32, max: u32 },
    /// One of the named values.
    Choice(&'static [&'static str]),
    /// A list of ports and port ranges, like `80,443,8000-8099`; empty or
    /// `all` means every port.
    Ports,
}

/// Where a setting lives.
#[derive(Clone, Copy)]
enum Field {
    /// A `u32` field of [`Config`].
    Config {
        get: fn(&Config) -> u32,
        set: fn(&mut Config, u32),
    },
    /// [`Settings::allowed_ports`].
    AllowedPorts,
}

/// A tunable setting.
pub struct Key {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    field: Field,
}

const MODES: &[&str] = &["off", "monitor", "enforce"];
pub const OVERFLOWS: &[&str] = &["drop", "pass", "cookie"];
const ON_OFF: &[&str] = &["off", "on"];
/// In the order of [`handshake_common::UnknownFlows`].
pub const UNKNOWN_FLOWS: &[&str] = &["verify", "pick-up"];

macro_rules! config_key {
    ($name:literal, $field:ident, $kind:expr, $help:literal) => {
        Key {
            name: $name,
            help: $help,
            kind: $kind,
            field: Field::Config {
                get: |c| c.$field,
                set: |c, v| c.$field = v,
            },
        }
    };
}

const CAP: Kind = Kind::Number {
    min: 0,
    max: HALF_OPEN_CAPACITY,
};

/// Every setting, in the order `status` shows them.
pub const KEYS: &[Key] = &[
    config_key!(
        "mode",
        mode,
        Kind::Choice(MODES),
        "enforce: drop; monitor: count would-be drops but pass; off: pass all, track nothing"
    ),
    config_key!(
        "max-half-open",
        max_half_open,
        CAP,
        "global cap on half-open attempts (0: no cap)"
    ),
    config_key!(
        "max-half-open-per-source",
        max_half_open_per_source,
        CAP,
        "cap on half-open attempts per source address or prefix (0: no cap)"
    ),
    config_key!(
        "source-prefix-v4",
        source_prefix_v4,
        Kind::Number { min: 8, max: 32 },
        "IPv4 sources share a per-source budget per this prefix (32: per address, 24: per /24)"
    ),
    config_key!(
        "source-prefix-v6",
        source_prefix_v6,
        Kind::Number { min: 16, max: 128 },
        "IPv6 sources share a per-source budget per this prefix (128: per address, 64: per /64)"
    ),
    config_key!(
        "max-half-open-per-port",
        max_half_open_per_port,
        CAP,
        "cap on half-open attempts per destination port (0: no cap)"
    ),
    config_key!(
        "syn-rate-per-source",
        syn_rate_per_source,
        Kind::Number {
            min: 0,
            max: 1_000_000
        },
        "SYNs per second a source (address or prefix) may send (0: no limit)"
    ),
    config_key!(
        "syn-burst",
        syn_burst,
        Kind::Number {
            min: 1,
            max: 1_000_000
        },
        "SYNs a source may send at once before syn-rate-per-source applies"
    ),
    config_key!(
        "verified-reserve-pct",
        verified_reserve_pct,
        Kind::Number { min: 0, max: 100 },
        "share of max-half-open kept for sources that completed a handshake recently"
    ),
    config_key!(
        "verified-ttl-s",
        verified_ttl_s,
        Kind::Number {
            min: 1,
            max: 604_800
        },
        "a source counts as verified for this long after its last completed handshake"
    ),
    Key {
        name: "allowed-ports",
        help: "ports that take SYNs, like 80,443,8000-8099; a SYN to any other is dropped (all: every port)",
        kind: Kind::Ports,
        field: Field::AllowedPorts,
    },
    config_key!(
        "overflow",
        overflow,
        Kind::Choice(OVERFLOWS),
        "SYN over the global or per-port cap: drop it, pass it untracked to the kernel's SYN cookies, or answer it from XDP with a SYN cookie (sets net.ipv4.tcp_syncookies=2)"
    ),
    config_key!(
        "unknown-flows",
        unknown_flows,
        Kind::Choice(UNKNOWN_FLOWS),
        "an arriving segment (not a SYN) of a flow with no entry: verify asks the kernel (a socket for it, or a valid SYN cookie) and drops the rest as no_conn; pick-up tracks every one (for a gate in front of another namespace's sockets)"
    ),
    config_key!(
        "cookie-timestamps",
        cookie_timestamps,
        Kind::Choice(ON_OFF),
        "with overflow=cookie, set net.ipv4.tcp_timestamps=2 (no random offsets) so cookie connections keep window scaling and SACK"
    ),
    config_key!(
        "half-open-timeout-ms",
        half_open_timeout_ms,
        Kind::Number {
            min: 100,
            max: 120_000
        },
        "a half-open attempt is forgotten after this long (changing it restarts the counts)"
    ),
    config_key!(
        "msl-ms",
        msl_ms,
        Kind::Number {
            min: 100,
            max: 600_000
        },
        "maximum segment lifetime; a closed connection stays in TIME_WAIT for 2·MSL"
    ),
    config_key!(
        "event-sample",
        event_sample,
        Kind::Number {
            min: 0,
            max: 1_000_000
        },
        "report one in this many dropped packets to `handshake-gate events` (0: none, 1: all)"
    ),
];

fn known_keys() -> String {
    KEYS.iter().map(|k| k.name).collect::<Vec<_>>().join(", ")
}

fn key(name: &str) -> Result<&'static Key, SettingError> {
    KEYS.iter()
        .find(|k| k.name == name)
        .ok_or_else(|| SettingError::UnknownKey {
            key: name.to_string(),
        })
}

/// The value a setting holds.
enum Value {
    Number(u32),
    Ports(Vec<u16>),
}

impl Key {
    /// The value as a user writes it.
    pub fn show(&self, s: &Settings) -> String {
        match (self.kind, self.field) {
            (Kind::Choice(names), Field::Config { get, .. }) => names
                .get(get(&s.config) as usize)
                .copied()
                .unwrap_or("?")
                .to_string(),
            (_, Field::Config { get, .. }) => get(&s.config).to_string(),
            (_, Field::AllowedPorts) => show_ports(&s.allowed_ports),
        }
    }

    /// The value for JSON: a number, the choice's name, or a list of ports.
    pub fn json(&self, s: &Settings) -> serde_json::Value {
        match (self.kind, self.field) {
            (Kind::Number { .. }, Field::Config { get, .. }) => get(&s.config).into(),
            (_, Field::AllowedPorts) => s.allowed_ports.clone().into(),
            _ => self.show(s).into(),
        }
    }

    /// The allowed values, for `--help`.
    pub fn range(&self) -> String {
        match self.kind {
            Kind::Number { min, max } => format!("{min}..={max}"),
            Kind::Choice(c) => c.join("|"),
            Kind::Ports => "PORTS|all".into(),
        }
    }

    fn parse(&self, value: &str) -> Result<Value, SettingError> {
        let bad = |expected: String| SettingError::BadValue {
            key: self.name,
            value: value.to_string(),
            expected,
        };
        match self.kind {
            Kind::Number { min, max } => {
                let range = format!("a whole number from {min} to {max}");
                let v: u32 = value
                    .trim()
                    .replace('_', "")
                    .parse()
                    .map_err(|_| bad(range.clone()))?;
                if v < min || v > max {
                    return Err(bad(range));
                }
                Ok(Value::Number(v))
            }
            Kind::Choice(names) => names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(value.trim()))
                .map(|i| Value::Number(i as u32))
                .ok_or_else(|| bad(format!("one of {}", names.join(", ")))),
            Kind::Ports => parse_ports(value).map(Value::Ports).ok_or_else(|| {
                bad("ports from 1 to 65535 and ranges like 80,443,8000-8099, or all".into())
            }),
        }
    }

    fn store(&self, s: &mut Settings, v: Value) {
        match (self.field, v) {
            (Field::Config { set, .. }, Value::Number(n)) => set(&mut s.config, n),
            (Field::AllowedPorts, Value::Ports(p)) => {
                s.config.ports_restricted = u32::from(!p.is_empty());
                s.allowed_ports = p;
            }
            _ => unreachable!("a key's kind matches its field"),
        }
    }
}

/// `80,443,8000-8099` → sorted ports; `all` or nothing → empty (every port).
fn parse_ports(text: &str) -> Option<Vec<u16>> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("all") {
        return Some(Vec::new());
    }
    let mut ports = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (lo, hi): (u16, u16) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
        if lo == 0 || lo > hi {
            return None;
        }
        ports.extend(lo..=hi);
    }
    ports.sort_unstable();
    ports.dedup();
    Some(ports)
}

/// Sorted ports → `80,443,8000-8099`; empty → `all`.
fn show_ports(ports: &[u16]) -> String {
    if ports.is_empty() {
        return "all".into();
    }
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < ports.len() {
        let mut j = i;
        while j + 1 < ports.len() && ports[j + 1] == ports[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            ports[i].to_string()
        } else {
            format!("{}-{}", ports[i], ports[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Applies one `KEY=VALUE` to `s`.
pub fn apply(s: &mut Settings, arg: &str) -> Result<(), SettingError> {
    let (k, v) = arg
        .split_once('=')
        .ok_or_else(|| SettingError::NotKeyValue {
            arg: arg.to_string(),
        })?;
    let key = key(k.trim())?;
    let value = key.parse(v)?;
    key.store(s, value);
    Ok(())
}

/// Applies several `KEY=VALUE`s, then checks the result as a whole.
pub fn apply_all<S: AsRef<str>>(base: &Settings, args: &[S]) -> Result<Settings, SettingError> {
    let mut next = base.clone();
    for a in args {
        apply(&mut next, a.as_ref())?;
    }
    validate(&next)?;
    Ok(next)
}

/// Checks every value, and what single keys cannot: values that only make
/// sense together.
pub fn validate(s: &Settings) -> Result<(), SettingError> {
    for k in KEYS {
        // Re-parse each value, so settings read back from the maps are checked too.
        k.parse(&k.show(s))?;
    }
    let cfg = &s.config;
    if cfg.ports_restricted != u32::from(!s.allowed_ports.is_empty()) {
        return Err(SettingError::Inconsistent {
            key: "allowed-ports",
            why: "the list and the map's flag disagree (was the map written by another version?)"
                .into(),
        });
    }
    if let (Some(allow), Some(deny)) = (&s.allow, &s.deny)
        && let Some(p) = allow.iter().find(|a| deny.iter().any(|d| d.net == a.net))
    {
        return Err(SettingError::List {
            list: "allow",
            why: format!(
                "{} is on the deny list too; a prefix may be on one list",
                p.net
            ),
        });
    }
    for (key, cap) in [
        ("max-half-open-per-source", cfg.max_half_open_per_source),
        ("max-half-open-per-port", cfg.max_half_open_per_port),
    ] {
        if cfg.max_half_open != 0 && cap != 0 && cap > cfg.max_half_open {
            return Err(SettingError::Inconsistent {
                key,
                why: format!(
                    "{cap} is above max-half-open ({}), so it would never apply",
                    cfg.max_half_open
                ),
            });
        }
    }
    Ok(())
}

/// Reads a TOML config file: the same keys as `--set`, at the top level, e.g.
///
/// ```toml
/// mode = "enforce"
/// max-half-open = 4096
/// max-half-open-per-source = 20
/// allowed-ports = [80, 443]      # or "80,443,8000-8099"
/// ```
pub fn from_file(base: &Settings, path: &Path) -> Result<Settings, SettingError> {
    let file_err = |why: String| SettingError::File {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    from_toml_in(base, &text, path.parent()).map_err(|e| match e {
        SettingError::File { why, .. } => file_err(why),
        other => file_err(other.to_string()),
    })
}

/// Parses TOML text as in [`from_file`].
pub fn from_toml(base: &Settings, text: &str) -> Result<Settings, SettingError> {
    from_toml_in(base, text, None)
}

/// The prefix lists' keys in a config file: a list of prefixes (each may
/// carry a note after `#`), and a file of them.
const LIST_KEYS: [(&str, &str, List); 2] = [
    ("allow", "allow-file", List::Allow),
    ("deny", "deny-file", List::Deny),
];

/// [`from_toml`], with relative list files found in `dir`.
fn from_toml_in(base: &Settings, text: &str, dir: Option<&Path>) -> Result<Settings, SettingError> {
    let mut table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingError::File {
            path: String::new(),
            why: e.to_string(),
        })?;
    let mut lists: [Option<Vec<Prefix>>; 2] = [None, None];
    for (i, (inline, file, list)) in LIST_KEYS.into_iter().enumerate() {
        let bad = |key: &str, why: String| SettingError::List {
            list: list.name(),
            why: format!("{key}: {why}"),
        };
        if let Some(v) = table.remove(inline) {
            let items = v
                .as_array()
                .ok_or_else(|| bad(inline, "expected a list of prefixes".into()))?;
            let mut text = String::new();
            for item in items {
                let line = item
                    .as_str()
                    .ok_or_else(|| bad(inline, format!("{item} is not a string")))?;
                text.push_str(line);
                text.push('\n');
            }
            let got = prefixes::parse_lines(&text, "").map_err(|e| bad(inline, e))?;
            lists[i].get_or_insert_with(Vec::new).extend(got);
        }
        if let Some(v) = table.remove(file) {
            let name = v
                .as_str()
                .ok_or_else(|| bad(file, "expected a file name".into()))?;
            let path = match dir {
                Some(d) => d.join(name),
                None => name.into(),
            };
            let got = prefixes::read_file(list, &path, "")?;
            lists[i].get_or_insert_with(Vec::new).extend(got);
        }
    }
    let [allow, deny] = lists;
    let mut args = Vec::new();
    for (k, v) in &table {
        let bad = |other: &toml::Value| match key(k) {
            Ok(key) => SettingError::BadValue {
                key: key.name,
                value: other.to_string(),
                expected: "a number, a string, or a list of ports".into(),
            },
            Err(e) => e,
        };
        let v = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Array(items) if matches!(key(k)?.kind, Kind::Ports) => {
                let mut parts = Vec::new();
                for item in items {
                    match item {
                        toml::Value::Integer(i) => parts.push(i.to_string()),
                        toml::Value::String(s) => parts.push(s.clone()),
                        other => return Err(bad(other)),
                    }
                }
                parts.join(",")
            }
            other => return Err(bad(other)),
        };
        args.push(format!("{k}={v}"));
    }
    let mut s = apply_all(base, &args)?;
    if allow.is_some() {
        s.allow = allow;
    }
    if deny.is_some() {
        s.deny = deny;
    }
    validate(&s)?;
    Ok(s)
}

/// A config file with every setting commented out at its default, each
/// under its help and range: what the Debian package installs as
/// `/etc/handshake-gate/handshake-gate.toml`.
pub fn commented_defaults() -> String {
    let defaults = Settings::default();
    let mut s = String::from(
        "# handshake-gate settings, read by `handshake-gate run --config FILE` at start,\n\
         # on SIGHUP and whenever the file changes. Every setting is shown at its\n\
         # default, commented out; uncomment and change what you need.\n",
    );
    for k in KEYS {
        let value = k.show(&defaults);
        let toml = match value.parse::<i64>() {
            Ok(n) => n.to_string(),
            Err(_) => format!("{value:?}"),
        };
        s.push_str(&format!(
            "\n# {} ({})\n# {} = {toml}\n",
            k.help,
            k.range(),
            k.name
        ));
    }
    s
}

/// The list of settings, for `set --help`.
pub static KEYS_HELP: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let mut s = String::from("Settings:\n");
    for k in KEYS {
        s.push_str(&format!("  {:<26} {:<16} {}\n", k.name, k.range(), k.help));
    }
    s
});

pub fn mode_name(cfg: &Config) -> &'static str {
    Mode::from_u32(cfg.mode).name()
}

pub fn overflow_name(cfg: &Config) -> &'static str {
    Overflow::from_u32(cfg.overflow).name()
}

#[cfg(test)]
mod tests;
