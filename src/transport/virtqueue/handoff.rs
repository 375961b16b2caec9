//! Which connection of a guest's device may admit requests, when a live migration gives the
//! guest two: the source QEMU's, still live, and the destination QEMU's, opened while the guest
//! still runs on the source (`daemon/listen.rs` accepts it).
//!
//! The guest is one initiator throughout: both connections serve the same name and TransportID,
//! so its registration, reservation and pending unit attentions are untouched by the move. What
//! must never happen is two connections admitting requests at once: a request of the destination
//! overtaking one the source took would reorder the guest's writes. So one connection at a time
//! holds the device ([`Handoff`]): a connection takes it when its rings first have work (the
//! ring's start queues an event for its worker thread, so that is at once after a start) and
//! keeps it until every ring it served is stopped (GET_VRING_BASE, which answers only after the
//! ring's round in progress is completed and its pages marked: `drain.rs`) or the connection
//! ends. Meanwhile another connection's rings are parked: their requests wait in the ring, and
//! when the holder lets go each parked ring's kick eventfd is signalled, so its worker drains it.
//!
//! QEMU itself starts the destination's rings only once the guest resumes there, after the
//! source stopped its rings; the handoff enforces that order whatever the frontends do. Two QEMUs
//! that both run the guest (a mistake, not a migration) are thus never two writers: the first
//! keeps the device, the second's requests wait until the first stops or goes away (logged).
//!
//! In cluster mode a guest may also move to another host's daemon (`pr/cluster/owner.rs`): a
//! [`Gate`] shared by the guest's devices then says whether this daemon owns the guest. A
//! connection takes a device only while the gate admits it; the gate counts the devices held, so
//! the guest is handed to another daemon only once none is, and it wakes the parked rings when
//! this daemon owns the guest again.

use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use vhost_user_backend::VringT;

use super::Vring;
use crate::util::lock::lock;

/// Numbers the connections a handoff sees.
static TICKETS: AtomicU64 = AtomicU64::new(1);

/// Whether this daemon may admit requests for a guest at all (cluster mode: it owns the guest).
pub trait Gate: Send + Sync {
    /// Takes one hold of the guest for a device about to admit; false (and a note that the
    /// guest is wanted here) when this daemon does not own it now.
    fn hold(&self) -> bool;
    /// Whether a device that holds the guest may still admit: false (and a note that the guest
    /// is wanted here) when this daemon does not own it any more (its record names another).
    fn admits(&self) -> bool;
    /// A device that held the guest holds it no more (every ring stopped, or its connection
    /// ended).
    fn unhold(&self);
    /// Kicks `handoff`'s parked rings once the guest is owned here again.
    fn attach(&self, handoff: Weak<Handoff>);
    /// A frontend connected to one of the guest's devices.
    fn connected(&self) {}
    /// A connection of one of the guest's devices ended ([`Gate::connected`] before).
    fn disconnected(&self) {}
}

/// The one holder of a guest's device among its connections.
#[derive(Default)]
pub struct Handoff {
    inner: Mutex<Inner>,
    gate: Option<Arc<dyn Gate>>,
}

#[derive(Default)]
struct Inner {
    /// The connection that holds the device.
    holder: Option<u64>,
    /// For each connection: the rings it served since they last started, as a bit mask.
    serving: HashMap<u64, u64>,
    /// Rings of other connections that had work while the holder held the device.
    parked: Vec<(u64, u16, Vring)>,
    /// The connections that have a ticket and have not ended.
    live: Vec<u64>,
}

/// One connection's place in its guest device's [`Handoff`].
#[derive(Clone)]
pub struct Ticket {
    handoff: Arc<Handoff>,
    id: u64,
}

impl Handoff {
    /// A device whose guest may be served only while `gate` admits it.
    pub fn gated(gate: Option<Arc<dyn Gate>>) -> Arc<Handoff> {
        let handoff = Arc::new(Handoff {
            inner: Mutex::default(),
            gate,
        });
        if let Some(g) = &handoff.gate {
            g.attach(Arc::downgrade(&handoff));
        }
        handoff
    }

    /// The gate admits again: every parked ring is kicked (only the holder's, while a
    /// connection holds the device), so its worker tries again.
    pub fn wake(&self) {
        let mut inner = lock(&self.inner);
        match inner.holder {
            None => kick_parked(&mut inner),
            Some(holder) => {
                let (mine, others) = inner.parked.drain(..).partition(|(id, _, _)| *id == holder);
                inner.parked = others;
                kick(mine);
            }
        }
    }

    /// A ticket for a new connection.
    pub fn ticket(self: &Arc<Self>) -> Ticket {
        let id = TICKETS.fetch_add(1, Ordering::Relaxed);
        lock(&self.inner).live.push(id);
        if let Some(g) = &self.gate {
            g.connected();
        }
        Ticket {
            handoff: self.clone(),
            id,
        }
    }
}

