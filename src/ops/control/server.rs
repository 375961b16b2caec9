//! The control socket: newline-delimited JSON requests, one thread per client, a bounded number
//! of clients per role (see [`Slots`]) and the permission table of [`super::access`].

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::access::{Method, Need, Peer, Policy, Role};
use super::{code, view, Daemon};
use crate::config::{valid_guest_name, ConfigError, GuestConfig, DEFAULT_QUEUES, MAX_GUEST_QUEUES};
use crate::pr::fencing::OperatorAction;
use crate::pr::PrStatus;

/// Longest request line; a longer one gets an error answer and the connection is closed.
pub const MAX_LINE: usize = 64 << 10;
/// Connections per role. A full pool refuses a newcomer of its role, except the admin pool,
/// where the newcomer takes the slot of the admin connection idle the longest: so that root, the
/// daemon's user and the admin group always get in, whatever other users do.
const ADMIN_SLOTS: usize = 16;
const READER_SLOTS: usize = 16;
const STRANGER_SLOTS: usize = 4;
/// Connections one uid may hold in the reader and stranger pools.
const SLOTS_PER_UID: usize = 4;
/// How long a request line may take to arrive, from the connection or from the last answer.
const LINE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to read an answer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A listening control socket. Dropping it stops the listener (and removes the socket).
pub struct ControlServer {
    /// The write end of the pipe that wakes the accept loop to stop it.
    wake: Option<OwnedFd>,
    slots: Arc<Slots>,
    thread: Option<JoinHandle<()>>,
    /// The socket file, removed (if it is still ours) once the listener has stopped.
    file: Option<crate::daemon::sockets::SocketFile>,
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

/// Who sent a request: its uid and pid for the log, its role for the permission table.
#[derive(Clone, Copy, Debug)]
pub struct Caller {
    pub uid: u32,
    pub pid: i32,
    pub role: Role,
}

impl ControlServer {
    /// Listens on `path`, mode 0600, or 0660 owned by `group` when one is given. Who may call
    /// what follows the daemon's `control_group` and `admin_group`.
    pub fn start(path: &Path, group: Option<&str>, daemon: Arc<dyn Daemon>) -> io::Result<Self> {
        let policy = policy_of(&daemon.config())?;
        if let Some(dir) = path.parent() {
            crate::daemon::sockets::create_dir(dir)?;
        }
        // Bound with its mode (and group) in place before anyone can connect; a stale socket is
        // replaced, anything else at the path stops the start.
        let access = crate::daemon::sockets::Access {
            group,
            mode: Some(if group.is_some() { 0o660 } else { 0o600 }),
            world: false,
        };
        let (listener, file) = crate::daemon::sockets::bind(path, access).map_err(|e| {
            let e = io::Error::from(e);
            io::Error::new(e.kind(), format!("control socket: {e}"))
        })?;
        log::info!("control socket {}", path.display());
        listener.set_nonblocking(true)?;
        let (woken, wake) = wake_pipe()?;
        let slots = Arc::new(Slots::default());
        let slots2 = slots.clone();
        let thread = thread::Builder::new()
            .name("control".into())
            .spawn(move || accept_loop(&listener, &woken, &policy, &slots2, &daemon))?;
        Ok(ControlServer {
            wake: Some(wake),
            slots,
            thread: Some(thread),
            file: Some(file),
        })
    }

