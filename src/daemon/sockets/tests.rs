use std::os::unix::fs::PermissionsExt;

use super::*;

fn mode_of(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_socket_gets_its_mode_before_it_appears_and_leaves_nothing_beside_it() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g-blk.sock");
    let access = Access {
        mode: Some(0o660),
        ..Access::default()
    };
    let (_l, file) = bind(&p, access).unwrap();
    assert_eq!(mode_of(&p), 0o660);
    UnixStream::connect(&p).unwrap();
    let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().collect();
    assert_eq!(names.len(), 1, "only the socket: {names:?}");
    drop(file);
    assert!(!p.exists(), "the socket is removed with its file");
}

#[test]
fn anything_but_a_socket_at_the_path_is_left_untouched() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.sock");
    std::fs::write(&p, b"precious").unwrap();
    let e = bind(&p, Access::default()).unwrap_err();
    assert!(
        matches!(
            e,
            SocketError::NotASocket {
                kind: "a regular file",
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(std::fs::read(&p).unwrap(), b"precious");
    std::fs::remove_file(&p).unwrap();
    std::os::unix::fs::symlink("/nonexistent", &p).unwrap();
    let e = bind(&p, Access::default()).unwrap_err();
    assert!(e.to_string().contains("a symbolic link"), "{e}");
    std::fs::remove_file(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    let e = bind(&p, Access::default()).unwrap_err();
    assert!(e.to_string().contains("a directory"), "{e}");
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1);
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.sock");
    drop(UnixListener::bind(&p).unwrap());
    let (live, file) = bind(&p, Access::default()).unwrap();
    let e = bind(&p, Access::default()).unwrap_err();
    assert!(matches!(e, SocketError::InUse { .. }), "{e}");
    drop(live);
    drop(file);
}

#[test]
fn a_world_mode_is_refused_unless_allowed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.sock");
    let mut access = Access {
        mode: Some(0o666),
        ..Access::default()
    };
    let e = bind(&p, access).unwrap_err();
    assert!(e.to_string().contains("socket_world_access"), "{e}");
    assert!(!p.exists());
    assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 0);
    access.world = true;
    let (_l, _f) = bind(&p, access).unwrap();
    assert_eq!(mode_of(&p), 0o666);
}

#[test]
fn a_socket_file_leaves_a_replacement_alone() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("s.sock");
    let (l, file) = bind(&p, Access::default()).unwrap();
    drop(l);
    std::fs::remove_file(&p).unwrap();
    let _other = UnixListener::bind(&p).unwrap();
    drop(file);
    assert!(p.exists(), "another's socket stays");
}

#[test]
fn a_socket_directory_others_may_write_in_is_refused_sticky_or_not() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g-blk.sock");
    for (mode, who) in [
        (0o777, "every user"),
        (0o1777, "every user"),
        (0o770, "its group"),
    ] {
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        let e = bind(&p, Access::default()).unwrap_err();
        assert!(matches!(e, SocketError::DirWritable { .. }), "{e}");
        let e = e.to_string();
        assert!(e.contains(who) && e.contains("chmod go-w"), "{e}");
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "nothing made"
        );
    }
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    bind(&p, Access::default()).unwrap();
}

#[test]
fn a_long_socket_directory_binds_through_the_private_directorys_descriptor() {
    // The socket path itself fits in `sun_path`; the private directory's path beside it would
    // not: the bind goes through `/proc/self/fd/N/s`.
    let d = tempfile::tempdir().unwrap();
    let mut deep = d.path().to_path_buf();
    while deep.as_os_str().len() < 90 {
        deep.push("d");
    }
    std::fs::create_dir_all(&deep).unwrap();
    let p = deep.join("vm1-blk.sock");
    assert!(p.as_os_str().len() <= MAX_SOCKET_PATH);
    let (_l, _file) = bind(&p, Access::default()).unwrap();
    UnixStream::connect(&p).unwrap();
    let e = bind(&deep.join("x".repeat(20)), Access::default()).unwrap_err();
    assert!(matches!(e, SocketError::TooLong { .. }), "{e}");
}
