//! The control socket: newline-delimited JSON requests, one thread per client.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use serde_json::{json, Value};

use super::{code, view, Daemon};
use crate::config::{valid_guest_name, ConfigError, GuestConfig, DEFAULT_QUEUES, MAX_GUEST_QUEUES};
use crate::pr::fencing::OperatorAction;
use crate::pr::PrStatus;

/// Longest request line; anything longer is refused.
const MAX_LINE: u64 = 64 << 10;
/// Clients served at once; more wait in the listen backlog.
const MAX_CLIENTS: usize = 16;

/// A listening control socket. Dropping it stops the listener (and removes the socket).
pub struct ControlServer {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// An error answer: a code from [`code`] and a message for people.
#[derive(Debug)]
pub struct Failure {
    pub code: i64,
    pub message: String,
}

fn fail(code: i64, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

impl ControlServer {
    /// Listens on `path`, mode 0600, or 0660 owned by `group` when one is given.
    pub fn start(path: &Path, group: Option<&str>, daemon: Arc<dyn Daemon>) -> io::Result<Self> {
        if UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!(
                    "control socket {}: another process is listening on it",
                    path.display()
                ),
            ));
        }
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            crate::daemon::sockets::create_dir(dir)?;
        }
        let listener = UnixListener::bind(path).map_err(|e| {
            io::Error::new(e.kind(), format!("control socket {}: {e}", path.display()))
        })?;
        // The accept loop starts only after the mode (and group) are set. Until then the socket
        // has the umask's mode; keep its directory closed to strangers for that reason too.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        if let Some(g) = group {
            crate::daemon::sockets::restrict(path, Some(g), Some(0o660))?;
        }
        log::info!("control socket {}", path.display());
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(listener, &stop2, daemon))?;
        Ok(ControlServer {
            path: path.to_path_buf(),
            stop,
            thread: Some(thread),
        })
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(listener: UnixListener, stop: &AtomicBool, daemon: Arc<dyn Daemon>) {
    let clients = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                log::warn!("control: accept: {e}");
                continue;
            }
        };
        if clients.load(Ordering::SeqCst) >= MAX_CLIENTS {
            let _ = reply(
                &conn,
                &Value::Null,
                Err(fail(code::FAILED, "too many control clients; try again")),
            );
            continue;
        }
        clients.fetch_add(1, Ordering::SeqCst);
        let daemon = daemon.clone();
        let clients2 = clients.clone();
        let spawned = thread::Builder::new()
            .name("control-client".into())
            .spawn(move || {
                serve_client(conn, &*daemon);
                clients2.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            clients.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Answers every line of one client until it hangs up (or stays silent for 10 minutes).
fn serve_client(conn: UnixStream, daemon: &dyn Daemon) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(600)));
    let peer = peer_uid(&conn);
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    loop {
        let mut line = String::new();
        match (&mut reader).take(MAX_LINE).read_line(&mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with('\n') && line.len() as u64 >= MAX_LINE {
            let _ = reply(
                &conn,
                &Value::Null,
                Err(fail(code::INVALID_REQUEST, "request line too long")),
            );
            return;
        }
        if line.trim().is_empty() {
            continue;
        }
        let (id, result) = match serde_json::from_str::<Value>(&line) {
            Err(e) => (
                Value::Null,
                Err(fail(code::PARSE_ERROR, format!("not JSON: {e}"))),
            ),
            Ok(req) => {
                let id = req.get("id").cloned().unwrap_or(Value::Null);
                (id, handle(&req, daemon, peer))
            }
        };
        if reply(&conn, &id, result).is_err() {
            return;
        }
    }
}

fn peer_uid(conn: &UnixStream) -> Option<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a ucred of the length we pass, in a local we own.
    let r = unsafe {
        libc::getsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(cred.uid)
}

fn reply(mut conn: &UnixStream, id: &Value, result: Result<Value, Failure>) -> io::Result<()> {
    let msg = match result {
        Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
        Err(f) => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": { "code": f.code, "message": f.message },
        }),
    };
    let mut line = serde_json::to_vec(&msg).map_err(io::Error::other)?;
    line.push(b'\n');
    conn.write_all(&line)
}

