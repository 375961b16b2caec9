//! libvirt, for real: libvirtd (Debian's libvirt-daemon-system, started here if it is not
//! running) defines and starts two TCG domains built from the test guest's kernel and initramfs
//! plus what `sharedisk qemu-args --format libvirt` prints. QEMU runs as libvirt's own user, so
//! the socket group and mode in the configuration are what let it connect. In the guests
//! `/dev/vda` and `/dev/sda` are the shared disk, `sg_persist` registers and reserves, and the
//! other domain's writes fail on both devices.

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
/// systemd as init); the ones started here are stopped at the end.
struct Libvirtd {
    started: Vec<&'static str>,
}

impl Libvirtd {
    fn ensure() -> Libvirtd {
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
        Libvirtd { started }
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        for pidfile in self.started.iter().rev() {
            if let Some(pid) = pid_alive(pidfile) {
                // SAFETY: kill(2) on the daemon this test started.
                unsafe { libc::kill(pid, libc::SIGTERM) };
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
    fn open(path: &Path, name: &str) -> Console {
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
        let mut c = Console {
            name: name.to_string(),
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        c.until(|l| l.contains("@@READY@@"), "the guest's @@READY@@");
        c
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

#[test]
fn libvirt_domains_share_the_disk_and_its_reservations() {
    let images = ensure_guest_images();
    let libvirtd = Libvirtd::ensure();
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
    let serial = ctl_json(&d.control(), &["status"])["serial"]
        .as_str()
        .unwrap()
        .to_string();

    let tag = format!("sharedisk-test-{}", std::process::id());
    let mut domains = Vec::new();
    let mut consoles = Vec::new();
    for guest in ["vm1", "vm2"] {
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
        domains.push(Domain {
            name: format!("{tag}-{guest}"),
        });
        let (ok, report) = virsh(&["start", &format!("{tag}-{guest}")]);
        assert!(
            ok,
            "virsh start: {report}\nQEMU log: {}\ndaemon log: {}",
            std::fs::read_to_string(format!("/var/log/libvirt/qemu/{tag}-{guest}.log"))
                .unwrap_or_default(),
            d.log()
        );
        consoles.push(Console::open(
            &dir.join(format!("{guest}-console.sock")),
            guest,
        ));
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
