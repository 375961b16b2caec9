//! Committing a change to the shared state by compare-and-swap, and telling what a refused or
//! unanswered commit means.

use super::*;

impl EtcdState {
    /// Commits `next` (computed from the state at `epoch`) with the unit attentions it queued
    /// for other daemons' initiators and this node's `replay` records, or, for `None`, confirms
    /// that `epoch` is still the newest (and reads the settled marker with it). Every attempt ends by `deadline`; a change whose fate is unknown is sent again until it
    /// is known, for at most the hold time. Called with the arbiter's write lock held.
    pub(in crate::pr::cluster) fn commit(
        &self,
        epoch: u64,
        version: i64,
        next: Option<&PrState>,
        unit_attentions: &[(String, Sense)],
        replay: Option<&[u8]>,
        deadline: Instant,
    ) -> Commit {
        // What this commit writes as its marker: which attempt landed is read back from it.
        let marker = serde_json::to_vec(&CommitMarker {
            epoch: epoch + 1,
            nonce: boottime_ns(),
            pid: std::process::id(),
        })
        .unwrap_or_default();
        let txn = self.commit_txn(epoch, version, next, unit_attentions, replay, &marker);
        let resp = match self.send_commit(epoch, next.is_some(), &txn, deadline) {
            Ok(r) => r,
            Err(e) => return Commit::Unavailable(e.to_string()),
        };
        if resp.succeeded() {
            return match (next, resp.header()) {
                (None, _) => {
                    if let Some(settled) = gets(&resp).first().and_then(|s| s.first()) {
                        self.saw_settled(settled.value());
                    }
                    Commit::Confirmed
                }
                (Some(_), Some(h)) => Commit::Done {
                    epoch: epoch + 1,
                    version: h.revision(),
                },
                (Some(_), None) => Commit::Unavailable("etcd answered without a header".into()),
            };
        }
        self.commit_refused(epoch, next.is_some(), &resp, &marker)
    }

    /// The commit's transaction: conditioned on the state's `version` and this incarnation
    /// being the member; it writes `next` with its marker, unit attentions and replay records
    /// (a confirmation reads the settled marker instead), and otherwise reads what the refusal
    /// needs (`commit_refused`).
    pub(super) fn commit_txn(
        &self,
        epoch: u64,
        version: i64,
        next: Option<&PrState>,
        unit_attentions: &[(String, Sense)],
        replay: Option<&[u8]>,
        marker: &[u8],
    ) -> Txn {
        let k = &self.keys;
        let conditions = [
            Compare::mod_revision(k.state.as_str(), CompareOp::Equal, version),
            Compare::value(k.member.as_str(), CompareOp::Equal, self.member.clone()),
        ];
        let stale = [
            TxnOp::get(k.state.as_str(), None),
            TxnOp::get(
                k.ua_at(epoch + 1),
                Some(GetOptions::new().with_range(Keys::prefix_end(&k.ua))),
            ),
            TxnOp::get(k.member.as_str(), None),
            TxnOp::get(k.commit.as_str(), None),
        ];
        let Some(state) = next else {
            return Txn::new()
                .when(conditions)
                .and_then([TxnOp::get(k.settled.as_str(), None)])
                .or_else(stale);
        };
        let value = serde_json::to_vec(&StateValue {
            epoch: epoch + 1,
            state: state.clone(),
            history: self.history(),
        })
        .unwrap_or_default();
        let uas: Vec<UaValue> = unit_attentions
            .iter()
            .map(|(i, s)| (i.clone(), s.key, s.asc, s.ascq))
            .collect();
        let mut ops = vec![
            TxnOp::put(k.state.as_str(), value, None),
            TxnOp::put(k.commit.as_str(), marker.to_vec(), None),
        ];
        if let Some(replay) = replay {
            ops.push(TxnOp::put(k.replay.as_str(), replay.to_vec(), None));
        }
        if !uas.is_empty() {
            ops.push(TxnOp::put(
                k.ua_at(epoch + 1),
                serde_json::to_vec(&uas).unwrap_or_default(),
                None,
            ));
        }
        Txn::new().when(conditions).and_then(ops).or_else(stale)
    }

