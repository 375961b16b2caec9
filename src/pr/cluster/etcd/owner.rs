//! Which daemon serves a guest: a guest may move to another daemon of the cluster (a live
//! migration to another host) and back, and only one daemon at a time may admit its requests.
//!
//! `owners/<guest>` (see `etcd.rs`) names the incarnation that owns the guest, how often it
//! moved, and, while a move is asked for, the incarnation that wants it. A daemon admits a
//! guest's requests only while it owns it: its devices' [`Gate`] holds them back otherwise
//! (`virtqueue/handoff.rs`). Every change of the record is a transaction conditioned on the
//! record's revision read just before and on the writer still being its node's member, so an
//! attempt applied late (its answer lost, retried, its daemon killed) or sent by a replaced
//! incarnation changes nothing.
//!
//! **A move.** B's device has work for a guest that A owns: B writes itself as `want` (and from
//! then keeps, per epoch, the unit attentions that changes establish for the guest). A hands the
//! guest over once none of its devices holds it (every ring stopped by GET_VRING_BASE, which
//! answers only after the ring's round is completed, or the connections gone): with its
//! arbiter's write lock held (no I/O admitted, no state adopted) it takes the guest's pending
//! unit attentions and writes the record naming B, with them and the epoch A holds, only while
//! A holds the newest state. B takes the guest once it holds that epoch: it queues the moved
//! unit attentions, then its own of later epochs, and admits. The registration and reservation
//! are the guest's name's, so they stay as they are.
//!
//! **A daemon that dies.** A record of this node's older incarnation is taken back at once (a
//! restarted daemon serves its guests, as it did before moves existed; its guests get the
//! POWER ON, RESET unit attention, and what the dead incarnation had queued for them is gone, as
//! after any restart). A record of another node's incarnation that is not that node's member
//! any more (stopped, or replaced) is taken by a daemon whose device wants it once the wait
//! bound passed since it saw it so (the old incarnation's lease has surely run out and its last
//! admitted I/O ended). A record of a live member is never taken: it is handed over.

use super::*;
use crate::pr::fencing::Reservations;
use crate::scsi::sense::POWER_ON_RESET;
use crate::testhooks::failpoint;
use crate::transport::virtqueue::{Gate, Handoff};

/// How often the mover reads the owner records while a move is under way (otherwise every
/// `renew_ms`, and whenever the watch on `owners/` sees a change or a device wants a guest).
const TICK: Duration = Duration::from_millis(50);

/// The most unit attentions an owner record carries (read: the rest is left out).
const MAX_MOVED_UAS: usize = 32;

/// An incarnation, as an owner record names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Claimant {
    node: String,
    incarnation: String,
}

/// The `owners/<guest>` key's value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct OwnerValue {
    /// The incarnation that owns the guest.
    node: String,
    incarnation: String,
    /// How often the guest moved between daemons.
    moves: u64,
    /// The epoch its last owner held when it handed the guest over.
    epoch: u64,
    /// The guest's pending unit attentions, `[key, asc, ascq]`, oldest first.
    #[serde(default)]
    uas: Vec<(u8, u8, u8)>,
    /// The incarnation that asked for the guest.
    #[serde(default)]
    want: Option<Claimant>,
    /// The guest held its daemon's SPC-2 reservation (RESERVE(6)) when it was handed over: the
    /// next daemon gives it the reservation (each daemon keeps its own SPC-2 reservation).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    spc2: bool,
}

/// Whether this daemon owns a guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Own {
    No,
    Yes,
    /// Handing it over; the answer is not known yet.
    Leaving,
}

/// A guest's gate: admits its devices only while this daemon owns it.
pub struct GuestGate {
    inner: Mutex<GateInner>,
    handoffs: Mutex<Vec<Weak<Handoff>>>,
    /// Wakes the mover.
    wake: Arc<(Mutex<bool>, Condvar)>,
}

struct GateInner {
    own: Own,
    /// How many of the guest's devices hold it (a connection admits on them).
    holds: u32,
    /// How many connections the guest's devices have.
    conns: u32,
    /// A device here had work while the guest was not owned, and the guest was not owned here
    /// since.
    wanted: bool,
    /// Since when the owner was seen to be a stopped or replaced incarnation.
    orphan_since: Option<Instant>,
    /// The unit attentions taken for a hand-over whose answer was lost.
    stash: Vec<Sense>,
    /// The owner of another node was logged.
    logged: bool,
    /// The record was seen unreadable, and logged, since it was last read.
    unreadable: bool,
    /// A device here waited for the guest while the records could not be read, and that was
    /// logged, since they were last read.
    waits_for_etcd: bool,
}

