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

/// The join's transaction: if the disk has no state yet, become a member and create it from
/// `first` (the local copy; none: write nothing); else become a member. Either way, read it,
/// this node's replay records and the settled marker.
fn join_txn(k: &Keys, member: &[u8], first: Option<Vec<u8>>) -> Txn {
    let reads = || {
        [
            TxnOp::get(k.state.as_str(), None),
            TxnOp::get(k.replay.as_str(), None),
            TxnOp::get(k.settled.as_str(), None),
        ]
    };
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
            ]
            .into_iter()
            .chain(reads())
            .collect(),
        })
        .or_else(
            std::iter::once(TxnOp::put(k.member.as_str(), member.to_vec(), None))
                .chain(reads())
                .collect::<Vec<_>>(),
        )
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
            member: serde_json::to_vec(&member).unwrap_or_default(),
            keys,
            wake: (Mutex::new(false), Condvar::new()),
            stopping: AtomicBool::new(false),
            busy_log: crate::pr::cluster::ratelimit::RateLimited::new(
                crate::pr::cluster::ratelimit::BUSY_LOG_EVERY,
            ),
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
        let deadline = crate::pr::cluster::config::after(startup);
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
        let got = gets(&joined);
        let state = got.first().cloned().unwrap_or_default();
        *lock(&shared.restored_replay) = restored_replay(got.get(1).and_then(|r| r.first()));
        if let Some(settled) = got.get(2).and_then(|s| s.first()) {
            shared.saw_settled(settled.value());
        }
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
    pub(super) fn retry(
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
}