    /// Sends the commit's transaction until it is answered. Tried on each etcd member in turn
    /// (see `endpoints.rs`). A change without an answer may have landed: it is sent again (the
    /// same transaction, the same marker) until an answer tells, so that BUSY means "not done"
    /// whenever that can be known. The arbiter's lock is held meanwhile, and I/O waits on it:
    /// the attempts end within the command's budget and `hold_ms`, leaving a renewal's time to
    /// settle. Then it is BUSY; if it did commit, every daemon (this one too) adopts it like any
    /// other change: PRgeneration counts it once.
    pub(super) fn send_commit(
        &self,
        epoch: u64,
        changes: bool,
        txn: &Txn,
        deadline: Instant,
    ) -> Result<TxnResponse, ClusterError> {
        let retries_end = deadline.min(crate::pr::cluster::config::after(self.cfg.hold()));
        let mut end = deadline;
        let mut told = false;
        loop {
            let within = self
                .cfg
                .lease()
                .min(end.saturating_duration_since(Instant::now()));
            end = retries_end;
            match self.txn(within, "commit", txn) {
                Ok(r) => return Ok(r),
                Err(e)
                    if changes
                        && crate::pr::cluster::config::after(self.cfg.renew_every())
                            < retries_end =>
                {
                    if !told {
                        log::warn!(
                            "cluster: {e}; the commit of epoch {} is sent again until etcd \
                             tells whether it landed",
                            epoch + 1
                        );
                        told = true;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// What a refused commit means: this daemon was replaced, another daemon's change came
    /// first (to adopt), or this very commit landed on an earlier attempt (its `marker`).
    pub(super) fn commit_refused(
        &self,
        epoch: u64,
        changes: bool,
        resp: &TxnResponse,
        marker: &[u8],
    ) -> Commit {
        let got = gets(resp);
        match self.member_read(&got) {
            MemberRead::Ours => {}
            MemberRead::Other => {
                return Commit::Unavailable(
                    "another incarnation of this node took its membership".into(),
                )
            }
            MemberRead::Absent => {
                self.wake_renewer();
                return Commit::Unavailable("this daemon's membership was removed".into());
            }
        }
        // The content held here is not at hand (the arbiter's lock is held by the caller): a
        // state at the held epoch with another version counts as a regression here, which the
        // next renewal, comparing the content, ends if it was only rewritten unchanged.
        let remote = match self.classify(&got, |_| false) {
            Ok(Seen::Newer(r)) => r,
            Ok(Seen::Same(r)) => {
                self.set_held(r.epoch, r.version);
                return Commit::Stale(r);
            }
            Ok(Seen::Regression(shared)) => {
                self.regressed(shared);
                return Commit::Unavailable(
                    "the shared state in etcd is older than the one held here".into(),
                );
            }
            Err(e) => return Commit::Unavailable(format!("the shared state is unreadable: {e}")),
        };
        // An earlier attempt of this very commit landed (its answer was lost, or came too late)
        // when the marker is this commit's: it is committed at the marker's revision.
        let landed = got
            .get(3)
            .and_then(|m| m.first())
            .filter(|m| changes && m.value() == marker)
            .map(|m| m.mod_revision());
        match landed {
            Some(version) if version == remote.version => Commit::Done {
                epoch: epoch + 1,
                version,
            },
            Some(version) => {
                log::info!(
                    "cluster: commit of epoch {} landed on a retry's first attempt, and epoch {} \
                     followed",
                    epoch + 1,
                    remote.epoch
                );
                Commit::Superseded {
                    epoch: epoch + 1,
                    version,
                    newer: remote,
                }
            }
            None => Commit::Stale(remote),
        }
    }
}
