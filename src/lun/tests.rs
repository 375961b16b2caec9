//! Unit tests of `lun`.

use super::*;

#[test]
fn serial_is_twenty_bytes_and_stable() {
    let s = serial_for(fnv1a(b"/var/lib/disk.img"));
    assert_eq!(s.len(), SERIAL_LEN);
    assert_eq!(s, serial_for(fnv1a(b"/var/lib/disk.img")));
    assert_ne!(s, serial_for(fnv1a(b"/var/lib/other.img")));
}

#[test]
fn a_fenced_initiator_cannot_change_the_write_cache() {
    use crate::pr::arbiter::Arbiter;
    use crate::pr::{ProutRequest, ResType, ServiceAction};
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    let image = crate::image::FileImage::open(&img, Some(1 << 20), false).unwrap();
    let names = ["vm1", "vm2"].map(String::from);
    let lun = Lun::new(
        Box::new(image),
        Reservations::new(Arbiter::new(names), None),
        &img,
    );
    let prout = |who: &str, req: ProutRequest| lun.reservations.prout(who, &req, None);
    prout("vm1", ProutRequest::new(ServiceAction::Register).sa_key(1));
    let reserve = ProutRequest::new(ServiceAction::Reserve)
        .key(1)
        .typ(ResType::WriteExclusive);
    prout("vm1", reserve);
    assert!(matches!(
        lun.set_write_cache("vm2", false),
        Err(Refusal::Conflict)
    ));
    assert!(lun.write_cache(), "unchanged");
    assert!(matches!(lun.set_write_cache("vm1", false), Ok(Ok(true))));
    assert!(!lun.write_cache());
}
