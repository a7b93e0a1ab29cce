//! The host agent (`lvchain agent`): a long-running service serving the API (HTTP/1.1 + JSON)
//! on a unix socket to root and a configured group, with jobs for long work, a periodic
//! collector per served domain and metrics. A client like the CLI: it owns no storage logic,
//! every request becomes a call of the engine's `Domain` facade (see `api.rs`).
//!
//! Images prepared through the agent are held by it (`prepared.rs`): their shared leases live
//! as long as this process, and are taken again at start for images still prepared here.
//!
//! Life cycle: bind the socket (refused while another agent answers on it; a stale socket
//! file is replaced), tell systemd it is ready (`READY=1` when `NOTIFY_SOCKET` is set), serve
//! (`server.rs`: the accept loops, with the limits that keep a client from exhausting them);
//! on SIGTERM or SIGINT stop accepting, wait up to the shutdown timeout for in-flight requests,
//! jobs and collections, remove the socket and end. Work still running then ends with the
//! process: programs writing volume data die with it (their leases with them), and an
//! operation's status reads `failed` from shared storage.

pub mod api;
pub mod census;
pub mod config;
pub mod domains;
pub mod errors;
mod exposition;
mod extract;
pub mod gc;
pub mod jobs;
pub mod metrics;
mod notify;
pub mod peer;
pub mod prepared;
pub mod server;

pub use config::{AgentArgs, Settings};

use crate::error::{Error, Result};
use crate::lvm::{Lvm, LvmConfig};
use domains::Domains;
use jobs::{InFlight, Jobs};
use metrics::Metrics;
use peer::Access;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The agent's shared state: what every request and background task uses.
pub struct Agent {
    pub domains: Domains,
    pub jobs: Arc<Jobs>,
    pub gc: gc::GcBoard,
    pub gc_interval: Option<Duration>,
    pub metrics: Arc<Metrics>,
    pub inflight: Arc<InFlight>,
    pub access: Access,
    /// The shared leases of the images prepared through this agent.
    pub prepared: prepared::Prepared,
}

impl Agent {
    pub fn new(
        domains: Domains,
        access: Access,
        gc_interval: Option<Duration>,
        metrics: Arc<Metrics>,
    ) -> Agent {
        let inflight = Arc::new(InFlight::default());
        Agent {
            domains,
            jobs: Arc::new(Jobs::new(inflight.clone(), metrics.clone())),
            gc: gc::GcBoard::default(),
            gc_interval,
            metrics,
            inflight,
            access,
            prepared: prepared::Prepared::default(),
        }
    }
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(args: &AgentArgs) -> Result<()> {
    let settings = Settings::resolve(args, config::FileConfig::load(args)?)?;
    let lvm = Arc::new(Lvm::new(LvmConfig::from_env()?));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::io("starting the agent's runtime"))?;
    let result = runtime.block_on(serve(settings, lvm));
    // Work still running past the shutdown timeout ends with the process.
    runtime.shutdown_background();
    result
}

/// Binds the socket: its directory is made; a socket file nobody answers on is replaced.
fn bind(path: &Path, access: &Access) -> Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        crate::engine::image::make_walkable_dirs(dir)
            .map_err(Error::io(format!("creating {}", dir.display())))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::InvalidInput(format!(
                "another agent answers on {}",
                path.display()
            )));
        }
        std::fs::remove_file(path).map_err(Error::io(format!(
            "removing the stale socket {}",
            path.display()
        )))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(Error::io(format!("binding {}", path.display())))?;
    use std::os::unix::fs::PermissionsExt;
    let mode = if access.group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(Error::io(format!("setting the mode of {}", path.display())))?;
    if let Some(gid) = access.group {
        std::os::unix::fs::chown(path, None, Some(gid.as_raw())).map_err(Error::io(format!(
            "setting the group of {}",
            path.display()
        )))?;
    }
    Ok(listener)
}

async fn terminated() -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    Ok(())
}

async fn serve(settings: Settings, lvm: Arc<Lvm>) -> Result<()> {
    let access = Access::for_group(settings.group.as_deref())?;
    let metrics = Arc::new(Metrics::new());
    let observer = metrics.clone();
    crate::exec::set_observer(Box::new(move |o| observer.command(o)));
    let observer = metrics.clone();
    crate::lock::set_wait_observer(Box::new(move |w| observer.lock_wait(w)));
    let agent = Arc::new(Agent::new(
        Domains::host(lvm, settings.domains.clone()).with_bursts(settings.burst),
        access.clone(),
        settings.gc_interval,
        metrics,
    ));
    // Signals are caught before the socket exists: a SIGTERM right after start is handled.
    let signals = tokio::spawn(terminated());
    // The images still prepared here are held again before any request is served.
    let holder = agent.clone();
    tokio::task::spawn_blocking(move || prepared::reacquire(&holder))
        .await
        .map_err(|e| Error::InvalidInput(e.to_string()))?;
    let listener = bind(&settings.socket, &access)?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let until_stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    if let Some(addr) = settings.metrics_address {
        let tcp = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(Error::io(format!("binding the metrics address {addr}")))?;
        tokio::spawn(server::serve(
            tcp,
            "metrics",
            api::metrics_router(agent.clone()),
            settings.max_connections,
            until_stopped(stopped.clone()),
        ));
    }
    tokio::spawn(prepared::refresh_loop(agent.clone(), stopped.clone()));
    if let Some(interval) = settings.gc_interval {
        tokio::spawn(gc::schedule(agent.clone(), interval, stopped.clone()));
    }
    if let Some(interval) = settings.census_interval {
        tokio::spawn(census::schedule(agent.clone(), interval, stopped.clone()));
    }
    let mut server = tokio::spawn(server::serve(
        listener,
        "socket",
        api::router(agent.clone()),
        settings.max_connections,
        until_stopped(stopped.clone()),
    ));
    tracing::info!(socket = %settings.socket.display(), "serving");
    notify::notify("READY=1");
    let served = tokio::select! {
        r = signals => r.map_err(|e| Error::InvalidInput(e.to_string()))?.map_err(Error::io("waiting for signals")),
        r = &mut server => {
            // The server ended without a signal (it only ends after `stop`): its task failed.
            r.map_err(|e| Error::InvalidInput(format!("serving the socket: {e}")))
        }
    };
    notify::notify("STOPPING=1");
    let _ = stop.send(true);
    let drained = tokio::time::timeout(settings.shutdown_timeout, async {
        let _ = (&mut server).await;
        agent.inflight.idle().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            background = agent.inflight.count(),
            "shutdown timeout: work still running ends with the agent"
        );
    }
    agent.domains.end_bursts();
    if let Err(e) = std::fs::remove_file(&settings.socket) {
        tracing::warn!(
            "cannot remove the socket {}: {e}",
            settings.socket.display()
        );
    }
    served
}

#[cfg(test)]
mod tests;
