//! What the fencing tests check on the image side, through the test probe.

use std::time::{Duration, Instant};

use sharedisk::testhooks::probe::Recorder;

/// How long each write takes between its admission and the image (the probe sleeps first): a
/// write the admission did not fence would end up to this long after the preempt returned.
/// Longer than a PR OUT takes (it fsyncs the state file), so that such a late write cannot hide
/// inside the PR OUT's own duration.
pub const WRITE_DELAY: Duration = Duration::from_millis(50);

/// Every change that reached the image did so before `returned` (when the PREEMPT's GOOD
/// arrived), and some did.
#[track_caller]
pub fn assert_writes_ended_before(probe: &Recorder, returned: Instant) {
    let changes: Vec<_> = probe
        .events()
        .into_iter()
        .filter(|e| e.op.changes_data())
        .collect();
    assert!(!changes.is_empty(), "the victim wrote before the preempt");
    let late: Vec<_> = changes.iter().filter(|e| e.end > returned).collect();
    assert!(
        late.is_empty(),
        "{} of {} writes reached the image after the PREEMPT returned, the first {:?} late: {:?}",
        late.len(),
        changes.len(),
        late[0].end - returned,
        late[0]
    );
}
