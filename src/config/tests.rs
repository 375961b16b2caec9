//! Unit tests of `config`.

use super::*;

#[test]
fn sizes() {
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("512M"), Ok(512 << 20));
    assert_eq!(parse_size("4096"), Ok(4096));
    assert_eq!(parse_size("1.5GiB"), Ok(3 << 29));
    assert!(parse_size("1X").is_err());
    assert!(parse_size("").is_err());
    assert!(parse_size("100").is_err());
    assert!(parse_size("1000").is_err());
    assert!(parse_size("-1G").is_err());
}

#[test]
fn modes() {
    assert_eq!(parse_mode("0660"), Ok(0o660));
    assert_eq!(parse_mode("600"), Ok(0o600));
    assert!(parse_mode("0999").is_err());
    assert!(parse_mode("01777").is_err());
    assert!(parse_mode("").is_err());
}

#[test]
fn guest_names() {
    assert!(valid_guest_name("vm1"));
    assert!(valid_guest_name("node-a.b_c"));
    for bad in ["", "a/b", "..", "vm 1", "vm1\n", &"x".repeat(65)] {
        assert!(!valid_guest_name(bad), "{bad:?}");
    }
}

#[test]
fn validation() {
    let mut c = Config::new("d.img", "/tmp", &["vm1", "vm2", "vm1"]);
    assert_eq!(c.validate(), Err(ConfigError::Duplicate("vm1".into())));
    c.guests.pop();
    assert_eq!(c.validate(), Ok(()));
    c.max_shares = 1;
    assert!(matches!(c.validate(), Err(ConfigError::TooMany { .. })));
    c.guests = vec![GuestConfig::new("a/b")];
    assert!(matches!(c.validate(), Err(ConfigError::BadName(_))));
    assert_eq!(c.state_path(), PathBuf::from("d.img.pr"));
    assert_eq!(
        c.control_socket_path(),
        PathBuf::from("/tmp").join(CONTROL_SOCKET_NAME)
    );
}

const GOOD: &str = r#"
[image]
path = "/srv/disk.img"
size = "1G"
state = "/var/lib/sharedisk/disk.pr"
max_shares = 4

[server]
socket_dir = "/run/sharedisk/lab"
socket_group = "kvm"
socket_mode = "0660"
metrics_listen = "127.0.0.1:9464"

[[guest]]
name = "vm1"

[[guest]]
name = "vm2"
read_only = true
queues = 4
scsi = false
"#;

fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sd.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

/// The error for `text`, asserted to name the file.
fn error(text: &str) -> String {
    let (_d, path) = write(text);
    let e = load_file(&path).unwrap_err().to_string();
    assert!(e.contains(&path.display().to_string()), "{e}");
    e
}

