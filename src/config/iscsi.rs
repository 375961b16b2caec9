//! The `[iscsi]` settings: where the iSCSI target listens, its name, and which initiators may
//! log in (RFC 7143; the transport is `crate::transport::iscsi`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::transport::iscsi::chap::{Credentials, InitiatorChap};

/// The default target name is this prefix and the disk's serial, which is stable for the image
/// (its canonical path) and, in cluster mode, for the `disk_id`.
pub const DEFAULT_TARGET_PREFIX: &str = "iqn.2026-12.io.sharedisk:";

/// The longest iSCSI name (RFC 7143 §4.2.7.1: 223 bytes in UTF-8).
const MAX_NAME_LEN: usize = 223;

/// The shortest CHAP secret (RFC 7143 §12.1.3: at least 96 bits).
pub const MIN_CHAP_SECRET: usize = 12;
/// The longest CHAP secret (open-iscsi and libiscsi send at most 255 bytes).
pub const MAX_CHAP_SECRET: usize = 255;
/// The longest CHAP name.
const MAX_CHAP_USER: usize = 255;

/// One side's CHAP settings: a name and the file holding its secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapFiles {
    pub user: String,
    pub secret_file: PathBuf,
}

/// The CHAP settings of one `[[iscsi.initiator]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChapSettings {
    /// The initiator name they apply to.
    pub initiator: String,
    /// `chap_user`, `chap_secret_file`: what the initiator authenticates with.
    pub initiator_chap: ChapFiles,
    /// `target_chap_user`, `target_chap_secret_file`: what the target answers a mutual
    /// challenge with.
    pub target_chap: Option<ChapFiles>,
}

/// How many connections of each kind a portal serves at once, and how long it waits on an
/// idle discovery session or on an initiator that stops reading (docs/operations.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortalLimits {
    /// `max_sessions`: Normal sessions (I_T nexuses); maxShares bounds them with the guests.
    pub max_sessions: usize,
    /// `max_logins`: connections still in their login phase. Beyond, the oldest login of the
    /// source address with the most logins in progress is closed.
    pub max_logins: usize,
    /// `max_discovery_sessions`: discovery sessions. Beyond, the oldest discovery session of
    /// the source address with the most of them is closed.
    pub max_discovery_sessions: usize,
    /// `discovery_idle_timeout_s`: a discovery session that sends nothing this long is closed.
    pub discovery_idle_timeout: Duration,
    /// `send_timeout_s`: a session whose initiator takes nothing we send for this long is
    /// dropped (its task set ends as at any I_T nexus loss).
    pub send_timeout: Duration,
}

impl Default for PortalLimits {
    fn default() -> Self {
        PortalLimits {
            max_sessions: 128,
            max_logins: 128,
            max_discovery_sessions: 16,
            discovery_idle_timeout: Duration::from_secs(30),
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// The largest value of a limit (sessions, logins, discovery sessions), and of a timeout in
/// seconds.
const MAX_LIMIT: usize = 4096;
const MAX_TIMEOUT_S: u64 = 3600;

/// What `[iscsi]` (or `--iscsi-listen`/`--iscsi-initiator`) configures.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct IscsiConfig {
    /// Portals (TCP addresses) the target listens on; one portal group, tag 1.
    pub listen: Vec<SocketAddr>,
    /// The target name; `None`: [`DEFAULT_TARGET_PREFIX`] and the disk's serial.
    pub target: Option<String>,
    /// Initiator names that may log in (compared lower-cased, RFC 3722).
    pub initiators: Vec<String>,
    /// Every initiator may log in (`allow_any_initiator = true`): no name list.
    pub allow_any_initiator: bool,
    /// Initiators that must authenticate with CHAP.
    pub chap: Vec<ChapSettings>,
    /// Connections and timeouts of the portals.
    pub limits: PortalLimits,
}

/// `[iscsi]` in the file; unknown keys are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct IscsiSection {
    #[serde(default)]
    listen: Vec<SocketAddr>,
    target: Option<String>,
    #[serde(default)]
    initiator: Vec<InitiatorEntry>,
    #[serde(default)]
    allow_any_initiator: bool,
    max_sessions: Option<usize>,
    max_logins: Option<usize>,
    max_discovery_sessions: Option<usize>,
    discovery_idle_timeout_s: Option<u64>,
    send_timeout_s: Option<u64>,
}

/// One `[[iscsi.initiator]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitiatorEntry {
    name: String,
    chap_user: Option<String>,
    chap_secret_file: Option<PathBuf>,
    target_chap_user: Option<String>,
    target_chap_secret_file: Option<PathBuf>,
}

