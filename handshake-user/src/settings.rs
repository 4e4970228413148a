//! The tunable limits: names, parsing, validation and the TOML config file.
//!
//! One table, [`KEYS`], describes every setting; `--set KEY=VALUE`, `set`, the
//! config file, `status` and `--help` all read it.

use std::path::Path;

use handshake_common::{Config, HALF_OPEN_CAPACITY, Mode, Overflow};

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
}

/// How a setting's value is written and checked.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// An integer in `min..=max`.
    Number { min: u32, max: u32 },
    /// One of the named values.
    Choice(&'static [&'static str]),
}

/// A tunable setting.
pub struct Key {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    get: fn(&Config) -> u32,
    set: fn(&mut Config, u32),
}

const MODES: &[&str] = &["off", "monitor", "enforce"];
const OVERFLOWS: &[&str] = &["drop", "pass"];

/// Every setting, in the order `status` shows them.
pub const KEYS: &[Key] = &[
    Key {
        name: "mode",
        help: "enforce: drop; monitor: count would-be drops but pass; off: pass all, track nothing",
        kind: Kind::Choice(MODES),
        get: |c| c.mode,
        set: |c, v| c.mode = v,
    },
    Key {
        name: "max-half-open",
        help: "global cap on half-open attempts (0: no cap)",
        kind: Kind::Number {
            min: 0,
            max: HALF_OPEN_CAPACITY,
        },
        get: |c| c.max_half_open,
        set: |c, v| c.max_half_open = v,
    },
    Key {
        name: "max-half-open-per-source",
        help: "cap on half-open attempts per source address or prefix (0: no cap)",
        kind: Kind::Number {
            min: 0,
            max: HALF_OPEN_CAPACITY,
        },
        get: |c| c.max_half_open_per_source,
        set: |c, v| c.max_half_open_per_source = v,
    },
    Key {
        name: "source-prefix-v4",
        help: "IPv4 sources share a per-source budget per this prefix (32: per address, 24: per /24)",
        kind: Kind::Number { min: 8, max: 32 },
        get: |c| c.source_prefix_v4,
        set: |c, v| c.source_prefix_v4 = v,
    },
    Key {
        name: "source-prefix-v6",
        help: "IPv6 sources share a per-source budget per this prefix (128: per address, 64: per /64)",
        kind: Kind::Number { min: 16, max: 128 },
        get: |c| c.source_prefix_v6,
        set: |c, v| c.source_prefix_v6 = v,
    },
    Key {
        name: "overflow",
        help: "SYN over the global cap: drop it, or pass it untracked to the kernel's SYN cookies",
        kind: Kind::Choice(OVERFLOWS),
        get: |c| c.overflow,
        set: |c, v| c.overflow = v,
    },
    Key {
        name: "half-open-timeout-ms",
        help: "a half-open attempt is forgotten after this long (changing it restarts the counts)",
        kind: Kind::Number {
            min: 100,
            max: 120_000,
        },
        get: |c| c.half_open_timeout_ms,
        set: |c, v| c.half_open_timeout_ms = v,
    },
    Key {
        name: "msl-ms",
        help: "maximum segment lifetime; a closed connection stays in TIME_WAIT for 2·MSL",
        kind: Kind::Number {
            min: 100,
            max: 600_000,
        },
        get: |c| c.msl_ms,
        set: |c, v| c.msl_ms = v,
    },
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

impl Key {
    /// The value as a user writes it.
    pub fn show(&self, cfg: &Config) -> String {
        let v = (self.get)(cfg);
        match self.kind {
            Kind::Number { .. } => v.to_string(),
            Kind::Choice(names) => names.get(v as usize).copied().unwrap_or("?").to_string(),
        }
    }

    /// The value for JSON: a number, or the choice's name.
    pub fn json(&self, cfg: &Config) -> serde_json::Value {
        match self.kind {
            Kind::Number { .. } => (self.get)(cfg).into(),
            Kind::Choice(_) => self.show(cfg).into(),
        }
    }

    fn parse(&self, value: &str) -> Result<u32, SettingError> {
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
                Ok(v)
            }
            Kind::Choice(names) => names
                .iter()
                .position(|n| n.eq_ignore_ascii_case(value.trim()))
                .map(|i| i as u32)
                .ok_or_else(|| bad(format!("one of {}", names.join(", ")))),
        }
    }
}

/// Applies one `KEY=VALUE` to `cfg`.
pub fn apply(cfg: &mut Config, arg: &str) -> Result<(), SettingError> {
    let (k, v) = arg
        .split_once('=')
        .ok_or_else(|| SettingError::NotKeyValue {
            arg: arg.to_string(),
        })?;
    let key = key(k.trim())?;
    let value = key.parse(v)?;
    (key.set)(cfg, value);
    Ok(())
}

/// Applies several `KEY=VALUE`s, then checks the result as a whole.
pub fn apply_all<S: AsRef<str>>(cfg: &Config, args: &[S]) -> Result<Config, SettingError> {
    let mut next = *cfg;
    for a in args {
        apply(&mut next, a.as_ref())?;
    }
    validate(&next)?;
    Ok(next)
}

/// Checks what single keys cannot: values that only make sense together.
pub fn validate(cfg: &Config) -> Result<(), SettingError> {
    for k in KEYS {
        // Re-parse each value, so a config read back from a map is checked too.
        k.parse(&k.show(cfg))?;
    }
    if cfg.max_half_open != 0
        && cfg.max_half_open_per_source != 0
        && cfg.max_half_open_per_source > cfg.max_half_open
    {
        return Err(SettingError::Inconsistent {
            key: "max-half-open-per-source",
            why: format!(
                "{} is above max-half-open ({}), so it would never apply",
                cfg.max_half_open_per_source, cfg.max_half_open
            ),
        });
    }
    Ok(())
}

