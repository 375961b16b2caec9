//! The seed's type table, from inside real guests: vm1 holds each reservation type in turn, vm2
//! is registered, vm3 is not; every guest reads and writes through both /dev/vda (vhost-user-blk)
//! and /dev/sda (vhost-user-scsi), and the image afterwards holds exactly the allowed writes.

mod common;

use common::cluster::{self, dd_record, host_block, GuestPr};
use common::daemon::TestDaemon;

/// (read allowed, write allowed) for the registered guest, then the other one.
type Expect = [(bool, bool); 2];

/// (type code, name in sg_persist output, expectations).
const ROWS: [(u8, &str, Expect); 7] = [
    (0, "NO RESERVATION", [(true, true), (true, true)]),
    (1, "Write Exclusive", [(true, false), (true, false)]),
    (3, "Exclusive Access", [(false, false), (false, false)]),
    (
        5,
        "Write Exclusive, registrants only",
        [(true, true), (true, false)],
    ),
    (
        6,
        "Exclusive Access, registrants only",
        [(true, true), (false, false)],
    ),
    (
        7,
        "Write Exclusive, all registrants",
        [(true, true), (true, false)],
    ),
    (
        8,
        "Exclusive Access, all registrants",
        [(true, true), (false, false)],
    ),
];

#[test]
fn seed_type_table_on_both_devices() {
    let d = TestDaemon::start(&["vm1", "vm2", "vm3"]);
    let g = cluster::boot(&d, &["vm1", "vm2", "vm3"]);
    let (holder, registered, other) = (&g[0], &g[1], &g[2]);
    // (block, guest) of every write that must have landed, checked whole on the image at the end.
    let mut landed: Vec<(u64, &str)> = Vec::new();
    // Every (row, device, guest, read/write) whose outcome matched the table.
    let mut verified = std::collections::BTreeSet::new();
    let mut block = 16u64;
    for (row, (code, name, expect)) in ROWS.iter().enumerate() {
        eprintln!("=== row {row}: {name}");
        holder.pr_ok("-o -I -S 0x11");
        registered.pr_ok("-o -I -S 0x22");
        if *code != 0 {
            holder.pr_ok(&format!("-o -R -K 0x11 -T {code}"));
            let out = registered.pr_ok("-i -r");
            assert!(out.contains(&format!("type: {name}")), "{out}");
            let key = if *code >= 7 { "Key=0x0" } else { "Key=0x11" };
            assert!(out.contains(key), "{out}");
        } else {
            assert!(registered
                .pr_ok("-i -r")
                .contains("there is NO reservation held"));
        }
        for dev in ["/dev/vda", "/dev/sda"] {
            assert!(holder.dd_read(dev, 0), "holder reads {dev} under {name}");
            assert!(
                holder.dd_write(dev, block),
                "holder writes {dev} under {name}"
            );
            landed.push((block, "vm1"));
            block += 1;
            verified.insert((row, dev, "vm1", "read"));
            verified.insert((row, dev, "vm1", "write"));
            for (guest, (read, write)) in [registered, other].into_iter().zip(expect) {
                guest.drain_ua();
                assert_eq!(
                    guest.dd_read(dev, 0),
                    *read,
                    "[{}] read {dev} under {name}",
                    guest.name()
                );
                if *write {
                    assert!(
                        guest.dd_write(dev, block),
                        "[{}] write {dev} under {name}",
                        guest.name()
                    );
                    landed.push((block, guest.name()));
                } else {
                    // Refused: the record is not on the image, and on SCSI it was a conflict.
                    guest.assert_write_refused(
                        dev,
                        block,
                        d.image(),
                        &format!("write {dev} under {name}"),
                    );
                }
                block += 1;
                verified.insert((row, dev, guest.name(), "read"));
                verified.insert((row, dev, guest.name(), "write"));
            }
        }
        holder.pr_ok("-o -C -K 0x11");
    }
    for g in &g {
        g.poweroff();
    }
    // Every cell of the table was checked: 7 rows x 2 devices x 3 guests x read/write.
    assert_eq!(verified.len(), ROWS.len() * 2 * 3 * 2);
    for (block, guest) in landed {
        assert_eq!(
            host_block(d.image(), block),
            dd_record(guest, block),
            "block {block} holds {guest}'s whole record"
        );
    }
}
