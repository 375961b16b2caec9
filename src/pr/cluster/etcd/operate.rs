//! The operator's steps on the shared state: `sharedisk ctl cluster republish` (after the state
//! went back in time) and `sharedisk ctl cluster evict NODE` (a member whose host is gone).

use super::*;
use crate::pr::fencing::Reservations;

/// Why an operator's step on the cluster was refused or failed; the control socket answers it.
#[derive(Debug, thiserror::Error)]
pub enum OperateError {
    /// etcd did not answer, or answered with an error.
    #[error(transparent)]
    Etcd(#[from] ClusterError),
    /// The state or the member keys changed while the step ran; nothing was changed.
    #[error(
        "{0} changed meanwhile; nothing was changed: look at `ctl cluster status` and try again"
    )]
    Raced(&'static str),
    /// `evict` of this daemon's own node.
    #[error("{0:?} is this daemon's own node: stop this daemon instead (it leaves the cluster)")]
    OwnNode(String),
    /// `evict` of a node that is not a member.
    #[error("{0:?} is not a member of this disk's cluster")]
    NotMember(String),
    /// Soft mode `evict` of a node that acknowledged during the wait: it is alive.
    #[error(
        "{0:?} is alive (it renewed its lease during the wait): stop its daemon, or fence its \
         host and use strict mode"
    )]
    Alive(String),
    /// Strict mode `evict`: the fence hook did not fence the node; nothing was removed.
    #[error("the fence hook did not fence {0:?}; it stays a member")]
    NotFenced(String),
    /// `republish` on a member that does not hold the newest state.
    #[error(
        "{node:?} acknowledged epoch {epoch}, newer than the {held} held here: run republish \
         there"
    )]
    NotNewest { node: String, epoch: u64, held: u64 },
    /// A name that breaks the node-name rule (it cannot reach the fence hook).
    #[error("{0:?} breaks the node-name rule; remove its keys with etcdctl if someone wrote them")]
    BadName(String),
}

impl EtcdState {
    /// `ctl cluster republish`: writes the state held here as epoch max(held, etcd's) + 1 of
    /// this history, by compare-and-swap on what etcd holds (or creating the key if it is gone).
    /// Every daemon of this history that stopped at an older epoch adopts it and serves again.
    pub fn republish(&self, fencing: &Reservations) -> Result<serde_json::Value, OperateError> {
        let arb = fencing.write_lock();
        let k = &self.keys;
        let read = Txn::new().and_then([
            TxnOp::get(k.state.as_str(), None),
            TxnOp::get(k.acks.as_str(), Some(GetOptions::new().with_prefix())),
        ]);
        let got = gets(&self.txn(self.cfg.lease(), "read the state", &read)?);
        let current = got.first().and_then(|s| s.first());
        let shared = current
            .and_then(|kv| serde_json::from_slice::<StateValue>(kv.value()).ok())
            .map(|v| v.epoch);
        let (held, _) = self.held();
        // A member that acknowledged a newer epoch of this history holds a newer state.
        let history = self.history();
        let newer = got.get(1).into_iter().flatten().find_map(|kv| {
            let ack: AckValue = serde_json::from_slice(kv.value()).ok()?;
            (ack.history == history && ack.epoch > held).then(|| {
                let node = String::from_utf8_lossy(&kv.key()[k.acks.len()..]).to_string();
                (node, ack.epoch)
            })
        });
        if let Some((node, epoch)) = newer {
            return Err(OperateError::NotNewest { node, epoch, held });
        }
        let epoch = held.max(shared.unwrap_or(0)).saturating_add(1);
        let value = serde_json::to_vec(&StateValue {
            epoch,
            state: arb.state().clone(),
            history: self.history(),
        })
        .unwrap_or_default();
        let unchanged = match current {
            Some(kv) => {
                Compare::mod_revision(k.state.as_str(), CompareOp::Equal, kv.mod_revision())
            }
            None => Compare::create_revision(k.state.as_str(), CompareOp::Equal, 0),
        };
        let txn = Txn::new()
            .when([
                unchanged,
                Compare::value(k.member.as_str(), CompareOp::Equal, self.member.clone()),
            ])
            .and_then([TxnOp::put(k.state.as_str(), value, None)]);
        let resp = self.txn(self.cfg.lease(), "republish the state", &txn)?;
        let version = match (resp.succeeded(), resp.header()) {
            (true, Some(h)) => h.revision(),
            _ => return Err(OperateError::Raced("the state or this daemon's membership")),
        };
        self.set_held(epoch, version);
        drop(arb);
        self.clear_regression();
        self.wake_renewer();
        log::warn!(
            "cluster: republished the state held here as epoch {epoch} (etcd held {}); \
             members of this history adopt it",
            shared.map_or("no state".into(), |e| format!("epoch {e}"))
        );
        Ok(serde_json::json!({ "epoch": epoch, "previous_shared_epoch": shared }))
    }

