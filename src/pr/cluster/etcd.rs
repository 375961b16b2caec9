//! The shared state in etcd, and the agent that keeps this daemon's read lease.
//!
//! Keys, under `<prefix>/<disk_id>/`:
//! - `state`: `{"epoch": E, "state": PrState}`, changed only by a transaction conditioned on its
//!   `mod_revision`. E counts committed changes (one per PR OUT that changed anything);
//!   PRgeneration inside follows SPC-4's own counting (§6.16.2).
//! - `ua/<E, 20 digits>`: the unit attentions change E established for initiators of other
//!   daemons, written in the same transaction, read by every daemon when it adopts E.
//! - `members/<node>`: this daemon's incarnation (node, host, pid, start time). Written at
//!   start, compared in every transaction, deleted on a clean stop. Never attached to an etcd
//!   lease: a TTL is no proof that a daemon stopped (it restarts on every leader change).
//! - `acks/<node>`: the epoch this daemon has applied (I/O admitted under older ones is
//!   finished), its initiators and what was left of its read lease, rewritten on every renewal.
//! - `commits/<node>`: the marker of this daemon's last commit (epoch, nonce), written in the
//!   commit's transaction. A commit whose attempt got no answer is sent again (to the next etcd
//!   member, `endpoints.rs`); when that one fails its compare, the marker tells whether the
//!   first attempt landed (the command is then committed, once) or another daemon's did.
//!
//! **The read lease** ([`ReadLease`]). Every `renew_ms` the agent sends one transaction that
//! succeeds only if the state's revision is the one applied here and this incarnation is still
//! the member; on success the lease holds until the send time plus `lease_ms`. Otherwise the
//! newer state comes back in the same answer: it is adopted (which waits for admitted I/O),
//! acknowledged, and then the lease is extended. A watch on `state` triggers a renewal at once, so
//! a change reaches every daemon in a round trip; renewal bounds the staleness when the watch
//! stalls (etcd's watch delivery is unbounded on an unhealthy cluster).
//!
//! **A PR OUT** is computed on the state held here and committed by compare-and-swap
//! (`EtcdState::commit_change`, `backend.rs`); [`EtcdState::settle`] then waits until every other member
//! has acknowledged the new epoch, or `lease_ms × (1 + drift) / (1 − drift) + max_io_ms` has passed on this
//! host's clock since the commit's answer: by then a member that did not see the change has no
//! lease (its last renewal was sent before the commit) and its last admitted I/O has ended. In
//! strict mode such a member must also be fenced by `fence_hook` first.
//!
//! **What no scheme on a plain file closes** (the "pause gap"): a daemon frozen (SIGSTOP, a VM
//! pause, swap) between admitting a write and issuing it can issue it after its lease ended, and
//! so after another daemon's PREEMPT returned GOOD. `max_io_ms` assumes no such pause. Strict
//! mode closes it by fencing the member outside sharedisk (killing its daemon, or cutting its
//! storage path) before GOOD.
//!
//! An answer that does not come within its time from any member (a partition, etcd without
//! quorum) proves nothing: the command gets BUSY, the lease runs out, and a transaction whose
//! fate is unknown is adopted later like any other daemon's change if it did commit.

use crate::util::lock::{lock, read, write};
use std::collections::{BTreeMap, HashSet};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse,
};
use serde::{Deserialize, Serialize};

use super::backend::{Commit, Remote};
use super::endpoints::Endpoints;
use super::lease::{boottime_ns, ReadLease};
use super::ClusterConfig;
use crate::lun::Lun;
use crate::pr::state_file::StateStore;
use crate::pr::PrState;
use crate::scsi::sense::Sense;