impl Gate for GuestGate {
    fn hold(&self) -> bool {
        let mut g = lock(&self.inner);
        let owned = self.owned_or_wanted(&mut g);
        g.holds += u32::from(owned);
        owned
    }

    fn admits(&self) -> bool {
        self.owned_or_wanted(&mut lock(&self.inner))
    }

    fn unhold(&self) {
        let mut g = lock(&self.inner);
        g.holds = g.holds.saturating_sub(1);
        if g.holds == 0 {
            wake(&self.wake);
        }
    }

    fn attach(&self, handoff: Weak<Handoff>) {
        lock(&self.handoffs).push(handoff);
    }

    fn connected(&self) {
        let mut g = lock(&self.inner);
        g.conns = g.conns.saturating_add(1);
    }

    /// The last connection of a guest not owned here (or being handed over) ended: nothing here
    /// wants it any more, and the mover withdraws this daemon's request for it (or, once the
    /// hand-over is committed, makes none).
    fn disconnected(&self) {
        let mut g = lock(&self.inner);
        g.conns = g.conns.saturating_sub(1);
        if g.conns == 0 && g.own != Own::Yes && g.wanted {
            g.wanted = false;
            wake(&self.wake);
        }
    }
}

fn wake(pair: &(Mutex<bool>, Condvar)) {
    *lock(&pair.0) = true;
    pair.1.notify_all();
}

impl GuestGate {
    /// Whether the guest is owned here; if not, notes that a device here wants it.
    fn owned_or_wanted(&self, g: &mut GateInner) -> bool {
        if g.own == Own::Yes {
            return true;
        }
        if !g.wanted {
            g.wanted = true;
            wake(&self.wake);
        }
        false
    }

    fn new(wake: Arc<(Mutex<bool>, Condvar)>) -> Self {
        GuestGate {
            wake,
            inner: Mutex::new(GateInner {
                own: Own::No,
                holds: 0,
                conns: 0,
                wanted: false,
                orphan_since: None,
                stash: Vec::new(),
                logged: false,
                unreadable: false,
                waits_for_etcd: false,
            }),
            handoffs: Mutex::new(Vec::new()),
        }
    }

    fn own(&self) -> Own {
        lock(&self.inner).own
    }

    fn wanted(&self) -> bool {
        lock(&self.inner).wanted
    }

    /// Whether a move of this guest is under way here: wanted and not owned, or leaving.
    fn moving(&self) -> bool {
        let g = lock(&self.inner);
        g.own == Own::Leaving || (g.own == Own::No && g.wanted)
    }

    /// Owned here from now on: the devices' parked rings are kicked. The want that brought the
    /// guest here is answered: a device that has work once the guest left again asks anew
    /// ([`Gate::hold`]), so a daemon never asks back a guest none of its devices wants.
    fn owned(&self) {
        {
            let mut g = lock(&self.inner);
            g.own = Own::Yes;
            g.orphan_since = None;
            g.wanted = false;
        }
        let handoffs: Vec<_> = lock(&self.handoffs)
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        for h in handoffs {
            h.wake();
        }
    }

    fn set(&self, own: Own) {
        lock(&self.inner).own = own;
    }

    /// Keeps the unit attentions a hand-over whose outcome is not known took from the guest
    /// here, for [`EtcdState::finish_leaving`].
    fn stash(&self, uas: Vec<Sense>) {
        lock(&self.inner).stash = uas;
    }

    /// Stops admitting, if no device holds the guest now.
    fn begin_leaving(&self) -> bool {
        let mut g = lock(&self.inner);
        if g.own != Own::Yes || g.holds > 0 {
            return false;
        }
        g.own = Own::Leaving;
        true
    }
}

/// The owner records and the members' incarnations, as one read saw them.
struct OwnersView {
    /// Per guest: its record (`None`: unreadable) and the record's mod revision.
    owners: BTreeMap<String, (Option<OwnerValue>, i64)>,
    /// Per node: the incarnation registered.
    members: BTreeMap<String, String>,
}

