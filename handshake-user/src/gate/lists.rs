//! The allow and deny prefix lists in an attached gate's tries: read, and
//! written as a whole (every change is checked first and undone if the
//! kernel refuses part of it), and `--cut`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use aya::maps::lpm_trie::{Key, LpmTrie};
use aya::maps::{MapData, MapError, MapInfo};
use handshake_common::prefix::{PrefixRule, trie_entries};
use handshake_common::{FlowKey, maps, meta};
use ipnet::IpNet;

use super::{Gate, open_map};
use crate::GateError;
use crate::prefixes::{self, Entry, List, Prefix};
use crate::settings::SettingError;

type V4 = LpmTrie<MapData, [u8; 4], PrefixRule>;
type V6 = LpmTrie<MapData, [u8; 16], PrefixRule>;

/// What a list holds, by prefix: its list, note and when it was added.
type Lists = BTreeMap<IpNet, (List, String, u32)>;

/// What a change did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Changed {
    pub added: usize,
    pub removed: usize,
    /// Prefixes already there whose note changed.
    pub updated: usize,
}

fn list_error(list: List, why: String) -> GateError {
    GateError::Setting(SettingError::List {
        list: list.name(),
        why,
    })
}

impl Gate {
    fn tries(&self) -> Result<(V4, V6), GateError> {
        Ok((
            open_map(&self.dir, maps::PREFIXES_V4)?,
            open_map(&self.dir, maps::PREFIXES_V6)?,
        ))
    }

    /// How many prefixes each list may hold (`attach --max-prefixes`).
    pub fn list_capacity(&self) -> Result<u32, GateError> {
        let info = MapInfo::from_pin(self.dir.join(maps::PREFIXES_V4))
            .map_err(GateError::step("read the prefix trie's size"))?;
        Ok(info.max_entries() / trie_entries(1))
    }

    fn read_lists(&self) -> Result<Lists, GateError> {
        let (v4, v6) = self.tries()?;
        const READ: &str = "read the prefix lists";
        let mut out = Lists::new();
        let mut put = |net: IpNet, r: PrefixRule| {
            if let Some(list) = List::from_bit(r.list) {
                out.insert(net, (list, prefixes::comment_of(&r), r.added_s));
            }
        };
        for item in v4.iter() {
            let (k, r) = item.map_err(GateError::step(READ))?;
            let net = ipnet::Ipv4Net::new(k.data().into(), k.prefix_len() as u8)
                .map_err(GateError::step(READ))?;
            put(net.into(), r);
        }
        for item in v6.iter() {
            let (k, r) = item.map_err(GateError::step(READ))?;
            let net = ipnet::Ipv6Net::new(k.data().into(), k.prefix_len() as u8)
                .map_err(GateError::step(READ))?;
            put(net.into(), r);
        }
        Ok(out)
    }

    /// Every prefix on both lists, allow first, each in address order.
    pub fn prefixes(&self) -> Result<Vec<Entry>, GateError> {
        let mut v: Vec<Entry> = self
            .read_lists()?
            .into_iter()
            .map(|(net, (list, comment, added_s))| Entry {
                list: list.name(),
                net,
                comment,
                added_s,
            })
            .collect();
        v.sort_by_key(|e| (e.list != "allow", e.net));
        Ok(v)
    }

    /// How many prefixes each list holds: (allow, deny), as the last
    /// write of the lists left them.
    pub fn list_counts(&self) -> Result<(usize, usize), GateError> {
        let v = self.meta(meta::LIST_COUNTS)?;
        Ok(((v & 0xffff_ffff) as usize, (v >> 32) as usize))
    }

