//! Network namespaces and the two-host lab.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU32, Ordering};

use nix::sched::{CloneFlags, setns};

use crate::run;

/// A named network namespace (`ip netns add`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: &str) -> anyhow::Result<Netns> {
        // A namespace left by a killed earlier run: remove it first.
        let _ = run("ip", &["netns", "del", name]);
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        // A new namespace copies the host's IPv4 settings, forwarding
        // among them (a container runtime turns it on): off, so packets
        // for addresses no one here has (a spoofed flood's SYN-ACKs) are
        // dropped and counted (`IpInAddrErrors`), never sent on.
        ns.run(|| {
            for f in ["ipv4/conf/all/forwarding", "ipv4/conf/default/forwarding"] {
                std::fs::write(format!("/proc/sys/net/{f}"), "0")?;
            }
            Ok(())
        })?;
        Ok(ns)
    }

    /// `ip -n NAME ARGS…`.
    pub fn ip(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// `ip netns exec NAME CMD ARGS…`.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["netns", "exec", &self.name, cmd];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Runs `f` on a new thread that has entered this namespace. Sockets it
    /// creates belong to the namespace for good, whichever thread uses them later.
    pub fn spawn<T, F>(&self, f: F) -> std::thread::JoinHandle<anyhow::Result<T>>
    where
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        let name = self.name.clone();
        std::thread::spawn(move || {
            enter(&name)?;
            f()
        })
    }

    /// Runs `f` inside this namespace and waits for it.
    pub fn run<T, F>(&self, f: F) -> anyhow::Result<T>
    where
        F: FnOnce() -> anyhow::Result<T> + Send + 'static,
        T: Send + 'static,
    {
        self.spawn(f)
            .join()
            .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", self.name))?
    }

    /// A kernel SNMP counter of this namespace (`nstat` names, e.g.
    /// `TcpInSegs`, `TcpExtSyncookiesSent`), as an absolute value.
    pub fn nstat(&self, counter: &str) -> anyhow::Result<u64> {
        let out = self.exec("nstat", &["-asz", counter])?;
        out.lines()
            .find_map(|l| {
                let mut f = l.split_whitespace();
                (f.next() == Some(counter)).then(|| f.next()?.parse().ok())?
            })
            .ok_or_else(|| anyhow::anyhow!("nstat has no counter {counter}: {out}"))
    }

    /// A `sysctl` inside the namespace, e.g. `net.ipv4.tcp_syncookies=1`.
    pub fn sysctl(&self, setting: &str) -> anyhow::Result<()> {
        self.exec("sysctl", &["-q", "-w", setting]).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = run("ip", &["netns", "del", &self.name]) {
            eprintln!("lab: could not delete netns {}: {e}", self.name);
        }
    }
}

/// Moves the calling thread into namespace `name`.
pub fn enter(name: &str) -> anyhow::Result<()> {
    let f = std::fs::File::open(format!("/var/run/netns/{name}"))?;
    setns(f, CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

/// Two namespaces, `server` and `client`, joined by a veth pair:
/// 198.18.0.1/24 and 2001:db8::1/64 on the server side, .2 and ::2 on the
/// client side. Deleting the namespaces removes the veth pair with them.
///
/// The spoofed-source ranges [`Lab::SPOOFED_V4`] and [`Lab::SPOOFED_V6`] are
/// routed from the server to the client namespace, which does not forward
/// and so drops the SYN-ACKs sent to them: the way a spoofed flood's
/// victims ignore the SYN-ACKs they never asked for. (An unroutable source
/// would not do: the kernel drops a SYN it cannot answer at once.)
pub struct Lab {
    // Field order is drop order: the client namespace goes first.
    pub client: Netns,
    pub server: Netns,
    pub server_if: String,
    pub client_if: String,
}

impl Lab {
    pub const SERVER_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
    pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    pub const SERVER_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
    pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 2);
    /// Spoofed IPv4 sources: routed to the client side, answered by no one.
    pub const SPOOFED_V4: &str = "198.19.0.0/16";
    /// Spoofed IPv6 sources: routed to the client side, answered by no one.
    pub const SPOOFED_V6: &str = "2001:db8:1::/48";

    /// A lab whose namespace and interface names start with `tag` (at most
    /// 8 characters, so interface names fit IFNAMSIZ) and are unique in this
    /// process and among concurrent processes.
    pub fn new(tag: &str) -> anyhow::Result<Lab> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let id = format!("{tag}{}{n}", std::process::id() % 10_000);
        let server = Netns::new(&format!("{id}-srv"))?;
        let client = Netns::new(&format!("{id}-cli"))?;
        let (server_if, client_if) = (format!("{id}s"), format!("{id}c"));
        anyhow::ensure!(
            server_if.len() <= 15,
            "lab tag {tag:?} too long for interface names"
        );
        run(
            "ip",
            &[
                "link",
                "add",
                &server_if,
                "netns",
                &server.name,
                "type",
                "veth",
                "peer",
                "name",
                &client_if,
                "netns",
                &client.name,
            ],
        )?;
        let lab = Lab {
            client,
            server,
            server_if,
            client_if,
        };
        for (ns, ifname, v4, v6) in [
            (
                &lab.server,
                &lab.server_if,
                Self::SERVER_V4,
                Self::SERVER_V6,
            ),
            (
                &lab.client,
                &lab.client_if,
                Self::CLIENT_V4,
                Self::CLIENT_V6,
            ),
        ] {
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", ifname])?;
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", ifname, "nodad"])?;
            ns.ip(&["link", "set", ifname, "up"])?;
            // Real checksums on the wire, so XDP sees what a NIC would deliver.
            ns.exec("ethtool", &["-K", ifname, "tx", "off"])?;
        }
        let (v4, v6) = (Self::CLIENT_V4.to_string(), Self::CLIENT_V6.to_string());
        lab.server
            .ip(&["route", "add", Self::SPOOFED_V4, "via", &v4])?;
        lab.server
            .ip(&["-6", "route", "add", Self::SPOOFED_V6, "via", &v6])?;
        Ok(lab)
    }
}
