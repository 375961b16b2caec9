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

//!
//! Security (`[cluster]`'s `ca_file`, `cert_file`, `key_file`, `user`, `password_file`): the files
//! are read at every start and refused when a secret is readable by others. With a user, a
//! client authenticates when it is made, and its token is refreshed whenever etcd says it has
//! expired (etcd's simple tokens live `--auth-token-ttl`, 300 s by default, after their last use).
//! A member that cannot be reached at start gets a client without a token, and authenticates on
//! the first call that goes to it. An error etcd answers with is explained in words (TLS, bad
//! password, permission), naming the setting to check.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions, Txn, TxnResponse};
use tokio::runtime::Runtime;

use super::etcd::ClusterError;
use super::ClusterConfig;

/// The least time a member gets to answer before the call moves on (unless the call's time is
/// shorter).
const MIN_SHARE: Duration = Duration::from_millis(100);
/// The pause after every member refused at once (etcd electing a leader), before trying again.
const ROUND_PAUSE: Duration = Duration::from_millis(20);

/// One etcd member's client.
struct Member {
    url: String,
    client: RwLock<Client>,
    /// Whether `client` holds a token (always, without a user).
    authenticated: AtomicBool,
}

/// One client per etcd member, the member the next call goes to first, and the member that
/// answered last.
pub struct Endpoints {
    clients: Vec<Member>,
    preferred: AtomicUsize,
    answered: AtomicUsize,
    /// The options with the user, for a client made again (see [`Member::authenticated`]).
    opts: ConnectOptions,
    /// The disk's key prefix, for the explanation of a denied permission.
    disk_prefix: String,
    /// Whether the endpoints are https://.
    tls: bool,
}

/// An error etcd (or the way to it) gave, with what it means for this daemon's settings.
#[derive(Debug, thiserror::Error)]
#[error("{detail}{}", hint.as_deref().map(|h| format!(" — {h}")).unwrap_or_default())]
pub struct Explained {
    /// The error and its causes.
    detail: String,
    /// What failed and which setting to check, when known.
    hint: Option<String>,
    /// Whether etcd refused the request (authentication, permission): no member will take it.
    refused: bool,
}

impl ClusterError {
    /// Whether etcd refused the request for who this daemon is (authentication, permission):
    /// trying again will not help until the settings or etcd's users change.
    pub fn refused(&self) -> bool {
        match self {
            ClusterError::Etcd { source, .. } => source
                .downcast_ref::<Explained>()
                .is_some_and(|e| e.refused),
            _ => false,
        }
    }
}

/// The hint of a TLS failure.
const TLS_HINT: &str = "the TLS handshake with etcd failed: check `cluster.ca_file` (the CA that \
                        signed etcd's server certificate, whose names must include the \
                        endpoint's host) and `cluster.cert_file` + `key_file` (a client \
                        certificate signed by the CA of etcd's --trusted-ca-file)";

/// The hint of a TLS connection etcd closed at once: with TLS 1.3 the client learns that its
/// certificate was refused only when the server closes the connection.
const TLS_CLOSED_HINT: &str = "etcd closed the TLS connection right after the TLS handshake: it \
                               most likely refused this daemon's client certificate (none, or \
                               not signed by the CA of etcd's --trusted-ca-file): check \
                               `cluster.cert_file` and `key_file`";

