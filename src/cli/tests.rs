//! Unit tests of `cli`.

use clap::{CommandFactory, Parser};

use super::*;

#[test]
fn definitions_are_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn serve_arguments_become_a_config() {
    let cli = Cli::try_parse_from([
        "sharedisk",
        "serve",
        "--image",
        "d.img",
        "--size",
        "1M",
        "--socket-dir",
        "/run/sd",
        "--guests",
        "vm1,vm2",
    ])
    .unwrap();
    let Command::Serve(args) = cli.command else {
        panic!("not serve");
    };
    let (file, flags) = args.flags();
    assert_eq!(file, None);
    let c = flags.resolve(None).expect("a valid configuration");
    assert_eq!(c.guest_names(), ["vm1", "vm2"]);
    assert_eq!(c.size, Some(1 << 20));
    assert_eq!(c.max_shares, crate::config::DEFAULT_MAX_SHARES);
    assert_eq!(c.validate(), Ok(()));
}