/// The mover: reads the owner records and moves the guests this daemon has gates for, every
/// [`TICK`] while a move is under way, else every `renew_ms` or when woken. Runs until the agent
/// stops.
pub(super) fn mover_loop(shared: &EtcdState, lun: &Weak<Lun>) {
    let mut busy = true;
    while !shared.stopping.load(Ordering::Acquire) {
        {
            let (m, c) = &*shared.move_wake;
            let pause = if busy { TICK } else { shared.cfg.renew_every() };
            let mut woken = lock(m);
            if !*woken {
                woken = c
                    .wait_timeout(woken, pause)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|e| e.into_inner().0);
            }
            *woken = false;
        }
        if shared.stopping.load(Ordering::Acquire) || lock(&shared.gates).is_empty() {
            continue;
        }
        let Some(lun) = lun.upgrade() else {
            return;
        };
        busy = shared.tend_owners(&lun.reservations);
    }
}

/// Wakes the mover at every change under `owners/` (a move asked for or committed).
pub(super) async fn watch_owners(shared: Arc<EtcdState>) {
    let prefix = format!("{}owners/", shared.keys.prefix);
    while !shared.stopping.load(Ordering::Acquire) {
        let (at, mut client) = shared.endpoints.preferred();
        let options = etcd_client::WatchOptions::new().with_prefix();
        match client.watch(prefix.clone(), Some(options)).await {
            Ok(mut stream) => loop {
                if shared.stopping.load(Ordering::Acquire) || shared.endpoints.preferred().0 != at {
                    break;
                }
                match tokio::time::timeout(shared.cfg.renew_every(), stream.message()).await {
                    Ok(Ok(Some(resp))) => {
                        if !resp.events().is_empty() {
                            wake(&shared.move_wake);
                        }
                        if resp.canceled() {
                            break;
                        }
                    }
                    Ok(_) => break,
                    Err(_) => {}
                }
            },
            Err(e) => log::debug!("cluster: watch {prefix}: {e}"),
        }
        tokio::time::sleep(shared.cfg.renew_every() / 2).await;
    }
}

/// Test hooks: `move-answer-lost` drops the answer of a hand-over that etcd applied.
fn answer_lost_failpoint(done: bool) -> Result<bool, ClusterError> {
    match failpoint::error("move-answer-lost") {
        Ok(()) => Ok(done),
        Err(e) => Err(ClusterError::Etcd {
            endpoints: String::new(),
            what: "hand a guest over",
            source: Box::new(e),
        }),
    }
}

/// Test hooks: `move-swap-error` fails every hand-over's compare-and-swap before it is sent, as
/// etcd out of reach would (the record is left as it is).
fn swap_error_failpoint() -> Result<(), ClusterError> {
    failpoint::error("move-swap-error").map_err(|e| ClusterError::Etcd {
        endpoints: String::new(),
        what: "hand a guest over",
        source: Box::new(e),
    })
}

/// The records cannot be read (etcd out of reach): says once per guest, until they can be read
/// again, that a device here has work for a guest this daemon does not own and that it waits.
fn log_waits_for_etcd(gates: &[(String, Arc<GuestGate>)], e: &ClusterError) {
    for (guest, gate) in gates {
        let mut g = lock(&gate.inner);
        if g.own != Own::Yes && g.wanted && !g.waits_for_etcd {
            g.waits_for_etcd = true;
            log::warn!(
                "cluster: guest {guest}: a connection here has work and this daemon does not own \
                 the guest; its requests wait until etcd answers and the guest's owner record \
                 can be read ({e})"
            );
        }
    }
}

/// The records were read: a guest whose wait for etcd was logged says that etcd answers again.
fn log_etcd_answers(guest: &str, gate: &GuestGate) {
    if std::mem::replace(&mut lock(&gate.inner).waits_for_etcd, false) {
        log::info!("cluster: guest {guest}: etcd answers again; its owner record is read");
    }
}

/// Gives `guest` back the SPC-2 reservation it held where it was served before; when another
/// initiator holds one here, or another initiator registered (a PR OUT committed while the
/// guest moved), the guest's is lost and it learns so as at an I_T nexus loss (06/29/07), which
/// releases an SPC-2 reservation.
fn restore_spc2(arb: &mut crate::pr::Arbiter, guest: &str) {
    if !arb.restore_spc2(guest) {
        let why = match arb.spc2_holder() {
            Some(h) => format!("{h:?} holds one here"),
            None => "another initiator is registered now".to_string(),
        };
        log::warn!(
            "cluster: guest {guest} held an SPC-2 reservation (RESERVE(6)) where it was served \
             before, and {why}: the guest's is lost (it gets I_T NEXUS LOSS OCCURRED)"
        );
        arb.queue_unit_attention(guest, crate::scsi::sense::I_T_NEXUS_LOSS_OCCURRED);
    }
}

