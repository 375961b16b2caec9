//! Daemon crashes under load, seen from QEMU guests: two guests write sequence-numbered 4 KiB
//! blocks with `dd oflag=direct` on both devices, one of them also changes its PR key in a loop
//! (`sg_persist -o -G`), while the daemon is killed at random moments (SIGKILL, and SIGTERM every
//! fourth round) and started again. Each round every writer must make progress again within 10 s;
//! at the end every acknowledged block is in the image, no block is torn, the key is the last
//! acknowledged one, PRgeneration counts exactly the acknowledged changes, and no change was
//! answered RESERVATION CONFLICT.
//!
//! The 10 s hold while the guests answer the test's probes promptly. On a host so loaded that a
//! probe (`cat | wc -l` in the guest) takes a second or more, the guests' writers are starved as
//! well: a round then has up to 60 s, and the report names it. A hang (a lost interrupt or kick
//! never recovers) fails either way, with what the guest and QEMU say about the stalled ring.
//!
//! Both devices on QEMU >= 8.2 (vhost-user-scsi reconnects from there on); on older QEMU the blk
//! path alone. `SHAREDISK_SOAK_KILLS` (default 20) sets the rounds, `SHAREDISK_SOAK_SEED` the
//! random moments.

mod common;

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::guest::{qemu_version, Guest};
use common::process::DaemonProcess;
use rand::{Rng, SeedableRng};

/// 4 KiB blocks per writer region: far more than a soak writes.
const REGION_BLOCKS: u64 = 8192;
const BLOCK: usize = 4096;
/// Every writer makes progress again within this after a restart...
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(10);
/// ... unless a probe of the guests took [`STARVED_PROBE`] or more in that round: the host is
/// then too loaded for the guests to keep time, and a round has this long. A hang never
/// recovers, so it fails here too.
const HANG_TIMEOUT: Duration = Duration::from_secs(60);
/// A guest that takes this long to count the lines of a file is starved of CPU (it takes
/// 0.02-0.05 s on an idle host).
const STARVED_PROBE: Duration = Duration::from_secs(1);

fn env_u64(var: &str, default: u64) -> u64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The 4 KiB a writer puts at sequence number `seq`: its name line, repeated.
fn record(guest: &str, dev: &str, seq: u64) -> Vec<u8> {
    let line = format!("{guest}-{dev}-{seq}\n");
    line.bytes().cycle().take(BLOCK).collect()
}

struct Writer {
    guest: usize,
    dev: &'static str,
    /// First 4 KiB block of its region.
    base: u64,
}

/// Where guest `name`'s QEMU answers QMP.
fn qmp_socket(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}-qmp.sock"))
}

fn start_writers(g: &Guest, writers: &[&Writer], pr_loop: bool) {
    // Each loop runs in the background, silent; each acknowledged sequence number (or key) is
    // appended to /tmp/ack-DEV, each failure to /tmp/err-DEV. /tmp/w.sh is `writer_script`.
    for w in writers {
        g.sh(&format!(
            ": > /tmp/ack-{dev}; : > /tmp/err-{dev}; \
             sh /tmp/w.sh {dev} {base} </dev/null >/dev/null 2>&1 & echo $! >> /tmp/pids",
            dev = w.dev,
            base = w.base
        ));
    }
    if pr_loop {
        g.sh(&format!("printf '%b' '{}' > /tmp/k.sh", key_script()));
        g.sh(": > /tmp/ack-key; : > /tmp/err-key; \
             sh /tmp/k.sh </dev/null >/dev/null 2>&1 & echo $! >> /tmp/pids");
    }
}

/// The writer loop, as one `printf` line (the guest agent takes one line per command).
fn writer_script(name: &str) -> String {
    let script = format!(
        "dev=$1; base=$2; s=0\n\
         while [ $s -lt {REGION_BLOCKS} ] && [ ! -e /tmp/stop ]; do\n\
         yes {name}-$dev-$s | head -c 4096 > /tmp/blk-$dev\n\
         if dd if=/tmp/blk-$dev of=/dev/$dev bs=4096 count=1 seek=$((base + s)) oflag=direct 2>/dev/null; then\n\
         echo $s >> /tmp/ack-$dev; s=$((s + 1))\n\
         else echo $s >> /tmp/err-$dev; sleep 0.2; fi\n\
         done\n"
    );
    format!("printf '%b' '{}' > /tmp/w.sh", script.replace('\n', "\\n"))
}

