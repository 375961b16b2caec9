//! Portal admission: the open connections by phase, so that each kind has its own bound
//! (`[iscsi]` `max_logins`, `max_discovery_sessions`, `max_sessions`) and a flood of one kind
//! does not take the room of the others. A login in progress or a discovery session beyond its
//! bound makes room by closing the oldest of its kind from the source address that holds the
//! most of them: a flood from one address closes its own connections, not a legitimate
//! initiator's from another. Normal sessions are never closed to make room: beyond
//! `max_sessions` (or maxShares) a login is refused (0302).

use std::collections::HashMap;
use std::net::{IpAddr, Shutdown, TcpStream};
use std::time::Instant;

/// Where a connection stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    /// Accepted, its login not complete.
    Login,
    /// A discovery session (SendTargets only).
    Discovery,
    /// A Normal session: an I_T nexus.
    Normal,
    /// Closed by the portal to make room; its thread has not ended yet.
    Closing,
}

/// One open connection.
pub(super) struct Open {
    /// A clone of the connection, to close it from another thread.
    pub stream: TcpStream,
    pub source: IpAddr,
    pub phase: Phase,
    /// When it entered `phase`.
    pub since: Instant,
}

/// Every open connection, by id.
#[derive(Default)]
pub(super) struct Conns(HashMap<u64, Open>);

impl Conns {
    pub fn insert(&mut self, id: u64, open: Open) {
        self.0.insert(id, open);
    }

    pub fn remove(&mut self, id: u64) {
        self.0.remove(&id);
    }

    /// Whether connection `id` is open (its thread has not ended).
    pub fn contains(&self, id: u64) -> bool {
        self.0.contains_key(&id)
    }

    /// The source address of connection `id`.
    pub fn source(&self, id: u64) -> Option<IpAddr> {
        self.0.get(&id).map(|o| o.source)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Connections in `phase`.
    #[cfg(test)]
    pub fn count(&self, phase: Phase) -> usize {
        self.0.values().filter(|o| o.phase == phase).count()
    }

    /// Connection `id` enters `phase`.
    pub fn enter(&mut self, id: u64, phase: Phase) {
        if let Some(o) = self.0.get_mut(&id) {
            o.phase = phase;
            o.since = Instant::now();
        }
    }

    /// The connection to close so that one more in `phase` stays within `limit`: the oldest in
    /// `phase` of the source with the most in `phase`. `None` while there is room.
    pub fn victim(&self, phase: Phase, limit: usize) -> Option<u64> {
        let mut per_source: HashMap<IpAddr, (usize, Instant, u64)> = HashMap::new();
        let mut n = 0;
        for (&id, o) in self.0.iter().filter(|(_, o)| o.phase == phase) {
            n += 1;
            let e = per_source.entry(o.source).or_insert((0, o.since, id));
            e.0 += 1;
            if o.since < e.1 {
                (e.1, e.2) = (o.since, id);
            }
        }
        if n < limit {
            return None;
        }
        per_source
            .into_values()
            .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
            .map(|(_, _, id)| id)
    }

    /// Closes connection `id` (its thread sees its reads and writes fail and ends); its source
    /// and the phase it was in.
    pub fn close(&mut self, id: u64) -> Option<(IpAddr, Phase)> {
        let o = self.0.get_mut(&id)?;
        let _ = o.stream.shutdown(Shutdown::Both);
        let was = std::mem::replace(&mut o.phase, Phase::Closing);
        Some((o.source, was))
    }

    /// Closes every connection.
    pub fn close_all(&mut self) {
        for o in self.0.values_mut() {
            let _ = o.stream.shutdown(Shutdown::Both);
            o.phase = Phase::Closing;
        }
    }
}

#[cfg(test)]
mod tests;