/// A user and a secret file given together, or neither; `Err` names the missing key.
fn pair(
    user: Option<String>,
    file: Option<PathBuf>,
    keys: (&str, &str),
) -> Result<Option<ChapFiles>, String> {
    match (user, file) {
        (Some(user), Some(secret_file)) => Ok(Some(ChapFiles { user, secret_file })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(format!("`{}` needs `{}`", keys.0, keys.1)),
        (None, Some(_)) => Err(format!("`{}` needs `{}`", keys.1, keys.0)),
    }
}

impl IscsiSection {
    /// The settings, relative secret file paths made absolute by `rel`.
    pub(super) fn into_config(
        self,
        rel: &dyn Fn(PathBuf) -> PathBuf,
    ) -> Result<IscsiConfig, String> {
        let d = PortalLimits::default();
        let secs = |s: Option<u64>, default: Duration| s.map_or(default, Duration::from_secs);
        let mut c = IscsiConfig {
            listen: self.listen,
            target: self.target,
            allow_any_initiator: self.allow_any_initiator,
            limits: PortalLimits {
                max_sessions: self.max_sessions.unwrap_or(d.max_sessions),
                max_logins: self.max_logins.unwrap_or(d.max_logins),
                max_discovery_sessions: self
                    .max_discovery_sessions
                    .unwrap_or(d.max_discovery_sessions),
                discovery_idle_timeout: secs(
                    self.discovery_idle_timeout_s,
                    d.discovery_idle_timeout,
                ),
                send_timeout: secs(self.send_timeout_s, d.send_timeout),
            },
            ..Default::default()
        };
        for i in self.initiator {
            let at = |e: String| format!("[[iscsi.initiator]] {:?}: {e}", i.name);
            let ours = pair(
                i.chap_user,
                i.chap_secret_file,
                ("chap_user", "chap_secret_file"),
            )
            .map_err(at)?;
            let theirs = pair(
                i.target_chap_user,
                i.target_chap_secret_file,
                ("target_chap_user", "target_chap_secret_file"),
            )
            .map_err(at)?;
            let rel_files = |f: ChapFiles| ChapFiles {
                user: f.user,
                secret_file: rel(f.secret_file),
            };
            match (ours, theirs) {
                (Some(o), t) => c.chap.push(ChapSettings {
                    initiator: i.name.to_ascii_lowercase(),
                    initiator_chap: rel_files(o),
                    target_chap: t.map(rel_files),
                }),
                (None, Some(_)) => {
                    return Err(at(
                        "mutual CHAP (`target_chap_user`) needs the initiator's CHAP \
                         (`chap_user`, `chap_secret_file`)"
                            .into(),
                    ))
                }
                (None, None) => {}
            }
            c.initiators.push(i.name);
        }
        Ok(c)
    }
}

impl PortalLimits {
    /// Each count 1..=4096, each timeout 1..=3600 s.
    fn validate(&self) -> Result<(), String> {
        for (key, n) in [
            ("max_sessions", self.max_sessions),
            ("max_logins", self.max_logins),
            ("max_discovery_sessions", self.max_discovery_sessions),
        ] {
            if !(1..=MAX_LIMIT).contains(&n) {
                return Err(format!("`{key}` must be 1 to {MAX_LIMIT}"));
            }
        }
        for (key, t) in [
            ("discovery_idle_timeout_s", self.discovery_idle_timeout),
            ("send_timeout_s", self.send_timeout),
        ] {
            if !(1..=MAX_TIMEOUT_S).contains(&t.as_secs()) {
                return Err(format!("`{key}` must be 1 to {MAX_TIMEOUT_S} seconds"));
            }
        }
        Ok(())
    }
}

/// The largest secret file read.
const MAX_SECRET_FILE: u64 = 4096;

/// A CHAP secret from `path`: a regular file (checked on the opened file) readable by its owner
/// only, one line of [`MIN_CHAP_SECRET`]..=[`MAX_CHAP_SECRET`] bytes (its line end dropped).
pub fn read_chap_secret(path: &Path) -> Result<Vec<u8>, String> {
    use crate::util::secret_file::{read_checked, FileCheckError};
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let data = read_checked(path, true, MAX_SECRET_FILE).map_err(|e| match e {
        FileCheckError::TooOpen { mode } => at(&format_args!(
            "a CHAP secret readable by group or others (mode {mode:o}): chmod 600 it"
        )),
        e => at(&e),
    })?;
    let line = data
        .strip_suffix(b"\n")
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .unwrap_or(&data);
    if line.contains(&b'\n') {
        return Err(at(&"a CHAP secret file holds one line"));
    }
    if line.len() < MIN_CHAP_SECRET || line.len() > MAX_CHAP_SECRET {
        return Err(at(&format_args!(
            "the CHAP secret is {} bytes: RFC 7143 §12.1.3 asks for at least {MIN_CHAP_SECRET} \
             (16 or more recommended), at most {MAX_CHAP_SECRET} are accepted",
            line.len()
        )));
    }
    Ok(line.to_vec())
}

fn valid_chap_user(u: &str) -> bool {
    !u.is_empty() && u.len() <= MAX_CHAP_USER && u.bytes().all(|b| b.is_ascii_graphic())
}

/// Whether `name` is an iSCSI name this target accepts: `iqn.`, `eui.` or `naa.` followed by
/// the characters RFC 3722 leaves after normalisation, at most 223 bytes.
pub fn valid_iscsi_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    let typed = ["iqn.", "eui.", "naa."]
        .iter()
        .any(|p| lower.starts_with(p) && lower.len() > p.len());
    typed
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':'))
}

