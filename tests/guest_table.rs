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
    let first = 16u64;
    let mut block = first;
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
            }
        }
        holder.pr_ok("-o -C -K 0x11");
    }
    for g in &g {
        g.poweroff();
    }
    // The image holds exactly the allowed writes: every block the table wrote holds its
    // writer's whole record if the write was allowed, and is still zero if it was refused (a
    // refused write that reached the image later, or a write on the wrong block, shows here).
    let landed: std::collections::BTreeMap<u64, &str> = landed.into_iter().collect();
    for b in first..block {
        let on_image = host_block(d.image(), b);
        match landed.get(&b) {
            Some(guest) => assert_eq!(
                on_image,
                dd_record(guest, b),
                "block {b} holds {guest}'s whole record"
            ),
            None => assert!(
                on_image.iter().all(|&x| x == 0),
                "block {b}: a refused write is on the image"
            ),
        }
    }
}
