use super::*;

fn member(pid: u32, ack: Option<AckValue>) -> Member {
    Member {
        node: "h1".into(),
        incarnation: Some(MemberValue {
            node: "h1".into(),
            host: "host".into(),
            pid,
            started_ns: 7,
            boot_id: "boot".into(),
        }),
        ack,
        ack_revision: 10,
    }
}

fn ack(epoch: u64, history: &str, incarnation: &str) -> AckValue {
    AckValue {
        epoch,
        initiators: vec![],
        lease_remaining_ms: 0,
        history: history.into(),
        incarnation: incarnation.into(),
    }
}

#[test]
fn only_the_registered_incarnation_vouches_for_our_history() {
    let ours = "boot/7/10";
    assert!(member(10, Some(ack(5, "h", ours))).acknowledged("h", 5, 0));
    assert!(member(10, Some(ack(6, "h", ours))).acknowledged("h", 5, 0));
    assert!(
        !member(10, Some(ack(4, "h", ours))).acknowledged("h", 5, 0),
        "older"
    );
    assert!(
        !member(11, Some(ack(5, "h", ours))).acknowledged("h", 5, 0),
        "another incarnation's"
    );
    assert!(
        !member(10, Some(ack(5, "g", ours))).acknowledged("h", 5, 0),
        "another history"
    );
    let pending = format!("not vouching: {ours}");
    assert!(
        !member(10, Some(ack(9, "h", &pending))).acknowledged("h", 5, 0),
        "not vouching yet"
    );
    assert!(!member(10, None).acknowledged("h", 5, 0), "no ack");
    assert!(
        !member(10, Some(ack(5, "h", ours))).acknowledged("h", 5, 10),
        "written before the commit at revision 10 (maybe of a state etcd no longer holds)"
    );
    // An acknowledgement written before incarnations existed never vouches.
    let old: AckValue =
        serde_json::from_str(r#"{"epoch":9,"initiators":[],"lease_remaining_ms":1}"#).unwrap();
    assert!(!member(10, Some(old)).acknowledged("", 5, 0));
    let gone = Member {
        incarnation: None,
        ..member(10, Some(ack(9, "h", ours)))
    };
    assert!(
        !gone.acknowledged("h", 5, 0),
        "a member key that does not parse"
    );
}

#[test]
fn node_names_that_read_as_options_are_refused() {
    use crate::pr::cluster::config::name_ok;
    assert!(name_ok("h1") && name_ok("node-2.example") && name_ok("a_b"));
    for bad in [
        "",
        "-oProxyCommand=x",
        "-h",
        "a b",
        "a;b",
        "$(x)",
        &"x".repeat(65),
    ] {
        assert!(!name_ok(bad), "{bad:?}");
    }
}

#[test]
fn a_state_written_before_histories_has_an_empty_one() {
    let v: StateValue = serde_json::from_str(
        r#"{"epoch":3,"state":{"generation":0,"registrations":[],"reservation":null,"aptpl":false}}"#,
    )
    .unwrap();
    assert_eq!((v.epoch, v.history.as_str()), (3, ""));
    assert_eq!(new_history().len(), 32);
    assert_ne!(new_history(), new_history());
}

#[test]
fn the_settled_marker_orders_as_its_bytes() {
    let epochs = [0, 1, 9, 10, 99, 100, 12_345, u64::MAX - 1, u64::MAX];
    for w in epochs.windows(2) {
        assert!(settled_value(w[0], "h") < settled_value(w[1], "h"), "{w:?}");
    }
    for e in epochs {
        assert_eq!(parse_settled(settled_value(e, "h").as_bytes(), "h"), e);
        assert_eq!(
            parse_settled(settled_value(e, "g").as_bytes(), "h"),
            0,
            "another history's marker settles nothing"
        );
    }
}

#[test]
fn a_hostile_settled_marker_counts_as_none_settled() {
    for v in [
        &b""[..],
        b"7",
        b"-0000000000000000001",
        b"0000000000000000000x",
        &[0xff; 20],
    ] {
        assert_eq!(parse_settled(v, ""), 0, "{v:?}");
        assert_eq!(parse_settled(v, "h"), 0, "{v:?}");
    }
    assert_eq!(
        parse_settled(b"99999999999999999999 h", "h"),
        0,
        "beyond u64"
    );
    assert_eq!(parse_settled(b"00000000000000000007", ""), 0, "no history");
}

#[test]
fn a_shared_state_naming_an_initiator_no_transport_produces_is_refused() {
    let state = |name: &str| -> StateValue {
        serde_json::from_value(serde_json::json!({
            "epoch": 4,
            "state": {"generation": 1, "registrations": [{"initiator": name, "key": 7}],
                      "reservation": null, "aptpl": false},
        }))
        .unwrap()
    };
    for good in [
        "vm1",
        "iqn.1993-08.org.debian:01:node1,i,0x00023d000001",
        "eui.0123456789abcdef,i,0x400001370000",
    ] {
        assert_eq!(check_state(&state(good)), Ok(()), "{good}");
    }
    for bad in [
        "",
        "vm 1",
        &"v".repeat(65),
        "iqn.x,i,0x00023d00000",
        "iqn.x,i,0x00023d00000g",
        "iqn.X,i,0x00023d000001",
        "iqn.x,i,0x00023D000001",
        "iqn.x,i,0x00023d000001,i,0x00023d000001",
        "host,i,0x00023d000001",
        &format!("iqn.{},i,0x00023d000001", "a".repeat(220)),
    ] {
        assert!(check_state(&state(bad)).is_err(), "{bad:?} was accepted");
    }
}