/// Changes the registered key from k to k+1 over and over; acknowledged keys go to
/// /tmp/ack-key, failures (with sg_persist's exit status) to /tmp/err-key.
fn key_script() -> String {
    "k=1\n\
     until sg_persist -n -o -I -S 1 /dev/sda >/dev/null 2>&1; do sleep 0.2; done\n\
     echo 1 >> /tmp/ack-key\n\
     while [ ! -e /tmp/stop ]; do\n\
     if sg_persist -n -o -G -K $k -S $((k + 1)) /dev/sda >/dev/null 2>&1; then\n\
     k=$((k + 1)); echo $k >> /tmp/ack-key\n\
     else echo \"$k $?\" >> /tmp/err-key; sleep 0.2; fi\n\
     done\n"
        .replace('\n', "\\n")
}

/// Lines in a guest file.
fn count(g: &Guest, file: &str) -> u64 {
    g.sh(&format!("cat {file} | wc -l"))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("[{}] counting {file}: {e}", g.name()))
}

/// The acknowledgement files the rounds watch, each with its guest's index.
struct Watch<'a> {
    guests: &'a [Guest],
    files: Vec<(usize, String)>,
    /// Each guest's QMP socket, for the stall report.
    qmp: Vec<PathBuf>,
}

/// How a round went.
struct Recovery {
    took: Duration,
    /// The slowest probe of the guests in the round.
    slowest_probe: Duration,
}

