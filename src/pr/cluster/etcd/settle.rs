//! Settling a committed change: every other member acknowledged it, or its lease surely ran out
//! (strict mode: and the fence hook fenced it).

use super::*;

impl EtcdState {
    /// Settles `epoch` (see [`EtcdState::wait_settled`]) unless it is known settled already;
    /// once it is, raises the `settled` marker to it, here and in etcd, so that every daemon's
    /// PR IN may show it. Any daemon holding `epoch` (or a newer one) may settle it.
    pub(in crate::pr::cluster) fn settle(
        &self,
        epoch: u64,
        budget_end: Instant,
    ) -> Result<(), SettleError> {
        if self.settled() >= epoch {
            return Ok(());
        }
        if self.fault().is_some() {
            // A regressed or replaced daemon settles nothing (its epochs may not be the line's).
            return Err(SettleError::BudgetSpent);
        }
        self.wait_settled(epoch, budget_end)?;
        self.raise_settled(epoch, budget_end);
        Ok(())
    }

    /// Raises the `settled` marker to `epoch`: here at once, in etcd if it answers in time (if
    /// not, other daemons settle `epoch` themselves before they show it).
    fn raise_settled(&self, epoch: u64, budget_end: Instant) {
        self.settled.fetch_max(epoch, Ordering::AcqRel);
        let k = &self.keys;
        let value = settled_value(epoch, &self.history());
        // Only while etcd holds the very state held here: a daemon whose state etcd no longer
        // holds (a regression it has not seen yet) must not raise the line's marker.
        let current = || Compare::mod_revision(k.state.as_str(), CompareOp::Equal, self.held().1);
        let raise = Txn::new()
            .when([
                Compare::value(k.settled.as_str(), CompareOp::Less, value.clone()),
                current(),
            ])
            .and_then([TxnOp::put(k.settled.as_str(), value.clone(), None)]);
        // A value compare fails on a missing key: the marker is created when absent. (A marker
        // of an older history that sorts above this one is left; it settles nothing here.)
        let txn = Txn::new()
            .when([
                Compare::create_revision(k.settled.as_str(), CompareOp::Equal, 0),
                current(),
            ])
            .and_then([TxnOp::put(k.settled.as_str(), value, None)])
            .or_else([TxnOp::txn(raise)]);
        let within = self
            .cfg
            .lease()
            .min(budget_end.saturating_duration_since(Instant::now()))
            .max(Duration::from_millis(100));
        if let Err(e) = self.txn(within, "raise the settled marker", &txn) {
            log::debug!("cluster: {e}; epoch {epoch} is settled here, the marker follows later");
        }
    }

    /// Returns once no other daemon can admit I/O under the state before `epoch`: each has
    /// acknowledged it or its lease has surely run out (strict mode: or it was fenced). An error
    /// means the change is committed but the wait failed; the command gets BUSY.
    /// `budget_end` is the command's budget: past it, the answer is BUSY.
    fn wait_settled(&self, epoch: u64, budget_end: Instant) -> Result<(), SettleError> {
        // Measured from when this daemon first held `epoch` (or the newer epoch it holds), on
        // this host's clock: never before the commit, and the same for every attempt.
        let since = if self.held().0 >= epoch {
            self.held_since()
        } else {
            boottime_ns()
        };
        let bound = since.saturating_add(crate::pr::cluster::config::nanos(self.cfg.wait_bound()));
        // Acknowledgements count only when written after the commit held here (or a newer one).
        let committed_at = self.held().1;
        loop {
            // A replacement incarnation counts its own node as behind until the incarnation it
            // replaced surely stopped admitting (`after_replacing`): no peer vouches for that one.
            if boottime_ns() < self.vouch_from.load(Ordering::Acquire) {
                if Instant::now() >= budget_end {
                    return Err(SettleError::BudgetSpent);
                }
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let within = self
                .cfg
                .lease()
                .min(budget_end.saturating_duration_since(Instant::now()));
            match self.peers(within) {
                Ok(peers) => {
                    // Only the registered incarnation's acknowledgement of our history vouches.
                    let history = self.history();
                    let behind: Vec<&String> = peers
                        .iter()
                        .filter(|m| !m.acknowledged(&history, epoch, committed_at))
                        .map(|m| &m.node)
                        .collect();
                    if behind.is_empty() {
                        self.compact_unit_attentions(epoch);
                        return Ok(());
                    }
                    if boottime_ns() >= bound {
                        return self.settle_by_lease(&behind, budget_end);
                    }
                }
                Err(e) => {
                    log::debug!("cluster: {e}");
                    if boottime_ns() >= bound {
                        // Which members are behind is unknown: in strict mode that is every
                        // member, which cannot be named; refuse.
                        if self.cfg.fence_hook.is_some() {
                            return Err(SettleError::MembersUnreadable(e));
                        }
                        return Ok(());
                    }
                }
            }
            if Instant::now() >= budget_end {
                return Err(SettleError::BudgetSpent);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The wait is over for members that did not acknowledge: their leases have run out. In
    /// strict mode each of them must also be fenced.
    pub(super) fn settle_by_lease(
        &self,
        behind: &[&String],
        budget_end: Instant,
    ) -> Result<(), SettleError> {
        log::warn!(
            "cluster: {} did not acknowledge; their read leases have run out",
            behind
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        for node in behind {
            let left = budget_end.saturating_duration_since(Instant::now());
            if !self.fence(node, left) {
                return Err(SettleError::NotFenced(node.to_string()));
            }
        }
        Ok(())
    }

    /// Runs the strict mode's fence hook for `node`; whether it succeeded within `within`.
    pub(super) fn fence(&self, node: &str, within: Duration) -> bool {
        let Some(hook) = &self.cfg.fence_hook else {
            return true;
        };
        // Names come from etcd keys, which are not trusted: only the node-name rule's reach
        // the hook (as `$1` and in the environment).
        if !crate::pr::cluster::config::name_ok(node) {
            log::error!(
                "cluster: a member named {node:?} in etcd breaks the node-name rule; it is not \
                 passed to the fence hook and the change is not settled (BUSY). No daemon writes \
                 such a key: check who can write etcd, then delete members/ and acks/ of that \
                 name with etcdctl"
            );
            return false;
        }
        log::warn!("cluster: fencing {node:?} with the fence hook before answering");
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(hook)
            .arg("sharedisk-fence")
            .arg(node)
            .env("SHAREDISK_FENCE_NODE", node)
            .env("SHAREDISK_DISK_ID", &self.cfg.disk_id)
            .stdin(std::process::Stdio::null())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) => {
                log::error!("cluster: fence hook: {e}");
                return false;
            }
        };
        let end = crate::pr::cluster::config::after(within);
        loop {
            match child.try_wait() {
                Ok(Some(st)) if st.success() => {
                    log::warn!("cluster: {node:?} fenced by the hook");
                    return true;
                }
                Ok(Some(st)) => {
                    log::error!("cluster: fence hook for {node:?} failed: {st}");
                    return false;
                }
                Ok(None) if Instant::now() >= end => {
                    let _ = child.kill();
                    let _ = child.wait();
                    log::error!("cluster: fence hook for {node:?} did not finish in time");
                    return false;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => {
                    log::error!("cluster: fence hook: {e}");
                    return false;
                }
            }
        }
    }
}