fn param<'a>(req: &'a Value, name: &str) -> Option<&'a Value> {
    req.get("params").and_then(|p| p.get(name))
}

fn bool_param(req: &Value, name: &str) -> Result<bool, Failure> {
    match param(req, name) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(fail(
            code::INVALID_PARAMS,
            format!("`{name}` must be true or false"),
        )),
    }
}

fn str_param<'a>(req: &'a Value, name: &str) -> Result<&'a str, Failure> {
    param(req, name).and_then(Value::as_str).ok_or_else(|| {
        fail(
            code::INVALID_PARAMS,
            format!("`{name}` (a string) is required"),
        )
    })
}

/// Changes need `"confirm": true`: the wire is as careful as `ctl ... --yes`.
fn confirmed(req: &Value) -> Result<(), Failure> {
    if bool_param(req, "confirm")? {
        Ok(())
    } else {
        Err(fail(
            code::INVALID_PARAMS,
            "this changes the reservation state of every guest: confirm with \"confirm\": true \
             (ctl: --yes)",
        ))
    }
}

/// Executes one request.
pub fn handle(req: &Value, daemon: &dyn Daemon, peer: Option<u32>) -> Result<Value, Failure> {
    let method = req
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(code::INVALID_REQUEST, "a request needs a \"method\" string"))?;
    let lun = daemon.lun();
    let res = &lun.reservations;
    match method {
        "version" => Ok(json!({ "schema": view::SCHEMA, "version": env!("CARGO_PKG_VERSION") })),
        "status" => Ok(view::status(&daemon.config(), &lun, daemon.uptime())),
        "guests" => Ok(view::guests(&daemon.config(), &daemon.stats())),
        "pr.show" => pr_show(res),
        "cluster.status" => daemon.cluster_status().ok_or_else(|| {
            fail(
                code::FAILED,
                "this daemon is not in a cluster (no [cluster] section)".to_string(),
            )
        }),
        "cluster.republish" | "cluster.evict" => {
            confirmed(req)?;
            let op = if method == "cluster.republish" {
                crate::pr::backend::ClusterOp::Republish
            } else {
                crate::pr::backend::ClusterOp::Evict(str_param(req, "node")?.to_string())
            };
            match res.cluster_operate(&op) {
                None => Err(fail(
                    code::FAILED,
                    "this daemon is not in a cluster (no [cluster] section)".to_string(),
                )),
                Some(r) => r.map_err(|e| fail(code::FAILED, e)),
            }
        }
        "cluster.resume" => res
            .cluster_resume()
            .map(|()| json!({ "resumed": true }))
            .map_err(|why| fail(code::FAILED, why)),
        "stats" => Ok(view::stats(&daemon.config(), &daemon.stats())),
        "metrics" => Ok(json!({ "schema": view::SCHEMA, "text": daemon.metrics() })),
        "pr.clear" => {
            confirmed(req)?;
            operator_action(daemon, &OperatorAction::Clear, peer)
        }
        "pr.preempt" => {
            confirmed(req)?;
            let victim = str_param(req, "victim")?.to_string();
            let abort = bool_param(req, "abort")?;
            let by = match param(req, "by") {
                None | Some(Value::Null) => None,
                Some(_) => Some(str_param(req, "by")?.to_string()),
            };
            for guest in std::iter::once(&victim).chain(&by) {
                if !daemon.config().guests.iter().any(|g| &g.name == guest)
                    && !res.with(|a| a.is_registered(guest))
                {
                    return Err(fail(code::FAILED, format!("no guest named {guest:?}")));
                }
            }
            let preempt = OperatorAction::Preempt { victim, abort, by };
            operator_action(daemon, &preempt, peer)
        }
        "guest.add" => guest_add(req, daemon, peer),
        "guest.remove" => guest_remove(req, daemon, peer),
        other => Err(fail(
            code::METHOD_NOT_FOUND,
            format!("unknown method {other:?}"),
        )),
    }
}

