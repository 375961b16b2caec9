use super::*;
use std::time::{Duration, Instant};

fn nexus(n: &str) -> Arc<str> {
    Arc::from(n)
}

#[test]
fn an_aborted_queued_task_never_starts_and_reports_aborted() {
    let set = TaskSet::default();
    let (a, b) = (nexus("a"), nexus("b"));
    let t1 = set.enter(&a, 7, TaskState::Queued);
    let t2 = set.enter(&a, 8, TaskState::Queued);
    let t3 = set.enter(&b, 7, TaskState::Queued);
    assert_eq!(set.abort(Scope::Task("a", 7)), 1);
    assert!(!set.begin_io(t1), "aborted before its I/O");
    assert!(set.begin_io(t2), "another tag");
    assert!(set.begin_io(t3), "another nexus's tag 7");
    assert!(set.retire(t1));
    set.settle(t2, TaskState::Done);
    assert!(!set.retire(t2));
    assert!(!set.contains(Scope::Task("a", 7)));
    assert!(set.contains(Scope::Nexus("b")));
}

#[test]
fn scopes_name_a_nexus_or_every_task() {
    let set = TaskSet::default();
    let (a, b) = (nexus("a"), nexus("b"));
    let ids = [
        set.enter(&a, 1, TaskState::Queued),
        set.enter(&a, 2, TaskState::Queued),
        set.enter(&b, 1, TaskState::Queued),
    ];
    assert_eq!(set.abort(Scope::Nexus("a")), 2);
    assert!(set.begin_io(ids[2]), "b is not a's nexus");
    set.settle(ids[2], TaskState::Done);
    assert_eq!(set.abort(Scope::All), 3);
    assert!(!set.retire(ids[2]), "it had done its I/O");
    assert!(set.retire(ids[0]) && set.retire(ids[1]));
}

#[test]
fn an_abort_waits_for_the_io_in_flight() {
    let set = Arc::new(TaskSet::default());
    let a = nexus("a");
    let t = set.enter(&a, 1, TaskState::Queued);
    assert!(set.begin_io(t));
    let io = {
        let set = Arc::clone(&set);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            let ended = Instant::now();
            set.settle(t, TaskState::Done);
            ended
        })
    };
    set.abort(Scope::All);
    let returned = Instant::now();
    let ended = io.join().unwrap();
    assert!(ended <= returned, "the abort returned before the I/O ended");
    assert!(!set.retire(t), "reported as it ended");
}

#[test]
fn a_task_aborted_in_flight_that_goes_back_to_queued_never_starts() {
    let set = TaskSet::default();
    let a = nexus("a");
    let t = set.enter(&a, 1, TaskState::InFlight);
    set.settle(t, TaskState::Queued);
    assert_eq!(set.abort(Scope::Nexus("a")), 1);
    assert!(!set.begin_io(t));
    assert!(set.retire(t));
}

#[test]
fn an_abort_does_not_wait_for_tasks_that_came_after_it() {
    // SAM-5 §7: a TMF affects the tasks in the task set when it is processed. Another
    // initiator's I/O that starts meanwhile (at depth, there is always some in flight) must not
    // hold a LOGICAL UNIT RESET or a PREEMPT AND ABORT for ever.
    let set = Arc::new(TaskSet::default());
    let (a, b) = (nexus("a"), nexus("b"));
    let old = set.enter(&a, 1, TaskState::InFlight);
    let (tx, rx) = std::sync::mpsc::channel();
    {
        let set = Arc::clone(&set);
        std::thread::spawn(move || tx.send(set.abort(Scope::All)).unwrap());
    }
    std::thread::sleep(Duration::from_millis(50));
    let later = set.enter(&b, 1, TaskState::Queued);
    assert!(set.begin_io(later), "named by no TMF");
    set.settle(old, TaskState::Done);
    let returned = rx.recv_timeout(Duration::from_secs(2));
    set.settle(later, TaskState::Done);
    assert_eq!(
        returned,
        Ok(1),
        "the abort waited for a task that came after it"
    );
}

#[test]
fn a_task_its_own_nexus_aborted_is_not_answered_even_after_its_io() {
    let set = TaskSet::default();
    let a = nexus("a");
    let own = set.enter(&a, 1, TaskState::Queued);
    let other = set.enter(&a, 2, TaskState::Queued);
    let answered = set.enter(&a, 3, TaskState::Queued);
    for t in [own, other, answered] {
        assert!(set.begin_io(t));
        set.settle(t, TaskState::Done);
    }
    assert!(set.retire_to_respond(answered), "nobody aborted it");
    assert_eq!(
        set.abort_own(Scope::Task("a", 3)),
        0,
        "answered: not in the set"
    );
    assert_eq!(set.abort_own(Scope::Task("a", 1)), 1);
    assert_eq!(set.abort(Scope::Task("a", 2)), 1);
    assert!(
        !set.retire_to_respond(own),
        "its own nexus aborted it: no response"
    );
    assert!(
        set.retire_to_respond(other),
        "another's abort: answered as it ended"
    );
}
