//! The members of the disk's cluster as etcd shows them, and `sharedisk ctl cluster status`.

use super::*;

impl EtcdState {
    /// Every member (its incarnation and what it acknowledged) and the shared epoch, in one
    /// read.
    pub(super) fn members(
        &self,
        within: Duration,
    ) -> Result<(Vec<Member>, Option<u64>), ClusterError> {
        let k = &self.keys;
        let txn = Txn::new().and_then([
            TxnOp::get(k.members.as_str(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(k.acks.as_str(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(k.state.as_str(), None),
        ]);
        let got = gets(&self.txn(within, "read the members", &txn)?);
        let mut acks = BTreeMap::new();
        for kv in got.get(1).into_iter().flatten() {
            let node = String::from_utf8_lossy(&kv.key()[k.acks.len()..]).to_string();
            let ack = serde_json::from_slice::<AckValue>(kv.value()).ok();
            acks.insert(node, ack.map(|a| (a, kv.mod_revision())));
        }
        let members = got
            .first()
            .into_iter()
            .flatten()
            .map(|kv| {
                let node = String::from_utf8_lossy(&kv.key()[k.members.len()..]).to_string();
                let (ack, ack_revision) = acks.remove(&node).flatten().unzip();
                Member {
                    incarnation: serde_json::from_slice(kv.value()).ok(),
                    ack,
                    ack_revision: ack_revision.unwrap_or(0),
                    node,
                }
            })
            .collect();
        let epoch = got
            .get(2)
            .and_then(|s| s.first())
            .and_then(|s| serde_json::from_slice::<StateValue>(s.value()).ok())
            .map(|v| v.epoch);
        Ok((members, epoch))
    }

    /// Members other than this one, read within `within`.
    pub(super) fn peers(&self, within: Duration) -> Result<Vec<Member>, ClusterError> {
        Ok(self
            .members(within)?
            .0
            .into_iter()
            .filter(|m| m.node != self.cfg.node)
            .collect())
    }

    /// What `sharedisk ctl cluster status` shows.
    pub fn status(&self) -> serde_json::Value {
        let (epoch, _) = self.held();
        let settled = self.settled();
        let unsettled_since_ms =
            (epoch > settled).then(|| boottime_ns().saturating_sub(self.held_since()) / 1_000_000);
        let mut members = Vec::new();
        let mut shared_epoch = None;
        let mut error = None;
        let guests;
        match self.members(self.cfg.lease()) {
            Ok((all, epoch)) => {
                shared_epoch = epoch;
                for m in all {
                    let (i, a) = (m.incarnation.as_ref(), m.ack.as_ref());
                    members.push(serde_json::json!({
                        "this_daemon": m.node == self.cfg.node,
                        "node": m.node,
                        "host": i.map(|i| i.host.clone()),
                        "pid": i.map(|i| i.pid),
                        "acked_epoch": a.map(|a| a.epoch),
                        "initiators": a.map(|a| a.initiators.clone()).unwrap_or_default(),
                        "lease_ms_at_ack": a.map(|a| a.lease_remaining_ms),
                        "ack_vouches": m.ack.is_some()
                            && m.acknowledged(&self.history(), a.map_or(0, |a| a.epoch), 0),
                    }));
                }
                match self.owners_status() {
                    Ok(g) => guests = g,
                    Err(e) => {
                        guests = self.local_owners_status();
                        error = Some(e.to_string());
                    }
                }
            }
            Err(e) => {
                guests = self.local_owners_status();
                error = Some(e.to_string());
            }
        }
        serde_json::json!({
            "node": self.cfg.node,
            "disk_id": self.cfg.disk_id,
            "etcd": self.cfg.etcd,
            "etcd_answering": self.endpoints.answering(),
            "serving": self.lease.admits(),
            "epoch": epoch,
            "shared_epoch": shared_epoch,
            "settled_epoch": settled,
            "unsettled_since_ms": unsettled_since_ms,
            "settle_failure": *lock(&self.settle_failure),
            "lease_ms": self.cfg.lease_ms,
            "lease_remaining_ms": u64::try_from(self.lease.remaining().as_millis()).unwrap_or(u64::MAX),
            "strict": self.cfg.fence_hook.is_some(),
            "history": self.history(),
            "fault": self.fault_json(),
            "members": members,
            "guests": guests,
            "error": error,
        })
    }

    /// Why this daemon stopped admitting beyond a lost lease, for the status: the membership or
    /// the state's history (`fault()`) first, else an I/O that outlived its bound.
    fn fault_json(&self) -> serde_json::Value {
        if let Some(f) = self.fault() {
            return match f {
                Fault::Regression { held, shared } => serde_json::json!({
                    "kind": f.kind(), "held_epoch": held, "shared_epoch": shared,
                }),
                Fault::Replaced => serde_json::json!({ "kind": f.kind() }),
            };
        }
        match self.lease.overrun() {
            Some(late) => serde_json::json!({
                "kind": "io_overrun",
                "overrun_ms": u64::try_from(late.as_millis()).unwrap_or(u64::MAX),
            }),
            None => serde_json::Value::Null,
        }
    }
}
