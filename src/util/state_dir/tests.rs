use std::os::unix::fs::PermissionsExt;

use super::*;

fn dir_with_mode(mode: u32) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(mode)).unwrap();
    d
}

#[test]
fn a_private_directory_passes() {
    for mode in [0o700, 0o755, 0o750] {
        check(dir_with_mode(mode).path()).unwrap();
    }
}

#[test]
fn a_group_or_world_writable_directory_is_refused() {
    let d = dir_with_mode(0o777);
    let e = check(d.path()).unwrap_err().to_string();
    assert!(e.contains("every user") && e.contains("chmod go-w"), "{e}");
    let d = dir_with_mode(0o770);
    let e = check(d.path()).unwrap_err().to_string();
    assert!(e.contains("its group") && e.contains("0770"), "{e}");
}

#[test]
fn a_sticky_shared_directory_is_refused_too() {
    for mode in [0o1777, 0o1770] {
        let e = check(dir_with_mode(mode).path()).unwrap_err().to_string();
        assert!(e.contains("chmod go-w") && !e.contains("chmod +t"), "{e}");
    }
}

#[test]
fn a_missing_directory_passes_and_a_bare_name_lives_in_dot() {
    check(Path::new("/nonexistent/sharedisk-state")).unwrap();
    assert_eq!(of(Path::new("d.img.pr")), Path::new("."));
    assert_eq!(of(Path::new("/a/d.img.pr")), Path::new("/a"));
}
