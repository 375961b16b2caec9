//! The read lease's upkeep: the agent's renewer thread and the watch on the state key, the
//! acknowledgements, and leaving the cluster.

use super::*;

/// The longest pause between two background attempts to settle after a failure (strict mode:
/// the fence hook's back-off).
const SETTLE_BACKOFF_MAX: Duration = Duration::from_secs(2);

/// The running agent: the renewer thread, the watch and the background settle. Stops (and leaves the cluster) on
/// [`Agent::stop`] or drop.
///
/// It holds the logical unit weakly: the unit owns its reservations, which own the backend and
/// so this agent; a strong reference would keep a dropped unit, its renewer and its membership
/// alive for ever.
pub struct Agent {
    shared: Arc<EtcdState>,
    lun: Weak<Lun>,
    renewer: Option<JoinHandle<()>>,
    settler: Option<JoinHandle<()>>,
    mover: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts renewing the lease of `shared` for `lun`, whose reservations share it.
    pub fn start(shared: Arc<EtcdState>, lun: Arc<Lun>) -> Agent {
        let watch_shared = shared.clone();
        let key = shared.keys.state.clone();
        shared.rt.spawn(async move {
            watch_state(watch_shared, key).await;
        });
        shared.rt.spawn(super::owner::watch_owners(shared.clone()));
        let (s, l) = (shared.clone(), Arc::downgrade(&lun));
        let renewer = std::thread::Builder::new()
            .name("cluster-renew".into())
            .spawn(move || renew_loop(&s, &l))
            .ok();
        let s = shared.clone();
        let settler = std::thread::Builder::new()
            .name("cluster-settle".into())
            .spawn(move || settle_loop(&s))
            .ok();
        let (s, l) = (shared.clone(), Arc::downgrade(&lun));
        let mover = std::thread::Builder::new()
            .name("cluster-move".into())
            .spawn(move || super::owner::mover_loop(&s, &l))
            .ok();
        Agent {
            shared,
            lun: Arc::downgrade(&lun),
            renewer,
            settler,
            mover,
        }
    }

