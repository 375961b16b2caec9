//! The daemon: one logical unit, and for every guest a listening socket per device type.
//!
//! Each socket has its own thread. vhost-user-backend's `VhostUserDaemon` serves exactly one
//! connection, so the thread builds a fresh backend and daemon for every connection, which lets a
//! guest disconnect and reconnect (a reboot, a QEMU restart) any number of times. While a
//! connection is active the thread keeps accepting, only to refuse and log a second one.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use vhost::vhost_user::Listener;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{Config, ConfigError, GuestConfig};
use crate::image::{FileImage, Image, OpenMode};
use crate::lun::Lun;
use crate::ops::stats::{DeviceStats, Stats};
use crate::pr::backend;
use crate::pr::fencing::Reservations;
use crate::pr::replay::ReplayLog;
use crate::pr::state_file::{ImageIdentity, Saved, StateError, StateStore};
use crate::pr::Arbiter;
use crate::scsi::target::Target;
use crate::transport::blk::BlkBackend;
use crate::transport::virtio_scsi::ScsiBackend;
use crate::transport::virtqueue::{AtomicMem, Quiesce, Vring};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("image {path}: {source}")]
    Image { path: PathBuf, source: io::Error },
    #[error(transparent)]
    State(#[from] StateError),
    #[error("socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("cluster: {0}")]
    Cluster(String),
}

/// A running daemon. Dropping it (or [`Server::shutdown`]) stops every socket thread, closes the
/// guests' connections and removes the sockets.
pub struct Server {
    lun: Arc<Lun>,
    target: Arc<Target>,
    stats: Arc<Stats>,
    config: Config,
    sockets: Vec<GuestSockets>,
}

/// The socket threads of one guest, stopped together.
struct GuestSockets {
    name: String,
    stop: Arc<EventFd>,
    threads: Vec<JoinHandle<()>>,
}

impl GuestSockets {
    fn new(name: &str) -> io::Result<Self> {
        Ok(GuestSockets {
            name: name.to_string(),
            stop: Arc::new(EventFd::new(EFD_NONBLOCK)?),
            threads: Vec::new(),
        })
    }

