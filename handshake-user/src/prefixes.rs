//! The allow and deny prefix lists as the controller handles them: reading
//! prefixes (a line each, `#` comments: the FireHOL netset format), and the
//! tries' values (see [`handshake_common::prefix`] for what each list does).

use std::net::IpAddr;
use std::path::Path;

use handshake_common::prefix::{self, COMMENT_LEN, PrefixRule};
use ipnet::IpNet;

use crate::settings::SettingError;

/// One of the two lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum List {
    Allow,
    Deny,
}

impl List {
    pub const BOTH: [List; 2] = [List::Allow, List::Deny];

    pub const fn name(self) -> &'static str {
        match self {
            List::Allow => "allow",
            List::Deny => "deny",
        }
    }

    /// Its value in [`PrefixRule::list`] and bit in `Config::prefix_lists`.
    pub const fn bit(self) -> u32 {
        match self {
            List::Allow => prefix::ALLOW,
            List::Deny => prefix::DENY,
        }
    }

    pub const fn from_bit(bit: u32) -> Option<List> {
        match bit {
            prefix::ALLOW => Some(List::Allow),
            prefix::DENY => Some(List::Deny),
            _ => None,
        }
    }

    pub const fn other(self) -> List {
        match self {
            List::Allow => List::Deny,
            List::Deny => List::Allow,
        }
    }
}

/// A prefix to put on a list, with the operator's note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub net: IpNet,
    pub comment: String,
}

/// A prefix as a list holds it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Entry {
    pub list: &'static str,
    #[serde(serialize_with = "as_text")]
    pub net: IpNet,
    pub comment: String,
    /// When it was added (seconds since the Unix epoch).
    pub added_s: u32,
}

fn as_text<S: serde::Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(net)
}

/// A prefix, or a bare address as its own /32 or /128; host bits are
/// cleared (198.18.7.1/24 is 198.18.7.0/24).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| {
            format!("{s:?} is not an address or prefix (like 198.18.0.0/24 or 2001:db8::/64)")
        })
}

/// Prefixes from text: one a line, anything after `#` a comment (kept as
/// the prefix's note when it follows the prefix on its line), blank lines
/// skipped; `comment`, if given, is the note of every prefix that has none.
/// The first line that is not a prefix is the error, by number.
pub fn parse_lines(text: &str, comment: &str) -> Result<Vec<Prefix>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let (body, note) = match line.split_once('#') {
            Some((b, n)) => (b, n.trim()),
            None => (line, ""),
        };
        let body = body.trim();
        if body.is_empty() {
            continue;
        }
        let net = parse_net(body).map_err(|e| format!("line {}: {e}", i + 1))?;
        out.push(Prefix {
            net,
            comment: if note.is_empty() { comment } else { note }.to_string(),
        });
    }
    Ok(out)
}

/// [`parse_lines`] of a file; `-` reads standard input.
pub fn read_file(list: List, path: &Path, comment: &str) -> Result<Vec<Prefix>, SettingError> {
    let err = |why: String| SettingError::List {
        list: list.name(),
        why: format!("{}: {why}", path.display()),
    };
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).map_err(|e| err(e.to_string()))?
    } else {
        std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?
    };
    parse_lines(&text, comment).map_err(err)
}

/// The tries' value for a prefix on `list`: the note cut to
/// [`COMMENT_LEN`] bytes at a character boundary.
pub fn rule(list: List, comment: &str, added_s: u32) -> PrefixRule {
    let mut bytes = [0u8; COMMENT_LEN];
    let mut end = comment.len().min(COMMENT_LEN);
    while !comment.is_char_boundary(end) {
        end -= 1;
    }
    bytes[..end].copy_from_slice(&comment.as_bytes()[..end]);
    PrefixRule {
        list: list.bit(),
        added_s,
        comment: bytes,
    }
}

/// The note a rule carries.
pub fn comment_of(r: &PrefixRule) -> String {
    let end = r
        .comment
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(COMMENT_LEN);
    String::from_utf8_lossy(&r.comment[..end]).into_owned()
}

/// Whether `addr` is inside any of `nets`.
pub fn covered(nets: &[IpNet], addr: IpAddr) -> bool {
    nets.iter().any(|n| n.contains(&addr))
}

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netset_lines_with_comments_and_bare_addresses() {
        let text = "# FireHOL-style header\n\
                    \n\
                    198.18.7.0/24   # the office\n\
                    198.18.9.1\n\
                    198.18.10.77/24\n\
                    2001:db8:5::/48 #\n";
        let got = parse_lines(text, "from a file").unwrap();
        let nets: Vec<String> = got.iter().map(|p| p.net.to_string()).collect();
        assert_eq!(
            nets,
            [
                "198.18.7.0/24",
                "198.18.9.1/32",
                "198.18.10.0/24",
                "2001:db8:5::/48"
            ]
        );
        assert_eq!(got[0].comment, "the office");
        assert_eq!(got[1].comment, "from a file");
        assert_eq!(got[3].comment, "from a file");
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = parse_lines("198.18.0.0/24\n198.18.0.0/33\n", "").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(parse_lines("not-an-address", "").is_err());
    }

    #[test]
    fn notes_are_cut_at_a_character_boundary() {
        let long = "é".repeat(40);
        let r = rule(List::Deny, &long, 7);
        let back = comment_of(&r);
        assert_eq!(back, "é".repeat(COMMENT_LEN / 2));
        assert_eq!(r.list, prefix::DENY);
        assert_eq!(comment_of(&rule(List::Allow, "lb", 0)), "lb");
    }
}
