//! A datastore node: the store, the apply loop that owns its writer, the reader pool, the watch
//! hub and the lessor, behind one async handle (`Node`) that the etcd façade calls.
//!
//! ```text
//!  etcd handlers ──propose(Command)──▶ channel ──▶ apply thread ──▶ Store::apply_batch (1 txn)
//!        │                                            │  replies ◀──┘  │
//!        │                                            └──▶ WatchHub::publish (after commit)
//!        └──read(Reader)──▶ reader pool (WAL snapshots, blocking threads)
//! ```
//!
//! A Raft member has no apply thread: `raft::RaftNode` applies, and its apply hook feeds the
//! hub and the lessor. Lease keep-alives go to the leader's lessor (`lease_renew`), because
//! only the leader expires leases.
//!
//! Group commit: the apply thread takes every proposal waiting in the channel (up to a bound)
//! and applies them in one SQLite transaction with one fsync. In a standalone node the store
//! commits with `synchronous=FULL`, so a reply means the write is on disk.

pub mod alarm;
pub mod hub;
pub mod lessor;

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::datastore::{Command, CommandOutput, Durability, LogPosition, Meta, Reader, Store, StoreError};
use alarm::{Alarm, NoSpaceCause};
use hub::{EventBatch, WatchHub};
use lessor::Lessor;

/// Most commands applied in one transaction.
const MAX_BATCH: usize = 1024;
/// How long a new Raft member keeps asking its peers to add it before giving up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(300);
/// Revisions physically compacted per step between apply batches.
const COMPACT_BUDGET: i64 = 1000;

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// URLs advertised to clients in MemberList.
    pub client_urls: Vec<String>,
    /// Interval of progress notifications for watches that ask for them (contract W9).
    pub progress_notify_interval: Duration,
    /// Bytes in use at which the NOSPACE alarm refuses writes (etcd's `--quota-backend-bytes`).
    pub quota_bytes: i64,
}

/// Run the datastore as a Raft member instead of a standalone apply thread.
#[derive(Debug)]
pub struct RaftSettings {
    pub config: crate::raft::RaftConfig,
    /// The bound peer listener (separate from any client listener).
    pub listener: tokio::net::TcpListener,
    /// Form a new cluster of one if this node has never been part of one.
    pub bootstrap: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Raft(#[from] crate::raft::RaftNodeError),
    #[error("server stopped")]
    Stopped,
    /// The NOSPACE alarm is raised (or this write raised it): nothing was written.
    #[error("database space exceeded ({})", .0.as_str())]
    NoSpace(NoSpaceCause),
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

struct Proposal {
    cmd: Command,
    reply: oneshot::Sender<Result<CommandOutput, NodeError>>,
}

/// Temporary snapshot files in the datastore directory start with this.
pub const SNAPSHOT_PREFIX: &str = ".snapshot-";

/// A temporary copy of the datastore made by [`Node::export_snapshot`]; deleted on drop.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Handle to a running node. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

/// Where writes go: a local apply thread, or Raft.
#[derive(Debug)]
enum Backend {
    Local {
        proposals: Mutex<Option<std_mpsc::Sender<Proposal>>>,
    },
    Raft(crate::raft::RaftNode),
}

#[derive(Debug)]
struct Inner {
    config: NodeConfig,
    db_path: PathBuf,
    backend: Backend,
    readers: Mutex<Vec<Reader>>,
    hub: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    meta: Arc<Mutex<Meta>>,
    alarm: Arc<Alarm>,
}

impl std::fmt::Debug for Proposal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proposal").field("cmd", &self.cmd).finish()
    }
}

