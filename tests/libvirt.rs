//! libvirt, for real: libvirtd (Debian's libvirt-daemon-system, started here if it is not
//! running) defines and starts two TCG domains built from the test guest's kernel and initramfs
//! plus what `sharedisk qemu-args --format libvirt` prints. QEMU runs as libvirt's own user, so
//! the socket group and mode in the configuration are what let it connect. In the guests
//! `/dev/vda` and `/dev/sda` are the shared disk, `sg_persist` registers and reserves, and the
//! other domain's writes fail on both devices.
//!
//! `virsh migrate --live` of such a domain: libvirt refuses a migration to the libvirtd it runs
//! under ("Attempt to migrate guest to the same host", whatever the URI: it compares the host
//! UUIDs), so the destination is a second libvirtd on this host, in a mount namespace of its own
//! (its /run/libvirt, /var/lib/libvirt, /etc/libvirt with another `host_uuid`, /var/log/libvirt).
//! The domain moves with its registration and reservation, no unit attention, I/O on both devices,
//! and the other initiator still fenced.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::ctl::{ctl_json, sharedisk};
use common::guest::ensure_guest_images;
use common::process::DaemonProcess;
use common::scsi_client::{conflict, ScsiClient};

const URI: &str = "qemu:///system";

fn run(cmd: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (images/install-deps.sh installs libvirt)"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn virsh(args: &[&str]) -> (bool, String) {
    let mut all = vec!["-c", URI];
    all.extend_from_slice(args);
    run("virsh", &all)
}

fn pid_alive(pidfile: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()?;
    // SAFETY: signal 0 only checks that the process exists.
    (unsafe { libc::kill(pid, 0) } == 0).then_some(pid)
}

/// libvirtd and virtlogd, started by this test unless they already run (the machine has no
/// systemd as init); the ones started here are stopped at the end. One test at a time holds
/// it: a test must not stop the libvirtd another one uses.
struct Libvirtd {
    started: Vec<&'static str>,
    _one_at_a_time: std::sync::MutexGuard<'static, ()>,
}

static LIBVIRTD: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl Libvirtd {
    fn ensure() -> Libvirtd {
        let one_at_a_time = LIBVIRTD.lock().unwrap_or_else(|e| e.into_inner());
        let mut started = Vec::new();
        for (daemon, pidfile) in [
            ("virtlogd", "/run/virtlogd.pid"),
            ("libvirtd", "/run/libvirtd.pid"),
        ] {
            if pid_alive(pidfile).is_none() {
                let (ok, out) = run(daemon, &["-d"]);
                assert!(ok, "{daemon} -d: {out}");
                started.push(pidfile);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out) = virsh(&["version"]);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "libvirtd does not answer: {out}");
            std::thread::sleep(Duration::from_millis(200));
        }
        Libvirtd {
            started,
            _one_at_a_time: one_at_a_time,
        }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        for pidfile in self.started.iter().rev() {
            if let Some(pid) = pid_alive(pidfile) {
                // SAFETY: kill(2) on the daemon this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
                // Gone before the next test looks: one that finds it still shutting down
                // would not start its own.
                let deadline = Instant::now() + Duration::from_secs(30);
                while pid_alive(pidfile) == Some(pid) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
}

/// A transient libvirt domain, destroyed when dropped.
struct Domain {
    name: String,
}

impl Drop for Domain {
    fn drop(&mut self) {
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
    }
}

/// The three fragments `qemu-args --format libvirt` prints.
fn fragment<'a>(xml: &'a str, open: &str, close: &str) -> &'a str {
    let start = xml
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in {xml}"));
    let end = xml[start..].find(close).unwrap() + start + close.len();
    &xml[start..end]
}

