//! The shared state in etcd, and the agent that keeps this daemon's read lease.
//!
//! Keys, under `<prefix>/<disk_id>/`:
//! - `state`: `{"epoch": E, "state": PrState, "history": H}`, changed only by a transaction
//!   conditioned on its `mod_revision`. H is made once, when a join creates the state; a state
//!   of an older epoch or another history is a regression, never adopted (`renew.rs`). E counts committed changes (one per PR OUT that changed anything);
//!   PRgeneration inside follows SPC-4's own counting (§6.16.2).
//! - `ua/<E, 20 digits>`: the unit attentions change E established for initiators of other
//!   daemons, written in the same transaction, read by every daemon when it adopts E; deleted
//!   once every member acknowledged E (`operate.rs`).
//! - `members/<node>`: this daemon's incarnation (node, host, pid, start time). Written at
//!   start, compared in every transaction, deleted on a clean stop. Never attached to an etcd
//!   lease: a TTL is no proof that a daemon stopped (it restarts on every leader change).
//! - `acks/<node>`: written only by the incarnation `members/<node>` holds, naming it and the
//!   history (only such an ack vouches, `settle.rs`): the epoch this daemon has applied (I/O admitted under older ones is
//!   finished), its initiators and what was left of its read lease, rewritten on every renewal.
//! - `commits/<node>`: the marker of this daemon's last commit (epoch, nonce), written in the
//!   commit's transaction. A commit whose attempt got no answer is sent again (to the next etcd
//!   member, `endpoints.rs`); when that one fails its compare, the marker tells whether the
//!   first attempt landed (the command is then committed, once) or another daemon's did.
//! - `settled`: the highest epoch known settled (see [`EtcdState::settle`]), 20 zero-padded
//!   digits so that etcd's byte compare orders it; only ever raised, by whichever daemon settled
//!   that epoch. A PR IN answers only a state at or below it (`confirm_current`, `backend.rs`).
//! - `owners/<guest>`: which incarnation serves the guest, how often it moved between daemons,
//!   and the incarnation that asked for it; the unit attentions it carries when moved
//!   (`owner.rs`).
//! - `replay/<node>`: this node's PR OUT replay records (`replay.rs`) as they stand after the
//!   command a commit answers, written in the commit's transaction and restored at join, so that
//!   QEMU's replay of that PR OUT after a crash is answered, not run again (exactly once).
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, Txn, TxnOp, TxnOpResponse, TxnResponse,
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

mod commit;
mod join;
mod members;
mod operate;
mod owner;
mod renew;
mod settle;

pub use operate::OperateError;
pub use renew::Agent;
use renew::{MemberRead, Seen};

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
    /// `[cluster]`'s TLS or authentication files are wrong (see `config.rs`).
    #[error("{0}")]
    Settings(super::ClusterConfigError),
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
    /// etcd holds no state for the disk while members are registered: it was deleted (or etcd
    /// was restored without it); creating a fresh one would take everyone back in time.
    #[error(
        "etcd holds no state under {key} while members are registered ({members}): the state was \
         deleted or lost, and this daemon will not create an older one. Run `sharedisk ctl \
         cluster republish` on the member holding the newest state, then start this one again"
    )]
    StateGone { key: String, members: String },
    /// etcd holds no state and no member, but the disk's line had settled a newer epoch (or
    /// another history) than this node's local copy: importing the copy would undo changes that
    /// returned GOOD.
    #[error(
        "etcd holds no state under {key}, but the disk's shared state had reached epoch \
         {line_epoch} (history {line_history}), and this node's local copy is {copy}: importing it \
         would undo changes that were answered GOOD. Start first the node whose copy is the \
         newest (its `<state_dir>/<disk_id>.<node>.epoch` names its epoch); to start over from \
         this copy anyway, delete the key {settled_key} with etcdctl"
    )]
    StaleCopy {
        key: String,
        line_epoch: u64,
        line_history: String,
        copy: String,
        settled_key: String,
    },
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

/// The `settled` key's value for `epoch` of `history`: the epoch in 20 digits first, so that
/// etcd's byte order is the numbers' within a history.
fn settled_value(epoch: u64, history: &str) -> String {
    format!("{epoch:020} {history}")
}

/// The epoch and history a `settled` key names, if it is well formed.
fn settled_line(value: &[u8]) -> Option<(u64, String)> {
    let (epoch, history) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    (epoch.len() == 20)
        .then(|| epoch.parse().ok())
        .flatten()
        .map(|e| (e, history.to_string()))
}

/// The epoch a `settled` key holds for `history`; a marker of another history (left by an older
/// line), or anything else (hostile or damaged), counts as none settled.
fn parse_settled(value: &[u8], history: &str) -> u64 {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.split_once(' '))
        .filter(|(epoch, h)| epoch.len() == 20 && *h == history)
        .and_then(|(epoch, _)| epoch.parse().ok())
        .unwrap_or(0)
}

