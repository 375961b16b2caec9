//! Command line: parse arguments and hand them to the library.

use std::process::ExitCode;

use clap::Parser;
use sharedisk::cli::{out, Cli, Command, ConfigCommand, PrOffline};
use sharedisk::config;
use sharedisk::ops::control::client;

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match Cli::parse().command {
        Command::Ctl(args) => {
            return ExitCode::from(client::run(
                &args.socket,
                args.json,
                std::time::Duration::from_secs(args.timeout),
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
                .and_then(|config| sharedisk::daemon::run(config).map_err(|e| e.to_string()))
        }
        Command::Config {
            command: ConfigCommand::Check { file },
        } => config::load_file(&file)
            .map(|c| out::print(&format!("{}: OK\n{}", file.display(), c.describe())))
            .map_err(|e| e.to_string()),
        Command::QemuArgs(args) => args.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            out::eprintln(&format!("sharedisk: {e}"));
            ExitCode::FAILURE
        }
    }
}
