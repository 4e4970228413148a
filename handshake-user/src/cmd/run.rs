//! `handshake-gate run`: the daemon. It attaches the gate (or adopts one
//! already attached), and then, until SIGTERM or SIGINT:
//! - serves Prometheus metrics read from the maps at each scrape;
//! - sweeps expired entries out of the connection maps;
//! - forwards the kernel programs' aya-log messages to its own log;
//! - reloads the config file on SIGHUP (a file that does not parse or
//!   validate leaves the running settings alone, and the log says why).
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
use tokio::io::unix::AsyncFd;
use tokio::signal::unix::{SignalKind, signal};

use handshake_user::gate::{self, AttachOptions, Gate};
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
    swept_half_open: AtomicU64,
    swept_established: AtomicU64,
}

pub fn run(
    a: RunArgs,
    netns: Option<&str>,
    listener: Option<std::net::TcpListener>,
) -> anyhow::Result<()> {
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
        swept_half_open: AtomicU64::new(0),
        swept_established: AtomicU64::new(0),
    });
    let served = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the runtime")
        .and_then(|rt| rt.block_on(serve(&a, shared, listener)));
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
    let mut sweep = tokio::time::interval(Duration::from_secs(a.sweep_interval));
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    info!("running: SIGHUP reloads the config file, SIGTERM or SIGINT stops");
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM: stopping"); return Ok(()); }
            _ = int.recv() => { info!("SIGINT: stopping"); return Ok(()); }
            _ = hup.recv() => reload(&shared, a.config.as_deref()),
            _ = sweep.tick() => sweep_once(&shared),
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

/// SIGHUP: the config file again, whole, over the defaults.
fn reload(shared: &Shared, path: Option<&Path>) {
    let Some(path) = path else {
        warn!("SIGHUP: there is no --config file to reload");
        return;
    };
    let new = match settings::from_file(&Settings::default(), path) {
        Ok(s) => s,
        Err(e) => {
            error!("SIGHUP: kept the running settings: {e}");
            return;
        }
    };
    let mut gate = shared.gate.lock().expect("not poisoned");
    let old = match gate.settings() {
        Ok(s) => s,
        Err(e) => {
            error!("SIGHUP: could not read the running settings: {e}");
            return;
        }
    };
    match gate.set_settings(&new) {
        Ok(notes) => {
            for n in notes {
                info!("SIGHUP: {n}");
            }
        }
        Err(e) => {
            error!("SIGHUP: kept the running settings: {e}");
            return;
        }
    }
    let changes: Vec<String> = KEYS
        .iter()
        .filter(|k| k.show(&old) != k.show(&new))
        .map(|k| format!("{}: {} -> {}", k.name, k.show(&old), k.show(&new)))
        .collect();
    if changes.is_empty() {
        info!("SIGHUP: reloaded {}; nothing changed", path.display());
    } else {
        info!(
            "SIGHUP: reloaded {}: {}",
            path.display(),
            changes.join(", ")
        );
    }
}

fn sweep_once(shared: &Shared) {
    let mut gate = shared.gate.lock().expect("not poisoned");
    let swept = gate
        .config()
        .and_then(|cfg| gate.sweep(&cfg, handshake_user::monotonic_ns()));
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
    if req.uri().path() != "/metrics" {
        return reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "the metrics are at /metrics\n".into(),
        );
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