/// `pr.show`: the state held. Cluster mode: only a settled one (as PR IN), with `"settled": true`;
/// a held epoch above the settled marker is an error, not a state to act on.
fn pr_show(res: &crate::pr::fencing::Reservations) -> Result<Value, Failure> {
    let Some(view) = res.cluster_view() else {
        return Ok(res.with(|a| view::pr(a.state())));
    };
    if view.epoch > view.settled_epoch {
        return Err(fail(
            code::FAILED,
            format!(
                "shared state {} is committed, not settled yet (settled: {}): a member has not \
                 acknowledged it and its lease may not have run out, or the fence hook is failing; \
                 see `sharedisk ctl cluster status` and try again",
                view.epoch, view.settled_epoch
            ),
        ));
    }
    // Checked again under the lock the state is read with: a change applied since is not shown.
    let Some(mut shown) = res.with_settled(|a| view::pr(a.state())) else {
        return Err(fail(
            code::FAILED,
            "a newer shared state was applied while this ran and is not settled yet: try again"
                .to_string(),
        ));
    };
    shown["settled"] = Value::Bool(true);
    Ok(shown)
}

/// `guest.add`: serves a new guest; answers the guests.
fn guest_add(req: &Value, daemon: &dyn Daemon, peer: Option<u32>) -> Result<Value, Failure> {
    let name = str_param(req, "name")?;
    if !valid_guest_name(name) {
        return Err(fail(
            code::INVALID_PARAMS,
            ConfigError::BadName(name.to_string()).to_string(),
        ));
    }
    let queues = match param(req, "queues") {
        None | Some(Value::Null) => DEFAULT_QUEUES,
        Some(v) => v
            .as_u64()
            .filter(|q| (1..=u64::from(MAX_GUEST_QUEUES)).contains(q))
            .ok_or_else(|| {
                fail(
                    code::INVALID_PARAMS,
                    format!("`queues` must be 1 to {MAX_GUEST_QUEUES}"),
                )
            })? as u16,
    };
    let guest = GuestConfig {
        name: name.to_string(),
        read_only: bool_param(req, "read_only")?,
        queues,
        scsi: match param(req, "scsi") {
            None | Some(Value::Null) => true,
            Some(_) => bool_param(req, "scsi")?,
        },
    };
    daemon
        .add_guest(guest)
        .map_err(|e| fail(code::FAILED, e.to_string()))?;
    log::warn!("host action{}: guest {name} added", by(peer));
    Ok(view::guests(&daemon.config(), &daemon.stats()))
}

/// `guest.remove`: stops serving a guest; answers the guests.
fn guest_remove(req: &Value, daemon: &dyn Daemon, peer: Option<u32>) -> Result<Value, Failure> {
    let name = str_param(req, "name")?;
    let force = bool_param(req, "force")?;
    daemon
        .remove_guest(name, force)
        .map_err(|e| fail(code::FAILED, e.to_string()))?;
    log::warn!("host action{}: guest {name} removed", by(peer));
    Ok(view::guests(&daemon.config(), &daemon.stats()))
}

fn by(peer: Option<u32>) -> String {
    peer.map(|uid| format!(" (uid {uid})")).unwrap_or_default()
}

fn operator_action(
    daemon: &dyn Daemon,
    action: &OperatorAction,
    peer: Option<u32>,
) -> Result<Value, Failure> {
    let lun = daemon.lun();
    let res = &lun.reservations;
    log::warn!("host action{}: {action}", by(peer));
    let status = res.operator(action).map_err(|why| {
        log::warn!("host action{}: {action} refused: {why}", by(peer));
        fail(code::RESERVATION_CONFLICT, format!("refused: {why}"))
    })?;
    match status {
        PrStatus::Good => Ok(res.with(|a| view::pr(a.state()))),
        PrStatus::Conflict => Err(fail(
            code::RESERVATION_CONFLICT,
            "reservation conflict".to_string(),
        )),
        PrStatus::Busy => Err(fail(
            code::FAILED,
            "busy: the shared state (etcd) cannot be reached or the change could not be settled \
             in time; see the daemon's log"
                .to_string(),
        )),
        PrStatus::CheckCondition(s) => Err(fail(
            code::FAILED,
            format!(
                "the change could not be made durable and was not made (sense {:02x}/{:02x}/{:02x}); see the daemon's log",
                s.key, s.asc, s.ascq
            ),
        )),
    }
}
