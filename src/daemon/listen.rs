//! One guest socket's accept loop: one vhost-user connection at a time, for ever, a second one
//! refused while the first is active, and a growing pause when a connection cannot be served.
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
use crate::transport::virtqueue::{AtomicMem, Quiesce, Vring};

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
pub(super) fn serve_socket<B, F>(
    name: &str,
    mut listener: Listener,
    stop: &EventFd,
    stats: &DeviceStats,
    make: F,
) where
    B: VhostUserBackend<Bitmap = BitmapMmapRegion, Vring = Vring> + Quiesce + Clone + 'static,
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
        let (mut daemon, device) = match connect(name, &mut listener, &make) {
            Ok(d) => d,
            Err(e) => {
                log::log!(
                    e.level,
                    "{name}: {}; retrying in {:?}",
                    e.what,
                    backoff.delay
                );
                if backoff.wait(stop) {
                    return;
                }
                continue;
            }
        };
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
        let waiter = wait_for_disconnect(name, daemon, done.clone());
        let stopping = refuse_others(name, &mut listener, &done, stop);
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

/// Why a waiting frontend could not be served yet, and how loudly to say so.
struct ConnectError {
    level: log::Level,
    what: String,
}

/// Builds a device and its vhost-user daemon, and accepts the waiting frontend with them.
fn connect<B, F>(
    name: &str,
    listener: &mut Listener,
    make: &F,
) -> Result<(VhostUserDaemon<B>, B), ConnectError>
where
    B: VhostUserBackend<Bitmap = BitmapMmapRegion, Vring = Vring> + Quiesce + Clone + 'static,
    F: Fn(AtomicMem) -> io::Result<B>,
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

/// While a connection is active: refuses (and logs) any other frontend, until the connection
/// ends (`done`: returns false) or `stop` fires (returns true).
fn refuse_others(name: &str, listener: &mut Listener, done: &EventFd, stop: &EventFd) -> bool {
    loop {
        match poll_readable([listener.as_raw_fd(), done.as_raw_fd(), stop.as_raw_fd()]) {
            Ok([_, _, true]) => return true,
            Ok([_, true, _]) => return false,
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
                return true;
            }
        }
    }
}
