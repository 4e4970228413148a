//! `handshake-gate run`: the daemon. It attaches the gate (or adopts one
//! already attached), and then, until SIGTERM or SIGINT:
//! - serves Prometheus metrics read from the maps at each scrape;
//! - sweeps expired entries out of the connection maps;
//! - forwards the kernel programs' aya-log messages to its own log;
//! - reloads the config file on SIGHUP and when it changes: its directory
//!   is watched (inotify), so an edit, a rename over it and a Kubernetes
//!   ConfigMap update (a symlink swapped, with no signal) all count; a file
//!   that does not parse or validate leaves the running settings alone,
//!   and the log says why;
//! - answers `/healthz` (the daemon is serving) and `/readyz` (the gate's
//!   program is on the interface's XDP hook) beside `/metrics`;
//! - speaks systemd's notify protocol (`Type=notify`) where `NOTIFY_SOCKET`
//!   is set: `READY=1` once the gate is attached (or adopted) and the
//!   metrics socket is serving, `WATCHDOG=1` after each sweep (so a stuck
//!   sweep is a restart when the unit sets `WatchdogSec=`), `RELOADING=1`
//!   and `READY=1` around each reload, `STOPPING=1` on SIGTERM or SIGINT.
//!
//! The gate does not depend on it: killed, even with SIGKILL, the daemon
//! leaves the pinned gate working. Stopped with SIGTERM or SIGINT, it
//! detaches the gate if it attached it itself (unless `--keep`).

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use log::{debug, error, info, warn};
use sd_notify::NotifyState;
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use handshake_user::gate::{self, AttachOptions, Gate, v6_connections};
use handshake_user::settings::{self, KEYS, Settings};
use handshake_user::{metrics, pins};

use crate::args::{Listen, RunArgs};
use crate::cmd::attach::attach_mode;

/// Opens the metrics socket (before `--netns` is entered, so it is in the
/// host's namespace).
pub fn listen(a: &RunArgs) -> anyhow::Result<Option<std::net::TcpListener>> {
    let Listen::At(addr) = a.metrics else {
        return Ok(None);
    };
    let l = std::net::TcpListener::bind(addr).with_context(|| {
        format!(
            "could not listen on {addr} for metrics (another daemon there? choose another with --metrics ADDR:PORT, or --metrics off)"
        )
    })?;
    l.set_nonblocking(true)?;
    Ok(Some(l))
}

/// What the daemon shares between its tasks.
struct Shared {
    gate: Mutex<Gate>,
    /// The protected interface, for the readiness check.
    iface: String,
    swept_half_open: AtomicU64,
    swept_established: AtomicU64,
}

pub fn run(
    mut a: RunArgs,
    netns: Option<&str>,
    listener: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    if a.iface == handshake_user::route::DEFAULT_ROUTE {
        let found = handshake_user::route::default_interface()
            .context("could not read the routing table")?;
        let Some(iface) = found else {
            anyhow::bail!(
                "{}: this network namespace has no default route (check `ip route`); name the interface instead",
                handshake_user::route::DEFAULT_ROUTE
            );
        };
        info!(
            "{}: the default route leaves by {iface}",
            handshake_user::route::DEFAULT_ROUTE
        );
        a.iface = iface;
    }
    // The file is checked before anything is loaded.
    let file = match &a.config {
        Some(path) => Some(settings::from_file(&Settings::default(), path)?),
        None => None,
    };
    let dir = pins::dir(&a.iface, netns)?;
    let attached_here = if dir.exists() {
        let mut g = Gate::open(&a.iface, netns)?;
        if let Some(s) = &file {
            for n in g.set_settings(s)? {
                info!("{n}");
            }
        }
        info!(
            "adopted the gate already attached to {} (pins in {}); it stays attached when the daemon stops",
            a.iface,
            dir.display()
        );
        false
    } else {
        let options = AttachOptions {
            mode: attach_mode(a.mode),
            max_connections: a.max_connections,
            max_connections_v6: v6_connections(a.max_connections, a.max_connections_v6),
            max_prefixes: a.max_prefixes,
            multiprog: a.multiprog.priority(),
        };
        let s = file.clone().unwrap_or_default();
        let (_, notes) = gate::attach(&a.iface, netns, options, &s)?;
        info!("attached to {}, pinned in {}", a.iface, dir.display());
        for n in notes {
            info!("{n}");
        }
        true
    };
    let shared = Arc::new(Shared {
        gate: Mutex::new(Gate::open(&a.iface, netns)?),
        iface: a.iface.clone(),
        swept_half_open: AtomicU64::new(0),
        swept_established: AtomicU64::new(0),
    });
    let served = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the runtime")
        .and_then(|rt| rt.block_on(serve(&a, shared.clone(), listener)));
    if let Err(e) = &served {
        error!("{e:#}");
    }
    if attached_here && !a.keep {
        let notes = gate::detach(&a.iface, netns)?;
        info!("detached from {}", a.iface);
        for n in notes {
            info!("{n}");
        }
    } else {
        // No sweeper vouches for the last count any longer.
        if let Err(e) = shared.gate.lock().expect("not poisoned").forget_kept() {
            warn!("{e}");
        }
        info!("left the gate attached to {}", a.iface);
    }
    served
}

