//! `conns`: the tracked connections, like `ss`, streamed: each batch read
//! from the kernel is filtered and printed before the next is read, so the
//! first row comes at once and memory stays small whatever the table's
//! size (unless `--order oldest` without `--limit`, which must see every
//! row before printing the first).

use std::collections::BinaryHeap;
use std::io::{BufWriter, Write};
use std::net::IpAddr;
use std::ops::ControlFlow;

use handshake_common::TcpState;
use handshake_common::flow::since_ns;
use handshake_user::gate::{Conn, Gate};

use crate::args::{ConnsArgs, ConnsOrder};

/// `addr:port`, IPv6 in brackets.
fn addr((ip, port): (IpAddr, u16)) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Where the rows go: a JSON array or a table, one row at a time.
struct Rows<W: Write> {
    out: W,
    json: bool,
    now: u64,
    printed: u64,
    /// A row being built.
    buf: Vec<u8>,
    num: itoa::Buffer,
}

/// `addr:port` as [`addr`] writes it, onto `b`.
fn push_addr(b: &mut Vec<u8>, (ip, port): (IpAddr, u16)) {
    let mut n = itoa::Buffer::new();
    match ip {
        IpAddr::V4(a) => {
            for (i, octet) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    b.push(b'.');
                }
                b.extend_from_slice(n.format(octet).as_bytes());
            }
        }
        IpAddr::V6(a) => {
            use std::io::Write as _;
            let _ = write!(b, "[{a}]");
        }
    }
    b.push(b':');
    b.extend_from_slice(n.format(port).as_bytes());
}

/// The table's columns: header and width (the last is not padded).
const COLUMNS: [(&str, usize); 6] = [
    ("client", 24),
    ("server", 24),
    ("client state", 13),
    ("server state", 13),
    ("age", 10),
    ("last seen", 0),
];

impl<W: Write> Rows<W> {
    fn start(&mut self) -> std::io::Result<()> {
        if self.json {
            return write!(self.out, "[");
        }
        let cells: Vec<&str> = COLUMNS.iter().map(|c| c.0).collect();
        self.line(&cells)
    }

    fn line(&mut self, cells: &[&str]) -> std::io::Result<()> {
        for (i, (cell, (_, width))) in cells.iter().zip(COLUMNS).enumerate() {
            if i + 1 == COLUMNS.len() {
                writeln!(self.out, "{cell}")?;
            } else {
                write!(self.out, "{cell:<width$} ")?;
            }
        }
        Ok(())
    }

    fn row(&mut self, c: &Conn) -> std::io::Result<()> {
        let ms = |then: u32| since_ns(self.now, then).max(0) as u64 / 1_000_000;
        let (age_ms, idle_ms) = (ms(c.entry.created), ms(c.entry.last_seen));
        if self.json {
            self.json_row(c, age_ms, idle_ms)?;
            self.printed += 1;
            return Ok(());
        }
        let (client, server) = (addr(c.client), addr(c.server));
        let (cs, ss) = (c.entry.client_state().name(), c.entry.server_state().name());
        let age = format!("{:.1}s", age_ms as f64 / 1000.0);
        let seen = format!("{:.1}s ago", idle_ms as f64 / 1000.0);
        self.line(&[&client, &server, cs, ss, &age, &seen])?;
        self.printed += 1;
        Ok(())
    }

