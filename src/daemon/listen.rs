//! One guest socket's accept loop, for ever: a guest's vhost-user connection and, while it is
//! live, a second one (a live migration's destination QEMU), a third refused; and a growing
//! pause when a connection cannot be served. Of two connections, one at a time admits requests
//! (`transport/virtqueue/handoff.rs`).
//!
//! vhost-user-backend's `VhostUserDaemon` serves exactly one connection, so the loop builds a
//! fresh backend and daemon for every connection, which lets a guest disconnect and reconnect (a
//! reboot, a QEMU restart) any number of times.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use vhost::vhost_user::Listener;
use vhost_user_backend::bitmap::BitmapMmapRegion;
use vhost_user_backend::{VhostUserBackend, VhostUserDaemon};
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::ops::stats::DeviceStats;
use crate::transport::virtqueue::{AtomicMem, Gate, Handoff, Quiesce, Ticket, Vring};

/// Waits until one of `fds` is readable, or `timeout_ms` passed (-1: for ever); returns their
/// readiness.
fn poll_many(fds: &[RawFd], timeout_ms: i32) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd structures for the call.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
        if r >= 0 {
            return Ok(pfds.iter().map(|p| p.revents != 0).collect());
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
        !matches!(poll_many(&[stop.as_raw_fd()], ms).as_deref(), Ok([false]))
    }
}

/// A connection being served.
struct Live<B> {
    device: B,
    shutdown: vhost_user_backend::ShutdownHandle,
    /// Signalled when the connection has ended and its queue threads are joined.
    done: Arc<EventFd>,
    waiter: JoinHandle<()>,
    ticket: Ticket,
}

/// Serves one socket until `stop` fires, for ever: at most [`MAX_CONNECTIONS`] connections at
/// once, one of which at a time admits requests (see `virtqueue/handoff.rs`), and only while
/// `gate` admits the guest (cluster mode: this daemon owns it).
pub(super) fn serve_socket<B, F>(
    name: &str,
    mut listener: Listener,
    stop: &EventFd,
    stats: &DeviceStats,
    gate: Option<Arc<dyn Gate>>,
    make: F,
) where
    B: VhostUserBackend<Bitmap = BitmapMmapRegion, Vring = Vring> + Quiesce + Clone + 'static,
    F: Fn(AtomicMem, Ticket) -> io::Result<B>,
{
    let handoff = Handoff::gated(gate);
    let mut live: Vec<Live<B>> = Vec::new();
    let mut backoff = Backoff::default();
    while let Some((incoming, stopping)) = wait(name, &listener, stop, &mut live, stats) {
        if stopping {
            break;
        }
        if !incoming {
            continue;
        }
        if live.len() >= MAX_CONNECTIONS {
            refuse_extra(name, &mut listener, &mut live, stop, stats);
            continue;
        }
        let ticket = handoff.ticket();
        match accept(name, &mut listener, &make, ticket.clone()) {
            Ok(l) => {
                backoff = Backoff::default();
                stats.connections.fetch_add(1, Ordering::Relaxed);
                stats.connected.store(true, Ordering::Relaxed);
                if !live.is_empty() {
                    log::info!(
                        "{name}: a second connection while one is live (a migration's \
                         destination?): it admits requests once the first one's rings stopped"
                    );
                }
                live.push(l);
            }
            Err(e) => {
                ticket.end();
                log::log!(
                    e.level,
                    "{name}: {}; retrying in {:?}",
                    e.what,
                    backoff.delay
                );
                if backoff.wait(stop) {
                    break;
                }
            }
        }
    }
    for l in &live {
        // Every completion reaches guest memory before the frontend sees the connection end.
        l.device.quiesce();
        l.shutdown.shutdown();
    }
    for l in live {
        let _ = l.waiter.join();
        l.ticket.end();
    }
    stats.connected.store(false, Ordering::Relaxed);
}

/// At most this many connections per socket: a guest's own and, during a live migration, its
/// destination QEMU's.
const MAX_CONNECTIONS: usize = 2;

/// Waits for a new frontend, the end of a connection (reaped here) or `stop`. Returns whether
/// a frontend is waiting and whether to stop; `None` when polling fails.
fn wait<B>(
    name: &str,
    listener: &Listener,
    stop: &EventFd,
    live: &mut Vec<Live<B>>,
    stats: &DeviceStats,
) -> Option<(bool, bool)> {
    let mut fds = vec![listener.as_raw_fd(), stop.as_raw_fd()];
    fds.extend(live.iter().map(|l| l.done.as_raw_fd()));
    let ready = match poll_many(&fds, -1) {
        Ok(r) => r,
        Err(e) => {
            log::error!("{name}: poll: {e}");
            return None;
        }
    };
    if ready[1] {
        return Some((false, true));
    }
    reap(live, &ready[2..], stats);
    Some((ready[0], false))
}