    /// Stops renewing and leaves the cluster.
    pub fn stop(&mut self) {
        let Some(t) = self.renewer.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake_renewer();
        let (m, c) = &*self.shared.move_wake;
        *lock(m) = true;
        c.notify_all();
        // The renewer itself may drop the last reference to the unit, and so this agent: it
        // has stopped already, and cannot wait for itself.
        if t.thread().id() != std::thread::current().id() {
            let _ = t.join();
        }
        if let Some(t) = self.settler.take() {
            let _ = t.join();
        }
        if let Some(t) = self.mover.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
        self.shared.leave(self.lun.upgrade().as_deref());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

fn renew_loop(shared: &EtcdState, lun: &Weak<Lun>) {
    let mut serving = true;
    loop {
        {
            let (m, c) = &shared.wake;
            let mut woken = lock(m);
            if !*woken {
                woken = c
                    .wait_timeout(woken, shared.cfg.renew_every())
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            *woken = false;
        }
        if shared.stopping.load(Ordering::Acquire) {
            return;
        }
        let Some(lun) = lun.upgrade() else {
            return;
        };
        shared.renew(&lun);
        drop(lun);
        let now = shared.lease.valid();
        if now != serving {
            if now {
                log::warn!("cluster: read lease back; admitting I/O again");
                let left_out = shared.busy_log.flush();
                if left_out > 0 {
                    log::warn!(
                        "cluster: {left_out} BUSY answers while the lease was lost not logged"
                    );
                }
            } else {
                log::error!(
                    "cluster: read lease lost (etcd out of reach or without quorum): new I/O \
                     waits up to {} ms, then fails",
                    shared.cfg.hold_ms
                );
            }
            serving = now;
        }
    }
}

/// Keeps settling the epoch held here while it is above the settled marker: after a command's
/// settle failed (its budget spent, the strict mode's hook failing), PR IN answers BUSY until
/// this has settled it (soft mode: once the wait bound passed since this daemon held it; strict
/// mode: once the hook fenced every member behind, retried with back-off). A new epoch is left
/// to the command that committed or the PR IN that meets it for a renewal interval first.
fn settle_loop(shared: &EtcdState) {
    let mut pause = shared.cfg.renew_every();
    loop {
        let until = Instant::now() + pause;
        while Instant::now() < until {
            if shared.stopping.load(Ordering::Acquire) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20).min(pause));
        }
        let (held, _) = shared.held();
        let held_for = boottime_ns().saturating_sub(shared.held_since());
        if held <= shared.settled()
            || held_for < crate::pr::cluster::config::nanos(shared.cfg.renew_every())
            || shared.fault().is_some()
        {
            pause = shared.cfg.renew_every();
            continue;
        }
        let result = shared.settle(held, crate::pr::cluster::config::after(shared.budget()));
        pause = shared.settle_attempted(held, result.as_ref().err(), pause);
    }
}

/// Wakes the renewer whenever the state key changes. Watches through the member that answers
/// the calls, and moves when they move; reconnects after any error.
async fn watch_state(shared: Arc<EtcdState>, key: String) {
    while !shared.stopping.load(Ordering::Acquire) {
        let (at, mut client) = shared.endpoints.preferred();
        match client.watch(key.clone(), None).await {
            Ok(mut stream) => loop {
                if shared.stopping.load(Ordering::Acquire) || shared.endpoints.preferred().0 != at {
                    break;
                }
                match tokio::time::timeout(shared.cfg.renew_every(), stream.message()).await {
                    Ok(Ok(Some(resp))) => {
                        if !resp.events().is_empty() {
                            shared.wake_renewer();
                        }
                        if resp.canceled() {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(_) => {} // quiet: check the endpoint and go on
                }
            },
            Err(e) => log::debug!("cluster: watch {key}: {e}"),
        }
        tokio::time::sleep(shared.cfg.renew_every() / 2).await;
    }
}

/// What a refused renewal or commit read back of this node's member key (the third read of its
/// else branch).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum MemberRead {
    /// Still this incarnation.
    Ours,
    /// Deleted (an eviction, or lost): this incarnation registers again.
    Absent,
    /// Another incarnation of this node took it.
    Other,
}

/// How a state read from etcd compares with the one held here.
pub(super) enum Seen {
    /// Newer, of the same history: adopt it.
    Newer(Remote),
    /// The same epoch and content at another version (rewritten unchanged): hold that version.
    Same(Remote),
    /// Older, of another history, other content at the same epoch, or gone.
    Regression(Option<u64>),
}

impl EtcdState {
    /// Logs a background settle attempt of `epoch` once per kind of outcome and returns the
    /// pause before the next one: doubled (up to [`SETTLE_BACKOFF_MAX`]) after a failure that
    /// another attempt at once would repeat, such as a failing fence hook.
    fn settle_attempted(
        &self,
        epoch: u64,
        error: Option<&SettleError>,
        pause: Duration,
    ) -> Duration {
        let mut last = lock(&self.settle_failure);
        let Some(e) = error else {
            if last.take().is_some() {
                log::warn!(
                    "cluster: shared state {epoch} settled in the background; PR IN answers again"
                );
            }
            return self.cfg.renew_every();
        };
        let kind = match e {
            SettleError::MembersUnreadable(_) => "members unreadable",
            SettleError::BudgetSpent => "budget spent",
            SettleError::NotFenced(_) => "not fenced",
        };
        if last.as_deref() != Some(kind) {
            log::error!(
                "cluster: shared state {epoch} is committed but not settled: {e}; PR IN answers \
                 BUSY until it is; trying again in the background (check the fence hook and etcd)"
            );
            *last = Some(kind.to_string());
        }
        match e {
            SettleError::BudgetSpent => self.cfg.renew_every(),
            _ => (pause * 2).min(SETTLE_BACKOFF_MAX),
        }
    }

    /// The acknowledgement of the state held here by this incarnation. While it may not vouch
    /// yet, the renewal still writes one (a sign of life for `evict`) under an incarnation id
    /// that matches no member's, so it vouches for nothing.
    fn ack_value(&self, epoch: u64, lease_remaining_ms: u64) -> Vec<u8> {
        let mut initiators: Vec<String> = read(&self.served).iter().cloned().collect();
        initiators.sort();
        let vouching = self.may_vouch();
        serde_json::to_vec(&AckValue {
            // Epoch 0 while not vouching: a daemon of an older version counts acknowledgements
            // by their epoch alone.
            epoch: if vouching { epoch } else { 0 },
            initiators,
            lease_remaining_ms,
            history: self.history(),
            incarnation: if vouching {
                self.incarnation.clone()
            } else {
                format!("not vouching: {}", self.incarnation)
            },
        })
        .unwrap_or_default()
    }

    /// Whether this incarnation may vouch for anything yet (see `after_replacing`).
    pub(super) fn may_vouch(&self) -> bool {
        boottime_ns() >= self.vouch_from.load(Ordering::Acquire) && self.fault().is_none()
    }

    /// Acknowledges the state held here: only while this incarnation is the member and the
    /// state in etcd is the very version held (never an epoch that was not applied).
    pub(super) fn put_ack(&self) -> bool {
        if !self.may_vouch() {
            return false;
        }
        let (epoch, version) = self.held();
        let value = self.ack_value(
            epoch,
            u64::try_from(self.lease.remaining().as_millis()).unwrap_or(u64::MAX),
        );
        let k = &self.keys;
        let txn = Txn::new()
            .when([
                Compare::value(k.member.as_str(), CompareOp::Equal, self.member.clone()),
                Compare::mod_revision(k.state.as_str(), CompareOp::Equal, version),
            ])
            .and_then([TxnOp::put(k.ack.as_str(), value, None)]);
        match self.txn(self.cfg.renew_every(), "acknowledge", &txn) {
            Ok(r) => r.succeeded(),
            Err(e) => {
                log::debug!("cluster: {e}");
                false
            }
        }
    }

    /// One renewal of the read lease (see the module's documentation). Returns whether the
    /// lease was extended.
    pub(super) fn renew(&self, lun: &Lun) -> bool {
        if self.fault() == Some(Fault::Replaced) {
            return false;
        }
        let (epoch, version) = self.held();
        let k = &self.keys;
        let sent = boottime_ns();
        let ack = self.ack_value(epoch, self.cfg.lease_ms);
        let txn = Txn::new()
            .when([
                Compare::mod_revision(k.state.as_str(), CompareOp::Equal, version),
                Compare::value(k.member.as_str(), CompareOp::Equal, self.member.clone()),
            ])
            .and_then([TxnOp::put(k.ack.as_str(), ack, None)])
            .or_else([
                TxnOp::get(k.state.as_str(), None),
                TxnOp::get(
                    k.ua_at(epoch + 1),
                    Some(GetOptions::new().with_range(Keys::prefix_end(&k.ua))),
                ),
                TxnOp::get(k.member.as_str(), None),
            ]);
        let resp = match self.txn(self.cfg.renew_every(), "renew the read lease", &txn) {
            Ok(r) => r,
            Err(e) => {
                log::debug!("cluster: {e}");
                return false;
            }
        };
        if resp.succeeded() {
            // etcd holds exactly the state held here: whatever regression was seen is over.
            self.clear_regression();
            self.lease.renewed(sent, self.cfg.lease());
            return true;
        }
        let got = gets(&resp);
        if self.member_read(&got) != MemberRead::Ours {
            return false;
        }
        if self.held() != (epoch, version) {
            // A commit or a republish moved the state held here while this renewal was on its
            // way: what it read may be older than that, and is no regression. The next renewal
            // compares afresh.
            return false;
        }
        let seen = match self.compare_remote(lun, &got) {
            Ok(s) => s,
            Err(e) => {
                log::error!("cluster: the shared state {} is unreadable: {e}", k.state);
                self.lease.revoke();
                return false;
            }
        };
        match seen {
            Seen::Newer(remote) => {
                self.adopt(&lun.reservations, remote);
            }
            Seen::Same(remote) => self.set_held(remote.epoch, remote.version),
            Seen::Regression(shared) => {
                self.regressed(shared);
                return false;
            }
        }
        self.clear_regression();
        // Acknowledge, then extend: the renewal read was linearizable and everything it
        // returned is applied now.
        self.put_ack();
        self.lease.renewed(sent, self.cfg.lease());
        true
    }

    /// What the member key read back in a refused renewal or commit says; stops admitting when
    /// it is not this incarnation's (for good when another incarnation took it).
    pub(super) fn member_read(&self, got: &[Vec<KeyValue>]) -> MemberRead {
        let read = match got.get(2).and_then(|m| m.first()) {
            Some(m) if m.value() == self.member.as_slice() => return MemberRead::Ours,
            Some(_) => MemberRead::Other,
            None => MemberRead::Absent,
        };
        self.lease.revoke();
        let k = &self.keys;
        if read == MemberRead::Other {
            let first = lock(&self.fault).replace(Fault::Replaced) != Some(Fault::Replaced);
            if first {
                log::error!(
                    "cluster: another incarnation of node {:?} took this daemon's membership \
                     ({}): this daemon stops admitting I/O for good. Stop it: two daemons must \
                     not serve one node name",
                    self.cfg.node,
                    k.member
                );
            }
            return read;
        }
        log::error!(
            "cluster: this daemon's membership ({}) was removed (evicted?); I/O stops until it \
             has joined again",
            k.member
        );
        // The same incarnation registers again, only where the key is still absent.
        let again = Txn::new()
            .when([Compare::create_revision(
                k.member.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(k.member.as_str(), self.member.clone(), None)]);
        let _ = self.txn(self.cfg.renew_every(), "join again", &again);
        read
    }

    /// How the state read back in a refused renewal or commit compares with the one held.
    pub(super) fn compare_remote(&self, lun: &Lun, got: &[Vec<KeyValue>]) -> Result<Seen, String> {
        self.classify(got, |r| lun.reservations.with(|a| a.state() == &r.state))
    }

    /// [`Self::compare_remote`], with `same_content` telling whether a state at the held
    /// epoch has the content held here.
    pub(super) fn classify(
        &self,
        got: &[Vec<KeyValue>],
        same_content: impl FnOnce(&Remote) -> bool,
    ) -> Result<Seen, String> {
        let Some(remote) = remote_from(
            &self.keys,
            got.first().and_then(|s| s.first()),
            got.get(1).map_or(&[][..], |v| &v[..]),
        )?
        else {
            return Ok(Seen::Regression(None));
        };
        let (epoch, version) = self.held();
        if remote.history != self.history() || remote.epoch < epoch {
            return Ok(Seen::Regression(Some(remote.epoch)));
        }
        if remote.epoch > epoch {
            return Ok(Seen::Newer(remote));
        }
        if remote.version == version || same_content(&remote) {
            return Ok(Seen::Same(remote));
        }
        Ok(Seen::Regression(Some(remote.epoch)))
    }

    /// etcd holds an older state than the one held here: stop admitting, loudly, until a newer
    /// state of this history appears.
    pub(super) fn regressed(&self, shared: Option<u64>) {
        self.lease.revoke();
        let held = self.held().0;
        let fault = Fault::Regression { held, shared };
        if lock(&self.fault).replace(fault.clone()) == Some(fault) {
            return;
        }
        log::error!(
            "cluster: etcd holds {} under {} while this daemon holds epoch {held} (history {}): \
             the shared state went back in time (a deleted key, a restored snapshot). This \
             daemon stops admitting I/O. Run `sharedisk ctl cluster republish` on the member \
             holding the newest state (`sharedisk ctl cluster status` shows each one's epoch)",
            shared.map_or("no state".into(), |e| format!("epoch {e}")),
            self.keys.state,
            self.history()
        );
    }

    /// A newer state of this history was adopted: a regression is over.
    pub(super) fn clear_regression(&self) {
        let mut f = lock(&self.fault);
        if matches!(*f, Some(Fault::Regression { .. })) {
            *f = None;
            log::warn!("cluster: a newer shared state appeared; admitting I/O again");
        }
    }

    pub(super) fn wake_renewer(&self) {
        let (m, c) = &self.wake;
        *lock(m) = true;
        c.notify_all();
    }

    /// Leaves the cluster cleanly: stops admitting, waits for admitted I/O (when the logical unit
    /// is still there: a unit being dropped has none), and removes this member, so that other
    /// daemons' PR OUTs no longer wait for it.
    pub(super) fn leave(&self, lun: Option<&Lun>) {
        self.lease.revoke();
        if let Some(lun) = lun {
            lun.reservations.with_mut(|_| ());
        }
        let k = &self.keys;
        let txn = Txn::new()
            .when([Compare::value(
                k.member.as_str(),
                CompareOp::Equal,
                self.member.clone(),
            )])
            .and_then([
                TxnOp::delete(k.member.as_str(), None),
                TxnOp::delete(k.ack.as_str(), None),
                TxnOp::delete(k.commit.as_str(), None),
            ]);
        match self.txn(self.cfg.lease(), "leave", &txn) {
            Ok(_) => log::info!("cluster: node {:?} left", self.cfg.node),
            Err(e) => log::warn!(
                "cluster: {e}; this member stays registered, and other daemons' PR OUTs wait \
                 for its lease until it joins again"
            ),
        }
    }
}
