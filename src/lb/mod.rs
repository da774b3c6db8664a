//! The local API load balancer of every node: a TCP pass-through proxy on 127.0.0.1:6444 in front of
//! every control-plane kube-apiserver. kubelet, kube-proxy, and on control-plane nodes the
//! controller-manager and scheduler, talk to it; TLS runs end
//! to end between them and kube-apiserver, the balancer never terminates it.
//!
//! ```text
//!   kubelet ──TCP──▶ 127.0.0.1:6444 ──▶ accept loop ──▶ one task per connection
//!                                          │  plan(): healthy first, fewest connections,
//!                                          │  round-robin ties; dial; next on failure
//!                                          ▼
//!                                   Pool (std Mutex, never held across .await)
//!                                     ▲           ▲                     │ drain (watch)
//!      one prober per backend ────────┘           │                     ▼
//!      GET /readyz, client cert, every 1 s        │            proxied connections close
//!                                                 │
//!      refresher, every 10 s: GET the `kubernetes` EndpointSlices ──▶ set_backends ──▶ state file
//! ```
//!
//! Health is decided by active `/readyz` checks only (see `health.rs`); a backend that accepts TCP
//! but is not ready gets no traffic. While any backend is healthy, connections on unhealthy ones are
//! closed, so long-lived watches reconnect to a healthy apiserver. When none is healthy, every
//! backend is still tried: a cluster-wide blip must not wedge the worker.
//!
//! Boundary: this module knows nothing of the daemon, the PKI or the supervisor. It gets addresses,
//! a [`TlsClient`] and a file path; the daemon decides which certificate and which paths.
//! `docs/design/lb.md` explains the choices and the upstream bugs they avoid.

mod discovery;
mod health;
mod pool;
mod proxy;
mod state;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::httpc::TlsClient;
use health::{Probe, State, Thresholds};
use pool::Pool;

/// Where every node's balancer listens (a control-plane node's own kube-apiserver has 6443).
pub const LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 6444));

/// The balancer's settings. [`LbConfig::new`] fills in the defaults.
#[derive(Debug, Clone)]
pub struct LbConfig {
    /// The address to listen on, normally [`LISTEN`].
    pub listen: SocketAddr,
    /// The kube-apiservers known from the configuration (the join token). The persisted list is
    /// added to them at start.
    pub backends: Vec<SocketAddr>,
    /// Backends that stay in the list whatever discovery says: this node's own kube-apiserver on
    /// a control-plane node, the addresses it joined through on a worker. An apiserver leaves the
    /// `kubernetes` EndpointSlices while it restarts, so a list read at that moment names only the
    /// others; replacing the pool with it would leave a node whose other apiservers are down with
    /// no backend at all until the next refresh, and a worker with only dead ones for good (the
    /// refresher asks the pool's own backends). Empty by default.
    pub pinned: Vec<SocketAddr>,
    /// The client for `/readyz` and the EndpointSlice list: cluster CA plus a client certificate.
    /// For discovery the identity must be allowed to list EndpointSlices in `default`;
    /// kube-proxy's (`system:node-proxier`) is.
    pub tls: TlsClient,
    /// The JSON file holding the last known endpoint list (mode 0600, written atomically).
    pub state_file: PathBuf,
    /// Time between two probes of one backend (1 s).
    pub health_interval: Duration,
    /// Limit for one probe, connect to last byte (2 s).
    pub health_timeout: Duration,
    /// Consecutive failed probes (no HTTP answer) that make a healthy backend unhealthy (2). A
    /// non-200 answer makes it unhealthy at once.
    pub unhealthy_after: u32,
    /// Consecutive 200s that make an unhealthy backend healthy again (2).
    pub healthy_after: u32,
    /// Limit for dialling a backend for a client connection before trying the next one (3 s).
    pub dial_timeout: Duration,
    /// How often to refresh the list from the `kubernetes` EndpointSlices (10 s); `None` turns the
    /// refresher off and leaves the list to [`LbHandle::set_backends`].
    pub discovery_interval: Option<Duration>,
    /// Limit for one EndpointSlice list request (5 s).
    pub discovery_timeout: Duration,
}