    /// Stops accepting (without connecting to the socket, which may be gone), closes every
    /// client connection and removes the socket.
    pub fn stop(&mut self) {
        if let Some(wake) = self.wake.take() {
            // Closing the write end wakes the poll with POLLHUP.
            drop(wake);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            self.slots.close_all();
            self.file = None;
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Who is who, from the configuration: the groups resolved to ids once, at start.
fn policy_of(config: &crate::config::Config) -> io::Result<Policy> {
    let gid = |key: &str, name: &Option<String>| -> io::Result<Option<u32>> {
        name.as_deref()
            .map(|n| {
                crate::daemon::sockets::gid_of(n).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("server.{key} {n:?}: {e}: name a group that exists"),
                    )
                })
            })
            .transpose()
    };
    Ok(Policy::new(
        gid("control_group", &config.control_group)?,
        gid("admin_group", &config.admin_group)?,
    ))
}

/// A pipe: the accept loop polls the read end; closing the write end stops it.
fn wake_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the array we pass.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Waits until the listener has a connection (true) or the wake pipe was closed (false).
fn wait_readable(listener: &UnixListener, woken: &OwnedFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: woken.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: `fds` is an array of two initialized pollfd we own, its length passed.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r >= 0 {
            return fds[1].revents == 0;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            // poll itself failing is not something a retry mends; do not spin on it.
            thread::sleep(Duration::from_millis(100));
        }
    }
}

fn accept_loop(
    listener: &UnixListener,
    woken: &OwnedFd,
    policy: &Policy,
    slots: &Arc<Slots>,
    daemon: &Arc<dyn Daemon>,
) {
    let refusals = Throttle::default();
    while wait_readable(listener, woken) {
        loop {
            let conn = match listener.accept() {
                Ok((c, _)) => c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log::warn!("control: accept: {e}");
                    // Out of descriptors: wait for clients to leave rather than spin.
                    thread::sleep(Duration::from_millis(100));
                    break;
                }
            };
            admit(conn, policy, slots, daemon, &refusals);
        }
    }
}

/// Gives a new connection a slot and a thread, or refuses it with an answer.
fn admit(
    conn: UnixStream,
    policy: &Policy,
    slots: &Arc<Slots>,
    daemon: &Arc<dyn Daemon>,
    refusals: &Throttle,
) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_write_timeout(Some(WRITE_TIMEOUT));
    let Ok(peer) = Peer::of(&conn) else {
        return;
    };
    let caller = Caller {
        uid: peer.uid,
        pid: peer.pid,
        role: policy.role(&peer),
    };
    let slot = match conn
        .try_clone()
        .map_err(|e| e.to_string())
        .and_then(|c| slots.take(&caller, c))
    {
        Ok(slot) => slot,
        Err(why) => {
            refusals.warn(|more| {
                format!(
                    "control: refused a connection of uid {} (pid {}): {why}{more}",
                    peer.uid, peer.pid
                )
            });
            let _ = reply(&conn, &Value::Null, Err(fail(code::FAILED, why)));
            return;
        }
    };
    let daemon = daemon.clone();
    let slots2 = slots.clone();
    let spawned = thread::Builder::new()
        .name("control-client".into())
        .spawn(move || {
            serve_client(&conn, &slot, &slots2, &*daemon, caller);
            slots2.release(&slot);
        });
    if let Err(e) = spawned {
        // The closure (and the connection) is gone with the error: free the slot here.
        slots.release(&slot);
        log::warn!("control: no thread for a client: {e}");
    }
}

/// One connection's place in its role's pool.
struct Slot {
    id: u64,
    uid: u32,
    role: Role,
    /// A clone of the connection, to shut it down from outside.
    conn: UnixStream,
    /// Since when no request has been running (`None`: one is).
    idle_since: Option<Instant>,
}

