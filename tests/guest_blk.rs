//! Real QEMU guests on the vhost-user-blk device (TCG unless KVM really works).

mod common;

use common::daemon::TestDaemon;
use common::guest::{Guest, GuestOpts};

fn boot(d: &TestDaemon, name: &'static str) -> Guest {
    let mut opts = GuestOpts::new(name);
    opts.blk = Some(d.blk(name));
    Guest::boot(opts)
}

#[test]
fn guests_write_read_and_see_the_serial() {
    let d = TestDaemon::start_with(&["vm1", "vm2"], |c| c.scsi = false);
    let serial = d.server().lun().serial.clone();
    let (vm1, vm2) = std::thread::scope(|s| {
        let a = s.spawn(|| boot(&d, "vm1"));
        let b = s.spawn(|| boot(&d, "vm2"));
        (a.join().unwrap(), b.join().unwrap())
    });

    assert_eq!(vm1.sh("cat /sys/block/vda/serial").trim(), serial);
    assert_eq!(vm2.sh("cat /sys/block/vda/serial").trim(), serial);
    assert_eq!(vm1.sh("cat /sys/block/vda/size").trim(), "131072");

    vm1.sh("yes sharedisk-vm1 | head -c 1048576 > /tmp/p");
    vm1.sh("dd if=/tmp/p of=/dev/vda bs=65536 count=16 seek=3 oflag=direct");
    vm1.sh("dd if=/dev/vda of=/tmp/r bs=65536 count=16 skip=3 iflag=direct && cmp /tmp/p /tmp/r");

    // The second guest reads the first guest's data through its own socket.
    vm2.sh("yes sharedisk-vm1 | head -c 1048576 > /tmp/p");
    vm2.sh("dd if=/dev/vda of=/tmp/r bs=65536 count=16 skip=3 iflag=direct && cmp /tmp/p /tmp/r");
    let (rc, _) = vm2.run("dd if=/dev/vda bs=65536 count=1 iflag=direct | cmp - /tmp/p");
    assert_ne!(rc, 0, "an unwritten region differs from the pattern");
    vm1.poweroff();
    vm2.poweroff();
}

/// QEMU reads the config space once, before the guest's driver negotiates, and shows the guest
/// that copy: `writeback` must then show the LU's cache (write-back), or a Linux guest, which
/// negotiates FLUSH, would believe in a write-through disk and never flush. The guest's own
/// `cache_type` write reaches the LU through QEMU's config write.
#[test]
fn a_guest_sees_the_lus_write_back_cache_and_can_turn_it_off() {
    let d = TestDaemon::start_with(&["vm1"], |c| c.scsi = false);
    let vm1 = boot(&d, "vm1");
    assert!(d.server().lun().write_cache());
    assert_eq!(
        vm1.sh("cat /sys/block/vda/queue/write_cache").trim(),
        "write back"
    );
    vm1.sh("echo 'write through' > /sys/block/vda/cache_type");
    assert!(!d.server().lun().write_cache(), "the guest turned it off");
    assert_eq!(
        vm1.sh("cat /sys/block/vda/queue/write_cache").trim(),
        "write through"
    );
    vm1.poweroff();
}
