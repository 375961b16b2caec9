//! The login phase (RFC 7143 §6.3, §11.12, §11.13): the security stage (AuthMethod=None, or
//! CHAP for an initiator configured with it: one-way or mutual), operational negotiation, and
//! the names and access checks on the first request.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::chap::{self, InitiatorChap};
use super::keys::{self, Params, OUR_MRDSL};
use super::pdu::{self, op, read_pdu, write_pdu, Digests, Pdu, PduError, BHS_LEN};
use crate::scsi::fields::get16;

/// A login must complete within this time (LIO and open-iscsi use 15 s).
pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest data segment of a login PDU (RFC 7143 §11.12.6: 8192 during login).
const LOGIN_MAX_DATA: usize = 8192;
/// The largest key text of a login, continuations reassembled.
const LOGIN_MAX_TEXT: usize = 64 * 1024;
/// The most login requests one login may take.
const LOGIN_MAX_PDUS: usize = 32;
/// The CmdSN window this target advertises.
pub const CMD_WINDOW: u32 = 32;

/// Login status class and detail (RFC 7143 §11.13.5).
pub mod status {
    pub const INITIATOR_ERROR: u16 = 0x0200;
    pub const AUTH_FAILURE: u16 = 0x0201;
    pub const AUTHORIZATION_FAILURE: u16 = 0x0202;
    pub const NOT_FOUND: u16 = 0x0203;
    pub const UNSUPPORTED_VERSION: u16 = 0x0205;
    pub const MISSING_PARAMETER: u16 = 0x0207;
    pub const CANT_INCLUDE: u16 = 0x0208;
    pub const SESSION_TYPE_UNSUPPORTED: u16 = 0x0209;
    pub const NO_SESSION: u16 = 0x020a;
    pub const TARGET_ERROR: u16 = 0x0300;
    pub const OUT_OF_RESOURCES: u16 = 0x0302;
}

/// The connection a login runs on: a byte stream whose reads can be bounded in time.
pub trait Wire: Read + Write {
    /// Bounds each following read to `timeout` (`None`: unbounded).
    fn set_read_deadline(&mut self, timeout: Option<Duration>) -> io::Result<()>;
}

impl Wire for TcpStream {
    fn set_read_deadline(&mut self, timeout: Option<Duration>) -> io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

/// What kind of session the login opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// SendTargets only (RFC 7143 §4.3).
    Discovery,
    /// The disk at LUN 0.
    Normal,
}

/// A completed login.
#[derive(Clone, Debug)]
pub struct LoggedIn {
    pub kind: SessionKind,
    /// The InitiatorName, lower-cased (RFC 3722 normalisation of the ASCII range).
    pub initiator: String,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub params: Params,
    /// The next CmdSN expected (the login's CmdSN: login requests are immediate).
    pub exp_cmd_sn: u32,
    /// The next StatSN to send.
    pub stat_sn: u32,
    /// How the initiator authenticated: `None`, `CHAP` or `mutual CHAP`.
    pub auth: &'static str,
}

/// Why a login failed.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    /// The connection failed, closed or timed out.
    #[error("connection: {0}")]
    Io(#[from] io::Error),
    /// The PDU could not be read (digest, length).
    #[error("{0}")]
    Pdu(#[from] PduError),
    /// Refused with a login status (sent before closing).
    #[error("refused with status {status:04x}: {why}")]
    Refused { status: u16, why: String },
}

/// Admits a session of (kind, initiator, ISID, TSIH): its TSIH, or the refusing status.
pub type Admit<'a> = &'a dyn Fn(SessionKind, &str, [u8; 6], u16) -> Result<u16, u16>;

/// What the login checks the initiator against.
pub struct Policy<'a> {
    pub target_name: &'a str,
    /// Whether the initiator name may log in.
    pub allows: &'a dyn Fn(&str) -> bool,
    /// Admits a session of (kind, initiator, ISID, TSIH) at the end of the login: its TSIH,
    /// or the status refusing it (too many sessions, MC/S).
    pub admit: Admit<'a>,
    /// The initiators that must authenticate with CHAP, by lower-cased name.
    pub chap: &'a HashMap<String, InitiatorChap>,
}

