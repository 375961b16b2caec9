//! Who may do what on the control socket: every method in one table ([`Method::need`]), and the
//! caller's role from the kernel's record of its credentials.
//!
//! The caller's uid and primary gid come from `SO_PEERCRED` and its supplementary groups from
//! `SO_PEERGROUPS`: both are what the process held when it called `connect`, recorded by the
//! kernel on the socket. Nothing is read by pid (a pid in `/proc` may be reused by another
//! process after the caller exits), nor from the group database (a process that dropped a group
//! is not treated as holding it).

use std::io;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixStream;

/// What a method needs of its caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// It only reads: root, the daemon's user, the read group (`control_group`) and the admin
    /// group (`admin_group`).
    Read,
    /// It changes something: root, the daemon's user and the admin group only.
    Change,
}

/// Every method of the control socket. A new method is added here, and the compiler then asks
/// for its [`Need`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Version,
    Status,
    Guests,
    PrShow,
    Stats,
    Metrics,
    ClusterStatus,
    PrClear,
    PrPreempt,
    GuestAdd,
    GuestRemove,
    ClusterRepublish,
    ClusterEvict,
    ClusterResume,
    IscsiSessions,
}

impl Method {
    /// Every method, for the documentation test and the fuzz target.
    pub const ALL: [Method; 15] = [
        Method::Version,
        Method::Status,
        Method::Guests,
        Method::PrShow,
        Method::Stats,
        Method::Metrics,
        Method::ClusterStatus,
        Method::PrClear,
        Method::PrPreempt,
        Method::GuestAdd,
        Method::GuestRemove,
        Method::ClusterRepublish,
        Method::ClusterEvict,
        Method::ClusterResume,
        Method::IscsiSessions,
    ];

    /// The name on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Method::Version => "version",
            Method::Status => "status",
            Method::Guests => "guests",
            Method::PrShow => "pr.show",
            Method::Stats => "stats",
            Method::Metrics => "metrics",
            Method::ClusterStatus => "cluster.status",
            Method::PrClear => "pr.clear",
            Method::PrPreempt => "pr.preempt",
            Method::GuestAdd => "guest.add",
            Method::GuestRemove => "guest.remove",
            Method::ClusterRepublish => "cluster.republish",
            Method::ClusterEvict => "cluster.evict",
            Method::ClusterResume => "cluster.resume",
            Method::IscsiSessions => "iscsi.sessions",
        }
    }

    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }

    /// The permission table (docs/operations.md shows it).
    pub fn need(self) -> Need {
        match self {
            Method::Version
            | Method::Status
            | Method::Guests
            | Method::PrShow
            | Method::Stats
            | Method::Metrics
            | Method::ClusterStatus
            | Method::IscsiSessions => Need::Read,
            Method::PrClear
            | Method::PrPreempt
            | Method::GuestAdd
            | Method::GuestRemove
            | Method::ClusterRepublish
            | Method::ClusterEvict
            | Method::ClusterResume => Need::Change,
        }
    }
}

/// What a caller may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Neither root, the daemon's user, nor a member of either group: every method is refused.
    Stranger,
    /// A member of the read group: reading methods only.
    Reader,
    /// Root, the daemon's user or a member of the admin group: every method.
    Admin,
}

impl Role {
    pub fn may(self, need: Need) -> bool {
        match need {
            Need::Read => self >= Role::Reader,
            Need::Change => self == Role::Admin,
        }
    }
}

/// The caller as the kernel recorded it at `connect`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (`SO_PEERGROUPS`); empty where the kernel cannot tell (before
    /// Linux 4.13), which then counts the primary group only.
    pub groups: Vec<u32>,
}

impl Peer {
    /// The credentials of the process at the other end of `conn`.
    pub fn of(conn: &UnixStream) -> io::Result<Peer> {
        let mut cred = libc::ucred {
            pid: 0,
            uid: 0,
            gid: 0,
        };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: SO_PEERCRED fills a ucred of the length we pass, in a local we own.
        let r = unsafe {
            libc::getsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut cred as *mut libc::ucred).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Peer {
            pid: cred.pid,
            uid: cred.uid,
            gid: cred.gid,
            groups: peer_groups(conn).unwrap_or_default(),
        })
    }

    fn in_group(&self, gid: u32) -> bool {
        self.gid == gid || self.groups.contains(&gid)
    }
}

/// `SO_PEERGROUPS` (Linux 4.13): 59 in asm-generic/socket.h, which these architectures use.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64"
))]
const SO_PEERGROUPS: libc::c_int = 59;

/// Elsewhere the supplementary groups are not read: only the primary group counts.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64"
)))]
fn peer_groups(_conn: &UnixStream) -> io::Result<Vec<u32>> {
    Err(io::ErrorKind::Unsupported.into())
}

/// The peer's supplementary groups, as it held them at `connect`.
#[cfg(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64"
))]
fn peer_groups(conn: &UnixStream) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: the buffer is `len` writable bytes of gid_t we own; the kernel writes at most
        // `len` bytes and sets `len` to what it wrote (or needs, with ERANGE).
        let r = unsafe {
            libc::getsockopt(
                conn.as_raw_fd(),
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if r == 0 {
            groups.truncate(count.min(groups.len()));
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // NGROUPS_MAX is 65536: never grow past it whatever the kernel says.
        if e.raw_os_error() == Some(libc::ERANGE) && count > groups.len() && count <= 65536 {
            groups.resize(count, 0);
            continue;
        }
        return Err(e);
    }
}

/// Who is who: the daemon's uid and the two groups' ids.
#[derive(Clone, Debug)]
pub struct Policy {
    pub daemon_uid: u32,
    /// `control_group`: may read.
    pub read_gid: Option<u32>,
    /// `admin_group`: may change.
    pub admin_gid: Option<u32>,
}

impl Policy {
    /// The policy of a daemon running as this process's effective uid.
    pub fn new(read_gid: Option<u32>, admin_gid: Option<u32>) -> Policy {
        Policy {
            // SAFETY: geteuid has no preconditions and cannot fail.
            daemon_uid: unsafe { libc::geteuid() },
            read_gid,
            admin_gid,
        }
    }

    pub fn role(&self, peer: &Peer) -> Role {
        if peer.uid == 0
            || peer.uid == self.daemon_uid
            || self.admin_gid.is_some_and(|g| peer.in_group(g))
        {
            Role::Admin
        } else if self.read_gid.is_some_and(|g| peer.in_group(g)) {
            Role::Reader
        } else {
            Role::Stranger
        }
    }
}