async fn serve(
    a: &RunArgs,
    shared: Arc<Shared>,
    listener: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    if let Some(l) = listener {
        let l = tokio::net::TcpListener::from_std(l)?;
        info!("serving metrics on http://{}/metrics", l.local_addr()?);
        tokio::spawn(serve_metrics(l, shared.clone()));
    }
    let mut logger = program_log(&shared);
    let mut watch = a.config.as_deref().and_then(ConfigWatch::start);
    // The watchdog is fed after each sweep: sweeps come at least twice
    // within its timeout.
    let watchdog = sd_notify::watchdog_enabled();
    let mut period = Duration::from_secs(a.sweep_interval);
    if let Some(limit) = watchdog {
        let half = (limit / 2).max(Duration::from_millis(100));
        if half < period {
            info!(
                "sweeping every {:.1} s, not {} s: systemd's watchdog wants word every {:.1} s",
                half.as_secs_f64(),
                a.sweep_interval,
                limit.as_secs_f64()
            );
            period = half;
        }
    }
    let mut sweep = tokio::time::interval(period);
    // The count each sweep leaves stands until two sweeps are missed.
    let keep_ns = 2 * a.sweep_interval * 1_000_000_000;
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweeps = 0u64;
    info!("running: SIGHUP reloads the config file, SIGTERM or SIGINT stops");
    tell(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("protecting {}", shared.iface)),
    ]);
    loop {
        tokio::select! {
            _ = term.recv() => {
                info!("SIGTERM: stopping");
                tell(&[NotifyState::Stopping]);
                return Ok(());
            }
            _ = int.recv() => {
                info!("SIGINT: stopping");
                tell(&[NotifyState::Stopping]);
                return Ok(());
            }
            _ = hup.recv() => {
                // Read whole now: the watch need not read it again.
                if let Some(w) = watch.as_mut() {
                    w.moved();
                }
                reload(&shared, a.config.as_deref(), "SIGHUP");
            }
            changed = changed(&mut watch) => {
                if changed {
                    reload(&shared, a.config.as_deref(), "the config file changed");
                }
            }
            _ = sweep.tick() => {
                let rebuild = sweeps.is_multiple_of(handshake_user::gate::REBUILD_EVERY);
                sweeps += 1;
                sweep_once(&shared, keep_ns, rebuild);
                if watchdog.is_some() {
                    tell(&[NotifyState::Watchdog]);
                }
                // A change whose events another branch cut short (the
                // wait in `changed` is dropped when one wins) shows here.
                if watch.as_mut().is_some_and(ConfigWatch::moved) {
                    reload(&shared, a.config.as_deref(), "the config file changed");
                }
            }
            ready = readable(&mut logger) => match ready {
                Ok(mut guard) => {
                    guard.get_inner_mut().flush();
                    guard.clear_ready();
                }
                Err(e) => {
                    warn!("stopped forwarding the programs' log: {e}");
                    logger = None;
                }
            },
        }
    }
}

type ProgramLog = AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>;

/// The XDP program's aya-log channel, if it can be opened.
fn program_log(shared: &Shared) -> Option<ProgramLog> {
    let id = match shared.gate.lock().expect("not poisoned").xdp_program_id() {
        Ok(id) => id,
        Err(e) => {
            warn!("the programs' log is not forwarded: {e}");
            return None;
        }
    };
    let logger = match aya_log::EbpfLogger::init_from_id(id) {
        Ok(l) => l,
        Err(e) => {
            warn!("the programs' log is not forwarded: {e}");
            return None;
        }
    };
    // SAFETY: the logger owns its ring buffer's descriptor, which stays open
    // and the same for as long as the logger lives, inside the AsyncFd.
    match unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) } {
        Ok(fd) => Some(fd),
        Err(e) => {
            warn!("the programs' log is not forwarded: {e}");
            None
        }
    }
}

