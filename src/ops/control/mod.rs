//! The control plane: a Unix socket speaking newline-delimited JSON (one request, one response
//! per line, JSON-RPC 2.0 shaped, so `socat` is a usable client), and `sharedisk ctl`.
//!
//! The control plane reads the daemon through [`Daemon`] and changes PR state only through
//! `Reservations::host`, the same path as a guest's PR OUT.

pub mod access;
pub mod client;
pub mod server;
pub mod view;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, GuestConfig};
use crate::lun::Lun;
use crate::ops::stats::Stats;

/// Error codes on the wire: JSON-RPC's own for malformed requests, and the application's.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    /// The action failed (unknown guest, I/O error, ...).
    pub const FAILED: i64 = 1;
    /// Refused by the reservation rules (sg3_utils' SG_LIB_CAT_RES_CONFLICT).
    pub const RESERVATION_CONFLICT: i64 = 24;
    /// Refused by the permission table: the caller's uid and groups may not call the method
    /// (`access.rs`); nothing was done.
    pub const NOT_PERMITTED: i64 = 13;
}

/// What the control plane needs from the running daemon.
pub trait Daemon: Send + Sync + 'static {
    /// The configuration in effect, runtime guest changes included.
    fn config(&self) -> Config;
    fn lun(&self) -> Arc<Lun>;
    fn stats(&self) -> Arc<Stats>;
    /// The Prometheus text exposition.
    fn metrics(&self) -> String;
    fn uptime(&self) -> Duration;
    /// Cluster mode: the members and their acknowledged state; `None` on one host.
    fn cluster_status(&self) -> Option<serde_json::Value>;
    /// Adds a guest at run time (its sockets listen when this returns); persisted.
    fn add_guest(&self, guest: GuestConfig) -> Result<(), GuestError>;
    /// Removes a guest at run time; a connected one only with `force`, which disconnects it.
    fn remove_guest(&self, name: &str, force: bool) -> Result<(), GuestError>;
    /// The live iSCSI sessions; `None` when no portal is configured.
    fn iscsi_sessions(&self) -> Option<Vec<Arc<crate::transport::iscsi::SessionInfo>>> {
        None
    }
}

/// Why a run-time guest change (`guest add`, `guest remove`) failed or was only half made. On
/// the wire every one is [`code::FAILED`].
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    /// `guest add` of a name the daemon serves already.
    #[error("guest {0:?} exists already")]
    Exists(String),
    /// `guest add` while as many guests as max-shares are served.
    #[error(
        "max-shares is {0} (guests and iSCSI sessions together): remove a guest first, or raise \
         image.max_shares"
    )]
    Full(usize),
    /// `guest add`: the daemon could not serve the guest (the configuration, its sockets).
    #[error(transparent)]
    Serve(Box<dyn std::error::Error + Send + Sync>),
    /// `guest remove` of a name the daemon does not serve.
    #[error("no guest named {0:?}")]
    Unknown(String),
    /// `guest remove` of a connected guest without `force`.
    #[error("guest {0} is connected: stop its QEMU first, or pass --force to disconnect it")]
    Connected(String),
    /// The guest is served, but the run-time guests file could not be written.
    #[error("guest {name} is served, but {}: {source}", path.display())]
    AddedUnsaved {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
    /// The guest is removed, but the run-time guests file could not be written.
    #[error("guest {name} is removed, but {}: {source}", path.display())]
    RemovedUnsaved {
        name: String,
        path: PathBuf,
        source: io::Error,
    },
}

#[cfg(test)]
mod tests;
