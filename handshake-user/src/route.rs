//! Interface rules for a fleet, where one manifest must fit nodes whose
//! NICs are named differently: `run default-route` protects the interface
//! the default route leaves by, as the kernel's routing table in this
//! network namespace says (`/proc/net/route`, then `/proc/net/ipv6_route`).

/// The interface name `run` takes to mean the default route's interface.
pub const DEFAULT_ROUTE: &str = "default-route";

/// The interface of this namespace's default route (IPv4 first, then IPv6;
/// the lowest metric wins), or `None` when it has none.
pub fn default_interface() -> std::io::Result<Option<String>> {
    let v4 = std::fs::read_to_string("/proc/net/route")?;
    if let Some(i) = default_v4(&v4) {
        return Ok(Some(i));
    }
    let v6 = std::fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    Ok(default_v6(&v6))
}

/// The default route's interface in `/proc/net/route`'s text: destination
/// and mask 0, the lowest metric.
fn default_v4(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // Iface Destination Gateway Flags RefCnt Use Metric Mask …
            (f.len() >= 8 && f[1] == "00000000" && f[7] == "00000000")
                .then(|| (f[6].parse::<u32>().unwrap_or(u32::MAX), f[0].to_string()))
        })
        .min()
        .map(|(_, iface)| iface)
}

/// The same in `/proc/net/ipv6_route`'s text: ::/0, not through `lo` (the
/// kernel keeps an unreachable default there), the lowest metric.
fn default_v6(table: &str) -> Option<String> {
    const ZERO: &str = "00000000000000000000000000000000";
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // dest plen src splen next-hop metric refcnt use flags iface
            (f.len() >= 10 && f[0] == ZERO && f[1] == "00" && f[9] != "lo").then(|| {
                (
                    u32::from_str_radix(f[5], 16).unwrap_or(u32::MAX),
                    f[9].to_string(),
                )
            })
        })
        .min()
        .map(|(_, iface)| iface)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_metric_default_route_wins() {
        let v4 = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                  eth1\t00000000\t010200C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
                  eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
                  eth2\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_v4(v4).as_deref(), Some("eth0"));
        let none = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                    eth2\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n";
        assert_eq!(default_v4(none), None);
    }

    #[test]
    fn an_ipv6_default_route_counts_unless_it_is_lo_s() {
        let v6 = "fd000000000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001     eth0\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 fd000000000000000000000000000001 00000400 00000003 00000000 00000003     ens5\n\
                  00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(default_v6(v6).as_deref(), Some("ens5"));
        let only_lo = "00000000000000000000000000000000 00 00000000000000000000000000000000 00 00000000000000000000000000000000 ffffffff 00000001 00000000 00200200       lo\n";
        assert_eq!(default_v6(only_lo), None);
    }
}
