//! The daemon as a service: the guests' sockets, then the control plane around them, until a
//! signal.

use crate::config::Config;
use crate::server::{Server, ServerError};

/// Serves `config` until SIGINT or SIGTERM.
pub fn run(config: Config) -> Result<(), ServerError> {
    let server = Server::start(config)?;
    crate::run_until_signal(server)?;
    Ok(())
}
