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

/// `--json` and `--socket` are taken before or after the subcommand: `ctl cluster status --json`
/// was a usage error while `ctl --json cluster status` worked.
#[test]
fn ctl_flags_are_taken_after_the_subcommand_too() {
    for argv in [
        &["sharedisk", "ctl", "--json", "cluster", "status"][..],
        &["sharedisk", "ctl", "cluster", "--json", "status"],
        &["sharedisk", "ctl", "cluster", "status", "--json"],
        &[
            "sharedisk",
            "ctl",
            "cluster",
            "status",
            "--json",
            "--socket",
            "/s",
        ],
    ] {
        let cli = Cli::try_parse_from(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        let Command::Ctl(args) = cli.command else {
            panic!("{argv:?}: not ctl");
        };
        assert!(args.json, "{argv:?}");
        assert!(
            matches!(
                args.command,
                CtlCmd::Cluster {
                    command: CtlCluster::Status
                }
            ),
            "{argv:?}"
        );
    }
    let cli = Cli::try_parse_from(["sharedisk", "ctl", "pr", "show", "--socket", "/s"]).unwrap();
    let Command::Ctl(args) = cli.command else {
        panic!("not ctl");
    };
    assert_eq!(
        (args.socket.as_path(), args.json),
        (std::path::Path::new("/s"), false)
    );
}
