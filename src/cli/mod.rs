//! The command line, as a library item so that it can be tested and fuzzed without the binary.
//! `main.rs` only calls [`Cli::parse`] and dispatches.

pub mod out;
pub mod qemu;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, parse_mode, parse_size, Flags};
use crate::ops::control::client::CtlCommand;

#[derive(Parser)]
#[command(
    version,
    about = "Share one disk image between QEMU guests, with SCSI-3 persistent reservations"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

// Parsed once at start: the size of `Serve` costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum Command {
    /// Serve an image to the named guests until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Ask a running daemon (its control socket), or change it.
    Ctl(CtlArgs),
    /// Persistent reservation state with the daemon stopped.
    Pr {
        #[command(subcommand)]
        command: PrOffline,
    },
    /// Check a configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print what attaches one guest to a running daemon: QEMU flags for the QEMU named by
    /// $SHAREDISK_QEMU (default: qemu-system-x86_64 on the PATH), or libvirt domain XML.
    QemuArgs(QemuArgsArgs),
}

#[derive(Args)]
pub struct QemuArgsArgs {
    /// Take the socket directory and the guest's queues and devices from this file.
    #[arg(long, conflicts_with = "socket_dir")]
    pub config: Option<PathBuf>,
    #[arg(long, required_unless_present = "config")]
    pub socket_dir: Option<PathBuf>,
    #[arg(long)]
    pub guest: String,
    /// Guest RAM (must equal QEMU's -m; not used by the libvirt format).
    #[arg(long, default_value = "512M")]
    pub memory: String,
    #[arg(long, value_enum, default_value = "qemu")]
    pub format: QemuFormat,
    /// The flags of a live migration's destination QEMU: the same devices, and `-incoming URI`
    /// (e.g. `defer`, `unix:/run/vm1-migrate.sock`, `tcp:127.0.0.1:4444`); QEMU format only.
    #[arg(long, value_name = "URI")]
    pub incoming: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum QemuFormat {
    Qemu,
    Libvirt,
}

impl QemuArgsArgs {
    pub fn run(self) -> Result<(), String> {
        let (socket_dir, guest) = match (&self.config, &self.socket_dir) {
            (Some(file), _) => {
                let c = config::load_file(file).map_err(|e| e.to_string())?;
                let g = c.guest(&self.guest).cloned().ok_or_else(|| {
                    format!("{}: no guest named {:?}", file.display(), self.guest)
                })?;
                (c.socket_dir.clone(), g)
            }
            (None, Some(dir)) => (dir.clone(), config::GuestConfig::new(&self.guest)),
            (None, None) => return Err("--socket-dir or --config is required".into()),
        };
        let format = match self.format {
            QemuFormat::Qemu => qemu::Format::Qemu,
            QemuFormat::Libvirt => qemu::Format::Libvirt,
        };
        let mut out = qemu::guest_args(&socket_dir, &guest, &self.memory, format)?;
        if let Some(uri) = &self.incoming {
            if format == qemu::Format::Libvirt {
                return Err(
                    "--incoming is for QEMU flags; libvirt starts the destination of \
                            `virsh migrate` itself"
                        .into(),
                );
            }
            out = qemu::incoming(&out, uri)?;
        }
        match format {
            qemu::Format::Qemu => out::println(&out),
            qemu::Format::Libvirt => out::print(&out),
        }
        Ok(())
    }
}

#[derive(Subcommand)]
pub enum PrOffline {
    /// Print the registrations and reservation a state file holds.
    Show {
        /// The state file (`<image>.pr` unless configured otherwise).
        #[arg(long)]
        state: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
pub struct CtlArgs {
    /// The daemon's control socket (before or after the subcommand).
    #[arg(long, default_value = "/run/sharedisk/control.sock", global = true)]
    pub socket: PathBuf,
    /// Print the daemon's JSON answer (schema 1) instead of text (before or after the
    /// subcommand: `ctl --json cluster status` and `ctl cluster status --json` alike).
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for the daemon's answer once the request is sent; without one by then,
    /// ctl exits 4: the request may or may not have been done.
    #[arg(long, global = true, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=86400))]
    pub timeout: u64,
    #[command(subcommand)]
    pub command: CtlCmd,
}

#[derive(Subcommand)]
pub enum CtlCmd {
    /// Image, size, serial, uptime, version, max-shares, state file.
    Status,
    /// Every guest: devices connected, queues, read-only, reconnects, initiator.
    Guests,
    /// Persistent reservations: generation, holder, type, registrations.
    Pr {
        #[command(subcommand)]
        command: CtlPr,
    },
    /// Per guest and device: requests, bytes, conflicts, errors, latency; PR OUT by result.
    Stats,
    /// The Prometheus text exposition.
    Metrics,
    /// Add or remove a guest at run time (kept across restarts).
    Guest {
        #[command(subcommand)]
        command: CtlGuest,
    },
    /// Cluster mode: the members sharing this disk's reservation state through etcd.
    Cluster {
        #[command(subcommand)]
        command: CtlCluster,
    },
    /// The iSCSI portal's live sessions.
    Iscsi {
        #[command(subcommand)]
        command: CtlIscsi,
    },
}

#[derive(Subcommand)]
pub enum CtlIscsi {
    /// Every live session: nexus, ISID, TSIH, portal and peer, since, digests, commands, bytes
    /// in and out, PDU errors.
    Sessions,
}

#[derive(Subcommand)]
pub enum CtlPr {
    /// Show the PR state (as `sg_persist -i -s`, with guest names).
    Show,
    /// Drop every registration and the reservation (unit attention 2A/03 to the registrants).
    Clear {
        #[arg(long)]
        yes: bool,
    },
    /// Fence GUEST: preempt its registration so that it can no longer write (refused, exit 24,
    /// when it could).
    Preempt {
        /// The guest to fence: its registration goes (every registration with its key, with --by).
        #[arg(long, value_name = "GUEST")]
        victim: String,
        /// The registered guest whose PREEMPT the daemon sends, with its key: it takes over a
        /// reservation the victim holds, with the same type.
        #[arg(long, value_name = "GUEST")]
        by: Option<String>,
        /// PREEMPT AND ABORT.
        #[arg(long)]
        abort: bool,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
pub enum CtlGuest {
    /// Serve a new guest (up to max-shares).
    Add {
        name: String,
        #[arg(long)]
        read_only: bool,
        #[arg(long)]
        queues: Option<u16>,
        /// Serve only the vhost-user-blk device.
        #[arg(long)]
        no_scsi: bool,
    },
    /// Stop serving a guest; a connected one only with --force, which disconnects it.
    Remove {
        name: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand)]
pub enum CtlCluster {
    /// This member's read lease and epoch; every member's acknowledged epoch and initiators.
    Status,
    /// After the shared state went back in time (a deleted key, an etcd restored from an older
    /// snapshot: status shows "fault": "regression"), run on the member holding the newest
    /// state: writes it as the newest epoch, and every member serves again.
    Republish {
        #[arg(long)]
        yes: bool,
    },
    /// Remove member NODE whose host is gone (PR OUTs stop waiting for it). Strict mode: the
    /// fence hook fences it first; soft mode: only once it has not renewed for the wait bound.
    Evict {
        node: String,
        #[arg(long)]
        yes: bool,
    },
    /// Admit I/O again after an I/O overrun (an admitted I/O outlived lease end + max_io_ms),
    /// once every admitted I/O has ended and a renewal proved this daemon current.
    Resume,
}

impl CtlCmd {
    pub fn into_command(self) -> CtlCommand {
        match self {
            CtlCmd::Status => CtlCommand::Status,
            CtlCmd::Guests => CtlCommand::Guests,
            CtlCmd::Stats => CtlCommand::Stats,
            CtlCmd::Metrics => CtlCommand::Metrics,
            CtlCmd::Iscsi {
                command: CtlIscsi::Sessions,
            } => CtlCommand::IscsiSessions,
            CtlCmd::Cluster { command } => match command {
                CtlCluster::Status => CtlCommand::ClusterStatus,
                CtlCluster::Republish { yes } => CtlCommand::ClusterRepublish { yes },
                CtlCluster::Evict { node, yes } => CtlCommand::ClusterEvict { node, yes },
                CtlCluster::Resume => CtlCommand::ClusterResume,
            },
            CtlCmd::Pr { command } => match command {
                CtlPr::Show => CtlCommand::PrShow,
                CtlPr::Clear { yes } => CtlCommand::PrClear { yes },
                CtlPr::Preempt {
                    victim,
                    by,
                    abort,
                    yes,
                } => CtlCommand::PrPreempt {
                    victim,
                    by,
                    abort,
                    yes,
                },
            },
            CtlCmd::Guest { command } => match command {
                CtlGuest::Add {
                    name,
                    read_only,
                    queues,
                    no_scsi,
                } => CtlCommand::GuestAdd {
                    name,
                    read_only,
                    queues,
                    no_scsi,
                },
                CtlGuest::Remove { name, force } => CtlCommand::GuestRemove { name, force },
            },
        }
    }
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE and print what the daemon would serve.
    Check { file: PathBuf },
}

#[derive(Args)]
pub struct ServeArgs {
    /// A TOML configuration file; the flags below are shorthand for its settings and may not
    /// contradict it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The raw disk image.
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Create the image with this size (e.g. 1G) if it does not exist.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Where DIR/<guest>-blk.sock and DIR/<guest>-scsi.sock are created (default /run/sharedisk).
    #[arg(long)]
    pub socket_dir: Option<PathBuf>,
    /// Comma-separated guest names; each is one initiator ([A-Za-z0-9_.-]).
    #[arg(long, value_delimiter = ',')]
    pub guests: Option<Vec<String>>,
    /// Serve the image read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Maximum number of guests (like Azure's maxShares; default 16).
    #[arg(long)]
    pub max_shares: Option<usize>,
    /// Reservation state file (default: <image>.pr).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Start with no registrations or reservation, overwriting the state file.
    #[arg(long)]
    pub reset_reservations: bool,
    /// Group owning the guests' sockets.
    #[arg(long)]
    pub socket_group: Option<String>,
    /// Mode of the guests' sockets, in octal (e.g. 0660).
    #[arg(long, value_parser = parse_mode)]
    pub socket_mode: Option<u32>,
    /// Allow a socket mode that lets every local user connect to the guests' sockets (and act
    /// as an initiator); refused without this.
    #[arg(long)]
    pub socket_world_access: bool,
    /// The control socket (default: <socket-dir>/control.sock).
    #[arg(long)]
    pub control_socket: Option<PathBuf>,
    /// Group whose members may also change the daemon through the control socket (pr clear,
    /// pr preempt, guest add/remove, cluster republish/evict/resume); root and the daemon's own
    /// user always may.
    #[arg(long)]
    pub admin_group: Option<String>,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long)]
    pub metrics_listen: Option<SocketAddr>,
    /// Open the image with O_DIRECT, bypassing this host's page cache (for images that other
    /// hosts also write; needs 512-byte direct I/O from the file system).
    #[arg(long)]
    pub direct: bool,
    /// How reads and writes reach the image: io_uring (one submission per virtqueue round) or
    /// sync (one system call per request). Default: io_uring with --direct, sync without.
    #[arg(long, value_parser = crate::config::parse_aio)]
    pub aio: Option<crate::image::Aio>,
    /// Microseconds a queue thread keeps watching its ring after a round before sleeping on
    /// the kick, and an iSCSI reader its socket before blocking; 0 never polls (default 50, at
    /// most 1000).
    #[arg(long, value_parser = parse_poll_us)]
    pub poll_us: Option<u32>,
    /// Serve the disk to iSCSI initiators on this TCP address (repeatable; `[iscsi] listen`).
    #[arg(long = "iscsi-listen", value_name = "ADDR:PORT")]
    pub iscsi_listen: Vec<SocketAddr>,
    /// An iSCSI initiator name that may log in (repeatable; `[[iscsi.initiator]] name`).
    #[arg(long = "iscsi-initiator", value_name = "NAME")]
    pub iscsi_initiator: Vec<String>,
}

fn parse_poll_us(s: &str) -> Result<u32, String> {
    let us: u32 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
    crate::config::check_poll_us(us)
}

impl ServeArgs {
    pub fn flags(self) -> (Option<PathBuf>, Flags) {
        (
            self.config,
            Flags {
                image: self.image,
                size: self.size,
                socket_dir: self.socket_dir,
                guests: self.guests,
                read_only: self.read_only,
                max_shares: self.max_shares,
                state: self.state,
                reset_reservations: self.reset_reservations,
                socket_group: self.socket_group,
                socket_mode: self.socket_mode,
                socket_world_access: self.socket_world_access,
                control_socket: self.control_socket,
                admin_group: self.admin_group,
                metrics_listen: self.metrics_listen,
                direct: self.direct,
                aio: self.aio,
                poll_us: self.poll_us,
                iscsi_listen: self.iscsi_listen,
                iscsi_initiators: self.iscsi_initiator,
            },
        )
    }
}

#[cfg(test)]
mod tests;
