//! `sharedisk ctl`: sends one request to the control socket and prints the answer, as text or
//! (`--json`) as the daemon's JSON object. Also `sharedisk pr show --state FILE`, offline.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};

use super::{code, view};
use crate::cli::out;

/// Exit codes of `sharedisk ctl`.
pub mod exit {
    pub const OK: u8 = 0;
    pub const FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    /// The request did not reach the daemon (no socket, no daemon, refused connection):
    /// nothing was done.
    pub const UNREACHABLE: u8 = 3;
    /// The request was sent but no answer came (timeout, connection lost): it may or may not
    /// have been done; look (`ctl pr show`, the daemon's log) before repeating a change.
    pub const OUTCOME_UNKNOWN: u8 = 4;
    /// The daemon refused the call: this uid (and its groups) may not make it; nothing was
    /// done. See the permission table in docs/operations.md.
    pub const NOT_PERMITTED: u8 = 5;
    /// sg3_utils' SG_LIB_CAT_RES_CONFLICT, which `sg_persist` scripts already check.
    pub const RESERVATION_CONFLICT: u8 = 24;
}

pub enum CtlCommand {
    Status,
    Guests,
    PrShow,
    PrClear {
        yes: bool,
    },
    PrPreempt {
        victim: String,
        by: Option<String>,
        abort: bool,
        yes: bool,
    },
    Stats,
    Metrics,
    GuestAdd {
        name: String,
        read_only: bool,
        queues: Option<u16>,
        no_scsi: bool,
    },
    GuestRemove {
        name: String,
        force: bool,
    },
    ClusterStatus,
    ClusterRepublish {
        yes: bool,
    },
    ClusterEvict {
        node: String,
        yes: bool,
    },
    ClusterResume,
    IscsiSessions,
}

impl CtlCommand {
    fn request(&self) -> Result<Value, String> {
        let need_yes = |yes: bool, what: &str| {
            if yes {
                Ok(())
            } else {
                Err(format!(
                    "{what} changes the reservation state every guest sees; add --yes to do it"
                ))
            }
        };
        let (method, params) = match self {
            CtlCommand::Status => ("status", json!({})),
            CtlCommand::Guests => ("guests", json!({})),
            CtlCommand::PrShow => ("pr.show", json!({})),
            CtlCommand::PrClear { yes } => {
                need_yes(*yes, "pr clear")?;
                ("pr.clear", json!({ "confirm": true }))
            }
            CtlCommand::PrPreempt {
                victim,
                by,
                abort,
                yes,
            } => {
                need_yes(*yes, "pr preempt")?;
                (
                    "pr.preempt",
                    json!({ "victim": victim, "by": by, "abort": abort, "confirm": true }),
                )
            }
            CtlCommand::Stats => ("stats", json!({})),
            CtlCommand::IscsiSessions => ("iscsi.sessions", json!({})),
            CtlCommand::ClusterStatus => ("cluster.status", json!({})),
            CtlCommand::ClusterRepublish { yes } => {
                need_yes(*yes, "cluster republish")?;
                ("cluster.republish", json!({ "confirm": true }))
            }
            CtlCommand::ClusterEvict { node, yes } => {
                need_yes(*yes, "cluster evict")?;
                ("cluster.evict", json!({ "node": node, "confirm": true }))
            }
            CtlCommand::ClusterResume => ("cluster.resume", json!({})),
            CtlCommand::Metrics => ("metrics", json!({})),
            CtlCommand::GuestAdd {
                name,
                read_only,
                queues,
                no_scsi,
            } => (
                "guest.add",
                json!({ "name": name, "read_only": read_only, "queues": queues, "scsi": !no_scsi }),
            ),
            CtlCommand::GuestRemove { name, force } => {
                ("guest.remove", json!({ "name": name, "force": force }))
            }
        };
        Ok(json!({ "jsonrpc": "2.0", "id": 1, "method": method, "params": params }))
    }
}