/// The connections being served.
#[derive(Default)]
pub(super) struct Slots {
    list: Mutex<Vec<Slot>>,
    next: AtomicU64,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `caller`, or why not.
    pub(super) fn take(&self, caller: &Caller, conn: UnixStream) -> Result<u64, String> {
        let mut list = self.lock();
        let (pool, size) = match caller.role {
            Role::Admin => ("admin", ADMIN_SLOTS),
            Role::Reader => ("read-group", READER_SLOTS),
            Role::Stranger => ("other users'", STRANGER_SLOTS),
        };
        let in_pool = list.iter().filter(|s| s.role == caller.role).count();
        if caller.role != Role::Admin {
            let mine = list.iter().filter(|s| s.uid == caller.uid).count();
            if mine >= SLOTS_PER_UID {
                return Err(format!(
                    "uid {} holds {mine} control connections already: close one and try again",
                    caller.uid
                ));
            }
        }
        if in_pool >= size {
            // Only an admin connection may take another's slot: the one idle the longest.
            let idlest = (caller.role == Role::Admin)
                .then(|| {
                    list.iter()
                        .enumerate()
                        .filter(|(_, s)| s.role == Role::Admin)
                        .filter_map(|(i, s)| s.idle_since.map(|t| (t, i)))
                        .min()
                })
                .flatten();
            let Some((_, i)) = idlest else {
                return Err(format!(
                    "all {size} {pool} control connections are in use: try again"
                ));
            };
            let old = list.swap_remove(i);
            let _ = old.conn.shutdown(Shutdown::Both);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        list.push(Slot {
            id,
            uid: caller.uid,
            role: caller.role,
            conn,
            idle_since: Some(Instant::now()),
        });
        Ok(id)
    }

    /// Marks the slot busy before a request runs; false if it was taken meanwhile (the
    /// connection is shut down then, and the request must not run).
    pub(super) fn begin(&self, id: u64) -> bool {
        let mut list = self.lock();
        match list.iter_mut().find(|s| s.id == id) {
            Some(s) => {
                s.idle_since = None;
                true
            }
            None => false,
        }
    }

    pub(super) fn end(&self, id: u64) {
        if let Some(s) = self.lock().iter_mut().find(|s| s.id == id) {
            s.idle_since = Some(Instant::now());
        }
    }

    fn release(&self, id: &u64) {
        self.lock().retain(|s| s.id != *id);
    }

    fn close_all(&self) {
        for s in self.lock().drain(..) {
            let _ = s.conn.shutdown(Shutdown::Both);
        }
    }
}

/// Logs a warning at most once a second, counting what it held back.
#[derive(Default)]
struct Throttle {
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttle {
    fn warn(&self, message: impl FnOnce(String) -> String) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if st
            .0
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            st.1 += 1;
            return;
        }
        let more = match st.1 {
            0 => String::new(),
            n => format!(" ({n} more refused in the last second, not logged)"),
        };
        *st = (Some(now), 0);
        log::warn!("{}", message(more));
    }
}

/// Why a request line could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum LineError {
    /// The client hung up (or was shut down).
    #[error("the client hung up")]
    Closed,
    /// No complete line within [`LINE_TIMEOUT`].
    #[error("no complete request within {LINE_TIMEOUT:?}")]
    Timeout,
    /// The line passed [`MAX_LINE`] bytes.
    #[error("request line longer than {MAX_LINE} bytes")]
    TooLong,
    /// The socket failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads one line (without its newline) into `line`, keeping what follows it in `pending`. A
