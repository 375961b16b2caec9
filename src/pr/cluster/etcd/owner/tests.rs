use super::*;

#[test]
fn an_owner_record_without_its_optional_fields_reads() {
    let v: OwnerValue =
        serde_json::from_str(r#"{"node":"a","incarnation":"x/1/2","moves":3,"epoch":9}"#).unwrap();
    assert_eq!((v.moves, v.epoch, v.uas.len(), &v.want), (3, 9, 0, &None));
    assert!(!v.spc2);
    let text = serde_json::to_string(&v).unwrap();
    assert!(!text.contains("spc2"), "written only when held: {text}");
    let held = OwnerValue { spc2: true, ..v };
    let back: OwnerValue = serde_json::from_str(&serde_json::to_string(&held).unwrap()).unwrap();
    assert!(back.spc2);
}

#[test]
fn a_hostile_owner_record_is_unreadable_or_bounded() {
    for bad in [
        r#"{"node":"a"}"#,
        r#"{"node":1,"incarnation":"x","moves":0,"epoch":0}"#,
        "[]",
    ] {
        assert!(serde_json::from_str::<OwnerValue>(bad).is_err(), "{bad}");
    }
    let many = vec![(6u8, 0x2a, 4); 1000];
    assert_eq!(senses(&many).count(), MAX_MOVED_UAS);
}

#[test]
fn a_gate_admits_only_while_owned_and_is_left_only_when_nothing_holds_it() {
    let gate = GuestGate::new(Arc::new((Mutex::new(false), Condvar::new())));
    assert!(!gate.hold(), "not owned yet");
    assert!(gate.wanted() && gate.moving(), "a device wants it");
    gate.owned();
    assert!(gate.hold());
    assert!(!gate.begin_leaving(), "a device holds it");
    gate.unhold();
    assert!(gate.begin_leaving());
    assert_eq!(gate.own(), Own::Leaving);
    assert!(
        !gate.hold(),
        "nothing is admitted while it is being handed over"
    );
}

/// A daemon whose device waited for the guest once (its rings parked before the first owner
/// record existed) does not ask the guest back after handing it over: only a device that has
/// work then does.
#[test]
fn a_guest_handed_over_is_wanted_back_only_by_a_device_with_work() {
    let gate = GuestGate::new(Arc::new((Mutex::new(false), Condvar::new())));
    assert!(!gate.hold(), "a ring had work before the record existed");
    gate.owned();
    assert!(!gate.wanted(), "the want was answered");
    assert!(gate.begin_leaving());
    gate.set(Own::No);
    assert!(
        !gate.wanted() && !gate.moving(),
        "handed over: nothing here asks for it back"
    );
    assert!(!gate.hold(), "a ring here has work again");
    assert!(gate.wanted(), "now it is wanted back");
}

/// A guest's devices' connections end one by one (a destination QEMU killed after its ring had
/// work): the want is dropped with the last of them, not before, and only while not owned.
#[test]
fn a_guest_is_wanted_no_more_once_its_last_connection_ended() {
    let gate: Arc<GuestGate> = Arc::new(GuestGate::new(Arc::new((
        Mutex::new(false),
        Condvar::new(),
    ))));
    let dyn_gate: Arc<dyn Gate> = gate.clone();
    let (blk, scsi) = (
        Handoff::gated(Some(dyn_gate.clone())),
        Handoff::gated(Some(dyn_gate)),
    );
    let (b, s) = (blk.ticket(), scsi.ticket());
    assert!(!gate.hold(), "a ring has work");
    b.end();
    b.end();
    assert!(gate.wanted(), "an ended ticket ended again counts once");
    s.end();
    assert!(
        !gate.wanted() && !gate.moving(),
        "the last connection ended"
    );
    let t = blk.ticket();
    assert!(!gate.hold());
    gate.owned();
    t.end();
    assert_eq!(gate.own(), Own::Yes, "an owned guest stays owned");
}

/// The source's connection has work while the guest is being handed over (its QEMU restarted
/// the rings) and then ends before the hand-over is committed: nothing here wants the guest
/// afterwards, so this daemon does not ask it back with no connection to serve it.
#[test]
fn a_connection_that_ended_while_its_guest_was_handed_over_wants_nothing_after() {
    let gate: Arc<GuestGate> = Arc::new(GuestGate::new(Arc::new((
        Mutex::new(false),
        Condvar::new(),
    ))));
    let dyn_gate: Arc<dyn Gate> = gate.clone();
    let blk = Handoff::gated(Some(dyn_gate));
    let t = blk.ticket();
    gate.owned();
    assert!(gate.begin_leaving());
    assert!(
        !gate.hold(),
        "a ring has work while the guest is handed over"
    );
    t.end();
    gate.set(Own::No);
    assert!(
        !gate.wanted() && !gate.moving(),
        "handed over with no connection left: not asked back"
    );
}