/// How long `ctl` waits for an answer by default (a PR change in cluster mode may wait for
/// every member's acknowledgement).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends `req` and returns the response object, waiting `timeout` for it. The error's code
/// tells whether the request may have been done ([`exit::OUTCOME_UNKNOWN`]) or not.
pub fn call(socket: &Path, req: &Value, timeout: Duration) -> Result<Value, (u8, String)> {
    let unreachable = |e: std::io::Error| {
        (
            exit::UNREACHABLE,
            format!("cannot reach the daemon at {}: {e}", socket.display()),
        )
    };
    let conn = UnixStream::connect(socket).map_err(unreachable)?;
    conn.set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(unreachable)?;
    conn.set_write_timeout(Some(timeout.max(Duration::from_millis(1))))
        .map_err(unreachable)?;
    let mut line = serde_json::to_vec(req).map_err(|e| (exit::FAILED, e.to_string()))?;
    line.push(b'\n');
    // A refusal (too many connections) may be answered before the request is read: read it
    // even when the request could not be written whole.
    let sent = (&conn).write_all(&line);
    let mut answer = String::new();
    let read = BufReader::new(&conn).read_line(&mut answer);
    match (sent, read) {
        (_, Ok(_)) if answer.ends_with('\n') => {
            serde_json::from_str(&answer).map_err(|e| (exit::FAILED, format!("bad answer: {e}")))
        }
        (Err(e), _) => Err(unreachable(e)),
        (Ok(()), Ok(_)) => Err((
            exit::OUTCOME_UNKNOWN,
            format!(
                "the daemon at {} closed the connection after the request was sent: it may or \
                 may not have been done; check (`sharedisk ctl pr show`, the daemon's log) \
                 before repeating it",
                socket.display()
            ),
        )),
        (Ok(()), Err(e)) => Err((
            exit::OUTCOME_UNKNOWN,
            format!(
                "no answer from the daemon at {} ({e}; waited up to {} s, see --timeout) after \
                 the request was sent: it may or may not have been done; check (`sharedisk ctl \
                 pr show`, the daemon's log) before repeating it",
                socket.display(),
                timeout.as_secs_f64()
            ),
        )),
    }
}

/// Runs one `ctl` command; returns the exit code.
pub fn run(socket: &Path, json_out: bool, timeout: Duration, cmd: CtlCommand) -> u8 {
    let req = match cmd.request() {
        Ok(r) => r,
        Err(e) => {
            out::eprintln(&format!("sharedisk ctl: {e}"));
            return exit::USAGE;
        }
    };
    let resp = match call(socket, &req, timeout) {
        Ok(r) => r,
        Err((code, msg)) => {
            if json_out {
                out::println(&json!({ "error": { "code": code, "message": msg } }).to_string());
            } else {
                out::eprintln(&format!("sharedisk ctl: {msg}"));
            }
            return code;
        }
    };
    if let Some(err) = resp.get("error") {
        let c = err
            .get("code")
            .and_then(Value::as_i64)
            .unwrap_or(code::FAILED);
        let msg = err
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("failed");
        if json_out {
            out::println(&json!({ "error": err }).to_string());
        } else {
            out::eprintln(&format!("sharedisk ctl: {msg}"));
        }
        return match c {
            code::RESERVATION_CONFLICT => exit::RESERVATION_CONFLICT,
            code::NOT_PERMITTED => exit::NOT_PERMITTED,
            code::INVALID_PARAMS => exit::USAGE,
            _ => exit::FAILED,
        };
    }
    let result = resp.get("result").cloned().unwrap_or(Value::Null);
    if json_out {
        out::println(&serde_json::to_string_pretty(&result).unwrap_or_default());
        return exit::OK;
    }
    let text = match cmd {
        CtlCommand::Status => render_status(&result),
        CtlCommand::Guests | CtlCommand::GuestAdd { .. } | CtlCommand::GuestRemove { .. } => {
            render_guests(&result)
        }
        CtlCommand::PrShow | CtlCommand::PrClear { .. } | CtlCommand::PrPreempt { .. } => {
            render_pr(&result)
        }
        CtlCommand::Stats => render_stats(&result),
        CtlCommand::IscsiSessions => render_iscsi_sessions(&result),
        CtlCommand::ClusterStatus => render_cluster(&result),
        CtlCommand::ClusterRepublish { .. } => format!(
            "republished the state held here as epoch {} (etcd held {})\n",
            result.get("epoch").cloned().unwrap_or(Value::Null),
            match result.get("previous_shared_epoch") {
                Some(Value::Number(n)) => format!("epoch {n}"),
                _ => "no state".into(),
            }
        ),
        CtlCommand::ClusterEvict { node, .. } => format!("evicted {node}\n"),
        CtlCommand::ClusterResume => "resumed: admitting I/O again\n".to_string(),
        CtlCommand::Metrics => result
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string(),
    };
    out::print(&text);
    exit::OK
}

