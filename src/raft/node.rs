//! A Raft node's lifecycle: open storage, start openraft and the peer service, the background
//! tasks that run while it lives (leader-change counting, learner promotion), its state as
//! cheap reads of openraft's metrics, and shutdown. The other `impl RaftNode` blocks are by
//! role: `propose.rs` (writes), `read_index.rs` (linearizable reads), `admin.rs` (membership
//! and status), `lease.rs` (the leader's lease clock).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures::StreamExt;
use openraft::async_runtime::WatchReceiver;
use tokio::sync::{Mutex, oneshot};
use tonic::transport::Server;

use super::apply_thread::ApplyThread;
use super::config::RaftConfig;
use super::error::{RaftNodeError, stopped};
use super::full_disk::FullDisk;
use super::log_store::LogStore;
use super::membership::{self, MembershipLock};
use super::membership_plan::LossTracker;
use super::node_id::load_or_create_node_id;
use super::read_index::ReadBatch;
use super::service::{LeaderContact, LeaseClock, PeerService};
use super::state_machine::{Raft, StateMachine, Waiters};
use super::transport::{self, NetworkFactory};
use super::types::NodeInfo;
use super::{pb, peer_auth, recover};

/// A running Raft node: openraft, its storage, and its peer service. Cheap to clone.
#[derive(Clone, Debug)]
pub struct RaftNode {
    pub(super) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) id: u64,
    pub(super) info: NodeInfo,
    pub(super) raft: Raft,
    pub(super) net: NetworkFactory,
    pub(super) waiters: Arc<Waiters>,
    /// This process's proposer id (`Request::origin`), new at every start.
    pub(super) origin: u64,
    pub(super) next_request: AtomicU64,
    /// Followers' read-index callers waiting for a shared `ReadIndex` RPC.
    pub(super) reads: Arc<std::sync::Mutex<ReadBatch>>,
    /// Request ids of proposals not yet answered; the smallest is the dedup low-water mark.
    pub(super) inflight: Arc<std::sync::Mutex<BTreeSet<u64>>>,
    pub(super) db_path: PathBuf,
    pub(super) request_timeout: Duration,
    pub(super) server: Mutex<Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>>,
    /// Held by every membership change this node makes.
    pub(super) membership: MembershipLock,
    pub(super) policy: membership::Policy,
    pub(super) leases: Option<Arc<dyn LeaseClock>>,
    pub(super) election_timeout: Duration,
    /// Last AppendEntries accepted from a leader (see `has_leader`).
    pub(super) contact: LeaderContact,
    /// Whether the log writer or the state machine waits for room; closed by `shutdown`.
    pub(super) disk: Arc<FullDisk>,
    /// The state machine's apply thread: how far the store itself has applied the log.
    pub(super) apply: ApplyThread,
}

/// How long a leader stuck on a full disk waits for a transfer it asked for before it asks again.
const HANDOVER_AGAIN: Duration = Duration::from_secs(5);

