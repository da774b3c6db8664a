//! Raft replication of the datastore, on openraft 0.10.
//!
//! ```text
//!   etcd façade (later) ──propose(Command)──▶ RaftNode ──client_write──▶ openraft core
//!                                              │  follower? Forward RPC to the leader, then
//!                                              │  wait for the entry's outcome from the local apply
//!   reads ──linearizable_barrier()──▶ read index (local leader, or ReadIndex RPC to it),
//!                                      wait until applied ≥ index, then read the local SQLite
//!
//!   openraft core ──▶ LogStore   (<data>/raft/log.db: log + vote, fsync per batch)
//!                 ──▶ StateMachine (<data>/state.db: the datastore, + raft_meta rows)
//!                 ──▶ NetworkFactory/PeerNetwork ──gRPC──▶ peers' PeerService
//! ```
//!
//! Boundaries: this module is the only writer of the datastore once a node runs Raft; it
//! knows nothing of etcd's protobuf types. The peer service has its own listener, never the
//! etcd client port. A node's identity is a random `u64` kept in `<data>/raft/node-id`, never
//! its hostname or address. See docs/design/raft.md for the reasoning.

pub mod codec;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod outcome;
pub mod peer_auth;
pub mod recover;
pub mod stages;
pub mod state_machine;
pub mod types;

/// Generated code for the peer service (`proto/raft/raft.proto`).
pub mod pb {
    #![allow(clippy::all, missing_debug_implementations, missing_docs)]
    tonic::include_proto!("k8sd.raft.v1");
}

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ReadPolicy, ServerState, SnapshotPolicy};
use tokio::sync::{Mutex, oneshot};
use tokio::time::Instant;
use tonic::transport::{ClientTlsConfig, Server, ServerTlsConfig};

use crate::datastore::{Command, CommandOutput, StoreError};
use log_store::{LogStore, LogStoreError};
use membership::{JoinReply, JoinRequest, MembershipLock, RemoveReply, RemoveRequest};
pub use membership::{RemoveError, RemoveOutcome};
pub use network::Faults;
use network::{
    CallError, ForwardReply, LeaderContact, Method, NetworkFactory, PeerService, Raft, ReadIndexReply,
};
pub use network::{LeaseClock, LeaseReply, LeaseRequest};
use state_machine::{ApplyHook, StateMachine, Waiters};
pub use types::{NodeInfo, Request, Response, TypeConfig};

/// Settings of one Raft node. `RaftConfig::new` fills in the defaults described per field.
#[derive(Clone)]
pub struct RaftConfig {
    /// The node's data directory: `state.db` and `raft/` live here.
    pub data_dir: PathBuf,
    /// Advertised name, peer address (`host:port`) and client URL of this node.
    pub name: String,
    pub peer_addr: String,
    pub client_addr: String,
    /// Leader heartbeat; default 100 ms, as etcd.
    pub heartbeat: Duration,
    /// Randomised election timeout range; default 250–500 ms. openraft adds its leader lease
    /// (= the maximum) in front of it, so a follower campaigns after 750–1000 ms of leader
    /// silence and failover takes about 0.9 s. Unlike etcd's, openraft's heartbeats do not
    /// wait for fsync, so a slow disk does not count (docs/design/raft.md, "Failover timing").
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot after this many applied entries since the last one; default 50,000.
    ///
    /// A snapshot copies the whole state database (`VACUUM INTO`), so its cost grows with the
    /// store, not with the entries it covers; at 5000 a busy member copied hundreds of MiB every
    /// few seconds. It is not needed for durability (state.db plus the log replay is), only to
    /// bound the log and to serve a follower that fell behind the purged log. 50,000 binary
    /// entries of 1 KiB puts are about 55 MiB of log.
    pub snapshot_every: u64,
    /// Entries kept in the log behind a snapshot, so slightly lagging followers catch up from
    /// the log instead of a full snapshot; default 1000.
    pub logs_kept_after_snapshot: u64,
    /// How long `propose` and `linearizable_barrier` retry through leader changes.
    pub request_timeout: Duration,
    /// mTLS for the peer service; `None` is plain HTTP/2 (loopback tests only).
    pub server_tls: Option<ServerTlsConfig>,
    pub client_tls: Option<ClientTlsConfig>,
    /// With `server_tls`: the organization a caller's certificate must name
    /// (`peer_auth`), so a datastore client certificate of the same CA cannot act as a peer.
    /// `None` accepts every certificate the CA signed, as etcd does.
    pub peer_organization: Option<String>,
    /// Called after every applied batch (feeds the watch hub and lessor).
    pub apply_hook: Option<ApplyHook>,
    /// Fault injection shared by an in-process test cluster; `None` in production.
    pub faults: Option<Arc<Faults>>,
    /// While leader, promote caught-up learners to keep an odd number of voters (at most
    /// `membership::MAX_VOTERS`). Off by default so callers that manage membership by hand
    /// (the in-process cluster tests) are not raced; `k8sd datastore --initial-cluster` sets it.
    pub auto_promote: bool,
    /// Peer addresses (`host:port`) to ask for membership through `RaftNode::join` when this
    /// node has never belonged to a cluster and does not bootstrap one. Empty: wait to be added.
    pub join: Vec<String>,
    /// With `auto_promote`, how long a voter must be unreachable from the leader before a
    /// caught-up standby takes its place (the lost voter is demoted to learner, never removed).
    /// Default 5 minutes: a reboot, a kernel upgrade or a k8sd restart takes well under that,
    /// and swapping voters for a node that is about to come back only churns membership.
    /// etcd has no automatic replacement; dqlite's comparable role reshuffle waits on a
    /// similar order of minutes.
    pub voter_loss_delay: Duration,
    /// This node's lease deadlines (`node::Lessor`). While it leads, followers' lease
    /// keep-alives and time-to-live questions are answered from it over the `Lease` RPC.
    pub leases: Option<Arc<dyn LeaseClock>>,
}

