//! The LU's task set (SAM-5 §4.6, §8): every command of every transport between its arrival at
//! the LU and its response, so that a task management function aborts what has not started yet
//! and waits for what has (SAM-5 §7: a TMF completes once every task it affects has ended).
//!
//! A task is queued (admitted to the task set, no image I/O yet), in flight (its I/O runs; the
//! image's I/O cannot be cancelled, so an abort waits for it, a bounded wait), or done (its I/O
//! ended, its response is on its way). An abort marks the tasks it names: a queued one never
//! starts its I/O ([`TaskSet::begin_io`] refuses it) and is reported aborted by its transport,
//! an in-flight one is waited for and reported as it ended, unless the abort was its own I_T
//! nexus's ABORT TASK, ABORT TASK SET or CLEAR TASK SET ([`TaskSet::abort_own`]; not an I_T
//! NEXUS RESET): then it ends without a response ([`TaskSet::retire_to_respond`]).

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};

use crate::util::lock::lock;

/// One task in the set, as [`TaskSet::enter`] returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskId(u64);

/// Where a task is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskState {
    /// In the task set, no image I/O started.
    Queued,
    /// Its image I/O (or, for a command done in one call, its execution) runs.
    InFlight,
    /// Its I/O ended; only its response is left.
    Done,
}

/// The tasks a TMF affects.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// ABORT TASK: the task of this I_T nexus with this tag (virtio-scsi tag, iSCSI ITT).
    Task(&'a str, u64),
    /// ABORT TASK SET, CLEAR TASK SET (TST=000), I_T NEXUS RESET: every task of the nexus.
    Nexus(&'a str),
    /// LOGICAL UNIT RESET, iSCSI TARGET WARM and COLD RESET: every task of every nexus.
    All,
}

struct Task {
    nexus: Arc<str>,
    tag: u64,
    state: TaskState,
    /// A TMF named it.
    aborted: bool,
    /// Its own I_T nexus's ABORT TASK, ABORT TASK SET or CLEAR TASK SET named it: it gets no
    /// response, in flight or not.
    silenced: bool,
}

impl Task {
    fn in_scope(&self, scope: Scope) -> bool {
        match scope {
            Scope::Task(nexus, tag) => self.tag == tag && *self.nexus == *nexus,
            Scope::Nexus(nexus) => *self.nexus == *nexus,
            Scope::All => true,
        }
    }
}

#[derive(Default)]
struct Tasks {
    next: u64,
    live: HashMap<u64, Task>,
}

/// The task set of one LU, shared by every transport's initiators.
#[derive(Default)]
pub struct TaskSet {
    tasks: Mutex<Tasks>,
    /// Signalled whenever a task leaves [`TaskState::InFlight`].
    settled: Condvar,
}

impl TaskSet {
    /// Enters a command of `nexus` with `tag` in the set, in `state` (queued, or in flight for
    /// a command executed in one call).
    pub fn enter(&self, nexus: &Arc<str>, tag: u64, state: TaskState) -> TaskId {
        let mut t = lock(&self.tasks);
        t.next += 1;
        let id = t.next;
        let task = Task {
            nexus: Arc::clone(nexus),
            tag,
            state,
            aborted: false,
            silenced: false,
        };
        t.live.insert(id, task);
        TaskId(id)
    }

    /// The task's I/O is about to start: false if it was aborted (it must not start).
    pub fn begin_io(&self, id: TaskId) -> bool {
        let mut t = lock(&self.tasks);
        match t.live.get_mut(&id.0) {
            Some(task) if !task.aborted => {
                task.state = TaskState::InFlight;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// The task's I/O ended (or, from in flight, it goes back to queued: `state`).
    pub fn settle(&self, id: TaskId, state: TaskState) {
        if let Some(task) = lock(&self.tasks).live.get_mut(&id.0) {
            task.state = state;
        }
        self.settled.notify_all();
    }

    /// The task's response is sent (or it ends without one): it leaves the set. True if it
    /// was aborted before its I/O started, so its transport reports it aborted.
    pub fn retire(&self, id: TaskId) -> bool {
        let task = lock(&self.tasks).live.remove(&id.0);
        self.settled.notify_all();
        task.is_some_and(|t| t.aborted && t.state == TaskState::Queued)
    }

    /// The task's response is about to be sent: it leaves the set. False when its own I_T
    /// nexus aborted it ([`TaskSet::abort_own`]), even after its I/O ended: it then ends
    /// without a response. Once a task has left the set, no abort names it (the initiator is
    /// told the task does not exist, and gets the response).
    pub fn retire_to_respond(&self, id: TaskId) -> bool {
        let task = lock(&self.tasks).live.remove(&id.0);
        self.settled.notify_all();
        !task.is_some_and(|t| t.silenced)
    }

    /// Aborts the tasks in `scope`: the queued ones will never do their I/O, and this returns
    /// once none of them is in flight any more. Returns how many tasks it named. Tasks that
    /// enter the set meanwhile are not its (SAM-5 §7): under steady I/O some are always in
    /// flight, and waiting for them too would hold the TMF for ever.
    pub fn abort(&self, scope: Scope) -> usize {
        self.abort_marking(scope, false)
    }

    /// [`TaskSet::abort`] for an ABORT TASK or ABORT TASK SET of the tasks' own I_T nexus: a
    /// task it names gets no response even if its I/O had started (SAM-5 §7.2: an aborted
    /// task's status is not returned), so that the initiator sees either the task's response
    /// and "task does not exist" or "function complete" and no response, never both.
    pub fn abort_own(&self, scope: Scope) -> usize {
        self.abort_marking(scope, true)
    }

    fn abort_marking(&self, scope: Scope, silence: bool) -> usize {
        let mut t = lock(&self.tasks);
        let mut named = Vec::new();
        for (&id, task) in t.live.iter_mut().filter(|(_, task)| task.in_scope(scope)) {
            task.aborted = true;
            task.silenced |= silence;
            named.push(id);
        }
        while named.iter().any(|id| {
            t.live
                .get(id)
                .is_some_and(|task| task.state == TaskState::InFlight)
        }) {
            t = self
                .settled
                .wait(t)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        named.len()
    }

    /// Whether any task in `scope` is in the set (QUERY TASK, QUERY TASK SET).
    pub fn contains(&self, scope: Scope) -> bool {
        lock(&self.tasks)
            .live
            .values()
            .any(|task| task.in_scope(scope))
    }
}

#[cfg(test)]
mod tests;
