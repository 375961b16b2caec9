//! The disk's identity as docs/conformance.md states it: the serial (virtio-blk GET_ID, VPD 0x80) and the
//! NAA designator (VPD 0x83) derive from the image's canonical path, and so stay the same across
//! restarts and whatever path names the image; a different file at the same path is a different
//! disk, whose reservation state is not applied.
//!
//! Golden values need a fixed path: the image lives at [`GOLDEN_DIR`]`/disk.img`, under a lock
//! so that concurrent runs (other checkouts) take turns.

mod common;

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use common::scsi_client::*;
use common::vu_frontend::*;
use sharedisk::config::Config;
use sharedisk::daemon::server::Server;
use sharedisk::pr::{PrStatus, ProutRequest, ServiceAction};

const GOLDEN_DIR: &str = "/tmp/sharedisk-golden-identity";
/// `sharedisk-` and the low 40 bits of FNV-1a-64 of "/tmp/sharedisk-golden-identity/disk.img"
/// (computed independently of the daemon). A change here changes every deployed disk's identity.
const GOLDEN_SERIAL: &str = "sharedisk-8399419832";
/// NAA 3 (locally assigned) and the top 60 bits of FNV-1a-64 of the serial.
const GOLDEN_NAA: [u8; 8] = [0x39, 0x39, 0x27, 0x83, 0x81, 0xee, 0xb2, 0xa5];

/// Holds the lock on the golden directory while the test runs.
struct GoldenLock {
    _file: std::fs::File,
}

fn golden_lock() -> GoldenLock {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(format!("{GOLDEN_DIR}.lock"))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    GoldenLock { _file: f }
}

/// What the guests see: (VPD 0x80 serial, VPD 0x83 NAA designator, virtio-blk GET_ID).
fn identity(sockets: &Path) -> (String, Vec<u8>, Vec<u8>) {
    let mut c = ScsiClient::connect(&sockets.join("vm1-scsi.sock"));
    c.drain_ua();
    let r = c.cmd(&[0x12, 1, 0x80, 0, 255, 0], &[], 255);
    assert!(r.is_good(), "{r:?}");
    let len = r.data[3] as usize;
    let serial = String::from_utf8(r.data[4..4 + len].to_vec()).unwrap();
    let r = c.cmd(&[0x12, 1, 0x83, 0, 255, 0], &[], 255);
    assert!(r.is_good(), "{r:?}");
    // The first designator: binary, NAA, 8 bytes.
    assert_eq!(&r.data[4..8], &[0x01, 0x03, 0x00, 0x08]);
    let naa = r.data[8..16].to_vec();
    let mut fe = VuFrontend::connect(&sockets.join("vm1-blk.sock"), 1, 128);
    let (s, id) = fe.blk_request(VIRTIO_BLK_T_GET_ID, 0, &[], 20);
    assert_eq!(s, VIRTIO_BLK_S_OK);
    (serial, naa, id)
}

fn config(image: PathBuf, sockets: &Path) -> Config {
    let mut c = Config::new(image, sockets, &["vm1"]);
    c.state = Some(PathBuf::from(GOLDEN_DIR).join("disk.img.pr"));
    c
}

/// `path` relative to the current directory (`../..` up to the root, then the path).
fn relative(path: &Path) -> PathBuf {
    let cwd = std::env::current_dir().unwrap();
    let mut rel = PathBuf::new();
    for _ in cwd.components().skip(1) {
        rel.push("..");
    }
    rel.join(path.strip_prefix("/").unwrap())
}

#[test]
fn serial_and_naa_are_golden_across_restarts_paths_and_refuse_a_replaced_file() {
    let _lock = golden_lock();
    let dir = PathBuf::from(GOLDEN_DIR);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let sockets = tempfile::tempdir().unwrap();
    let image = dir.join("disk.img");
    let mut cfg = config(image.clone(), sockets.path());
    cfg.size = Some(1 << 20);

    let server = Server::start(cfg).expect("start");
    let (serial, naa, id) = identity(sockets.path());
    eprintln!("serial {serial}, NAA {naa:02x?}");
    assert_eq!(serial, GOLDEN_SERIAL);
    assert_eq!(naa, GOLDEN_NAA);
    assert_eq!(id, GOLDEN_SERIAL.as_bytes(), "GET_ID");
    let req = ProutRequest::new(ServiceAction::RegisterAndIgnore).sa_key(0x77);
    assert_eq!(server.arbiter().prout("vm1", &req, None), PrStatus::Good);
    server.shutdown();

    // The same image through a symlink, then through a relative path: the same disk.
    let link = dir.join("link.img");
    std::os::unix::fs::symlink("disk.img", &link).unwrap();
    for (what, path) in [("symlink", link), ("relative path", relative(&image))] {
        let server = Server::start(config(path.clone(), sockets.path()))
            .unwrap_or_else(|e| panic!("start through the {what} {}: {e}", path.display()));
        assert_eq!(
            identity(sockets.path()),
            (serial.clone(), naa.clone(), id.clone()),
            "through the {what}"
        );
        assert_eq!(
            server.arbiter().with(|a| a.key_of("vm1")),
            Some(0x77),
            "the state follows the disk through the {what}"
        );
        server.shutdown();
    }

    // Another file at the same path (a new inode) is another disk: its start is refused.
    let new = dir.join("new.img");
    std::fs::write(&new, vec![0u8; 1 << 20]).unwrap();
    std::fs::rename(&new, &image).unwrap();
    let err = Server::start(config(image.clone(), sockets.path()))
        .err()
        .expect("a replaced image with the old state is refused")
        .to_string();
    assert!(err.contains("belongs to image"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