impl Watch<'_> {
    /// Waits until every file has grown, within [`PROGRESS_TIMEOUT`] (or [`HANG_TIMEOUT`] on a
    /// starved host); fails the test, with a stall report, when one has not.
    fn progress(&self, label: &str, d: &DaemonProcess) -> Recovery {
        let start = Instant::now();
        let slowest = std::cell::Cell::new(Duration::ZERO);
        let probe = |i: usize| {
            let t = Instant::now();
            let (g, f) = &self.files[i];
            let n = count(&self.guests[*g], f);
            slowest.set(slowest.get().max(t.elapsed()));
            n
        };
        let before: Vec<u64> = (0..self.files.len()).map(probe).collect();
        let mut waiting: Vec<usize> = (0..self.files.len()).collect();
        while !waiting.is_empty() {
            let slowest_probe = slowest.get();
            let starved = slowest_probe >= STARVED_PROBE;
            let limit = if starved {
                HANG_TIMEOUT
            } else {
                PROGRESS_TIMEOUT
            };
            if start.elapsed() >= limit {
                let stalled: Vec<String> = waiting
                    .iter()
                    .map(|&i| {
                        format!(
                            "{}:{}",
                            self.guests[self.files[i].0].name(),
                            self.files[i].1
                        )
                    })
                    .collect();
                for &i in &waiting {
                    self.stall_report(i);
                }
                panic!(
                    "{label}: no progress within {limit:?} on {stalled:?} (slowest guest probe \
                     {slowest_probe:?}); daemon log:\n{}",
                    d.log()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
            waiting.retain(|&i| probe(i) == before[i]);
        }
        Recovery {
            took: start.elapsed(),
            slowest_probe: slowest.get(),
        }
    }

    /// What the guest and its QEMU say about the device of a stalled writer: the block layer's
    /// requests in flight, the interrupts taken, and the request ring's avail and used indices
    /// in guest memory (used behind avail: the daemon did not complete a request; equal with a
    /// request in flight: the driver was not interrupted for its completion).
    fn stall_report(&self, i: usize) {
        let (gi, file) = &self.files[i];
        let g = &self.guests[*gi];
        let (dev, device, queue) = match file.trim_start_matches("/tmp/ack-") {
            "vda" => ("vda", "virtio-blk", 0),
            // The key loop also runs on /dev/sda; the request queue follows control and event.
            _ => ("sda", "virtio-scsi", 2),
        };
        eprintln!("[{}] stalled: {file}", g.name());
        let hctx = format!("/sys/kernel/debug/block/{dev}/hctx0");
        let _ = g.try_run(
            &format!(
                "cat /sys/block/{dev}/inflight; \
                 grep -q debugfs /proc/mounts || mount -t debugfs none /sys/kernel/debug; \
                 grep -H . {hctx}/dispatch {hctx}/active {hctx}/busy; grep busy= {hctx}/tags; \
                 grep -i virtio /proc/interrupts"
            ),
            Duration::from_secs(10),
        );
        let sock = &self.qmp[*gi];
        let devices = qmp(sock, r#"{"execute":"x-query-virtio"}"#);
        // [{"name": "virtio-blk", "path": "/machine/..."}, ...]
        let path = devices
            .split('{')
            .find(|d| d.contains(&format!("\"{device}\"")))
            .and_then(|d| d.split("\"path\": \"").nth(1))
            .and_then(|p| p.split('"').next());
        let Some(path) = path else {
            eprintln!(
                "[{}] no {device} in QMP's x-query-virtio: {devices}",
                g.name()
            );
            return;
        };
        let args = format!(r#"{{"path":"{path}","queue":{queue}}}"#);
        let element = qmp(
            sock,
            &format!(r#"{{"execute":"x-query-virtio-queue-element","arguments":{args}}}"#),
        );
        eprintln!("[{}] {device} queue {queue}: {}", g.name(), element.trim());
    }
}

/// The answer to one QMP command on `sock` (or why there is none).
fn qmp(sock: &Path, command: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let stream = match UnixStream::connect(sock) {
        Ok(s) => s,
        Err(e) => return format!("cannot connect to {}: {e}", sock.display()),
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let Ok(mut writer) = stream.try_clone() else {
        return "cannot clone the QMP stream".into();
    };
    let mut reader = BufReader::new(stream);
    // The next greeting or answer, skipping events.
    let mut answer = || -> Option<String> {
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if ["\"QMP\"", "\"return\"", "\"error\""]
                .iter()
                .any(|k| line.contains(k))
            {
                return Some(line);
            }
        }
    };
    let mut exchange = |request: &str| {
        answer()?;
        writer.write_all(format!("{request}\n").as_bytes()).ok()
    };
    if exchange(r#"{"execute":"qmp_capabilities"}"#).is_none() || exchange(command).is_none() {
        return "QMP did not answer".into();
    }
    answer().unwrap_or_else(|| "QMP did not answer".into())
}

#[test]
fn guests_ride_through_daemon_crashes_on_both_devices() {
    let (major, minor) = qemu_version();
    let scsi = (major, minor) >= (8, 2);
    let kills = env_u64("SHAREDISK_SOAK_KILLS", 20);
    let seed = env_u64("SHAREDISK_SOAK_SEED", 7);
    eprintln!(
        "soak: QEMU {major}.{minor}, devices: {}, {kills} kills, seed {seed}",
        if scsi { "blk and scsi" } else { "blk" }
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = tempfile::tempdir().unwrap();
    let names = ["vm1", "vm2"];
    let mut d = DaemonProcess::start(dir.path(), &names, "160M");
    let guests: Vec<Guest> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .iter()
            .map(|&n| {
                let mut o = common::guest::GuestOpts::new(n);
                o.blk = Some(d.blk(n));
                o.scsi = scsi.then(|| d.scsi(n));
                o.reconnect = true;
                let qmp = qmp_socket(dir.path(), n);
                o.extra_args = vec![
                    "-qmp".into(),
                    format!("unix:{},server=on,wait=off", qmp.display()),
                ];
                s.spawn(move || Guest::boot(o))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut writers = Vec::new();
    for gi in 0..guests.len() {
        let mut devs = vec!["vda"];
        if scsi {
            devs.push("sda");
        }
        for (di, dev) in devs.into_iter().enumerate() {
            writers.push(Writer {
                guest: gi,
                dev,
                base: (gi as u64 * 2 + di as u64) * REGION_BLOCKS,
            });
        }
    }
    for (gi, g) in guests.iter().enumerate() {
        g.sh(&writer_script(g.name()));
        let mine: Vec<&Writer> = writers.iter().filter(|w| w.guest == gi).collect();
        start_writers(g, &mine, scsi && gi == 1);
    }

    let mut files: Vec<(usize, String)> = writers
        .iter()
        .map(|w| (w.guest, format!("/tmp/ack-{}", w.dev)))
        .collect();
    if scsi {
        files.push((1, "/tmp/ack-key".into()));
    }
    let watch = Watch {
        guests: &guests,
        files,
        qmp: names.iter().map(|n| qmp_socket(dir.path(), n)).collect(),
    };

    watch.progress("start", &d);
    let (mut worst, mut starved) = (Duration::ZERO, Vec::new());
    for round in 0..kills {
        std::thread::sleep(Duration::from_millis(rng.gen_range(100..1500)));
        let signal = if round % 4 == 3 {
            libc::SIGTERM
        } else {
            libc::SIGKILL
        };
        d.kill(signal);
        std::thread::sleep(Duration::from_millis(rng.gen_range(0..500)));
        d.respawn();
        let r = watch.progress(&format!("round {round}"), &d);
        worst = worst.max(r.took);
        if r.slowest_probe >= STARVED_PROBE {
            starved.push(format!(
                "{round}: {:?} (probe {:?})",
                r.took, r.slowest_probe
            ));
        }
    }

    // Stop every loop and wait for it to end.
    for g in &guests {
        g.sh("touch /tmp/stop; while [ -s /tmp/pids ] && kill -0 $(cat /tmp/pids) 2>/dev/null; do sleep 0.1; done; :");
    }
    let mut acked = BTreeMap::new();
    let mut errors = 0;
    for w in &writers {
        let g = &guests[w.guest];
        let n = count(g, &format!("/tmp/ack-{}", w.dev));
        errors += count(g, &format!("/tmp/err-{}", w.dev));
        acked.insert((w.guest, w.dev), n);
    }
    let (mut key_changes, mut key_errors, mut conflicts) = (0, String::new(), 0);
    let mut last_key = 0u64;
    if scsi {
        let g = &guests[1];
        key_changes = count(g, "/tmp/ack-key");
        // sg_persist reads -K/-S as hex: the loop's decimal counter names hex keys.
        last_key = u64::from_str_radix(g.sh("tail -n 1 /tmp/ack-key").trim(), 16).unwrap();
        key_errors = g.sh("cat /tmp/err-key");
        conflicts = key_errors
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some("24"))
            .count();
        let keys = g.sh("sg_turs /dev/sda >/dev/null 2>&1; sg_turs /dev/sda >/dev/null 2>&1; sg_persist -n -i -k /dev/sda");
        // sg_persist -i -k: "PR generation=0xN, K registered reservation keys follow:" and a
        // line per key.
        let generation = keys
            .lines()
            .find_map(|l| l.trim().strip_prefix("PR generation=0x"))
            .and_then(|l| l.split(',').next())
            .and_then(|g| u64::from_str_radix(g, 16).ok())
            .unwrap_or_else(|| panic!("no PR generation in: {keys}"));
        let registered: Vec<u64> = keys
            .lines()
            .skip_while(|l| !l.contains("follow"))
            .skip(1)
            .filter_map(|l| l.trim().strip_prefix("0x"))
            .filter_map(|k| u64::from_str_radix(k, 16).ok())
            .collect();
        assert_eq!(
            registered,
            vec![last_key],
            "the registered key is the last acknowledged one: {keys}"
        );
        assert_eq!(
            generation, key_changes,
            "PRgeneration counts exactly the acknowledged changes: {keys}"
        );
    }
    drop(guests);
    d.stop();

    // Every acknowledged block is there, whole; nothing else was torn.
    let image = std::fs::read(&d.image).unwrap();
    let (mut torn, mut lost, mut total) = (0, 0, 0);
    for w in &writers {
        let name = names[w.guest];
        let n = acked[&(w.guest, w.dev)];
        total += n;
        for seq in 0..REGION_BLOCKS {
            let off = ((w.base + seq) as usize) * BLOCK;
            let got = &image[off..off + BLOCK];
            let want = record(name, w.dev, seq);
            if seq < n {
                if got != want.as_slice() {
                    lost += 1;
                    eprintln!(
                        "{name} {} block {seq}: acknowledged but not in the image",
                        w.dev
                    );
                }
            } else if got != want.as_slice() && got.iter().any(|&b| b != 0) {
                torn += 1;
                eprintln!("{name} {} block {seq}: neither old nor new", w.dev);
            }
        }
    }
    eprintln!(
        "soak: QEMU {major}.{minor}: {kills} kills, worst recovery {worst:?}, rounds on a starved \
         host (up to {HANG_TIMEOUT:?}): {starved:?}, {total} acknowledged writes ({acked:?}), {lost} lost, {torn} torn, {errors} failed writes, {key_changes} \
         acknowledged PR key changes (last {last_key:#x}), {conflicts} spurious conflicts, \
         other key errors: {:?}",
        key_errors.lines().collect::<Vec<_>>()
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert_eq!(torn, 0, "torn blocks");
    assert_eq!(conflicts, 0, "key changes answered RESERVATION CONFLICT");
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
