//! The command line, as a library item so that it can be tested and fuzzed without the binary.
//! `main.rs` only calls [`Cli::parse`] and dispatches.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{parse_size, Config, DEFAULT_MAX_SHARES};

#[derive(Parser)]
#[command(
    version,
    about = "Share one disk image between QEMU guests, with SCSI-3 persistent reservations"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Serve an image to the named guests until Ctrl-C or SIGTERM.
    Serve(ServeArgs),
    /// Print the QEMU flags that attach one guest to a running daemon, for the QEMU named by
    /// $SHAREDISK_QEMU (default: qemu-system-x86_64 on the PATH).
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
pub struct ServeArgs {
    /// The raw disk image.
    #[arg(long)]
    pub image: PathBuf,
    /// Create the image with this size (e.g. 1G) if it does not exist.
    #[arg(long, value_parser = parse_size)]
    pub size: Option<u64>,
    /// Where DIR/<guest>-blk.sock and DIR/<guest>-scsi.sock are created.
    #[arg(long)]
    pub socket_dir: PathBuf,
    /// Comma-separated guest names; each is one initiator ([A-Za-z0-9_.-]).
    #[arg(long, value_delimiter = ',', required = true)]
    pub guests: Vec<String>,
    /// Serve the image read-only.
    #[arg(long)]
    pub read_only: bool,
    /// Maximum number of guests (like Azure's maxShares).
    #[arg(long, default_value_t = DEFAULT_MAX_SHARES)]
    pub max_shares: usize,
    /// Reservation state file (default: <image>.pr).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Start with no registrations or reservation, overwriting the state file.
    #[arg(long)]
    pub reset_reservations: bool,
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

#[cfg(test)]
#[path = "tests/cli.rs"]
mod tests;
