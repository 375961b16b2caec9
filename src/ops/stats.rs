//! I/O and PR counters, per guest and device, kept by the devices and read by the control socket
//! and the metrics.
//!
//! The data path only does relaxed atomic adds on counters that belong to one guest's device
//! (shared by that device's queue threads): no lock, no allocation, no lookup per request. The
//! table of guests is locked only when a connection starts and when someone reads it.

use crate::util::lock::{read, write};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// The two devices of a guest (the `path` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    Blk,
    Scsi,
}

impl Path {
    pub const ALL: [Path; 2] = [Path::Blk, Path::Scsi];
    pub fn name(self) -> &'static str {
        match self {
            Path::Blk => "blk",
            Path::Scsi => "scsi",
        }
    }
}

/// What a request did to the medium (the `op` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    /// DISCARD, WRITE ZEROES, UNMAP, WRITE SAME.
    Discard,
    /// Everything else: identification, INQUIRY, MODE SENSE, PR IN/OUT, ...
    Other,
}

impl Op {
    pub const ALL: [Op; 5] = [Op::Read, Op::Write, Op::Flush, Op::Discard, Op::Other];
    pub fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::Other => "other",
        }
    }
}

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Result {
    Ok,
    /// Refused by the reservation (RESERVATION CONFLICT, or IOERR on blk): fenced.
    Conflict,
    Error,
}

impl Result {
    pub const ALL: [Result; 3] = [Result::Ok, Result::Conflict, Result::Error];
    pub fn name(self) -> &'static str {
        match self {
            Result::Ok => "ok",
            Result::Conflict => "conflict",
            Result::Error => "error",
        }
    }
}

/// Upper bounds of the latency buckets, in seconds (the last bucket is +Inf).
pub const LATENCY_BUCKETS: [f64; 14] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0,
    5.0,
];
const BUCKET_NS: [u64; 14] = [
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    1_000_000_000,
    5_000_000_000,
];

/// A latency histogram of atomics; each bucket counts its own range (made cumulative when read).
#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [AtomicU64; 15],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ns = d.as_nanos().min(u128::from(u64::MAX)) as u64;
        let i = BUCKET_NS.iter().position(|&b| ns <= b).unwrap_or(14);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_ns.fetch_add(ns, Relaxed);
    }

    /// (sum in seconds, count, cumulative buckets per [`LATENCY_BUCKETS`] and +Inf).
    pub fn snapshot(&self) -> (f64, u64, [u64; 15]) {
        let mut cum = [0u64; 15];
        let mut total = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            total += b.load(Relaxed);
            cum[i] = total;
        }
        (self.sum_ns.load(Relaxed) as f64 / 1e9, total, cum)
    }

    /// The latency below which `q` (0..1) of the requests completed: the bucket's upper bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let (_, count, cum) = self.snapshot();
        if count == 0 {
            return None;
        }
        let want = (q * count as f64).ceil().max(1.0) as u64;
        let i = cum.iter().position(|&c| c >= want)?;
        Some(LATENCY_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY))
    }
}

/// The counters of one op on one device.
#[derive(Default, Debug)]
pub struct OpStats {
    /// Requests that completed successfully.
    pub ok: AtomicU64,
    /// Bytes transferred by the successful ones.
    pub bytes: AtomicU64,
    pub conflicts: AtomicU64,
    pub errors: AtomicU64,
    pub latency: Histogram,
}

