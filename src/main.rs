//! Command line: parse arguments and hand them to the library.

use std::process::ExitCode;

use clap::Parser;
use sharedisk::cli::{Cli, Command};
use sharedisk::{qemu, server::Server};

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Serve(args) => Server::start(args.into())
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