/// The `replay/<node>` key's value: this node's replay records after the commit of `epoch`.
#[derive(Serialize, Deserialize)]
struct ReplayValue {
    epoch: u64,
    records: Vec<crate::pr::replay::Record>,
}

/// The most a `replay/<node>` value may hold; a longer one is neither written nor read.
pub(super) const MAX_REPLAY_BYTES: usize = 64 << 10;

/// The largest epoch a state read from etcd may carry: far beyond any real count of changes,
/// and room to add one without overflow (a hostile value is refused as unreadable).
const MAX_EPOCH: u64 = 1 << 62;

/// The `state` key's value.
#[derive(Serialize, Deserialize)]
struct StateValue {
    epoch: u64,
    state: PrState,
    /// Which line of states this is: a random 128-bit id (hex) made when a join created the
    /// state, kept by every commit and by `republish`. Empty for values written before it
    /// existed. A state of another history is never "newer".
    #[serde(default)]
    history: String,
}

/// Why this daemon stopped admitting for good, or until the operator acts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// etcd holds an older state than the one held here (a deleted key, a restored snapshot,
    /// other content at the same epoch): `shared` is etcd's epoch (`None`: no state at all).
    Regression { held: u64, shared: Option<u64> },
    /// Another incarnation of this node took its membership.
    Replaced,
}

impl Fault {
    /// Its name in `ctl cluster status` and the metric's `kind` label.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Regression { .. } => "regression",
            Fault::Replaced => "replaced",
        }
    }
}

/// A fresh history id: 128 random bits in hex.
fn new_history() -> String {
    let mut b = [0u8; 16];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        b[..8].copy_from_slice(&boottime_ns().to_le_bytes());
        b[8..12].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
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

impl MemberValue {
    /// The compact id of this incarnation that its acknowledgements carry.
    fn incarnation(&self) -> String {
        format!("{}/{}/{}", self.boot_id, self.started_ns, self.pid)
    }
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
    /// The etcd revision the acknowledgement was written at (0: none).
    ack_revision: i64,
}

impl Member {
    /// Whether this member vouches for `epoch` of `history`, committed at etcd revision
    /// `committed_at`: its acknowledgement was written by the incarnation registered now, for
    /// the same history, at `epoch` or later, and after `committed_at` (acknowledgements are
    /// conditioned on the state's revision the member holds, so a later one proves it applied
    /// that commit; an earlier one may be of a state etcd no longer holds). A foreign or older
    /// incarnation's acknowledgement never vouches.
    fn acknowledged(&self, history: &str, epoch: u64, committed_at: i64) -> bool {
        match (&self.incarnation, &self.ack) {
            (Some(i), Some(a)) => {
                a.incarnation == i.incarnation()
                    && a.history == history
                    && a.epoch >= epoch
                    && self.ack_revision > committed_at
            }
            _ => false,
        }
    }
}

/// The `acks/<node>` key's value.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct AckValue {
    epoch: u64,
    initiators: Vec<String>,
    /// What was left of the read lease when this was written, in milliseconds.
    lease_remaining_ms: u64,
    /// The history of the state acknowledged ([`StateValue::history`]).
    #[serde(default)]
    history: String,
    /// The incarnation that wrote this ([`MemberValue::incarnation`]).
    #[serde(default)]
    incarnation: String,
}

