//! The daemon binary with guest `vm1` and an iSCSI portal on loopback, as the iSCSI tests start
//! it.

use std::net::SocketAddr;

use super::iscsi_client::{free_port, served_target};
use super::process::DaemonProcess;

/// A daemon with a portal. Fields drop in order: the daemon stops before its directory goes.
pub struct PortalDaemon {
    pub daemon: DaemonProcess,
    /// The portal's address.
    pub addr: SocketAddr,
    /// The target name the daemon logged.
    pub target: String,
    pub _dir: tempfile::TempDir,
}

impl PortalDaemon {
    /// `sharedisk serve` of a 16 MiB image to `vm1`, a portal on a free loopback port admitting
    /// `initiators`, `extra` arguments and `env` (the test hooks' variables) added.
    pub fn start(initiators: &[&str], extra: &[&str], env: &[(&str, &str)]) -> PortalDaemon {
        let dir = tempfile::tempdir().unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let mut args = vec!["--iscsi-listen", &listen];
        for name in initiators {
            args.extend(["--iscsi-initiator", name]);
        }
        args.extend_from_slice(extra);
        let daemon = DaemonProcess::start_full(dir.path(), &["vm1"], "16M", &args, env);
        let target = served_target(&daemon);
        PortalDaemon {
            daemon,
            addr: listen.parse().unwrap(),
            target,
            _dir: dir,
        }
    }
}