/// Where the CHAP exchange (RFC 7143 §12.1.3) stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Auth {
    /// The initiator has no CHAP configured: AuthMethod=None.
    NotRequired,
    /// CHAP is required; AuthMethod=CHAP not agreed yet.
    Required,
    /// AuthMethod=CHAP agreed; CHAP_A expected.
    Agreed,
    /// The challenge sent; CHAP_N and CHAP_R expected.
    Challenged { id: u8, challenge: Vec<u8> },
    /// The initiator proved it knows its secret (and `mutual`: the target answered its
    /// challenge).
    Done { mutual: bool },
}

/// One login request's fields.
#[derive(Clone, Copy)]
struct Request {
    transit: bool,
    cont: bool,
    csg: u8,
    nsg: u8,
    isid: [u8; 6],
    tsih: u16,
    itt: u32,
    cmd_sn: u32,
    exp_stat_sn: u32,
}

impl Request {
    fn of(p: &Pdu) -> Self {
        let f = p.flags();
        let mut isid = [0; 6];
        isid.copy_from_slice(&p.bhs[8..14]);
        Request {
            transit: f & 0x80 != 0,
            cont: f & 0x40 != 0,
            csg: (f >> 2) & 3,
            nsg: f & 3,
            isid,
            tsih: get16(&p.bhs, 14).unwrap_or(0),
            itt: p.itt(),
            cmd_sn: p.cmd_sn(),
            exp_stat_sn: p.u32_at(28),
        }
    }
}

/// The login in progress.
struct Login<'p> {
    policy: &'p Policy<'p>,
    first: Option<Request>,
    kind: SessionKind,
    initiator: String,
    params: Params,
    /// Whether our MaxRecvDataSegmentLength was declared already.
    declared: bool,
    /// Whether the TargetPortalGroupTag was sent already.
    sent_tpgt: bool,
    auth: Auth,
}

fn refuse(status: u16, why: impl Into<String>) -> LoginError {
    LoginError::Refused {
        status,
        why: why.into(),
    }
}

/// The initiator's mutual challenge: its identifier and challenge, refused when malformed,
/// too long, or our own challenge reflected (RFC 7143 §12.1.3).
fn mutual_challenge(i: &str, c: &str, ours: &[u8]) -> Result<(u8, Vec<u8>), String> {
    let id = keys_number(i)
        .and_then(|n| u8::try_from(n).ok())
        .ok_or_else(|| format!("CHAP_I={i:.16} is not 0..255"))?;
    let challenge = chap::decode_binary(c)
        .filter(|c| c.len() <= chap::MAX_CHALLENGE)
        .ok_or_else(|| {
            format!(
                "CHAP_C is not a binary value of 1..{} bytes",
                chap::MAX_CHALLENGE
            )
        })?;
    if chap::same(&challenge, ours) {
        return Err("CHAP_C reflects the target's challenge".into());
    }
    Ok((id, challenge))
}

fn keys_number(v: &str) -> Option<u32> {
    match v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => v.parse().ok(),
    }
}

/// Runs the login on `stream`: reads login requests until the initiator moves to the full
/// feature phase, answering each; on a refusal sends the status and returns the error.
pub fn login(stream: &mut impl Wire, policy: &Policy) -> Result<LoggedIn, LoginError> {
    let deadline = Instant::now() + LOGIN_TIMEOUT;
    let mut l = Login {
        policy,
        first: None,
        kind: SessionKind::Normal,
        initiator: String::new(),
        params: Params::default(),
        declared: false,
        sent_tpgt: false,
        auth: Auth::NotRequired,
    };
    let mut text = Vec::new();
    for _ in 0..LOGIN_MAX_PDUS {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "login took too long").into());
        }
        stream.set_read_deadline(Some(left))?;
        let p = read_pdu(stream, Digests::default(), LOGIN_MAX_DATA)?;
        if p.opcode() != op::LOGIN_REQUEST {
            return Err(l.fail(
                stream,
                &Request::of(&p),
                refuse(status::INITIATOR_ERROR, "not a login request"),
            ));
        }
        let req = Request::of(&p);
        text.extend_from_slice(&p.data);
        let step = if text.len() > LOGIN_MAX_TEXT {
            Err(refuse(status::INITIATOR_ERROR, "login text too long"))
        } else if req.cont {
            // RFC 7143 §6.3: a C-bit request gets an empty response; the text continues.
            l.respond(stream, &req, false, req.csg, &[], 0, 0)
                .map(|_| None)
                .map_err(LoginError::from)
        } else {
            let pairs = keys::parse(&std::mem::take(&mut text))
                .ok_or_else(|| refuse(status::INITIATOR_ERROR, "malformed key text"));
            pairs.and_then(|pairs| l.step(stream, &req, &pairs))
        };
        match step {
            Ok(Some(done)) => return Ok(done),
            Ok(None) => {}
            Err(e) => return Err(l.fail(stream, &req, e)),
        }
    }
    let e = refuse(status::INITIATOR_ERROR, "too many login requests");
    Err(e)
}