impl std::fmt::Debug for RaftConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftConfig")
            .field("data_dir", &self.data_dir)
            .field("name", &self.name)
            .field("peer_addr", &self.peer_addr)
            .field("heartbeat", &self.heartbeat)
            .field("election_timeout", &self.election_timeout)
            .field("tls", &self.server_tls.is_some())
            .field("peer_organization", &self.peer_organization)
            .finish()
    }
}

impl RaftConfig {
    pub fn new(data_dir: impl Into<PathBuf>, name: &str, peer_addr: &str, client_addr: &str) -> Self {
        RaftConfig {
            data_dir: data_dir.into(),
            name: name.to_string(),
            peer_addr: peer_addr.to_string(),
            client_addr: client_addr.to_string(),
            heartbeat: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(250), Duration::from_millis(500)),
            snapshot_every: 50_000,
            logs_kept_after_snapshot: 1000,
            request_timeout: Duration::from_secs(10),
            server_tls: None,
            client_tls: None,
            peer_organization: None,
            apply_hook: None,
            faults: None,
            auto_promote: false,
            join: Vec::new(),
            voter_loss_delay: Duration::from_secs(300),
            leases: None,
        }
    }

    fn membership_policy(&self) -> membership::Policy {
        membership::Policy {
            health_window: self.election_timeout.1,
            voter_loss_delay: self.voter_loss_delay,
            change_timeout: self.request_timeout,
        }
    }

    fn openraft_config(&self) -> Result<openraft::Config, RaftNodeError> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let c = openraft::Config {
            cluster_name: "k8sd".into(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election_timeout.0),
            election_timeout_max: ms(self.election_timeout.1),
            // Snapshots are whole SQLite files; openraft's 200 ms default suits memory stores.
            install_snapshot_timeout: 60_000,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            max_in_snapshot_log_to_keep: self.logs_kept_after_snapshot,
            // A learner is promoted only once this close to the leader (docs/design/raft.md,
            // "Forming a cluster").
            replication_lag_threshold: 1000,
            enable_pre_vote: Some(true),
            // Standard Raft: a restarted leader stands for election like anyone else. openraft's
            // default lets it resume in its old term, but with asynchronous log flush a quorum
            // of followers can commit entries the leader never wrote; after kill -9 it would then
            // reuse their indexes in the same term and the replicas diverge (found by
            // tests/robustness: `run.sh -kinds kill-leader -downtime 1ms`).
            enable_leader_restore: Some(false),
            ..Default::default()
        };
        c.validate().map_err(|e| RaftNodeError::Config(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    #[error(transparent)]
    Log(#[from] LogStoreError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid raft configuration: {0}")]
    Config(String),
    #[error("cannot read or create the node id at {path}: {source}")]
    NodeId {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Fence(#[from] recover::FenceError),
    #[error("the node id file {path} is corrupt; restore it or move the data directory aside and rejoin")]
    NodeIdCorrupt { path: PathBuf },
    #[error("raft node stopped: {0}")]
    Stopped(String),
    #[error("no leader within {0:?}")]
    NoLeader(Duration),
    #[error("{what} did not finish within {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The write may or may not have been applied; only the dedup table can make a retry safe.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    #[error("membership change refused: {0}")]
    Membership(String),
    /// `remove_member` refused: unknown id, last voter, or no healthy quorum afterwards.
    #[error("cannot remove the member: {0}")]
    Remove(#[from] RemoveError),
    #[error("cannot join the cluster: {0}")]
    Join(String),
    #[error("peer service on {addr} failed: {message}")]
    Serve { addr: String, message: String },
}

/// A point-in-time view of this node's Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftStatus {
    pub id: u64,
    pub leader: Option<u64>,
    pub term: u64,
    pub state: ServerState,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Every member (voter or learner) and where it says it can be reached.
    pub members: BTreeMap<u64, NodeInfo>,
}

/// One member of the cluster, as an operator lists them (e.g. to map a name to the id that
/// `remove_member` takes). Names are labels and need not be unique; ids are identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub info: NodeInfo,
    /// A voter; otherwise a learner (a standby, or one still catching up).
    pub voter: bool,
}

impl RaftStatus {
    /// Every member, in id order.
    pub fn member_list(&self) -> Vec<Member> {
        self.members
            .iter()
            .map(|(id, info)| Member {
                id: *id,
                info: info.clone(),
                voter: self.voters.contains(id),
            })
            .collect()
    }
}

/// A running Raft node: openraft, its storage, and its peer service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RaftNode {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    id: u64,
    info: NodeInfo,
    raft: Raft,
    net: NetworkFactory,
    waiters: Arc<Waiters>,
    /// This process's proposer id (`Request::origin`), new at every start.
    origin: u64,
    next_request: AtomicU64,
    /// Followers' read-index callers waiting for a shared `ReadIndex` RPC.
    reads: Arc<std::sync::Mutex<ReadBatch>>,
    /// Request ids of proposals not yet answered; the smallest is the dedup low-water mark.
    inflight: Arc<std::sync::Mutex<BTreeSet<u64>>>,
    db_path: PathBuf,
    request_timeout: Duration,
    server: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
    /// Held by every membership change this node makes.
    membership: MembershipLock,
    policy: membership::Policy,
    leases: Option<Arc<dyn LeaseClock>>,
    election_timeout: Duration,
    /// Last AppendEntries accepted from a leader (see `has_leader`).
    contact: LeaderContact,
}

/// Load this node's id, or create one: a random non-zero u64, written atomically and durably
/// (`atomic_file`) before first use so that the id a peer learns can never change under it.
pub fn load_or_create_node_id(raft_dir: &Path) -> Result<u64, RaftNodeError> {
    let path = raft_dir.join("node-id");
    let io = |source| RaftNodeError::NodeId {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => u64::from_str_radix(s.trim(), 16)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| RaftNodeError::NodeIdCorrupt { path: path.clone() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(raft_dir).map_err(io)?;
            let id = rand::random::<u64>() >> 1 | 1;
            crate::atomic_file::replace(&path, format!("{id:016x}\n").as_bytes(), RAFT_FILE_MODE)
                .map_err(|e| io(e.source))?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

/// The mode of the small files under `raft/` (`node-id`, `removed-members`): readable by
/// anyone, as the ids they hold are no secret (every peer and `k8sd status` show them).
pub(crate) const RAFT_FILE_MODE: u32 = 0o644;

fn stopped(e: impl std::fmt::Display) -> RaftNodeError {
    RaftNodeError::Stopped(e.to_string())
}

/// Pause between retries while there is no leader to talk to (about one heartbeat).
const RETRY_PAUSE: Duration = Duration::from_millis(100);

impl RaftNode {
    /// Open storage under `config.data_dir`, start openraft and serve the peer service on
    /// `listener`. The node is not part of any cluster until `bootstrap` or a leader adds it.
    pub async fn start(
        config: RaftConfig,
        listener: tokio::net::TcpListener,
    ) -> Result<RaftNode, RaftNodeError> {
        let raft_dir = config.data_dir.join("raft");
        let id = load_or_create_node_id(&raft_dir)?;
        // Read before openraft starts: a garbled fence stops the node before it campaigns.
        let fenced = recover::read_fence(&raft_dir)?;
        let log = LogStore::open(&raft_dir)?;
        let waiters = Arc::new(Waiters::default());
        let db_path = config.data_dir.join("state.db");
        // A fresh proposer id per start: request ids restart, so they must not collide with
        // dedup rows a previous run of this node left behind.
        let origin = rand::random::<u64>() >> 1 | 1;
        let sm = StateMachine::open(
            origin,
            &db_path,
            &raft_dir.join("snapshots"),
            waiters.clone(),
            config.apply_hook.clone(),
        )?;
        let net = NetworkFactory::new(id, config.client_tls.clone()).with_faults(config.faults.clone());
        // openraft recovers here: it reads the vote and log state, restores the state machine
        // from the current snapshot if that is newer than `applied_log_id`, and re-applies
        // the log up to the saved committed id.
        let raft = Raft::new(id, Arc::new(config.openraft_config()?), net.clone(), log, sm)
            .await
            .map_err(stopped)?;

        // The peer service starts only after Raft is up, so no RPC can reach a half-built node.
        // Half-received snapshots from before a crash are useless: the sender starts over.
        let _ = std::fs::remove_dir_all(raft_dir.join("inbox"));
        let membership_lock = MembershipLock::default();
        let contact = LeaderContact::default();
        let svc = PeerService::new(
            raft.clone(),
            raft_dir.join("inbox"),
            membership_lock.clone(),
            contact.clone(),
        )
        .with_policy(config.membership_policy())
        .with_leases(config.leases.clone())
        .with_fenced(fenced);
        let mut builder = Server::builder();
        if let Some(tls) = config.server_tls.clone() {
            builder = builder.tls_config(tls).map_err(|e| RaftNodeError::Serve {
                addr: config.peer_addr.clone(),
                message: e.to_string(),
            })?;
        }
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
            s.inspect(|tcp| {
                let _ = tcp.set_nodelay(true);
            })
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let addr = config.peer_addr.clone();
        let auth = peer_auth::PeerAuth {
            organization: config.peer_organization.clone(),
        };
        let router = builder.add_service(tonic::service::interceptor::InterceptedService::new(
            pb::raft_peer_server::RaftPeerServer::new(svc)
                .max_decoding_message_size(network::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(network::MAX_MESSAGE_BYTES),
            auth,
        ));
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = stop_rx.await;
            };
            if let Err(e) = router.serve_with_incoming_shutdown(incoming, stop).await {
                tracing::error!(addr = %addr, error = %e, "raft peer service stopped");
            }
        });
        let info = NodeInfo {
            name: config.name.clone(),
            peer_addr: config.peer_addr.clone(),
            client_addr: config.client_addr.clone(),
        };
        let node = RaftNode {
            inner: Arc::new(Inner {
                id,
                info,
                raft,
                net,
                waiters,
                origin,
                next_request: AtomicU64::new(1),
                inflight: Arc::default(),
                reads: Arc::default(),
                db_path,
                request_timeout: config.request_timeout,
                server: Mutex::new(Some((stop_tx, task))),
                membership: membership_lock,
                policy: config.membership_policy(),
                leases: config.leases.clone(),
                election_timeout: config.election_timeout.1,
                contact,
            }),
        };
        if config.auto_promote {
            node.spawn_promoter();
        }
        node.spawn_leader_watch();
        Ok(node)
    }

    /// Count leader changes for etcd's `leader_changes_seen_total`: every time this node
    /// learns of a leader other than the last one it knew (the first leader included, as etcd
    /// counts). Ends when Raft stops.
    fn spawn_leader_watch(&self) {
        let mut rx = self.inner.raft.metrics();
        tokio::spawn(async move {
            let mut last = None;
            loop {
                let leader = rx.borrow_watched().current_leader;
                if leader.is_some() && leader != last {
                    crate::metrics::etcd::ETCD.leader_changes.inc();
                    last = leader;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// The commit and apply indexes of this node's log.
    pub fn commit_positions(&self) -> (u64, u64) {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        (
            m.local_committed.map_or(0, |l| l.index),
            m.last_applied.map_or(0, |l| l.index),
        )
    }

    /// While leader, check every second whether learners are due for promotion (a learner
    /// added before a leader change, or one that was down when it was added, is promoted by
    /// whichever node leads later), and whether a voter has been unreachable for
    /// `voter_loss_delay` and a standby should take its place. Ends when the last handle is
    /// dropped or Raft stops.
    fn spawn_promoter(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut lost = membership::LossTracker::default();
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.server.lock().await.is_none() {
                    return; // shut down
                }
                membership::promote_if_due(&inner.raft, &inner.membership).await;
                membership::replace_lost_voters(&inner.raft, &inner.membership, &inner.policy, &mut lost)
                    .await;
            }
        });
    }

    /// Remove member `id` from the cluster. Callable on any member: a follower forwards the
    /// request to the leader over the peer service (mTLS), following leader hints.
    ///
    /// A learner is removed at once. A voter is replaced by a caught-up standby learner when
    /// one exists (the voter count stays the same, in one joint change); otherwise the voter
    /// set shrinks. Refused with `RemoveError::Unhealthy` when the new voter set would not
    /// have a quorum of members the leader heard from within an election timeout (`force`
    /// skips this check), and with `LastVoter` when no voter would remain (even with `force`).
    /// Removing the leader first hands leadership to another voter, which then removes it.
    ///
    /// The removed node is not stopped; the caller shuts it down. A forced change whose new
    /// quorum is unreachable stays in flight after the `Timeout` error and completes when
    /// enough members are back.
    pub async fn remove_member(&self, id: u64, force: bool) -> Result<RemoveOutcome, RaftNodeError> {
        match self.remove_request(id, force, false).await? {
            Some(outcome) => Ok(outcome),
            // Only a dry run is answered `Allowed`; a leader that did not remove must say why.
            None => Err(RaftNodeError::Membership(
                "the leader answered a removal as if it were a dry run".into(),
            )),
        }
    }

    /// Ask the leader whether removing member `id` without `force` would go ahead now, by the
    /// same rules as [`Self::remove_member`], changing nothing: `Ok` if it would, the refusal
    /// (`RemoveError::Unhealthy`, `LastVoter`, ...) otherwise. Used before anything else is
    /// undone, so a refused `leave` or `reset` leaves the node as it was.
    pub async fn check_removal(&self, id: u64) -> Result<(), RaftNodeError> {
        self.remove_request(id, false, true).await.map(|_| ())
    }

    /// One `Remove` request, routed to the leader; `None` for an allowed dry run.
    async fn remove_request(
        &self,
        id: u64,
        force: bool,
        dry_run: bool,
    ) -> Result<Option<RemoveOutcome>, RaftNodeError> {
        let inner = &self.inner;
        let req = RemoveRequest { id, force, dry_run };
        // A leader transfer plus a joint change can take two request timeouts.
        let deadline = Instant::now() + inner.request_timeout * 3;
        let mut hint: Option<(u64, NodeInfo)> = None;
        let mut last = String::from("no leader");
        loop {
            let st = self.status();
            let target = hint
                .take()
                .or_else(|| st.leader.and_then(|l| st.members.get(&l).map(|n| (l, n.clone()))));
            let reply = match target {
                Some((l, _)) if l == inner.id => Some(
                    membership::handle_remove(&inner.raft, &inner.membership, &inner.policy, req.clone())
                        .await,
                ),
                Some((l, node)) if !inner.net.blocks(l) => {
                    let ttl = deadline.saturating_duration_since(Instant::now());
                    match inner.net.client(&node.peer_addr) {
                        Ok(mut c) => match network::call(&mut c, Method::Remove, &req, ttl).await {
                            Ok(reply) => Some(reply),
                            Err(e) => {
                                last = format!("{}: {e:?}", node.peer_addr);
                                None
                            }
                        },
                        Err(e) => {
                            last = format!("{}: {e}", node.peer_addr);
                            None
                        }
                    }
                }
                _ => None,
            };
            match reply {
                Some(RemoveReply::Removed(outcome)) => return Ok(Some(outcome)),
                Some(RemoveReply::Allowed) => return Ok(None),
                Some(RemoveReply::Refused(e)) => return Err(e.into()),
                Some(RemoveReply::InFlight { reason }) => {
                    return Err(RaftNodeError::Membership(reason));
                }
                Some(RemoveReply::NotLeader { leader }) => {
                    last = "asked a node that is not the leader".into();
                    hint = leader;
                }
                Some(RemoveReply::Retry { reason }) => last = reason,
                None => {}
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                tracing::warn!(member = %format!("{id:016x}"), reason = %last, "member removal gave up");
                return Err(RaftNodeError::Timeout {
                    what: "member removal",
                    after: inner.request_timeout * 3,
                });
            }
            tokio::time::sleep(if hint.is_some() {
                RETRY_PAUSE / 2
            } else {
                RETRY_PAUSE
            })
            .await;
        }
    }

    /// Renew lease `id` on the leader's lease clock (forwarded when this node is not the
    /// leader): its TTL, or `None` if the leader does not know the lease. Only the leader
    /// expires leases, so renewing anywhere else would not keep a lease alive.
    pub async fn renew_lease(&self, id: i64) -> Result<Option<i64>, RaftNodeError> {
        match self.lease_call(LeaseRequest::Renew { id }).await? {
            LeaseReply::Renewed { ttl } => Ok(ttl),
            other => Err(RaftNodeError::Stopped(format!(
                "unexpected lease reply {other:?}"
            ))),
        }
    }

    /// Remaining seconds and granted TTL of lease `id` by the leader's clock.
    pub async fn lease_remaining(&self, id: i64) -> Result<Option<(i64, i64)>, RaftNodeError> {
        match self.lease_call(LeaseRequest::Remaining { id }).await? {
            LeaseReply::Remaining { left } => Ok(left),
            other => Err(RaftNodeError::Stopped(format!(
                "unexpected lease reply {other:?}"
            ))),
        }
    }

    /// Ask the leader's lease clock (this node's own when it leads), retrying through leader
    /// changes until `request_timeout`.
    async fn lease_call(&self, req: LeaseRequest) -> Result<LeaseReply, RaftNodeError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.request_timeout;
        loop {
            let st = self.status();
            match st.leader {
                Some(l) if l == inner.id => {
                    let clock = inner
                        .leases
                        .as_ref()
                        .ok_or_else(|| RaftNodeError::Config("this node keeps no lease clock".into()))?;
                    return Ok(req.answer(clock.as_ref()));
                }
                Some(l) if !inner.net.blocks(l) => {
                    if let Some(node) = st.members.get(&l)
                        && let Ok(mut c) = inner.net.client(&node.peer_addr)
                    {
                        let ttl = deadline.saturating_duration_since(Instant::now());
                        let reply: Result<LeaseReply, CallError> =
                            network::call(&mut c, Method::Lease, &req, ttl).await;
                        match reply {
                            Ok(LeaseReply::NotLeader { .. }) | Err(_) => {}
                            Ok(answer) => return Ok(answer),
                        }
                    }
                }
                _ => {}
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(RaftNodeError::NoLeader(inner.request_timeout));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Whether this node already belongs to a cluster (its log holds a membership), so it must
    /// neither bootstrap nor join again: it rejoins as itself by talking Raft to its peers.
    pub async fn is_initialized(&self) -> Result<bool, RaftNodeError> {
        self.inner.raft.is_initialized().await.map_err(stopped)
    }

    /// Ask the peers at `seeds` (`host:port` of their peer services) to add this node under
    /// its own id, following leader hints, until it is a member or `timeout` passes. Safe to
    /// repeat: a member is told so at once.
    pub async fn join(&self, seeds: &[String], timeout: Duration) -> Result<(), RaftNodeError> {
        let inner = &self.inner;
        if seeds.is_empty() {
            return Err(RaftNodeError::Join("no peers to ask".into()));
        }
        let req = JoinRequest {
            id: inner.id,
            info: inner.info.clone(),
            probe: false,
        };
        let deadline = Instant::now() + timeout;
        let mut hint: Option<String> = None;
        let mut next = 0usize;
        loop {
            let addr = hint.take().unwrap_or_else(|| {
                next += 1;
                seeds[(next - 1) % seeds.len()].clone()
            });
            // The leader may wait for this node to catch up before answering.
            let ttl = deadline
                .saturating_duration_since(Instant::now())
                .min(Duration::from_secs(40));
            let reply: Result<JoinReply, String> = match inner.net.client(&addr) {
                Ok(mut c) => network::call(&mut c, Method::Join, &req, ttl)
                    .await
                    .map_err(|e| format!("{e:?}")),
                Err(e) => Err(e.to_string()),
            };
            let last = match reply {
                Ok(JoinReply::Member { voter }) => {
                    tracing::info!(via = %addr, voter, "joined the cluster");
                    return Ok(());
                }
                Ok(JoinReply::Refused { reason }) => return Err(RaftNodeError::Join(reason)),
                Ok(JoinReply::NotLeader { leader }) => {
                    hint = leader
                        .map(|n| n.peer_addr)
                        .filter(|a| *a != addr && *a != inner.info.peer_addr);
                    format!("{addr} is not the leader")
                }
                Ok(JoinReply::Retry { reason }) => format!("{addr}: {reason}"),
                Ok(JoinReply::NotInCluster | JoinReply::InCluster) => {
                    format!("{addr} is not in a cluster yet")
                }
                Err(e) => format!("{addr}: {e}"),
            };
            if Instant::now() >= deadline {
                return Err(RaftNodeError::Join(last));
            }
            tracing::debug!(reason = %last, "join not done yet; retrying");
            tokio::time::sleep(Duration::from_millis(if hint.is_some() { 50 } else { 500 })).await;
        }
    }

    /// Whether any of the peers at `seeds` already belongs to a cluster (one quick probe each;
    /// unreachable peers count as no). A first member asks before it bootstraps, so that one
    /// restarted with a wiped data dir joins the running cluster (where a duplicate peer
    /// address is refused) instead of founding a second one next to it.
    pub async fn cluster_exists(&self, seeds: &[String]) -> bool {
        let inner = &self.inner;
        let req = JoinRequest {
            id: inner.id,
            info: inner.info.clone(),
            probe: true,
        };
        for addr in seeds {
            let Ok(mut c) = inner.net.client(addr) else {
                continue;
            };
            let reply: Result<JoinReply, CallError> =
                network::call(&mut c, Method::Join, &req, Duration::from_secs(2)).await;
            if let Ok(JoinReply::InCluster | JoinReply::NotLeader { .. } | JoinReply::Member { .. }) = reply {
                tracing::info!(peer = %addr, "a cluster already exists; joining it instead of bootstrapping");
                return true;
            }
        }
        false
    }

    /// The upper end of the randomised election timeout.
    pub fn election_timeout(&self) -> Duration {
        self.inner.election_timeout
    }

    /// Whether this node is in touch with a leader now: as leader, a quorum acknowledged it
    /// within an election timeout (or it is the only voter); otherwise the leader's
    /// AppendEntries arrived within one. `status().leader` alone is not enough: openraft keeps
    /// naming the last leader on a follower that is cut off from the cluster.
    pub fn has_leader(&self) -> bool {
        let window = self.inner.election_timeout;
        let m = self.inner.raft.metrics().borrow_watched().clone();
        match m.current_leader {
            None => false,
            Some(l) if l == m.id => {
                let sole_voter = m.membership_config.membership().voter_ids().all(|v| v == m.id);
                sole_voter
                    || m.last_quorum_acked
                        .is_some_and(|t| openraft::Instant::elapsed(&*t) < window)
            }
            Some(_) => self
                .inner
                .contact
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .is_some_and(|t| t.elapsed() < window),
        }
    }

    /// The current term, cheaply (for response headers).
    pub fn term(&self) -> u64 {
        self.inner.raft.metrics().borrow_watched().current_term
    }

    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn info(&self) -> &NodeInfo {
        &self.inner.info
    }

    /// The state-machine database, for `datastore::Reader`s.
    pub fn db_path(&self) -> &Path {
        &self.inner.db_path
    }

    /// The underlying openraft handle, for what this wrapper does not cover yet.
    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// Make this node a one-member cluster. Does nothing if it already belongs to one.
    pub async fn bootstrap(&self) -> Result<(), RaftNodeError> {
        if self.inner.raft.is_initialized().await.map_err(stopped)? {
            return Ok(());
        }
        let members = BTreeMap::from([(self.inner.id, self.inner.info.clone())]);
        self.inner
            .raft
            .initialize(members)
            .await
            .map_err(|e| RaftNodeError::Membership(e.to_string()))
    }

    /// Whether this member's log must be folded into a snapshot before anyone joins: it is the
    /// group's only voter, its log was never purged, and its store holds revisions (`rev > 1`).
    /// That is a group founded on a restored store (`k8sd restore`), whose log starts at the
    /// bootstrap entry and does not carry the data; also a young one-node cluster, for which a
    /// snapshot is merely early compaction.
    pub fn log_lacks_store_data(&self, store_rev: i64) -> bool {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        store_rev > 1 && m.purged.is_none() && voters == [self.inner.id]
    }

    /// Snapshot everything applied and purge the log the snapshot covers, so a member that
    /// joins later receives the store as a snapshot. Replaying the log from index 0 instead
    /// would give it an empty store with other revisions (see `log_lacks_store_data`).
    pub async fn snapshot_and_purge_log(&self, timeout: Duration) -> Result<(), RaftNodeError> {
        let raft = &self.inner.raft;
        let waited = |e: openraft::metrics::WaitError| RaftNodeError::Stopped(e.to_string());
        let m = raft
            .wait(Some(timeout))
            .metrics(|m| m.last_applied.is_some(), "the bootstrap entry applied")
            .await
            .map_err(waited)?;
        let upto = m.last_applied.map(|l| l.index).unwrap_or(0);
        raft.trigger().snapshot().await.map_err(stopped)?;
        raft.wait(Some(timeout))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= upto),
                "a snapshot of the whole store",
            )
            .await
            .map_err(waited)?;
        raft.trigger().purge_log(upto).await.map_err(stopped)?;
        raft.wait(Some(timeout))
            .metrics(|m| m.purged.is_some_and(|p| p.index >= upto), "the log purged")
            .await
            .map_err(waited)?;
        tracing::info!(
            upto,
            "folded the log into a snapshot: joining members receive the store whole"
        );
        Ok(())
    }

    /// Propose a command and return its outcome: the command output, or the client error it
    /// caused (a failed compare is not an error at all: it is an output with `succeeded =
    /// false`). The outer error is about Raft: no leader within the deadline, a stopped node,
    /// or an outcome still unknown at the deadline.
    ///
    /// On a follower the proposal is forwarded to the leader, which appends it; the outcome is
    /// then taken from this node's own apply of the entry, so the caller's next local read
    /// already sees its write. Through leader changes the same request (same request id) is
    /// re-sent until `request_timeout`; the state machine's dedup table applies it at most
    /// once and answers a repeat with the first outcome.
    pub async fn propose(&self, cmd: Command) -> Result<Result<CommandOutput, StoreError>, RaftNodeError> {
        let inner = &self.inner;
        let request_id = inner.next_request.fetch_add(1, Ordering::Relaxed);
        // While this guard lives, `request_id` holds the low-water mark down, so the dedup row
        // of this very request can never be pruned before the last retry has been answered.
        let inflight = Inflight::new(&inner.inflight, request_id);
        let low_water = inflight.low_water();
        let request = Request {
            origin: inner.origin,
            request_id,
            low_water,
            cmd,
        };
        let deadline = Instant::now() + inner.request_timeout;
        // Set once an attempt may have been appended somewhere. From then on a retry is only
        // safe because of dedup, and a give-up must say "unknown", never "not applied".
        let mut unknown: Option<String> = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let started = std::time::Instant::now();
            let written = tokio::time::timeout(left, inner.raft.client_write(request.clone())).await;
            let Ok(written) = written else {
                // Appended here as leader but not committed in time (e.g. this leader lost its
                // quorum): the entry may still commit later.
                return Err(RaftNodeError::Ambiguous(
                    "not committed within the deadline".into(),
                ));
            };
            let leader = match written {
                Ok(resp) => {
                    stages::finished(resp.log_id.index, started);
                    return outcome(resp.data);
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                    f.leader_id.zip(f.leader_node)
                }
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(f))) => {
                    // It may still commit through the new leader; dedup makes the retry safe.
                    unknown = Some(format!("log entry discarded on leader change: {f}"));
                    f.leader_id.zip(f.leader_node)
                }
                Err(e) => return Err(stopped(e)),
            };
            if let Some((id, node)) = leader
                && id != inner.id
                && !inner.net.blocks(id)
            {
                match self.forward(&request, &node, deadline).await {
                    Ok(Some(result)) => return Ok(result),
                    Ok(None) => {}
                    Err(RaftNodeError::Ambiguous(why)) => unknown = Some(why),
                    Err(e) => return Err(e),
                }
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(match unknown {
                    Some(why) => RaftNodeError::Ambiguous(why),
                    None => RaftNodeError::NoLeader(inner.request_timeout),
                });
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// Forward `request` to the leader at `node`. `Ok(None)` means it was not the leader
    /// (nothing was appended, so a retry is safe); any failure after the request may have
    /// been appended is `Ambiguous`.
    async fn forward(
        &self,
        request: &Request,
        node: &NodeInfo,
        deadline: Instant,
    ) -> Result<Option<Result<CommandOutput, StoreError>>, RaftNodeError> {
        let inner = &self.inner;
        let mut client = inner
            .net
            .client(&node.peer_addr)
            .map_err(|e| RaftNodeError::Ambiguous(e.to_string()))?;
        // Register before sending: the entry may be applied here before the reply arrives.
        let waiter = inner.waiters.register(request.request_id);
        let ttl = deadline.saturating_duration_since(Instant::now());
        let reply: Result<ForwardReply, CallError> =
            network::call(&mut client, Method::Forward, request, ttl).await;
        match reply {
            Ok(ForwardReply::Committed { .. }) => {}
            Ok(ForwardReply::NotLeader { .. }) => {
                inner.waiters.cancel(request.request_id);
                return Ok(None);
            }
            Err(e) => {
                inner.waiters.cancel(request.request_id);
                return Err(RaftNodeError::Ambiguous(format!(
                    "forwarding to {}: {e:?}",
                    node.peer_addr
                )));
            }
        }
        // Committed on the leader; this node applies it within about a heartbeat.
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, waiter).await {
            Ok(Ok(resp)) => outcome(resp).map(Some),
            Ok(Err(_)) | Err(_) => {
                inner.waiters.cancel(request.request_id);
                Err(RaftNodeError::Ambiguous(
                    "committed, but not applied locally in time".into(),
                ))
            }
        }
    }

    /// Wait until this node's state machine reflects every write acknowledged anywhere in
    /// the cluster before the call (ReadIndex), so a local read that follows is linearizable.
    /// Returns the read index. On a follower the index comes from the leader over the peer
    /// service; the wait itself is local.
    pub async fn linearizable_barrier(&self) -> Result<u64, RaftNodeError> {
        let inner = &self.inner;
        let deadline = Instant::now() + inner.request_timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let lin = tokio::time::timeout(left, inner.raft.get_read_linearizer(ReadPolicy::ReadIndex)).await;
            let Ok(lin) = lin else {
                return Err(RaftNodeError::Timeout {
                    what: "confirming leadership for a read index",
                    after: inner.request_timeout,
                });
            };
            match lin {
                // We are the leader and a quorum just confirmed it: every write acknowledged
                // before this call is at or below `index`; wait until we have applied it.
                Ok(lin) => {
                    let index = lin.read_log_id().index();
                    return match lin
                        .try_await_ready(&inner.raft, Some(left))
                        .await
                        .map_err(stopped)?
                    {
                        Ok(_) => Ok(index),
                        Err(_) => Err(RaftNodeError::Timeout {
                            what: "local apply up to the read index",
                            after: inner.request_timeout,
                        }),
                    };
                }
                // A follower: the leader does the quorum round trip, we only wait for our own
                // apply. A failed or refused call falls through to the retry below.
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                    if let (Some(id), Some(node)) = (f.leader_id, f.leader_node)
                        && id != inner.id
                        && !inner.net.blocks(id)
                        && let Some(index) = self.remote_read_index(&node.peer_addr, left).await
                    {
                        let left = deadline.saturating_duration_since(Instant::now());
                        inner
                            .raft
                            .wait(Some(left))
                            .applied_index_at_least(Some(index), "read index")
                            .await
                            .map_err(|_| RaftNodeError::Timeout {
                                what: "local apply up to the read index",
                                after: inner.request_timeout,
                            })?;
                        return Ok(index);
                    }
                }
                Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {}
                Err(e) => return Err(stopped(e)),
            }
            if Instant::now() + RETRY_PAUSE >= deadline {
                return Err(RaftNodeError::NoLeader(inner.request_timeout));
            }
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }

    /// A read index from the leader at `addr`, sharing one RPC among concurrent callers.
    ///
    /// Single flight: the first caller starts a driver task; callers that arrive while an RPC
    /// is in flight wait for the *next* one. An index is only valid for callers that arrived
    /// before its RPC started (the leader confirms leadership after the request reaches it),
    /// which is exactly who each group contains. `None` means no index this time: retry.
    async fn remote_read_index(&self, addr: &str, ttl: Duration) -> Option<u64> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut b = self.inner.reads.lock().unwrap_or_else(|p| p.into_inner());
            b.waiting.push(tx);
            b.addr = addr.to_string();
            !std::mem::replace(&mut b.running, true)
        };
        if start {
            let (reads, net) = (self.inner.reads.clone(), self.inner.net.clone());
            tokio::spawn(async move {
                loop {
                    let (group, addr) = {
                        let mut b = reads.lock().unwrap_or_else(|p| p.into_inner());
                        if b.waiting.is_empty() {
                            b.running = false;
                            return;
                        }
                        (std::mem::take(&mut b.waiting), b.addr.clone())
                    };
                    let index = match net.client(&addr) {
                        Ok(mut client) => {
                            let reply: Result<ReadIndexReply, CallError> =
                                network::call(&mut client, Method::ReadIndex, &(), ttl).await;
                            match reply {
                                Ok(ReadIndexReply::Index { index }) => Some(index),
                                _ => None,
                            }
                        }
                        Err(_) => None,
                    };
                    for w in group {
                        let _ = w.send(index);
                    }
                }
            });
        }
        rx.await.ok().flatten()
    }

    /// After a restart the state machine may be behind what it served before (it is not
    /// fsync'd per apply). Wait until it has caught up with a cluster commit covering this
    /// node's log before serving reads or watches.
    pub async fn wait_for_recovery(&self, timeout: Duration) -> Result<(), RaftNodeError> {
        self.inner
            .raft
            .wait_for_recovery(Some(timeout))
            .await
            .map(|_| ())
            .map_err(|_| RaftNodeError::Timeout {
                what: "recovery",
                after: timeout,
            })
    }

    /// Add a node as a non-voting learner and wait until it has caught up (leader only).
    pub async fn add_learner(&self, id: u64, info: NodeInfo) -> Result<(), RaftNodeError> {
        self.inner
            .raft
            .add_learner(id, info, true)
            .await
            .map(|_| ())
            .map_err(membership_err)
    }

    /// Replace the voter set (leader only). Every id must already be a member (learner or
    /// voter). openraft goes through a joint configuration; one change at a time.
    pub async fn change_membership(&self, voters: BTreeSet<u64>) -> Result<(), RaftNodeError> {
        self.inner
            .raft
            .change_membership(voters, false)
            .await
            .map(|_| ())
            .map_err(membership_err)
    }

    /// Ask the leader (this node) to hand leadership to `to`, e.g. on graceful shutdown.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), RaftNodeError> {
        self.inner
            .raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(stopped)
    }

    /// Leader, term, log and apply positions, membership.
    pub fn status(&self) -> RaftStatus {
        let m = self.inner.raft.metrics().borrow_watched().clone();
        let cfg = m.membership_config.membership();
        RaftStatus {
            id: m.id,
            leader: m.current_leader,
            term: m.current_term,
            state: m.state,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters: cfg.voter_ids().collect(),
            learners: cfg.learner_ids().collect(),
            members: cfg.nodes().map(|(id, n)| (*id, n.clone())).collect(),
        }
    }

    /// Stop openraft and the peer service. The node's files stay; `start` resumes it.
    pub async fn shutdown(&self) -> Result<(), RaftNodeError> {
        let server = self.inner.server.lock().await.take();
        let result = self.inner.raft.shutdown().await.map_err(stopped);
        if let Some((stop, mut task)) = server {
            let _ = stop.send(());
            // Graceful stop waits for open streams; a peer that never lets go must not keep
            // a shutdown (or a restart on the same port) waiting.
            if tokio::time::timeout(Duration::from_secs(3), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
        result
    }
}

/// The group of read-index callers for the next `ReadIndex` RPC.
#[derive(Debug, Default)]
struct ReadBatch {
    waiting: Vec<oneshot::Sender<Option<u64>>>,
    /// The leader address the latest caller saw; the next RPC goes there.
    addr: String,
    /// Whether a driver task is running (it exits when no one is waiting).
    running: bool,
}

/// Marks a request id in flight for as long as the guard lives.
struct Inflight {
    set: Arc<std::sync::Mutex<BTreeSet<u64>>>,
    id: u64,
}

impl Inflight {
    fn new(set: &Arc<std::sync::Mutex<BTreeSet<u64>>>, id: u64) -> Self {
        set.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
        Inflight { set: set.clone(), id }
    }

    /// The smallest id still in flight (never above our own).
    fn low_water(&self) -> u64 {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first()
            .copied()
            .unwrap_or(self.id)
    }
}

impl Drop for Inflight {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

fn membership_err(e: impl std::fmt::Display) -> RaftNodeError {
    RaftNodeError::Membership(e.to_string())
}

/// A normal entry always produces `Applied` or `Rejected`; `Empty` would be a bug upstream.
fn outcome(resp: Response) -> Result<Result<CommandOutput, StoreError>, RaftNodeError> {
    match resp.into_result() {
        Ok(Some(out)) => Ok(Ok(out)),
        Ok(None) => Err(RaftNodeError::Stopped(
            "a command entry produced no output".into(),
        )),
        Err(e) => Ok(Err(e)),
    }
}
