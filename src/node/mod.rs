//! A datastore node: the store, its one writer (a Raft member, or a standalone apply thread),
//! the reader pool, the watch hub and the lessor, behind one async handle (`Node`) that the
//! etcd façade calls.
//!
//! ```text
//!  etcd handlers ──propose(Command)──▶ raft::RaftNode ──▶ state machine ─┐ (a Raft member)
//!        │                    └──────▶ apply thread (apply.rs) ──────────┤ (standalone)
//!        │                                                               ▼ after the commit
//!        │                                  Applier: meta, lessor, WatchHub::publish
//!        └──read(Reader)──▶ reader pool (WAL snapshots, blocking threads)
//! ```
//!
//! Lease keep-alives go to the leader's lessor (`lease_renew`), because only the leader
//! expires leases.
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | `Node`, its config and errors; proposals, the read barrier, leadership, shutdown |
//! | `start.rs` | opening a standalone node or a Raft member; the waits for a quorum and a leader |
//! | `apply.rs` | the standalone apply thread: group commit, NOSPACE on a full disk |
//! | `applier.rs` | what follows every committed batch, for both writers: meta, lessor, watch hub |
//! | `read.rs` | the reader pool and consistent copies of the store |
//! | `members.rs` | the member list, removals and their dry run |
//! | `leases.rs` | keep-alives, remaining TTLs, the leader's expiry loop |
//! | `checkpoint.rs` | the WAL checkpointer thread, which also keeps the alarm's sizes current |
//! | `hub.rs` | the watch hub every watch stream subscribes to |
//! | `lessor.rs` | lease deadlines |
//! | `alarm.rs` | the member's NOSPACE alarm |

pub mod alarm;
mod applier;
mod apply;
mod checkpoint;
pub mod hub;
mod leases;
pub mod lessor;
mod members;
mod read;
mod start;

use std::path::PathBuf;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::datastore::{Command, CommandOutput, Durability, Meta, Reader, StoreError};
use alarm::{Alarm, NoSpaceCause};
use applier::Applier;
use apply::Proposal;
use hub::WatchHub;
use lessor::Lessor;
pub use read::{SNAPSHOT_PREFIX, SnapshotFile};

#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub name: String,
    pub data_dir: PathBuf,
    pub durability: Durability,
    /// URLs advertised to clients in MemberList.
    pub client_urls: Vec<String>,
    /// Interval of progress notifications for watches that ask for them.
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
    /// Meta, watch hub and lessor, kept current by every committed batch.
    applier: Applier,
    alarm: Arc<Alarm>,
}

impl Node {
    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    pub fn hub(&self) -> &WatchHub {
        &self.inner.applier.hub
    }

    pub fn lessor(&self) -> &Lessor {
        &self.inner.applier.lessor
    }

    /// This member's NOSPACE alarm (`alarm.rs`).
    pub fn alarm(&self) -> &Alarm {
        &self.inner.alarm
    }

    /// The last applied metadata (revision, applied index, ids).
    pub fn meta(&self) -> Meta {
        self.inner.applier.meta()
    }

    /// Whether this node knows a leader. A standalone node is its own leader.
    pub fn has_leader(&self) -> bool {
        match &self.inner.backend {
            Backend::Raft(raft) => raft.has_leader(),
            Backend::Local { .. } => true,
        }
    }

    /// How long without a leader before `hasleader` watch streams are cancelled: about three
    /// election timeouts. `None` for a standalone node, which always leads.
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
}