impl Ticket {
    /// A connection that is the only one of its device (tests, fuzzing).
    pub fn alone() -> Ticket {
        Arc::new(Handoff::default()).ticket()
    }

    /// Whether ring `ring` (`vring`) of this connection may be served now. If another connection
    /// holds the device, the ring is parked instead: it is kicked when the holder lets go.
    pub fn enter(&self, ring: u16, vring: &Vring) -> bool {
        let mut inner = lock(&self.handoff.inner);
        if inner.holder.is_none() {
            if let Some(gate) = &self.handoff.gate {
                if !gate.hold() {
                    park(&mut inner, self.id, ring, vring);
                    return false;
                }
            }
        }
        match inner.holder {
            Some(holder) if holder == self.id && !self.gate_admits() => {
                if park(&mut inner, self.id, ring, vring) {
                    log::warn!(
                        "ring {ring}: this daemon does not own the guest any more (its owner \
                         record names another daemon): its requests are held"
                    );
                }
                false
            }
            Some(holder) if holder != self.id => {
                if park(&mut inner, self.id, ring, vring) {
                    log::warn!(
                        "ring {ring} of a second connection has requests while another \
                         connection of this guest runs: held until that one stops its rings or \
                         goes away"
                    );
                }
                false
            }
            _ => {
                inner.holder = Some(self.id);
                *inner.serving.entry(self.id).or_default() |= 1u64 << (ring % 64);
                true
            }
        }
    }

    /// Whether ring `ring` of this connection, served a round already, may be served another:
    /// only while this connection still holds the device and the gate still admits (else the
    /// ring is parked, as by [`Ticket::enter`]). Never takes the device: a connection whose
    /// rings were stopped meanwhile holds nothing.
    pub fn keeps(&self, ring: u16, vring: &Vring) -> bool {
        let mut inner = lock(&self.handoff.inner);
        match inner.holder {
            Some(holder) if holder == self.id && self.gate_admits() => true,
            Some(_) => {
                park(&mut inner, self.id, ring, vring);
                false
            }
            None => false,
        }
    }

    /// Whether the gate, if any, still lets the holding connection admit.
    fn gate_admits(&self) -> bool {
        self.handoff.gate.as_ref().is_none_or(|g| g.admits())
    }

    /// GET_VRING_BASE stopped ring `ring` of this connection (its round is over). The device is
    /// let go once every ring this connection served is stopped.
    pub fn stopped(&self, ring: u32) {
        let mut inner = lock(&self.handoff.inner);
        let serving = inner.serving.entry(self.id).or_default();
        *serving &= !(1u64 << (ring % 64));
        if *serving == 0 && inner.holder == Some(self.id) {
            log::info!("every ring of the holding connection is stopped: the device is free");
            release(&self.handoff, &mut inner);
        }
    }

    /// The connection ended: it holds nothing and waits for nothing any more.
    pub fn end(&self) {
        let mut inner = lock(&self.handoff.inner);
        inner.serving.remove(&self.id);
        inner.parked.retain(|(id, _, _)| *id != self.id);
        if inner.holder == Some(self.id) {
            release(&self.handoff, &mut inner);
        }
        let before = inner.live.len();
        inner.live.retain(|id| *id != self.id);
        if inner.live.len() < before {
            if let Some(g) = &self.handoff.gate {
                g.disconnected();
            }
        }
    }
}

/// Parks ring `ring` of connection `id` until the device is free; false if it already was.
fn park(inner: &mut Inner, id: u64, ring: u16, vring: &Vring) -> bool {
    if inner.parked.iter().any(|(i, r, _)| *i == id && *r == ring) {
        return false;
    }
    inner.parked.push((id, ring, vring.clone()));
    true
}

/// No connection holds the device: the gate's hold is given back and every parked ring is
/// kicked, so its worker tries again.
fn release(handoff: &Handoff, inner: &mut Inner) {
    inner.holder = None;
    if let Some(gate) = &handoff.gate {
        gate.unhold();
    }
    kick_parked(inner);
}

/// Kicks every parked ring's eventfd.
fn kick_parked(inner: &mut Inner) {
    kick(std::mem::take(&mut inner.parked));
}

/// Kicks the eventfd of each of `rings`.
fn kick(rings: Vec<(u64, u16, Vring)>) {
    for (_, ring, vring) in rings {
        let state = vring.get_ref();
        if let Some(kick) = state.get_kick() {
            log::info!("ring {ring} of the waiting connection may run now");
            let one = 1u64;
            // SAFETY: writes the 8 bytes of `one` to the ring's kick eventfd, which stays open
            // while we hold the ring's state guard.
            let n = unsafe {
                libc::write(
                    kick.as_raw_fd(),
                    (&one as *const u64).cast::<libc::c_void>(),
                    8,
                )
            };
            if n != 8 {
                let e = std::io::Error::last_os_error();
                log::warn!("cannot wake ring {ring}: {e}; it runs at its next kick");
            }
        }
    }
}

#[cfg(test)]
mod tests;