    /// `ctl cluster evict NODE`: removes a member whose host is gone, so that PR OUTs stop
    /// waiting for it. Strict mode: the fence hook fences it first. Soft mode: only once its
    /// keys did not change for the wait bound, watched on this host's clock (its lease is then
    /// surely over). The keys are deleted only if they still hold what was read.
    pub fn evict(&self, node: &str) -> Result<serde_json::Value, OperateError> {
        if node == self.cfg.node {
            return Err(OperateError::OwnNode(node.into()));
        }
        if !crate::pr::cluster::config::name_ok(node) {
            return Err(OperateError::BadName(node.into()));
        }
        let seen = self.member_keys(node)?;
        if seen.0 == 0 {
            return Err(OperateError::NotMember(node.into()));
        }
        if self.cfg.fence_hook.is_some() {
            if !self.fence(node, self.cfg.budget()) {
                return Err(OperateError::NotFenced(node.into()));
            }
        } else {
            let end = crate::pr::cluster::config::after(self.cfg.wait_bound());
            while Instant::now() < end {
                std::thread::sleep(self.cfg.renew_every().min(end - Instant::now()));
                if self.member_keys(node)? != seen {
                    return Err(OperateError::Alive(node.into()));
                }
            }
        }
        let k = &self.keys;
        let (member, ack) = (format!("{}{node}", k.members), format!("{}{node}", k.acks));
        let txn = Txn::new()
            .when([
                Compare::mod_revision(member.as_str(), CompareOp::Equal, seen.0),
                Compare::mod_revision(ack.as_str(), CompareOp::Equal, seen.1),
            ])
            .and_then([TxnOp::delete(member, None), TxnOp::delete(ack, None)]);
        if !self.txn(self.cfg.lease(), "evict", &txn)?.succeeded() {
            return Err(OperateError::Raced("the member's keys"));
        }
        log::warn!("cluster: node {node:?} evicted: PR OUTs no longer wait for it");
        Ok(serde_json::json!({ "evicted": node }))
    }

    /// Every member acknowledged `epoch`: the unit attentions up to it were read by all of them
    /// (a daemon joining later starts from the state, not from them). One range delete in the
    /// background, best effort: a failure leaves them to the next settle.
    pub(super) fn compact_unit_attentions(&self, epoch: u64) {
        let k = &self.keys;
        let (from, to) = (k.ua.clone(), k.ua_at(epoch.saturating_add(1)));
        let (_, mut client) = self.endpoints.preferred();
        let within = self.cfg.lease();
        self.rt.spawn(async move {
            let del = client.delete(from, Some(etcd_client::DeleteOptions::new().with_range(to)));
            if let Ok(Err(e)) = tokio::time::timeout(within, del).await {
                log::debug!("cluster: compacting the unit attentions: {e}");
            }
        });
    }

    /// The `mod_revision`s of `members/<node>` and `acks/<node>` (0: absent).
    fn member_keys(&self, node: &str) -> Result<(i64, i64), ClusterError> {
        let k = &self.keys;
        let txn = Txn::new().and_then([
            TxnOp::get(format!("{}{node}", k.members), None),
            TxnOp::get(format!("{}{node}", k.acks), None),
        ]);
        let got = gets(&self.txn(self.cfg.lease(), "read the member", &txn)?);
        let rev = |i: usize| {
            got.get(i)
                .and_then(|r| r.first())
                .map_or(0, KeyValue::mod_revision)
        };
        Ok((rev(0), rev(1)))
    }
}
