//! Joining the cluster: one transaction registers this incarnation, creates the shared state from
//! the local copy if etcd has none (the first daemon of a disk), and reads it.

use super::*;

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

/// The join's transaction when the disk has a state: become the member (reading the value this
/// node's key held before) and read the state, this node's replay records and the settled marker,
/// only while the member key is still at `member_rev` (its mod revision read just before; 0: no
/// key). So an attempt that etcd applies late (its answer lost, a retry sent, this daemon killed
/// meanwhile) cannot take the membership back from an incarnation that joined after it read.
/// Otherwise the members registered and whether a state exists are read.
fn join_txn(k: &Keys, member: &[u8], member_rev: i64) -> Txn {
    Txn::new()
        .when([
            Compare::create_revision(k.state.as_str(), CompareOp::Greater, 0),
            Compare::mod_revision(k.member.as_str(), CompareOp::Equal, member_rev),
        ])
        .and_then([
            TxnOp::get(k.member.as_str(), None),
            TxnOp::put(k.member.as_str(), member.to_vec(), None),
            TxnOp::get(k.state.as_str(), None),
            TxnOp::get(k.replay.as_str(), None),
            TxnOp::get(k.settled.as_str(), None),
        ])
        .or_else([
            TxnOp::get(
                k.members.as_str(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
            TxnOp::get(k.settled.as_str(), None),
            TxnOp::get(k.state.as_str(), Some(GetOptions::new().with_keys_only())),
        ])
}

/// The first daemon of a disk: create the state from `first` and become the member, only while
/// there is still no state and no member at all, and the settled marker is the one read
/// (`settled_at`, 0: none). A new history (`fresh`) starts clean: the unit attentions, replay
/// records and settled marker of an older line are deleted with it.
fn create_txn(k: &Keys, member: &[u8], first: Vec<u8>, settled_at: i64, fresh: bool) -> Txn {
    let mut ops = vec![
        TxnOp::get(k.member.as_str(), None),
        TxnOp::put(k.member.as_str(), member.to_vec(), None),
        TxnOp::put(k.state.as_str(), first, None),
        TxnOp::get(k.state.as_str(), None),
        TxnOp::get(k.replay.as_str(), None),
        TxnOp::get(k.settled.as_str(), None),
    ];
    if fresh {
        for prefix in [k.ua.clone(), format!("{}replay/", k.prefix)] {
            let range = DeleteOptions::new().with_range(Keys::prefix_end(&prefix));
            ops.push(TxnOp::delete(prefix, Some(range)));
        }
        ops.push(TxnOp::delete(k.settled.as_str(), None));
    }
    Txn::new()
        .when([
            Compare::create_revision(k.state.as_str(), CompareOp::Equal, 0),
            Compare::create_revision(k.members.as_str(), CompareOp::Equal, 0).with_prefix(),
            Compare::mod_revision(k.settled.as_str(), CompareOp::Equal, settled_at),
        ])
        .and_then(ops)
}

/// This node's replay records as `replay/<node>` holds them; none when absent, too long or
/// unreadable (logged: the replay of a PR OUT committed before a crash then runs again).
fn restored_replay(kv: Option<&KeyValue>) -> Vec<crate::pr::replay::Record> {
    let Some(kv) = kv else {
        return Vec::new();
    };
    if kv.value().len() > MAX_REPLAY_BYTES {
        log::warn!("cluster: this node's replay records in etcd are too long; ignored");
        return Vec::new();
    }
    match serde_json::from_slice::<ReplayValue>(kv.value()) {
        Ok(v) => v.records,
        Err(e) => {
            log::warn!("cluster: this node's replay records in etcd are unreadable ({e}); ignored");
            Vec::new()
        }
    }
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
        let incarnation = member.incarnation();
        let keys = Keys::new(cfg);
        let shared = Arc::new(EtcdState {
            cfg: cfg.clone(),
            held: Mutex::new((0, 0)),
            held_since: AtomicU64::new(0),
            settled: AtomicU64::new(0),
            settle_failure: Mutex::new(None),
            restored_replay: Mutex::new(Vec::new()),
            store,
            rt: ManuallyDrop::new(rt),
            endpoints,
            lease: ReadLease::new(),
            served: RwLock::new(guests.iter().cloned().collect()),
            gates: Mutex::new(BTreeMap::new()),
            moving: Mutex::new(BTreeMap::new()),
            move_wake: Arc::new((Mutex::new(false), Condvar::new())),
            member: serde_json::to_vec(&member).unwrap_or_default(),
            incarnation,
            history: Mutex::new(String::new()),
            vouch_from: std::sync::atomic::AtomicU64::new(0),
            fault: Mutex::new(None),
            keys,
            wake: (Mutex::new(false), Condvar::new()),
            stopping: AtomicBool::new(false),
            busy_log: crate::pr::cluster::ratelimit::RateLimited::new(
                crate::pr::cluster::ratelimit::BUSY_LOG_EVERY,
            ),
        });
        let k = &shared.keys;
        // etcd may still be electing a leader (a cluster starting with this daemon): each
        // step is tried again until the startup time is over.
        let deadline = crate::pr::cluster::config::after(startup);
        let sent = boottime_ns();
        let (created, got) = shared.join_or_create(deadline, local)?;
        let answered = boottime_ns();
        *lock(&shared.restored_replay) = restored_replay(got.get(2).and_then(Option::as_ref));
        if let Some(settled) = got.get(3).and_then(Option::as_ref) {
            shared.saw_settled(settled.value());
        }
        let (previous, state) = (
            got.first().and_then(Option::as_ref),
            got.get(1).and_then(Option::as_ref),
        );
        let remote = remote_from(k, state, &[])
            .map_err(|reason| ClusterError::Corrupt {
                key: k.state.clone(),
                reason,
            })?
            .ok_or_else(|| ClusterError::Corrupt {
                key: k.state.clone(),
                reason: "missing".into(),
            })?;
        *lock(&shared.history) = remote.history.clone();
        let remote = match shared.newer_local_copy(&remote, local) {
            Some(newer) => newer,
            None => {
                if !created && local != Some(&remote.state) {
                    log::info!(
                        "cluster: the shared state (epoch {}) replaces the local state file's",
                        remote.epoch
                    );
                }
                shared.set_held(remote.epoch, remote.version);
                shared.lease.renewed(sent, cfg.lease());
                remote
            }
        };
        shared.save_mark();
        shared.after_replacing(previous, answered);
        shared.put_ack();
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

    /// Registers this incarnation and reads the state; creates the state from `local` if the
    /// disk has none and no member at all (the first daemon of a disk). Returns whether it
    /// created it, and the reads: the member key's previous value and the state.
    fn join_or_create(
        &self,
        deadline: Instant,
        local: Option<&PrState>,
    ) -> Result<(bool, Vec<Option<KeyValue>>), ClusterError> {
        let k = &self.keys;
        // The incarnation this join replaces: the member key's value before this daemon's own
        // put (a retry may find its own earlier attempt there).
        let mut replaced = None;
        loop {
            let read = self.retry(deadline, "join", member_read_txn(k))?;
            let before = gets(&read).first().and_then(|r| r.first()).cloned();
            let member_rev = before.as_ref().map_or(0, KeyValue::mod_revision);
            if before
                .as_ref()
                .is_some_and(|kv| kv.value() != self.member.as_slice())
            {
                replaced = before;
            }
            let joined = self.retry(deadline, "join", join_txn(k, &self.member, member_rev))?;
            let got = gets(&joined);
            if joined.succeeded() {
                let mut reads = first_of_each(&got);
                if let Some(previous) = reads.first_mut() {
                    *previous = replaced;
                }
                return Ok((false, reads));
            }
            if got.get(2).is_some_and(|state| !state.is_empty()) {
                // The member key changed since it was read: read it again.
                continue;
            }
            let members: Vec<String> = got
                .first()
                .into_iter()
                .flatten()
                .map(|kv| String::from_utf8_lossy(&kv.key()[k.members.len()..]).to_string())
                .collect();
            if !members.is_empty() {
                return Err(ClusterError::StateGone {
                    key: k.state.clone(),
                    members: members.join(", "),
                });
            }
            let Some(local) = local else {
                return Err(ClusterError::NoState {
                    key: k.state.clone(),
                });
            };
            let settled = got.get(1).and_then(|s| s.first());
            let (epoch, history) = self.first_epoch(settled)?;
            let fresh = settled.is_none();
            let first = serde_json::to_vec(&StateValue {
                epoch,
                state: local.clone(),
                history,
            })
            .unwrap_or_default();
            let settled_at = settled.map_or(0, |kv| kv.mod_revision());
            let create = create_txn(k, &self.member, first, settled_at, fresh);
            let created = self.retry(deadline, "create the state", create)?;
            if created.succeeded() {
                return Ok((true, first_of_each(&gets(&created))));
            }
            // Another daemon created it or joined meanwhile: join that one.
        }
    }

    /// The epoch and history the first daemon creates the state as. A disk whose line never
    /// settled anything (no `settled` key) starts a new history at epoch 1. Otherwise the state
    /// was lost while no daemon ran, and only a local copy of that line at least as new as its
    /// settled epoch may continue it (as the next epoch); an older copy is refused.
    fn first_epoch(&self, settled: Option<&KeyValue>) -> Result<(u64, String), ClusterError> {
        let Some(kv) = settled else {
            return Ok((1, new_history()));
        };
        let (line_epoch, line_history) = settled_line(kv.value()).unwrap_or((u64::MAX, "?".into()));
        let mark = self.read_mark();
        match &mark {
            Some(m) if m.history == line_history && m.epoch >= line_epoch => {
                log::warn!(
                    "cluster: etcd holds no state and no member; this node's copy (epoch {}) is \
                     at least as new as the line's settled epoch {line_epoch}: it continues the \
                     line as epoch {}",
                    m.epoch,
                    m.epoch + 1
                );
                Ok((m.epoch.saturating_add(1), line_history))
            }
            _ => Err(ClusterError::StaleCopy {
                key: self.keys.state.clone(),
                line_epoch,
                line_history,
                copy: mark.map_or("of unknown epoch (no .epoch file)".into(), |m| {
                    format!("at epoch {} of history {}", m.epoch, m.history)
                }),
                settled_key: self.keys.settled.clone(),
            }),
        }
    }

    /// The local copy's epoch and history, if recorded (and only from a file of the daemon's
    /// own: a planted or foreign-writable mark is ignored, with a warning).
    fn read_mark(&self) -> Option<LocalMark> {
        match crate::util::atomic_file::read_own(&self.mark_path()?) {
            Ok(b) => b.and_then(|b| serde_json::from_slice(&b).ok()),
            Err(e) => {
                log::warn!("cluster: {e} (the local copy's epoch mark is ignored)");
                None
            }
        }
    }

    /// A new incarnation that replaced another one of this node (a killed daemon, or a live one
    /// cut off from etcd) vouches for nothing until that one's lease surely ended: no
    /// acknowledgement before the wait bound has passed since the join's answer.
    fn after_replacing(&self, previous: Option<&KeyValue>, answered: u64) {
        let Some(prev) = previous else {
            return;
        };
        if prev.value() == self.member.as_slice() {
            return;
        }
        let bound = self.cfg.wait_bound();
        self.vouch_from.store(
            answered.saturating_add(crate::pr::cluster::config::nanos(bound)),
            Ordering::Release,
        );
        log::warn!(
            "cluster: node {:?} was registered by another incarnation ({}); this one acknowledges \
             nothing for {} ms, until that one's read lease has surely ended",
            self.cfg.node,
            String::from_utf8_lossy(prev.value()),
            bound.as_millis()
        );
    }

    /// Where the epoch and history of the local copy are kept: beside it, `<copy>.epoch`.
    fn mark_path(&self) -> Option<std::path::PathBuf> {
        self.store().map(|s| s.path().with_extension("epoch"))
    }

    /// Records which shared state the local copy holds (after the copy was saved); best effort,
    /// like the copy.
    pub(in crate::pr::cluster) fn save_mark(&self) {
        let Some(path) = self.mark_path() else {
            return;
        };
        let mark = LocalMark {
            epoch: self.held().0,
            history: self.history(),
        };
        let tmp = path.with_extension("epoch.tmp");
        let r = crate::util::atomic_file::create_temporary(&tmp)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, &serde_json::to_vec(&mark).unwrap_or_default())
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = r {
            log::warn!("cluster: {}: {e} (a local record only)", path.display());
        }
    }

    /// A restart on a state older than the one this node held before (etcd restored from an
    /// older snapshot, the key rewritten): the local copy, of the same history and newer, is
    /// started from instead, without admitting (a regression), so that it can be republished.
    fn newer_local_copy(&self, remote: &Remote, local: Option<&PrState>) -> Option<Remote> {
        let local = local?;
        let mark = self.read_mark()?;
        if mark.history != remote.history || mark.epoch <= remote.epoch {
            return None;
        }
        // Version 0 matches no state in etcd: nothing is renewed until a newer one appears.
        self.set_held(mark.epoch, 0);
        self.regressed(Some(remote.epoch));
        Some(Remote {
            epoch: mark.epoch,
            version: 0,
            state: local.clone(),
            unit_attentions: Vec::new(),
            history: mark.history,
        })
    }

    /// Runs `txn` until it gets an answer or `deadline` passes (startup only).
    pub(super) fn retry(
        &self,
        deadline: Instant,
        what: &'static str,
        txn: Txn,
    ) -> Result<TxnResponse, ClusterError> {
        loop {
            match self.txn(self.cfg.lease(), what, &txn) {
                Ok(v) => return Ok(v),
                // etcd refused who this daemon is: no retry makes it accept.
                Err(e) if e.refused() => return Err(e),
                Err(e) if Instant::now() + Duration::from_millis(200) < deadline => {
                    log::info!("cluster: {e}; trying again");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// `<copy>.epoch`: the shared state the local copy holds.
#[derive(Serialize, Deserialize)]
struct LocalMark {
    epoch: u64,
    history: String,
}

/// Reads this node's member key (its value and mod revision) before a join.
fn member_read_txn(k: &Keys) -> Txn {
    Txn::new().and_then([TxnOp::get(k.member.as_str(), None)])
}

/// The first key of each read (none: an empty read): `[previous member, state, replay records,
/// settled marker]`.
fn first_of_each(got: &[Vec<KeyValue>]) -> Vec<Option<KeyValue>> {
    got.iter().map(|r| r.first().cloned()).collect()
}