impl Node {
    /// Open the store under `config.data_dir` and start the apply loop and lease expiry.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir {
            path: dir.clone(),
            source,
        })?;
        restrict_dir(dir);
        let db_path = dir.join("state.db");
        let store = Store::open(&db_path, config.durability)?;
        let meta = store.meta();
        let hub = Arc::new(WatchHub::new(meta.current_rev));
        let lessor = Arc::new(Lessor::default());
        lessor.reset(&store.reader()?.leases()?, Instant::now());
        let checkpointer = crate::datastore::Checkpointer::open(&db_path)?;
        let (tx, rx) = std_mpsc::channel();
        let shared_meta = Arc::new(Mutex::new(meta));
        let alarm = Arc::new(Alarm::new(config.quota_bytes));
        {
            let (hub, lessor, shared_meta) = (hub.clone(), lessor.clone(), shared_meta.clone());
            let alarm = alarm.clone();
            std::thread::Builder::new()
                .name("k8sd-apply".into())
                .spawn(move || apply_loop(store, rx, hub, lessor, shared_meta, &alarm))
                .map_err(|source| NodeError::DataDir {
                    path: dir.clone(),
                    source,
                })?;
        }
        // A standalone node is its own leader from the start: one leader change, as a
        // single-member etcd counts its first election.
        crate::metrics::etcd::ETCD.leader_changes.inc();
        let inner = Inner {
            config,
            db_path,
            backend: Backend::Local {
                proposals: Mutex::new(Some(tx)),
            },
            readers: Mutex::new(Vec::new()),
            hub,
            lessor,
            meta: shared_meta,
            alarm,
        };
        Ok(Node::launch(inner, checkpointer))
    }

    /// Wrap a fully opened node and start its background work: lease expiry and checkpoints.
    fn launch(inner: Inner, checkpointer: crate::datastore::Checkpointer) -> Node {
        let node = Node {
            inner: Arc::new(inner),
        };
        node.spawn_expiry();
        spawn_checkpointer(checkpointer, Arc::downgrade(&node.inner));
        node
    }

    /// Open (or create) a Raft member under `config.data_dir` and start serving once it has
    /// recovered everything it applied before (contract W13).
    pub async fn start_raft(config: NodeConfig, raft: RaftSettings) -> Result<Node, NodeError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir {
            path: dir.clone(),
            source,
        })?;
        restrict_dir(dir);
        let db_path = dir.join("state.db");
        let hub = Arc::new(WatchHub::new(1));
        let lessor = Arc::new(Lessor::default());
        let shared_meta = Arc::new(Mutex::new(Meta {
            current_rev: 1,
            compact_rev: 0,
            physical_compact_rev: 0,
            applied_index: 0,
            applied_term: 0,
            member_id: 0,
            cluster_id: 0,
        }));
        let hook: crate::raft::state_machine::ApplyHook = {
            let (hub, lessor, meta, db) = (hub.clone(), lessor.clone(), shared_meta.clone(), db_path.clone());
            Arc::new(move |b: &crate::raft::state_machine::AppliedBatch| {
                {
                    let mut m = meta.lock().unwrap_or_else(|p| p.into_inner());
                    m.current_rev = b.revision;
                    m.compact_rev = b.compact_rev;
                    m.physical_compact_rev = b.compact_rev;
                    if let Some(l) = b.applied {
                        m.applied_index = l.index;
                        m.applied_term = l.leader_id.term;
                    }
                }
                let now = Instant::now();
                for &(id, ttl) in &b.granted {
                    lessor.granted(id, ttl, now);
                }
                for id in &b.revoked {
                    lessor.revoked(*id);
                }
                if b.snapshot_installed {
                    // History arrived without events: every watch stream catches up from SQLite.
                    hub.publish(EventBatch {
                        revision: b.revision,
                        events: Vec::new(),
                        resync: true,
                    });
                    if let Ok(leases) = Reader::open(&db).and_then(|mut r| r.leases()) {
                        lessor.reset(&leases, now);
                    }
                } else if !b.events.is_empty() {
                    hub.publish(EventBatch {
                        revision: b.revision,
                        events: b.events.clone(),
                        resync: false,
                    });
                }
            })
        };
        let alarm = Arc::new(Alarm::new(config.quota_bytes));
        let mut rc = raft.config;
        rc.apply_hook = Some(hook);
        rc.leases = Some(lessor.clone());
        // A Raft log or state-machine write that meets a full disk raises the alarm at every
        // attempt, so it stands (and refuses new writes) for as long as that write waits.
        let full = alarm.clone();
        rc.on_disk_full = Some(Arc::new(move || full.raise(NoSpaceCause::DiskFull)));
        let seeds = rc.join.clone();
        let node_raft = crate::raft::RaftNode::start(rc, raft.listener).await?;
        // A node whose log already holds a membership restarts as itself: it neither
        // bootstraps nor joins, it just talks Raft to the members it knows.
        if !node_raft.is_initialized().await? {
            // A bootstrapper whose peers already form a cluster joins it instead: bootstrapping
            // would found a second cluster under the same names (a wiped first member).
            let join = !seeds.is_empty() && (!raft.bootstrap || node_raft.cluster_exists(&seeds).await);
            if join {
                node_raft.join(&seeds, JOIN_TIMEOUT).await?;
            } else if raft.bootstrap {
                node_raft.bootstrap().await?;
            }
        }
        wait_for_quorum(&node_raft).await?;
        let mut reader = Reader::open(&db_path)?;
        let view = reader.view()?;
        // A group founded on a restored store: its log does not hold the data, so it must never
        // be replayed to a new member from index 0. Checked at every start, so a crash between
        // the bootstrap and the purge is caught at the next one.
        if node_raft.log_lacks_store_data(view.current_rev) {
            node_raft.snapshot_and_purge_log(Duration::from_secs(60)).await?;
        }
        lessor.reset(&reader.leases()?, Instant::now());
        {
            let mut m = shared_meta.lock().unwrap_or_else(|p| p.into_inner());
            m.member_id = node_raft.id();
            // Every member reports the id its cluster was founded with; a database from before
            // that was replicated keeps its own.
            m.cluster_id = match crate::raft::state_machine::replicated_cluster_id(&db_path)? {
                Some(id) => id,
                None => reader.cluster_id()?,
            };
            m.current_rev = m.current_rev.max(view.current_rev);
            m.compact_rev = m.compact_rev.max(view.compact_rev);
        }
        hub.advance_to(view.current_rev);
        let checkpointer = crate::datastore::Checkpointer::open(&db_path)?;
        let inner = Inner {
            config,
            db_path,
            backend: Backend::Raft(node_raft),
            readers: Mutex::new(vec![reader]),
            hub,
            lessor,
            meta: shared_meta,
            alarm,
        };
        Ok(Node::launch(inner, checkpointer))
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    pub fn hub(&self) -> &WatchHub {
        &self.inner.hub
    }

    pub fn lessor(&self) -> &Lessor {
        &self.inner.lessor
    }

    /// This member's NOSPACE alarm (`alarm.rs`).
    pub fn alarm(&self) -> &Alarm {
        &self.inner.alarm
    }

    /// The last applied metadata (revision, applied index, ids).
    pub fn meta(&self) -> Meta {
        *self.inner.meta.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether this node knows a leader. A standalone node is its own leader.
    pub fn has_leader(&self) -> bool {
        match &self.inner.backend {
            Backend::Raft(raft) => raft.has_leader(),
            Backend::Local { .. } => true,
        }
    }

    /// How long without a leader before `hasleader` watch streams are cancelled: about three
    /// election timeouts (contract W10). `None` for a standalone node, which always leads.
    pub fn no_leader_grace(&self) -> Option<Duration> {
        match &self.inner.backend {
            Backend::Raft(raft) => Some(raft.election_timeout() * 3),
            Backend::Local { .. } => None,
        }
    }

    /// The Raft term for response headers; 1 for a standalone node.
    pub fn raft_term(&self) -> u64 {
        match &self.inner.backend {
            Backend::Raft(raft) => raft.term(),
            Backend::Local { .. } => 1,
        }
    }

    /// Submit a command and wait until it is applied. Counted in etcd's proposal metrics: a
    /// proposal fails when it was not applied (no leader, timeout, stopped), not when the
    /// command itself was refused by the store (a failed compare is an applied proposal).
    pub async fn propose(&self, cmd: Command) -> Result<CommandOutput, NodeError> {
        let m = &crate::metrics::etcd::ETCD;
        m.proposals_pending.add(1);
        let out = self.propose_inner(cmd).await;
        m.proposals_pending.add(-1);
        if let Err(e) = &out
            && !matches!(e, NodeError::Store(_))
        {
            m.proposals_failed.inc();
        }
        out
    }

    async fn propose_inner(&self, cmd: Command) -> Result<CommandOutput, NodeError> {
        // etcd checks its quota before proposing (quotaKVServer) and refuses capped writes
        // while NOSPACE is raised; deletes, compaction and revocations always pass.
        self.inner.alarm.admit(&cmd).map_err(NodeError::NoSpace)?;
        let proposals = match &self.inner.backend {
            Backend::Raft(raft) => return Ok(raft.propose(cmd).await??),
            Backend::Local { proposals } => proposals,
        };
        let (reply, rx) = oneshot::channel();
        {
            let guard = proposals.lock().unwrap_or_else(|p| p.into_inner());
            let tx = guard.as_ref().ok_or(NodeError::Stopped)?;
            tx.send(Proposal { cmd, reply }).map_err(|_| NodeError::Stopped)?;
        }
        rx.await.map_err(|_| NodeError::Stopped)?
    }

    /// Wait until this node's replica reflects every write committed before the call (a
    /// read-index round through the leader), so a local read after it is linearizable. A
    /// standalone node answers only after applying, so it has nothing to wait for.
    pub async fn barrier(&self) -> Result<(), NodeError> {
        match &self.inner.backend {
            Backend::Raft(raft) => {
                raft.linearizable_barrier().await?;
                Ok(())
            }
            Backend::Local { .. } => Ok(()),
        }
    }

    /// Raft state, when the node is a Raft member.
    pub fn raft_status(&self) -> Option<crate::raft::RaftStatus> {
        match &self.inner.backend {
            Backend::Raft(raft) => Some(raft.status()),
            Backend::Local { .. } => None,
        }
    }

    /// Every member of the cluster (a standalone node lists itself as the only voter). Use it
    /// to map a member's name to the id `remove_member` takes.
    pub fn members(&self) -> Vec<crate::raft::Member> {
        match &self.inner.backend {
            Backend::Raft(raft) => raft.status().member_list(),
            Backend::Local { .. } => vec![crate::raft::Member {
                id: self.meta().member_id,
                info: crate::raft::NodeInfo {
                    name: self.inner.config.name.clone(),
                    peer_addr: String::new(),
                    client_addr: self.inner.config.client_urls.join(","),
                },
                voter: true,
            }],
        }
    }

    /// Remove member `id` from the cluster; callable on any member (forwarded to the leader).
    /// Refuses to break a healthy quorum unless `force`, and never removes the last voter.
    /// See `raft::RaftNode::remove_member` for the rules. The removed node keeps running
    /// until it is shut down.
    pub async fn remove_member(&self, id: u64, force: bool) -> Result<crate::raft::RemoveOutcome, NodeError> {
        use crate::raft::{RaftNodeError, RemoveError};
        match &self.inner.backend {
            Backend::Raft(raft) => Ok(raft.remove_member(id, force).await?),
            // A standalone node is a cluster of one voter: itself.
            Backend::Local { .. } => Err(NodeError::Raft(RaftNodeError::Remove(
                if id == self.meta().member_id {
                    RemoveError::LastVoter(id)
                } else {
                    RemoveError::UnknownMember(id)
                },
            ))),
        }
    }

    /// Whether removing member `id` (without force) would go ahead now; changes nothing. A
    /// standalone node is its own last voter, so the answer there is `LastVoter`.
    pub async fn check_removal(&self, id: u64) -> Result<(), NodeError> {
        use crate::raft::{RaftNodeError, RemoveError};
        match &self.inner.backend {
            Backend::Raft(raft) => Ok(raft.check_removal(id).await?),
            Backend::Local { .. } => Err(NodeError::Raft(RaftNodeError::Remove(RemoveError::LastVoter(id)))),
        }
    }

    /// Renew lease `id` (a keep-alive): its TTL, or `None` if the lease is unknown or expired.
    /// A Raft follower asks the leader, whose lessor is the one that expires leases; renewing
    /// the local lessor alone would let the lease expire on the leader (etcd forwards
    /// keep-alives to its leader the same way).
    pub async fn lease_renew(&self, id: i64) -> Result<Option<i64>, NodeError> {
        match &self.inner.backend {
            Backend::Raft(raft) => Ok(raft.renew_lease(id).await?),
            Backend::Local { .. } => Ok(self.inner.lessor.renew(id, Instant::now())),
        }
    }

    /// Remaining whole seconds and granted TTL of lease `id`, by the leader's lessor.
    pub async fn lease_remaining(&self, id: i64) -> Result<Option<(i64, i64)>, NodeError> {
        match &self.inner.backend {
            Backend::Raft(raft) => Ok(raft.lease_remaining(id).await?),
            Backend::Local { .. } => Ok(self.inner.lessor.remaining(id, Instant::now())),
        }
    }

    /// The Raft commit and apply indexes (etcd's `proposals_committed_total` and
    /// `proposals_applied_total`); a standalone node commits what it applies.
    pub fn commit_positions(&self) -> (u64, u64) {
        match &self.inner.backend {
            Backend::Raft(raft) => raft.commit_positions(),
            Backend::Local { .. } => {
                let applied = self.meta().applied_index;
                (applied, applied)
            }
        }
    }

    /// Whether this node leads its cluster; a standalone node always does.
    pub fn is_leader(&self) -> bool {
        match &self.inner.backend {
            Backend::Raft(raft) => {
                let st = raft.status();
                st.leader == Some(st.id)
            }
            Backend::Local { .. } => true,
        }
    }

    /// Run `f` on a pooled reader on a blocking thread.
    /// A consistent copy of the datastore in a temporary file beside it, made from one read
    /// transaction (`VACUUM INTO`), so writes go on while it is taken.
    pub async fn export_snapshot(&self) -> Result<SnapshotFile, NodeError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let db = self.inner.db_path.clone();
        tokio::task::spawn_blocking(move || {
            let dir = db.parent().unwrap_or(Path::new("."));
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{SNAPSHOT_PREFIX}{}-{n}.db", std::process::id()));
            // A file of that name can only be left over from a crashed earlier process.
            let _ = std::fs::remove_file(&path);
            let file = SnapshotFile { path };
            crate::datastore::export_snapshot(&db, &file.path)?;
            Ok(file)
        })
        .await
        .map_err(|_| NodeError::Stopped)?
    }

    pub async fn read<T, F>(&self, f: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Reader) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut reader = match pooled {
                Some(r) => r,
                None => Reader::open(&inner.db_path)?,
            };
            let out = f(&mut reader);
            inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(reader);
            Ok(out?)
        })
        .await
        .map_err(|_| NodeError::Stopped)?
    }

    /// Stop accepting proposals; the apply loop drains what it has and exits. A Raft member
    /// stops openraft and its peer service.
    pub async fn shutdown(&self) {
        match &self.inner.backend {
            Backend::Local { proposals } => {
                proposals.lock().unwrap_or_else(|p| p.into_inner()).take();
            }
            Backend::Raft(raft) => {
                // Hand leadership to another voter first, so the cluster does not wait out an
                // election timeout for a node that is leaving on purpose.
                let st = raft.status();
                if st.leader == Some(st.id)
                    && let Some(&to) = st.voters.iter().find(|v| **v != st.id)
                {
                    if let Err(e) = raft.transfer_leader(to).await {
                        tracing::warn!(error = %e, "leadership transfer before shutdown failed");
                    }
                    for _ in 0..40 {
                        if raft.status().leader != Some(st.id) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                if let Err(e) = raft.shutdown().await {
                    tracing::warn!(error = %e, "raft shutdown");
                }
            }
        }
    }

    fn spawn_expiry(&self) {
        let node = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            let mut was_leader = true;
            loop {
                tick.tick().await;
                if Arc::strong_count(&node.inner) == 1 {
                    return; // every other handle is gone
                }
                // Only the leader expires leases. A node that just became leader gives every
                // lease a full TTL, so a failover never expires a lease early.
                let leader = node.is_leader();
                if leader
                    && !was_leader
                    && let Ok(leases) = node.read(|r| r.leases()).await
                {
                    node.inner.lessor.reset(&leases, Instant::now());
                }
                was_leader = leader;
                if !leader {
                    continue;
                }
                for id in node.inner.lessor.take_expired(Instant::now()) {
                    match node.propose(Command::LeaseRevoke { id }).await {
                        Ok(_) | Err(NodeError::Store(StoreError::LeaseNotFound(_))) => {}
                        Err(NodeError::Stopped) => return,
                        Err(e) => {
                            tracing::warn!(lease = id, error = %e, "lease expiry failed; retrying");
                            node.inner.lessor.retry_later(id, Instant::now());
                        }
                    }
                }
            }
        });
    }
}

