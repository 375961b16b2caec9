//! The control protocol: request lines, any bytes, through `ops::control::server::answer` (what
//! the control socket does with each line) against a stub daemon over an in-memory LUN.
//!
//! Input: the first byte picks the starting PR state (`preset_state`); the rest is split at
//! `\n` into request lines, each line's first byte picking its caller's role (0: not in either
//! group, 1: the read group, else an admin) and the rest being the line as the socket carries it.
//!
//! Checks: no panic; every answer is a JSON-RPC 2.0 response carrying the request's id (or null)
//! and exactly one of `result` and `error`; a caller outside both groups never gets a result; a
//! read-group member never gets one from a changing method; a refused call (code 13) changes
//! neither the PR state nor the guests.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sharedisk::config::{Config, GuestConfig};
use sharedisk::lun::Lun;
use sharedisk::ops::control::access::{Method, Role};
use sharedisk::ops::control::server::{answer, Caller};
use sharedisk::ops::control::{code, Daemon, GuestError};
use sharedisk::ops::stats::Stats;

use super::{lun, preset_state, MemImage, KNOWN};

/// A daemon with nothing behind it but the LUN and a guest list.
struct Stub {
    lun: Arc<Lun>,
    stats: Arc<Stats>,
    guests: Mutex<Vec<GuestConfig>>,
}

impl Daemon for Stub {
    fn config(&self) -> Config {
        let mut c = Config::new("/fuzz/disk.img", "/fuzz/sock", &KNOWN);
        c.guests = self.guests.lock().unwrap().clone();
        c
    }
    fn lun(&self) -> Arc<Lun> {
        self.lun.clone()
    }
    fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }
    fn metrics(&self) -> String {
        "# fuzz\n".into()
    }
    fn uptime(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn cluster_status(&self) -> Option<Value> {
        None
    }
    fn add_guest(&self, guest: GuestConfig) -> Result<(), GuestError> {
        let mut guests = self.guests.lock().unwrap();
        if guests.iter().any(|g| g.name == guest.name) {
            return Err(GuestError::Exists(guest.name));
        }
        if guests.len() >= 16 {
            return Err(GuestError::Full(16));
        }
        guests.push(guest);
        Ok(())
    }
    fn remove_guest(&self, name: &str, _force: bool) -> Result<(), GuestError> {
        let mut guests = self.guests.lock().unwrap();
        let before = guests.len();
        guests.retain(|g| g.name != name);
        if guests.len() == before {
            return Err(GuestError::Unknown(name.into()));
        }
        Ok(())
    }
}

/// What a refused call must leave as it was.
fn snapshot(d: &Stub) -> (String, Vec<String>) {
    let pr = d.lun.reservations.with(|a| format!("{:?}", a.state()));
    let guests = d
        .guests
        .lock()
        .unwrap()
        .iter()
        .map(|g| g.name.clone())
        .collect();
    (pr, guests)
}

/// One fuzz input; panics on a finding.
pub fn run(data: &[u8]) {
    let Some((&preset, lines)) = data.split_first() else {
        return;
    };
    let image = Arc::new(MemImage::new(1 << 20, false));
    let d = Stub {
        lun: lun(image, preset_state(preset)),
        stats: Arc::new(Stats::default()),
        guests: Mutex::new(KNOWN.iter().map(|g| GuestConfig::new(g)).collect()),
    };
    for line in lines.split(|&b| b == b'\n').take(64) {
        let Some((&who, request)) = line.split_first() else {
            continue;
        };
        let role = match who {
            0 => Role::Stranger,
            1 => Role::Reader,
            _ => Role::Admin,
        };
        let caller = Caller {
            uid: 1000,
            pid: 1,
            role,
        };
        let before = snapshot(&d);
        let reply = answer(request, &d, caller);
        if super::tracing() {
            eprintln!("{role:?} {:?} -> {reply}", String::from_utf8_lossy(request));
        }
        check(request, role, &reply);
        if reply["error"]["code"] == code::NOT_PERMITTED {
            assert_eq!(before, snapshot(&d), "a refused call changed something");
        }
    }
}

fn check(request: &[u8], role: Role, reply: &Value) {
    assert_eq!(reply["jsonrpc"], "2.0", "{reply}");
    let has_result = reply.get("result").is_some();
    let has_error = reply.get("error").is_some();
    assert!(has_result != has_error, "{reply}");
    let req: Option<Value> = serde_json::from_slice(request).ok();
    let id = req
        .as_ref()
        .and_then(|r| r.get("id").cloned())
        .unwrap_or(Value::Null);
    assert_eq!(reply["id"], id, "{reply}");
    if !has_result {
        return;
    }
    assert!(role != Role::Stranger, "a stranger got a result: {reply}");
    let method = req
        .as_ref()
        .and_then(|r| r.get("method"))
        .and_then(Value::as_str)
        .and_then(Method::from_name);
    let method = method.expect("a result for a method outside the table");
    assert!(
        role.may(method.need()),
        "{role:?} got a result from {method:?} ({:?}): {reply}",
        method.need()
    );
}
