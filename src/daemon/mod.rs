//! The daemon as a service: the guests' sockets, then around them the control socket, the
//! optional metrics endpoint and systemd's notifications, until SIGINT or SIGTERM.

mod listen;
mod notify;
pub mod runtime_guests;
pub mod server;
pub mod sockets;

use crate::util::lock::lock;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGINT, SIGTERM};

use crate::config::{Config, GuestConfig};
use crate::daemon::server::{Server, ServerError};
use crate::lun::Lun;
use crate::ops::control::server::ControlServer;
use crate::ops::control::{Daemon, GuestError};
use crate::ops::metrics::Metrics;
use crate::ops::metrics_http::HttpEndpoint;
use crate::ops::stats::Stats;
use crate::pr::Holder;
use notify::notify;
use runtime_guests::GuestChanges;

/// The running daemon as the control plane sees it.
pub struct Service {
    server: Mutex<Server>,
    lun: Arc<Lun>,
    stats: Arc<Stats>,
    metrics: Arc<Metrics>,
    started: Instant,
    changes: Mutex<GuestChanges>,
    /// The iSCSI portal's sessions, when one is configured.
    iscsi: Option<crate::transport::iscsi::Sessions>,
}

impl Service {
    fn server(&self) -> MutexGuard<'_, Server> {
        lock(&self.server)
    }

    fn changes(&self) -> MutexGuard<'_, GuestChanges> {
        lock(&self.changes)
    }

    /// systemd's STATUS= line: who is connected and who holds the disk.
    fn status_line(&self) -> String {
        let config = self.config();
        let connected: Vec<String> = {
            let server = self.server();
            config
                .guests
                .iter()
                .filter(|g| server.guest_connected(&g.name))
                .map(|g| g.name.clone())
                .collect()
        };
        // The published snapshot: the STATUS= thread never waits for a PR OUT.
        let pr = self.lun.reservations.snapshot();
        let holder = pr.reservation.as_ref().map(|r| match &r.holder {
            Holder::Initiator(h) => format!("{h} holds type {}", r.res_type.code()),
            Holder::AllRegistrants => format!("all registrants hold type {}", r.res_type.code()),
        });
        format!(
            "{}/{} guests connected{}; {}",
            connected.len(),
            config.guests.len(),
            if connected.is_empty() {
                String::new()
            } else {
                format!(" ({})", connected.join(","))
            },
            holder.unwrap_or_else(|| "no reservation".into())
        )
    }
}

impl Daemon for Service {
    fn config(&self) -> Config {
        self.server().config().clone()
    }

    fn lun(&self) -> Arc<Lun> {
        self.lun.clone()
    }

    fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }

    fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    fn cluster_status(&self) -> Option<serde_json::Value> {
        self.server().cluster_status()
    }

    fn add_guest(&self, guest: GuestConfig) -> Result<(), GuestError> {
        let mut server = self.server();
        if server.config().guest(&guest.name).is_some() {
            return Err(GuestError::Exists(guest.name));
        }
        let max = server.config().max_shares;
        // iSCSI sessions and guests share maxShares: no login is admitted meanwhile.
        let held = self.iscsi.as_ref().map(|s| s.hold());
        let sessions = held.as_ref().map_or(0, |h| h.count());
        if server.config().guests.len() + sessions >= max {
            return Err(GuestError::Full(max));
        }
        let path = runtime_guests::path_for(server.config());
        server
            .add_guest(guest.clone())
            .map_err(|e| GuestError::Serve(Box::new(e)))?;
        if let Some(h) = &held {
            h.set_guests(server.config().guests.len());
        }
        drop(held);
        let mut changes = self.changes();
        changes.note_added(&guest);
        changes
            .save(&path)
            .map_err(|source| GuestError::AddedUnsaved {
                name: guest.name,
                path,
                source,
            })
    }

    fn iscsi_sessions(&self) -> Option<Vec<Arc<crate::transport::iscsi::SessionInfo>>> {
        self.iscsi.as_ref().map(|s| s.list())
    }

    fn remove_guest(&self, name: &str, force: bool) -> Result<(), GuestError> {
        let mut server = self.server();
        if server.config().guest(name).is_none() {
            return Err(GuestError::Unknown(name.to_string()));
        }
        if server.guest_connected(name) && !force {
            return Err(GuestError::Connected(name.to_string()));
        }
        let path = runtime_guests::path_for(server.config());
        server.remove_guest(name);
        if let Some(s) = &self.iscsi {
            s.hold().set_guests(server.config().guests.len());
        }
        let mut changes = self.changes();
        changes.note_removed(name);
        changes
            .save(&path)
            .map_err(|source| GuestError::RemovedUnsaved {
                name: name.to_string(),
                path,
                source,
            })
    }
}