fn domain_xml(name: &str, guest: &str, dir: &Path, sharedisk_xml: &str) -> String {
    format!(
        r#"<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  {memory_backing}
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{dir}/vmlinuz</kernel>
    <initrd>{dir}/initramfs.img</initrd>
    <cmdline>console=ttyS0 panic=-1 quiet loglevel=3 sharedisk.name={guest} mitigations=off nokaslr i8042.noaux i8042.nokbd i8042.nopnp tsc=reliable</cmdline>
  </os>
  <on_reboot>destroy</on_reboot>
  <devices>
    {disk}
    <serial type='unix'>
      <source mode='bind' path='{dir}/{guest}-console.sock'/>
      <target port='0'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  {commandline}
</domain>
"#,
        dir = dir.display(),
        memory_backing = fragment(sharedisk_xml, "<memoryBacking>", "</memoryBacking>"),
        disk = fragment(sharedisk_xml, "<disk ", "</disk>"),
        commandline = fragment(sharedisk_xml, "<qemu:commandline>", "</qemu:commandline>"),
    )
}

/// The guest agent of `images/init` over the domain's serial socket.
struct Console {
    name: String,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Console {
    /// Connects to a booting guest's console and waits for its ready marker.
    fn open(path: &Path, name: &str) -> Console {
        let mut c = Console::connect(path, name);
        c.until(|l| l.contains("@@READY@@"), "the guest's @@READY@@");
        c
    }

    /// Connects to a running guest's console (a migration's destination).
    fn connect(path: &Path, name: &str) -> Console {
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "console {}: {e}", path.display());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(240)))
            .unwrap();
        Console {
            name: name.to_string(),
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        }
    }

    fn until(&mut self, done: impl Fn(&str) -> bool, what: &str) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            let n = self.reader.read_line(&mut line).unwrap_or(0);
            assert!(n > 0, "{}: console ended before {what}:\n{all}", self.name);
            eprint!("[{}] {line}", self.name);
            all.push_str(&line);
            if done(&line) {
                return all;
            }
        }
    }

    /// Runs `cmd` in the guest; returns its status and output.
    fn run(&mut self, cmd: &str) -> (i32, String) {
        eprintln!("[{}] $ {cmd}", self.name);
        writeln!(self.writer, "{cmd}").unwrap();
        let out = self.until(|l| l.contains("@@RC="), "the command's status");
        let rc_at = out.rfind("@@RC=").unwrap();
        let rc = out[rc_at + 5..]
            .split("@@")
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        (rc, out[..rc_at].to_string())
    }

    #[track_caller]
    fn ok(&mut self, cmd: &str) -> String {
        let (rc, out) = self.run(cmd);
        assert_eq!(rc, 0, "{}: `{cmd}` failed: {out}", self.name);
        out
    }
}

/// The daemon serving `vm1` and `vm2` from a directory libvirt's QEMU can reach, with the
/// test guest's kernel and initramfs beside it; returns the directory, the configuration file
/// and the daemon.
fn lab() -> (tempfile::TempDir, std::path::PathBuf, DaemonProcess) {
    let images = ensure_guest_images();
    let tmp = tempfile::Builder::new()
        .prefix("sharedisk-libvirt")
        .tempdir_in("/tmp")
        .unwrap();
    let dir = tmp.path();
    // libvirt's QEMU (user libvirt-qemu, group kvm) must reach the sockets and read the kernel.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in ["vmlinuz", "initramfs.img"] {
        std::fs::copy(images.join(f), dir.join(f)).unwrap();
    }
    let cfg = dir.join("sharedisk.toml");
    std::fs::write(
        &cfg,
        format!(
            "[image]\npath = \"{d}/disk.img\"\n[server]\nsocket_dir = \"{d}/sock\"\n\
             socket_group = \"kvm\"\nsocket_mode = \"0660\"\n\
             [[guest]]\nname = \"vm1\"\n[[guest]]\nname = \"vm2\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let d = DaemonProcess::start_args(
        dir,
        &["vm1", "vm2"],
        "64M",
        &["--config", cfg.to_str().unwrap()],
    );
    (tmp, cfg, d)
}

