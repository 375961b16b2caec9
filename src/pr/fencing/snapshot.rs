//! What the metrics show of the PR state, read without the arbiter's lock: a snapshot published
//! by every writer of the arbiter when it lets go of the write lock, so that a scrape never waits
//! for a PR OUT (which holds the lock while its change is made durable) nor makes one wait.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, RwLockWriteGuard};

use crate::pr::arbiter::Reservation;
use crate::pr::Arbiter;
use crate::util::lock::lock;

/// The PR state as of the last change: PRgeneration, how many keys are registered, the
/// reservation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PrSnapshot {
    pub generation: u32,
    pub registrations: usize,
    pub reservation: Option<Reservation>,
}

impl PrSnapshot {
    pub(crate) fn of(arb: &Arbiter) -> Self {
        PrSnapshot {
            generation: arb.generation(),
            registrations: arb.registrations().len(),
            reservation: arb.reservation().cloned(),
        }
    }
}

/// The last published snapshot. The mutex is held only to clone or replace the `Arc`, never
/// while the arbiter's lock is awaited.
#[derive(Debug, Default)]
pub(crate) struct Published(Mutex<Arc<PrSnapshot>>);

impl Published {
    pub(crate) fn of(arb: &Arbiter) -> Self {
        Published(Mutex::new(Arc::new(PrSnapshot::of(arb))))
    }

    pub(crate) fn get(&self) -> Arc<PrSnapshot> {
        lock(&self.0).clone()
    }

    /// Publishes `arb`'s state if it differs from the last snapshot (unit attentions and the
    /// like change nothing shown, and cost no allocation).
    fn publish(&self, arb: &Arbiter) {
        let now = PrSnapshot::of(arb);
        let mut last = lock(&self.0);
        if **last != now {
            *last = Arc::new(now);
        }
    }
}

/// The arbiter's write lock; publishes the state it leaves when dropped, still holding the lock,
/// so that snapshots are published in the order of the changes.
pub(crate) struct ArbiterWrite<'a> {
    pub(super) arb: RwLockWriteGuard<'a, Arbiter>,
    pub(super) published: &'a Published,
}

impl Deref for ArbiterWrite<'_> {
    type Target = Arbiter;
    fn deref(&self) -> &Arbiter {
        &self.arb
    }
}

impl DerefMut for ArbiterWrite<'_> {
    fn deref_mut(&mut self) -> &mut Arbiter {
        &mut self.arb
    }
}

impl Drop for ArbiterWrite<'_> {
    fn drop(&mut self) {
        self.published.publish(&self.arb);
    }
}

#[cfg(test)]
mod tests;
