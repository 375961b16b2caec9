//! Prometheus metrics: the counters of `stats.rs` and the PR state, rendered with
//! `prometheus-client` in the Prometheus text format (0.0.4), for `sharedisk ctl metrics` and the
//! optional `GET /metrics` listener.
//!
//! Names follow the Prometheus conventions: the `sharedisk_` prefix, base units, `_total` on
//! counters (appended by the encoder), labelled by guest, path (`blk`/`scsi`) and op, never by
//! key or LBA.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::lun::Lun;
use crate::ops::stats::{self, Op, Path, Stats, LATENCY_BUCKETS, PR_ACTIONS};
use crate::pr::Holder;

/// The daemon's registry: one collector that reads the live counters at every scrape.
pub struct Metrics {
    registry: Registry,
}

struct SharediskCollector {
    lun: Arc<Lun>,
    stats: Arc<Stats>,
    started: f64,
}

impl Metrics {
    pub fn new(lun: Arc<Lun>, stats: Arc<Stats>) -> Self {
        let mut registry = Registry::with_prefix("sharedisk");
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        registry.register_collector(Box::new(SharediskCollector {
            lun,
            stats,
            started,
        }));
        Metrics { registry }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

type Labels<'a, const N: usize> = [(&'static str, &'a str); N];

fn counter<const N: usize>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels<'_, N>, u64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in samples {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge<const N: usize>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: &[(Labels<'_, N>, f64)],
) -> std::fmt::Result {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in samples {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl std::fmt::Debug for SharediskCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharediskCollector")
    }
}

