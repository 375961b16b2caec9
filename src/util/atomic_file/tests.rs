use std::os::unix::fs::PermissionsExt;

use super::*;

#[test]
fn save_writes_a_private_file_and_leaves_no_temporary() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state");
    save(&p, b"one", "t").unwrap();
    save(&p, b"two", "t").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"two");
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(!temporary(&p).exists());
}

#[test]
fn a_symlinked_temporary_is_neither_followed_nor_removed() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state");
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"victim").unwrap();
    std::os::unix::fs::symlink(&victim, temporary(&p)).unwrap();
    let e = save(&p, b"new", "t").unwrap_err().to_string();
    assert!(
        e.contains("state.tmp") && e.contains("a symbolic link"),
        "{e}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"victim");
    assert!(std::fs::symlink_metadata(temporary(&p))
        .unwrap()
        .is_symlink());
    assert!(!p.exists());
}

#[test]
fn a_leftover_of_ours_is_replaced_and_one_of_another_user_is_not() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state");
    std::fs::write(temporary(&p), b"torn").unwrap();
    save(&p, b"whole", "t").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"whole");

    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return; // giving a file away needs root
    }
    std::fs::write(temporary(&p), b"theirs").unwrap();
    std::os::unix::fs::chown(temporary(&p), Some(65534), None).unwrap();
    let e = save(&p, b"newer", "t").unwrap_err().to_string();
    assert!(
        e.contains("uid 65534") && e.contains("left untouched"),
        "{e}"
    );
    assert_eq!(std::fs::read(temporary(&p)).unwrap(), b"theirs");
    assert_eq!(std::fs::read(&p).unwrap(), b"whole");
}

#[test]
fn read_own_reads_a_file_of_ours_and_none_when_missing() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state");
    assert!(read_own(&p).unwrap().is_none());
    save(&p, b"mine", "t").unwrap();
    assert_eq!(read_own(&p).unwrap().unwrap(), b"mine");
}

#[test]
fn read_own_refuses_a_symlink_and_a_file_others_may_write() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("state");
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"victim").unwrap();
    std::os::unix::fs::symlink(&victim, &p).unwrap();
    let e = read_own(&p).unwrap_err().to_string();
    assert!(e.contains("a symbolic link"), "{e}");
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, b"x").unwrap();
    for mode in [0o620, 0o602, 0o666] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        let e = read_own(&p).unwrap_err().to_string();
        assert!(
            e.contains("may change it") && e.contains("not trusted"),
            "{e}"
        );
    }
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(read_own(&p).unwrap().unwrap(), b"x");
}
