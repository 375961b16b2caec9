//! Command lines: any argument vector (NUL-separated, any bytes, so not even UTF-8) through the
//! daemon's clap parser (`cli::Cli`), the conversion into a `Config` and its validation, and
//! `config::parse_size` on every argument.
//!
//! Checks: no panic (clap's own consistency assertions included: this is a debug build), and a
//! configuration that validates only names guests that make safe socket file names.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use clap::Parser;
use sharedisk::cli::{Cli, Command};
use sharedisk::config::{parse_size, valid_guest_name};

/// One fuzz input; panics on a finding.
pub fn run(data: &[u8]) {
    let args: Vec<&OsStr> = std::iter::once(OsStr::new("sharedisk"))
        .chain(data.split(|&b| b == 0).map(OsStr::from_bytes))
        .collect();
    for a in &args[1..] {
        if let Some(s) = a.to_str() {
            if let Ok(bytes) = parse_size(s) {
                assert!(
                    (512..=1 << 60).contains(&bytes) && bytes % 512 == 0,
                    "{s:?}"
                );
            }
        }
    }
    let parsed = Cli::try_parse_from(&args);
    if super::tracing() {
        eprintln!(
            "{args:?}: {}",
            if parsed.is_ok() { "parsed" } else { "error" }
        );
    }
    match parsed {
        Ok(Cli {
            command: Command::Serve(serve),
        }) => {
            // Flags alone (a config file would be read from disk).
            let (None, flags) = serve.flags() else {
                return;
            };
            if let Ok(config) = flags.resolve(None) {
                assert!(config.validate().is_ok());
                assert!(!config.guests.is_empty() && config.guests.len() <= config.max_shares);
                for g in config.guest_names() {
                    assert!(valid_guest_name(&g));
                    let sock = config.blk_socket(&g);
                    assert_eq!(sock.parent(), Some(config.socket_dir.as_path()), "{g:?}");
                }
                let _ = config.state_path();
            }
        }
        Ok(Cli {
            command: Command::QemuArgs(q),
        }) => {
            let _ = (valid_guest_name(&q.guest), parse_size(&q.memory));
        }
        Ok(_) => {}
        Err(e) => {
            let _ = e.render().to_string();
        }
    }
}
