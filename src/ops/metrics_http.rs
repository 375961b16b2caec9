//! The optional `GET /metrics` listener: the Prometheus text exposition over plain HTTP/1.1.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crate::ops::metrics::Metrics;

/// Requests the metrics listener serves at once.
const MAX_HTTP_CLIENTS: usize = 8;

/// The optional `GET /metrics` endpoint: a plain std listener, one short-lived thread per
/// request, no HTTP library.
pub struct HttpEndpoint {
    addr: SocketAddr,
    thread: Option<JoinHandle<()>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

impl HttpEndpoint {
    pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        log::info!("metrics on http://{addr}/metrics");
        let thread = thread::Builder::new()
            .name("metrics-http".into())
            .spawn(move || {
                let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                for conn in listener.incoming() {
                    if stop2.load(Relaxed) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    // A few scrapers at once at most; more are turned away, not queued.
                    if busy.load(Relaxed) >= MAX_HTTP_CLIENTS {
                        drop(conn);
                        continue;
                    }
                    busy.fetch_add(1, Relaxed);
                    let (metrics, done) = (metrics.clone(), busy.clone());
                    let spawned =
                        thread::Builder::new()
                            .name("metrics-req".into())
                            .spawn(move || {
                                if let Err(e) = answer(conn, &metrics) {
                                    log::debug!("metrics request: {e}");
                                }
                                done.fetch_sub(1, Relaxed);
                            });
                    if spawned.is_err() {
                        busy.fetch_sub(1, Relaxed);
                    }
                }
            })?;
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

/// Answers one HTTP/1.x request: `GET /metrics` (or `HEAD`), else 404 or 405.
fn answer(conn: TcpStream, metrics: &Metrics) -> io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(conn.try_clone()?).take(16 << 10);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip the headers: nothing in them changes the answer.
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" || line == "\n" {
            break;
        }
    }
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
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        conn.write_all(body.as_bytes())?;
    }
    conn.flush()
}