/// Drops the connections whose `done` fired (`ended[i]` for `live[i]`).
fn reap<B>(live: &mut Vec<Live<B>>, ended: &[bool], stats: &DeviceStats) {
    let mut keep = Vec::with_capacity(live.len());
    for (i, l) in live.drain(..).enumerate() {
        if ended.get(i).copied().unwrap_or(false) {
            let _ = l.waiter.join();
            l.ticket.end();
        } else {
            keep.push(l);
        }
    }
    *live = keep;
    if live.is_empty() {
        stats.connected.store(false, Ordering::Relaxed);
    }
}

/// Builds a device for the waiting frontend and serves it on its own thread.
fn accept<B, F>(
    name: &str,
    listener: &mut Listener,
    make: &F,
    ticket: Ticket,
) -> Result<Live<B>, ConnectError>
where
    B: VhostUserBackend<Bitmap = BitmapMmapRegion, Vring = Vring> + Quiesce + Clone + 'static,
    F: Fn(AtomicMem, Ticket) -> io::Result<B>,
{
    let (daemon, device) = connect(name, listener, &|mem| make(mem, ticket.clone()))?;
    log::info!("{name}: frontend connected");
    let failed = |what: String| ConnectError {
        level: log::Level::Error,
        what,
    };
    let shutdown = daemon
        .shutdown_handle()
        .ok_or_else(|| failed("the connection has no shutdown handle".into()))?;
    let done = match EventFd::new(EFD_NONBLOCK) {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            shutdown.shutdown();
            let mut daemon = daemon;
            let _ = daemon.wait();
            return Err(failed(format!("eventfd: {e}")));
        }
    };
    let waiter = wait_for_disconnect(name, daemon, done.clone());
    Ok(Live {
        device,
        shutdown,
        done,
        waiter,
        ticket,
    })
}

/// Why a waiting frontend could not be served yet, and how loudly to say so.
struct ConnectError {
    level: log::Level,
    what: String,
}

/// Builds a device and its vhost-user daemon, and accepts the waiting frontend with them.
fn connect<B>(
    name: &str,
    listener: &mut Listener,
    make: &dyn Fn(AtomicMem) -> io::Result<B>,
) -> Result<(VhostUserDaemon<B>, B), ConnectError>
where
    B: VhostUserBackend<Bitmap = BitmapMmapRegion, Vring = Vring> + Quiesce + Clone + 'static,
{
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
    let (mut daemon, device) = daemon.map_err(|e| ConnectError {
        level: log::Level::Error,
        what: format!("cannot create a device: {e}"),
    })?;
    daemon.start(listener).map_err(|e| ConnectError {
        level: log::Level::Warn,
        what: format!("accepting a connection failed: {e}"),
    })?;
    Ok((daemon, device))
}

/// Waits on its own thread for the connection to end, then drops the daemon (which stops and
/// joins the queue threads) and signals `done`.
fn wait_for_disconnect<B>(
    name: &str,
    mut daemon: VhostUserDaemon<B>,
    done: Arc<EventFd>,
) -> JoinHandle<()>
where
    B: VhostUserBackend<Bitmap = BitmapMmapRegion, Vring = Vring> + Clone + 'static,
{
    let name = name.to_string();
    thread::spawn(move || {
        match daemon.wait() {
            Ok(()) => log::info!("{name}: frontend disconnected"),
            Err(e) => log::warn!("{name}: connection ended: {e}"),
        }
        // Dropping the daemon stops and joins the queue threads.
        drop(daemon);
        let _ = done.write(1);
    })
}

/// A frontend beyond [`MAX_CONNECTIONS`]: refused (and logged), unless a connection ends
/// within a second (a frontend that just went away may not have been noticed yet: a quick
/// reconnect); then it is served at the next turn of the loop.
fn refuse_extra<B>(
    name: &str,
    listener: &mut Listener,
    live: &mut Vec<Live<B>>,
    stop: &EventFd,
    stats: &DeviceStats,
) {
    let mut fds = vec![stop.as_raw_fd()];
    fds.extend(live.iter().map(|l| l.done.as_raw_fd()));
    match poll_many(&fds, 1000) {
        Ok(ready) if ready.iter().any(|r| *r) => {
            reap(live, &ready[1..], stats);
            return;
        }
        Ok(_) => {}
        Err(e) => log::error!("{name}: poll: {e}"),
    }
    if let Ok(Some(extra)) = listener.accept() {
        log::warn!(
            "{name}: refusing a connection while {MAX_CONNECTIONS} are live (is another QEMU \
             using this guest's socket?)"
        );
        drop(extra);
    }
}
