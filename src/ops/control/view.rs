//! The JSON objects the control socket answers with (schema 1), built from the daemon's state.
//! `sharedisk ctl --json` prints them as they are; the text output is rendered from them.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::lun::Lun;
use crate::ops::stats::{self, Op, Path, Stats, PR_ACTIONS};
use crate::pr::{wire, Holder, PrState, ResType};

/// The version of every object's layout; fields are only ever added within one version.
pub const SCHEMA: u32 = 1;

pub fn key_hex(key: u64) -> String {
    format!("{key:#x}")
}

pub fn type_name(t: ResType) -> &'static str {
    match t {
        ResType::WriteExclusive => "Write Exclusive",
        ResType::ExclusiveAccess => "Exclusive Access",
        ResType::WriteExclusiveRegistrantsOnly => "Write Exclusive, registrants only",
        ResType::ExclusiveAccessRegistrantsOnly => "Exclusive Access, registrants only",
        ResType::WriteExclusiveAllRegistrants => "Write Exclusive, all registrants",
        ResType::ExclusiveAccessAllRegistrants => "Exclusive Access, all registrants",
    }
}

pub fn status(config: &Config, lun: &Lun, uptime: Duration) -> Value {
    json!({
        "schema": SCHEMA,
        "image": config.image,
        "size_bytes": lun.image.size(),
        "block_size": crate::lun::SECTOR,
        "serial": lun.serial,
        "read_only": config.read_only,
        "state_file": config.state_path(),
        "max_shares": config.max_shares,
        "guests": config.guests.len(),
        "uptime_seconds": uptime.as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn guests(config: &Config, stats: &Stats) -> Value {
    let list: Vec<Value> = config
        .guests
        .iter()
        .map(|g| {
            let s = stats.guest(&g.name);
            let device = |d: &stats::DeviceStats| {
                let connections = d.connections.load(std::sync::atomic::Ordering::Relaxed);
                json!({
                    "connected": d.connected.load(std::sync::atomic::Ordering::Relaxed),
                    "connections": connections,
                    "reconnects": connections.saturating_sub(1),
                })
            };
            json!({
                "name": g.name,
                "read_only": g.read_only || config.read_only,
                "queues": g.queues,
                "initiator": format!("{}{}", wire::IQN_PREFIX, g.name),
                "transport_id": hex(&wire::transport_id(&g.name)),
                "blk": device(&s.blk),
                "scsi": if config.scsi && g.scsi { device(&s.scsi) } else { Value::Null },
            })
        })
        .collect();
    json!({ "schema": SCHEMA, "guests": list })
}

/// The live iSCSI sessions: nexus, initiator, ISID, TSIH, portal and peer, since (Unix
/// seconds), digests and counters.
pub fn iscsi_sessions(sessions: &[std::sync::Arc<crate::transport::iscsi::SessionInfo>]) -> Value {
    use std::sync::atomic::Ordering::Relaxed;
    let list: Vec<Value> = sessions
        .iter()
        .map(|s| {
            let c = &s.counters;
            let since = s
                .since
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let digest = |on: bool| if on { "CRC32C" } else { "None" };
            json!({
                "nexus": s.nexus,
                "initiator": s.initiator,
                "isid": hex(&s.isid),
                "tsih": s.tsih,
                "portal": s.local,
                "peer": s.peer,
                "since": since,
                "header_digest": digest(s.header_digest),
                "data_digest": digest(s.data_digest),
                "auth": s.auth,
                "commands": c.commands.load(Relaxed),
                "commands_inline": c.inline.load(Relaxed),
                "bytes_in": c.bytes_in.load(Relaxed),
                "bytes_out": c.bytes_out.load(Relaxed),
                "pdu_errors": c.pdu_errors.load(Relaxed),
            })
        })
        .collect();
    json!({ "schema": SCHEMA, "sessions": list })
}

/// The PR state, with the facts `sg_persist -i -s` shows (READ FULL STATUS) and guest names.
pub fn pr(state: &PrState) -> Value {
    let holder_of = |initiator: &str| match &state.reservation {
        Some(r) => match &r.holder {
            Holder::Initiator(h) => h == initiator,
            Holder::AllRegistrants => true,
        },
        None => false,
    };
    let reservation = state.reservation.as_ref().map(|r| {
        let (holder, key) = match &r.holder {
            Holder::Initiator(h) => (
                json!(h),
                state
                    .registrations
                    .iter()
                    .find(|x| &x.initiator == h)
                    .map(|x| json!(key_hex(x.key)))
                    .unwrap_or(Value::Null),
            ),
            Holder::AllRegistrants => (json!("all registrants"), json!(key_hex(0))),
        };
        json!({
            "holder": holder,
            "key": key,
            "type": r.res_type.code(),
            "type_name": type_name(r.res_type),
            "scope": "LU",
        })
    });
    let regs: Vec<Value> = state
        .registrations
        .iter()
        .map(|r| {
            json!({
                "guest": r.initiator,
                "key": key_hex(r.key),
                "holder": holder_of(&r.initiator),
                "transport_id": hex(&wire::transport_id(&r.initiator)),
            })
        })
        .collect();
    json!({
        "schema": SCHEMA,
        "generation": state.generation,
        "aptpl": state.aptpl,
        "reservation": reservation,
        "registrations": regs,
    })
}

pub fn stats(config: &Config, stats: &Stats) -> Value {
    let mut names: Vec<String> = config.guest_names();
    for (g, _) in stats.all() {
        if !names.contains(&g) {
            names.push(g);
        }
    }
    let list: Vec<Value> = names
        .iter()
        .map(|name| {
            let s = stats.guest(name);
            let devices: Vec<Value> = Path::ALL
                .iter()
                .map(|&p| {
                    let d = s.device(p);
                    let ops: Vec<Value> = Op::ALL
                        .iter()
                        .map(|&op| {
                            let o = d.op(op);
                            let snap = o.get();
                            json!({
                                "op": op.name(),
                                "ok": snap.ok,
                                "bytes": snap.bytes,
                                "conflicts": snap.conflicts,
                                "errors": snap.errors,
                                "latency_p50_seconds": quantile(&o.latency, 0.5),
                                "latency_p99_seconds": quantile(&o.latency, 0.99),
                            })
                        })
                        .collect();
                    json!({ "path": p.name(), "ops": ops })
                })
                .collect();
            let pr_out: Vec<Value> = PR_ACTIONS
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    json!({
                        "action": a,
                        "ok": s.scsi.prout_count(i, stats::Result::Ok),
                        "conflict": s.scsi.prout_count(i, stats::Result::Conflict),
                        "error": s.scsi.prout_count(i, stats::Result::Error),
                    })
                })
                .collect();
            json!({ "name": name, "devices": devices, "pr_out": pr_out })
        })
        .collect();
    json!({ "schema": SCHEMA, "guests": list })
}

/// A latency quantile in seconds (the upper bound of its bucket); `"+Inf"` beyond the last
/// bucket, `null` with no requests.
fn quantile(h: &stats::Histogram, q: f64) -> Value {
    match h.quantile(q) {
        Some(x) if x.is_finite() => json!(x),
        Some(_) => json!("+Inf"),
        None => Value::Null,
    }
}
