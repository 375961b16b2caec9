//! Daemon crashes under load, seen from QEMU guests: two guests write sequence-numbered 4 KiB
//! blocks with `dd oflag=direct` on both devices, one of them also changes its PR key in a loop
//! (`sg_persist -o -G`), while the daemon is killed at random moments (SIGKILL, and SIGTERM every
//! fourth round) and started again. Each round every writer must make progress again within 10 s;
//! at the end every acknowledged block is in the image, no block is torn, the key is the last
//! acknowledged one, PRgeneration counts exactly the acknowledged changes, and no change was
//! answered RESERVATION CONFLICT.
//!
//! Both devices on QEMU >= 8.2 (vhost-user-scsi reconnects from there on); on older QEMU the blk
//! path alone. `SHAREDISK_SOAK_KILLS` (default 20) sets the rounds, `SHAREDISK_SOAK_SEED` the
//! random moments.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::guest::{qemu_version, Guest};
use common::process::DaemonProcess;
use rand::{Rng, SeedableRng};

/// 4 KiB blocks per writer region: far more than a soak writes.
const REGION_BLOCKS: u64 = 8192;
const BLOCK: usize = 4096;
const PROGRESS_TIMEOUT: Duration = Duration::from_secs(10);

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

    let progress = |label: &str, d: &DaemonProcess| -> Duration {
        // Every writer (and the key loop) acknowledges something new within the timeout.
        let start = Instant::now();
        let mut files: Vec<(usize, String)> = writers
            .iter()
            .map(|w| (w.guest, format!("/tmp/ack-{}", w.dev)))
            .collect();
        if scsi {
            files.push((1, "/tmp/ack-key".into()));
        }
        let before: Vec<u64> = files.iter().map(|(g, f)| count(&guests[*g], f)).collect();
        let mut waiting: Vec<usize> = (0..files.len()).collect();
        while !waiting.is_empty() {
            assert!(
                start.elapsed() < PROGRESS_TIMEOUT,
                "{label}: no progress within {PROGRESS_TIMEOUT:?} on {:?}; daemon log:\n{}",
                waiting
                    .iter()
                    .map(|&i| format!("{}:{}", names[files[i].0], files[i].1))
                    .collect::<Vec<_>>(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(200));
            waiting.retain(|&i| count(&guests[files[i].0], &files[i].1) == before[i]);
        }
        start.elapsed()
    };

    progress("start", &d);
    let mut worst = Duration::ZERO;
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
        let took = progress(&format!("round {round}"), &d);
        worst = worst.max(took);
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
        "soak: QEMU {major}.{minor}: {kills} kills, worst recovery {worst:?}, {total} acknowledged \
         writes ({acked:?}), {lost} lost, {torn} torn, {errors} failed writes, {key_changes} \
         acknowledged PR key changes (last {last_key:#x}), {conflicts} spurious conflicts, \
         other key errors: {:?}",
        key_errors.lines().collect::<Vec<_>>()
    );
    assert_eq!(lost, 0, "acknowledged writes lost");
    assert_eq!(torn, 0, "torn blocks");
    assert_eq!(conflicts, 0, "key changes answered RESERVATION CONFLICT");
    assert!(!d.log().contains("panicked"), "{}", d.log());
}