#[test]
fn file_with_every_setting() {
    let (_d, path) = write(GOOD);
    let c = load_file(&path).unwrap();
    assert_eq!(c.image, PathBuf::from("/srv/disk.img"));
    assert_eq!(c.size, Some(1 << 30));
    assert_eq!(c.state_path(), PathBuf::from("/var/lib/sharedisk/disk.pr"));
    assert_eq!(c.max_shares, 4);
    assert_eq!(c.socket_group.as_deref(), Some("kvm"));
    assert_eq!(c.socket_mode, Some(0o660));
    assert_eq!(c.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    assert_eq!(
        c.control_socket_path(),
        PathBuf::from("/run/sharedisk/lab/control.sock")
    );
    assert_eq!(c.guests[0], GuestConfig::new("vm1"));
    assert_eq!(
        c.guests[1],
        GuestConfig {
            name: "vm2".into(),
            read_only: true,
            queues: 4,
            scsi: false
        }
    );
    let d = c.describe();
    assert!(d.contains("vm2"), "{d}");
    assert!(d.contains("read-only"), "{d}");
}

#[test]
fn relative_paths_are_relative_to_the_file() {
    let (dir, path) = write("[image]\npath = \"disk.img\"\n[[guest]]\nname = \"a\"\n");
    let c = load_file(&path).unwrap();
    assert_eq!(c.image, dir.path().join("disk.img"));
}

#[test]
fn errors_name_file_line_and_key() {
    let e = error("[image]\npath = \"/d\"\nsize = \"1X\"\n[[guest]]\nname = \"a\"\n");
    assert!(e.contains(":3:") && e.contains("`image.size`"), "{e}");
    assert!(e.contains("unknown unit"), "{e}");

    let e = error("[image]\npath = \"/d\"\n\n[server]\nsocket_mod = \"0660\"\n");
    assert!(e.contains(":5:") && e.contains("socket_mod"), "{e}");
    assert!(e.contains("unknown field"), "{e}");

    let e = error("[image]\npath = \"/d\"\n[server]\nsocket_mode = \"0999\"\n");
    assert!(
        e.contains(":4:") && e.contains("`server.socket_mode`"),
        "{e}"
    );

    let e = error("[image]\npath = \"/d\"\n[[guest]]\nname = \"a b\"\n");
    assert!(e.contains(":4:") && e.contains("`guest.name`"), "{e}");

    let e = error("[image]\npath = \"/d\"\n[[guest]]\nname = \"a\"\n[[guest]]\nname = \"a\"\n");
    assert!(e.contains(":6:") && e.contains("named twice"), "{e}");

    let e = error("[image]\npath = \"/d\"\nmax_shares = 1\n[[guest]]\nname = \"a\"\n[[guest]]\nname = \"b\"\n");
    assert!(e.contains(":3:") && e.contains("`image.max_shares`"), "{e}");

    let e = error("[image]\npath = \"/d\"\nread_only = \"yes\"\n");
    assert!(e.contains(":3:") && e.contains("`image.read_only`"), "{e}");

    let e = error("[server]\nsocket_dir = \"/x\"\n");
    assert!(e.contains("[image]"), "{e}");

    let e = error("[image\npath = 1\n");
    assert!(e.contains(":1:"), "{e}");
}

#[test]
fn errors_toml_cannot_table_still_name_the_key() {
    // A later [[guest]] entry without its name, a duplicate key, syntax errors on a key's line
    // and an unclosed header: the parsed tables do not hold the key, the line does.
    for (text, want) in [
        (
            "[image]\npath = \"/d\"\n[[guest]]\nname = \"a\"\n[[guest]]\nqueues = 2\n",
            ":5: key `guest`: missing field `name`",
        ),
        (
            "[image]\npath = \"/d\"\npath = \"/e\"\n",
            ":3: key `image.path`: duplicate key",
        ),
        (
            "[image]\npath = \"/d\n",
            ":2: key `image.path`: invalid basic string",
        ),
        (
            "[image]\npath = \"/d\" x\n",
            ":2: key `image.path`: unexpected key",
        ),
        ("[image\npath = \"/d\"\n", ":1: key `image`:"),
    ] {
        let e = error(text);
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

#[test]
fn flags_fill_in_and_never_contradict_the_file() {
    let (_d, path) = write(GOOD);
    // Agreeing or new settings are fine.
    let flags = Flags {
        image: Some("/srv/disk.img".into()),
        control_socket: Some("/run/ctl.sock".into()),
        ..Flags::default()
    };
    let c = flags.resolve(Some(&path)).unwrap();
    assert_eq!(c.control_socket_path(), PathBuf::from("/run/ctl.sock"));
    // A contradiction names the flag, the file, the line and the key.
    let flags = Flags {
        image: Some("/other.img".into()),
        ..Flags::default()
    };
    let e = flags.resolve(Some(&path)).unwrap_err().to_string();
    assert!(e.contains("--image /other.img"), "{e}");
    assert!(
        e.contains(&format!("{}:3", path.display())) && e.contains("`image.path`"),
        "{e}"
    );
    for (flags, what) in [
        (
            Flags {
                guests: Some(vec!["vm1".into()]),
                ..Flags::default()
            },
            "--guests",
        ),
        (
            Flags {
                socket_dir: Some("/elsewhere".into()),
                ..Flags::default()
            },
            "--socket-dir",
        ),
        (
            Flags {
                max_shares: Some(8),
                ..Flags::default()
            },
            "--max-shares",
        ),
        (
            Flags {
                socket_mode: Some(0o600),
                ..Flags::default()
            },
            "--socket-mode",
        ),
    ] {
        let e = flags.resolve(Some(&path)).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("disagrees"), "{e}");
    }
}

#[test]
fn flags_alone() {
    let flags = Flags {
        image: Some("/d.img".into()),
        guests: Some(vec!["a".into(), "b".into()]),
        ..Flags::default()
    };
    let c = flags.into_config().unwrap();
    assert_eq!(c.guest_names(), ["a", "b"]);
    assert_eq!(c.socket_dir, PathBuf::from(DEFAULT_SOCKET_DIR));
    let e = Flags::default().into_config().unwrap_err().to_string();
    assert!(e.contains("--image"), "{e}");
}

#[test]
fn data_path_settings() {
    // Defaults: the page cache with synchronous calls, a 50 µs poll.
    let (_d, path) = write("[image]\npath = \"/d\"\n[[guest]]\nname = \"a\"\n");
    let c = load_file(&path).unwrap();
    assert!(!c.direct);
    assert_eq!((c.aio(), c.poll_us), (Aio::Sync, DEFAULT_POLL_US));
    // O_DIRECT brings io_uring with it unless told otherwise.
    let (_d, path) = write("[image]\npath = \"/d\"\ndirect = true\n[[guest]]\nname = \"a\"\n");
    let c = load_file(&path).unwrap();
    assert!(c.direct);
    assert_eq!(c.aio(), Aio::IoUring);
    assert!(
        c.describe().contains("O_DIRECT:       yes"),
        "{}",
        c.describe()
    );
    let text = "[image]\npath = \"/d\"\ndirect = true\naio = \"sync\"\n\
                [server]\npoll_us = 0\n[[guest]]\nname = \"a\"\n";
    let (_d, path) = write(text);
    let c = load_file(&path).unwrap();
    assert_eq!((c.aio(), c.poll_us), (Aio::Sync, 0));
    // Flags fill in what the file leaves out, and may not contradict it.
    let flags = Flags {
        aio: Some(Aio::IoUring),
        ..Flags::default()
    };
    let e = flags.resolve(Some(&path)).unwrap_err().to_string();
    assert!(
        e.contains("--aio io_uring") && e.contains("`image.aio`"),
        "{e}"
    );
    let flags = Flags {
        poll_us: Some(10),
        ..Flags::default()
    };
    let e = flags.resolve(Some(&path)).unwrap_err().to_string();
    assert!(
        e.contains("--poll-us 10") && e.contains("`server.poll_us`"),
        "{e}"
    );
    let flags = Flags {
        image: Some("/d.img".into()),
        guests: Some(vec!["a".into()]),
        direct: true,
        poll_us: Some(200),
        ..Flags::default()
    };
    let c = flags.into_config().unwrap();
    assert_eq!((c.direct, c.aio(), c.poll_us), (true, Aio::IoUring, 200));
}

#[test]
fn bad_data_path_settings_name_the_key() {
    let e = error("[image]\npath = \"/d\"\naio = \"posix\"\n");
    assert!(e.contains(":3:") && e.contains("io_uring or sync"), "{e}");
    let e = error("[image]\npath = \"/d\"\n[server]\npoll_us = 5000\n");
    assert!(e.contains(":4:") && e.contains("limit of 1000"), "{e}");
    assert_eq!(parse_aio("io_uring"), Ok(Aio::IoUring));
    assert!(check_poll_us(1001).is_err());
}

#[cfg(feature = "cluster")]
const CLUSTER: &str = "[image]\npath = \"d.img\"\n[[guest]]\nname = \"vm1\"\n[cluster]\n\
                       etcd = [\"http://10.0.0.1:2379\"]\ninsecure = true\nnode = \"host1\"\n\
                       disk_id = \"disk-a\"\n";

#[test]
#[cfg(feature = "cluster")]
fn a_cluster_section_shares_the_state_and_opens_the_image_directly() {
    let (_d, path) = write(CLUSTER);
    let c = load_file(&path).unwrap();
    let cl = c.cluster.as_ref().expect("cluster mode");
    assert!(
        c.direct,
        "page caches are per host: O_DIRECT in cluster mode"
    );
    assert_eq!(cl.node, "host1");
    assert_eq!(cl.lease_ms, 5000);
    assert_eq!(cl.renew_every(), std::time::Duration::from_millis(1666));
    // V(1+ε)/(1−ε) + D_io with the defaults: 5.10101 s + 10 s.
    assert_eq!(cl.wait_bound().as_millis(), 15_101);
    assert_eq!(cl.disk_prefix(), "/sharedisk/v1/disk-a/");
    let (_d, path) = write("[image]\npath = \"d.img\"\n[[guest]]\nname = \"vm1\"\n");
    assert!(load_file(&path).unwrap().cluster.is_none());
}

#[test]
#[cfg(feature = "cluster")]
fn cluster_mistakes_are_named() {
    for (extra, want) in [
        ("lease_ms = 50\n", "`cluster.lease_ms` 50 is out of range"),
        ("renew_ms = 4000\n", "`cluster.renew_ms` 4000 must be"),
        (
            "budget_ms = 12000\n",
            "must exceed lease_ms × (1 + drift) / (1 - drift) + max_io_ms",
        ),
        ("drift = 0.7\n", "`cluster.drift`"),
        (
            "max_io_ms = 0\n",
            "`cluster.max_io_ms` 0 is out of range (1 to 86400000)",
        ),
        (
            "hold_ms = 9223372036854775807\n",
            "`cluster.hold_ms` 9223372036854775807 is out of range (0 to 86400000)",
        ),
        ("prefix = \"x/\"\n", "`cluster.prefix`"),
        ("leese_ms = 5\n", "unknown field `leese_ms`"),
    ] {
        let e = error(&format!("{CLUSTER}{extra}"));
        assert!(e.contains(want), "{extra:?}: {e}");
    }
    let e = error(
        &CLUSTER
            .replace("http://10.0.0.1:2379", "https://10.0.0.1:2379")
            .replace("insecure = true\n", ""),
    );
    assert!(e.contains("`cluster.ca_file` is not set"), "{e}");
    let e = error(&CLUSTER.replace("\"host1\"", "\"host 1\""));
    assert!(e.contains("`cluster.node`"), "{e}");
    let e = error(&CLUSTER.replace("etcd = [\"http://10.0.0.1:2379\"]", "etcd = []"));
    assert!(e.contains("lists no endpoint"), "{e}");
}

#[cfg(feature = "cluster")]
fn cluster_config() -> crate::pr::cluster::ClusterConfig {
    let (_d, path) = write(CLUSTER);
    load_file(&path).unwrap().cluster.expect("cluster mode")
}

/// A member's clock may run ε slow (its lease V lasts V/(1−ε)) while the issuer's runs ε fast:
/// the wait is V(1+ε)/(1−ε) + D_io, not V(1+ε) + D_io.
#[test]
#[cfg(feature = "cluster")]
fn the_wait_bound_covers_drift_on_both_clocks() {
    let mut cl = cluster_config();
    cl.max_io_ms = 1000;
    for (drift, want_ms) in [
        (0.01, 5000.0 * 1.01 / 0.99 + 1000.0),
        (0.4, 5000.0 * 1.4 / 0.6 + 1000.0),
    ] {
        cl.drift = drift;
        cl.budget_ms = 60_000;
        assert_eq!(cl.validate(), Ok(()));
        let got = cl.wait_bound().as_secs_f64() * 1000.0;
        assert!(
            (got - want_ms).abs() < 0.001,
            "drift {drift}: {got} ms, want {want_ms} ms"
        );
    }
    // At ε = 0.4 the bound is 12 667 ms: a budget of 12 000 ms (enough for V(1+ε) + D_io =
    // 8000 ms) is refused.
    cl.budget_ms = 12_000;
    assert!(matches!(
        cl.validate(),
        Err(crate::pr::cluster::ClusterConfigError::BudgetTooShort {
            bound_ms: 12_666,
            ..
        })
    ));
}

/// Every millisecond setting is bounded, with an error naming its key; nothing overflows on the
/// way (u64::MAX once panicked in `renew_ms * 2` or wrapped in the deadlines).
#[test]
#[cfg(feature = "cluster")]
fn every_millisecond_setting_is_bounded() {
    let base = cluster_config();
    type Set = fn(&mut crate::pr::cluster::ClusterConfig, u64);
    let set: [(&str, Set); 5] = [
        ("lease_ms", |c, v| c.lease_ms = v),
        ("renew_ms", |c, v| c.renew_ms = Some(v)),
        ("max_io_ms", |c, v| c.max_io_ms = v),
        ("hold_ms", |c, v| c.hold_ms = v),
        ("budget_ms", |c, v| c.budget_ms = v),
    ];
    for (key, f) in set {
        for v in [u64::MAX, u64::MAX / 1_000_000, 86_400_001] {
            let mut c = base.clone();
            f(&mut c, v);
            let e = c.validate().expect_err(key).to_string();
            assert!(
                e.contains(&format!("`cluster.{key}` {v}")),
                "{key} = {v}: {e}"
            );
            assert!(c.wait_bound() >= std::time::Duration::from_millis(100));
            let _ = crate::pr::cluster::config::after(c.hold().max(c.budget()));
        }
    }
    // The largest values accepted: deadlines fit easily.
    let mut c = base.clone();
    (c.lease_ms, c.max_io_ms, c.hold_ms, c.budget_ms) =
        (600_000, 80_000_000, 86_400_000, 86_400_000);
    c.drift = 0.49;
    assert_eq!(c.validate(), Ok(()));
    assert!(c.wait_bound() < std::time::Duration::from_millis(86_400_000));
}

/// In cluster mode the state file is this node's host-local copy, never `<image>.pr` beside the
/// shared image (every host wrote that one).
#[test]
#[cfg(feature = "cluster")]
fn cluster_mode_keeps_a_local_copy_per_node() {
    let (_d, path) = write(CLUSTER);
    let c = load_file(&path).unwrap();
    assert_eq!(
        c.state_path(),
        PathBuf::from("/var/lib/sharedisk/disk-a.host1.pr")
    );
    let (d, path) = write(&format!("{CLUSTER}state_dir = \"st\"\n"));
    let c = load_file(&path).unwrap();
    assert_eq!(c.state_path(), d.path().join("st/disk-a.host1.pr"));
    let (_d, path) = write(&CLUSTER.replace(
        "path = \"d.img\"\n",
        "path = \"d.img\"\nstate = \"/x.pr\"\n",
    ));
    assert_eq!(
        load_file(&path).unwrap().state_path(),
        PathBuf::from("/x.pr")
    );
}

#[test]
fn a_world_socket_mode_needs_the_explicit_key() {
    let base = "[image]\npath = \"/d\"\n[server]\nsocket_mode = \"0666\"\n";
    let e = error(&format!("{base}[[guest]]\nname = \"a\"\n"));
    assert!(
        e.contains(":4:") && e.contains("`server.socket_mode`") && e.contains("0666"),
        "{e}"
    );
    assert!(e.contains("socket_world_access = true"), "{e}");
    let (_d, path) = write(&format!(
        "{base}socket_world_access = true\n[[guest]]\nname = \"a\"\n"
    ));
    let c = load_file(&path).unwrap();
    assert!(c.socket_world_access && c.socket_mode == Some(0o666));
    assert!(c.describe().contains("every local user"));

    let mut flags = Flags {
        image: Some("/d".into()),
        guests: Some(vec!["a".into()]),
        socket_mode: Some(0o777),
        ..Flags::default()
    };
    let e = flags.clone().into_config().unwrap_err();
    assert_eq!(e, ConfigError::WorldAccess(0o777));
    flags.socket_world_access = true;
    flags.into_config().unwrap();
    for group_only in [0o660, 0o770, 0o600] {
        let mut c = Config::new("/d", "/s", &["a"]);
        c.socket_mode = Some(group_only);
        c.validate().unwrap();
    }
}

#[test]
fn admin_group_from_the_file_or_the_flag_and_the_control_socket_group() {
    let path = Path::new("/etc/sharedisk/a.toml");
    let text = "[image]\npath = \"/srv/d.img\"\n[server]\nadmin_group = \"wheel\"\n[[guest]]\nname = \"a\"\n";
    let c = Flags::default().resolve_text(path, text).unwrap();
    assert_eq!(c.admin_group.as_deref(), Some("wheel"));
    assert_eq!(c.control_socket_group(), Some("wheel"), "no read group");
    assert!(c
        .describe()
        .contains("change: root, the daemon's user, group wheel"));
    let flag = |g: &str| Flags {
        admin_group: Some(g.into()),
        ..Flags::default()
    };
    assert!(flag("wheel").resolve_text(path, text).is_ok());
    let e = flag("adm")
        .resolve_text(path, text)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--admin-group adm disagrees") && e.contains("server.admin_group"),
        "{e}"
    );
    let both = text.replace("[server]\n", "[server]\ncontrol_group = \"sharedisk\"\n");
    let c = Flags::default().resolve_text(path, &both).unwrap();
    assert_eq!(c.control_socket_group(), Some("sharedisk"));
    let text = "[image]\npath = \"/srv/d.img\"\n[[guest]]\nname = \"a\"\n";
    let c = flag("wheel").resolve_text(path, text).unwrap();
    assert_eq!(c.admin_group.as_deref(), Some("wheel"), "the flag fills in");
}

#[test]
fn iscsi_section_and_flags() {
    let (_d, path) = write(
        "[image]\npath = \"/d.img\"\n[[guest]]\nname = \"a\"\n[iscsi]\nlisten = [\"127.0.0.1:3260\"]\n\
         [[iscsi.initiator]]\nname = \"iqn.1993-08.org.debian:01:node1\"\n",
    );
    let c = load_file(&path).unwrap();
    let i = c.iscsi.as_ref().unwrap();
    assert_eq!(i.listen, vec!["127.0.0.1:3260".parse().unwrap()]);
    assert!(
        i.allows("IQN.1993-08.org.debian:01:NODE1"),
        "names compare lower-cased"
    );
    assert!(!i.allows("iqn.1993-08.org.debian:01:node2"));
    assert_eq!(
        i.target_name("Sharedisk-AB"),
        "iqn.2026-12.io.sharedisk:sharedisk-ab"
    );
    let d = c.describe();
    assert!(d.contains("iscsi:          127.0.0.1:3260"), "{d}");
    assert!(d.contains("iqn.1993-08.org.debian:01:node1"), "{d}");
    // The flags add portals and initiators; a portal without any initiator is refused.
    let flags = Flags {
        image: Some("/d.img".into()),
        guests: Some(vec!["a".into()]),
        iscsi_listen: vec!["127.0.0.1:3261".parse().unwrap()],
        ..Flags::default()
    };
    let e = flags.clone().into_config().unwrap_err();
    assert!(e.to_string().contains("no initiator may log in"), "{e}");
    let ok = Flags {
        iscsi_initiators: vec!["iqn.2026-01.org.example:x".into()],
        ..flags
    };
    let c = ok.into_config().unwrap();
    assert_eq!(
        c.iscsi.unwrap().initiators,
        vec!["iqn.2026-01.org.example:x"]
    );
}

#[test]
fn iscsi_names_and_allow_any() {
    let mut i = IscsiConfig {
        listen: vec!["127.0.0.1:3260".parse().unwrap()],
        ..IscsiConfig::default()
    };
    assert!(i.validate().is_err(), "nobody allowed");
    i.allow_any_initiator = true;
    assert_eq!(i.validate(), Ok(()));
    assert!(i.allows("iqn.anything:at-all"));
    i.initiators.push("iqn.x:y".into());
    assert!(i.validate().is_err(), "a list and allow-any together");
    i.initiators = vec!["not-an-iqn".into()];
    i.allow_any_initiator = false;
    assert!(i.validate().is_err());
    for ok in [
        "iqn.1993-08.org.debian:01:abc",
        "eui.0123456789ABCDEF",
        "naa.52004567BA64678D",
    ] {
        assert!(valid_iscsi_name(ok), "{ok}");
    }
    for bad in [
        "iqn.",
        "iqn.a b",
        "vm1",
        &format!("iqn.{}", "x".repeat(223)),
    ] {
        assert!(!valid_iscsi_name(bad), "{bad}");
    }
    let mut c = Config::new("d.img", "/tmp", &["vm1"]);
    c.iscsi = Some(i);
    assert!(matches!(c.validate(), Err(ConfigError::Iscsi(_))));
}

#[test]
fn an_iscsi_portal_needs_no_guests() {
    let mut c = Config::new("d.img", "/tmp", &[]);
    assert_eq!(c.validate(), Err(ConfigError::NoGuests));
    c.iscsi = Some(IscsiConfig {
        listen: vec!["127.0.0.1:3260".parse().unwrap()],
        allow_any_initiator: true,
        ..IscsiConfig::default()
    });
    assert_eq!(c.validate(), Ok(()));
}

#[test]
fn iscsi_chap_keys_come_in_pairs_and_secret_paths_are_relative_to_the_file() {
    use std::os::unix::fs::PermissionsExt;
    let base = "[image]\npath = \"/d.img\"\n[[guest]]\nname = \"a\"\n[iscsi]\nlisten = \
                [\"127.0.0.1:3260\"]\n[[iscsi.initiator]]\nname = \"iqn.2026-01.org.example:x\"\n";
    let (_d, path) = write(&format!(
        "{base}chap_user = \"x\"\nchap_secret_file = \"x.chap\"\n"
    ));
    // The secret file does not exist: validation names it.
    let e = load_file(&path).unwrap_err().to_string();
    assert!(e.contains("x.chap"), "{e}");
    let dir = path.parent().unwrap().to_path_buf();
    for (f, secret) in [
        ("x.chap", "0123456789abcdef\n"),
        ("t.chap", "fedcba9876543210\n"),
    ] {
        std::fs::write(dir.join(f), secret).unwrap();
        std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let t = dir.join("t.chap");
    std::fs::write(
        &path,
        format!(
            "{base}chap_user = \"x\"\nchap_secret_file = \"x.chap\"\ntarget_chap_user = \"t\"\n\
             target_chap_secret_file = {t:?}\n"
        ),
    )
    .unwrap();
    let c = load_file(&path).unwrap();
    let chap = &c.iscsi.as_ref().unwrap().chap[0];
    assert_eq!(
        chap.initiator_chap.secret_file,
        dir.join("x.chap"),
        "relative to the file"
    );
    assert_eq!(chap.target_chap.as_ref().unwrap().secret_file, t);
    let loaded = c.iscsi.unwrap().load_chap().unwrap();
    let x = &loaded["iqn.2026-01.org.example:x"];
    assert_eq!(x.initiator.secret, b"0123456789abcdef");
    assert_eq!(x.target.as_ref().unwrap().user, "t");
    for (extra, want) in [
        (
            "chap_user = \"x\"\n",
            "`chap_user` needs `chap_secret_file`",
        ),
        (
            "chap_secret_file = \"s\"\n",
            "`chap_secret_file` needs `chap_user`",
        ),
        (
            "target_chap_user = \"t\"\ntarget_chap_secret_file = \"s\"\n",
            "mutual CHAP (`target_chap_user`) needs the initiator's CHAP",
        ),
    ] {
        let (_d, path) = write(&format!("{base}{extra}"));
        let e = load_file(&path).unwrap_err().to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
}

#[test]
#[cfg(feature = "cluster")]
fn iscsi_portals_in_cluster_mode_serve_one_target_name_per_disk_id() {
    let portal = "[iscsi]\nlisten = [\"127.0.0.1:3260\"]\nallow_any_initiator = true\n";
    let (dir, path) = write(&format!("{CLUSTER}{portal}"));
    let c = load_file(&path).unwrap();
    assert!(c.iscsi.is_some() && c.cluster.is_some());
    // Another host's path to the same disk: the same target name, from the disk_id.
    let other = dir.path().join("other.toml");
    std::fs::write(
        &other,
        format!(
            "{}{portal}",
            CLUSTER.replace("d.img", "/mnt/elsewhere/d.img")
        ),
    )
    .unwrap();
    let target = |c: &Config| {
        let text = c.describe();
        let line = text
            .lines()
            .find(|l| l.starts_with("iscsi target:"))
            .unwrap();
        line.to_string()
    };
    let here = target(&c);
    assert_eq!(here, target(&load_file(&other).unwrap()));
    let serial = crate::lun::serial_for(crate::lun::fnv1a(b"disk-a"));
    assert!(here.ends_with(&serial.to_ascii_lowercase()), "{here}");
}

#[test]
fn iscsi_portal_limits_are_read_checked_and_default() {
    let base = "[image]\npath = \"/d.img\"\n[[guest]]\nname = \"a\"\n[iscsi]\nlisten = \
                [\"127.0.0.1:3260\"]\nallow_any_initiator = true\n";
    let (_d, path) = write(base);
    let c = load_file(&path).unwrap();
    assert_eq!(
        c.iscsi.unwrap().limits,
        crate::config::PortalLimits::default()
    );
    let (_d, path) = write(&format!(
        "{base}max_sessions = 200\nmax_logins = 8\nmax_discovery_sessions = 2\n\
         discovery_idle_timeout_s = 5\nsend_timeout_s = 7\n"
    ));
    let l = load_file(&path).unwrap().iscsi.unwrap().limits;
    assert_eq!(
        (l.max_sessions, l.max_logins, l.max_discovery_sessions),
        (200, 8, 2)
    );
    assert_eq!(l.discovery_idle_timeout, std::time::Duration::from_secs(5));
    assert_eq!(l.send_timeout, std::time::Duration::from_secs(7));
    for (extra, want) in [
        ("max_logins = 0\n", "`max_logins` must be 1 to 4096"),
        ("max_sessions = 5000\n", "`max_sessions` must be 1 to 4096"),
        (
            "send_timeout_s = 0\n",
            "`send_timeout_s` must be 1 to 3600 seconds",
        ),
    ] {
        let (_d, path) = write(&format!("{base}{extra}"));
        let e = load_file(&path).unwrap_err().to_string();
        assert!(e.contains(want), "{extra}: {e}");
    }
}
