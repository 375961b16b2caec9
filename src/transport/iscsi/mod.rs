//! The iSCSI target (RFC 7143): one target node per disk, the disk at LUN 0, one portal group
//! (tag 1) listening on the configured portals. Each connection is a session (MaxConnections
//! = 1, ErrorRecoveryLevel = 0) served by its own thread; logins in progress, discovery
//! sessions and Normal sessions each have their bound (`admission`), a discovery session its
//! idle timeout, and every session a send timeout: an initiator that stops reading is dropped.
//! What a peer makes us log is rate-limited per source address. A Normal session is one I_T
//! nexus, named for the arbiter by [`nexus_name`] (InitiatorName and ISID), so each session of
//! an initiator registers on its own and a reinstated session (same name and ISID) keeps its
//! registrations.
//!
//! `pdu` frames PDUs, `keys` negotiates text keys, `login` runs the login phase and `session`
//! the full feature phase; the SCSI core (`crate::scsi::target`) runs the commands.

mod admission;
pub mod chap;
pub mod keys;
pub mod login;
pub mod pdu;
mod session;
mod workers;
mod writer;

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::config::IscsiConfig;
use crate::scsi::target::Target;
use crate::scsi::tasks::Scope;
use crate::util::lock::lock;
use crate::util::ratelimit::PerSource;
use admission::{Conns, Open, Phase};
use login::{login, LoggedIn, LoginError, Policy, SessionKind, Wire};
use session::{Connection, End};

/// Connections closed to make room that may still be winding down, on top of the bounds of
/// each kind: beyond, a new connection is closed at accept.
const CLOSING_SLACK: usize = 64;

/// What peers cause at accept and login is logged per source address: a burst of lines, then
/// one per period (and so many sources followed at once).
const LOG_EVERY: Duration = Duration::from_secs(1);
const LOG_BURST: u32 = 20;
const LOG_SOURCES: usize = 256;