/// Defines and starts the domain `<tag>-<guest>` from `qemu-args --format libvirt`, its console
/// on `dir/<guest>-console.sock`; returns it and its console once the guest is ready.
fn start_domain(
    dir: &Path,
    cfg: &Path,
    tag: &str,
    guest: &str,
    d: &DaemonProcess,
) -> (Domain, Console) {
    let out = sharedisk(&[
        "qemu-args",
        "--config",
        cfg.to_str().unwrap(),
        "--guest",
        guest,
        "--format",
        "libvirt",
    ])
    .ok();
    let xml = domain_xml(&format!("{tag}-{guest}"), guest, dir, &out.stdout);
    let path = dir.join(format!("{guest}.xml"));
    std::fs::write(&path, &xml).unwrap();
    let (ok, report) = run("virt-xml-validate", &[path.to_str().unwrap(), "domain"]);
    assert!(ok, "virt-xml-validate rejects {xml}: {report}");
    let (ok, report) = virsh(&["define", path.to_str().unwrap()]);
    assert!(ok, "virsh define: {report}\n{xml}");
    let domain = Domain {
        name: format!("{tag}-{guest}"),
    };
    let (ok, report) = virsh(&["start", &domain.name]);
    assert!(
        ok,
        "virsh start: {report}\nQEMU log: {}\ndaemon log: {}",
        std::fs::read_to_string(format!("/var/log/libvirt/qemu/{tag}-{guest}.log"))
            .unwrap_or_default(),
        d.log()
    );
    let console = Console::open(&dir.join(format!("{guest}-console.sock")), guest);
    (domain, console)
}

#[test]
fn libvirt_domains_share_the_disk_and_its_reservations() {
    let libvirtd = Libvirtd::ensure();
    let (tmp, cfg, d) = lab();
    let dir = tmp.path();
    let serial = ctl_json(&d.control(), &["status"])["serial"]
        .as_str()
        .unwrap()
        .to_string();

    let tag = format!("sharedisk-test-{}", std::process::id());
    let mut domains = Vec::new();
    let mut consoles = Vec::new();
    for guest in ["vm1", "vm2"] {
        let (domain, console) = start_domain(dir, &cfg, &tag, guest, &d);
        domains.push(domain);
        consoles.push(console);
    }

    // Both domains are connected on both devices; the disks are the shared disk.
    let guests = ctl_json(&d.control(), &["guests"]);
    for g in guests["guests"].as_array().unwrap() {
        assert_eq!(g["blk"]["connected"], true, "{g}");
        assert_eq!(g["scsi"]["connected"], true, "{g}");
    }
    for c in consoles.iter_mut() {
        assert!(c.ok("cat /sys/block/vda/serial").contains(&serial));
        assert!(c.ok("sg_inq -p 0x80 /dev/sda").contains(&serial));
    }
    let (c1, c2) = consoles.split_at_mut(1);
    let (c1, c2) = (&mut c1[0], &mut c2[0]);
    c1.ok("sg_persist --out --register --param-sark=0x1 /dev/sda");
    c2.ok("sg_persist --out --register --param-sark=0x2 /dev/sda");
    c1.ok("sg_persist --out --reserve --param-rk=0x1 --prout-type=1 /dev/sda");
    assert!(c2
        .ok("sg_persist --in --read-reservation /dev/sda")
        .contains("0x1"));
    let pr = ctl_json(&d.control(), &["pr", "show"]);
    assert_eq!(pr["reservation"]["holder"], "vm1");
    // The holder writes; the other domain's writes fail on both devices.
    c1.ok("dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct");
    c1.ok("dd if=/dev/zero of=/dev/sda bs=4096 count=1 oflag=direct");
    let (rc, out) = c2.run("dd if=/dev/zero of=/dev/vda bs=4096 count=1 oflag=direct");
    assert_ne!(rc, 0, "vm2's blk write under vm1's reservation: {out}");
    let (rc, out) = c2.run("dd if=/dev/zero of=/dev/sda bs=4096 count=1 oflag=direct");
    assert_ne!(rc, 0, "vm2's scsi write under vm1's reservation: {out}");
    c2.ok("dd if=/dev/vda of=/dev/null bs=4096 count=1 iflag=direct");

    drop(consoles);
    drop(domains);
    drop(libvirtd);
}

