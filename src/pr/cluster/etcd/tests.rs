use super::*;

#[test]
fn the_settled_marker_orders_as_its_bytes() {
    let epochs = [0, 1, 9, 10, 99, 100, 12_345, u64::MAX - 1, u64::MAX];
    for w in epochs.windows(2) {
        assert!(settled_value(w[0]) < settled_value(w[1]), "{w:?}");
    }
    for e in epochs {
        assert_eq!(parse_settled(settled_value(e).as_bytes()), e);
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
        assert_eq!(parse_settled(v), 0, "{v:?}");
    }
    assert_eq!(parse_settled(b"99999999999999999999"), 0, "beyond u64");
}