/// `e` and its causes, in words, with what it means for `[cluster]`'s settings (`tls`: the
/// endpoints are https://).
pub fn explain(e: &etcd_client::Error, disk_prefix: &str, tls: bool) -> Explained {
    let mut detail = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        let text = c.to_string();
        if !detail.contains(&text) {
            detail.push_str(": ");
            detail.push_str(&text);
        }
        cause = c.source();
    }
    let lower = detail.to_lowercase();
    let status = match e {
        etcd_client::Error::GRpcStatus(s) => Some(i32::from(s.code())),
        _ => None,
    };
    // gRPC code 7: PERMISSION_DENIED.
    let (hint, refused) = if status == Some(7) || lower.contains("permission denied") {
        let h = format!(
            "etcd denied this daemon access: its etcd user (`cluster.user`, or else the common \
             name of `cluster.cert_file`) needs a role with readwrite on the prefix \
             {disk_prefix} (etcdctl role grant-permission --prefix=true ROLE readwrite \
             {disk_prefix})"
        );
        (Some(h), true)
    } else if lower.contains("authentication failed") {
        let h = "etcd refused the user and password: check `cluster.user` and the password in \
                 `cluster.password_file`";
        (Some(h.to_string()), true)
    } else if lower.contains("user name is empty") {
        let h = "etcd has authentication on and this daemon presented no user: set \
                 `cluster.user` and `cluster.password_file`, or a client certificate \
                 (`cluster.cert_file`, `key_file`) whose common name is an etcd user";
        (Some(h.to_string()), true)
    } else if lower.contains("user name not found") {
        let h = "this daemon's etcd user (`cluster.user`, or the common name of \
                 `cluster.cert_file`) does not exist in etcd (etcdctl user add)";
        (Some(h.to_string()), true)
    } else if ["certificate", "tls", "handshake", "alert", "issuer"]
        .iter()
        .any(|k| lower.contains(k))
    {
        (Some(TLS_HINT.to_string()), false)
    } else if tls
        && ["broken pipe", "connection reset", "unexpected eof"]
            .iter()
            .any(|k| lower.contains(k))
    {
        (Some(TLS_CLOSED_HINT.to_string()), false)
    } else {
        (None, false)
    };
    Explained {
        detail,
        hint,
        refused,
    }
}

/// The options of every client: timing, TLS, and the user when `with_user`.
fn connect_options(
    cfg: &ClusterConfig,
    secrets: &super::config::EtcdSecrets,
    with_user: bool,
) -> ConnectOptions {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(cfg.lease())
        .with_timeout(cfg.lease())
        .with_keep_alive(cfg.renew_every(), cfg.lease())
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(ca) = &secrets.ca {
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &secrets.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(tls);
    }
    match &secrets.user {
        Some((user, password)) if with_user => opts
            .with_user(user.clone(), password.clone())
            .with_auto_token_refresh(true),
        _ => opts,
    }
}

/// A client of `url` that has no token yet (`anonymous`: the options without the user): it
/// connects in the background and sends nothing.
fn unauthenticated(
    rt: &Runtime,
    url: &str,
    anonymous: &ConnectOptions,
    disk_prefix: &str,
) -> Result<Client, ClusterError> {
    rt.block_on(Client::connect([url], Some(anonymous.clone())))
        .map_err(|e| set_up_error(url, e, disk_prefix, url.starts_with("https://")))
}

/// The error of setting up `url`'s client, explained.
fn set_up_error(url: &str, e: etcd_client::Error, disk_prefix: &str, tls: bool) -> ClusterError {
    ClusterError::Etcd {
        endpoints: url.to_string(),
        what: "set up a client",
        source: Box::new(explain(&e, disk_prefix, tls)),
    }
}

