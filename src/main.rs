//! Command line: parse arguments and hand them to the library.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use sharedisk::config::{parse_size, Config, DEFAULT_MAX_SHARES};
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
    /// Print the QEMU flags that attach one guest to a running daemon.
    QemuArgs {
        #[arg(long)]
        socket_dir: PathBuf,
        #[arg(long)]
        guest: String,
        /// Guest RAM (must equal QEMU's -m).
        #[arg(long, default_value = "512M")]
        memory: String,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// The raw disk image.
    #[arg(long)]
    image: PathBuf,
    /// Create the image with this size (e.g. 1G) if it does not exist.
    #[arg(long, value_parser = parse_size)]
    size: Option<u64>,
    /// Where DIR/<guest>-blk.sock and DIR/<guest>-scsi.sock are created.
    #[arg(long)]
    socket_dir: PathBuf,
    /// Comma-separated guest names; each is one initiator ([A-Za-z0-9_.-]).
    #[arg(long, value_delimiter = ',', required = true)]
    guests: Vec<String>,
    /// Serve the image read-only.
    #[arg(long)]
    read_only: bool,
    /// Maximum number of guests (like Azure's maxShares).
    #[arg(long, default_value_t = DEFAULT_MAX_SHARES)]
    max_shares: usize,
    /// Reservation state file (default: <image>.pr).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Start with no registrations or reservation, overwriting the state file.
    #[arg(long)]
    reset_reservations: bool,
}

impl From<ServeArgs> for Config {
    fn from(a: ServeArgs) -> Self {
        Config {
            image: a.image,
            size: a.size,
            socket_dir: a.socket_dir,
            guests: a.guests,
            read_only: a.read_only,
            max_shares: a.max_shares,
            state: a.state,
            reset_reservations: a.reset_reservations,
            scsi: true,
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Serve(args) => sharedisk::start_server(args.into())
            .map_err(|e| e.to_string())
            .and_then(|server| sharedisk::run_until_signal(server).map_err(|e| e.to_string())),
        Command::QemuArgs {
            socket_dir,
            guest,
            memory,
        } => qemu::args(&socket_dir, &guest, &memory).map(|args| println!("{args}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sharedisk: {e}");
            ExitCode::FAILURE
        }
    }
}