    /// Stops serving: connections are quiesced and closed, the sockets removed.
    fn stop(&mut self) {
        let _ = self.stop.write(1);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Server {
    pub fn start(config: Config) -> Result<Server, ServerError> {
        Self::start_wrapped(config, |image| image)
    }

    /// Like [`Server::start`], serving the image through `wrap` (tests put a
    /// [`crate::testhooks::probe::Probe`] there).
    pub fn start_wrapped(
        config: Config,
        wrap: impl FnOnce(Box<dyn Image>) -> Box<dyn Image>,
    ) -> Result<Server, ServerError> {
        config.validate()?;
        let image_err = |source| ServerError::Image {
            path: config.image.clone(),
            source,
        };
        let mode = OpenMode {
            read_only: config.read_only,
            direct: config.direct,
            aio: config.aio(),
            shared: config.cluster.is_some(),
        };
        let image = FileImage::open_with(&config.image, config.size, mode).map_err(image_err)?;
        let identity = ImageIdentity::of(&config.image).map_err(image_err)?;
        let store = StateStore::new(config.state_path(), identity.clone());
        let initiators = config.guest_names().into_iter();
        let (arbiter, replay) = if config.reset_reservations {
            log::warn!(
                "--reset-reservations: starting with no registrations; {} is overwritten",
                store.path().display()
            );
            let arbiter = Arbiter::new(initiators);
            store.save(arbiter.state(), &[])?;
            (arbiter, ReplayLog::default())
        } else {
            match store.load()? {
                Some(Saved {
                    reservations: state,
                    replay,
                }) => {
                    log::info!(
                        "reservations restored from {}: generation {}, {} registration(s), {}",
                        store.path().display(),
                        state.generation,
                        state.registrations.len(),
                        match &state.reservation {
                            Some(r) => format!("reserved ({:?})", r.res_type),
                            None => "not reserved".into(),
                        }
                    );
                    (
                        Arbiter::from_state(state, initiators),
                        ReplayLog::from_saved(replay),
                    )
                }
                None => (Arbiter::new(initiators), ReplayLog::default()),
            }
        };
        let mut reservations =
            Reservations::new(arbiter, Some(store.clone())).with_replay_log(replay);
        let mut disk_id = None;
        if let Some(c) = &config.cluster {
            let local = reservations.with(|a| a.snapshot());
            let joined = backend::join(c, &config.guest_names(), &local, Some(store))
                .map_err(|e| ServerError::Cluster(e.to_string()))?;
            let arbiter = Arbiter::from_state(joined.state, config.guest_names());
            reservations = reservations
                .with_arbiter(arbiter)
                .with_backend(joined.backend);
            disk_id = Some(joined.disk_id);
        }
        let mut lun = Lun::new(wrap(Box::new(image)), reservations, &identity.path);
        if let Some(id) = &disk_id {
            lun = lun.identified_by(id);
        }
        let lun = Arc::new(lun);
        // Cluster mode: keeps the read lease from here until `stop` (a failure below stops it).
        lun.reservations.start(lun.clone());
        log::info!(
            "serving {} ({} bytes{}), serial {}, to {}",
            config.image.display(),
            lun.image.size(),
            if config.read_only { ", read-only" } else { "" },
            lun.serial,
            config.guest_names().join(", ")
        );

        crate::daemon::sockets::create_dir(&config.socket_dir).map_err(|source| {
            lun.reservations.stop();
            ServerError::Socket {
                path: config.socket_dir.clone(),
                source,
            }
        })?;
        let target = Arc::new(Target::new(lun.clone()));
        let mut server = Server {
            lun,
            target,
            stats: Arc::default(),
            config,
            sockets: Vec::new(),
        };
        for guest in server.config.guests.clone() {
            server.serve_guest(&guest)?;
        }
        Ok(server)
    }

    /// Starts the sockets of one guest.
    fn serve_guest(&mut self, guest: &GuestConfig) -> Result<(), ServerError> {
        let mut sockets = GuestSockets::new(&guest.name)?;
        let r = self.listen_guest(guest, &mut sockets);
        if r.is_err() {
            sockets.stop();
        } else {
            self.sockets.push(sockets);
        }
        r
    }

    /// Serves a guest that is not in the configuration yet (run-time `guest add`).
    pub fn add_guest(&mut self, guest: GuestConfig) -> Result<(), ServerError> {
        let mut config = self.config.clone();
        config.guests.push(guest.clone());
        config.validate()?;
        self.serve_guest(&guest)?;
        self.config = config;
        self.lun.reservations.serve(&guest.name);
        // A new initiator: known for REGISTER AND MOVE, and told of the power on.
        self.lun
            .reservations
            .with_mut(|a| a.add_initiator(guest.name.clone()));
        Ok(())
    }

    /// Stops serving `name`: its connections are closed and its sockets removed. Its
    /// registrations are PR state and stay.
    pub fn remove_guest(&mut self, name: &str) -> bool {
        let Some(i) = self.sockets.iter().position(|s| s.name == name) else {
            return false;
        };
        self.sockets.remove(i).stop();
        self.config.guests.retain(|g| g.name != name);
        self.lun.reservations.unserve(name);
        true
    }

    fn listen_guest(
        &mut self,
        guest: &GuestConfig,
        sockets: &mut GuestSockets,
    ) -> Result<(), ServerError> {
        let initiator: Arc<str> = guest.name.as_str().into();
        let stats = self.stats.guest(&guest.name);
        let lun = self.lun.clone();
        let name = initiator.clone();
        let read_only = guest.read_only;
        let poll = std::time::Duration::from_micros(self.config.poll_us.into());
        let blk = stats.blk.clone();
        self.listen(
            sockets,
            self.config.blk_socket(&guest.name),
            stats.blk.clone(),
            move |mem| {
                BlkBackend::with_options(
                    lun.clone(),
                    name.clone(),
                    mem,
                    read_only,
                    blk.clone(),
                    poll,
                )
            },
        )?;
        if self.config.scsi && guest.scsi {
            let target = self.target.clone();
            let scsi = stats.scsi.clone();
            self.listen(
                sockets,
                self.config.scsi_socket(&guest.name),
                stats.scsi.clone(),
                move |mem| {
                    ScsiBackend::with_options(
                        target.clone(),
                        initiator.clone(),
                        mem,
                        read_only,
                        scsi.clone(),
                        poll,
                    )
                },
            )?;
        }
        Ok(())
    }

    /// Starts the thread serving one socket with backends built by `make`.
    fn listen<B, F>(
        &self,
        sockets: &mut GuestSockets,
        path: PathBuf,
        stats: Arc<DeviceStats>,
        make: F,
    ) -> Result<(), ServerError>
    where
        B: VhostUserBackend<Bitmap = (), Vring = Vring> + Quiesce + Clone + 'static,
        F: Fn(AtomicMem) -> io::Result<B> + Send + 'static,
    {
        // A socket someone still answers on belongs to a live daemon: never steal it. A stale one
        // (left by a crash) is replaced.
        if std::os::unix::net::UnixStream::connect(&path).is_ok() {
            return Err(ServerError::Socket {
                path,
                source: io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on it (is another sharedisk running?)",
                ),
            });
        }
        let listener = Listener::new(&path, true).map_err(|e| ServerError::Socket {
            path: path.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        crate::daemon::sockets::restrict(
            &path,
            self.config.socket_group.as_deref(),
            self.config.socket_mode,
        )
        .map_err(|source| ServerError::Socket {
            path: path.clone(),
            source,
        })?;
        log::info!("listening on {}", path.display());
        let stop = sockets.stop.clone();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let handle = thread::Builder::new()
            .name(name.clone())
            .spawn(move || serve_socket(&name, listener, &stop, &stats, make))?;
        sockets.threads.push(handle);
        Ok(())
    }

    pub fn lun(&self) -> &Arc<Lun> {
        &self.lun
    }

    /// The shared arbiter: tests act as initiators through it.
    pub fn arbiter(&self) -> &Reservations {
        &self.lun.reservations
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The SCSI target every guest's scsi device shares.
    pub fn target(&self) -> &Arc<Target> {
        &self.target
    }

    /// Every guest's I/O counters and connection state.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Stops serving every guest, waiting for every connection to wind down.
    pub fn stop(&mut self) {
        self.stop_threads();
    }

    /// Whether either device of `guest` has a frontend connected.
    pub fn guest_connected(&self, guest: &str) -> bool {
        let s = self.stats.guest(guest);
        s.blk.connected.load(Ordering::Relaxed) || s.scsi.connected.load(Ordering::Relaxed)
    }

    /// Stops serving, waiting for every connection to wind down.
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        for s in &self.sockets {
            let _ = s.stop.write(1);
        }
        for mut s in self.sockets.drain(..) {
            s.stop();
        }
        self.lun.reservations.stop();
    }

    /// Cluster mode: `sharedisk ctl cluster status`; `None` on one host.
    pub fn cluster_status(&self) -> Option<serde_json::Value> {
        self.lun.reservations.cluster_status()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

/// Waits until one of `fds` is readable; returns their readiness.
fn poll_readable<const N: usize>(fds: [RawFd; N]) -> io::Result<[bool; N]> {
    poll_timeout(fds, -1)
}

/// Like [`poll_readable`], giving up after `timeout_ms` (all `false`).
fn poll_timeout<const N: usize>(fds: [RawFd; N], timeout_ms: i32) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    loop {
        // SAFETY: `pfds` is a valid array of N pollfd structures for the duration of the call.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), N as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Ok(pfds.map(|p| p.revents != 0));
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The pause before retrying a connection we could not serve, doubling up to 5 s.
struct Backoff {
    delay: std::time::Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: std::time::Duration::from_millis(100),
        }
    }
}

impl Backoff {
    /// Waits for the current delay, or until `stop` fires (then returns true).
    fn wait(&mut self, stop: &EventFd) -> bool {
        let ms = self.delay.as_millis() as i32;
        self.delay = (self.delay * 2).min(std::time::Duration::from_secs(5));
        !matches!(poll_timeout([stop.as_raw_fd()], ms), Ok([false]))
    }
}

/// Serves one socket until `stop` fires: one connection at a time, for ever.
fn serve_socket<B, F>(
    name: &str,
    mut listener: Listener,
    stop: &EventFd,
    stats: &DeviceStats,
    make: F,
) where
    B: VhostUserBackend<Bitmap = (), Vring = Vring> + Quiesce + Clone + 'static,
    F: Fn(AtomicMem) -> io::Result<B>,
{
    let mut backoff = Backoff::default();
    loop {
        match poll_readable([listener.as_raw_fd(), stop.as_raw_fd()]) {
            Ok([_, true]) => return,
            Ok([true, false]) => {}
            Ok(_) => continue,
            Err(e) => {
                log::error!("{name}: poll: {e}");
                return;
            }
        }
        let mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let daemon = make(mem.clone())
            .map_err(|e| e.to_string())
            .and_then(|backend| {
                let device = backend.clone();
                VhostUserDaemon::new(name.to_string(), backend, mem)
                    .map(|d| (d, device))
                    .map_err(|e| e.to_string())
            });
        // A failure here is a lack of resources (file descriptors, memory): the waiting frontend
        // stays in the listen queue, and is served once we have them again.
        let (mut daemon, device) = match daemon {
            Ok(d) => d,
            Err(e) => {
                log::error!(
                    "{name}: cannot create a device: {e}; retrying in {:?}",
                    backoff.delay
                );
                if backoff.wait(stop) {
                    return;
                }
                continue;
            }
        };
        if let Err(e) = daemon.start(&mut listener) {
            log::warn!(
                "{name}: accepting a connection failed: {e}; retrying in {:?}",
                backoff.delay
            );
            if backoff.wait(stop) {
                return;
            }
            continue;
        }
        backoff = Backoff::default();
        log::info!("{name}: frontend connected");
        let Some(shutdown) = daemon.shutdown_handle() else {
            continue;
        };
        let done = match EventFd::new(EFD_NONBLOCK) {
            Ok(fd) => Arc::new(fd),
            Err(e) => {
                log::error!("{name}: eventfd: {e}");
                shutdown.shutdown();
                let _ = daemon.wait();
                return;
            }
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.connected.store(true, Ordering::Relaxed);
        let done_w = done.clone();
        let conn_name = name.to_string();
        let waiter = thread::spawn(move || {
            match daemon.wait() {
                Ok(()) => log::info!("{conn_name}: frontend disconnected"),
                Err(e) => log::warn!("{conn_name}: connection ended: {e}"),
            }
            // Dropping the daemon stops and joins the queue threads.
            drop(daemon);
            let _ = done_w.write(1);
        });
        let stopping = loop {
            match poll_readable([listener.as_raw_fd(), done.as_raw_fd(), stop.as_raw_fd()]) {
                Ok([_, _, true]) => break true,
                Ok([_, true, _]) => break false,
                Ok([true, _, _]) => {
                    // A frontend that just went away may not have been noticed yet (a quick
                    // reconnect): give the old connection a moment to end before refusing.
                    match poll_timeout([done.as_raw_fd(), stop.as_raw_fd()], 1000) {
                        Ok([false, false]) => {}
                        _ => continue,
                    }
                    if let Ok(Some(extra)) = listener.accept() {
                        log::warn!(
                            "{name}: refusing a second connection while one is active (is another \
                             QEMU using this guest's socket?)"
                        );
                        drop(extra);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    log::error!("{name}: poll: {e}");
                    break true;
                }
            }
        };
        if stopping {
            // Every completion reaches guest memory before the frontend sees the connection end.
            device.quiesce();
            shutdown.shutdown();
        }
        let _ = waiter.join();
        stats.connected.store(false, Ordering::Relaxed);
        if stopping {
            return;
        }
    }
}