/// The arbiter's name for the I_T nexus of an iSCSI session: SPC-4's initiator port name,
/// `<initiator name>,i,0x<ISID>` (the name lower-cased). It cannot clash with a guest name,
/// which has no `,`; READ FULL STATUS reports it as a format 01b TransportID.
pub fn nexus_name(initiator: &str, isid: [u8; 6]) -> String {
    let mut s = format!("{},i,0x", initiator.to_ascii_lowercase());
    for b in isid {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A live Normal session.
struct Live {
    tsih: u16,
    /// The connection it runs on.
    conn: u64,
    /// What `ctl iscsi sessions` and the metrics show; set once the login completed.
    info: Option<Arc<SessionInfo>>,
}

/// The counters of one session.
#[derive(Debug, Default)]
pub struct SessionCounters {
    /// SCSI commands received (and admitted by CmdSN).
    pub commands: AtomicU64,
    /// Write data received (immediate data and Data-Out).
    pub bytes_in: AtomicU64,
    /// Read data sent (Data-In).
    pub bytes_out: AtomicU64,
    /// Commands that ran on the connection's reader, the session being idle (`workers.rs`).
    pub inline: AtomicU64,
    /// PDUs rejected, and PDUs that could not be read (digest, length, protocol errors).
    pub pdu_errors: AtomicU64,
}

/// Login results, as the metrics label them.
pub const LOGIN_RESULTS: [&str; 7] = [
    "accepted",
    "auth_failed",
    "not_allowed",
    "not_found",
    "out_of_resources",
    "refused",
    "failed",
];

/// Kinds of PDU errors, as the metrics label them.
pub const PDU_ERROR_KINDS: [&str; 4] = ["digest", "too_long", "protocol", "rejected"];

/// The portal's counters over every connection.
#[derive(Debug, Default)]
pub struct PortalCounters {
    /// Logins by result, in [`LOGIN_RESULTS`]' order.
    pub logins: [AtomicU64; 7],
    /// PDU errors by kind, in [`PDU_ERROR_KINDS`]' order.
    pub pdu_errors: [AtomicU64; 4],
}

impl PortalCounters {
    fn login(&self, result: Result<(), Option<u16>>) {
        let i = match result {
            Ok(()) => 0,
            Err(Some(login::status::AUTH_FAILURE)) => 1,
            Err(Some(login::status::AUTHORIZATION_FAILURE)) => 2,
            Err(Some(login::status::NOT_FOUND)) => 3,
            Err(Some(login::status::OUT_OF_RESOURCES)) => 4,
            Err(Some(_)) => 5,
            Err(None) => 6,
        };
        self.logins[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a PDU error of `kind` (an index in [`PDU_ERROR_KINDS`]).
    pub(crate) fn pdu_error(&self, kind: usize) {
        if let Some(c) = self.pdu_errors.get(kind) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A live Normal session, as `ctl iscsi sessions` and the metrics show it.
#[derive(Debug)]
pub struct SessionInfo {
    /// The arbiter's name for its I_T nexus ([`nexus_name`]).
    pub nexus: String,
    pub initiator: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    /// The portal (our address) and the initiator's address.
    pub local: String,
    pub peer: String,
    /// When the login completed.
    pub since: SystemTime,
    pub header_digest: bool,
    pub data_digest: bool,
    /// How the initiator authenticated: `None`, `CHAP` or `mutual CHAP`.
    pub auth: &'static str,
    pub counters: SessionCounters,
}

/// What every connection thread shares.
pub struct Shared {
    target: Arc<Target>,
    config: IscsiConfig,
    /// The initiators that must authenticate with CHAP, their secrets read at start.
    chap: HashMap<String, chap::InitiatorChap>,
    target_name: String,
    /// Normal sessions and guests at once (maxShares).
    max_shares: usize,
    /// The guests served now: what maxShares leaves to sessions.
    guests: AtomicUsize,
    sessions: Mutex<HashMap<String, Live>>,
    /// Every open connection, by id and phase: the bounds of each kind, and what to close at
    /// reinstatement or stop. Taken after `sessions`, never before.
    conns: Mutex<Conns>,
    /// Signalled when a connection's thread has ended (it left `conns`).
    conn_ended: Condvar,
    next_conn: AtomicU64,
    next_tsih: Mutex<u16>,
    stop: AtomicBool,
    counters: PortalCounters,
    /// Lines about connections and logins, per source address.
    peer_log: PerSource,
    /// How long, in µs, a connection's reader watches its socket for the next PDU before it
    /// blocks (the daemon's `poll_us`; 0: never).
    poll_us: AtomicU32,
}

impl Shared {
    fn new(
        target: Arc<Target>,
        config: IscsiConfig,
        chap: HashMap<String, chap::InitiatorChap>,
        max_shares: usize,
        guests: usize,
    ) -> Self {
        Shared {
            chap,
            target_name: config.target_name(&target.lun().serial),
            target,
            config,
            max_shares,
            guests: AtomicUsize::new(guests),
            sessions: Mutex::default(),
            conns: Mutex::default(),
            conn_ended: Condvar::new(),
            next_conn: AtomicU64::new(1),
            next_tsih: Mutex::new(0),
            stop: AtomicBool::new(false),
            counters: PortalCounters::default(),
            peer_log: PerSource::new(module_path!(), LOG_EVERY, LOG_BURST, LOG_SOURCES),
            poll_us: AtomicU32::new(0),
        }
    }

    /// SendTargets (RFC 7143 §12.3, appendix C): our target and portals for `All` (or our own
    /// name); nothing for another name.
    fn send_targets(&self, what: &str, _kind: SessionKind) -> Vec<(String, String)> {
        if what != "All" && !what.is_empty() && !what.eq_ignore_ascii_case(&self.target_name) {
            return Vec::new();
        }
        let mut out = vec![("TargetName".to_string(), self.target_name.clone())];
        for a in &self.config.listen {
            let addr = match a {
                SocketAddr::V4(v) => format!("{}:{},1", v.ip(), v.port()),
                SocketAddr::V6(v) => format!("[{}]:{},1", v.ip(), v.port()),
            };
            out.push(("TargetAddress".to_string(), addr));
        }
        out
    }

    /// Admits a discovery session on `conn`, closing another if they are `max_discovery_sessions`
    /// already (see `admission`). Its TSIH.
    fn admit_discovery(&self, conn: u64) -> Result<u16, u16> {
        let mut conns = lock(&self.conns);
        let max = self.config.limits.max_discovery_sessions;
        if let Some(victim) = conns.victim(Phase::Discovery, max) {
            if let Some((source, _)) = conns.close(victim) {
                self.peer_log.log(
                    log::Level::Warn,
                    source,
                    format_args!(
                        "iscsi: discovery session from {source} closed: {max} discovery sessions \
                         (max_discovery_sessions), this source holds the most"
                    ),
                );
            }
        }
        conns.enter(conn, Phase::Discovery);
        Ok(1)
    }

    /// Admits a Normal session of `nexus` on connection `conn`: reinstates a live one of the
    /// same nexus (its connection is closed), refuses beyond `max_sessions` or maxShares
    /// (0302). Its TSIH, and the connection of the session it reinstated.
    fn admit(&self, nexus: &str, conn: u64) -> Result<(u16, Option<u64>), u16> {
        let mut sessions = lock(&self.sessions);
        let res = &self.target.lun().reservations;
        let replaced = sessions.remove(nexus).map(|old| {
            // Session reinstatement (RFC 7143 §6.3.5): the old connection closes, its tasks
            // end without responses; the nexus and its PR state stay, SPC-2 state goes (an
            // I_T nexus loss, reported to the new session as 29/07).
            log::info!(
                "{nexus}: iscsi: session reinstated (TSIH {} closed)",
                old.tsih
            );
            lock(&self.conns).close(old.conn);
            res.with_mut(|a| a.i_t_nexus_reset(nexus));
            old.conn
        });
        let max_sessions = self.config.limits.max_sessions;
        let source = self.source(conn);
        if sessions.len() >= max_sessions {
            let line = format_args!(
                "{nexus}: iscsi: login refused: {max_sessions} sessions already (max_sessions)"
            );
            self.peer_log.log(log::Level::Warn, source, line);
            return Err(login::status::OUT_OF_RESOURCES);
        }
        let guests = self.guests.load(Ordering::SeqCst);
        if sessions.len() + guests >= self.max_shares {
            let line = format_args!(
                "{nexus}: iscsi: login refused: {} sessions and {guests} guests already \
                 (max-shares {})",
                sessions.len(),
                self.max_shares
            );
            self.peer_log.log(log::Level::Warn, source, line);
            return Err(login::status::OUT_OF_RESOURCES);
        }
        let tsih = {
            let mut t = lock(&self.next_tsih);
            *t = t.wrapping_add(1).max(1);
            *t
        };
        sessions.insert(
            nexus.to_string(),
            Live {
                tsih,
                conn,
                info: None,
            },
        );
        // Cluster mode: an initiator of this daemon while its session lives here (its unit
        // attentions are queued here, and the other daemons send theirs with their changes);
        // first, so that a change committed here meanwhile does not send its 29/00 away.
        res.serve(nexus);
        res.with_mut(|a| a.add_initiator(nexus.to_string()));
        lock(&self.conns).enter(conn, Phase::Normal);
        Ok((tsih, replaced))
    }

    /// A reinstatement's end of the old session (RFC 7143 §6.3.5): its tasks are aborted (a
    /// queued one never runs, an in-flight one is waited for), then its connection's thread is
    /// waited for, so that no command of it runs once the new login completes.
    fn terminate_replaced(&self, nexus: &str, old: u64) {
        let n = self.target.lun().tasks.abort(Scope::Nexus(nexus));
        log::info!("{nexus}: iscsi: {n} task(s) of the reinstated session terminated");
        let mut conns = lock(&self.conns);
        while conns.contains(old) {
            conns = self
                .conn_ended
                .wait(conns)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// The end of a Normal session: an I_T nexus loss (SAM-5 §6.3.4), unless a reinstatement
    /// took the nexus over (and did that already); an unregistered nexus is then forgotten.
    fn ended(&self, nexus: &str, conn: u64) {
        let mut sessions = lock(&self.sessions);
        if sessions.get(nexus).is_none_or(|l| l.conn != conn) {
            return;
        }
        sessions.remove(nexus);
        // Under the sessions lock, so a login of the same nexus cannot interleave.
        let res = &self.target.lun().reservations;
        // Cluster mode: no longer this daemon's (a nexus left behind is nobody's, so the shared
        // state's bookkeeping does not grow with the ISIDs initiators leave behind), and
        // forgotten even if registered (see `Arbiter::forget_departed_initiator`).
        res.unserve(nexus);
        let departed = !res.serves(nexus);
        res.with_mut(|a| {
            a.i_t_nexus_reset(nexus);
            if departed {
                a.forget_departed_initiator(nexus);
            } else {
                a.forget_initiator(nexus);
            }
        });
    }

    /// One connection from accept to close.
    fn serve(&self, mut stream: TcpStream, peer: SocketAddr, conn: u64) {
        let _ = stream.set_nodelay(true);
        let from = match stream.local_addr() {
            Ok(local) => format!("{peer} (portal {local})"),
            Err(_) => peer.to_string(),
        };
        // An initiator that takes nothing we send for this long is gone: its thread and its
        // share are freed (the socket's timeout holds for every clone of it).
        let _ = stream.set_write_timeout(Some(self.config.limits.send_timeout));
        let Some(session) = self.login(&mut stream, &from, peer.ip(), conn) else {
            return;
        };
        let local = stream
            .local_addr()
            .map_or_else(|_| "?".into(), |a| a.to_string());
        let counters = self.describe(&session, conn, local, peer.to_string());
        let idle = match session.kind {
            SessionKind::Discovery => Some(self.config.limits.discovery_idle_timeout),
            SessionKind::Normal => None,
        };
        let clones = stream
            .set_read_timeout(idle)
            .and_then(|_| Ok((stream.try_clone()?, stream.try_clone()?)));
        match clones {
            Ok((writer, closer)) => {
                let hangup = Box::new(move || {
                    let _ = closer.shutdown(Shutdown::Both);
                });
                let socket = Some(stream.as_raw_fd());
                let io = (stream, writer, socket);
                self.full_feature(session, io, conn, counters, hangup, false)
            }
            Err(e) => {
                log::warn!("iscsi: connection from {peer}: {e}");
                self.ended(&nexus_name(&session.initiator, session.isid), conn);
            }
        }
    }

    /// Records what `ctl` and the metrics show of a Normal session that logged in on `conn`;
    /// the counters its connection counts into.
    fn describe(&self, s: &LoggedIn, conn: u64, local: String, peer: String) -> Arc<SessionInfo> {
        let info = Arc::new(SessionInfo {
            nexus: nexus_name(&s.initiator, s.isid),
            initiator: s.initiator.clone(),
            isid: s.isid,
            tsih: s.tsih,
            local,
            peer,
            since: SystemTime::now(),
            header_digest: s.params.digests.header,
            data_digest: s.params.digests.data,
            auth: s.auth,
            counters: SessionCounters::default(),
        });
        if s.kind == SessionKind::Normal {
            if let Some(live) = lock(&self.sessions).get_mut(&info.nexus) {
                if live.conn == conn {
                    live.info = Some(info.clone());
                }
            }
        }
        info
    }

    /// The login phase on `wire`; `None` when it failed (logged).
    fn login(
        &self,
        wire: &mut impl Wire,
        peer: &str,
        source: IpAddr,
        conn: u64,
    ) -> Option<LoggedIn> {
        let allows = |name: &str| self.config.allows(name);
        // The nexus admitted, once the login got that far: a login that fails after it (its
        // last response could not be sent) ends it again, or it would hold a session for ever.
        let admitted = std::cell::RefCell::new(None);
        let admit = |kind: SessionKind, name: &str, isid: [u8; 6], _tsih: u16| {
            if kind == SessionKind::Discovery {
                return self.admit_discovery(conn);
            }
            let nexus = nexus_name(name, isid);
            let (tsih, replaced) = self.admit(&nexus, conn)?;
            if let Some(old) = replaced {
                self.terminate_replaced(&nexus, old);
            }
            *admitted.borrow_mut() = Some(nexus);
            Ok(tsih)
        };
        let policy = Policy {
            target_name: &self.target_name,
            allows: &allows,
            admit: &admit,
            chap: &self.chap,
        };
        let result = login(wire, &policy);
        if let (Err(_), Some(nexus)) = (&result, admitted.take()) {
            self.ended(&nexus, conn);
        }
        self.counters.login(match &result {
            Ok(_) => Ok(()),
            Err(LoginError::Refused { status, .. }) => Err(Some(*status)),
            Err(_) => Err(None),
        });
        match result {
            Ok(s) if s.kind == SessionKind::Discovery => {
                self.peer_log.log(
                    log::Level::Info,
                    source,
                    format_args!("{}: iscsi: logged in from {peer}", session_name(&s)),
                );
                Some(s)
            }
            Ok(s) => {
                let p = &s.params;
                log::info!(
                    "{}: iscsi: logged in from {peer} (TSIH {}, auth {}, header digest {}, data \
                     digest {}, InitialR2T {}, ImmediateData {}, bursts {}/{})",
                    session_name(&s),
                    s.tsih,
                    s.auth,
                    if p.digests.header { "CRC32C" } else { "None" },
                    if p.digests.data { "CRC32C" } else { "None" },
                    p.initial_r2t,
                    p.immediate_data,
                    p.first_burst,
                    p.max_burst
                );
                Some(s)
            }
            Err(LoginError::Refused { status, why }) => {
                self.peer_log.log(
                    log::Level::Warn,
                    source,
                    format_args!("iscsi: login from {peer} refused ({status:04x}): {why}"),
                );
                None
            }
            Err(e) => {
                self.peer_log.log(
                    log::Level::Info,
                    source,
                    format_args!("iscsi: login from {peer} failed: {e}"),
                );
                None
            }
        }
    }

    /// The full feature phase until the connection ends, then the session's end. The
    /// connection (`reader`, `writer`) stays open until the nexus is accounted for, so an
    /// initiator that sees it close after a logout can log in again at once. `inline`: the
    /// commands run on this thread, one at a time (the in-memory connection).
    fn full_feature<R: Read, W: Write + Send>(
        &self,
        session: LoggedIn,
        (reader, writer, socket): (R, W, Option<RawFd>),
        conn: u64,
        info: Arc<SessionInfo>,
        hangup: workers::Hangup,
        inline: bool,
    ) {
        let nexus = session_name(&session);
        let kind = session.kind;
        let mut connection = Connection::new(
            self,
            (reader, writer, socket),
            session,
            (nexus.clone(), info),
            hangup,
        );
        let end = connection.run(inline);
        match end {
            End::ColdReset => {
                log::info!("{nexus}: iscsi: target cold reset: closing every connection");
                lock(&self.conns).close_all();
            }
            // Discovery sessions come and go by the hundred: their lines are per source.
            e if kind == SessionKind::Discovery => {
                let source = self.source(conn);
                let line = format_args!("{nexus}: iscsi: discovery session ended: {e}");
                self.peer_log.log(log::Level::Info, source, line);
            }
            End::Logout => log::info!("{nexus}: iscsi: logged out"),
            e => log::info!("{nexus}: iscsi: connection closed: {e}"),
        }
        if kind == SessionKind::Normal {
            self.ended(&nexus, conn);
        }
        drop(connection);
    }
}

impl Shared {
    /// Logs `line`, which the initiator of session `info` caused, within its source address's
    /// share of lines (`util::ratelimit`).
    pub(crate) fn peer_line(
        &self,
        info: &SessionInfo,
        level: log::Level,
        line: std::fmt::Arguments<'_>,
    ) {
        let source = info
            .peer
            .parse::<SocketAddr>()
            .map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |a| a.ip());
        self.peer_log.log(level, source, line);
    }

    /// The source address of connection `conn` (unspecified for an in-memory one).
    fn source(&self, conn: u64) -> IpAddr {
        lock(&self.conns)
            .source(conn)
            .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }
}

/// How the log and the arbiter name a session: its nexus, or the initiator of a discovery.
fn session_name(s: &LoggedIn) -> String {
    match s.kind {
        SessionKind::Normal => nexus_name(&s.initiator, s.isid),
        SessionKind::Discovery => format!("{} (discovery)", s.initiator),
    }
}

/// An in-memory connection: reads from `input`, writes to `output`.
struct MemoryWire<'a> {
    input: &'a [u8],
    output: Vec<u8>,
}

impl Read for MemoryWire<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.input.read(buf)
    }
}

impl Write for MemoryWire<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Wire for MemoryWire<'_> {
    fn set_read_deadline(&mut self, _: Option<Duration>) -> io::Result<()> {
        Ok(())
    }
}

/// One connection from login to its end, its bytes from `input`, on `target` as `config`
/// serves it: what it answered. For the fuzz target (PDU parsing, login and text
/// negotiation, Data-Out sequencing) and tests; sessions it opens end with it.
pub fn serve_in_memory(target: Arc<Target>, config: IscsiConfig, input: &[u8]) -> Vec<u8> {
    let chap = config.load_chap().unwrap_or_default();
    let shared = Shared::new(target, config, chap, 4, 0);
    let mut wire = MemoryWire {
        input,
        output: Vec::new(),
    };
    let source = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
    if let Some(session) = shared.login(&mut wire, "memory", source, 0) {
        let info = shared.describe(&session, 0, "memory".into(), "memory".into());
        let io = (wire.input, &mut wire.output, None);
        shared.full_feature(session, io, 0, info, Box::new(|| {}), true);
    }
    wire.output
}

/// The running iSCSI target: its listener threads and connections.
pub struct Portal {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    conn_threads: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Portal {
    /// Listens on every configured portal. Normal sessions and the `guests` served now stay
    /// within `max_shares` together ([`Sessions::set_guests`] follows guest changes).
    pub fn start(
        target: Arc<Target>,
        config: IscsiConfig,
        max_shares: usize,
        guests: usize,
    ) -> io::Result<Portal> {
        let listeners = config
            .listen
            .iter()
            .map(|a| {
                TcpListener::bind(a)
                    .map_err(|e| io::Error::new(e.kind(), format!("iSCSI portal {a}: {e}")))
            })
            .collect::<io::Result<Vec<_>>>()?;
        log::info!(
            "iscsi: target {} on {}",
            config.target_name(&target.lun().serial),
            config
                .listen
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        let chap = config.load_chap().map_err(io::Error::other)?;
        let shared = Arc::new(Shared::new(target, config, chap, max_shares, guests));
        let conn_threads = Arc::new(Mutex::new(Vec::new()));
        let mut threads = Vec::new();
        for l in listeners {
            l.set_nonblocking(true)?;
            let (shared, conns) = (shared.clone(), conn_threads.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("iscsi-listen".into())
                    .spawn(move || accept_loop(&shared, &l, &conns))?,
            );
        }
        Ok(Portal {
            shared,
            threads,
            conn_threads,
        })
    }

    /// The target name initiators log in to.
    pub fn target_name(&self) -> &str {
        &self.shared.target_name
    }

    /// The live sessions, for `ctl`, the metrics and guest changes.
    pub fn sessions(&self) -> Sessions {
        Sessions(self.shared.clone())
    }
}

/// The daemon's handle on the live Normal sessions.
#[derive(Clone)]
pub struct Sessions(Arc<Shared>);

/// The live sessions, held so that no login takes a share meanwhile (see
/// [`Sessions::hold`]).
pub struct Held<'a> {
    sessions: MutexGuard<'a, HashMap<String, Live>>,
    guests: &'a AtomicUsize,
}

impl Held<'_> {
    /// Normal sessions now.
    pub fn count(&self) -> usize {
        self.sessions.len()
    }

    /// The number of guests served now (after a guest change).
    pub fn set_guests(&self, n: usize) {
        self.guests.store(n, Ordering::SeqCst);
    }
}

impl Sessions {
    /// Every live Normal session that completed its login, by nexus.
    pub fn list(&self) -> Vec<Arc<SessionInfo>> {
        let mut v: Vec<_> = lock(&self.0.sessions)
            .values()
            .filter_map(|l| l.info.clone())
            .collect();
        v.sort_by(|a, b| a.nexus.cmp(&b.nexus));
        v
    }

    /// The portal's login and PDU error counters.
    pub fn counters(&self) -> &PortalCounters {
        &self.0.counters
    }

    /// Holds the session table: a guest change checks maxShares and records the new number of
    /// guests while no login can be admitted.
    pub fn hold(&self) -> Held<'_> {
        Held {
            sessions: lock(&self.0.sessions),
            guests: &self.0.guests,
        }
    }
}

impl Portal {
    /// How long a connection's reader watches its socket for the next PDU before it blocks
    /// (the daemon's `poll_us`, within the daemon-wide budget of polling threads: see
    /// `session.rs`); zero, the default, never.
    pub fn set_poll(&self, window: std::time::Duration) {
        let us = window.as_micros().min(u128::from(u32::MAX)) as u32;
        self.shared.poll_us.store(us, Ordering::Relaxed);
    }

    /// Stops listening and closes every connection.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        lock(&self.shared.conns).close_all();
        let threads: Vec<_> = lock(&self.conn_threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
    }
}

/// Accepts connections until stopped, a thread each, within the portal's bounds
/// ([`Shared::enter_login`]).
fn accept_loop(shared: &Arc<Shared>, l: &TcpListener, threads: &Mutex<Vec<JoinHandle<()>>>) {
    while !shared.stop.load(Ordering::SeqCst) {
        let (stream, peer) = match l.accept() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
            Err(e) => {
                log::warn!("iscsi: accept: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        lock(threads).retain(|t| !t.is_finished());
        let Some(conn) = shared.enter_login(&stream, peer) else {
            continue;
        };
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("iscsi-conn".into())
            .spawn(move || {
                s.serve(stream, peer, conn);
                lock(&s.conns).remove(conn);
                s.conn_ended.notify_all();
            });
        match spawned {
            Ok(t) => lock(threads).push(t),
            Err(e) => {
                log::warn!("iscsi: no thread for {peer}: {e}");
                lock(&shared.conns).remove(conn);
            }
        }
    }
}

impl Shared {
    /// A new connection from `peer`, in its login phase: its id. Beyond `max_logins` the
    /// oldest login of the source with the most logins in progress is closed (`admission`);
    /// `None` (the connection is closed) only when connections closed that way are still
    /// winding down by the dozen.
    fn enter_login(&self, stream: &TcpStream, peer: SocketAddr) -> Option<u64> {
        let limits = &self.config.limits;
        let total =
            limits.max_logins + limits.max_discovery_sessions + limits.max_sessions + CLOSING_SLACK;
        let mut conns = lock(&self.conns);
        if conns.len() >= total {
            let line = format_args!("iscsi: connection from {peer} closed: {total} open");
            self.peer_log.log(log::Level::Warn, peer.ip(), line);
            return None;
        }
        if let Some(victim) = conns.victim(Phase::Login, limits.max_logins) {
            if let Some((source, _)) = conns.close(victim) {
                let line = format_args!(
                    "iscsi: a login in progress from {source} closed: {} logins in progress \
                     (max_logins), this source holds the most",
                    limits.max_logins
                );
                self.peer_log.log(log::Level::Warn, source, line);
            }
        }
        let _ = stream.set_nonblocking(false);
        let copy = stream.try_clone().ok()?;
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let open = Open {
            stream: copy,
            source: peer.ip(),
            phase: Phase::Login,
            since: Instant::now(),
        };
        conns.insert(conn, open);
        Some(conn)
    }
}

#[cfg(test)]
mod tests;