async fn readable(
    logger: &mut Option<ProgramLog>,
) -> std::io::Result<
    tokio::io::unix::AsyncFdReadyMutGuard<'_, aya_log::EbpfLogger<&'static dyn log::Log>>,
> {
    match logger {
        Some(l) => l.readable_mut().await,
        None => std::future::pending().await,
    }
}

/// The config file's directory, watched: what is in it is replaced by a
/// rename or a symlink swap (a ConfigMap update) as often as it is written
/// in place, and a watch on the file itself would stay on the old one.
struct ConfigWatch {
    path: std::path::PathBuf,
    events: inotify::EventStream<Vec<u8>>,
    /// The file's bytes when last looked at: a reload happens only when
    /// they change (a directory sees events of other files too).
    seen: Option<Vec<u8>>,
}

impl ConfigWatch {
    fn start(path: &Path) -> Option<ConfigWatch> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => std::path::PathBuf::from("."),
        };
        let started = (|| -> std::io::Result<_> {
            let inotify = inotify::Inotify::init()?;
            use inotify::WatchMask as W;
            inotify.watches().add(
                &dir,
                W::CLOSE_WRITE | W::MOVED_TO | W::CREATE | W::DELETE | W::MOVED_FROM,
            )?;
            inotify.into_event_stream(vec![0u8; 4096])
        })();
        match started {
            Ok(events) => {
                info!(
                    "watching {} for changes to {}",
                    dir.display(),
                    path.display()
                );
                Some(ConfigWatch {
                    path: path.to_path_buf(),
                    events,
                    seen: std::fs::read(path).ok(),
                })
            }
            Err(e) => {
                warn!(
                    "not watching {} for changes ({e}); SIGHUP still reloads it",
                    dir.display()
                );
                None
            }
        }
    }
}

/// Waits for the watched file to have changed: after events in its
/// directory, a short quiet spell (a swap is several renames), then its
/// bytes compared with the last look. Never returns without a watch.
impl ConfigWatch {
    /// Whether the file's bytes differ from those last looked at (and
    /// takes the new ones as seen).
    fn moved(&mut self) -> bool {
        let now = std::fs::read(&self.path).ok();
        if now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

async fn changed(watch: &mut Option<ConfigWatch>) -> bool {
    use futures_util::StreamExt as _;
    let Some(w) = watch else {
        return std::future::pending().await;
    };
    match w.events.next().await {
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            warn!(
                "stopped watching {}: {e}; SIGHUP still reloads it",
                w.path.display()
            );
            *watch = None;
            return false;
        }
        None => {
            *watch = None;
            return false;
        }
    }
    // Let the rest of a swap land, and take its events with it.
    while let Ok(Some(Ok(_))) =
        tokio::time::timeout(Duration::from_millis(200), w.events.next()).await
    {}
    w.moved()
}

/// Tells the service manager `states` (nothing without `NOTIFY_SOCKET`).
fn tell(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        warn!("could not notify the service manager: {e}");
    }
}

/// SIGHUP, or a change of the file: the config file again, whole, over the
/// defaults, between `RELOADING=1` and `READY=1` for systemd. `why` starts
/// each log line.
fn reload(shared: &Shared, path: Option<&Path>, why: &str) {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => tell(&[NotifyState::Reloading, now]),
        Err(_) => tell(&[NotifyState::Reloading]),
    }
    reload_file(shared, path, why);
    tell(&[NotifyState::Ready]);
}

