//! Prometheus metrics: the counters of `stats.rs` and the PR state, rendered with
//! `prometheus-client` in the Prometheus text format (0.0.4), for `sharedisk ctl metrics` and the
//! optional `GET /metrics` listener (`metrics_http.rs`).
//!
//! Names follow the Prometheus conventions: the `sharedisk_` prefix, base units, `_total` on
//! counters (appended by the encoder), labelled by guest, path (`blk`/`scsi`) and op, never by
//! key or LBA.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::lun::Lun;
use crate::ops::stats::{self, Op, Path, Stats, LATENCY_BUCKETS, PR_ACTIONS};
use crate::pr::Holder;
use crate::transport::iscsi::{Sessions, LOGIN_RESULTS, PDU_ERROR_KINDS};

#[cfg(test)]
mod tests;

/// The daemon's registry: one collector that reads the live counters at every scrape.
pub struct Metrics {
    registry: Registry,
}

struct SharediskCollector {
    lun: Arc<Lun>,
    stats: Arc<Stats>,
    started: f64,
    iscsi: Option<Sessions>,
}

impl Metrics {
    pub fn new(lun: Arc<Lun>, stats: Arc<Stats>) -> Self {
        Self::with_iscsi(lun, stats, None)
    }

    /// [`Metrics::new`], with the iSCSI portal's sessions and counters.
    pub fn with_iscsi(lun: Arc<Lun>, stats: Arc<Stats>, iscsi: Option<Sessions>) -> Self {
        let mut registry = Registry::with_prefix("sharedisk");
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        registry.register_collector(Box::new(SharediskCollector {
            lun,
            stats,
            started,
            iscsi,
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
        let guests = self.stats.all();
        self.encode_daemon(&mut enc)?;
        encode_devices(&mut enc, &guests)?;
        encode_ops(&mut enc, &guests)?;
        encode_pr_out(&mut enc, &guests)?;
        if let Some(s) = &self.iscsi {
            encode_iscsi(&mut enc, s)?;
        }
        self.encode_pr_state(&mut enc)
    }
}

/// The iSCSI portal: live sessions, logins by result, PDU errors by kind, and each live
/// session's I/O, labelled `guest` with its nexus name. A session's series go when it ends, so
/// there are at most maxShares of each.
fn encode_iscsi(enc: &mut DescriptorEncoder, s: &Sessions) -> std::fmt::Result {
    let list = s.list();
    let c = s.counters();
    gauge(
        enc,
        "iscsi_sessions",
        "Live iSCSI Normal sessions",
        &[([], list.len() as f64)],
    )?;
    let logins: Vec<_> = LOGIN_RESULTS
        .iter()
        .zip(&c.logins)
        .map(|(r, n)| ([("result", *r)], n.load(Relaxed)))
        .collect();
    counter(
        enc,
        "iscsi_logins",
        "iSCSI logins by result (accepted; refused with 0201 auth_failed, 0202 not_allowed, \
         0203 not_found, 0302 out_of_resources, another status refused; failed: the \
         connection or a PDU)",
        &logins,
    )?;
    let errors: Vec<_> = PDU_ERROR_KINDS
        .iter()
        .zip(&c.pdu_errors)
        .map(|(k, n)| ([("kind", *k)], n.load(Relaxed)))
        .collect();
    counter(
        enc,
        "iscsi_pdu_errors",
        "iSCSI PDU errors after login by kind (digest, too_long: the connection closes; \
         protocol: a protocol error closed it; rejected: a Reject was sent)",
        &errors,
    )?;
    let per = |f: &dyn Fn(&crate::transport::iscsi::SessionCounters) -> u64| -> Vec<_> {
        list.iter()
            .map(|x| ([("guest", x.nexus.as_str())], f(&x.counters)))
            .collect()
    };
    counter(
        enc,
        "iscsi_session_commands",
        "SCSI commands of a live iSCSI session (guest: its nexus)",
        &per(&|c| c.commands.load(Relaxed)),
    )?;
    counter(
        enc,
        "iscsi_session_written_bytes",
        "Bytes written by a live iSCSI session",
        &per(&|c| c.bytes_in.load(Relaxed)),
    )?;
    counter(
        enc,
        "iscsi_session_read_bytes",
        "Bytes read by a live iSCSI session",
        &per(&|c| c.bytes_out.load(Relaxed)),
    )?;
    counter(
        enc,
        "iscsi_session_pdu_errors",
        "PDU errors of a live iSCSI session",
        &per(&|c| c.pdu_errors.load(Relaxed)),
    )
}

/// Every guest's counters, as `stats.rs` gives them.
type Guests = [(String, Arc<stats::GuestStats>)];

impl SharediskCollector {
    /// The daemon itself: its version, the image's size, when it started.
    fn encode_daemon(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        let version = env!("CARGO_PKG_VERSION");
        enc.encode_descriptor("build", "sharedisk's version", None, MetricType::Info)?
            .encode_info(&[("version", version)])?;
        gauge(
            enc,
            "image_size_bytes",
            "Size of the shared image",
            &[([], self.lun.image.size() as f64)],
        )?;
        gauge(
            enc,
            "start_time_seconds",
            "When the daemon started, in seconds since the Unix epoch",
            &[([], self.started)],
        )
    }

    /// The logical unit's PR state: generation, registrations, the cluster lease in cluster
    /// mode, and the reservation.
    fn encode_pr_state(&self, enc: &mut DescriptorEncoder) -> std::fmt::Result {
        // The published snapshot, not the arbiter: a scrape never waits for a PR OUT.
        let pr = self.lun.reservations.snapshot();
        let (generation, registrations) = (pr.generation, pr.registrations);
        let reservation = pr.reservation.as_ref().map(|r| {
            let holder = match &r.holder {
                Holder::Initiator(h) => h.as_str(),
                Holder::AllRegistrants => "all_registrants",
            };
            (holder, r.res_type.code().to_string())
        });
        gauge(
            enc,
            "pr_generation",
            "PRgeneration of the logical unit",
            &[([], f64::from(generation))],
        )?;
        gauge(
            enc,
            "pr_registrations",
            "Registered reservation keys",
            &[([], registrations as f64)],
        )?;
        if let Some(c) = self.lun.reservations.cluster_view() {
            gauge(
                enc,
                "cluster_epoch",
                "Cluster mode: the epoch of the shared reservation state this daemon holds",
                &[([], c.epoch as f64)],
            )?;
            gauge(
                enc,
                "cluster_settled_epoch",
                "Cluster mode: the highest epoch known settled; PR IN answers BUSY while \
                 cluster_epoch is above it",
                &[([], c.settled_epoch as f64)],
            )?;
            gauge(
                enc,
                "cluster_lease_valid",
                "Cluster mode: 1 while the read lease is valid and I/O is admitted, else 0",
                &[([], if c.lease_valid { 1.0 } else { 0.0 })],
            )?;
            gauge(
                enc,
                "cluster_lease_remaining_seconds",
                "Cluster mode: what is left of the read lease",
                &[([], c.lease_remaining.as_secs_f64())],
            )?;
            counter(
                enc,
                "cluster_io_overruns",
                "Cluster mode: admissions whose I/O ended after the read lease's end + max_io_ms",
                &[([], c.io_overruns)],
            )?;
            let fault = |kind: &'static str| {
                (
                    [("kind", kind)],
                    if c.fault == Some(kind) { 1.0 } else { 0.0 },
                )
            };
            gauge(
                enc,
                "cluster_fault",
                "Cluster mode: 1 while the daemon stopped admitting for this reason (regression: \
                 etcd holds an older state, run `ctl cluster republish`; replaced: another \
                 incarnation of this node took its membership, stop this daemon; io_overrun: an \
                 admitted I/O outlived its bound, `ctl cluster resume` or a restart clears it)",
                &[fault("regression"), fault("replaced"), fault("io_overrun")],
            )?;
        }
        let mut m = enc.encode_descriptor(
            "pr_reservation",
            "The persistent reservation, while there is one: its holder and type code",
            None,
            MetricType::Info,
        )?;
        if let Some((holder, typ)) = reservation {
            m.encode_info(&[("holder", holder), ("type", typ.as_str())])?;
        }
        Ok(())
    }
}

/// Per guest and device (`blk`/`scsi`): the connection and the successful I/O.
fn encode_devices(enc: &mut DescriptorEncoder, guests: &Guests) -> std::fmt::Result {
    let per_device = |f: &dyn Fn(&stats::DeviceStats) -> u64| {
        let mut v = Vec::new();
        for (g, s) in guests {
            for p in Path::ALL {
                v.push(([("guest", g.as_str()), ("path", p.name())], f(s.device(p))));
            }
        }
        v
    };
    let connected = per_device(&|d| d.connected.load(Relaxed) as u64);
    let connected: Vec<_> = connected.into_iter().map(|(l, v)| (l, v as f64)).collect();
    gauge(
        enc,
        "guest_connected",
        "Whether the guest's frontend (QEMU) is connected to the device",
        &connected,
    )?;
    counter(
        enc,
        "connections",
        "vhost-user connections accepted (the first and every reconnect)",
        &per_device(&|d| d.connections.load(Relaxed)),
    )?;
    let ok = |op: Op| move |d: &stats::DeviceStats| d.op(op).ok.load(Relaxed);
    let bytes = |op: Op| move |d: &stats::DeviceStats| d.op(op).bytes.load(Relaxed);
    counter(
        enc,
        "reads_completed",
        "Reads completed successfully",
        &per_device(&ok(Op::Read)),
    )?;
    counter(
        enc,
        "writes_completed",
        "Writes completed successfully",
        &per_device(&ok(Op::Write)),
    )?;
    counter(
        enc,
        "read_bytes",
        "Bytes read by successful reads",
        &per_device(&bytes(Op::Read)),
    )?;
    counter(
        enc,
        "written_bytes",
        "Bytes written by successful writes",
        &per_device(&bytes(Op::Write)),
    )?;
    counter(
        enc,
        "flushes_completed",
        "Flushes (FLUSH, SYNCHRONIZE CACHE) completed successfully",
        &per_device(&ok(Op::Flush)),
    )?;
    counter(
        enc,
        "discards_completed",
        "DISCARD, WRITE ZEROES, UNMAP and WRITE SAME completed successfully",
        &per_device(&ok(Op::Discard)),
    )
}

/// Per guest, device and op: failures, conflicts and the latency histogram.
fn encode_ops(enc: &mut DescriptorEncoder, guests: &Guests) -> std::fmt::Result {
    let per_op = |f: &dyn Fn(&stats::OpStats) -> u64| {
        let mut v = Vec::new();
        for (g, s) in guests {
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
        enc,
        "io_errors",
        "Requests that failed for a reason other than a reservation conflict",
        &per_op(&|o| o.errors.load(Relaxed)),
    )?;
    counter(
        enc,
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
        for (g, s) in guests {
            for p in Path::ALL {
                for op in Op::ALL {
                    let (sum, count, cum) = s.device(p).op(op).latency.snapshot();
                    let buckets = bucket_counts(&cum);
                    let labels = [("guest", g.as_str()), ("path", p.name()), ("op", op.name())];
                    m.encode_family(&labels)?
                        .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
                }
            }
        }
    }
    Ok(())
}

/// The `(upper bound, count)` pairs `encode_histogram` wants from the cumulative counts of a
/// [`stats::Histogram::snapshot`]: the encoder sums them itself into the `le` buckets, so each
/// pair carries only its own bucket's count (given cumulative counts, the encoder would count
/// every request once per bucket at or above its own, the +Inf bucket far above `_count`).
fn bucket_counts(cumulative: &[u64; 15]) -> Vec<(f64, u64)> {
    let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
    let mut below = 0;
    bounds
        .zip(cumulative)
        .map(|(bound, &cum)| {
            let own = cum.saturating_sub(below);
            below = cum;
            (bound, own)
        })
        .collect()
}

/// Per guest: PERSISTENT RESERVE OUT commands by service action and result.
fn encode_pr_out(enc: &mut DescriptorEncoder, guests: &Guests) -> std::fmt::Result {
    let mut pr = Vec::new();
    for (g, s) in guests {
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
        enc,
        "pr_out_commands",
        "PERSISTENT RESERVE OUT commands by service action and result",
        &pr,
    )
}
