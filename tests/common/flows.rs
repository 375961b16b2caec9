//! The two "Persistent reservation flow"s of the seeds (Azure shared disks, Elastic SAN shared
//! volumes), played by real guests on a real daemon process. The demo narrates them; the e2e
//! tests assert them.

use std::fmt::Display;
use std::time::Instant;

use super::cluster::{self, GuestPr};
use super::guest::Guest;
use std::path::{Path, PathBuf};

use super::process::DaemonProcess;

/// Prints one line per step with ✔/✘ and counts them.
pub struct Narrator {
    passed: usize,
    failed: Vec<String>,
    started: Instant,
    color: bool,
}

impl Default for Narrator {
    fn default() -> Self {
        use std::io::IsTerminal;
        Narrator {
            passed: 0,
            failed: Vec::new(),
            started: Instant::now(),
            color: std::io::stdout().is_terminal(),
        }
    }
}

impl Narrator {
    /// Wraps `text` in an SGR colour when printing to a terminal.
    fn paint(&self, sgr: &str, text: impl Display) -> String {
        if self.color {
            format!("\x1b[{sgr}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn section(&self, title: &str) {
        println!("\n{}", self.paint("1", title));
    }

    pub fn note(&self, text: impl Display) {
        println!("    {text}");
    }

    /// Records one expectation of the seed flow.
    pub fn check(&mut self, what: impl Display, ok: bool) -> bool {
        let t = self.started.elapsed().as_secs_f64();
        let (mark, color) = if ok { ("✔", "32") } else { ("✘", "31") };
        let time = self.paint("2", format!("({t:.1}s)"));
        println!("  {} {what}  {time}", self.paint(color, mark));
        if ok {
            self.passed += 1;
        } else {
            self.failed.push(what.to_string());
        }
        ok
    }

    pub fn passed(&self) -> usize {
        self.passed
    }

    pub fn failures(&self) -> &[String] {
        &self.failed
    }

    /// Prints the summary; true when every step behaved as the seed says.
    pub fn summary(&self) -> bool {
        println!("\n{} passed, {} failed", self.passed, self.failed.len());
        for f in &self.failed {
            println!("  ✘ {f}");
        }
        self.failed.is_empty()
    }
}

/// Where the flows find each guest's sockets and the image: one daemon, or several daemons of a
/// cluster sharing the image.
pub trait Served: Sync {
    fn blk(&self, guest: &str) -> PathBuf;
    fn scsi(&self, guest: &str) -> PathBuf;
    fn image(&self) -> &Path;
}

impl Served for DaemonProcess {
    fn blk(&self, guest: &str) -> PathBuf {
        DaemonProcess::blk(self, guest)
    }
    fn scsi(&self, guest: &str) -> PathBuf {
        DaemonProcess::scsi(self, guest)
    }
    fn image(&self) -> &Path {
        &self.image
    }
}

fn boot(d: &dyn Served, names: &[&'static str]) -> Vec<Guest> {
    cluster::boot_with(names, |n| (d.blk(n), d.scsi(n)))
}

/// Writes a text record to 4 KiB block `block` of `dev`; true on success.
///
/// The block is built whole first: busybox dd drops O_DIRECT for a short last input block, and
/// a buffered write would hide the device's answer.
fn write_record(g: &Guest, dev: &str, block: u64, text: &str) -> bool {
    g.run(&format!(
        "(printf '%s' '{text}'; head -c 4096 /dev/zero) | head -c 4096 > /tmp/rec && \
         dd if=/tmp/rec of={dev} bs=4096 count=1 seek={block} oflag=direct 2>/dev/null"
    ))
    .0 == 0
}

/// Reads the text record at `block` of `dev` (None if the read fails).
fn read_record(g: &Guest, dev: &str, block: u64) -> Option<String> {
    let (rc, out) = g.run(&format!(
        "dd if={dev} bs=4096 count=1 skip={block} iflag=direct 2>/dev/null | tr -d '\\000'"
    ));
    (rc == 0).then(|| out.trim().to_string())
}

const DEVS: [(&str, &str); 2] = [("/dev/vda", "blk"), ("/dev/sda", "scsi")];

/// The text record at 4 KiB block `block` of the host image.
fn host_record(d: &dyn Served, block: u64) -> String {
    let raw = cluster::host_block(d.image(), block);
    String::from_utf8_lossy(&raw)
        .trim_end_matches('\0')
        .to_string()
}

/// A write that must fail: it fails, the image does not hold its record afterwards, and on the
/// SCSI disk the guest saw a reservation conflict.
fn refused_record(g: &Guest, d: &dyn Served, dev: &str, block: u64, text: &str) -> bool {
    let scsi = dev.contains("sd");
    let conflicts = if scsi { g.conflicts() } else { 0 };
    let failed = !write_record(g, dev, block, text);
    failed && host_record(d, block) != text && (!scsi || g.conflicts() > conflicts)
}

/// Flow 1, failover: VM1 holds the disk, dies, and VM2 takes it over and fences VM1.
pub fn failover(n: &mut Narrator, d: &dyn Served) {
    n.section("Flow 1: failover (2 guests)");
    let mut g = boot(d, &["vm1", "vm2"]);
    n.note(
        "vm1 and vm2 are up, each with /dev/vda (vhost-user-blk) and /dev/sda (vhost-user-scsi)",
    );

    let ok = g[0].pr("-o -I -S 0x1").0 == 0 && g[1].pr("-o -I -S 0x2").0 == 0;
    let keys = g[1].pr("-i -k").1;
    n.check(
        "1. both guests register their keys (REGISTER AND IGNORE EXISTING KEY 0x1, 0x2)",
        ok && keys.contains("0x1") && keys.contains("0x2"),
    );

    let reserved = g[0].pr("-o -R -K 0x1 -T 1").0 == 0;
    let res = g[1].pr("-i -r").1;
    n.check(
        "2. vm1 takes a Write Exclusive reservation",
        reserved && res.contains("Key=0x1") && res.contains("Write Exclusive"),
    );
    let wrote = write_record(&g[0], "/dev/vda", 10, "record-from-vm1");
    n.check("2. vm1 writes a record", wrote);

    for (dev, kind) in DEVS {
        n.check(
            format!("3. vm2's write to {dev} ({kind}) fails"),
            refused_record(&g[1], d, dev, 11, "vm2-was-here"),
        );
    }
    for (dev, kind) in DEVS {
        n.check(
            format!("3. vm2 still reads vm1's record on {dev} ({kind})"),
            read_record(&g[1], dev, 10).as_deref() == Some("record-from-vm1"),
        );
    }

    let vm1 = g.remove(0);
    vm1.kill();
    n.check(
        "4. vm1 is killed (its QEMU process ended)",
        !vm1.is_running(),
    );
    drop(vm1);

    let preempted = g[0].pr("-o -A -K 0x2 -S 0x1 -T 1").0 == 0;
    let res = g[0].pr("-i -r").1;
    n.check(
        "5. vm2 preempts vm1's key (PREEMPT AND ABORT) and now holds the reservation",
        preempted && res.contains("Key=0x2"),
    );
    let wrote = write_record(&g[0], "/dev/sda", 12, "record-from-vm2");
    n.check(
        "5. vm2 writes and reads back its record",
        wrote && read_record(&g[0], "/dev/vda", 12).as_deref() == Some("record-from-vm2"),
    );

    let vm1 = cluster::boot_one("vm1", d.blk("vm1"), d.scsi("vm1"));
    let keys = vm1.pr("-i -k").1;
    n.check(
        "6. vm1 is started again and finds its key gone",
        keys.contains("0x2") && !keys.contains("    0x1"),
    );
    for (dev, kind) in DEVS {
        n.check(
            format!("6. vm1's write to {dev} ({kind}) fails: it was fenced"),
            refused_record(&vm1, d, dev, 13, "vm1-after-fencing"),
        );
    }
    let cleared = g[0].pr("-o -C -K 0x2").0 == 0;
    n.check(
        "   vm2 clears every registration and the reservation, for the next flow",
        cleared && vm1.pr("-i -k").1.contains("NO registered reservation keys"),
    );
    g.push(vm1);
    for g in g {
        g.poweroff();
    }
}

/// Flow 2, many readers and one writer (the machine-learning flow of the seeds).
pub fn one_writer(n: &mut Narrator, d: &dyn Served) {
    n.section("Flow 2: many readers, one writer (3 guests)");
    let g = boot(d, &["vm1", "vm2", "vm3"]);
    n.note("vm1, vm2 and vm3 are up");
    let mut ok = true;
    for (i, g) in g.iter().enumerate() {
        ok &= g.pr(&format!("-o -I -S 0x{}", i + 11)).0 == 0; // 0x11, 0x12, 0x13
    }
    let keys = g[2].pr("-i -k").1;
    n.check(
        "1. every guest registers (keys 0x11, 0x12, 0x13)",
        ok && ["0x11", "0x12", "0x13"].iter().all(|k| keys.contains(k)),
    );
    let reserved = g[0].pr("-o -R -K 0x11 -T 1").0 == 0;
    n.check(
        "2. vm1 takes Write Exclusive: the others may read, not write",
        reserved,
    );
    n.check(
        "3. vm1 writes the results",
        write_record(&g[0], "/dev/sda", 20, "model-weights-v1"),
    );
    for g in &g {
        for (dev, kind) in DEVS {
            n.check(
                format!("4. {} reads the results on {dev} ({kind})", g.name()),
                read_record(g, dev, 20).as_deref() == Some("model-weights-v1"),
            );
        }
    }
    for g in &g {
        for (dev, kind) in DEVS {
            let holder = g.name() == "vm1";
            let ok = if holder {
                write_record(g, dev, 21, g.name()) && host_record(d, 21) == g.name()
            } else {
                refused_record(g, d, dev, 21, g.name())
            };
            n.check(
                format!(
                    "4. {}'s write to {dev} ({kind}) {}",
                    g.name(),
                    if holder { "succeeds" } else { "fails" }
                ),
                ok,
            );
        }
    }
    for g in g {
        g.poweroff();
    }
}