impl Collector for SharediskCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let version = env!("CARGO_PKG_VERSION");
        enc.encode_descriptor("build", "sharedisk's version", None, MetricType::Info)?
            .encode_info(&[("version", version)])?;
        gauge(
            &mut enc,
            "image_size_bytes",
            "Size of the shared image",
            &[([], self.lun.image.size() as f64)],
        )?;
        gauge(
            &mut enc,
            "start_time_seconds",
            "When the daemon started, in seconds since the Unix epoch",
            &[([], self.started)],
        )?;

        let guests = self.stats.all();
        let per_device = |f: &dyn Fn(&stats::DeviceStats) -> u64| {
            let mut v = Vec::new();
            for (g, s) in &guests {
                for p in Path::ALL {
                    v.push(([("guest", g.as_str()), ("path", p.name())], f(s.device(p))));
                }
            }
            v
        };
        let connected = per_device(&|d| d.connected.load(Relaxed) as u64);
        let connected: Vec<_> = connected.into_iter().map(|(l, v)| (l, v as f64)).collect();
        gauge(
            &mut enc,
            "guest_connected",
            "Whether the guest's frontend (QEMU) is connected to the device",
            &connected,
        )?;
        counter(
            &mut enc,
            "connections",
            "vhost-user connections accepted (the first and every reconnect)",
            &per_device(&|d| d.connections.load(Relaxed)),
        )?;
        let ok = |op: Op| move |d: &stats::DeviceStats| d.op(op).ok.load(Relaxed);
        let bytes = |op: Op| move |d: &stats::DeviceStats| d.op(op).bytes.load(Relaxed);
        counter(
            &mut enc,
            "reads_completed",
            "Reads completed successfully",
            &per_device(&ok(Op::Read)),
        )?;
        counter(
            &mut enc,
            "writes_completed",
            "Writes completed successfully",
            &per_device(&ok(Op::Write)),
        )?;
        counter(
            &mut enc,
            "read_bytes",
            "Bytes read by successful reads",
            &per_device(&bytes(Op::Read)),
        )?;
        counter(
            &mut enc,
            "written_bytes",
            "Bytes written by successful writes",
            &per_device(&bytes(Op::Write)),
        )?;
        counter(
            &mut enc,
            "flushes_completed",
            "Flushes (FLUSH, SYNCHRONIZE CACHE) completed successfully",
            &per_device(&ok(Op::Flush)),
        )?;
        counter(
            &mut enc,
            "discards_completed",
            "DISCARD, WRITE ZEROES, UNMAP and WRITE SAME completed successfully",
            &per_device(&ok(Op::Discard)),
        )?;

        let per_op = |f: &dyn Fn(&stats::OpStats) -> u64| {
            let mut v = Vec::new();
            for (g, s) in &guests {
                for p in Path::ALL {
                    for op in Op::ALL {
                        v.push((
                            [("guest", g.as_str()), ("path", p.name()), ("op", op.name())],
                            f(s.device(p).op(op)),
                        ));
                    }
                }
            }
            v
        };
        counter(
            &mut enc,
            "io_errors",
            "Requests that failed for a reason other than a reservation conflict",
            &per_op(&|o| o.errors.load(Relaxed)),
        )?;
        counter(
            &mut enc,
            "reservation_conflicts",
            "Requests refused by the persistent reservation (fenced)",
            &per_op(&|o| o.conflicts.load(Relaxed)),
        )?;
        {
            let mut m = enc.encode_descriptor(
                "request_duration_seconds",
                "Time from a request's arrival to its completion",
                None,
                MetricType::Histogram,
            )?;
            for (g, s) in &guests {
                for p in Path::ALL {
                    for op in Op::ALL {
                        let (sum, count, cum) = s.device(p).op(op).latency.snapshot();
                        let buckets: Vec<(f64, u64)> = LATENCY_BUCKETS
                            .iter()
                            .copied()
                            .chain([f64::INFINITY])
                            .zip(cum)
                            .collect();
                        let labels = [("guest", g.as_str()), ("path", p.name()), ("op", op.name())];
                        m.encode_family(&labels)?
                            .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
                    }
                }
            }
        }
        let mut pr = Vec::new();
        for (g, s) in &guests {
            for (a, action) in PR_ACTIONS.iter().enumerate() {
                for r in stats::Result::ALL {
                    pr.push((
                        [
                            ("guest", g.as_str()),
                            ("action", *action),
                            ("result", r.name()),
                        ],
                        s.scsi.prout_count(a, r),
                    ));
                }
            }
        }
        counter(
            &mut enc,
            "pr_out_commands",
            "PERSISTENT RESERVE OUT commands by service action and result",
            &pr,
        )?;

        let (generation, registrations, reservation) = self.lun.reservations.with(|a| {
            let res = a.reservation().map(|r| {
                let holder = match &r.holder {
                    Holder::Initiator(h) => h.clone(),
                    Holder::AllRegistrants => "all_registrants".to_string(),
                };
                (holder, r.res_type.code().to_string())
            });
            (a.generation(), a.registrations().len(), res)
        });
        gauge(
            &mut enc,
            "pr_generation",
            "PRgeneration of the logical unit",
            &[([], f64::from(generation))],
        )?;
        gauge(
            &mut enc,
            "pr_registrations",
            "Registered reservation keys",
            &[([], registrations as f64)],
        )?;
        if let Some(c) = self.lun.reservations.cluster_view() {
            gauge(
                &mut enc,
                "cluster_epoch",
                "Cluster mode: the epoch of the shared reservation state this daemon holds",
                &[([], c.epoch as f64)],
            )?;
            gauge(
                &mut enc,
                "cluster_lease_valid",
                "Cluster mode: 1 while the read lease is valid and I/O is admitted, else 0",
                &[([], if c.lease_valid { 1.0 } else { 0.0 })],
            )?;
            gauge(
                &mut enc,
                "cluster_lease_remaining_seconds",
                "Cluster mode: what is left of the read lease",
                &[([], c.lease_remaining.as_secs_f64())],
            )?;
        }
        let mut m = enc.encode_descriptor(
            "pr_reservation",
            "The persistent reservation, while there is one: its holder and type code",
            None,
            MetricType::Info,
        )?;
        if let Some((holder, typ)) = reservation {
            m.encode_info(&[("holder", holder.as_str()), ("type", typ.as_str())])?;
        }
        Ok(())
    }
}

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
