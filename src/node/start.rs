//! Starting a node: a standalone store with its apply thread, or a Raft member that
//! bootstraps, joins or restarts and serves once it has caught up; and the waits for a quorum
//! and for a leader that a restarted member goes through.
//!
//! A Raft member waits for its quorum with no deadline (`wait_for_quorum`), and a restarted
//! control-plane node waits again for a leader before it reads any cluster record
//! (`Node::until_leader`): after a whole-cluster restart the first member up has no quorum
//! until a second one starts, however long that takes. etcd, too, waits for its quorum.

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::datastore::{Meta, Reader, Store};

use super::alarm::{Alarm, NoSpaceCause};
use super::applier::Applier;
use super::apply::apply_loop;
use super::checkpoint::spawn_checkpointer;
use super::{Backend, Inner, Node, NodeConfig, NodeError, RaftSettings};

/// How long a new Raft member keeps asking its peers to add it before giving up.
const JOIN_TIMEOUT: Duration = Duration::from_secs(300);

impl Node {
    /// Open the store under `config.data_dir` and start the apply loop and lease expiry.
    pub fn start(config: NodeConfig) -> Result<Node, NodeError> {
        let db_path = prepare_data_dir(&config.data_dir)?;
        let store = Store::open(&db_path, config.durability)?;
        let applier = Applier::new(db_path.clone(), store.meta());
        applier.lessor.reset(&store.reader()?.leases()?, Instant::now());
        let checkpointer = crate::datastore::Checkpointer::open(&db_path)?;
        let (tx, rx) = std_mpsc::channel();
        let alarm = Arc::new(Alarm::new(config.quota_bytes));
        {
            let (applier, alarm) = (applier.clone(), alarm.clone());
            std::thread::Builder::new()
                .name("k8sd-apply".into())
                .spawn(move || apply_loop(store, rx, applier, &alarm))
                .map_err(|source| NodeError::DataDir {
                    path: config.data_dir.clone(),
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
            applier,
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
    /// recovered everything it applied before.
    pub async fn start_raft(config: NodeConfig, raft: RaftSettings) -> Result<Node, NodeError> {
        let db_path = prepare_data_dir(&config.data_dir)?;
        // Revision 1 until the state machine has replayed what it applied before; the real
        // values are known once the member has caught up (`Applier::caught_up` below).
        let applier = Applier::new(
            db_path.clone(),
            Meta {
                current_rev: 1,
                compact_rev: 0,
                physical_compact_rev: 0,
                applied_index: 0,
                applied_term: 0,
                member_id: 0,
                cluster_id: 0,
            },
        );
        let hook: crate::raft::state_machine::ApplyHook = {
            let applier = applier.clone();
            Arc::new(move |b| applier.committed(b))
        };
        let alarm = Arc::new(Alarm::new(config.quota_bytes));
        let mut rc = raft.config;
        rc.apply_hook = Some(hook);
        rc.leases = Some(applier.lessor.clone());
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
        // Every member reports the id its cluster was founded with; a database from before
        // that was replicated keeps its own.
        let cluster_id = match crate::raft::state_machine::replicated_cluster_id(&db_path)? {
            Some(id) => id,
            None => reader.cluster_id()?,
        };
        applier.caught_up(
            node_raft.id(),
            cluster_id,
            (view.current_rev, view.compact_rev),
            &reader.leases()?,
        );
        let checkpointer = crate::datastore::Checkpointer::open(&db_path)?;
        let inner = Inner {
            config,
            db_path,
            backend: Backend::Raft(node_raft),
            readers: Mutex::new(vec![reader]),
            applier,
            alarm,
        };
        Ok(Node::launch(inner, checkpointer))
    }

    /// Returns once a linearizable barrier succeeds: a leader is known and this replica has
    /// applied everything committed before the call. Only a stopped datastore ends the wait
    /// with an error. `step` is told, once, that the node waits.
    ///
    /// The datastore's start already waited for its quorum, but the group can lose its leader
    /// again right after, and a learner whose leader is backing off its retries hears from it
    /// only after the next attempt. A restarted control-plane node's first cluster read would
    /// then fail after the request timeout and leave its daemon idle in `failed`.
    pub async fn until_leader(&self, step: impl Fn(&str)) -> Result<(), NodeError> {
        /// How often a still-waiting node says so in its log.
        const REPORT_EVERY: Duration = Duration::from_secs(30);
        let started = Instant::now();
        let mut reported = started;
        let mut announced = false;
        loop {
            match self.barrier().await {
                Ok(()) => {
                    if announced {
                        tracing::info!(waited = ?started.elapsed(), "the datastore has a leader");
                    }
                    return Ok(());
                }
                Err(NodeError::Stopped) => return Err(NodeError::Stopped),
                Err(e) => {
                    if !announced {
                        announced = true;
                        step(
                            "waiting for the datastore to have a leader (the other control-plane nodes may still be starting)",
                        );
                        tracing::warn!(error = %e, "the datastore has no leader yet; waiting for one");
                    } else if reported.elapsed() >= REPORT_EVERY {
                        reported = Instant::now();
                        tracing::warn!(error = %e, waited = ?started.elapsed(),
                            "the datastore still has no leader: start the other control-plane nodes, or run `k8sd recover` on this one if a quorum of them is lost for good");
                    }
                    // A barrier with no leader already waited its request timeout; one failing
                    // at once (a peer refusing) must not spin.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

/// Create the data directory, owner only (it holds keys and the database), and return the
/// path of the store in it.
fn prepare_data_dir(dir: &Path) -> Result<PathBuf, NodeError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(|source| NodeError::DataDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    Ok(dir.join("state.db"))
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