/// The shared state as this daemon reaches it; the fencing's side of it is
/// [`super::backend::EtcdBackend`].
pub struct EtcdState {
    cfg: ClusterConfig,
    /// Which shared state the arbiter holds, `(epoch, version)`; changed only with the
    /// arbiter's write lock held.
    held: Mutex<(u64, i64)>,
    /// CLOCK_BOOTTIME when this daemon first held the epoch it holds (applied its own commit's
    /// answer, adopted another's, or joined at it): never before that epoch's commit, so the
    /// wait bound of a settle is measured from here, whichever attempt it is.
    held_since: AtomicU64,
    /// The highest epoch known settled (the `settled` key as last read or raised here).
    settled: AtomicU64,
    /// The background settle's last failure, logged once per kind (`renew.rs`).
    pub(super) settle_failure: Mutex<Option<String>>,
    /// This node's replay records read from etcd at join, until the daemon takes them.
    restored_replay: Mutex<Vec<crate::pr::replay::Record>>,
    /// The local copy of the shared state (and the replay records), if any.
    store: Option<StateStore>,
    /// Shut down in the background on drop: the last owner may be the watch, a task of it.
    rt: ManuallyDrop<tokio::runtime::Runtime>,
    endpoints: Endpoints,
    lease: ReadLease,
    served: RwLock<HashSet<String>>,
    /// The gates of this daemon's guests' devices: admitting only while this daemon owns the
    /// guest (`owner.rs`).
    gates: Mutex<BTreeMap<String, Arc<owner::GuestGate>>>,
    /// The unit attentions, with their epochs, of guests this daemon asked to take over and
    /// does not serve yet (`owner.rs`).
    moving: Mutex<BTreeMap<String, Vec<(u64, Sense)>>>,
    /// Wakes the mover (`owner.rs`).
    move_wake: Arc<(Mutex<bool>, Condvar)>,
    member: Vec<u8>,
    /// This incarnation's id, which its acknowledgements carry.
    incarnation: String,
    /// The history of the shared state (set by the join, kept for the daemon's life).
    history: Mutex<String>,
    /// No acknowledgement is written before this point on [`boottime_ns`]: a new incarnation
    /// that replaced another one vouches for nothing until that one's lease surely ended.
    vouch_from: std::sync::atomic::AtomicU64,
    /// Why admission stopped until a newer state or for good (see [`Fault`]).
    fault: Mutex<Option<Fault>>,
    keys: Keys,
    /// Wakes the renewer early (the watch saw a change, or the agent stops).
    wake: (Mutex<bool>, Condvar),
    stopping: AtomicBool,
    /// The BUSY answers' warnings, at most one a second (a guest re-sends every few ms).
    pub(super) busy_log: crate::pr::cluster::ratelimit::RateLimited,
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
    settled: String,
    replay: String,
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
            settled: format!("{p}settled"),
            replay: format!("{p}replay/{}", cfg.node),
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

/// Checks a `state` value read from etcd, which anyone who may write the key wrote: the epoch
/// in range, the arbiter's invariants, and every initiator a guest's name or an iSCSI nexus
/// name (never something no transport could have produced).
fn check_state(v: &StateValue) -> Result<(), String> {
    if v.epoch >= MAX_EPOCH {
        return Err(format!("epoch {} is out of range", v.epoch));
    }
    v.state.validate()?;
    match v
        .state
        .registrations
        .iter()
        .find(|r| !crate::pr::wire::valid_initiator(&r.initiator))
    {
        Some(r) => Err(format!(
            "initiator {:?} is neither a guest nor an iSCSI nexus",
            r.initiator
        )),
        None => Ok(()),
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
    check_state(&v)?;
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
                    .map(|(i, key, asc, ascq)| (i, Sense::new(key, asc, ascq), at)),
            );
        }
    }
    Ok(Some(Remote {
        history: v.history,
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

impl EtcdState {
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

    /// Whether `initiator` is one of this daemon's guests or live iSCSI nexuses.
    pub fn serves(&self, initiator: &str) -> bool {
        read(&self.served).contains(initiator)
    }

    /// Which shared state is held here, `(epoch, version)`.
    pub fn held(&self) -> (u64, i64) {
        *lock(&self.held)
    }

    pub(super) fn set_held(&self, epoch: u64, version: i64) {
        let mut held = lock(&self.held);
        if held.0 != epoch {
            self.held_since.store(boottime_ns(), Ordering::Release);
        }
        *held = (epoch, version);
    }

    /// The highest epoch known settled here.
    pub fn settled(&self) -> u64 {
        self.settled.load(Ordering::Acquire)
    }

    /// Since when (CLOCK_BOOTTIME) the epoch held here has been held.
    pub(super) fn held_since(&self) -> u64 {
        self.held_since.load(Ordering::Acquire)
    }

    /// The `replay/<node>` value for `records` as they stand after the commit of `epoch`.
    pub(super) fn replay_records_value(
        &self,
        epoch: u64,
        records: &[crate::pr::replay::Record],
    ) -> Vec<u8> {
        serde_json::to_vec(&ReplayValue {
            epoch,
            records: records.to_vec(),
        })
        .unwrap_or_default()
    }

    /// This node's replay records as etcd held them at join (once; empty afterwards).
    pub fn take_restored_replay(&self) -> Vec<crate::pr::replay::Record> {
        std::mem::take(&mut *lock(&self.restored_replay))
    }

    /// Takes in a `settled` value read from etcd (it only ever grows).
    pub(super) fn saw_settled(&self, value: &[u8]) {
        self.settled
            .fetch_max(parse_settled(value, &self.history()), Ordering::AcqRel);
    }

    /// The history of the shared state held here.
    pub fn history(&self) -> String {
        lock(&self.history).clone()
    }

    /// Why this daemon does not admit, beyond a lost lease.
    pub fn fault(&self) -> Option<Fault> {
        lock(&self.fault).clone()
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

    /// D_io: by how long after its lease's end an admitted I/O must be done.
    pub fn max_io(&self) -> Duration {
        Duration::from_millis(self.cfg.max_io_ms)
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

#[cfg(test)]
mod tests;