/// Checkpoint the WAL every 200 ms while the node lives (and empty it once the writer is idle,
/// see `Checkpointer::checkpoint`), and keep the alarm's view of the
/// database size and of the disk current (a full-disk alarm clears itself here).
fn spawn_checkpointer(mut cp: crate::datastore::Checkpointer, node: std::sync::Weak<Inner>) {
    let _ = std::thread::Builder::new()
        .name("k8sd-checkpoint".into())
        .spawn(move || {
            while let Some(inner) = node.upgrade() {
                let disk_full = inner.alarm.cause() == Some(NoSpaceCause::DiskFull);
                // A checkpoint on a full disk fails every time; the alarm already says so.
                if let Err(e) = cp.checkpoint()
                    && !(disk_full && e.is_disk_full())
                {
                    tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                }
                if let Ok(bytes) = cp.in_use_bytes() {
                    inner.alarm.set_in_use(bytes);
                }
                if let Some(free) = alarm::free_bytes(&inner.config.data_dir) {
                    inner.alarm.observe_free(free);
                }
                drop(inner);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
}

/// The data directory holds keys and the database: owner only.
fn restrict_dir(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
}

fn apply_loop(
    mut store: Store,
    rx: std_mpsc::Receiver<Proposal>,
    hub: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    shared_meta: Arc<Mutex<Meta>>,
    alarm: &Alarm,
) {
    let mut batch: Vec<Proposal> = Vec::with_capacity(MAX_BATCH);
    loop {
        let compacting = store.meta().physical_compact_rev < store.meta().compact_rev;
        let first = if compacting {
            match rx.recv_timeout(Duration::from_millis(1)) {
                Ok(p) => Some(p),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            }
        } else {
            match rx.recv() {
                Ok(p) => Some(p),
                Err(_) => return,
            }
        };
        if let Some(p) = first {
            batch.push(p);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            if !apply_proposals(&mut store, &mut batch, &hub, &lessor, alarm) {
                return;
            }
            *shared_meta.lock().unwrap_or_else(|p| p.into_inner()) = store.meta();
        }
        if compacting {
            if let Err(e) = store.compact_step(COMPACT_BUDGET) {
                tracing::error!(error = %e, "compaction failed; it will be retried");
            }
            *shared_meta.lock().unwrap_or_else(|p| p.into_inner()) = store.meta();
        }
    }
}

/// Apply one batch and answer its proposers. Returns false after a fatal store error; a full
/// disk is not fatal (the transaction was rolled back, nothing was acknowledged): the batch is
/// refused with the NOSPACE alarm and the loop goes on.
fn apply_proposals(
    store: &mut Store,
    batch: &mut Vec<Proposal>,
    hub: &WatchHub,
    lessor: &Lessor,
    alarm: &Alarm,
) -> bool {
    let start = store.meta().applied_index;
    let cmds: Vec<(LogPosition, &Command)> = batch
        .iter()
        .zip(1u64..)
        .map(|(p, i)| {
            (
                LogPosition {
                    index: start + i,
                    term: 1,
                },
                &p.cmd,
            )
        })
        .collect();
    let started = Instant::now();
    let applied = store.apply_batch(&cmds);
    // One SQLite transaction, committed with synchronous=FULL: its commit is the WAL fsync and
    // the backend commit at once (a standalone node has no separate log).
    let took = started.elapsed();
    crate::metrics::etcd::ETCD.wal_fsync.observe(took);
    crate::metrics::etcd::ETCD.backend_commit.observe(took);
    match applied {
        Ok((outputs, events)) => {
            let now = Instant::now();
            for out in outputs.iter().flatten() {
                match out {
                    CommandOutput::LeaseGrant { id, ttl, .. } => lessor.granted(*id, *ttl, now),
                    CommandOutput::LeaseRevoke { .. } => {}
                    _ => {}
                }
            }
            for (p, _) in batch.iter().zip(outputs.iter()) {
                if let Command::LeaseRevoke { id } = p.cmd {
                    lessor.revoked(id);
                }
            }
            if !events.is_empty() {
                hub.publish(EventBatch {
                    revision: store.meta().current_rev,
                    events,
                    resync: false,
                });
            }
            for (p, out) in batch.drain(..).zip(outputs) {
                let _ = p.reply.send(out.map_err(NodeError::from));
            }
            true
        }
        Err(e) if e.is_disk_full() => {
            tracing::error!(error = %e, "datastore apply failed: the disk is full; writes are refused until space is freed");
            alarm.raise(NoSpaceCause::DiskFull);
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(NodeError::NoSpace(NoSpaceCause::DiskFull)));
            }
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "datastore apply failed; refusing further writes");
            for p in batch.drain(..) {
                let _ = p.reply.send(Err(NodeError::Stopped));
            }
            false
        }
    }
}

/// Wait, with no deadline, until the restarted state machine has caught up with a cluster
/// commit (`RaftNode::wait_for_recovery`). After a whole-cluster restart the first member up
/// has no quorum until a second one starts, however long that takes; a deadline here left it
/// failed for good (etcd, too, waits for its quorum). Says every minute what it waits for.
async fn wait_for_quorum(raft: &crate::raft::RaftNode) -> Result<(), NodeError> {
    const REPORT_EVERY: Duration = Duration::from_secs(60);
    let started = Instant::now();
    loop {
        match raft.wait_for_recovery(REPORT_EVERY).await {
            Ok(()) => {
                if started.elapsed() >= REPORT_EVERY {
                    tracing::info!(waited = ?started.elapsed(), "the datastore reached its quorum");
                }
                return Ok(());
            }
            Err(crate::raft::RaftNodeError::Timeout { .. }) => tracing::warn!(
                waited = ?started.elapsed(),
                "the datastore is waiting for a quorum of its members (a leader, and the commits \
                 this node missed): start the other control-plane nodes, or, if a quorum of them \
                 is lost for good, stop k8sd and run `k8sd recover` on this node"
            ),
            Err(e) => return Err(e.into()),
        }
    }
}