fn senses(uas: &[(u8, u8, u8)]) -> impl Iterator<Item = Sense> + '_ {
    uas.iter()
        .take(MAX_MOVED_UAS)
        .map(|&(k, a, q)| Sense::new(k, a, q))
}

impl EtcdState {
    /// The gate of guest `initiator`'s devices (made at the first call).
    pub fn gate(&self, initiator: &str) -> Arc<GuestGate> {
        lock(&self.gates)
            .entry(initiator.to_string())
            .or_insert_with(|| Arc::new(GuestGate::new(self.move_wake.clone())))
            .clone()
    }

    /// A unit attention of change `epoch` for `initiator`, which is not served here: kept if
    /// this daemon asked to take the guest over.
    pub(in crate::pr::cluster) fn note_moving(&self, initiator: &str, sense: Sense, epoch: u64) {
        if let Some(list) = lock(&self.moving).get_mut(initiator) {
            list.push((epoch, sense));
        }
    }

    /// [`EtcdState::note_moving`] for the unit attentions this daemon's commit of `epoch` wrote
    /// for other daemons' initiators.
    pub(in crate::pr::cluster) fn note_moving_all(&self, uas: &[(String, Sense)], epoch: u64) {
        for (initiator, sense) in uas {
            self.note_moving(initiator, *sense, epoch);
        }
    }

    fn owner_key(&self, guest: &str) -> String {
        format!("{}owners/{guest}", self.keys.prefix)
    }

