//! `allow` and `deny`: the prefix lists of an attached gate.

use handshake_user::gate::{Changed, Gate};
use handshake_user::prefixes::{self, List, Prefix};

use crate::args::{ListAction, ListArgs};

pub fn run(list: List, a: ListArgs, netns: Option<&str>) -> anyhow::Result<()> {
    let mut gate = Gate::open(&a.iface, netns)?;
    let cut_allow = || {
        anyhow::anyhow!("--cut is for the deny list: an allowed prefix's connections are never cut")
    };
    let (changed, cut) = match a.action {
        ListAction::List { json } => return show(&gate, list, json),
        ListAction::Add {
            prefixes,
            comment,
            cut,
        } => {
            if cut && list == List::Allow {
                return Err(cut_allow());
            }
            let add: Vec<Prefix> = prefixes
                .iter()
                .map(|&net| Prefix {
                    net,
                    comment: comment.clone(),
                })
                .collect();
            (gate.add_prefixes(list, &add)?, cut.then_some(prefixes))
        }
        ListAction::Load {
            file,
            replace,
            comment,
            cut,
        } => {
            if cut && list == List::Allow {
                return Err(cut_allow());
            }
            let add = prefixes::read_file(list, &file, &comment)?;
            let changed = if replace {
                match list {
                    List::Allow => gate.set_lists(Some(&add), None)?,
                    List::Deny => gate.set_lists(None, Some(&add))?,
                }
            } else {
                gate.add_prefixes(list, &add)?
            };
            let nets = add.iter().map(|p| p.net).collect();
            (changed, cut.then_some(nets))
        }
        ListAction::Del { prefixes } => (gate.del_prefixes(list, &prefixes)?, None),
        ListAction::Flush => match list {
            List::Allow => (gate.set_lists(Some(&[]), None)?, None),
            List::Deny => (gate.set_lists(None, Some(&[]))?, None),
        },
    };
    let (allow, deny) = gate.list_counts()?;
    let now = match list {
        List::Allow => allow,
        List::Deny => deny,
    };
    println!(
        "{} list: {}; {now} prefixes on it (room for {})",
        list.name(),
        describe(&changed),
        gate.list_capacity()?
    );
    if let Some(nets) = cut {
        let gone = gate.cut(&nets)?;
        println!("cut {gone} tracked connections from those prefixes");
    }
    Ok(())
}

fn describe(c: &Changed) -> String {
    if *c == Changed::default() {
        return "nothing changed".into();
    }
    let mut parts = Vec::new();
    for (n, what) in [
        (c.added, "added"),
        (c.updated, "with a new comment"),
        (c.removed, "removed"),
    ] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    parts.join(", ")
}

fn show(gate: &Gate, list: List, json: bool) -> anyhow::Result<()> {
    let entries: Vec<_> = gate
        .prefixes()?
        .into_iter()
        .filter(|e| e.list == list.name())
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(());
    }
    if entries.is_empty() {
        println!("the {} list is empty", list.name());
        return Ok(());
    }
    let mut t = super::status::table(&["PREFIX", "ADDED (UTC)", "COMMENT"], 3);
    for e in &entries {
        t.add_row(vec![e.net.to_string(), utc(e.added_s), e.comment.clone()]);
    }
    println!("{t}");
    Ok(())
}

/// Seconds since the Unix epoch as `YYYY-MM-DD HH:MM`, UTC.
fn utc(secs: u32) -> String {
    jiff::Timestamp::from_second(i64::from(secs)).map_or_else(
        |_| secs.to_string(),
        |t| t.strftime("%Y-%m-%d %H:%M").to_string(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01 00:00");
        assert_eq!(super::utc(1_796_428_800), "2026-12-05 00:00");
        assert_eq!(super::utc(951_825_600), "2000-02-29 12:00");
    }
}