/// What can stop the cluster from starting.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// etcd answered `what` with an error.
    #[error("etcd ({endpoints}): {what}: {source}")]
    Etcd {
        endpoints: String,
        what: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No etcd member answered `what` in time.
    #[error("etcd ({endpoints}): {what}: no answer within {ms} ms")]
    Timeout {
        endpoints: String,
        what: &'static str,
        ms: u64,
    },
    /// The shared state's key holds something that is not a valid state.
    #[error("the shared state in etcd under {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// The agent's runtime could not be started.
    #[error("cannot start the cluster agent: {0}")]
    Runtime(std::io::Error),
    /// etcd holds no state for the disk and this node's local copy could not be read, so there
    /// is nothing to start from.
    #[error(
        "etcd holds no state under {key} and the local copy of the state is unreadable: nothing \
         to start from (`--reset-reservations` starts with no registrations)"
    )]
    NoState { key: String },
}

/// Why a committed change could not be settled; the command gets BUSY.
#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// Strict mode: which members are behind is unknown, so they cannot be fenced.
    #[error("the members cannot be read to fence them: {0}")]
    MembersUnreadable(ClusterError),
    /// The command's budget ended while a member was still behind.
    #[error("the command's budget ran out before every member was settled")]
    BudgetSpent,
    /// Strict mode: the fence hook failed for this member.
    #[error("the fence hook did not fence {0:?}")]
    NotFenced(String),
}

/// The `state` key's value.
#[derive(Serialize, Deserialize)]
struct StateValue {
    epoch: u64,
    state: PrState,
}

/// One unit attention for another daemon's initiator: `[initiator, key, asc, ascq]`.
type UaValue = (String, u8, u8, u8);

/// The `members/<node>` key's value: which process is this node now.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct MemberValue {
    node: String,
    host: String,
    pid: u32,
    /// CLOCK_BOOTTIME at start, with `boot_id`: a new incarnation is a new value.
    started_ns: u64,
    boot_id: String,
}

/// The `commits/<node>` key's value: written by each commit of this node with the state, so that
/// a commit sent again after an unanswered attempt can tell whether that attempt landed.
#[derive(Serialize)]
struct CommitMarker {
    epoch: u64,
    nonce: u64,
    pid: u32,
}

/// One member as `members/` and `acks/` show it.
struct Member {
    node: String,
    incarnation: Option<MemberValue>,
    ack: Option<AckValue>,
}

/// The `acks/<node>` key's value.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct AckValue {
    epoch: u64,
    initiators: Vec<String>,
    /// What was left of the read lease when this was written, in milliseconds.
    lease_remaining_ms: u64,
}

/// The shared state as this daemon reaches it; the fencing's side of it is
/// [`super::backend::EtcdBackend`].
pub struct EtcdState {
    cfg: ClusterConfig,
    /// Which shared state the arbiter holds, `(epoch, version)`; changed only with the
    /// arbiter's write lock held.
    held: Mutex<(u64, i64)>,
    /// The local copy of the shared state (and the replay records), if any.
    store: Option<StateStore>,
    /// Shut down in the background on drop: the last owner may be the watch, a task of it.
    rt: ManuallyDrop<tokio::runtime::Runtime>,
    endpoints: Endpoints,
    lease: ReadLease,
    served: RwLock<HashSet<String>>,
    member: Vec<u8>,
    keys: Keys,
    /// Wakes the renewer early (the watch saw a change, or the agent stops).
    wake: (Mutex<bool>, Condvar),
    stopping: AtomicBool,
    /// The BUSY answers' warnings, at most one a second (a guest re-sends every few ms).
    pub(super) busy_log: super::ratelimit::RateLimited,
}

struct Keys {
    prefix: String,
    state: String,
    member: String,
    ack: String,
    commit: String,
    members: String,
    acks: String,
    ua: String,
}

impl Keys {
    fn new(cfg: &ClusterConfig) -> Self {
        let p = cfg.disk_prefix();
        Keys {
            state: format!("{p}state"),
            member: format!("{p}members/{}", cfg.node),
            ack: format!("{p}acks/{}", cfg.node),
            commit: format!("{p}commits/{}", cfg.node),
            members: format!("{p}members/"),
            acks: format!("{p}acks/"),
            ua: format!("{p}ua/"),
            prefix: p,
        }
    }