impl Login<'_> {
    /// Sends the refusal's status (if it is one) and returns the error.
    fn fail(&self, stream: &mut impl Wire, req: &Request, e: LoginError) -> LoginError {
        if let LoginError::Refused { status, .. } = &e {
            let _ = self.respond(stream, req, false, req.csg, &[], 0, *status);
        }
        e
    }

    /// One complete request's keys: checks, negotiation, the response; `Some` when the login
    /// is done.
    fn step(
        &mut self,
        stream: &mut impl Wire,
        req: &Request,
        pairs: &[(String, String)],
    ) -> Result<Option<LoggedIn>, LoginError> {
        if self.first.is_none() {
            self.first_request(req, pairs)?;
        }
        if req.csg == 2 || req.csg == 3 || (req.transit && (req.nsg == 2 || req.nsg <= req.csg)) {
            return Err(refuse(status::INITIATOR_ERROR, "invalid login stage"));
        }
        let mut answer = Vec::new();
        if self.kind == SessionKind::Normal && !self.sent_tpgt {
            answer.push(("TargetPortalGroupTag".to_string(), "1".to_string()));
            self.sent_tpgt = true;
        }
        if !matches!(self.auth, Auth::NotRequired | Auth::Done { .. }) {
            self.authenticate(req, pairs, &mut answer)?;
        } else {
            for (k, v) in pairs {
                if k == "AuthMethod" {
                    answer.push((k.clone(), self.auth_method(v)?));
                } else if k.starts_with("CHAP_") {
                    return Err(refuse(
                        status::INITIATOR_ERROR,
                        format!("{k} outside a CHAP exchange"),
                    ));
                } else if let Some(a) = keys::negotiate(k, v, &mut self.params) {
                    answer.push((k.clone(), a));
                }
            }
        }
        // Until CHAP completes the target stays in the security stage (RFC 7143 §6.3: it may
        // decline a transit).
        let transit = req.transit && matches!(self.auth, Auth::NotRequired | Auth::Done { .. });
        if (req.csg == 1 || (transit && req.nsg == 3)) && !self.declared {
            answer.push(("MaxRecvDataSegmentLength".into(), OUR_MRDSL.to_string()));
            self.declared = true;
        }
        if transit && req.nsg == 3 {
            let first = self.first.as_ref().unwrap_or(req);
            let tsih = (self.policy.admit)(self.kind, &self.initiator, first.isid, first.tsih)
                .map_err(|s| refuse(s, "session not admitted"))?;
            self.respond(stream, req, true, req.csg, &keys::encode(&answer), tsih, 0)?;
            return Ok(Some(LoggedIn {
                kind: self.kind,
                initiator: self.initiator.clone(),
                isid: first.isid,
                tsih,
                params: self.params,
                exp_cmd_sn: first.cmd_sn,
                stat_sn: req.exp_stat_sn.wrapping_add(1),
                auth: match self.auth {
                    Auth::Done { mutual: true } => "mutual CHAP",
                    Auth::Done { mutual: false } => "CHAP",
                    _ => "None",
                },
            }));
        }
        self.respond(stream, req, transit, req.csg, &keys::encode(&answer), 0, 0)?;
        Ok(None)
    }

    /// The first request's names: InitiatorName, SessionType, TargetName, the access check.
    fn first_request(
        &mut self,
        req: &Request,
        pairs: &[(String, String)],
    ) -> Result<(), LoginError> {
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let name = get("InitiatorName")
            .ok_or_else(|| refuse(status::MISSING_PARAMETER, "no InitiatorName"))?;
        self.initiator = name.to_ascii_lowercase();
        if !crate::config::valid_iscsi_name(&self.initiator) {
            return Err(refuse(
                status::INITIATOR_ERROR,
                format!("InitiatorName {name:?} is not an iSCSI name"),
            ));
        }
        self.kind = match get("SessionType").unwrap_or("Normal") {
            "Normal" => SessionKind::Normal,
            "Discovery" => SessionKind::Discovery,
            other => {
                return Err(refuse(
                    status::SESSION_TYPE_UNSUPPORTED,
                    format!("SessionType={other}"),
                ))
            }
        };
        if !(self.policy.allows)(&self.initiator) {
            return Err(refuse(
                status::AUTHORIZATION_FAILURE,
                format!("initiator {} is not allowed to log in", self.initiator),
            ));
        }
        if self.kind == SessionKind::Normal {
            let target = get("TargetName")
                .ok_or_else(|| refuse(status::MISSING_PARAMETER, "no TargetName"))?;
            if !target.eq_ignore_ascii_case(self.policy.target_name) {
                return Err(refuse(status::NOT_FOUND, format!("no target {target:?}")));
            }
            if req.tsih != 0 {
                return Err(refuse(
                    status::NO_SESSION,
                    "adding a connection to a session (MC/S) is not provided",
                ));
            }
        }
        if self.policy.chap.contains_key(&self.initiator) {
            if req.csg != 0 {
                return Err(refuse(
                    status::AUTH_FAILURE,
                    format!(
                        "initiator {} must authenticate with CHAP: it skipped the security stage",
                        self.initiator
                    ),
                ));
            }
            self.auth = Auth::Required;
        }
        self.first = Some(*req);
        Ok(())
    }

    /// AuthMethod without CHAP configured: None if offered.
    fn auth_method(&self, offer: &str) -> Result<String, LoginError> {
        if offer.split(',').any(|m| m == "None") {
            return Ok("None".into());
        }
        Err(refuse(
            status::AUTH_FAILURE,
            format!(
                "AuthMethod={offer} from initiator {}, which has no CHAP configured: \
                 AuthMethod=None only",
                self.initiator
            ),
        ))
    }

    /// One request of the CHAP exchange (security stage): AuthMethod, then CHAP_A (answered
    /// with CHAP_A, CHAP_I, CHAP_C), then CHAP_N and CHAP_R (checked; with CHAP_I and CHAP_C
    /// for mutual CHAP, answered with the target's CHAP_N and CHAP_R).
    fn authenticate(
        &mut self,
        req: &Request,
        pairs: &[(String, String)],
        answer: &mut Vec<(String, String)>,
    ) -> Result<(), LoginError> {
        let failed = |why: String| refuse(status::AUTH_FAILURE, why);
        let who = self.initiator.clone();
        if req.csg != 0 {
            return Err(failed(format!("initiator {who}: CHAP not completed")));
        }
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        if self.auth == Auth::Required && get("AuthMethod").is_none() {
            return Err(failed(format!(
                "initiator {who} must authenticate with CHAP: it offered no AuthMethod"
            )));
        }
        let mut negotiated = false;
        for (k, v) in pairs {
            match k.as_str() {
                "AuthMethod" if self.auth == Auth::Required => {
                    if !v.split(',').any(|m| m == "CHAP") {
                        return Err(failed(format!(
                            "initiator {who} must authenticate with CHAP: it offered AuthMethod={v}"
                        )));
                    }
                    answer.push((k.clone(), "CHAP".into()));
                    self.auth = Auth::Agreed;
                }
                "CHAP_A" if self.auth == Auth::Agreed => {
                    if !v.split(',').any(|a| a == chap::MD5) {
                        return Err(failed(format!(
                            "initiator {who}: CHAP_A={v}: only MD5 (5) is provided"
                        )));
                    }
                    self.challenge(answer)?;
                    negotiated = true;
                }
                "CHAP_N" | "CHAP_R" | "CHAP_I" | "CHAP_C"
                    if matches!(self.auth, Auth::Challenged { .. }) => {}
                k if k != "AuthMethod" && !k.starts_with("CHAP_") => {
                    if let Some(a) = keys::negotiate(k, v, &mut self.params) {
                        answer.push((k.to_string(), a));
                    }
                }
                _ => {
                    return Err(failed(format!(
                        "initiator {who}: {k} out of sequence in the CHAP exchange"
                    )))
                }
            }
        }
        if matches!(self.auth, Auth::Challenged { .. }) && !negotiated {
            self.check_response(get, answer)?;
        }
        Ok(())
    }

    /// Sends CHAP_A, a random identifier and a random challenge.
    fn challenge(&mut self, answer: &mut Vec<(String, String)>) -> Result<(), LoginError> {
        let random = chap::random_bytes(1 + chap::CHALLENGE_LEN)
            .ok_or_else(|| refuse(status::TARGET_ERROR, "no random bytes for a CHAP challenge"))?;
        let (id, challenge) = (random[0], random[1..].to_vec());
        answer.push(("CHAP_A".into(), chap::MD5.into()));
        answer.push(("CHAP_I".into(), id.to_string()));
        answer.push(("CHAP_C".into(), chap::encode_hex(&challenge)));
        self.auth = Auth::Challenged { id, challenge };
        Ok(())
    }

    /// Checks CHAP_N and CHAP_R; answers a mutual challenge (CHAP_I, CHAP_C).
    fn check_response<'k>(
        &mut self,
        get: impl Fn(&str) -> Option<&'k str>,
        answer: &mut Vec<(String, String)>,
    ) -> Result<(), LoginError> {
        let who = &self.initiator;
        let failed = |why: &str| refuse(status::AUTH_FAILURE, format!("initiator {who}: {why}"));
        let Auth::Challenged { id, challenge } = &self.auth else {
            return Err(failed("no CHAP challenge sent"));
        };
        let Some(creds) = self.policy.chap.get(who) else {
            return Err(failed("no CHAP configured"));
        };
        let (Some(name), Some(r)) = (get("CHAP_N"), get("CHAP_R")) else {
            return Err(failed("CHAP_N and CHAP_R expected"));
        };
        if name != creds.initiator.user {
            return Err(failed("CHAP_N is not the configured chap_user"));
        }
        let expected = chap::response(*id, &creds.initiator.secret, challenge);
        if !chap::same(&chap::decode_binary(r).unwrap_or_default(), &expected) {
            return Err(failed("wrong CHAP_R (not the configured secret)"));
        }
        let mutual = match (get("CHAP_I"), get("CHAP_C")) {
            (None, None) => false,
            (Some(i), Some(c)) => {
                let their = mutual_challenge(i, c, challenge).map_err(|w| failed(&w))?;
                let Some(target) = &creds.target else {
                    return Err(failed(
                        "asked for mutual CHAP, but no target_chap_user is configured",
                    ));
                };
                let r = chap::response(their.0, &target.secret, &their.1);
                answer.push(("CHAP_N".into(), target.user.clone()));
                answer.push(("CHAP_R".into(), chap::encode_hex(&r)));
                true
            }
            _ => return Err(failed("CHAP_I and CHAP_C come together")),
        };
        self.auth = Auth::Done { mutual };
        Ok(())
    }

    /// Sends a login response.
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &self,
        w: &mut impl Write,
        req: &Request,
        transit: bool,
        csg: u8,
        data: &[u8],
        tsih: u16,
        status: u16,
    ) -> io::Result<()> {
        let mut b = [0u8; BHS_LEN];
        b[0] = op::LOGIN_RESPONSE;
        b[1] = (csg << 2) | if transit { 0x80 | req.nsg } else { 0 };
        b[8..14].copy_from_slice(&req.isid);
        b[14..16].copy_from_slice(&tsih.to_be_bytes());
        pdu::put(&mut b, 16, req.itt);
        pdu::put(&mut b, 24, req.exp_stat_sn);
        pdu::put(&mut b, 28, req.cmd_sn);
        pdu::put(&mut b, 32, req.cmd_sn.wrapping_add(CMD_WINDOW - 1));
        b[36..38].copy_from_slice(&status.to_be_bytes());
        write_pdu(w, b, data, Digests::default())
    }
}
