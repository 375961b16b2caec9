//! Unit tests of `qemu`.

use super::*;

#[test]
fn args_name_both_sockets_and_the_shared_memory() {
    let a = args_for(Path::new("/run/sd"), "vm1", "1G", Some((7, 2))).unwrap();
    assert!(a.contains("size=1024M,share=on"));
    assert!(a.contains("path=/run/sd/vm1-blk.sock,reconnect=1 "));
    assert!(a.contains("path=/run/sd/vm1-scsi.sock -device"));
    assert!(args(Path::new("/x"), "a b", "1G").is_err());
    assert!(args(Path::new("/x"), "vm1", "1000K").is_err());
}

#[test]
fn reconnect_syntax_follows_the_qemu_version() {
    assert_eq!(reconnect_options(Some((7, 2))), (",reconnect=1", ""));
    assert_eq!(
        reconnect_options(Some((8, 2))),
        (",reconnect=1", ",reconnect=1")
    );
    assert_eq!(
        reconnect_options(Some((10, 0))),
        (",reconnect-ms=1000", ",reconnect-ms=1000")
    );
    assert_eq!(
        parse_version("QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7)"),
        Some((7, 2))
    );
    assert_eq!(
        parse_version("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"),
        Some((10, 0))
    );
}

#[test]
fn libvirt_fragments() {
    let mut g = GuestConfig::new("vm1");
    g.queues = 2;
    let x = libvirt_for(Path::new("/run/sd"), &g, Some((7, 2))).unwrap();
    assert!(x.contains("<source type='memfd'/>") && x.contains("<access mode='shared'/>"));
    assert!(x.contains("<disk type='vhostuser' device='disk'>"));
    assert!(x.contains("path='/run/sd/vm1-blk.sock'"));
    assert!(x.contains("queues='2'"));
    assert!(
        x.contains("value='socket,id=sd-scsi,path=/run/sd/vm1-scsi.sock'"),
        "{x}"
    );
    assert!(x.contains("num_queues=2,bus=pci.0,addr=0x10"));
    let x = libvirt_for(Path::new("/run/sd"), &g, Some((10, 0))).unwrap();
    assert!(x.contains("vm1-scsi.sock,reconnect-ms=1000'"), "{x}");
    g.scsi = false;
    let x = libvirt_for(Path::new("/run/a&b"), &g, None).unwrap();
    assert!(!x.contains("qemu:commandline"));
    assert!(x.contains("/run/a&amp;b/vm1-blk.sock"));
}

#[test]
fn the_destination_of_a_migration_gets_the_same_devices_and_incoming() {
    let a = args_for(Path::new("/run/sd"), "vm1", "1G", Some((10, 0))).unwrap();
    let d = incoming(&a, "unix:/run/vm1-migrate.sock").unwrap();
    assert_eq!(d, format!("{a} -incoming unix:/run/vm1-migrate.sock"));
    assert!(incoming(&a, "").is_err());
    assert!(incoming(&a, "tcp:1.2.3.4:5 -device x").is_err());
}