    fn ua_at(&self, epoch: u64) -> String {
        format!("{}{epoch:020}", self.ua)
    }

    /// The end of the range of every key starting with `prefix`.
    fn prefix_end(prefix: &str) -> Vec<u8> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        end
    }
}

/// What the agent learned from a `state` key and the unit attentions after an epoch.
fn remote_from(
    keys: &Keys,
    state: Option<&KeyValue>,
    uas: &[KeyValue],
) -> Result<Option<Remote>, String> {
    let Some(kv) = state else {
        return Ok(None);
    };
    let v: StateValue = serde_json::from_slice(kv.value()).map_err(|e| e.to_string())?;
    v.state.validate()?;
    let mut unit_attentions = Vec::new();
    for u in uas {
        let list: Vec<UaValue> = serde_json::from_slice(u.value())
            .map_err(|e| format!("{}: {e}", String::from_utf8_lossy(u.key())))?;
        let at: u64 = std::str::from_utf8(u.key())
            .ok()
            .and_then(|k| k.strip_prefix(keys.ua.as_str()))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if at <= v.epoch {
            unit_attentions.extend(
                list.into_iter()
                    .map(|(i, key, asc, ascq)| (i, Sense::new(key, asc, ascq))),
            );
        }
    }
    Ok(Some(Remote {
        epoch: v.epoch,
        version: kv.mod_revision(),
        state: v.state,
        unit_attentions,
    }))
}

fn gets(resp: &TxnResponse) -> Vec<Vec<KeyValue>> {
    resp.op_responses()
        .into_iter()
        .filter_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().to_vec()),
            _ => None,
        })
        .collect()
}

fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The join's transaction: if the disk has no state yet, become a member and create it from
/// `first` (the local copy; none: write nothing); else become a member. Either way, read it.
fn join_txn(k: &Keys, member: &[u8], first: Option<Vec<u8>>) -> Txn {
    Txn::new()
        .when([Compare::create_revision(
            k.state.as_str(),
            CompareOp::Equal,
            0,
        )])
        .and_then(match first {
            // No local copy to import: nothing is written (not even the member key).
            None => vec![],
            Some(first) => vec![
                TxnOp::put(k.member.as_str(), member.to_vec(), None),
                TxnOp::put(k.state.as_str(), first, None),
                TxnOp::get(k.state.as_str(), None),
            ],
        })
        .or_else([
            TxnOp::put(k.member.as_str(), member.to_vec(), None),
            TxnOp::get(k.state.as_str(), None),
        ])
}

