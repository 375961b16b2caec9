//! The optional `GET /metrics` listener: the Prometheus text exposition over plain HTTP/1.1.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::ops::metrics::Metrics;
use crate::util::lock::lock;

/// Connections the metrics listener serves at once.
const MAX_HTTP_CLIENTS: usize = 8;
/// How long a connection may take for its whole request, from accept to the last byte of the
/// answer: a client that sends its request head slowly is closed when it is up.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// The longest request head read.
const MAX_REQUEST_HEAD: usize = 16 << 10;

/// The optional `GET /metrics` endpoint: a plain std listener, one short-lived thread per
/// connection, no HTTP library.
pub struct HttpEndpoint {
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

/// One connection being served: still reading its request head, or answering.
struct Slot {
    id: u64,
    stream: TcpStream,
    reading: bool,
}

/// How readily a connection still reading its request head gives its slot up, most readily
/// first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Waiting {
    /// Its client closed or reset it.
    Gone,
    /// Nothing of it waits to be read: it sent nothing yet, or it trickles its head.
    Silent,
    /// Bytes of it wait to be read: its head arrived and is about to be read (a scraper's).
    Pending,
}

/// What waits on `stream`, peeked without reading nor blocking.
fn waiting(stream: &TcpStream) -> Waiting {
    use std::os::fd::AsRawFd;
    let mut b = [0u8; 1];
    // SAFETY: a live socket descriptor and a one-byte buffer; MSG_PEEK leaves the byte queued.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        1.. => Waiting::Pending,
        0 => Waiting::Gone,
        _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Waiting::Silent,
        _ => Waiting::Gone,
    }
}

/// The connections being served, in accept order. When every slot is taken, a new connection
/// takes the slot of one still sending its request head, which is closed: one whose client is
/// gone, else the oldest with nothing waiting to be read (silent, or trickling its head), else
/// the oldest still reading; if every one is being answered, the new one is closed instead. A
/// scraper sends its head at once, so it waits to be read within microseconds of its accept and
/// is read right away: neither a flood of silent connections nor clients trickling bytes can
/// keep it out.
#[derive(Default)]
struct Slots(Mutex<Vec<Slot>>);

impl Slots {
    /// Takes a slot for connection `id`, closing one still reading its head (see [`Slots`]) if
    /// all are taken; false: every slot is answering, `stream` is not served.
    fn admit(&self, id: u64, stream: &TcpStream) -> bool {
        let mut slots = lock(&self.0);
        if slots.len() >= MAX_HTTP_CLIENTS {
            let victim = (slots.iter().enumerate())
                .filter(|(_, s)| s.reading)
                .map(|(i, s)| (waiting(&s.stream), i))
                .min();
            let Some((_, victim)) = victim else {
                return false;
            };
            let evicted = slots.remove(victim);
            log::debug!("metrics: every slot taken; closing a client still sending its request");
            let _ = evicted.stream.shutdown(Shutdown::Both);
        }
        match stream.try_clone() {
            Ok(stream) => {
                slots.push(Slot {
                    id,
                    stream,
                    reading: true,
                });
                true
            }
            Err(_) => false,
        }
    }

    /// Connection `id` has its request head: it is answered, and no longer evicted. False: it
    /// was evicted meanwhile.
    fn answering(&self, id: u64) -> bool {
        let mut slots = lock(&self.0);
        slots.iter_mut().find(|s| s.id == id).is_some_and(|s| {
            s.reading = false;
            true
        })
    }

    /// Connection `id` is done: its slot is free.
    fn leave(&self, id: u64) {
        lock(&self.0).retain(|s| s.id != id);
    }
}

impl HttpEndpoint {
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        log::info!("metrics on http://{addr}/metrics");
        if !addr.ip().is_loopback() {
            log::warn!(
                "metrics on {addr} are reachable from other hosts, without authentication: they \
                 expose the guests' names, each guest's I/O counts, bytes, errors, reservation \
                 conflicts and latencies, the reservation's holder and type, the number of \
                 registrations and the version; listen on 127.0.0.1 or [::1] unless every host \
                 that can reach {} may see this (or a firewall keeps the others out)",
                addr.ip()
            );
        }
        let thread = thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || accept_loop(&listener, &metrics, &stop2))?;
        Ok(HttpEndpoint {
            addr,
            thread: Some(thread),
            stop,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Relaxed);
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HttpEndpoint {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Accepts connections until `stop`, each served on its own thread within a slot.
fn accept_loop(listener: &TcpListener, metrics: &Arc<Metrics>, stop: &AtomicBool) {
    let slots = Arc::new(Slots::default());
    for (id, conn) in (0u64..).zip(listener.incoming()) {
        if stop.load(Relaxed) {
            return;
        }
        let Ok(conn) = conn else { continue };
        if !slots.admit(id, &conn) {
            continue;
        }
        let (metrics, slots2) = (metrics.clone(), slots.clone());
        let spawned = thread::Builder::new()
            .name("metrics-req".into())
            .spawn(move || {
                if let Err(e) = answer(conn, &metrics, || slots2.answering(id)) {
                    log::debug!("metrics request: {e}");
                }
                slots2.leave(id);
            });
        if spawned.is_err() {
            slots.leave(id);
        }
    }
}

/// Sets `conn`'s timeouts to what is left until `deadline`; an error once it has passed.
fn until(conn: &TcpStream, deadline: Instant) -> io::Result<()> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the request took longer than its deadline",
        ));
    }
    conn.set_read_timeout(Some(left))?;
    conn.set_write_timeout(Some(left))
}

/// Reads the request head (up to the empty line) before `deadline`.
fn read_head(conn: &mut TcpStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        until(conn, deadline)?;
        let n = conn.read(&mut buf)?;
        if n == 0 {
            return Ok(head);
        }
        // Only the new bytes and the three before them can complete the empty line.
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        let tail = &head[from..];
        if tail.windows(4).any(|w| w == b"\r\n\r\n") || tail.windows(2).any(|w| w == b"\n\n") {
            return Ok(head);
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too long",
            ));
        }
    }
}

/// Answers one HTTP/1.x request: `GET /metrics` (or `HEAD`), else 404 or 405, all of it within
/// [`REQUEST_DEADLINE`] of the accept. `answering()` is called once the head is read; false
/// means the connection lost its slot meanwhile, and is not answered.
fn answer(
    mut conn: TcpStream,
    metrics: &Metrics,
    answering: impl FnOnce() -> bool,
) -> io::Result<()> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let head = read_head(&mut conn, deadline)?;
    if !answering() {
        return Ok(());
    }
    let head = String::from_utf8_lossy(&head);
    let request_line = head.lines().next().unwrap_or("");
    let mut parts = request_line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.render(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n".into(),
        ),
        _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
    };
    until(&conn, deadline)?;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        // In pieces, each within what is left: a client that reads slowly gets no more time.
        for piece in body.as_bytes().chunks(64 << 10) {
            until(&conn, deadline)?;
            conn.write_all(piece)?;
        }
    }
    conn.flush()
}

#[cfg(test)]
mod tests;
