//! The daemon: one logical unit, and for every guest a listening socket per device type.
//!
//! Each socket has its own thread, running `listen.rs`'s accept loop.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use vhost::vhost_user::Listener;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::VhostUserBackend;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::config::{Config, ConfigError, GuestConfig};
use crate::daemon::listen;
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
use crate::transport::virtqueue::{AtomicMem, Gate, Quiesce, Ticket, Vring};
use crate::transport::Options;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is not valid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The image cannot be opened or created.
    #[error("image {path}: {source}")]
    Image { path: PathBuf, source: io::Error },
    /// The reservation state file cannot be read or written.
    #[error(transparent)]
    State(#[from] StateError),
    /// A guest's socket cannot be set up.
    #[error("socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    /// A guest's socket cannot be bound at its path (something else there, a live daemon on
    /// it, a mode open to every user); the message names the path.
    #[error(transparent)]
    Bind(#[from] crate::daemon::sockets::SocketError),
    /// The state file's directory may be written by others than the daemon's user.
    #[error(transparent)]
    StateDir(#[from] crate::util::state_dir::StateDirError),
    /// Another system call failed (threads, event fds, the socket directory).
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Cluster mode: the cluster cannot be joined, or this build has no cluster support.
    #[error("cluster: {0}")]
    Cluster(#[from] backend::JoinError),
    /// Cluster mode: another daemon of this node and disk runs on this host.
    #[error(
        "cluster: another sharedisk of node {node:?} and disk {disk_id:?} runs on this host (it \
         holds {path}); this one stops before joining, and the running one keeps serving"
    )]
    NodeLocked {
        node: String,
        disk_id: String,
        path: PathBuf,
    },
}

/// A running daemon. Dropping it (or [`Server::shutdown`]) stops every socket thread, closes the
/// guests' connections and removes the sockets.
pub struct Server {
    lun: Arc<Lun>,
    target: Arc<Target>,
    stats: Arc<Stats>,
    config: Config,
    sockets: Vec<GuestSockets>,
    /// Cluster mode: this node's lock, held for the daemon's life (see [`lock_node`]).
    _node_lock: Option<std::fs::File>,
    /// The guests' sockets bound before the start touched etcd, until their threads serve them.
    bound: std::sync::Mutex<std::collections::HashMap<PathBuf, GuestListener>>,
}

/// A bound guest socket, and its file (removed when dropped, after the listener closed).
type GuestListener = (Listener, crate::daemon::sockets::SocketFile);

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
        check_state_dir(&config)?;
        let node_lock = lock_node(&config)?;
        let image = FileImage::open_with(&config.image, config.size, mode).map_err(image_err)?;
        let identity = ImageIdentity::of(&config.image).map_err(image_err)?;
        let store = StateStore::new(config.state_path(), identity.clone());
        let (arbiter, replay, local_ok) = restore_or_rely_on_etcd(&config, &store)?;
        let reservations = Reservations::new(arbiter, Some(store.clone())).with_replay_log(replay);
        // Cluster mode: the local resources first (the node lock above, the sockets here), so
        // that a start that cannot serve fails before it joins in another incarnation's place.
        let bound = if config.cluster.is_some() {
            bind_sockets(&config)?
        } else {
            Default::default()
        };
        let (reservations, disk_id) = join_cluster(&config, reservations, store, local_ok)?;
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
            _node_lock: node_lock,
            bound: std::sync::Mutex::new(bound),
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
        let queue_threads = guest.queues;
        let poll = std::time::Duration::from_micros(self.config.poll_us.into());
        let blk = stats.blk.clone();
        let gate = self.lun.reservations.gate(&guest.name);
        self.listen(
            sockets,
            self.config.blk_socket(&guest.name),
            stats.blk.clone(),
            gate.clone(),
            move |mem, ticket| {
                let options = Options {
                    read_only,
                    stats: blk.clone(),
                    poll,
                    ticket,
                    queue_threads,
                };
                BlkBackend::with_options(lun.clone(), name.clone(), mem, options)
            },
        )?;
        if self.config.scsi && guest.scsi {
            let target = self.target.clone();
            let scsi = stats.scsi.clone();
            self.listen(
                sockets,
                self.config.scsi_socket(&guest.name),
                stats.scsi.clone(),
                gate,
                move |mem, ticket| {
                    let options = Options {
                        read_only,
                        stats: scsi.clone(),
                        poll,
                        ticket,
                        queue_threads,
                    };
                    ScsiBackend::with_options(target.clone(), initiator.clone(), mem, options)
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
        gate: Option<Arc<dyn Gate>>,
        make: F,
    ) -> Result<(), ServerError>
    where
        B: VhostUserBackend<Bitmap = BitmapMmapRegion, Vring = Vring> + Quiesce + Clone + 'static,
        F: Fn(AtomicMem, Ticket) -> io::Result<B> + Send + 'static,
    {
        let prebound = crate::util::lock::lock(&self.bound).remove(&path);
        let listener = match prebound {
            Some(l) => l,
            None => bind_socket(&self.config, &path)?,
        };
        let stop = sockets.stop.clone();
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let handle = thread::Builder::new().name(name.clone()).spawn(move || {
            let (listener, _file) = listener;
            listen::serve_socket(&name, listener, &stop, &stats, gate, make)
        })?;
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

    /// Cluster mode: `sharedisk ctl cluster republish` or `evict`; `None` on one host.
    pub fn cluster_operate(
        &self,
        op: &crate::pr::backend::ClusterOp,
    ) -> Option<Result<serde_json::Value, String>> {
        self.lun.reservations.cluster_operate(op)
    }
}

/// The PR state to start from: the state file's, or none with `--reset-reservations` (the file
/// is then overwritten).
fn restore(config: &Config, store: &StateStore) -> Result<(Arbiter, ReplayLog), ServerError> {
    let initiators = config.guest_names().into_iter();
    Ok(if config.reset_reservations {
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
    })
}

/// [`restore`], except that in cluster mode the state file is only a local copy of what etcd
/// holds: its directory is created, and a copy that cannot be read is logged and left out (the
/// daemon starts from etcd's state; only if etcd has none does the join fail). Whether the local
/// state was read.
fn restore_or_rely_on_etcd(
    config: &Config,
    store: &StateStore,
) -> Result<(Arbiter, ReplayLog, bool), ServerError> {
    if config.cluster.is_none() {
        return restore(config, store).map(|(a, r)| (a, r, true));
    }
    if let Some(dir) = store.path().parent() {
        if let Err(e) = std::fs::create_dir_all(dir) {
            log::warn!(
                "cluster: cannot create {} for the local copy of the state: {e}",
                dir.display()
            );
        }
    }
    if config.reset_reservations {
        log::warn!(
            "--reset-reservations in cluster mode resets this node's local copy only: the shared \
             state in etcd, when there is one, is not reset"
        );
    }
    match restore(config, store) {
        Ok((arbiter, replay)) => Ok((arbiter, replay, true)),
        // The one sign that this node opened another file than before (a shared mount missing,
        // a local file opened in its place): loud, though etcd's state still wins.
        Err(e @ ServerError::State(StateError::OtherImage { .. })) => {
            log::error!(
                "cluster: the local copy of the state was written for another image ({e}): is \
                 this the shared disk? Starting from the shared state in etcd"
            );
            Ok((
                Arbiter::new(config.guest_names()),
                ReplayLog::default(),
                false,
            ))
        }
        Err(e) if config.reset_reservations => {
            log::warn!("cluster: {e}: starting with no registrations");
            Ok((
                Arbiter::new(config.guest_names()),
                ReplayLog::default(),
                true,
            ))
        }
        Err(e) => {
            log::warn!(
                "cluster: the local copy of the state is unusable ({e}): starting from the \
                 shared state in etcd; the copy is rewritten at the next change"
            );
            let arbiter = Arbiter::new(config.guest_names());
            Ok((arbiter, ReplayLog::default(), false))
        }
    }
}

/// Binds one guest socket with its configured group and mode in place before any frontend can
/// connect. A socket someone still answers on belongs to a live daemon: never steal it. A stale
/// one (left by a crash) is replaced; anything else at the path stops the start.
fn bind_socket(config: &Config, path: &std::path::Path) -> Result<GuestListener, ServerError> {
    let access = crate::daemon::sockets::Access {
        group: config.socket_group.as_deref(),
        mode: config.socket_mode,
        world: config.socket_world_access,
    };
    let (listener, file) = crate::daemon::sockets::bind(path, access)?;
    log::info!("listening on {}", path.display());
    Ok((Listener::from(listener), file))
}

/// Every guest socket of `config`, bound (its directory created first).
fn bind_sockets(
    config: &Config,
) -> Result<std::collections::HashMap<PathBuf, GuestListener>, ServerError> {
    crate::daemon::sockets::create_dir(&config.socket_dir).map_err(|source| {
        ServerError::Socket {
            path: config.socket_dir.clone(),
            source,
        }
    })?;
    let mut bound = std::collections::HashMap::new();
    for g in &config.guests {
        let mut paths = vec![config.blk_socket(&g.name)];
        if config.scsi && g.scsi {
            paths.push(config.scsi_socket(&g.name));
        }
        for p in paths {
            let l = bind_socket(config, &p)?;
            bound.insert(p, l);
        }
    }
    Ok(bound)
}

/// Refuses a state directory that others than the daemon's user may write in (the state file,
/// its temporary copy, the guests file and the node lock live there). Cluster mode creates it
/// first (mode 0700), since it holds only this node's files.
fn check_state_dir(config: &Config) -> Result<(), ServerError> {
    use std::os::unix::fs::DirBuilderExt;
    let state = config.state_path();
    let dir = crate::util::state_dir::of(&state);
    if config.cluster.is_some() && !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    }
    crate::util::state_dir::check(dir)?;
    Ok(())
}

/// Cluster mode: takes this node's lock, `<state_dir>/<disk_id>.<node>.lock` (`flock`, held for
/// the daemon's life), before anything touches etcd: a second start of the same node on this
/// host fails here, and so never joins in place of the running daemon nor removes its keys.
fn lock_node(config: &Config) -> Result<Option<std::fs::File>, ServerError> {
    #[cfg(feature = "cluster")]
    if let Some(c) = &config.cluster {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let path = c.local_copy().with_extension("lock");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            // With an explicit `state` path the lock's directory is not the state's.
            crate::util::state_dir::check(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => io::Error::new(
                    e.kind(),
                    format!(
                        "{}: a symbolic link, never followed for the node lock: remove it (the \
                         daemon creates the lock file itself)",
                        path.display()
                    ),
                ),
                _ => io::Error::new(e.kind(), format!("{}: {e}", path.display())),
            })?;
        // A lock file another user planted (or may write) is not ours to trust.
        crate::util::atomic_file::check_own(&path, &file.metadata()?)?;
        // SAFETY: flock on a file descriptor we own; no memory is involved.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(ServerError::NodeLocked {
                node: c.node.clone(),
                disk_id: c.disk_id.clone(),
                path,
            });
        }
        return Ok(Some(file));
    }
    let _ = config;
    Ok(None)
}