impl IscsiConfig {
    /// Checks the settings; the error says what to change.
    pub fn validate(&self) -> Result<(), String> {
        if self.listen.is_empty() {
            return Err("no portal: give `listen = [\"ADDR:PORT\"]` or --iscsi-listen".into());
        }
        if let Some(t) = &self.target {
            if !valid_iscsi_name(t) {
                return Err(format!(
                    "target {t:?} is not an iSCSI name (iqn./eui./naa., at most \
                     {MAX_NAME_LEN} bytes of [A-Za-z0-9.-:])"
                ));
            }
        }
        for n in &self.initiators {
            if !valid_iscsi_name(n) {
                return Err(format!(
                    "initiator {n:?} is not an iSCSI name (iqn./eui./naa., at most \
                     {MAX_NAME_LEN} bytes of [A-Za-z0-9.-:])"
                ));
            }
        }
        self.limits.validate()?;
        self.load_chap()?;
        match (self.initiators.is_empty(), self.allow_any_initiator) {
            (true, false) => Err(
                "no initiator may log in: list them (`[[iscsi.initiator]] name = \"iqn...\"`, \
                 --iscsi-initiator) or set `allow_any_initiator = true`"
                    .into(),
            ),
            (false, true) => Err(
                "`allow_any_initiator = true` and a list of initiators: keep one of the two".into(),
            ),
            _ => Ok(()),
        }
    }

    /// The CHAP credentials of each initiator that must use CHAP (by lower-cased name), the
    /// secrets read and checked; the error says what to change.
    pub fn load_chap(&self) -> Result<HashMap<String, InitiatorChap>, String> {
        let mut out = HashMap::new();
        for c in &self.chap {
            let at = |e: String| format!("[[iscsi.initiator]] {:?}: {e}", c.initiator);
            let load = |f: &ChapFiles, key: &str| -> Result<Credentials, String> {
                if !valid_chap_user(&f.user) {
                    return Err(at(format!(
                        "`{key}` {:?}: 1 to {MAX_CHAP_USER} printable ASCII characters",
                        f.user
                    )));
                }
                let secret = read_chap_secret(&f.secret_file).map_err(at)?;
                Ok(Credentials {
                    user: f.user.clone(),
                    secret,
                })
            };
            let initiator = load(&c.initiator_chap, "chap_user")?;
            let target = match &c.target_chap {
                Some(t) => Some(load(t, "target_chap_user")?),
                None => None,
            };
            if target
                .as_ref()
                .is_some_and(|t| t.secret == initiator.secret)
            {
                return Err(at("the target's CHAP secret is the initiator's: RFC 7143 \
                               §12.1.3 forbids one secret for both directions"
                    .into()));
            }
            if out
                .insert(c.initiator.clone(), InitiatorChap { initiator, target })
                .is_some()
            {
                return Err(at("CHAP given twice for this initiator".into()));
            }
        }
        Ok(out)
    }

    /// Whether `initiator` may log in.
    pub fn allows(&self, initiator: &str) -> bool {
        self.allow_any_initiator
            || self
                .initiators
                .iter()
                .any(|n| n.eq_ignore_ascii_case(initiator))
    }

    /// The target name: the configured one, else the default for a disk of serial `serial`.
    pub fn target_name(&self, serial: &str) -> String {
        match &self.target {
            Some(t) => t.to_ascii_lowercase(),
            None => format!("{DEFAULT_TARGET_PREFIX}{}", serial.to_ascii_lowercase()),
        }
    }
}
