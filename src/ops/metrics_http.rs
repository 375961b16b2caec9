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
/// How long a connection keeps its slot whatever comes: a scraper's request head arrives well
/// within it, so a burst of new connections cannot close a scrape before it is read.
const EVICTION_GRACE: Duration = Duration::from_millis(250);
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
    since: Instant,
    reading: bool,
}

/// The connections being served, in accept order. When every slot is taken, a new connection
/// takes the slot of the oldest one still sending its request head after [`EVICTION_GRACE`] (a
/// scraper sends it at once, so that one is slow or idle), which is closed; if there is none,
/// the new one is closed instead. So slow clients cannot keep a real scrape out.
#[derive(Default)]
struct Slots(Mutex<Vec<Slot>>);

impl Slots {
    /// Takes a slot for connection `id`, closing the oldest one still reading its head past the
    /// grace if all are taken; false: none may be closed, `stream` is not served.
    fn admit(&self, id: u64, stream: &TcpStream) -> bool {
        let mut slots = lock(&self.0);
        if slots.len() >= MAX_HTTP_CLIENTS {
            let now = Instant::now();
            let evictable = |s: &Slot| s.reading && now.duration_since(s.since) >= EVICTION_GRACE;
            let Some(oldest) = slots.iter().position(evictable) else {
                return false;
            };
            let evicted = slots.remove(oldest);
            log::debug!("metrics: every slot taken; closing a client still sending its request");
            let _ = evicted.stream.shutdown(Shutdown::Both);
        }
        match stream.try_clone() {
            Ok(stream) => {
                slots.push(Slot {
                    id,
                    stream,
                    since: Instant::now(),
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
