//! PERSISTENT RESERVE OUT exactly once, across reconnections and daemon crashes.
//!
//! When a vhost-user connection drops, QEMU restarts each ring from its used index on the next
//! connection (SET_VRING_BASE) and so presents again every request whose completion it had not
//! seen. Data commands are idempotent; a PR OUT is not: a REGISTER, PREEMPT or CLEAR that was
//! applied and made durable just before a crash would run a second time and answer RESERVATION
//! CONFLICT (its key is no longer what the CDB says), which fence_scsi and cluster managers read
//! as a failed fence.
//!
//! So every executed PR OUT leaves a [`Record`]: the initiator, the ring, where the request sat in
//! it ([`Slot`]), a digest of the request (virtio-scsi header, CDB and parameter list) and the
//! status it got. A record whose PR OUT changed the state is saved in the state file together
//! with that change, atomically. A later request is answered from a record, without executing,
//! only if it is the replay of that very request, that is, if all of these hold:
//! - it comes on another connection than the one that executed the original;
//! - in the ring's first start on this connection (a guest reset or firmware hand-over restarts
//!   the ring, and after that nothing is replayed);
//! - at the same ring position, with the same head descriptor and the same digest;
//! - and that position lies in the window QEMU replays: at or after the ring's new base (the used
//!   index), which itself is not behind the used index when the original was taken.
//!
//! A PR OUT that changed nothing is recorded in memory only: re-executed after a daemon crash it
//! again changes nothing. Records are dropped once their request's completion is in the ring,
//! and at most [`MAX_PER_RING`] are kept per initiator and ring. A record still in the state file
//! after its completion is harmless: the conditions above no longer hold for it.

use serde::{Deserialize, Serialize};

use crate::pr::PrStatus;
use crate::scsi::sense::Sense;

/// Records kept per initiator and ring; a guest rarely has more than one PR OUT in flight.
pub const MAX_PER_RING: usize = 8;

/// Where a popped request sat in its ring, and what the ring looked like then.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The request's index in the available ring's sequence (`avail->idx` before it was added).
    pub position: u16,
    /// Its head descriptor.
    pub head: u16,
    /// The ring's used index when the request was taken.
    pub used: u16,
    /// Where the frontend started the ring on this connection (SET_VRING_BASE).
    pub base: u16,
    /// The ring's size.
    pub size: u16,
    /// The ring has not been stopped and restarted on this connection.
    pub first_start: bool,
}

/// A request's identity: which connection, which ring, where in it, and a digest of its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Origin {
    /// Unique per vhost-user connection within one daemon run (never 0).
    pub connection: u64,
    pub ring: u16,
    pub slot: Slot,
    pub digest: u64,
}

/// The outcome of one executed PR OUT, and the request it belongs to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub initiator: String,
    pub ring: u16,
    pub position: u16,
    pub head: u16,
    /// The ring's used index when the request was taken.
    pub used: u16,
    pub digest: u64,
    /// SCSI status: 0x00 GOOD, 0x18 RESERVATION CONFLICT, 0x02 CHECK CONDITION with `sense`.
    pub status: u8,
    /// Sense key, ASC, ASCQ of a CHECK CONDITION.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sense: Option<[u8; 3]>,
    /// The connection that executed it; 0 for a record loaded from the state file.
    #[serde(skip)]
    connection: u64,
}

impl Record {
    fn outcome(&self) -> PrStatus {
        match (self.status, self.sense) {
            (0x00, _) => PrStatus::Good,
            (0x18, _) => PrStatus::Conflict,
            (0x08, _) => PrStatus::Busy,
            (_, Some([key, asc, ascq])) => PrStatus::CheckCondition(Sense::new(key, asc, ascq)),
            // A check condition without sense cannot be saved by `record`; answer as a target
            // that lost track of it would.
            _ => PrStatus::CheckCondition(Sense::new(0x04, 0x44, 0x00)),
        }
    }