impl EtcdState {
    /// Joins the cluster: registers this incarnation, imports `local` as the shared state if
    /// etcd has none yet (the first daemon of a disk), and reads the newest state, which the
    /// caller starts from. The read lease holds from here; I/O may be served.
    pub fn join(
        cfg: &ClusterConfig,
        guests: &[String],
        local: Option<&PrState>,
        store: Option<StateStore>,
    ) -> Result<(Arc<EtcdState>, Remote), ClusterError> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("etcd")
            .enable_all()
            .build()
            .map_err(ClusterError::Runtime)?;
        let startup = Duration::from_millis(cfg.budget_ms.max(10_000));
        let endpoints = Endpoints::new(&rt, cfg)?;
        let member = MemberValue {
            node: cfg.node.clone(),
            host: hostname(),
            pid: std::process::id(),
            started_ns: boottime_ns(),
            boot_id: boot_id(),
        };
        let keys = Keys::new(cfg);
        let shared = Arc::new(EtcdState {
            cfg: cfg.clone(),
            held: Mutex::new((0, 0)),
            store,
            rt: ManuallyDrop::new(rt),
            endpoints,
            lease: ReadLease::new(),
            served: RwLock::new(guests.iter().cloned().collect()),
            member: serde_json::to_vec(&member).unwrap_or_default(),
            keys,
            wake: (Mutex::new(false), Condvar::new()),
            stopping: AtomicBool::new(false),
            busy_log: super::ratelimit::RateLimited::new(super::ratelimit::BUSY_LOG_EVERY),
        });
        let k = &shared.keys;
        let first = local.map(|local| {
            serde_json::to_vec(&StateValue {
                epoch: 1,
                state: local.clone(),
            })
            .unwrap_or_default()
        });
        // One transaction: become the member, create the state from the local file if there is
        // none (the first daemon of this disk), and read it. etcd may still be electing a leader
        // (a cluster starting with this daemon): it is tried again until the startup time is over.
        let deadline = super::config::after(startup);
        let sent = boottime_ns();
        let join = join_txn(k, &shared.member, first);
        let joined = shared.retry(deadline, "join", join)?;
        let created = joined.succeeded();
        if created {
            let Some(local) = local else {
                return Err(ClusterError::NoState {
                    key: k.state.clone(),
                });
            };
            log::info!(
                "cluster: created the shared state of disk {:?} from the local state ({} \
                 registrations)",
                cfg.disk_id,
                local.registrations.len()
            );
        }
        let state = gets(&joined).into_iter().next().unwrap_or_default();
        let remote = remote_from(k, state.first(), &[])
            .map_err(|reason| ClusterError::Corrupt {
                key: k.state.clone(),
                reason,
            })?
            .ok_or_else(|| ClusterError::Corrupt {
                key: k.state.clone(),
                reason: "missing".into(),
            })?;
        if !created && local != Some(&remote.state) {
            log::info!(
                "cluster: the shared state (epoch {}) replaces the local state file's",
                remote.epoch
            );
        }
        shared.set_held(remote.epoch, remote.version);
        shared.lease.renewed(sent, cfg.lease());
        shared.put_ack(remote.epoch);
        log::info!(
            "cluster: node {:?} joined disk {:?} at epoch {} (lease {} ms, renewed every {} ms)",
            cfg.node,
            cfg.disk_id,
            remote.epoch,
            cfg.lease_ms,
            cfg.renew_every().as_millis()
        );
        Ok((shared, remote))
    }

    /// Runs `txn` until it gets an answer or `deadline` passes (startup only).
    fn retry(
        &self,
        deadline: Instant,
        what: &'static str,
        txn: Txn,
    ) -> Result<TxnResponse, ClusterError> {
        loop {
            match self.txn(self.cfg.lease(), what, &txn) {
                Ok(v) => return Ok(v),
                Err(e) if Instant::now() + Duration::from_millis(200) < deadline => {
                    log::info!("cluster: {e}; trying again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs one transaction, answered within `within` (see [`Endpoints::txn`]).
    fn txn(
        &self,
        within: Duration,
        what: &'static str,
        txn: &Txn,
    ) -> Result<TxnResponse, ClusterError> {
        self.endpoints.txn(&self.rt, within, what, txn)
    }

    /// A new guest at run time: its unit attentions are queued here from now on.
    pub fn serve(&self, initiator: &str) {
        write(&self.served).insert(initiator.to_string());
    }

    /// A guest removed at run time.
    pub fn unserve(&self, initiator: &str) {
        write(&self.served).remove(initiator);
    }

    /// Whether `initiator` is one of this daemon's guests.
    pub fn serves(&self, initiator: &str) -> bool {
        read(&self.served).contains(initiator)
    }

    /// Which shared state is held here, `(epoch, version)`.
    pub fn held(&self) -> (u64, i64) {
        *lock(&self.held)
    }

    pub(super) fn set_held(&self, epoch: u64, version: i64) {
        *lock(&self.held) = (epoch, version);
    }

    pub(super) fn store(&self) -> Option<&StateStore> {
        self.store.as_ref()
    }

    /// Whether this daemon may admit I/O now.
    pub fn lease(&self) -> &ReadLease {
        &self.lease
    }

    /// How long new I/O waits for a lost lease before it fails.
    pub fn hold(&self) -> Duration {
        self.cfg.hold()
    }

    /// The most a PR command may take before it gets BUSY.
    pub fn budget(&self) -> Duration {
        self.cfg.budget()
    }

    fn put_ack(&self, epoch: u64) -> bool {
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
    fn renew(&self, lun: &Lun) -> bool {
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
    fn still_member(&self, got: &[Vec<KeyValue>]) -> bool {
        got.get(2)
            .and_then(|m| m.first())
            .is_some_and(|m| m.value() == self.member.as_slice())
    }

    fn wake_renewer(&self) {
        let (m, c) = &self.wake;
        *lock(m) = true;
        c.notify_all();
    }

    /// Every member (its incarnation and what it acknowledged) and the shared epoch, in one
    /// read.
    fn members(&self, within: Duration) -> Result<(Vec<Member>, Option<u64>), ClusterError> {
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
            acks.insert(node, serde_json::from_slice::<AckValue>(kv.value()).ok());
        }
        let members = got
            .first()
            .into_iter()
            .flatten()
            .map(|kv| {
                let node = String::from_utf8_lossy(&kv.key()[k.members.len()..]).to_string();
                Member {
                    incarnation: serde_json::from_slice(kv.value()).ok(),
                    ack: acks.remove(&node).flatten(),
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

    /// Members other than this one and the epoch each acknowledged, read within `within`.
    fn peers(&self, within: Duration) -> Result<BTreeMap<String, Option<AckValue>>, ClusterError> {
        Ok(self
            .members(within)?
            .0
            .into_iter()
            .filter(|m| m.node != self.cfg.node)
            .map(|m| (m.node, m.ack))
            .collect())
    }

    /// Runs the strict mode's fence hook for `node`; whether it succeeded within `within`.
    fn fence(&self, node: &str, within: Duration) -> bool {
        let Some(hook) = &self.cfg.fence_hook else {
            return true;
        };
        log::warn!("cluster: fencing {node:?} with the fence hook before answering");
        let child = std::process::Command::new("sh")
            .arg("-c")
            .arg(hook)
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
        let end = super::config::after(within);
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

    /// What `sharedisk ctl cluster status` shows.
    pub fn status(&self) -> serde_json::Value {
        let (epoch, _) = self.held();
        let mut members = Vec::new();
        let mut shared_epoch = None;
        let mut error = None;
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
                    }));
                }
            }
            Err(e) => error = Some(e.to_string()),
        }
        serde_json::json!({
            "node": self.cfg.node,
            "disk_id": self.cfg.disk_id,
            "etcd": self.cfg.etcd,
            "etcd_answering": self.endpoints.answering(),
            "serving": self.lease.valid(),
            "epoch": epoch,
            "shared_epoch": shared_epoch,
            "lease_ms": self.cfg.lease_ms,
            "lease_remaining_ms": u64::try_from(self.lease.remaining().as_millis()).unwrap_or(u64::MAX),
            "strict": self.cfg.fence_hook.is_some(),
            "members": members,
            "error": error,
        })
    }

    /// Leaves the cluster cleanly: stops admitting, waits for admitted I/O (when the logical unit
    /// is still there: a unit being dropped has none), and removes this member, so that other
    /// daemons' PR OUTs no longer wait for it.
    fn leave(&self, lun: Option<&Lun>) {
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

impl EtcdState {
    /// Commits `next` (computed from the state at `epoch`) with the unit attentions it queued
    /// for other daemons' initiators, or, for `None`, confirms that `epoch` is still the newest.
    /// Every attempt ends by `deadline`; a change whose fate is unknown is sent again until it
    /// is known, for at most the hold time. Called with the arbiter's write lock held.
    pub(super) fn commit(
        &self,
        epoch: u64,
        version: i64,
        next: Option<&PrState>,
        unit_attentions: &[(String, Sense)],
        deadline: Instant,
    ) -> Commit {
        // What this commit writes as its marker: which attempt landed is read back from it.
        let marker = serde_json::to_vec(&CommitMarker {
            epoch: epoch + 1,
            nonce: boottime_ns(),
            pid: std::process::id(),
        })
        .unwrap_or_default();
        let txn = self.commit_txn(epoch, version, next, unit_attentions, &marker);
        let resp = match self.send_commit(epoch, next.is_some(), &txn, deadline) {
            Ok(r) => r,
            Err(e) => return Commit::Unavailable(e.to_string()),
        };
        if resp.succeeded() {
            return match (next, resp.header()) {
                (None, _) => Commit::Confirmed,
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
    /// being the member; it writes `next` with its marker and unit attentions (nothing for a
    /// confirmation), and otherwise reads what the refusal needs (`commit_refused`).
    fn commit_txn(
        &self,
        epoch: u64,
        version: i64,
        next: Option<&PrState>,
        unit_attentions: &[(String, Sense)],
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
            return Txn::new().when(conditions).or_else(stale);
        };
        let value = serde_json::to_vec(&StateValue {
            epoch: epoch + 1,
            state: state.clone(),
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
    fn send_commit(
        &self,
        epoch: u64,
        changes: bool,
        txn: &Txn,
        deadline: Instant,
    ) -> Result<TxnResponse, ClusterError> {
        let retries_end = deadline.min(super::config::after(self.cfg.hold()));
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
                Err(e) if changes && super::config::after(self.cfg.renew_every()) < retries_end => {
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
    fn commit_refused(
        &self,
        epoch: u64,
        changes: bool,
        resp: &TxnResponse,
        marker: &[u8],
    ) -> Commit {
        let got = gets(resp);
        let member_ok = self.still_member(&got);
        if !member_ok {
            self.lease.revoke();
            self.wake_renewer();
            return Commit::Unavailable("this daemon's membership was replaced".into());
        }
        let remote = match remote_from(
            &self.keys,
            got.first().and_then(|s| s.first()),
            got.get(1).map_or(&[][..], |v| &v[..]),
        ) {
            Ok(Some(r)) => r,
            Ok(None) => return Commit::Unavailable("the shared state is gone".into()),
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

    /// Returns once no other daemon can admit I/O under the state before `epoch`: each has
    /// acknowledged it or its lease has surely run out (strict mode: or it was fenced). An error
    /// means the change is committed but the wait failed; the command gets BUSY.
    /// `budget_end` is the command's budget: past it, the answer is BUSY.
    pub(super) fn settle(&self, epoch: u64, budget_end: Instant) -> Result<(), SettleError> {
        // Measured from the commit's answer, on this host's clock.
        let bound = boottime_ns().saturating_add(super::config::nanos(self.cfg.wait_bound()));
        loop {
            let within = self
                .cfg
                .lease()
                .min(budget_end.saturating_duration_since(Instant::now()));
            match self.peers(within) {
                Ok(peers) => {
                    let behind: Vec<&String> = peers
                        .iter()
                        .filter(|(_, a)| a.as_ref().is_none_or(|a| a.epoch < epoch))
                        .map(|(n, _)| n)
                        .collect();
                    if behind.is_empty() {
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
}

impl EtcdState {
    /// The wait is over for members that did not acknowledge: their leases have run out. In
    /// strict mode each of them must also be fenced.
    fn settle_by_lease(&self, behind: &[&String], budget_end: Instant) -> Result<(), SettleError> {
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
}

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

impl Drop for EtcdState {
    fn drop(&mut self) {
        // SAFETY: `rt` is taken once, here, and `self` is not used after `drop`.
        let rt = unsafe { ManuallyDrop::take(&mut self.rt) };
        // Dropping a runtime waits for its blocking threads, which tokio forbids (a panic) on one
        // of its own workers, where the watch task may drop the last `Arc` of this.
        rt.shutdown_background();
    }
}

impl std::fmt::Debug for EtcdState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdState")
            .field("node", &self.cfg.node)
            .field("prefix", &self.keys.prefix)
            .finish()
    }
}