/// `ctl cluster status` as text: this member, then one line per member.
fn render_cluster(v: &Value) -> String {
    let s = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    let mut out = format!(
        "Node: {}  disk: {}  {}\nEpoch: {} here, {} in etcd, {} settled\nRead lease: {} of {} ms \
         left{}\n",
        s("node").as_str().unwrap_or("?"),
        s("disk_id").as_str().unwrap_or("?"),
        if s("serving").as_bool() == Some(true) {
            "serving".to_string()
        } else if s("fault").get("kind").and_then(Value::as_str) == Some("io_overrun") {
            format!(
                "NOT serving (I/O overrun: an admitted I/O ended {} ms past lease end + \
                 max_io_ms; see the log, then `ctl cluster resume` or restart)",
                s("fault").get("overrun_ms").cloned().unwrap_or(Value::Null)
            )
        } else {
            "NOT serving (no valid read lease)".to_string()
        },
        s("epoch"),
        s("shared_epoch"),
        s("settled_epoch"),
        s("lease_remaining_ms"),
        s("lease_ms"),
        if s("strict").as_bool() == Some(true) {
            ", strict mode (fence hook)"
        } else {
            ""
        }
    );
    match s("fault").get("kind").and_then(Value::as_str) {
        Some("regression") => out.push_str(&format!(
            "FAULT: etcd holds an older state (epoch {} in etcd, {} here): run `sharedisk ctl \
             cluster republish --yes` on the member holding the newest state\n",
            s("fault")
                .get("shared_epoch")
                .cloned()
                .unwrap_or(Value::Null),
            s("fault").get("held_epoch").cloned().unwrap_or(Value::Null),
        )),
        Some("replaced") => out.push_str(
            "FAULT: another incarnation of this node took its membership: this daemon admits \
             nothing any more; stop it\n",
        ),
        _ => {}
    }
    if let Some(ms) = s("unsettled_since_ms").as_u64() {
        out.push_str(&format!(
            "NOT SETTLED for {ms} ms: PR IN answers BUSY until it is{}\n",
            s("settle_failure")
                .as_str()
                .map(|f| format!(" (last failure: {f})"))
                .unwrap_or_default()
        ));
    }
    if let Some(e) = s("error").as_str() {
        out.push_str(&format!("etcd: {e}\n"));
    } else if let Some(at) = s("etcd_answering").as_str() {
        out.push_str(&format!("etcd: calls go to {at}\n"));
    }
    out.push_str(&format!(
        "{:<16} {:<16} {:>8} {:>12}  initiators\n",
        "MEMBER", "HOST", "PID", "ACKED EPOCH"
    ));
    for m in s("members").as_array().into_iter().flatten() {
        let f = |k: &str| m.get(k).cloned().unwrap_or(Value::Null);
        let name = format!(
            "{}{}",
            f("node").as_str().unwrap_or("?"),
            if f("this_daemon").as_bool() == Some(true) {
                " *"
            } else {
                ""
            }
        );
        let list = f("initiators");
        let initiators: Vec<&str> = list
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        out.push_str(&format!(
            "{:<16} {:<16} {:>8} {:>12}  {}\n",
            printable(&name),
            printable(f("host").as_str().unwrap_or("-")),
            f("pid"),
            f("acked_epoch"),
            printable(&initiators.join(","))
        ));
    }
    out.push_str(&render_owners(&s("guests")));
    out
}

/// The owner records' lines of `ctl cluster status`: per guest, the owning node (`*`: this
/// incarnation; `(gone)`: not its node's member now), whether it is served here, its move count,
/// the node that asked for it and the owner's incarnation. The names come from etcd, where any
/// client of it may have written them: a control character is shown escaped, never sent to the
/// operator's terminal.
fn render_owners(guests: &Value) -> String {
    let list = guests.as_array().map(Vec::as_slice).unwrap_or_default();
    if list.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "{:<16} {:<18} {:>6} {:<11} {:<16}  owner incarnation\n",
        "GUEST", "OWNER", "MOVES", "SERVED HERE", "WANTED BY"
    );
    for g in list {
        let f = |k: &str| g.get(k).cloned().unwrap_or(Value::Null);
        let owner = match (f("record").as_str(), f("node").as_str()) {
            (Some("unreadable"), _) => "(unreadable)".to_string(),
            (Some("unknown"), _) if f("wanted_here").as_bool() == Some(true) => {
                "(etcd?) waits".to_string()
            }
            (Some("unknown"), _) => "(etcd?)".to_string(),
            (_, None) => "(none yet)".to_string(),
            (_, Some(node)) => format!(
                "{node}{}{}",
                if f("this_incarnation").as_bool() == Some(true) {
                    " *"
                } else {
                    ""
                },
                if f("owner_is_member").as_bool() == Some(false) {
                    " (gone)"
                } else {
                    ""
                }
            ),
        };
        out.push_str(&format!(
            "{:<16} {:<18} {:>6} {:<11} {:<16}  {}\n",
            printable(f("guest").as_str().unwrap_or("?")),
            printable(&owner),
            f("moves")
                .as_u64()
                .map_or("-".to_string(), |m| m.to_string()),
            yes_no(g, "served_here"),
            printable(f("want").get("node").and_then(Value::as_str).unwrap_or("-")),
            printable(f("incarnation").as_str().unwrap_or("-")),
        ));
    }
    out
}