impl LbConfig {
    pub fn new(
        listen: SocketAddr,
        backends: Vec<SocketAddr>,
        tls: TlsClient,
        state_file: PathBuf,
    ) -> LbConfig {
        LbConfig {
            listen,
            backends,
            pinned: Vec::new(),
            tls,
            state_file,
            health_interval: Duration::from_secs(1),
            health_timeout: Duration::from_secs(2),
            unhealthy_after: 2,
            healthy_after: 2,
            dial_timeout: Duration::from_secs(3),
            discovery_interval: Some(Duration::from_secs(10)),
            discovery_timeout: Duration::from_secs(5),
        }
    }

    fn validate(&self) -> Result<(), LbError> {
        let positive = [
            ("health_interval", self.health_interval),
            ("health_timeout", self.health_timeout),
            ("dial_timeout", self.dial_timeout),
            ("discovery_timeout", self.discovery_timeout),
            (
                "discovery_interval",
                self.discovery_interval.unwrap_or(Duration::MAX),
            ),
        ];
        for (field, d) in positive {
            if d.is_zero() {
                return Err(LbError::Config {
                    field,
                    reason: "must be longer than zero".into(),
                });
            }
        }
        for (field, n) in [
            ("unhealthy_after", self.unhealthy_after),
            ("healthy_after", self.healthy_after),
        ] {
            if n == 0 {
                return Err(LbError::Config {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LbError {
    #[error("invalid load balancer setting {field}: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("no kube-apiserver address to balance: none configured and none in {path}; rejoin the worker")]
    NoBackends { path: PathBuf },
    #[error("refusing an empty backend list (the balancer never forgets every apiserver)")]
    EmptyBackends,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot save the endpoint list to {path}: {source}")]
    Persist {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the load balancer is shut down")]
    Stopped,
}

/// One backend as `k8sd status` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub struct BackendStatus {
    pub address: SocketAddr,
    /// `unknown` (not probed yet), `healthy` or `unhealthy`.
    pub state: String,
    pub healthy: bool,
    pub consecutive_failures: u32,
    pub active_connections: u64,
    /// The last failed probe or dial, kept after recovery for the post-mortem.
    pub last_error: Option<String>,
    /// When `state` last changed (or the backend was added), RFC 3339.
    pub last_change: String,
}

/// Starts balancers; see [`LoadBalancer::start`].
#[derive(Debug)]
pub struct LoadBalancer;

impl LoadBalancer {
    /// Loads the persisted endpoint list, merges it after `cfg.backends`, saves the union, binds
    /// `cfg.listen` and starts the accept loop, one prober per backend and the refresher.
    /// Backends start `unknown` and are probed at once; until then every backend is tried.
    pub async fn start(cfg: LbConfig) -> Result<LbHandle, LbError> {
        cfg.validate()?;
        let mut initial: Vec<SocketAddr> = Vec::new();
        let persisted = match state::load(&cfg.state_file) {
            Ok(list) => list.unwrap_or_default(),
            Err(e) => {
                // Losing the list costs only the knowledge of other apiservers; the configured ones
                // still work and discovery rebuilds it.
                warn!(path = %cfg.state_file.display(), error = %e, "ignoring the load balancer's endpoint file");
                Vec::new()
            }
        };
        for a in cfg.pinned.iter().chain(&cfg.backends).chain(&persisted) {
            if !initial.contains(a) {
                initial.push(*a);
            }
        }
        if initial.is_empty() {
            return Err(LbError::NoBackends { path: cfg.state_file });
        }
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| LbError::Bind {
                addr: cfg.listen,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| LbError::Bind {
            addr: cfg.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            pool: Mutex::new(Pool::new(Thresholds {
                unhealthy_after: cfg.unhealthy_after,
                healthy_after: cfg.healthy_after,
            })),
            persist: tokio::sync::Mutex::new(()),
            pinned: cfg.pinned,
            tls: cfg.tls,
            state_file: cfg.state_file,
            health_interval: cfg.health_interval,
            health_timeout: cfg.health_timeout,
            dial_timeout: cfg.dial_timeout,
            discovery_timeout: cfg.discovery_timeout,
            stopping: watch::Sender::new(false),
        });
        let handle = LbHandle {
            shared: shared.clone(),
            local_addr,
            tasks: Mutex::new(Vec::new()),
        };
        // On error the handle is dropped, which stops the probers already spawned.
        shared.set_backends(initial).await?;
        let mut tasks = vec![tokio::spawn(proxy::accept_loop(shared.clone(), listener))];
        if let Some(every) = cfg.discovery_interval {
            tasks.push(tokio::spawn(refresh_loop(shared.clone(), every)));
        }
        *lock(&handle.tasks) = tasks;
        info!(listen = %local_addr, backends = ?shared.pool().addrs(), "api load balancer started");
        Ok(handle)
    }
}

/// A running balancer. Dropping it stops the balancer too, without waiting.
#[derive(Debug)]
pub struct LbHandle {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl LbHandle {
    /// The bound address (useful when `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The current backend list, in order.
    pub fn backends(&self) -> Vec<SocketAddr> {
        self.shared.pool().addrs()
    }

    /// Per-backend state, in list order.
    pub fn status(&self) -> Vec<BackendStatus> {
        let rows: Vec<_> = self
            .shared
            .pool()
            .backends()
            .iter()
            .map(|b| {
                (
                    b.addr,
                    b.health.state,
                    b.health.consecutive_failures,
                    b.active,
                    b.last_error.clone(),
                    b.last_change,
                )
            })
            .collect();
        rows.into_iter()
            .map(
                |(address, state, failures, active, last_error, changed)| BackendStatus {
                    address,
                    state: state.as_str().to_owned(),
                    healthy: state == State::Healthy,
                    consecutive_failures: failures,
                    active_connections: active as u64,
                    last_error,
                    last_change: time::OffsetDateTime::from(changed)
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default(),
                },
            )
            .collect()
    }

    /// Replaces the backend list and saves it. Backends that stay keep their health and their
    /// connections; removed ones have their connections closed; new ones start `unknown` and are
    /// probed at once. An empty list is refused. The new list is in effect even if saving it fails.
    pub async fn set_backends(&self, backends: Vec<SocketAddr>) -> Result<(), LbError> {
        self.shared.set_backends(backends).await
    }

    /// Stops accepting, stops probing and discovery, closes every proxied connection, and waits
    /// for the background tasks to end. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.stop();
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for LbHandle {
    fn drop(&mut self) {
        self.shared.stop();
    }
}

/// State shared by the handle and every task.
///
/// Lock order and the k3s lesson (k3s-io/k3s#10506, #11349: the health loop, the dialer and list
/// updates deadlocked on each other): `pool` is a `std::sync::Mutex`, taken only for short sections
/// that never await; its guard is not `Send`, so the compiler rejects holding it across an await in
/// a spawned task. `persist` is an async mutex that only `set_backends` takes, to keep the file in
/// the same order as the pool; it is taken before `pool` and nothing else waits on it.
#[derive(Debug)]
struct Shared {
    pool: Mutex<Pool>,
    persist: tokio::sync::Mutex<()>,
    /// [`LbConfig::pinned`]: added to every list [`Shared::set_backends`] is given.
    pinned: Vec<SocketAddr>,
    tls: TlsClient,
    state_file: PathBuf,
    health_interval: Duration,
    health_timeout: Duration,
    dial_timeout: Duration,
    discovery_timeout: Duration,
    /// `true` once the balancer is stopping; every task selects on it.
    stopping: watch::Sender<bool>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves plain counters behind, still usable.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn pool(&self) -> MutexGuard<'_, Pool> {
        lock(&self.pool)
    }

    fn stop(&self) {
        self.stopping.send_replace(true);
        self.pool().clear();
    }

    /// `list` plus the pinned backends it lacks, appended in their configured order.
    fn with_pinned(&self, mut list: Vec<SocketAddr>) -> Vec<SocketAddr> {
        for p in &self.pinned {
            if !list.contains(p) {
                list.push(*p);
            }
        }
        list
    }

    async fn stopped(&self) {
        let mut rx = self.stopping.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    async fn set_backends(self: &Arc<Self>, backends: Vec<SocketAddr>) -> Result<(), LbError> {
        if backends.is_empty() {
            return Err(LbError::EmptyBackends);
        }
        let backends = self.with_pinned(backends);
        let _order = self.persist.lock().await;
        let list = {
            let mut pool = self.pool();
            // Checked under the pool lock: `stop` clears the pool under it after setting the flag,
            // so no prober can be spawned after that clear.
            if *self.stopping.borrow() {
                return Err(LbError::Stopped);
            }
            let before = pool.addrs();
            for (id, addr) in pool.replace(&backends, SystemTime::now()) {
                let prober = tokio::spawn(probe_loop(self.clone(), id, addr));
                pool.attach_prober(id, prober.abort_handle());
            }
            let after = pool.addrs();
            if before != after {
                info!(?before, ?after, "api load balancer backends changed");
            }
            after
        };
        let path = self.state_file.clone();
        let saved = tokio::task::spawn_blocking(move || state::save(&path, &list)).await;
        let result = saved.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        result.map_err(|source| LbError::Persist {
            path: self.state_file.clone(),
            source,
        })
    }
}

/// Probes one backend until it leaves the list or the balancer stops.
async fn probe_loop(shared: Arc<Shared>, id: u64, addr: SocketAddr) {
    loop {
        let probe = tokio::select! {
            p = probe_once(&shared, addr) => p,
            () = shared.stopped() => return,
        };
        let seen = shared.pool().observe(id, &probe, SystemTime::now());
        let Some(transition) = seen else { return };
        if let Some(t) = transition {
            let error = match &probe {
                Probe::Ready => None,
                Probe::NotReady(e) | Probe::Failed(e) => Some(e.as_str()),
            };
            if t.to == State::Healthy {
                info!(backend = %t.addr, from = t.from.as_str(), "api backend healthy");
            } else {
                warn!(backend = %t.addr, from = t.from.as_str(), to = t.to.as_str(), error, "api backend not healthy");
            }
            for (addr, n) in t.drained {
                info!(backend = %addr, connections = n, "draining connections from an unhealthy api backend");
            }
        }
        tokio::select! {
            () = tokio::time::sleep(shared.health_interval) => {}
            () = shared.stopped() => return,
        }
    }
}

async fn probe_once(shared: &Shared, addr: SocketAddr) -> Probe {
    match shared.tls.get(addr, "/readyz", shared.health_timeout).await {
        Ok((200, _)) => Probe::Ready,
        Ok((code, body)) => {
            let text = String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .replace('\n', " ");
            Probe::NotReady(format!("/readyz answered {code}: {text}"))
        }
        Err(e) => Probe::Failed(e.to_string()),
    }
}

/// Every `every`, lists the `kubernetes` EndpointSlices through the best backend that answers and
/// makes the ready addresses, plus the pinned ones, the backend list. An empty or failed answer
/// changes nothing.
async fn refresh_loop(shared: Arc<Shared>, every: Duration) {
    let mut last_error: Option<String> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            () = shared.stopped() => return,
        }
        let result = tokio::select! {
            r = refresh_once(&shared) => r,
            () = shared.stopped() => return,
        };
        match result {
            Ok(()) => last_error = None,
            Err(e) => {
                // Warn once per distinct error, not every 10 s (a missing RBAC grant would flood).
                if last_error.as_ref() != Some(&e) {
                    warn!(error = %e, "api endpoint discovery failed; keeping the current backends");
                } else {
                    debug!(error = %e, "api endpoint discovery failed");
                }
                last_error = Some(e);
            }
        }
    }
}

async fn refresh_once(shared: &Arc<Shared>) -> Result<(), String> {
    let order = shared.pool().preference();
    let mut errors = Vec::new();
    for addr in order {
        let body = match shared
            .tls
            .get(addr, discovery::ENDPOINTSLICES_PATH, shared.discovery_timeout)
            .await
        {
            Ok((200, body)) => body,
            Ok((code, _)) => {
                errors.push(format!("{addr}: HTTP {code}"));
                continue;
            }
            Err(e) => {
                errors.push(e.to_string());
                continue;
            }
        };
        let found = discovery::parse_endpoint_slices(&body).map_err(|e| format!("{addr}: {e}"))?;
        if found.is_empty() {
            return Err(format!(
                "{addr}: the kubernetes EndpointSlices list no ready endpoint"
            ));
        }
        let (mut current, mut want) = (shared.pool().addrs(), shared.with_pinned(found.clone()));
        current.sort();
        want.sort();
        if current != want {
            shared.set_backends(found).await.map_err(|e| e.to_string())?;
        }
        return Ok(());
    }
    Err(errors.join("; "))
}