/// Cluster mode: joins the cluster, whose shared state the reservations then start from and
/// share through the etcd backend; returns the disk's id in the cluster. On one host the
/// reservations stay as they are. `local_ok`: the local copy was read (else it is not imported).
fn join_cluster(
    config: &Config,
    reservations: Reservations,
    store: StateStore,
    local_ok: bool,
) -> Result<(Reservations, Option<String>), ServerError> {
    let Some(c) = &config.cluster else {
        return Ok((reservations, None));
    };
    let local = reservations.with(|a| a.snapshot());
    let local = local_ok.then_some(&local);
    let joined = backend::join(c, &config.guest_names(), local, Some(store.clone()))?;
    let arbiter = Arbiter::from_state(joined.state, config.guest_names());
    // The records committed with this node's last change win over the local copy's (saved
    // after the commit, so older or missing after a crash between the two).
    reservations.replay_log().restore(joined.replay);
    // The local copy follows the shared state from the start, not only from the next change:
    // a missing, stale or broken copy would otherwise stay so until then.
    if let Err(e) = store.save(arbiter.state(), reservations.replay_log().records()) {
        log::warn!("{e} (a local copy only: the shared state is in etcd)");
    }
    let reservations = reservations
        .with_arbiter(arbiter)
        .with_backend(joined.backend);
    Ok((reservations, Some(joined.disk_id)))
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop_threads();
    }
}
