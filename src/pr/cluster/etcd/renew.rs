//! The read lease's upkeep: the agent's renewer thread and the watch on the state key, the
//! acknowledgements, and leaving the cluster.

use super::*;

/// The running agent: the renewer thread and the watch. Stops (and leaves the cluster) on
/// [`Agent::stop`] or drop.
///
/// It holds the logical unit weakly: the unit owns its reservations, which own the backend and
/// so this agent; a strong reference would keep a dropped unit, its renewer and its membership
/// alive for ever.
pub struct Agent {
    shared: Arc<EtcdState>,
    lun: Weak<Lun>,
    renewer: Option<JoinHandle<()>>,
}

impl Agent {
    /// Starts renewing the lease of `shared` for `lun`, whose reservations share it.
    pub fn start(shared: Arc<EtcdState>, lun: Arc<Lun>) -> Agent {
        let watch_shared = shared.clone();
        let key = shared.keys.state.clone();
        shared.rt.spawn(async move {
            watch_state(watch_shared, key).await;
        });
        let (s, l) = (shared.clone(), Arc::downgrade(&lun));
        let renewer = std::thread::Builder::new()
            .name("cluster-renew".into())
            .spawn(move || renew_loop(&s, &l))
            .ok();
        Agent {
            shared,
            lun: Arc::downgrade(&lun),
            renewer,
        }
    }

    /// Stops renewing and leaves the cluster.
    pub fn stop(&mut self) {
        let Some(t) = self.renewer.take() else {
            return;
        };
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.wake_renewer();
        // The renewer itself may drop the last reference to the unit, and so this agent: it
        // has stopped already, and cannot wait for itself.
        if t.thread().id() != std::thread::current().id() {
            let _ = t.join();
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

impl EtcdState {
    pub(super) fn put_ack(&self, epoch: u64) -> bool {
        let mut initiators: Vec<String> = read(&self.served).iter().cloned().collect();
        initiators.sort();
        let ack = AckValue {
            epoch,
            initiators,
            lease_remaining_ms: u64::try_from(self.lease.remaining().as_millis())
                .unwrap_or(u64::MAX),
        };
        let value = serde_json::to_vec(&ack).unwrap_or_default();
        let key = self.keys.ack.clone();
        // Only while this incarnation is the member: a replaced daemon must not acknowledge.
        let txn = Txn::new()
            .when([Compare::value(
                self.keys.member.as_str(),
                CompareOp::Equal,
                self.member.clone(),
            )])
            .and_then([TxnOp::put(key, value, None)]);
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
        let (epoch, version) = self.held();
        let k = &self.keys;
        let sent = boottime_ns();
        let ack = serde_json::to_vec(&AckValue {
            epoch,
            initiators: {
                let mut v: Vec<String> = read(&self.served).iter().cloned().collect();
                v.sort();
                v
            },
            lease_remaining_ms: self.cfg.lease_ms,
        })
        .unwrap_or_default();
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
            self.lease.renewed(sent, self.cfg.lease());
            return true;
        }
        let got = gets(&resp);
        let member_ok = self.still_member(&got);
        if !member_ok {
            // Another process took this node's name, or this member was removed: stop
            // admitting at once, and register again.
            self.lease.revoke();
            log::error!(
                "cluster: this daemon's membership ({}) was replaced or removed; I/O stops \
                 until it has joined again",
                k.member
            );
            let again =
                Txn::new().and_then([TxnOp::put(k.member.as_str(), self.member.clone(), None)]);
            let _ = self.txn(self.cfg.renew_every(), "join again", &again);
            return false;
        }
        let remote = match remote_from(
            k,
            got.first().and_then(|s| s.first()),
            got.get(1).map_or(&[][..], |v| &v[..]),
        ) {
            Ok(Some(r)) => r,
            Ok(None) => {
                log::error!("cluster: the shared state {} is gone; I/O stops", k.state);
                return false;
            }
            Err(e) => {
                log::error!("cluster: the shared state {} is unreadable: {e}", k.state);
                return false;
            }
        };
        let adopted_epoch = remote.epoch;
        self.adopt(&lun.reservations, remote);
        // Acknowledge, then extend: the renewal read was linearizable and everything it
        // returned is applied now.
        self.put_ack(adopted_epoch);
        self.lease.renewed(sent, self.cfg.lease());
        true
    }

    /// Whether the member key read back in a refused renewal or commit (the third read of its
    /// else branch) is still this incarnation's.
    pub(super) fn still_member(&self, got: &[Vec<KeyValue>]) -> bool {
        got.get(2)
            .and_then(|m| m.first())
            .is_some_and(|m| m.value() == self.member.as_slice())
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
