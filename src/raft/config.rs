//! The settings of one Raft node, and the openraft and membership settings made from them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::SnapshotPolicy;
use tonic::transport::{ClientTlsConfig, ServerTlsConfig};

use super::error::RaftNodeError;
use super::full_disk::DiskFullHook;
use super::membership;
use super::service::LeaseClock;
use super::state_machine::ApplyHook;
use super::transport::PeerFilter;

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
    /// Fault injection shared by an in-process test cluster: which peer RPCs are dropped
    /// (`transport::PeerFilter`). `None` in production.
    pub faults: Option<Arc<dyn PeerFilter>>,
    /// While leader, promote caught-up learners to keep an odd number of voters (at most
    /// `membership_plan::MAX_VOTERS`). Off by default so callers that manage membership by hand
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
    /// Called at every write of the Raft log or the state machine that failed for want of
    /// space (`full_disk`): the node raises its NOSPACE alarm.
    pub on_disk_full: Option<DiskFullHook>,
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
            on_disk_full: None,
        }
    }

    pub(super) fn membership_policy(&self) -> membership::Policy {
        membership::Policy {
            health_window: self.election_timeout.1,
            voter_loss_delay: self.voter_loss_delay,
            change_timeout: self.request_timeout,
        }
    }

    pub(super) fn openraft_config(&self) -> Result<openraft::Config, RaftNodeError> {
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
