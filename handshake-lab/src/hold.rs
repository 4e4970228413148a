//! Holding back chosen TCP segments inside a lab namespace with nftables, to
//! freeze a real connection in a state (a FIN whose ACK never comes leaves
//! its sender in FIN_WAIT_1), and reading what the kernel itself reports for
//! a socket with `ss`.
//!
//! Where a hold sits matters to the gate on the server's interface: the
//! `output` hook drops a segment before the interface (the gate never sees
//! it), the `input` hook after it (the gate sees it, the kernel does not).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::Netns;

/// The netfilter hook a hold sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// What this namespace sends, before it reaches any interface.
    Output,
    /// What this namespace receives, after the interface (and XDP).
    Input,
}

/// An nftables table in a namespace that drops what `rule` matches; the
/// table goes on drop.
pub struct Hold<'a> {
    ns: &'a Netns,
    table: String,
}

impl<'a> Hold<'a> {
    /// Drops TCP segments matching `rule`, an nft match such as
    /// `tcp dport 8080 tcp flags == ack`, at `hook` in `ns`.
    pub fn new(ns: &'a Netns, hook: Hook, rule: &str) -> anyhow::Result<Hold<'a>> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let table = format!("hold{}", SEQ.fetch_add(1, Ordering::Relaxed));
        let hook_name = match hook {
            Hook::Output => "output",
            Hook::Input => "input",
        };
        let script = format!(
            "add table inet {table}; \
             add chain inet {table} c {{ type filter hook {hook_name} priority 0; }}; \
             add rule inet {table} c {rule} drop"
        );
        ns.exec("nft", &[&script])?;
        Ok(Hold { ns, table })
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .ns
            .exec("nft", &["delete", "table", "inet", &self.table])
        {
            eprintln!("lab: could not remove nft table {}: {e}", self.table);
        }
    }
}

/// The state the kernel reports (`ss -tan`, names as the seed writes them:
/// `ESTAB` is ESTABLISHED, `SYN-RECV` is SYN_RCVD) of the TCP socket in `ns`
/// from `local` to `peer`; `None` when there is none.
pub fn kernel_state(
    ns: &Netns,
    local: SocketAddr,
    peer: SocketAddr,
) -> anyhow::Result<Option<String>> {
    let out = ns.exec("ss", &["-tanH"])?;
    Ok(out.lines().find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.len() >= 5 && same(f[3], local) && same(f[4], peer)).then(|| seed_name(f[0]))
    }))
}

/// Whether a socket in `ns` listens on `port`.
pub fn listening(ns: &Netns, port: u16) -> anyhow::Result<bool> {
    let out = ns.exec("ss", &["-tlnH"])?;
    Ok(out.lines().any(|line| {
        line.split_whitespace().nth(3).is_some_and(|a| {
            a.rsplit_once(':')
                .is_some_and(|(_, p)| p == port.to_string())
        })
    }))
}

fn same(ss: &str, a: SocketAddr) -> bool {
    ss == a.to_string()
}

fn seed_name(ss: &str) -> String {
    match ss {
        "ESTAB" => "ESTABLISHED".into(),
        "SYN-RECV" => "SYN_RCVD".into(),
        "UNCONN" => "CLOSED".into(),
        other => other.replace('-', "_"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ss_names_become_the_seeds() {
        for (ss, seed) in [
            ("ESTAB", "ESTABLISHED"),
            ("SYN-SENT", "SYN_SENT"),
            ("SYN-RECV", "SYN_RCVD"),
            ("FIN-WAIT-1", "FIN_WAIT_1"),
            ("FIN-WAIT-2", "FIN_WAIT_2"),
            ("CLOSE-WAIT", "CLOSE_WAIT"),
            ("CLOSING", "CLOSING"),
            ("LAST-ACK", "LAST_ACK"),
            ("TIME-WAIT", "TIME_WAIT"),
            ("LISTEN", "LISTEN"),
        ] {
            assert_eq!(seed_name(ss), seed);
        }
    }

    #[test]
    fn addresses_compare_as_ss_prints_them() {
        assert!(same(
            "198.18.0.2:40000",
            "198.18.0.2:40000".parse().unwrap()
        ));
        assert!(same(
            "[2001:db8::2]:40000",
            "[2001:db8::2]:40000".parse().unwrap()
        ));
        assert!(!same(
            "198.18.0.2:4000",
            "198.18.0.2:40000".parse().unwrap()
        ));
    }
}
