//! What `config check` prints: every setting the daemon would use, defaults filled in.

use std::fmt::Write as _;

use super::{aio_name, ClusterConfig, Config, DEFAULT_TARGET_PREFIX};

impl Config {
    /// What `config check` prints: every setting the daemon would use, defaults filled in.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let opt = |p: &Option<String>| p.clone().unwrap_or_else(|| "-".into());
        let _ = writeln!(s, "image:          {}", self.image.display());
        let _ = writeln!(
            s,
            "size:           {}",
            self.size
                .map(|b| format!("{b} bytes if missing"))
                .unwrap_or_else(|| "the image must exist".into())
        );
        let _ = writeln!(s, "read-only:      {}", yes_no(self.read_only));
        let _ = writeln!(s, "O_DIRECT:       {}", yes_no(self.direct));
        let _ = writeln!(s, "aio:            {}", aio_name(self.aio()));
        let _ = writeln!(s, "poll:           {} µs", self.poll_us);
        let _ = writeln!(s, "state file:     {}", self.state_path().display());
        let _ = writeln!(s, "max-shares:     {}", self.max_shares);
        let _ = writeln!(s, "socket dir:     {}", self.socket_dir.display());
        let _ = writeln!(s, "socket group:   {}", opt(&self.socket_group));
        let _ = writeln!(
            s,
            "socket mode:    {}",
            self.socket_mode
                .map(|m| format!("{m:04o}"))
                .unwrap_or_else(|| "umask".into())
        );
        if self.socket_world_access {
            let _ = writeln!(s, "socket access:  every local user allowed");
        }
        let _ = writeln!(
            s,
            "control socket: {} (mode {}, group {})",
            self.control_socket_path().display(),
            if self.control_socket_group().is_some() {
                "0660"
            } else {
                "0600"
            },
            self.control_socket_group().unwrap_or("-")
        );
        let _ = writeln!(
            s,
            "control access: change: root, the daemon's user{}; read: the same{}",
            self.admin_group
                .as_ref()
                .map(|g| format!(", group {g}"))
                .unwrap_or_default(),
            self.control_group
                .as_ref()
                .map(|g| format!(", group {g}"))
                .unwrap_or_default(),
        );
        let _ = writeln!(
            s,
            "metrics:        {}",
            self.metrics_listen
                .map(|a| format!("http://{a}/metrics"))
                .unwrap_or_else(|| "control socket only".into())
        );
        describe_cluster(&mut s, self.cluster.as_ref());
        self.describe_iscsi(&mut s);
        self.describe_guests(&mut s);
        s
    }

    /// Cluster mode's `disk_id`, which the LU's serial comes from; `None` on one host (and in a
    /// build without the `cluster` feature, which does not start with `[cluster]`).
    fn cluster_disk_id(&self) -> Option<&str> {
        #[cfg(feature = "cluster")]
        return self.cluster.as_ref().map(|c| c.disk_id.as_str());
        #[cfg(not(feature = "cluster"))]
        None
    }

    /// The `iscsi:` lines: portals, target name, who may log in.
    fn describe_iscsi(&self, s: &mut String) {
        let Some(i) = &self.iscsi else {
            let _ = writeln!(s, "iscsi:          no");
            return;
        };
        let listen: Vec<String> = i.listen.iter().map(|a| a.to_string()).collect();
        let _ = writeln!(
            s,
            "iscsi:          {} (portal group 1, the disk at LUN 0)",
            listen.join(", ")
        );
        let _ = writeln!(
            s,
            "iscsi target:   {}",
            match (&i.target, std::fs::canonicalize(&self.image)) {
                (Some(_), _) => i.target_name(""),
                // Cluster mode: the serial comes from the disk_id, the same on every host
                // (`Lun::identified_by`).
                (None, _) if self.cluster_disk_id().is_some() => {
                    let id = self.cluster_disk_id().unwrap_or_default();
                    i.target_name(&crate::lun::serial_for(crate::lun::fnv1a(id.as_bytes())))
                }
                // The serial the LU will have: from the image's canonical path (`Lun::new`).
                (None, Ok(path)) => {
                    let id = crate::lun::fnv1a(path.as_os_str().as_encoded_bytes());
                    i.target_name(&crate::lun::serial_for(id))
                }
                (None, Err(_)) =>
                    format!("{DEFAULT_TARGET_PREFIX}<disk serial> (the image does not exist yet)"),
            }
        );
        if i.allow_any_initiator {
            let _ = writeln!(s, "iscsi access:   any initiator");
        } else {
            let named: Vec<String> = i
                .initiators
                .iter()
                .map(|n| {
                    let chap = i.chap.iter().find(|c| c.initiator.eq_ignore_ascii_case(n));
                    match chap {
                        Some(c) if c.target_chap.is_some() => format!("{n} (mutual CHAP)"),
                        Some(_) => format!("{n} (CHAP)"),
                        None => n.clone(),
                    }
                })
                .collect();
            let _ = writeln!(s, "iscsi access:   {}", named.join(", "));
        }
        let l = &i.limits;
        let _ = writeln!(
            s,
            "iscsi limits:   {} sessions, {} logins in progress, {} discovery sessions (idle \
             {} s), send timeout {} s",
            l.max_sessions,
            l.max_logins,
            l.max_discovery_sessions,
            l.discovery_idle_timeout.as_secs(),
            l.send_timeout.as_secs()
        );
    }

    /// The `guests:` count, then a line per guest: its sockets, queues and whether it writes.
    fn describe_guests(&self, s: &mut String) {
        let _ = writeln!(s, "guests:         {}", self.guests.len());
        for g in &self.guests {
            let scsi = self.scsi && g.scsi;
            let _ = writeln!(
                s,
                "  {:<16} {}{} queues {}{}",
                g.name,
                self.blk_socket(&g.name).display(),
                if scsi {
                    format!(" {}", self.scsi_socket(&g.name).display())
                } else {
                    String::new()
                },
                g.queues,
                if g.read_only || self.read_only {
                    " read-only"
                } else {
                    ""
                }
            );
        }
    }
}

/// The `cluster:` line, and in cluster mode the lease and what a lost lease costs.
fn describe_cluster(s: &mut String, cluster: Option<&ClusterConfig>) {
    match cluster {
        None => {
            let _ = writeln!(
                s,
                "cluster:        no (this daemon alone arbitrates the disk)"
            );
        }
        Some(c) => s.push_str(&c.describe()),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}