/// `sharedisk pr show --state FILE`: the state file of a stopped daemon.
pub fn show_state_file(path: &Path, json_out: bool) -> u8 {
    match crate::pr::state_file::inspect(path) {
        Ok((image, saved)) => {
            let mut v = view::pr(&saved.reservations);
            v["image"] = json!(image.path);
            if json_out {
                out::println(&serde_json::to_string_pretty(&v).unwrap_or_default());
            } else {
                out::print(&format!(
                    "Image: {} (inode {})\n{}",
                    image.path.display(),
                    image.inode,
                    render_pr(&v)
                ));
            }
            exit::OK
        }
        Err(e) => {
            out::eprintln(&format!("sharedisk: {e}"));
            exit::FAILED
        }
    }
}

/// `text` with each control character (escape sequences, line breaks) written as `\u{…}`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn s<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("-")
}

fn n(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn yes_no(v: &Value, k: &str) -> &'static str {
    if v.get(k).and_then(Value::as_bool).unwrap_or(false) {
        "yes"
    } else {
        "no"
    }
}

pub fn render_status(v: &Value) -> String {
    let size = n(v, "size_bytes");
    let up = n(v, "uptime_seconds");
    format!(
        "image:      {}\nsize:       {size} bytes ({} MiB)\nblock size: {}\nserial:     {}\n\
         read-only:  {}\nstate file: {}\nmax-shares: {}\nguests:     {}\nuptime:     {}h{:02}m{:02}s\n\
         version:    {}\n",
        s(v, "image"),
        size >> 20,
        n(v, "block_size"),
        s(v, "serial"),
        yes_no(v, "read_only"),
        s(v, "state_file"),
        n(v, "max_shares"),
        n(v, "guests"),
        up / 3600,
        up / 60 % 60,
        up % 60,
        s(v, "version"),
    )
}

/// `ctl iscsi sessions`: a line per session.
pub fn render_iscsi_sessions(v: &Value) -> String {
    let empty = Vec::new();
    let list = v
        .get("sessions")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if list.is_empty() {
        return "no iSCSI sessions\n".into();
    }
    let s = |x: &Value, k: &str| match x.get(k) {
        Some(Value::String(t)) => t.clone(),
        Some(o) => o.to_string(),
        None => "-".into(),
    };
    let mut out = String::new();
    for x in list {
        out.push_str(&format!(
            "{}\n  ISID 0x{}  TSIH {}  portal {}  peer {}  since {}  auth {}\n  digests header {} \
             data {}  commands {} ({} on the reader)  bytes in {} out {}  PDU errors {}\n",
            s(x, "nexus"),
            s(x, "isid"),
            s(x, "tsih"),
            s(x, "portal"),
            s(x, "peer"),
            s(x, "since"),
            s(x, "auth"),
            s(x, "header_digest"),
            s(x, "data_digest"),
            s(x, "commands"),
            s(x, "commands_inline"),
            s(x, "bytes_in"),
            s(x, "bytes_out"),
            s(x, "pdu_errors"),
        ));
    }
    out
}

