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
    c.guests = vec!["a/b".into()];
    assert!(matches!(c.validate(), Err(ConfigError::BadName(_))));
    assert_eq!(c.state_path(), PathBuf::from("d.img.pr"));
}
