//! The `[iscsi]` settings: where the iSCSI target listens, its name, and which initiators may
//! log in (RFC 7143; the transport is `crate::transport::iscsi`).

use std::net::SocketAddr;

use serde::Deserialize;

/// The default target name is this prefix and the disk's serial, which is stable for the image
/// (its canonical path) and, in cluster mode, for the `disk_id`.
pub const DEFAULT_TARGET_PREFIX: &str = "iqn.2026-12.io.sharedisk:";

/// The longest iSCSI name (RFC 7143 §4.2.7.1: 223 bytes in UTF-8).
const MAX_NAME_LEN: usize = 223;

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
}

/// One `[[iscsi.initiator]]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InitiatorEntry {
    name: String,
}

impl From<IscsiSection> for IscsiConfig {
    fn from(s: IscsiSection) -> Self {
        IscsiConfig {
            listen: s.listen,
            target: s.target,
            initiators: s.initiator.into_iter().map(|i| i.name).collect(),
            allow_any_initiator: s.allow_any_initiator,
        }
    }
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