impl OpStats {
    pub fn get(&self) -> OpSnapshot {
        OpSnapshot {
            ok: self.ok.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            conflicts: self.conflicts.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpSnapshot {
    pub ok: u64,
    pub bytes: u64,
    pub conflicts: u64,
    pub errors: u64,
}

/// PR OUT service actions by their code (SPC-4 §6.16.2), as metric label values.
pub const PR_ACTIONS: [&str; 8] = [
    "register",
    "reserve",
    "release",
    "clear",
    "preempt",
    "preempt_and_abort",
    "register_and_ignore",
    "register_and_move",
];

/// One guest's device: connection state and per-op counters.
#[derive(Default, Debug)]
pub struct DeviceStats {
    pub connected: AtomicBool,
    /// Connections accepted since the daemon started (the first one, then reconnects).
    pub connections: AtomicU64,
    ops: [OpStats; 5],
    /// PR OUT by service action and result (scsi only).
    pr: [[AtomicU64; 3]; 8],
}

impl DeviceStats {
    pub fn op(&self, op: Op) -> &OpStats {
        &self.ops[op as usize]
    }

    /// Counts one completed request.
    #[inline]
    pub fn record(&self, op: Op, result: Result, bytes: u64, took: Duration) {
        let s = &self.ops[op as usize];
        match result {
            Result::Ok => {
                s.ok.fetch_add(1, Relaxed);
                if bytes != 0 {
                    s.bytes.fetch_add(bytes, Relaxed);
                }
            }
            Result::Conflict => {
                s.conflicts.fetch_add(1, Relaxed);
            }
            Result::Error => {
                s.errors.fetch_add(1, Relaxed);
            }
        }
        s.latency.observe(took);
    }

    /// Counts one PR OUT with service action `action` (its code; others are ignored).
    pub fn record_prout(&self, action: u8, result: Result) {
        if let Some(a) = self.pr.get(usize::from(action)) {
            a[result as usize].fetch_add(1, Relaxed);
        }
    }

    pub fn prout_count(&self, action: usize, result: Result) -> u64 {
        self.pr[action][result as usize].load(Relaxed)
    }
}

/// A guest's two devices.
#[derive(Default, Debug)]
pub struct GuestStats {
    pub blk: Arc<DeviceStats>,
    pub scsi: Arc<DeviceStats>,
}

impl GuestStats {
    pub fn device(&self, path: Path) -> &Arc<DeviceStats> {
        match path {
            Path::Blk => &self.blk,
            Path::Scsi => &self.scsi,
        }
    }
}

/// Every guest's counters. A guest removed at run time keeps its counters until the daemon
/// stops, so that counters never go backwards while it is gone and back.
#[derive(Default, Debug)]
pub struct Stats {
    guests: RwLock<BTreeMap<String, Arc<GuestStats>>>,
}

impl Stats {
    /// The counters of `guest`, created on first use.
    pub fn guest(&self, guest: &str) -> Arc<GuestStats> {
        if let Some(g) = self.read().get(guest) {
            return g.clone();
        }
        let mut w = write(&self.guests);
        w.entry(guest.to_string()).or_default().clone()
    }

    pub fn all(&self) -> Vec<(String, Arc<GuestStats>)> {
        self.read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<GuestStats>>> {
        read(&self.guests)
    }
}

/// The op of a SCSI command, and for a WRITE the bytes its CDB transfers.
pub fn scsi_op(cdb: &[u8]) -> (Op, u64) {
    use crate::scsi::cdb::op;
    let be = |r: std::ops::Range<usize>| {
        cdb.get(r)
            .map_or(0, |b| b.iter().fold(0u64, |v, &x| (v << 8) | u64::from(x)))
    };
    match cdb.first().copied().unwrap_or(0xff) {
        op::READ_6 | op::READ_10 | op::READ_12 | op::READ_16 => (Op::Read, 0),
        op::WRITE_6 => (
            Op::Write,
            if be(4..5) == 0 { 256 } else { be(4..5) } * crate::lun::SECTOR,
        ),
        op::WRITE_10 => (Op::Write, be(7..9) * crate::lun::SECTOR),
        op::WRITE_12 => (Op::Write, be(6..10) * crate::lun::SECTOR),
        op::WRITE_16 => (Op::Write, be(10..14) * crate::lun::SECTOR),
        op::SYNCHRONIZE_CACHE_10 | op::SYNCHRONIZE_CACHE_16 => (Op::Flush, 0),
        op::UNMAP | op::WRITE_SAME_10 | op::WRITE_SAME_16 => (Op::Discard, 0),
        _ => (Op::Other, 0),
    }
}

#[cfg(test)]
mod tests;