    fn read_owners(&self) -> Result<OwnersView, ClusterError> {
        let owners = format!("{}owners/", self.keys.prefix);
        let txn = Txn::new().and_then([
            TxnOp::get(owners.as_str(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(
                self.keys.members.as_str(),
                Some(GetOptions::new().with_prefix()),
            ),
        ]);
        let got = gets(&self.txn(self.cfg.lease(), "read the guests' owners", &txn)?);
        let mut view = OwnersView {
            owners: BTreeMap::new(),
            members: BTreeMap::new(),
        };
        for kv in got.first().into_iter().flatten() {
            let Some(guest) = std::str::from_utf8(kv.key())
                .ok()
                .and_then(|k| k.strip_prefix(owners.as_str()))
            else {
                continue;
            };
            let value = serde_json::from_slice::<OwnerValue>(kv.value()).ok();
            view.owners
                .insert(guest.to_string(), (value, kv.mod_revision()));
        }
        for kv in got.get(1).into_iter().flatten() {
            if let Ok(m) = serde_json::from_slice::<MemberValue>(kv.value()) {
                view.members.insert(m.node.clone(), m.incarnation());
            }
        }
        Ok(view)
    }

    /// Writes `value` as guest's record if it is still at `rev` (0: no record) and this
    /// incarnation is still its node's member (and, with `state_at`, the state is still at that
    /// version). `Ok(false)`: something changed first.
    fn put_owner(
        &self,
        guest: &str,
        rev: i64,
        value: &OwnerValue,
        state_at: Option<i64>,
    ) -> Result<bool, ClusterError> {
        let key = self.owner_key(guest);
        let mut when = vec![
            Compare::mod_revision(key.as_str(), CompareOp::Equal, rev),
            Compare::value(
                self.keys.member.as_str(),
                CompareOp::Equal,
                self.member.clone(),
            ),
        ];
        if let Some(version) = state_at {
            when.push(Compare::mod_revision(
                self.keys.state.as_str(),
                CompareOp::Equal,
                version,
            ));
        }
        let bytes = serde_json::to_vec(value).unwrap_or_default();
        let txn = Txn::new()
            .when(when)
            .and_then([TxnOp::put(key.as_str(), bytes, None)]);
        Ok(self
            .txn(self.cfg.lease(), "move a guest", &txn)?
            .succeeded())
    }

    /// This daemon's side of its guests while the records cannot be read, for `ctl cluster
    /// status`: the record `unknown`, whether a guest is served here (its gate admits), and
    /// whether a device here waits for it.
    pub(super) fn local_owners_status(&self) -> Vec<serde_json::Value> {
        let gates: BTreeMap<String, Arc<GuestGate>> = lock(&self.gates).clone();
        gates
            .iter()
            .map(|(guest, gate)| {
                serde_json::json!({
                    "guest": guest,
                    "record": "unknown",
                    "served_here": gate.own() == Own::Yes,
                    "wanted_here": gate.wanted(),
                })
            })
            .collect()
    }

    /// The guests' owner records and this daemon's side of each, for `ctl cluster status`: one
    /// entry per guest that has a record or a gate here; served here: its gate admits.
    pub(super) fn owners_status(&self) -> Result<Vec<serde_json::Value>, ClusterError> {
        let view = self.read_owners()?;
        let gates: BTreeMap<String, Arc<GuestGate>> = lock(&self.gates).clone();
        let mut names: Vec<&String> = view.owners.keys().chain(gates.keys()).collect();
        names.sort();
        names.dedup();
        let me = self.me();
        Ok(names
            .into_iter()
            .map(|guest| {
                let rec = view.owners.get(guest);
                let value = rec.and_then(|(v, _)| v.as_ref());
                let gate = gates.get(guest);
                serde_json::json!({
                    "guest": guest,
                    "record": match rec {
                        None => "none",
                        Some((None, _)) => "unreadable",
                        Some((Some(_), _)) => "readable",
                    },
                    "node": value.map(|v| v.node.clone()),
                    "incarnation": value.map(|v| v.incarnation.clone()),
                    "owner_is_member": value
                        .map(|v| view.members.get(&v.node) == Some(&v.incarnation)),
                    "this_incarnation": value.is_some_and(|v| v.incarnation == me.incarnation),
                    "served_here": gate.is_some_and(|g| g.own() == Own::Yes),
                    "moves": value.map(|v| v.moves),
                    "want": value.and_then(|v| v.want.as_ref()).map(|w| serde_json::json!({
                        "node": w.node, "incarnation": w.incarnation,
                    })),
                    "wanted_here": gate.is_some_and(|g| g.wanted()),
                })
            })
            .collect())
    }

    fn me(&self) -> Claimant {
        Claimant {
            node: self.cfg.node.clone(),
            incarnation: self.incarnation.clone(),
        }
    }

    /// Moves what is to be moved; returns whether a move is still under way.
    fn tend_owners(&self, fencing: &Reservations) -> bool {
        let gates: Vec<_> = lock(&self.gates)
            .iter()
            .map(|(n, g)| (n.clone(), g.clone()))
            .collect();
        let view = match self.read_owners() {
            Ok(v) => v,
            Err(e) => {
                log::debug!("cluster: {e}");
                log_waits_for_etcd(&gates, &e);
                return true;
            }
        };
        let mut busy = false;
        for (guest, gate) in gates {
            log_etcd_answers(&guest, &gate);
            let rec = view.owners.get(&guest);
            if let Err(e) = self.tend(fencing, &guest, &gate, rec, &view.members) {
                log::warn!("cluster: guest {guest}: {e}; tried again");
            }
            let asked = rec.is_some_and(|(v, _)| v.as_ref().is_some_and(|v| v.want.is_some()));
            busy |= rec.is_none() || asked || gate.moving();
        }
        busy
    }

    fn tend(
        &self,
        fencing: &Reservations,
        guest: &str,
        gate: &GuestGate,
        rec: Option<&(Option<OwnerValue>, i64)>,
        members: &BTreeMap<String, String>,
    ) -> Result<(), ClusterError> {
        // A guest is taken only while this daemon's lease admits I/O: its parked requests run
        // as soon as it is owned here, and would fail at once if the lease had ended more than
        // `hold_ms` ago (etcd back, the lease not renewed yet).
        let Some((value, rev)) = rec else {
            if !self.lease.admits() {
                return Ok(());
            }
            return self.create_owner(fencing, guest, gate);
        };
        let Some(v) = value else {
            if !std::mem::replace(&mut lock(&gate.inner).unreadable, true) {
                log::warn!(
                    "cluster: guest {guest}: its owner record is unreadable: it stays with the \
                     daemon serving it (if any; elsewhere its devices wait) until the record is \
                     readable again or deleted"
                );
            }
            return Ok(());
        };
        lock(&gate.inner).unreadable = false;
        match gate.own() {
            Own::Leaving => self.finish_leaving(fencing, guest, gate, v, *rev),
            Own::Yes if v.incarnation == self.incarnation => match &v.want {
                Some(w)
                    if w.incarnation != self.incarnation
                        && members.get(&w.node) == Some(&w.incarnation) =>
                {
                    self.hand_over(fencing, guest, gate, v, *rev)
                }
                Some(w) => {
                    // Asked by an incarnation that is gone (or by this one, before it owned
                    // the guest): never handed to it, the request is dropped.
                    log::info!(
                        "cluster: guest {guest}: node {:?} asked for it and is gone; kept here",
                        w.node
                    );
                    let mut next = v.clone();
                    next.want = None;
                    self.put_owner(guest, *rev, &next, None).map(|_| ())
                }
                None => Ok(()),
            },
            Own::Yes => {
                // The gate closes first: dropping the guest waits for its admitted I/O (the
                // exclusive lock), and a ring that starts a round meanwhile must find it closed.
                gate.set(Own::No);
                log::error!(
                    "cluster: guest {guest} was taken by node {:?} while this daemon owned it \
                     (this incarnation was replaced): not served here any more",
                    v.node
                );
                self.drop_guest(fencing, guest);
                Ok(())
            }
            Own::No if !self.lease.admits() => Ok(()),
            Own::No => self.acquire(fencing, guest, gate, v, *rev, members),
        }
    }

    /// No record: the guest is this daemon's (the first daemon that has it).
    fn create_owner(
        &self,
        fencing: &Reservations,
        guest: &str,
        gate: &GuestGate,
    ) -> Result<(), ClusterError> {
        let v = OwnerValue {
            node: self.cfg.node.clone(),
            incarnation: self.incarnation.clone(),
            moves: 0,
            epoch: self.held().0,
            uas: Vec::new(),
            want: None,
            spc2: false,
        };
        if self.put_owner(guest, 0, &v, None)? && gate.own() != Own::Yes {
            self.take(fencing, guest, gate, &[], 0, false);
        }
        Ok(())
    }

    /// The guest is not owned here: take it back (this node's older incarnation), take it over
    /// (handed to this incarnation, or its owner gone for the wait bound), or ask for it.
    fn acquire(
        &self,
        fencing: &Reservations,
        guest: &str,
        gate: &GuestGate,
        v: &OwnerValue,
        rev: i64,
        members: &BTreeMap<String, String>,
    ) -> Result<(), ClusterError> {
        if v.incarnation == self.incarnation {
            if self.held().0 >= v.epoch {
                failpoint::hit("move-received");
                self.take(fencing, guest, gate, &v.uas, v.epoch, v.spc2);
            }
            return Ok(());
        }
        let mine = v.node == self.cfg.node;
        if mine {
            let mut next = v.clone();
            (next.node, next.incarnation, next.moves) = (
                self.me().node,
                self.me().incarnation,
                v.moves.saturating_add(1),
            );
            // What the older incarnation held for the guest ended with it.
            next.uas.clear();
            next.spc2 = false;
            if next.want.as_ref().is_some_and(|w| w.node == self.cfg.node) {
                next.want = None;
            }
            if self.put_owner(guest, rev, &next, None)? {
                log::info!("cluster: guest {guest}: taken back from this node's older incarnation");
                self.take(fencing, guest, gate, &[], 0, false);
            }
            return Ok(());
        }
        if self.serves(guest) {
            self.drop_guest(fencing, guest);
        }
        let live = members.get(&v.node) == Some(&v.incarnation);
        self.log_owner_once(guest, gate, v, live);
        if live {
            // The bound counts from a sighting of the owner gone that no sighting of it live
            // followed: a member that registered again may have admitted meanwhile.
            lock(&gate.inner).orphan_since = None;
        }
        if !gate.wanted() {
            return self.withdraw(guest, v, rev);
        }
        if live {
            return self.ask(guest, v, rev);
        }
        self.take_orphan(fencing, guest, gate, v, rev)
    }

    /// Asks the live owner for the guest: this incarnation becomes its `want`.
    fn ask(&self, guest: &str, v: &OwnerValue, rev: i64) -> Result<(), ClusterError> {
        if v.want.as_ref() == Some(&self.me()) {
            return Ok(());
        }
        // From here the unit attentions of every change this daemon holds are kept for it.
        lock(&self.moving).entry(guest.to_string()).or_default();
        let mut next = v.clone();
        next.want = Some(self.me());
        if self.put_owner(guest, rev, &next, None)? {
            log::info!(
                "cluster: guest {guest}: a connection here has work; asked node {:?} to hand it \
                 over",
                v.node
            );
        }
        Ok(())
    }

    /// No device here wants the guest any more (the connections that had work for it ended: a
    /// cancelled migration, a destination QEMU killed): a request of this incarnation still in
    /// the record is withdrawn, so that its owner does not hand the guest over to a daemon with
    /// nothing to serve it. Conditioned on the record's revision: a record that changed
    /// meanwhile (handed over here, asked by another) is left as it is.
    fn withdraw(&self, guest: &str, v: &OwnerValue, rev: i64) -> Result<(), ClusterError> {
        if v.want.as_ref() != Some(&self.me()) {
            // No request of this incarnation stands (another replaced it, or a withdrawal whose
            // answer was lost applied): the unit attentions kept for a move here are dropped,
            // or they would pile up for as long as the guest is not asked for again.
            lock(&self.moving).remove(guest);
            return Ok(());
        }
        let mut next = v.clone();
        next.want = None;
        if self.put_owner(guest, rev, &next, None)? {
            lock(&self.moving).remove(guest);
            log::info!(
                "cluster: guest {guest}: no connection here has work for it any more; the \
                 request to node {:?} to hand it over is withdrawn",
                v.node
            );
        }
        Ok(())
    }

    /// The owner is an incarnation that is not its node's member any more: taken once the wait
    /// bound passed since that was first seen here.
    fn take_orphan(
        &self,
        fencing: &Reservations,
        guest: &str,
        gate: &GuestGate,
        v: &OwnerValue,
        rev: i64,
    ) -> Result<(), ClusterError> {
        let since = *lock(&gate.inner)
            .orphan_since
            .get_or_insert_with(Instant::now);
        if since.elapsed() < self.cfg.wait_bound() {
            return Ok(());
        }
        let next = OwnerValue {
            node: self.cfg.node.clone(),
            incarnation: self.incarnation.clone(),
            moves: v.moves.saturating_add(1),
            epoch: self.held().0,
            uas: Vec::new(),
            want: None,
            spc2: false,
        };
        if self.put_owner(guest, rev, &next, None)? {
            log::warn!(
                "cluster: guest {guest}: its owner, node {:?}, stopped or was replaced without \
                 handing it over; taken after the wait bound (it gets POWER ON, RESET)",
                v.node
            );
            let _ = fencing.with_mut(|arb| arb.take_unit_attentions(|i| i == guest));
            lock(&self.moving).remove(guest);
            let reset = (POWER_ON_RESET.key, POWER_ON_RESET.asc, POWER_ON_RESET.ascq);
            self.take(fencing, guest, gate, &[reset], 0, false);
        }
        Ok(())
    }

    fn log_owner_once(&self, guest: &str, gate: &GuestGate, v: &OwnerValue, live: bool) {
        let mut g = lock(&gate.inner);
        if !g.logged {
            g.logged = true;
            log::warn!(
                "cluster: guest {guest} is owned by node {:?}{}: its connections here wait until \
                 it is handed over (a migration) or taken after that owner stopped",
                v.node,
                if live { "" } else { " (not a member now)" }
            );
        }
    }

    /// Not this daemon's guest: its unit attentions are its owner's, and an SPC-2 reservation
    /// it held here goes (it would keep this daemon's other initiators out for ever).
    fn drop_guest(&self, fencing: &Reservations, guest: &str) {
        let mut arb = fencing.write_lock();
        arb.take_unit_attentions(|i| i == guest);
        arb.take_spc2(guest);
        self.unserve(guest);
    }

    /// The guest is owned here: its moved unit attentions (`uas`, as of `epoch`), then those
    /// this daemon kept of later epochs, are queued, it gets back the SPC-2 reservation it held
    /// (`spc2`), and its devices admit.
    fn take(
        &self,
        fencing: &Reservations,
        guest: &str,
        gate: &GuestGate,
        uas: &[(u8, u8, u8)],
        epoch: u64,
        spc2: bool,
    ) {
        {
            let mut arb = fencing.write_lock();
            let kept = lock(&self.moving).remove(guest);
            if !self.serves(guest) {
                // What was queued before (the power-on of the join) belongs to the old owner.
                arb.take_unit_attentions(|i| i == guest);
            }
            for s in senses(uas) {
                arb.queue_unit_attention(guest, s);
            }
            for (at, s) in kept.unwrap_or_default() {
                if at > epoch {
                    arb.queue_unit_attention(guest, s);
                }
            }
            if spc2 {
                restore_spc2(&mut arb, guest);
            }
            self.serve(guest);
        }
        log::info!("cluster: guest {guest} is served here");
        gate.owned();
    }

    /// Hands the guest to the incarnation that wants it, once no device here holds it.
    fn hand_over(
        &self,
        fencing: &Reservations,
        guest: &str,
        gate: &GuestGate,
        v: &OwnerValue,
        rev: i64,
    ) -> Result<(), ClusterError> {
        let Some(to) = v.want.clone() else {
            return Ok(());
        };
        if !gate.begin_leaving() {
            return Ok(());
        }
        let mut arb = fencing.write_lock();
        let (epoch, version) = self.held();
        let taken: Vec<Sense> = arb
            .take_unit_attentions(|i| i == guest)
            .into_iter()
            .map(|(_, s)| s)
            .collect();
        // The SPC-2 reservation stays here until the swap is known to have applied: until then
        // the guest may stay (a swap that failed), and its reservation keeps excluding this
        // daemon's other initiators meanwhile (and a LU reset or a registration adopted
        // meanwhile still releases it).
        let spc2 = arb.spc2_holder() == Some(guest);
        self.unserve(guest);
        failpoint::hit("move-stopped");
        let next = OwnerValue {
            node: to.node.clone(),
            incarnation: to.incarnation,
            moves: v.moves.saturating_add(1),
            epoch,
            uas: taken.iter().map(|s| (s.key, s.asc, s.ascq)).collect(),
            want: None,
            spc2,
        };
        match swap_error_failpoint()
            .and_then(|()| self.put_owner(guest, rev, &next, Some(version)))
            .and_then(answer_lost_failpoint)
        {
            Ok(true) => {
                arb.take_spc2(guest);
                failpoint::hit("move-committed");
                gate.set(Own::No);
                log::info!(
                    "cluster: guest {guest} handed over to node {:?} at epoch {epoch} with {} \
                     unit attention(s)",
                    to.node,
                    taken.len()
                );
                Ok(())
            }
            // The record, the state or the membership changed meanwhile (the request
            // withdrawn, a PR OUT committed elsewhere, the guest taken from a replaced
            // incarnation): resolved from the record as a lost answer is
            // ([`EtcdState::finish_leaving`]), so the gate opens again only once a swap shows
            // that the record still names this incarnation, and then kicks the rings that found
            // it closed meanwhile (a cancelled migration's source restarting them).
            Ok(false) => {
                gate.stash(taken);
                Ok(())
            }
            Err(e) => {
                gate.stash(taken);
                Err(e)
            }
        }
    }

    fn requeue(&self, arb: &mut crate::pr::Arbiter, guest: &str, taken: &[Sense]) {
        let later = arb.take_unit_attentions(|i| i == guest);
        for s in taken.iter().chain(later.iter().map(|(_, s)| s)) {
            arb.queue_unit_attention(guest, *s);
        }
        self.serve(guest);
    }

    /// A hand-over whose answer was lost: done if the record names another incarnation now (an
    /// SPC-2 reservation the guest held here, kept until then, goes); else the record is
    /// rewritten as it is, so that the lost attempt can never apply, and the guest is served
    /// here again.
    fn finish_leaving(
        &self,
        fencing: &Reservations,
        guest: &str,
        gate: &GuestGate,
        v: &OwnerValue,
        rev: i64,
    ) -> Result<(), ClusterError> {
        if v.incarnation != self.incarnation {
            fencing.write_lock().take_spc2(guest);
            gate.stash(Vec::new());
            gate.set(Own::No);
            log::info!("cluster: guest {guest} handed over to node {:?}", v.node);
            return Ok(());
        }
        let mut arb = fencing.write_lock();
        if self.put_owner(guest, rev, v, None)? {
            let taken = std::mem::take(&mut lock(&gate.inner).stash);
            self.requeue(&mut arb, guest, &taken);
            drop(arb);
            gate.owned();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
