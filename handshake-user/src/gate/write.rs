//! New settings into an attached gate's maps, and the TCP settings of the
//! namespace that `overflow=cookie` needs (kept in `META`, put back later).

use handshake_common::{Config, Overflow, meta};

use super::Gate;
use crate::GateError;
use crate::settings::Settings;

impl Gate {
    /// Writes new settings; the programs use them from their next packet,
    /// with no reattach and no tracked state lost. The port bitmap and the
    /// flag that turns it on are ordered so that no port that is open before
    /// and after is ever closed in between. With `overflow=cookie`, first
    /// sets what the namespace's TCP stack needs for it (see
    /// [`Gate::cookie_sysctls`]); away from it, puts back what it changed.
    /// Returns what it changed outside the gate, for the operator.
    pub fn set_settings(&mut self, s: &Settings) -> Result<Vec<String>, GateError> {
        crate::settings::validate(s)?;
        // First, as they may still be refused (full, or a prefix on the
        // other list from the command line) with nothing else changed.
        let mut notes = Vec::new();
        if s.allow.is_some() || s.deny.is_some() {
            let c = self.set_lists(s.allow.as_deref(), s.deny.as_deref())?;
            if c != super::Changed::default() {
                let (allow, deny) = self.list_counts()?;
                notes.push(format!(
                    "prefix lists: {} added, {} removed, {} with a new comment; allow {allow}, deny {deny}",
                    c.added, c.removed, c.updated
                ));
            }
        }
        let mut config = s.config;
        config.prefix_lists = self.list_flags()?;
        let cookie = config.overflow() == Overflow::Cookie;
        if cookie {
            config.cookie_options = self.cookie_sysctls(&config, &mut notes)?.to_bits();
        } else {
            config.cookie_options = 0;
        }
        let s = &Settings {
            config,
            allowed_ports: s.allowed_ports.clone(),
            allow: None,
            deny: None,
        };
        if s.allowed_ports.is_empty() {
            self.write_config(&s.config)?;
            self.write_ports(s)?;
        } else {
            self.write_ports(s)?;
            self.write_config(&s.config)?;
        }
        if !cookie {
            self.restore_sysctls(&mut notes)?;
        }
        // Under new `source-prefix` lengths the filter is not used until
        // it is built under them.
        self.rebuild_known()?;
        Ok(notes)
    }

    /// Sets `net.ipv4.tcp_syncookies=2` in this namespace (and, with
    /// `cookie-timestamps=on`, `net.ipv4.tcp_timestamps=2`), keeping each
    /// value it replaces in `META` to put back later; returns what the
    /// cookies may then carry. Refuses, changing nothing of its own, where
    /// SYN cookies are not available.
    fn cookie_sysctls(
        &mut self,
        cfg: &Config,
        notes: &mut Vec<String>,
    ) -> Result<handshake_common::cookie::Options, GateError> {
        use crate::sysctl::{self, SYNCOOKIES, TIMESTAMPS};
        let unavailable = |e: GateError| GateError::CookieUnavailable { why: e.to_string() };
        let mut wanted = vec![(SYNCOOKIES, meta::SAVED_SYNCOOKIES)];
        if cfg.cookie_timestamps != 0 {
            wanted.push((TIMESTAMPS, meta::SAVED_TIMESTAMPS));
        } else {
            self.restore(TIMESTAMPS, meta::SAVED_TIMESTAMPS, notes)?;
        }
        // (name, value before, whether its META slot was filled here)
        let mut changed = Vec::new();
        let mut result = Ok(());
        for (name, slot) in wanted {
            let step = sysctl::read(name).and_then(|was| {
                if was != 2 {
                    sysctl::write(name, 2)?;
                    let fresh = self.meta(slot)? == 0;
                    changed.push((name, slot, was, fresh));
                    if fresh {
                        self.set_meta(slot, was + 1)?;
                    }
                }
                Ok(())
            });
            if let Err(e) = step {
                result = Err(e);
                break;
            }
        }
        let options = match result.and_then(|()| sysctl::cookie_options()) {
            Ok(o) => o,
            Err(e) => {
                // Put back what this call changed, so a refusal changes nothing.
                for &(name, slot, was, fresh) in &changed {
                    if let Err(e) = sysctl::write(name, was) {
                        log::warn!("{e}");
                    }
                    if fresh {
                        let _ = self.set_meta(slot, 0);
                    }
                }
                return Err(unavailable(e));
            }
        };
        for (name, _, was, _) in changed {
            notes.push(format!(
                "set {} to 2 in this network namespace (was {was}; put back on detach or when overflow changes)",
                sysctl::dotted(name)
            ));
        }
        notes.push(sysctl::describe(&options));
        Ok(options)
    }

    /// Puts back every TCP setting `overflow=cookie` changed.
    pub fn restore_sysctls(&mut self, notes: &mut Vec<String>) -> Result<(), GateError> {
        use crate::sysctl::{SYNCOOKIES, TIMESTAMPS};
        self.restore(SYNCOOKIES, meta::SAVED_SYNCOOKIES, notes)?;
        self.restore(TIMESTAMPS, meta::SAVED_TIMESTAMPS, notes)
    }

    fn restore(&mut self, name: &str, slot: u32, notes: &mut Vec<String>) -> Result<(), GateError> {
        let saved = self.meta(slot)?;
        if saved == 0 {
            return Ok(());
        }
        crate::sysctl::write(name, saved - 1)?;
        self.set_meta(slot, 0)?;
        notes.push(format!(
            "put {} back to {} in this network namespace",
            crate::sysctl::dotted(name),
            saved - 1
        ));
        Ok(())
    }

    fn write_config(&mut self, cfg: &Config) -> Result<(), GateError> {
        self.config
            .set(0, cfg, 0)
            .map_err(GateError::step("write the configuration"))
    }

    fn write_ports(&mut self, s: &Settings) -> Result<(), GateError> {
        let old = self.port_words()?;
        for (i, w) in s.port_bitmap().into_iter().enumerate() {
            if old.get(i) != Some(&w) {
                self.allowed_ports
                    .set(i as u32, w, 0)
                    .map_err(GateError::step("write the allowed ports"))?;
            }
        }
        Ok(())
    }
}