/// last line without newline counts at end of file. Never holds more than [`MAX_LINE`] bytes.
pub(super) fn read_line(conn: &UnixStream, pending: &mut Vec<u8>) -> Result<Vec<u8>, LineError> {
    let deadline = Instant::now() + LINE_TIMEOUT;
    let mut searched = 0;
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(at) = pending[searched..].iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = pending.drain(..=searched + at).collect();
            line.pop();
            return Ok(line);
        }
        searched = pending.len();
        if pending.len() > MAX_LINE {
            return Err(LineError::TooLong);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LineError::Timeout);
        }
        conn.set_read_timeout(Some(left))?;
        let room = (MAX_LINE + 1 - pending.len()).min(chunk.len());
        match (&*conn).read(&mut chunk[..room]) {
            Ok(0) if pending.is_empty() => return Err(LineError::Closed),
            Ok(0) => return Ok(std::mem::take(pending)),
            Ok(n) => pending.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(LineError::Timeout)
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Answers every line of one client until it hangs up, stays silent for [`LINE_TIMEOUT`], sends
/// a line longer than [`MAX_LINE`], does not read its answers, or loses its slot.
fn serve_client(conn: &UnixStream, slot: &u64, slots: &Slots, daemon: &dyn Daemon, caller: Caller) {
    let mut pending = Vec::new();
    loop {
        let line = match read_line(conn, &mut pending) {
            Ok(line) => line,
            Err(LineError::TooLong) => {
                let _ = reply(
                    conn,
                    &Value::Null,
                    Err(fail(
                        code::INVALID_REQUEST,
                        format!("request line longer than {MAX_LINE} bytes: closing"),
                    )),
                );
                return;
            }
            Err(_) => return,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if !slots.begin(*slot) {
            return;
        }
        let answer = answer(&line, daemon, caller);
        let written = write_line(conn, &answer);
        slots.end(*slot);
        if written.is_err() {
            return;
        }
    }
}

/// The answer to one request line (without its newline), as the JSON-RPC response object.
pub fn answer(line: &[u8], daemon: &dyn Daemon, caller: Caller) -> Value {
    let (id, result) = match serde_json::from_slice::<Value>(line) {
        Err(e) => (
            Value::Null,
            Err(fail(
                code::PARSE_ERROR,
                format!("not JSON (one UTF-8 JSON object per line): {e}"),
            )),
        ),
        Ok(req) => {
            let id = req.get("id").cloned().unwrap_or(Value::Null);
            (id, handle(&req, daemon, caller))
        }
    };
    response(&id, result)
}

fn response(id: &Value, result: Result<Value, Failure>) -> Value {
    match result {
        Ok(r) => json!({ "jsonrpc": "2.0", "id": id, "result": r }),
        Err(f) => json!({
            "jsonrpc": "2.0",
            "id": id,
            "error": { "code": f.code, "message": f.message },
        }),
    }
}

fn reply(conn: &UnixStream, id: &Value, result: Result<Value, Failure>) -> io::Result<()> {
    write_line(conn, &response(id, result))
}

fn write_line(mut conn: &UnixStream, msg: &Value) -> io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(io::Error::other)?;
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
/// Executes one request of `caller`. A method runs only if [`Method`] lists it (its permission
/// table) and the caller's role may call it: a method missing from the table is unknown.
pub fn handle(req: &Value, daemon: &dyn Daemon, caller: Caller) -> Result<Value, Failure> {
    let method = req
        .get("method")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(code::INVALID_REQUEST, "a request needs a \"method\" string"))?;
    let Some(known) = Method::from_name(method) else {
        return Err(fail(
            code::METHOD_NOT_FOUND,
            format!("unknown method {method:?}"),
        ));
    };
    permitted(known, caller)?;
    let peer = Some(caller.uid);
    let lun = daemon.lun();
    let res = &lun.reservations;
    match method {
        "version" => Ok(json!({ "schema": view::SCHEMA, "version": env!("CARGO_PKG_VERSION") })),
        "status" => Ok(view::status(&daemon.config(), &lun, daemon.uptime())),
        "guests" => {
            let mut v = view::guests(&daemon.config(), &daemon.stats());
            if let Some(s) = daemon.iscsi_sessions() {
                v["iscsi_sessions"] = view::iscsi_sessions(&s)["sessions"].take();
            }
            Ok(v)
        }
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
        "iscsi.sessions" => daemon
            .iscsi_sessions()
            .map(|s| view::iscsi_sessions(&s))
            .ok_or_else(|| {
                fail(
                    code::FAILED,
                    "this daemon serves no iSCSI portal (no [iscsi] section)",
                )
            }),
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

/// Refuses (and logs) a call the caller's role may not make.
fn permitted(method: Method, caller: Caller) -> Result<(), Failure> {
    let need = method.need();
    if caller.role.may(need) {
        return Ok(());
    }
    let (what, who) = match need {
        Need::Change => (
            "changes the daemon",
            "root, the daemon's user or a member of admin_group",
        ),
        Need::Read => (
            "reads the daemon's state",
            "root, the daemon's user or a member of control_group or admin_group",
        ),
    };
    log::warn!(
        "control: refused {} to uid {} (pid {}): not permitted",
        method.name(),
        caller.uid,
        caller.pid
    );
    Err(fail(
        code::NOT_PERMITTED,
        format!(
            "not permitted: {} {what}, which only {who} may do (you are uid {}); nothing was done",
            method.name(),
            caller.uid
        ),
    ))
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