    /// Puts `add` on `list` (a prefix already there takes the new note).
    /// Refuses, changing nothing, a prefix that is on the other list, or
    /// more than the list holds.
    pub fn add_prefixes(&mut self, list: List, add: &[Prefix]) -> Result<Changed, GateError> {
        let have = self.read_lists()?;
        let mut want = have.clone();
        let now = prefixes::unix_now();
        for p in add {
            match want.get(&p.net) {
                Some((other, ..)) if *other != list => {
                    return Err(list_error(
                        list,
                        format!(
                            "{} is on the {} list; take it off there first (`handshake-gate {} IFACE del {}`)",
                            p.net,
                            other.name(),
                            other.name(),
                            p.net
                        ),
                    ));
                }
                Some((_, _, added)) => {
                    let added = *added;
                    want.insert(p.net, (list, p.comment.clone(), added));
                }
                None => {
                    want.insert(p.net, (list, p.comment.clone(), now));
                }
            }
        }
        self.write_lists(&have, &want)
    }

    /// Takes `nets` off `list`; a prefix not on it is an error, and
    /// nothing changes.
    pub fn del_prefixes(&mut self, list: List, nets: &[IpNet]) -> Result<Changed, GateError> {
        let have = self.read_lists()?;
        let mut want = have.clone();
        for net in nets {
            match want.get(net) {
                Some((l, ..)) if *l == list => {
                    want.remove(net);
                }
                _ => return Err(list_error(list, format!("{net} is not on it"))),
            }
        }
        self.write_lists(&have, &want)
    }

    /// Makes the lists `allow` and `deny` say exactly what they hold
    /// (`None`: leave that list), keeping when each kept prefix was added.
    pub fn set_lists(
        &mut self,
        allow: Option<&[Prefix]>,
        deny: Option<&[Prefix]>,
    ) -> Result<Changed, GateError> {
        let have = self.read_lists()?;
        let now = prefixes::unix_now();
        let mut want = Lists::new();
        for (list, given) in [(List::Allow, allow), (List::Deny, deny)] {
            match given {
                None => want.extend(
                    have.iter()
                        .filter(|(_, (l, ..))| *l == list)
                        .map(|(n, v)| (*n, v.clone())),
                ),
                Some(ps) => {
                    for p in ps {
                        let added = match have.get(&p.net) {
                            Some((l, _, t)) if *l == list => *t,
                            _ => now,
                        };
                        if let Some((other, ..)) = want.get(&p.net)
                            && *other != list
                        {
                            return Err(list_error(
                                list,
                                format!("{} is on the {} list too", p.net, other.name()),
                            ));
                        }
                        want.insert(p.net, (list, p.comment.clone(), added));
                    }
                }
            }
        }
        self.write_lists(&have, &want)
    }

    /// Writes the tries, which hold `have`, to hold `want`: checked
    /// against the capacity first; what the kernel then refuses is undone
    /// before the error. Keeps `Config::prefix_lists` in step.
    fn write_lists(&mut self, have: &Lists, want: &Lists) -> Result<Changed, GateError> {
        let cap = self.list_capacity()? as usize;
        for list in List::BOTH {
            let n = want.values().filter(|(l, ..)| *l == list).count();
            if n > cap {
                return Err(list_error(
                    list,
                    format!(
                        "{n} prefixes, but it holds {cap} (`attach --max-prefixes`, fixed until detach)"
                    ),
                ));
            }
        }
        let (mut v4, mut v6) = self.tries()?;
        let mut changed = Changed::default();
        // (prefix, what it held before) for each change, to undo.
        let mut done: Vec<(IpNet, Option<PrefixRule>)> = Vec::new();
        let mut result = Ok(());
        for (net, old) in have {
            if !want.contains_key(net) {
                result = remove(&mut v4, &mut v6, net);
                if result.is_err() {
                    break;
                }
                done.push((*net, Some(prefixes::rule(old.0, &old.1, old.2))));
                changed.removed += 1;
            }
        }
        if result.is_ok() {
            for (net, new) in want {
                let old = have.get(net);
                if old == Some(new) {
                    continue;
                }
                result = insert(&mut v4, &mut v6, net, &prefixes::rule(new.0, &new.1, new.2));
                if result.is_err() {
                    break;
                }
                done.push((*net, old.map(|o| prefixes::rule(o.0, &o.1, o.2))));
                match old {
                    Some(_) => changed.updated += 1,
                    None => changed.added += 1,
                }
            }
        }
        if let Err(e) = result {
            for (net, before) in done.into_iter().rev() {
                let _ = match before {
                    Some(r) => insert(&mut v4, &mut v6, &net, &r),
                    None => remove(&mut v4, &mut v6, &net),
                };
            }
            return Err(GateError::step(
                "write the prefix lists (nothing was changed)",
            )(e));
        }
        self.sync_list_flags(want)?;
        Ok(changed)
    }