impl Endpoints {
    /// Sets up a client per URL of `cfg.etcd`. Without a user, connections are made in the
    /// background and nothing is sent yet; with one, each client authenticates (a member that
    /// does not answer within `cfg.lease()` authenticates later, on its first call). Plain
    /// http:// logs a warning.
    pub fn new(rt: &Runtime, cfg: &ClusterConfig) -> Result<Endpoints, ClusterError> {
        let secrets = cfg.read_secrets().map_err(ClusterError::Settings)?;
        let opts = connect_options(cfg, &secrets, true);
        let anonymous = connect_options(cfg, &secrets, false);
        if !cfg.tls() {
            log::warn!(
                "cluster: etcd is reached over plain http:// (`insecure = true`): anyone who can \
                 reach etcd can read and change the reservations and silence the fencing. Use \
                 https:// with `ca_file` and a client certificate or user (docs/cluster.md, \
                 \"Securing etcd\")"
            );
        }
        let user = cfg.user.is_some();
        let tls = cfg.tls();
        let disk_prefix = cfg.disk_prefix();
        let mut clients = Vec::with_capacity(cfg.etcd.len());
        for url in &cfg.etcd {
            let (client, authenticated) = if user {
                let connect = Client::connect([url.as_str()], Some(opts.clone()));
                // The timer needs the runtime: made inside it.
                match rt.block_on(async { tokio::time::timeout(cfg.lease(), connect).await }) {
                    Ok(Ok(c)) => (c, true),
                    Ok(Err(e)) if explain(&e, &disk_prefix, tls).refused => {
                        return Err(set_up_error(url, e, &disk_prefix, tls));
                    }
                    Ok(Err(e)) => {
                        let why = explain(&e, &disk_prefix, tls);
                        log::warn!("cluster: etcd {url}: cannot authenticate yet: {why}");
                        (unauthenticated(rt, url, &anonymous, &disk_prefix)?, false)
                    }
                    Err(_) => (unauthenticated(rt, url, &anonymous, &disk_prefix)?, false),
                }
            } else {
                let c = rt
                    .block_on(Client::connect([url.as_str()], Some(opts.clone())))
                    .map_err(|e| set_up_error(url, e, &disk_prefix, tls))?;
                (c, true)
            };
            clients.push(Member {
                url: url.clone(),
                client: RwLock::new(client),
                authenticated: AtomicBool::new(authenticated),
            });
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
            opts,
            disk_prefix,
            tls,
        })
    }

    /// The member the next call goes to first, and its client (for the watch).
    pub fn preferred(&self) -> (usize, Client) {
        let i = self.preferred.load(Ordering::Relaxed) % self.clients.len();
        (i, self.client(i))
    }

    /// Member `i`'s client.
    fn client(&self, i: usize) -> Client {
        self.clients[i]
            .client
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The URL of the member that answered the last call.
    pub fn answering(&self) -> &str {
        let i = self.answered.load(Ordering::Relaxed) % self.clients.len();
        &self.clients[i].url
    }

    /// Sends `txn` to member `i`, first authenticating its client if it has no token yet (the
    /// member did not answer at start).
    async fn send(&self, i: usize, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        let member = &self.clients[i];
        if !member.authenticated.load(Ordering::Acquire) {
            let c = Client::connect([member.url.as_str()], Some(self.opts.clone())).await?;
            *member.client.write().unwrap_or_else(|p| p.into_inner()) = c;
            member.authenticated.store(true, Ordering::Release);
            log::info!("cluster: etcd {}: authenticated", member.url);
        }
        self.client(i).txn(txn).await
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
            let url = &self.clients[i].url;
            let txn = txn.clone();
            match rt.block_on(async { tokio::time::timeout(share, self.send(i, txn)).await }) {
                Ok(Ok(resp)) => {
                    if self.answered.swap(i, Ordering::Relaxed) != i {
                        log::info!("cluster: etcd {url} answers; calls go there now");
                    }
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(resp);
                }
                Ok(Err(e)) => {
                    let e = explain(&e, &self.disk_prefix, self.tls);
                    log::debug!("cluster: etcd {url}: {what}: {e}");
                    let refused = e.refused;
                    let failed = ClusterError::Etcd {
                        endpoints: url.clone(),
                        what,
                        source: Box::new(e),
                    };
                    // etcd refused it (authentication, permission): every member would.
                    if refused {
                        return Err(failed);
                    }
                    error = Some(failed);
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
                .map(|m| m.url.as_str())
                .collect::<Vec<_>>()
                .join(","),
            what,
            ms: u64::try_from(within.as_millis()).unwrap_or(u64::MAX),
        }))
    }
}

#[cfg(test)]
mod tests;
