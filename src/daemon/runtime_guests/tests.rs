use super::*;

#[test]
fn changes_apply_over_the_configuration() {
    let mut c = Config::new("d.img", "/tmp", &["vm1", "vm2"]);
    let mut ch = GuestChanges::default();
    let mut vm3 = GuestConfig::new("vm3");
    vm3.read_only = true;
    ch.note_added(&vm3);
    ch.note_removed("vm1");
    ch.note_added(&GuestConfig::new("vm4"));
    ch.note_removed("vm4");
    assert_eq!(ch.removed, ["vm1"]);
    ch.apply(&mut c);
    assert_eq!(c.guest_names(), ["vm2", "vm3"]);
    assert!(c.guest("vm3").unwrap().read_only);
    ch.note_added(&GuestConfig::new("vm1"));
    assert!(ch.removed.is_empty());
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("x.guests");
    assert_eq!(GuestChanges::load(&p).unwrap(), GuestChanges::default());
    ch.save(&p).unwrap();
    assert_eq!(GuestChanges::load(&p).unwrap(), ch);
}

#[test]
fn changes_kept_by_an_older_version_are_taken_over_once() {
    let dir = tempfile::tempdir().unwrap();
    let (new, legacy) = (
        dir.path().join("node.pr.guests"),
        dir.path().join("disk.img.pr.guests"),
    );
    let mut ch = GuestChanges::default();
    ch.note_added(&GuestConfig::new("late"));
    ch.save(&legacy).unwrap();
    assert_eq!(
        GuestChanges::load_or_import(&new, Some(&legacy)).unwrap(),
        ch
    );
    assert_eq!(
        GuestChanges::load(&new).unwrap(),
        ch,
        "saved at the new place"
    );
    // From then on the new file is the truth, whatever the old one says.
    GuestChanges::default().save(&legacy).unwrap();
    assert_eq!(
        GuestChanges::load_or_import(&new, Some(&legacy)).unwrap(),
        ch
    );
    // Without a legacy place, or without a file there, nothing is taken over.
    let other = dir.path().join("other.guests");
    assert_eq!(
        GuestChanges::load_or_import(&other, None).unwrap(),
        GuestChanges::default()
    );
}

#[test]
fn only_a_cluster_daemon_without_an_explicit_state_path_had_another_place() {
    let mut c = Config::new("/d/disk.img", "/run/x", &["vm1"]);
    assert_eq!(legacy_path_for(&c), None);
    c.state = Some("/elsewhere/s.pr".into());
    assert_eq!(legacy_path_for(&c), None);
    #[cfg(feature = "cluster")]
    {
        c.cluster = Some(
            toml::from_str("etcd = [\"http://127.0.0.1:2379\"]\ninsecure = true\nnode = \"h1\"\ndisk_id = \"d\"\n")
                .unwrap(),
        );
        assert_eq!(
            legacy_path_for(&c),
            None,
            "an explicit state path did not move"
        );
        c.state = None;
        assert_eq!(legacy_path_for(&c), Some("/d/disk.img.pr.guests".into()));
        assert_ne!(path_for(&c), PathBuf::from("/d/disk.img.pr.guests"));
    }
}