    /// One JSON object, built by hand into a reused buffer: a million of
    /// them is what `conns --json` of a full table writes, and the general
    /// formatting machinery was most of its time. Addresses and state
    /// names need no escaping.
    fn json_row(&mut self, c: &Conn, age_ms: u64, idle_ms: u64) -> std::io::Result<()> {
        let b = &mut self.buf;
        b.clear();
        if self.printed > 0 {
            b.push(b',');
        }
        b.extend_from_slice(b"\n{\"client\":\"");
        push_addr(b, c.client);
        b.extend_from_slice(b"\",\"server\":\"");
        push_addr(b, c.server);
        b.extend_from_slice(b"\",\"client_state\":\"");
        b.extend_from_slice(c.entry.client_state().name().as_bytes());
        b.extend_from_slice(b"\",\"server_state\":\"");
        b.extend_from_slice(c.entry.server_state().name().as_bytes());
        b.extend_from_slice(b"\",\"age_ms\":");
        b.extend_from_slice(self.num.format(age_ms).as_bytes());
        b.extend_from_slice(b",\"idle_ms\":");
        b.extend_from_slice(self.num.format(idle_ms).as_bytes());
        b.extend_from_slice(if c.half_open {
            b",\"half_open\":true}"
        } else {
            b",\"half_open\":false}"
        });
        self.out.write_all(b)
    }

    fn end(&mut self) -> std::io::Result<()> {
        if self.json {
            writeln!(self.out, "{}]", if self.printed == 0 { "" } else { "\n" })?;
        } else {
            writeln!(self.out, "{} connection(s)", self.printed)?;
        }
        self.out.flush()
    }
}

/// A row ordered by age, the oldest greatest, for the heap of the N oldest.
struct ByAge(Conn);

impl PartialEq for ByAge {
    fn eq(&self, o: &Self) -> bool {
        self.0.entry.created == o.0.entry.created
    }
}
impl Eq for ByAge {}
impl PartialOrd for ByAge {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for ByAge {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Younger is greater: the heap's top is the youngest kept, the one
        // to drop when an older row comes. The ticks wrap: compared as a
        // difference, as the entries' own clock compares them.
        (self.0.entry.created.wrapping_sub(o.0.entry.created) as i32).cmp(&0)
    }
}

pub fn run(a: ConnsArgs, netns: Option<&str>) -> anyhow::Result<()> {
    let state = match &a.state {
        None => None,
        Some(s) => Some(TcpState::from_name(s).ok_or_else(|| {
            let names: Vec<_> = TcpState::ALL.iter().map(|s| s.name()).collect();
            anyhow::anyhow!("unknown state {s:?}: expected one of {}", names.join(", "))
        })?),
    };
    let gate = Gate::open(&a.iface, netns)?;
    let cfg = gate.config()?;
    let now = handshake_user::monotonic_ns();
    let wanted = |c: &Conn| {
        state.is_none_or(|s| c.entry.client_state() == s || c.entry.server_state() == s)
            && a.port.is_none_or(|p| c.client.1 == p || c.server.1 == p)
            && a.source.is_none_or(|net| net.contains(&c.client.0))
    };
    let limit = a.limit.unwrap_or(u64::MAX);
    let mut rows = Rows {
        out: BufWriter::with_capacity(1 << 16, std::io::stdout().lock()),
        json: a.json,
        now,
        printed: 0,
        buf: Vec::with_capacity(256),
        num: itoa::Buffer::new(),
    };
    rows.start()?;
    let mut failed = None;
    match a.order {
        ConnsOrder::Table => {
            if limit > 0 {
                gate.for_each_conn(&cfg, now, |c| {
                    if !wanted(c) {
                        return ControlFlow::Continue(());
                    }
                    if let Err(e) = rows.row(c) {
                        failed = Some(e);
                        return ControlFlow::Break(());
                    }
                    if rows.printed >= limit {
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })?;
            }
        }
        ConnsOrder::Oldest => {
            let mut oldest = BinaryHeap::new();
            gate.for_each_conn(&cfg, now, |c| {
                if wanted(c) && limit > 0 {
                    oldest.push(ByAge(c.clone()));
                    if oldest.len() as u64 > limit {
                        oldest.pop();
                    }
                }
                ControlFlow::Continue(())
            })?;
            for ByAge(c) in oldest.into_sorted_vec() {
                if let Err(e) = rows.row(&c) {
                    failed = Some(e);
                    break;
                }
            }
        }
    }
    match failed.map_or_else(|| rows.end(), Err) {
        // The reader stopped reading (`conns | head`): nothing more to say.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}