fn reload_file(shared: &Shared, path: Option<&Path>, why: &str) {
    let Some(path) = path else {
        warn!("{why}: there is no --config file to reload");
        return;
    };
    let new = match settings::from_file(&Settings::default(), path) {
        Ok(s) => s,
        Err(e) => {
            error!("{why}: kept the running settings: {e}");
            return;
        }
    };
    let mut gate = shared.gate.lock().expect("not poisoned");
    let old = match gate.settings() {
        Ok(s) => s,
        Err(e) => {
            error!("{why}: could not read the running settings: {e}");
            return;
        }
    };
    match gate.set_settings(&new) {
        Ok(notes) => {
            for n in notes {
                info!("{why}: {n}");
            }
        }
        Err(e) => {
            error!("{why}: kept the running settings: {e}");
            return;
        }
    }
    let changes: Vec<String> = KEYS
        .iter()
        .filter(|k| k.show(&old) != k.show(&new))
        .map(|k| format!("{}: {} -> {}", k.name, k.show(&old), k.show(&new)))
        .collect();
    if changes.is_empty() {
        info!("{why}: reloaded {}; nothing changed", path.display());
    } else {
        info!("{why}: reloaded {}: {}", path.display(), changes.join(", "));
    }
}

fn sweep_once(shared: &Shared, keep_ns: u64, rebuild: bool) {
    let mut gate = shared.gate.lock().expect("not poisoned");
    let swept = gate
        .config()
        .and_then(|cfg| gate.sweep(&cfg, handshake_user::monotonic_ns(), keep_ns, rebuild));
    match swept {
        Ok((h, e)) => {
            shared
                .swept_half_open
                .fetch_add(h as u64, Ordering::Relaxed);
            shared
                .swept_established
                .fetch_add(e as u64, Ordering::Relaxed);
            if h + e > 0 {
                debug!("swept {h} expired half-open and {e} finished connection(s)");
            }
        }
        Err(e) => warn!("sweep failed: {e}"),
    }
}

/// Whether the gate's own XDP program is on the interface's hook (or in the
/// dispatcher there); why not.
fn ready(shared: &Shared) -> Result<(), String> {
    let ours = shared
        .gate
        .lock()
        .expect("not poisoned")
        .xdp_program_id()
        .map_err(|e| format!("not ready: {e}"))?;
    let ifindex = nix::net::if_::if_nametoindex(shared.iface.as_str())
        .map_err(|e| format!("not ready: no interface {}: {e}", shared.iface))?;
    let in_dispatcher = shared
        .gate
        .lock()
        .expect("not poisoned")
        .meta(handshake_common::meta::DISPATCHER_PRIORITY)
        .is_ok_and(|p| p != 0);
    if in_dispatcher {
        return gate::multiprog::placement(ifindex, ours)
            .map(drop)
            .map_err(|why| format!("not ready: {why}"));
    }
    match handshake_user::hook::xdp_program(ifindex) {
        Ok(Some(p)) if p.id == ours => Ok(()),
        Ok(Some(p)) => Err(format!(
            "not ready: the XDP hook of {} holds program id {}, not the gate's ({ours})",
            shared.iface, p.id
        )),
        Ok(None) => Err(format!(
            "not ready: nothing on the XDP hook of {}",
            shared.iface
        )),
        Err(e) => Err(format!("not ready: could not ask about the XDP hook: {e}")),
    }
}

async fn serve_metrics(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                warn!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| answer(req, shared.clone()));
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await
            {
                debug!("metrics: connection ended: {e}");
            }
        });
    }
}

async fn answer(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |code: StatusCode, kind: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = code;
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            kind.parse().expect("a valid header value"),
        );
        Ok(r)
    };
    match req.uri().path() {
        "/metrics" => {}
        // Liveness: the daemon answers.
        "/healthz" => return reply(StatusCode::OK, "text/plain", "ok\n".into()),
        // Readiness: the gate protects the interface.
        "/readyz" => {
            let ready = tokio::task::spawn_blocking(move || ready(&shared)).await;
            return match ready {
                Ok(Ok(())) => reply(StatusCode::OK, "text/plain", "ok\n".into()),
                Ok(Err(why)) => reply(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "text/plain",
                    format!("{why}\n"),
                ),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("{e}\n"),
                ),
            };
        }
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "the metrics are at /metrics, the health checks at /healthz and /readyz\n".into(),
            );
        }
    }
    // Reading a million connections takes a while: off the event loop.
    let text = tokio::task::spawn_blocking(move || {
        let swept = (
            shared.swept_half_open.load(Ordering::Relaxed),
            shared.swept_established.load(Ordering::Relaxed),
        );
        metrics::render(&shared.gate.lock().expect("not poisoned"), swept)
    })
    .await;
    match text {
        Ok(Ok(body)) => reply(StatusCode::OK, metrics::CONTENT_TYPE, body),
        Ok(Err(e)) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
        Err(e) => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("{e}\n"),
        ),
    }
}
