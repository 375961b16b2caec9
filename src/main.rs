//! Command line: parse arguments and hand them to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sharedisk::config::{self, parse_mode, parse_size, Flags};
use sharedisk::control::client::{self, CtlCommand};
use sharedisk::qemu;

#[derive(Parser)]
#[command(
    version,
    about = "Share one disk image between QEMU guests, with SCSI-3 persistent reservations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
struct QemuArgsArgs {
    /// Take the socket directory and the guest's queues and devices from this file.
    #[arg(long, conflicts_with = "socket_dir")]
    config: Option<PathBuf>,
    #[arg(long, required_unless_present = "config")]
    socket_dir: Option<PathBuf>,
    #[arg(long)]
    guest: String,
    /// Guest RAM (must equal QEMU's -m; not used by the libvirt format).
    #[arg(long, default_value = "512M")]
    memory: String,
    #[arg(long, value_enum, default_value = "qemu")]
    format: QemuFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum QemuFormat {
    Qemu,
    Libvirt,
}

impl QemuArgsArgs {
    fn run(self) -> Result<(), String> {
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
        let out = qemu::guest_args(&socket_dir, &guest, &self.memory, format)?;
        match format {
            qemu::Format::Qemu => println!("{out}"),
            qemu::Format::Libvirt => print!("{out}"),
        }
        Ok(())
    }
}

#[derive(Subcommand)]
enum PrOffline {
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
struct CtlArgs {
    /// The daemon's control socket.
    #[arg(long, default_value = "/run/sharedisk/control.sock")]
    socket: PathBuf,
    /// Print the daemon's JSON answer (schema 1) instead of text.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCmd,
}

#[derive(Subcommand)]
enum CtlCmd {
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
}

#[derive(Subcommand)]
enum CtlPr {
    /// Show the PR state (as `sg_persist -i -s`, with guest names).
    Show,
    /// Drop every registration and the reservation (unit attention 2A/03 to the registrants).
    Clear {
        #[arg(long)]
        yes: bool,
    },
    /// Remove GUEST's registration, and its reservation if it holds one.
    Preempt {
        #[arg(long)]
        victim: String,
        /// PREEMPT AND ABORT.
        #[arg(long)]
        abort: bool,
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand)]
enum CtlGuest {
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

impl CtlCmd {
    fn into_command(self) -> CtlCommand {
        match self {
            CtlCmd::Status => CtlCommand::Status,
            CtlCmd::Guests => CtlCommand::Guests,
            CtlCmd::Stats => CtlCommand::Stats,
            CtlCmd::Metrics => CtlCommand::Metrics,
            CtlCmd::Pr { command } => match command {
                CtlPr::Show => CtlCommand::PrShow,
                CtlPr::Clear { yes } => CtlCommand::PrClear { yes },
                CtlPr::Preempt { victim, abort, yes } => {
                    CtlCommand::PrPreempt { victim, abort, yes }
                }
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
enum ConfigCommand {
    /// Validate FILE and print what the daemon would serve.
    Check { file: PathBuf },
}

#[derive(Args)]
struct ServeArgs {
    /// A TOML configuration file; the flags below are shorthand for its settings and may not
    /// contradict it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The raw disk image.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Create the image with this size (e.g. 1G) if it does not exist.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Where DIR/<guest>-blk.sock and DIR/<guest>-scsi.sock are created (default /run/sharedisk).
    #[arg(long)]
    socket_dir: Option<PathBuf>,
    /// Comma-separated guest names; each is one initiator ([A-Za-z0-9_.-]).
    #[arg(long, value_delimiter = ',')]
    guests: Option<Vec<String>>,
    /// Serve the image read-only.
    #[arg(long)]
    read_only: bool,
    /// Maximum number of guests (like Azure's maxShares; default 16).
    #[arg(long)]
    max_shares: Option<usize>,
    /// Reservation state file (default: <image>.pr).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Start with no registrations or reservation, overwriting the state file.
    #[arg(long)]
    reset_reservations: bool,
    /// Group owning the guests' sockets.
    #[arg(long)]
    socket_group: Option<String>,
    /// Mode of the guests' sockets, in octal (e.g. 0660).
    #[arg(long, value_parser = parse_mode)]
    socket_mode: Option<u32>,
    /// The control socket (default: <socket-dir>/control.sock).
    #[arg(long)]
    control_socket: Option<PathBuf>,
    /// Serve Prometheus metrics on http://ADDR/metrics.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
}

impl ServeArgs {
    fn flags(self) -> (Option<PathBuf>, Flags) {
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
                control_socket: self.control_socket,
                metrics_listen: self.metrics_listen,
            },
        )
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Ctl(args) => {
            return ExitCode::from(client::run(
                &args.socket,
                args.json,
                args.command.into_command(),
            ))
        }
        Command::Pr {
            command: PrOffline::Show { state, json },
        } => return ExitCode::from(client::show_state_file(&state, json)),
        Command::Serve(args) => {
            let (file, flags) = args.flags();
            flags
                .resolve(file.as_deref())
                .map_err(|e| e.to_string())
                .and_then(|config| sharedisk::service::run(config).map_err(|e| e.to_string()))
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config::load_file(&file)
            .map(|c| print!("{}: OK\n{}", file.display(), c.describe()))
            .map_err(|e| e.to_string()),
        Command::QemuArgs(args) => args.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sharedisk: {e}");
            ExitCode::FAILURE
        }
    }
}