/// Pause between retries while there is no leader to talk to (about one heartbeat).
pub(super) const RETRY_PAUSE: Duration = Duration::from_millis(100);

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
        let disk = FullDisk::new(config.on_disk_full.clone());
        let log = LogStore::open_with(&raft_dir, disk.clone())?;
        let waiters = Arc::new(Waiters::default());
        let db_path = config.data_dir.join("state.db");
        // A fresh proposer id per start: request ids restart, so they must not collide with
        // dedup rows a previous run of this node left behind.
        let origin = rand::random::<u64>() >> 1 | 1;
        let sm = StateMachine::open_with(
            origin,
            &db_path,
            &raft_dir.join("snapshots"),
            waiters.clone(),
            config.apply_hook.clone(),
            disk.clone(),
        )?;
        let apply = sm.apply_thread();
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
                .max_decoding_message_size(transport::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(transport::MAX_MESSAGE_BYTES),
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
                disk,
                apply,
            }),
        };
        if config.auto_promote {
            node.spawn_promoter();
        }
        node.spawn_leader_watch();
        node.spawn_full_disk_handover();
        Ok(node)
    }

    /// While leader and unable to write (its log writer or state machine waits for room), hand
    /// leadership to the voter that holds the most of the log, checking every second. A leader
    /// stuck on its own disk still heartbeats, so without this the others never elect anyone:
    /// entries it appends can commit through the followers, but it cannot apply them, so no
    /// write is answered. Once another member leads, writes through the members with room
    /// succeed, and this node is a follower that catches up when space is freed. It cannot win
    /// an election meanwhile: a candidate must first write its vote. etcd stops a member whose
    /// WAL cannot be written (`docs/operations.md`, "Full disks"); the others then elect a
    /// leader as they do here. Ends when the node shuts down.
    fn spawn_full_disk_handover(&self) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            // The last transfer asked for in this stretch of waiting. A stuck core may take
            // its time to act on one (it queues behind a vote write), so it is asked again
            // only every few seconds, and the warning is said once per stretch.
            let mut asked: Option<tokio::time::Instant> = None;
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                if inner.disk.closing() {
                    return;
                }
                if !inner.disk.is_waiting() {
                    asked = None;
                    continue;
                }
                let m = inner.raft.metrics().borrow_watched().clone();
                if m.current_leader != Some(m.id) || asked.is_some_and(|t| t.elapsed() < HANDOVER_AGAIN) {
                    continue;
                }
                let Some(to) = handover_target(&m) else {
                    continue; // the only voter: it refuses writes with NOSPACE until space is freed
                };
                if asked.is_none() {
                    tracing::warn!(
                        to,
                        "this leader's disk is full: handing leadership to a member that can write"
                    );
                }
                asked = Some(tokio::time::Instant::now());
                if let Err(e) = inner.raft.trigger().transfer_leader(to).await {
                    tracing::warn!(error = %e, "leadership transfer off a full disk failed");
                }
            }
        });
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
            let mut lost = LossTracker::default();
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

    /// Whether this node already belongs to a cluster (its log holds a membership), so it must
    /// neither bootstrap nor join again: it rejoins as itself by talking Raft to its peers.
    pub async fn is_initialized(&self) -> Result<bool, RaftNodeError> {
        self.inner.raft.is_initialized().await.map_err(stopped)
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

    /// After a restart the state machine may be behind what it served before (it is not
    /// fsync'd per apply). Wait until it has caught up with a cluster commit covering this
    /// node's log before serving reads or watches.
    pub async fn wait_for_recovery(&self, timeout: Duration) -> Result<(), RaftNodeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let recovered = self
            .inner
            .raft
            .wait_for_recovery(Some(timeout))
            .await
            .map_err(|_| RaftNodeError::Timeout {
                what: "recovery",
                after: timeout,
            })?;
        // openraft counts a range applied once it is queued for the apply thread; the store
        // itself must have it before this node serves from it.
        let index = recovered.last_applied.map_or(0, |l| l.index);
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.wait_store_applied(index, left, "recovery: the store applying the log")
            .await
    }

    /// Stop openraft and the peer service. The node's files stay; `start` resumes it.
    ///
    /// A write waiting for room on a full disk gives up first (`FullDisk::close`) and is
    /// reported failed, so the stop does not wait for space; a write that fails this way was
    /// never acknowledged.
    pub async fn shutdown(&self) -> Result<(), RaftNodeError> {
        self.inner.disk.close();
        let server = self.inner.server.lock().await.take();
        let result = self.inner.raft.shutdown().await.map_err(stopped);
        // openraft has stopped handing out ranges; what it queued is applied, and a restart in
        // this process never meets the old thread still writing.
        self.inner.apply.stop().await;
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

/// The voter other than the leader itself that holds the most of the log (by the leader's
/// replication progress), or `None` when the leader is the only voter.
fn handover_target(m: &openraft::RaftMetrics<super::types::TypeConfig>) -> Option<u64> {
    let replication = m.replication.clone().unwrap_or_default();
    m.membership_config
        .membership()
        .voter_ids()
        .filter(|v| *v != m.id)
        .max_by_key(|v| replication.get(v).copied().flatten())
}
