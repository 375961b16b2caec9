//! Test-only crash and error points: `SHAREDISK_FAILPOINT=NAME` makes the daemon kill itself with
//! SIGKILL the first time it reaches the crash point called NAME, as `kill -9` would, or makes the
//! step called NAME fail every time, as a full or broken disk would. Built only with the
//! `test-hooks` feature: without it [`hit`] and [`error`] are inline no-ops (the release binary
//! reads no `SHAREDISK_FAILPOINT`), so call sites need no `cfg`; a name given as
//! `format_args!` is then never even formatted. With the feature, unset, a point costs one load
//! of a once-initialised value. Crash points (each marks the moment right after the step):
//!
//! | name | where |
//! |---|---|
//! | `state-tmp-written` | the new state file's temporary copy is written, not yet synced |
//! | `state-tmp-synced` | the temporary copy is synced |
//! | `state-renamed` | the temporary copy has replaced the state file |
//! | `state-dir-synced` | the directory is synced: the change is durable |
//! | `prout-persisted` | a PR OUT's change is durable, its completion not yet sent |
//! | `used-written` | a virtqueue round's completions are in the used ring, the driver not yet interrupted |
//! | `prout-committed` | cluster mode: a PR OUT's commit to etcd is answered, nothing local is saved or applied yet |
//! | `guests-tmp-written`, `guests-tmp-synced`, `guests-renamed`, `guests-dir-synced` | the same steps for the runtime guests file (`<state>.guests`) |
//! | `move-stopped` | cluster mode: a guest's hand-over took its unit attentions, its swap not yet sent (`owner.rs`) |
//! | `move-committed` | the hand-over's swap applied, the gate not yet closed for good |
//! | `move-received` | the destination read the record naming it, the guest not yet taken |
//!
//! Error points:
//!
//! | name | what fails |
//! |---|---|
//! | `state-write-error` | writing the temporary copy of the state file |
//! | `state-dir-sync-error` | syncing the directory after the rename |
//! | `guests-write-error`, `guests-dir-sync-error` | the same steps for the runtime guests file |
//! | `move-swap-error` | every cluster hand-over's compare-and-swap, before it is sent, as with etcd out of reach |
//! | `move-answer-lost` | a hand-over's answer, after etcd applied the swap (as a lost answer) |
//! | `fallocate-unsupported` | every zeroing or unmapping `fallocate` of the image, with EOPNOTSUPP as from a file system that cannot zero a range: zeroes are then written |
//!
//! Skip points (a step left out, to show that a test sees it missing):
//!
//! | name | what is skipped |
//! |---|---|
//! | `data-in-unmarked` | marking data-in buffers in a migration's dirty log (`virtqueue/dirty.rs`) |
//! | `caw-unlocked` | COMPARE AND WRITE's write-range lock (`lun/ranges.rs`); its compare-to-write window is widened to 50 ms so that a racing write lands in it |

use std::fmt::Display;
use std::io;

#[cfg(feature = "test-hooks")]
fn armed() -> Option<&'static str> {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            std::env::var("SHAREDISK_FAILPOINT")
                .ok()
                .filter(|s| !s.is_empty())
        })
        .as_deref()
}

/// Whether `SHAREDISK_FAILPOINT` names the point `name` (formatted only when one is armed).
#[cfg(feature = "test-hooks")]
fn is_armed(name: &impl Display) -> bool {
    armed().is_some_and(|armed| armed == name.to_string())
}

/// Kills the process if `SHAREDISK_FAILPOINT` names this point.
#[cfg(feature = "test-hooks")]
pub fn hit(name: impl Display) {
    if is_armed(&name) {
        log::warn!("failpoint {name}: killing the daemon");
        // SAFETY: kill(2) on our own pid; SIGKILL cannot be caught, nothing runs after it.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

/// Fails with an I/O error if `SHAREDISK_FAILPOINT` names this error point.
#[cfg(feature = "test-hooks")]
pub fn error(name: impl Display) -> io::Result<()> {
    if is_armed(&name) {
        log::warn!("failpoint {name}: failing the step");
        return Err(io::Error::other(format!("failpoint {name}")));
    }
    Ok(())
}

/// Whether `SHAREDISK_FAILPOINT` names this skip point: the step is to be left out.
#[cfg(feature = "test-hooks")]
pub fn skip(name: impl Display) -> bool {
    is_armed(&name)
}

/// Without the `test-hooks` feature: never skips.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn skip(_name: impl Display) -> bool {
    false
}

/// Without the `test-hooks` feature: nothing.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn hit(_name: impl Display) {}

/// Without the `test-hooks` feature: never fails.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn error(_name: impl Display) -> io::Result<()> {
    Ok(())
}
