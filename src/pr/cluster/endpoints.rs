//! Reaching etcd through whichever of its members answers.
//!
//! One etcd-client `Client` balances its calls over every endpoint it was given, so a member that
//! is cut off (its packets dropped, not refused) holds each call routed to it until the call's
//! time is up: one unreachable member out of three would cost healthy daemons their read leases
//! and their PR OUTs a BUSY. Here each endpoint has its own client. A call goes to the member
//! that answered the last one; when that member does not answer within its share of the call's
//! time, the call goes to the next, and so does the call after it: a member that failed is passed
//! over until the others fail too, however short a call's time (a renewal may have less than one
//! share). A member without a leader (cut off from the others, or the cluster without quorum)
//! refuses at once instead of waiting (`require_leader`).
//!
//! Sending a transaction again to another member is safe because each one here is conditioned:
//! on the state's revision and on this daemon's membership. A first attempt that did land
//! after all makes the next attempt's conditions fail, and a commit's marker
//! (`commits/<node>`, see `etcd.rs`) tells its own landing apart from another daemon's change.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{Client, ConnectOptions, Txn, TxnResponse};
use tokio::runtime::Runtime;

use super::etcd::ClusterError;
use super::ClusterConfig;

/// The least time a member gets to answer before the call moves on (unless the call's time is
/// shorter).
const MIN_SHARE: Duration = Duration::from_millis(100);
/// The pause after every member refused at once (etcd electing a leader), before trying again.
const ROUND_PAUSE: Duration = Duration::from_millis(20);

/// One client per etcd member, the member the next call goes to first, and the member that
/// answered last.
pub struct Endpoints {
    clients: Vec<(String, Client)>,
    preferred: AtomicUsize,
    answered: AtomicUsize,
}

impl Endpoints {
    /// Sets up a client per URL of `cfg.etcd`. Connections are made in the background; nothing
    /// is sent yet.
    pub fn new(rt: &Runtime, cfg: &ClusterConfig) -> Result<Endpoints, ClusterError> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(cfg.lease())
            .with_timeout(cfg.lease())
            .with_keep_alive(cfg.renew_every(), cfg.lease())
            .with_keep_alive_while_idle(true)
            .with_require_leader(true);
        let mut clients = Vec::with_capacity(cfg.etcd.len());
        for url in &cfg.etcd {
            let client = rt
                .block_on(Client::connect([url.as_str()], Some(opts.clone())))
                .map_err(|e| ClusterError::Etcd {
                    endpoints: url.clone(),
                    what: "set up a client",
                    source: Box::new(e),
                })?;
            clients.push((url.clone(), client));
        }
        if clients.is_empty() {
            return Err(ClusterError::Corrupt {
                key: "[cluster] etcd".into(),
                reason: "no endpoint".into(),
            });
        }
        Ok(Endpoints {
            clients,
            preferred: AtomicUsize::new(0),
            answered: AtomicUsize::new(0),
        })
    }

    /// The member the next call goes to first, and its client (for the watch).
    pub fn preferred(&self) -> (usize, Client) {
        let i = self.preferred.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].1.clone())
    }

    /// The URL of the member that answered the last call.
    pub fn answering(&self) -> &str {
        let i = self.answered.load(Ordering::Relaxed) % self.clients.len();
        &self.clients[i].0
    }

    /// Runs `txn` on the member that answered last, moving on to the next member when one
    /// fails or does not answer within its share of `within`: half of what is left but at
    /// least 100 ms (all of it if less is left), and all of it for the last member of a round.
    /// A member that failed is not asked first by the next call. The error is the last
    /// member's.
    pub fn txn(
        &self,
        rt: &Runtime,
        within: Duration,
        what: &'static str,
        txn: &Txn,
    ) -> Result<TxnResponse, ClusterError> {
        let n = self.clients.len();
        let first = self.preferred.load(Ordering::Relaxed) % n;
        let end = super::config::after(within);
        let mut error = None;
        for attempt in 0.. {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let last_of_round = attempt % n == n - 1;
            let share = if last_of_round {
                left
            } else {
                (left / 2).max(MIN_SHARE).min(left)
            };
            let i = (first + attempt) % n;
            let (url, client) = &self.clients[i];
            let mut client = client.clone();
            let txn = txn.clone();
            match rt.block_on(async { tokio::time::timeout(share, client.txn(txn)).await }) {
                Ok(Ok(resp)) => {
                    if self.answered.swap(i, Ordering::Relaxed) != i {
                        log::info!("cluster: etcd {url} answers; calls go there now");
                    }
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Ok(Err(e)) => {
                    log::debug!("cluster: etcd {url}: {what}: {e}");
                    error = Some(ClusterError::Etcd {
                        endpoints: url.clone(),
                        what,
                        source: Box::new(e),
                    });
                }
                Err(_) => {
                    log::debug!("cluster: etcd {url}: {what}: no answer within {share:?}");
                    error = Some(ClusterError::Timeout {
                        endpoints: url.clone(),
                        what,
                        ms: u64::try_from(share.as_millis()).unwrap_or(u64::MAX),
                    });
                }
            }
            // The next call starts after this member, unless another call already moved on.
            let _ = self.preferred.compare_exchange(
                i,
                (i + 1) % n,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if last_of_round {
                std::thread::sleep(ROUND_PAUSE.min(end.saturating_duration_since(Instant::now())));
            }
        }
        Err(error.unwrap_or(ClusterError::Timeout {
            endpoints: self
                .clients
                .iter()
                .map(|(u, _)| u.as_str())
                .collect::<Vec<_>>()
                .join(","),
            what,
            ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
        }))
    }
}
