//! Unit tests of `lun`.

use super::*;

#[test]
fn serial_is_twenty_bytes_and_stable() {
    let s = serial_for(fnv1a(b"/var/lib/disk.img"));
    assert_eq!(s.len(), SERIAL_LEN);
    assert_eq!(s, serial_for(fnv1a(b"/var/lib/disk.img")));
    assert_ne!(s, serial_for(fnv1a(b"/var/lib/other.img")));
}