    /// Whether `origin` on `initiator` is the replay of this record's request.
    fn replayed_by(&self, initiator: &str, o: &Origin) -> bool {
        let s = &o.slot;
        // Positions compared as distances from the used index the original saw, so that the
        // 16-bit indices may wrap: QEMU's new base lies between that used index and the request.
        let base = s.base.wrapping_sub(self.used);
        let position = self.position.wrapping_sub(self.used);
        self.initiator == initiator
            && self.ring == o.ring
            && self.connection != o.connection
            && s.first_start
            && self.position == s.position
            && self.head == s.head
            && self.digest == o.digest
            && base <= position
            && position < s.size
    }
}

/// Every record of one LU, kept next to the arbiter and persisted with its state.
#[derive(Default, Debug, Clone)]
pub struct ReplayLog {
    records: Vec<Record>,
}

impl ReplayLog {
    /// Records loaded from the state file: they may be replayed on any connection.
    pub fn from_saved(records: Vec<Record>) -> Self {
        let records = records
            .into_iter()
            .map(|r| Record { connection: 0, ..r })
            .collect();
        ReplayLog { records }
    }

    /// Cluster mode: takes in this node's records as the shared state holds them (committed
    /// with its last change). Each replaces a local record of the same request slot; the local
    /// records of other slots stay.
    pub fn restore(&mut self, shared: Vec<Record>) {
        for r in shared {
            self.records.retain(|l| {
                !(l.initiator == r.initiator && l.ring == r.ring && l.position == r.position)
            });
            self.records.push(Record { connection: 0, ..r });
        }
    }

    /// What to save with the state.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// The first execution's outcome if `origin` replays an executed PR OUT. The record then
    /// belongs to this connection, so it answers no second request here.
    pub fn replay(&mut self, initiator: &str, origin: &Origin) -> Option<PrStatus> {
        let r = self
            .records
            .iter_mut()
            .find(|r| r.replayed_by(initiator, origin))?;
        r.connection = origin.connection;
        Some(r.outcome())
    }

    /// Remembers the outcome of a PR OUT that was just executed.
    pub fn record(&mut self, initiator: &str, origin: &Origin, status: PrStatus) {
        let (status, sense) = match status {
            PrStatus::Good => (0x00, None),
            PrStatus::Conflict => (0x18, None),
            PrStatus::Busy => (0x08, None),
            PrStatus::CheckCondition(s) => (0x02, Some([s.key, s.asc, s.ascq])),
        };
        let same_ring = |r: &Record| r.initiator == initiator && r.ring == origin.ring;
        // The same slot can only hold one request at a time: an older record there is stale.
        self.records
            .retain(|r| !(same_ring(r) && r.position == origin.slot.position));
        if self.records.iter().filter(|r| same_ring(r)).count() >= MAX_PER_RING {
            if let Some(oldest) = self.records.iter().position(same_ring) {
                self.records.remove(oldest);
            }
        }
        self.records.push(Record {
            initiator: initiator.to_string(),
            ring: origin.ring,
            position: origin.slot.position,
            head: origin.slot.head,
            used: origin.slot.used,
            digest: origin.digest,
            status,
            sense,
            connection: origin.connection,
        });
    }

    /// Takes back the record of a PR OUT whose change could not be made durable.
    pub fn forget(&mut self, initiator: &str, origin: &Origin) {
        self.records.retain(|r| {
            !(r.initiator == initiator
                && r.ring == origin.ring
                && r.position == origin.slot.position
                && r.connection == origin.connection)
        });
    }

    /// Every request taken from `ring` so far, on the current connection, is completed in the
    /// used ring: QEMU will not present them again, and replays (which come first, from the
    /// ring's base on) are over, so the ring's records are done with.
    pub fn completed(&mut self, initiator: &str, ring: u16) {
        self.records
            .retain(|r| !(r.initiator == initiator && r.ring == ring));
    }
}

#[cfg(test)]
mod tests;
