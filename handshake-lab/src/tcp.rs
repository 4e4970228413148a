//! Real TCP peers: an echo server and clients that measure their handshakes.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::Netns;

/// An echo server on a thread inside a namespace; stops on drop.
pub struct EchoServer {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl EchoServer {
    /// Listens on `addr` inside `ns` with the given accept backlog.
    pub fn start(ns: &Netns, addr: SocketAddr, backlog: i32) -> anyhow::Result<EchoServer> {
        let listener = ns.run(move || {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(backlog)?;
            Ok(TcpListener::from(s))
        })?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        std::thread::spawn(move || echo(conn));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Ok(())
        });
        Ok(EchoServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What a batch of client connections saw.
#[derive(Clone, Debug, Default)]
pub struct ConnectReport {
    pub attempted: usize,
    /// Connected and got their bytes echoed back.
    pub succeeded: usize,
    /// Handshake times of the successful connections, sorted.
    pub connect_times: Vec<Duration>,
}

impl ConnectReport {
    pub fn success_rate(&self) -> f64 {
        if self.attempted == 0 {
            0.0
        } else {
            self.succeeded as f64 / self.attempted as f64
        }
    }

    /// The `q` quantile (0..=1) of the connect times.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        if self.connect_times.is_empty() {
            return None;
        }
        let i = ((self.connect_times.len() - 1) as f64 * q).round() as usize;
        Some(self.connect_times[i])
    }
}

/// Opens `n` connections one after another from `ns` to `to`, each one
/// sending a few bytes and expecting them back, each bounded by `timeout`.
pub fn connect_many(
    ns: &Netns,
    to: SocketAddr,
    n: usize,
    timeout: Duration,
) -> anyhow::Result<ConnectReport> {
    ns.run(move || {
        let mut r = ConnectReport {
            attempted: n,
            ..Default::default()
        };
        for i in 0..n {
            if let Some(took) = echo_once(None, to, timeout, i) {
                r.succeeded += 1;
                r.connect_times.push(took);
            }
        }
        r.connect_times.sort();
        Ok(r)
    })
}

/// Opens one connection from each address in `from` (repeats allowed: a
/// second one from the same address), all at once, from `ns` to `to`; each
/// sends a few bytes and expects them back within `timeout`.
pub fn connect_each(
    ns: &Netns,
    from: &[IpAddr],
    to: SocketAddr,
    timeout: Duration,
) -> anyhow::Result<ConnectReport> {
    let handles: Vec<_> = from
        .iter()
        .enumerate()
        .map(|(i, &ip)| ns.spawn(move || Ok(echo_once(Some(ip), to, timeout, i))))
        .collect();
    let mut r = ConnectReport {
        attempted: from.len(),
        ..Default::default()
    };
    for h in handles {
        let took = h
            .join()
            .map_err(|_| anyhow::anyhow!("client thread panicked"))??;
        if let Some(took) = took {
            r.succeeded += 1;
            r.connect_times.push(took);
        }
    }
    r.connect_times.sort();
    Ok(r)
}

/// One connection (from `from`, if given) that echoes a line; its handshake
/// time if it connected and got its bytes back.
fn echo_once(
    from: Option<IpAddr>,
    to: SocketAddr,
    timeout: Duration,
    i: usize,
) -> Option<Duration> {
    let start = Instant::now();
    let mut s = connect(from, to, timeout).ok()?;
    let took = start.elapsed();
    let msg = format!("hello {i}\n");
    s.set_read_timeout(Some(timeout)).ok()?;
    let mut back = vec![0u8; msg.len()];
    s.write_all(msg.as_bytes()).ok()?;
    s.read_exact(&mut back).ok()?;
    (back == msg.as_bytes()).then_some(took)
}

fn connect(from: Option<IpAddr>, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let Some(ip) = from else {
        return TcpStream::connect_timeout(&to, timeout);
    };
    let s = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        None,
    )?;
    s.bind(&SocketAddr::new(ip, 0).into())?;
    s.connect_timeout(&to.into(), timeout)?;
    Ok(s.into())
}