/// The URI of the second libvirtd (below) whose state is in `dir`.
fn second_uri(dir: &Path) -> String {
    format!(
        "qemu+unix:///system?socket={}/run/libvirt-sock",
        dir.display()
    )
}

/// A second libvirtd on this host, the destination of `virsh migrate`: in a mount namespace of
/// its own, its /run/libvirt, /var/lib/libvirt, /var/log/libvirt and /etc/libvirt are
/// directories under `dir` (the configuration copied from /etc/libvirt without the domains and
/// networks the first one owns, with another `host_uuid`, and QEMU's output to a file instead of
/// virtlogd). Stopped when dropped.
struct SecondLibvirtd {
    child: std::process::Child,
    dir: std::path::PathBuf,
}

impl SecondLibvirtd {
    fn start(dir: &Path) -> SecondLibvirtd {
        for d in ["run", "lib/qemu", "log/qemu", "etc"] {
            std::fs::create_dir_all(dir.join(d)).unwrap();
        }
        let (ok, out) = run(
            "cp",
            &["-a", "/etc/libvirt/.", dir.join("etc").to_str().unwrap()],
        );
        assert!(ok, "copy /etc/libvirt: {out}");
        let (ok, out) = run(
            "sh",
            &[
                "-c",
                &format!(
                    "cd {e} && rm -f qemu/*.xml qemu/autostart/* qemu/networks/autostart/* && \
                     echo 'host_uuid = \"6b1c2d3e-5d1a-4c57-9a1e-5ad0d15cb002\"' >> libvirtd.conf && \
                     echo 'stdio_handler = \"file\"' >> qemu.conf && \
                     chown libvirt-qemu:libvirt-qemu {d}/lib/qemu && chmod 750 {d}/lib/qemu",
                    e = dir.join("etc").display(),
                    d = dir.display()
                ),
            ],
        );
        assert!(ok, "the second libvirtd's configuration: {out}");
        let script = format!(
            "mount --bind {d}/run /run/libvirt && mount --bind {d}/lib /var/lib/libvirt && \
             mount --bind {d}/log /var/log/libvirt && mount --bind {d}/etc /etc/libvirt && \
             exec libvirtd --pid-file {d}/run/libvirtd.pid",
            d = dir.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("libvirtd.log")).unwrap())
            .spawn()
            .expect("unshare (util-linux)");
        let second = SecondLibvirtd {
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out) = run("virsh", &["-c", &second.uri(), "version"]);
            if ok {
                return second;
            }
            assert!(
                Instant::now() < deadline,
                "the second libvirtd does not answer: {out}\n{}",
                std::fs::read_to_string(dir.join("libvirtd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn uri(&self) -> String {
        second_uri(&self.dir)
    }

    fn virsh(&self, args: &[&str]) -> (bool, String) {
        let uri = self.uri();
        let mut all = vec!["-c", &uri];
        all.extend_from_slice(args);
        run("virsh", &all)
    }
}

impl Drop for SecondLibvirtd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn virsh_migrate_live_moves_a_domain_with_its_reservation() {
    let libvirtd = Libvirtd::ensure();
    let (tmp, cfg, d) = lab();
    let dir = tmp.path();
    let tag = format!("sharedisk-migrate-{}", std::process::id());
    let (domain, mut c1) = start_domain(dir, &cfg, &tag, "vm1", &d);
    c1.ok("sg_persist --out --register --param-sark=0x1 /dev/sda");
    c1.ok("sg_persist --out --reserve --param-rk=0x1 --prout-type=1 /dev/sda");
    let before = c1.ok("sg_persist -n -i -k /dev/sda; sg_persist -n -i -r /dev/sda");
    let mut vm2 = ScsiClient::connect(&d.scsi("vm2"));
    vm2.drain_ua();
    conflict(&vm2.write16(1000, &[0xee; 512]), "vm2 before the move");

    // To the libvirtd the domain runs under: refused, whatever the URI.
    let (ok, same_host) = virsh(&["migrate", "--live", &domain.name, URI]);
    assert!(!ok && same_host.contains("same host"), "{same_host}");

    let second = SecondLibvirtd::start(&dir.join("libvirtd2"));
    // The destination's console on a path of its own: the source QEMU removes its socket's path
    // when it exits, which would be the destination's.
    let (ok, xml) = virsh(&["dumpxml", "--migratable", &domain.name]);
    assert!(ok, "{xml}");
    let dest_console = dir.join("vm1-console-dest.sock");
    let xml = xml.replace(
        &dir.join("vm1-console.sock").display().to_string(),
        &dest_console.display().to_string(),
    );
    let dest_xml = dir.join("vm1-dest.xml");
    std::fs::write(&dest_xml, xml).unwrap();
    let (ok, report) = virsh(&[
        "migrate",
        "--live",
        &domain.name,
        &second.uri(),
        "--migrateuri",
        "tcp://127.0.0.1",
        "--xml",
        dest_xml.to_str().unwrap(),
    ]);
    assert!(
        ok,
        "virsh migrate: {report}\nsource log: {}\ndestination log: {}\ndaemon log: {}",
        std::fs::read_to_string(format!("/var/log/libvirt/qemu/{}.log", domain.name))
            .unwrap_or_default(),
        std::fs::read_to_string(dir.join(format!("libvirtd2/log/qemu/{}.log", domain.name)))
            .unwrap_or_default(),
        d.log()
    );
    // libvirt's figures of the move (the destination keeps the completed job's statistics).
    let (_, job) = second.virsh(&["domjobinfo", "--completed", &domain.name]);
    eprintln!("virsh migrate: {report}\n{job}");
    let (_, list) = second.virsh(&["list", "--name"]);
    assert!(
        list.contains(&domain.name),
        "running on the destination: {list}"
    );
    let (_, list) = virsh(&["list", "--name"]);
    assert!(!list.contains(&domain.name), "gone from the source: {list}");
    assert!(
        d.log().contains("a second connection while one is live"),
        "the destination connected while the source was live"
    );

    let mut c1 = Console::connect(&dest_console, "vm1");
    let (rc, out) = c1.run("sg_turs /dev/sda");
    assert_eq!(rc, 0, "no unit attention from the move: {out}");
    assert_eq!(
        c1.ok("sg_persist -n -i -k /dev/sda; sg_persist -n -i -r /dev/sda"),
        before,
        "registration and reservation after the move"
    );
    for dev in ["vda", "sda"] {
        c1.ok(&format!(
            "yes moved-{dev} | head -c 4096 > /tmp/b && \
             dd if=/tmp/b of=/dev/{dev} bs=4096 seek=100 count=1 oflag=direct && \
             dd if=/dev/{dev} bs=4096 skip=100 count=1 iflag=direct | cmp - /tmp/b"
        ));
    }
    conflict(&vm2.write16(1000, &[0xee; 512]), "vm2 after the move");
    let guests = ctl_json(&d.control(), &["guests"]);
    let vm1 = guests["guests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "vm1")
        .expect("vm1 in `ctl guests`");
    assert_eq!(vm1["blk"]["connected"], true, "{vm1}");
    assert_eq!(vm1["scsi"]["connected"], true, "{vm1}");

    drop(c1);
    let _ = second.virsh(&["destroy", &domain.name]);
    drop(second);
    drop(domain);
    drop(libvirtd);
    d.assert_no_panic();
}