/// Reads a TOML config file: the same keys as `--set`, at the top level, e.g.
///
/// ```toml
/// mode = "enforce"
/// max-half-open = 4096
/// max-half-open-per-source = 20
/// ```
pub fn from_file(base: &Config, path: &Path) -> Result<Config, SettingError> {
    let file_err = |why: String| SettingError::File {
        path: path.display().to_string(),
        why,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(e.to_string()))?;
    from_toml(base, &text).map_err(|e| match e {
        SettingError::File { why, .. } => file_err(why),
        other => file_err(other.to_string()),
    })
}

/// Parses TOML text as in [`from_file`].
pub fn from_toml(base: &Config, text: &str) -> Result<Config, SettingError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| SettingError::File {
            path: String::new(),
            why: e.to_string(),
        })?;
    let mut args = Vec::new();
    for (k, v) in &table {
        let v = match v {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(i) => i.to_string(),
            other => {
                return Err(SettingError::BadValue {
                    key: key(k)?.name,
                    value: other.to_string(),
                    expected: "a number or a string".into(),
                });
            }
        };
        args.push(format!("{k}={v}"));
    }
    apply_all(base, &args)
}

pub fn mode_name(cfg: &Config) -> &'static str {
    Mode::from_u32(cfg.mode).name()
}

pub fn overflow_name(cfg: &Config) -> &'static str {
    Overflow::from_u32(cfg.overflow).name()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        validate(&Config::DEFAULT).unwrap();
    }

    #[test]
    fn set_numbers_and_choices() {
        let c = apply_all(
            &Config::DEFAULT,
            &[
                "max-half-open-per-source=20",
                "mode=monitor",
                "overflow=PASS",
                "max-half-open=1_000",
            ],
        )
        .unwrap();
        assert_eq!(c.max_half_open_per_source, 20);
        assert_eq!(c.max_half_open, 1000);
        assert_eq!(c.mode(), Mode::Monitor);
        assert_eq!(c.overflow(), Overflow::Pass);
    }

    #[test]
    fn errors_name_the_key_and_the_range() {
        let e = apply_all(&Config::DEFAULT, &["half-open-timeout-ms=5"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "half-open-timeout-ms: \"5\" is not valid: expected a whole number from 100 to 120000"
        );
        let e = apply_all(&Config::DEFAULT, &["mode=block"]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "mode: \"block\" is not valid: expected one of off, monitor, enforce"
        );
        let e = apply_all(&Config::DEFAULT, &["max-half-open=-1"]).unwrap_err();
        assert!(e.to_string().contains("from 0 to 65536"), "{e}");
        let e = apply_all(&Config::DEFAULT, &["max-half-open=65537"]).unwrap_err();
        assert!(matches!(
            e,
            SettingError::BadValue {
                key: "max-half-open",
                ..
            }
        ));
    }

    #[test]
    fn unknown_keys_list_the_known_ones() {
        let e = apply_all(&Config::DEFAULT, &["max-halfopen=3"]).unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("unknown setting \"max-halfopen\""), "{msg}");
        assert!(msg.contains("max-half-open-per-source"), "{msg}");
    }

    #[test]
    fn not_key_value() {
        assert_eq!(
            apply_all(&Config::DEFAULT, &["max-half-open"]).unwrap_err(),
            SettingError::NotKeyValue {
                arg: "max-half-open".into()
            }
        );
    }

    #[test]
    fn per_source_above_global_is_refused() {
        let e = apply_all(
            &Config::DEFAULT,
            &["max-half-open=10", "max-half-open-per-source=11"],
        )
        .unwrap_err();
        assert!(matches!(
            e,
            SettingError::Inconsistent {
                key: "max-half-open-per-source",
                ..
            }
        ));
        // With no global cap, any per-source cap is fine.
        apply_all(
            &Config::DEFAULT,
            &["max-half-open=0", "max-half-open-per-source=500"],
        )
        .unwrap();
    }

    #[test]
    fn a_failed_set_changes_nothing() {
        let before = Config::DEFAULT;
        assert!(apply_all(&before, &["max-half-open=7", "mode=nope"]).is_err());
        assert_eq!(before, Config::DEFAULT);
    }

    #[test]
    fn toml_file() {
        let c = from_toml(
            &Config::DEFAULT,
            "mode = \"monitor\"\nmax-half-open = 4096\nmax-half-open-per-source = 20\n",
        )
        .unwrap();
        assert_eq!(
            (c.mode(), c.max_half_open, c.max_half_open_per_source),
            (Mode::Monitor, 4096, 20)
        );
        assert!(matches!(
            from_toml(&Config::DEFAULT, "max-half-open = [1]"),
            Err(SettingError::BadValue {
                key: "max-half-open",
                ..
            })
        ));
        assert!(from_toml(&Config::DEFAULT, "nonsense = 1").is_err());
        assert!(from_toml(&Config::DEFAULT, "mode = ").is_err());
    }

    #[test]
    fn show_round_trips_through_apply() {
        let c = Config {
            mode: Mode::Monitor as u32,
            max_half_open: 77,
            ..Config::DEFAULT
        };
        let args: Vec<String> = KEYS
            .iter()
            .map(|k| format!("{}={}", k.name, k.show(&c)))
            .collect();
        assert_eq!(apply_all(&Config::DEFAULT, &args).unwrap(), c);
    }
}
