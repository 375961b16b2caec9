//! Lock guards that ignore poisoning.
//!
//! A poisoned lock only says that another thread panicked while holding it. Every structure
//! behind the daemon's locks is consistent after each call that changes it (the arbiter, the
//! statistics, the replay log), so the daemon keeps serving rather than spreading the panic to
//! every initiator.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locks `m`, whether or not a previous holder panicked.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes the read side of `l`, whether or not a previous holder panicked.
pub fn read<T: ?Sized>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

/// Takes the write side of `l`, whether or not a previous holder panicked.
pub fn write<T: ?Sized>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}