    /// Keeps the lists' counts and sets `Config::prefix_lists` to the
    /// lists that have entries.
    fn sync_list_flags(&mut self, lists: &Lists) -> Result<(), GateError> {
        let n = |list| lists.values().filter(|(l, ..)| *l == list).count() as u64;
        self.set_meta(meta::LIST_COUNTS, n(List::Allow) | n(List::Deny) << 32)?;
        let bits = lists.values().fold(0, |b, (l, ..)| b | l.bit());
        let mut cfg = self.config()?;
        if cfg.prefix_lists != bits {
            cfg.prefix_lists = bits;
            self.config
                .set(0, cfg, 0)
                .map_err(GateError::step("write the configuration"))?;
        }
        Ok(())
    }

    /// The lists' bits for a configuration about to be written.
    pub(super) fn list_flags(&self) -> Result<u32, GateError> {
        let (allow, deny) = self.list_counts()?;
        Ok(if allow > 0 { List::Allow.bit() } else { 0 }
            | if deny > 0 { List::Deny.bit() } else { 0 })
    }

    /// Deletes every tracked connection with an end in `nets` (`deny
    /// --cut`): its next arriving segment is then one of a flow with no
    /// entry, which the deny list drops. A half-open attempt's count is
    /// left to age out with its time bucket. Returns how many went.
    pub fn cut(&mut self, nets: &[IpNet]) -> Result<usize, GateError> {
        if nets.is_empty() {
            return Ok(0);
        }
        let inside = |k: &FlowKey| {
            [k.lo_addr, k.hi_addr]
                .iter()
                .any(|a| prefixes::covered(nets, ip_of(k.family, a)))
        };
        let mut gone = 0;
        let t = self.tables_mut()?;
        for map in [&mut t.half_open, &mut t.established] {
            let mut keys: Vec<FlowKey> = Vec::new();
            map.for_each_batch(|batch| {
                keys.extend(batch.iter().map(|(k, _)| *k).filter(|k| inside(k)));
                std::ops::ControlFlow::Continue(())
            })
            .map_err(GateError::step("read the connection maps"))?;
            for k in keys {
                match map.remove(&k) {
                    Ok(()) => gone += 1,
                    Err(MapError::KeyNotFound) => {}
                    Err(e) => return Err(GateError::step("delete a connection entry")(e)),
                }
            }
        }
        Ok(gone)
    }
}

fn ip_of(family: u8, a: &[u8; 16]) -> IpAddr {
    if family == handshake_common::flow::AF_INET {
        IpAddr::from([a[0], a[1], a[2], a[3]])
    } else {
        IpAddr::from(*a)
    }
}

fn insert(v4: &mut V4, v6: &mut V6, net: &IpNet, r: &PrefixRule) -> Result<(), MapError> {
    match net {
        IpNet::V4(n) => v4.insert(&Key::new(n.prefix_len().into(), n.network().octets()), r, 0),
        IpNet::V6(n) => v6.insert(&Key::new(n.prefix_len().into(), n.network().octets()), r, 0),
    }
}

fn remove(v4: &mut V4, v6: &mut V6, net: &IpNet) -> Result<(), MapError> {
    let r = match net {
        IpNet::V4(n) => v4.remove(&Key::new(n.prefix_len().into(), n.network().octets())),
        IpNet::V6(n) => v6.remove(&Key::new(n.prefix_len().into(), n.network().octets())),
    };
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        r => r,
    }
}