/// Applies the run-time guest changes an earlier run saved (`guest add`, `guest remove`) to
/// `config`, and returns them to be added to.
fn apply_guest_changes(config: &mut Config) -> Result<GuestChanges, ServerError> {
    let changes_path = runtime_guests::path_for(config);
    let legacy = runtime_guests::legacy_path_for(config);
    let changes = GuestChanges::load_or_import(&changes_path, legacy.as_deref())
        .map_err(|e| ServerError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
    if changes != GuestChanges::default() {
        changes.apply(config);
        log::info!(
            "run-time guest changes from {} applied: guests are {}",
            changes_path.display(),
            config.guest_names().join(", ")
        );
    }
    Ok(changes)
}

/// Serves `config` until SIGINT or SIGTERM.
pub fn run(mut config: Config) -> Result<(), ServerError> {
    let started = Instant::now();
    let changes = apply_guest_changes(&mut config)?;
    let panics = crate::count_panics();
    let server = crate::start_server(config)?;
    let lun = server.lun().clone();
    let stats = server.stats().clone();
    let config = server.config().clone();
    // iSCSI sessions and guests share maxShares.
    let mut iscsi = match &config.iscsi {
        Some(i) => Some(crate::transport::iscsi::Portal::start(
            server.target().clone(),
            i.clone(),
            config.max_shares,
            config.guests.len(),
        )?),
        None => None,
    };
    if let Some(p) = &iscsi {
        p.set_poll(std::time::Duration::from_micros(config.poll_us.into()));
    }
    let metrics = Arc::new(Metrics::with_iscsi(
        lun.clone(),
        stats.clone(),
        iscsi.as_ref().map(|p| p.sessions()),
    ));
    let service = Arc::new(Service {
        server: Mutex::new(server),
        lun,
        stats,
        metrics: metrics.clone(),
        started,
        changes: Mutex::new(changes),
        iscsi: iscsi.as_ref().map(|p| p.sessions()),
    });
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let mut control = ControlServer::start(
        &config.control_socket_path(),
        config.control_socket_group(),
        service.clone(),
    )?;
    let mut http =
        match config.metrics_listen {
            Some(addr) => Some(HttpEndpoint::start(addr, metrics).map_err(|e| {
                std::io::Error::new(e.kind(), format!("metrics listener {addr}: {e}"))
            })?),
            None => None,
        };
    // Every socket listens and the PR state is loaded.
    notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(&service.status_line()),
    ]);
    let status_service = service.clone();
    let status_thread =
        notify::spawn_status(signals.handle(), move || status_service.status_line())?;
    if let Some(sig) = signals.forever().next() {
        log::info!("signal {sig}: shutting down");
    }
    notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("stopping"),
    ]);
    signals.handle().close();
    let _ = status_thread.join();
    control.stop();
    if let Some(h) = http.as_mut() {
        h.stop();
    }
    if let Some(p) = iscsi.as_mut() {
        p.stop();
    }
    service.server().stop();
    // A panic on a queue thread is only logged by vhost-user-backend and the daemon keeps
    // serving; the exit status tells.
    match panics.load(std::sync::atomic::Ordering::SeqCst) {
        0 => Ok(()),
        n => Err(ServerError::Io(std::io::Error::other(format!(
            "{n} daemon thread(s) panicked while serving (see the log)"
        )))),
    }
}