pub fn render_guests(v: &Value) -> String {
    let mut out = format!(
        "{:<16} {:<13} {:<13} {:>6} {:<3} {:>10}  {}\n",
        "GUEST", "BLK", "SCSI", "QUEUES", "RO", "RECONNECTS", "INITIATOR"
    );
    let state = |d: &Value| {
        if d.is_null() {
            "-".to_string()
        } else if d.get("connected").and_then(Value::as_bool).unwrap_or(false) {
            "connected".to_string()
        } else {
            "disconnected".to_string()
        }
    };
    for g in v
        .get("guests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (blk, scsi) = (&g["blk"], &g["scsi"]);
        let reconnects = n(blk, "reconnects") + n(scsi, "reconnects");
        let _ = writeln!(
            out,
            "{:<16} {:<13} {:<13} {:>6} {:<3} {:>10}  {}",
            s(g, "name"),
            state(blk),
            state(scsi),
            n(g, "queues"),
            yes_no(g, "read_only"),
            reconnects,
            s(g, "initiator"),
        );
    }
    // iSCSI sessions, when a portal is configured: each by its nexus, the initiator name the
    // arbiter and `pr show` use.
    for x in v
        .get("iscsi_sessions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let _ = writeln!(
            out,
            "{:<16} {:<13} {:<13} {:>6} {:<3} {:>10}  {}",
            "(iscsi)",
            "connected",
            "-",
            "-",
            "-",
            "-",
            s(x, "nexus"),
        );
    }
    out
}

pub fn render_pr(v: &Value) -> String {
    let mut out = format!(
        "PR generation: {:#x}\nAPTPL: {}\n",
        n(v, "generation"),
        yes_no(v, "aptpl")
    );
    match v.get("reservation").filter(|r| !r.is_null()) {
        None => out.push_str("Reservation: none\n"),
        Some(r) => {
            let _ = writeln!(
                out,
                "Reservation: held by {} (key {}), type {} ({}), scope {}",
                s(r, "holder"),
                s(r, "key"),
                n(r, "type"),
                s(r, "type_name"),
                s(r, "scope"),
            );
        }
    }
    let regs: Vec<&Value> = v
        .get("registrations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .collect();
    if regs.is_empty() {
        out.push_str("Registrations: none\n");
    } else {
        let _ = writeln!(out, "Registrations: {}", regs.len());
        for r in regs {
            let _ = writeln!(
                out,
                "  {:<16} key {:<20}{}",
                s(r, "guest"),
                s(r, "key"),
                if r.get("holder").and_then(Value::as_bool).unwrap_or(false) {
                    "  holder"
                } else {
                    ""
                }
            );
        }
    }
    out
}

pub fn render_stats(v: &Value) -> String {
    let mut out = format!(
        "{:<16} {:<4} {:<7} {:>10} {:>14} {:>9} {:>7} {:>9} {:>9}\n",
        "GUEST", "DEV", "OP", "OK", "BYTES", "CONFLICTS", "ERRORS", "P50", "P99"
    );
    let lat = |x: &Value| match x.as_f64() {
        Some(s) if s < 1e-3 => format!("{:.0}us", s * 1e6),
        Some(s) if s < 1.0 => format!("{:.1}ms", s * 1e3),
        Some(s) => format!("{s:.1}s"),
        None if x.is_null() => "-".into(),
        None => ">5s".into(),
    };
    let mut pr_lines = String::new();
    for g in v
        .get("guests")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        for d in g
            .get("devices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            for o in d.get("ops").and_then(Value::as_array).into_iter().flatten() {
                let total = n(o, "ok") + n(o, "conflicts") + n(o, "errors");
                if total == 0 {
                    continue;
                }
                let _ = writeln!(
                    out,
                    "{:<16} {:<4} {:<7} {:>10} {:>14} {:>9} {:>7} {:>9} {:>9}",
                    s(g, "name"),
                    s(d, "path"),
                    s(o, "op"),
                    n(o, "ok"),
                    n(o, "bytes"),
                    n(o, "conflicts"),
                    n(o, "errors"),
                    lat(&o["latency_p50_seconds"]),
                    lat(&o["latency_p99_seconds"]),
                );
            }
        }
        for p in g
            .get("pr_out")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let total = n(p, "ok") + n(p, "conflict") + n(p, "error");
            if total > 0 {
                let _ = writeln!(
                    pr_lines,
                    "{:<16} {:<20} {:>6} {:>9} {:>7}",
                    s(g, "name"),
                    s(p, "action"),
                    n(p, "ok"),
                    n(p, "conflict"),
                    n(p, "error"),
                );
            }
        }
    }
    if !pr_lines.is_empty() {
        let _ = write!(
            out,
            "\n{:<16} {:<20} {:>6} {:>9} {:>7}\n{pr_lines}",
            "GUEST", "PR OUT", "OK", "CONFLICT", "ERROR"
        );
    }
    out
}

#[cfg(test)]
mod tests;
