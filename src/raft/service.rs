//! The server side of the peer transport: the `RaftPeer` gRPC service that feeds incoming RPCs
//! to the local openraft, answers followers' forwarded writes, read indexes and lease questions
//! on the leader, hands joins and removals to `membership.rs`, and refuses members fenced by
//! `k8sd recover`. `peer_auth`'s gate runs before any of it.
//!
//! This is the one place in `raft/` where errors become `tonic::Status`: a stopped Raft is
//! UNAVAILABLE (the caller backs off), a body that does not decode is INVALID_ARGUMENT.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::ReadPolicy;
use openraft::async_runtime::WatchReceiver;
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, TransferLeaderRequest, VoteRequest};
use tokio::io::AsyncWriteExt;
use tonic::Status;

use super::membership::{self, MembershipLock};
use super::pb::raft_peer_server::RaftPeer;
use super::pb::{Msg, SnapshotChunk};
use super::peer_auth::PeerAuth;
use super::state_machine::Raft;
use super::types::{Request, Snapshot, SnapshotFile, TypeConfig};
use super::wire::{
    self, Format, ForwardReply, JoinRequest, LeaseReply, LeaseRequest, ReadIndexReply, RemoveRequest,
    SnapshotHeader, WireError,
};

/// The leader's lease deadlines, as `node::Lessor` keeps them. The peer service answers
/// followers' keep-alives from it; this module knows nothing else of leases.
pub trait LeaseClock: Send + Sync + std::fmt::Debug {
    /// Push the lease's deadline one TTL ahead; its TTL, or `None` if it is unknown.
    fn renew_now(&self, id: i64) -> Option<i64>;
    /// Remaining whole seconds and granted TTL, or `None` if it is unknown.
    fn remaining_now(&self, id: i64) -> Option<(i64, i64)>;
}

impl LeaseRequest {
    /// Answer from a lease clock (on the leader).
    pub fn answer(&self, clock: &dyn LeaseClock) -> LeaseReply {
        match *self {
            LeaseRequest::Renew { id } => LeaseReply::Renewed {
                ttl: clock.renew_now(id),
            },
            LeaseRequest::Remaining { id } => LeaseReply::Remaining {
                left: clock.remaining_now(id),
            },
        }
    }
}

/// The `RaftPeer` gRPC service of one node.
#[derive(Debug, Clone)]
pub struct PeerService {
    raft: Raft,
    /// Incoming snapshots are written here before installation, then deleted.
    inbox: PathBuf,
    /// Held by every membership change this node makes (joins, promotions, removals).
    membership: MembershipLock,
    policy: membership::Policy,
    contact: LeaderContact,
    /// The node's lease clock, consulted for followers' keep-alives while this node leads.
    leases: Option<Arc<dyn LeaseClock>>,
    /// Members removed by `k8sd recover` (`recover.rs`): their Raft RPCs are refused, so
    /// lost voters that come back with a quorum of the old configuration cannot overwrite
    /// this node's log from a higher term.
    fenced: Arc<BTreeSet<u64>>,
}

/// When this node last accepted an AppendEntries from a leader of its current term or later.
/// A follower's only liveness signal for its leader: openraft keeps `current_leader` set on a
/// follower cut off from the cluster (its pre-votes fail, so its vote never changes).
pub type LeaderContact = Arc<Mutex<Option<std::time::Instant>>>;

impl PeerService {
    pub fn new(raft: Raft, inbox: PathBuf, membership: MembershipLock, contact: LeaderContact) -> Self {
        PeerService {
            raft,
            inbox,
            membership,
            policy: membership::Policy {
                health_window: Duration::from_secs(2),
                voter_loss_delay: Duration::from_secs(300),
                change_timeout: Duration::from_secs(10),
            },
            contact,
            leases: None,
            fenced: Arc::default(),
        }
    }

    /// Refuse Raft RPCs from these member ids (`recover::read_fence`).
    pub fn with_fenced(mut self, fenced: BTreeSet<u64>) -> Self {
        self.fenced = Arc::new(fenced);
        self
    }

    /// Membership timing (`RaftConfig`'s values; the defaults above otherwise).
    pub fn with_policy(mut self, policy: membership::Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Answer followers' lease keep-alives from `leases` while this node leads.
    pub fn with_leases(mut self, leases: Option<Arc<dyn LeaseClock>>) -> Self {
        self.leases = leases;
        self
    }
}

impl PeerService {
    /// PERMISSION_DENIED for a sender that `k8sd recover` removed from this group.
    fn check_fence(&self, sender: u64) -> Result<(), Status> {
        if self.fenced.contains(&sender) {
            return Err(Status::permission_denied(format!(
                "member {sender:016x} was removed from this cluster by `k8sd recover`; reset that node \
                 (`k8sd reset --force`) and join it again with a new token"
            )));
        }
        Ok(())
    }

    /// Record that the leader this node follows was heard from now (see `RaftNode::has_leader`).
    fn touch_contact(&self) {
        *self.contact.lock().unwrap_or_else(|p| p.into_inner()) = Some(std::time::Instant::now());
    }
}

/// A body that does not decode is the caller's fault; one that does not encode is ours.
fn wire_status(e: WireError) -> Status {
    match e {
        WireError::Encode { .. } => Status::internal(e.to_string()),
        WireError::Decode { .. } => Status::invalid_argument(e.to_string()),
        WireError::TooNew { .. } => Status::failed_precondition(e.to_string()),
    }
}

/// `v` as the reply to `req`, in `req`'s body format: a binary request comes from a peer that reads
/// binary, and a JSON one may come from a k8sd that reads nothing else. Its `reads` tells the
/// caller it may send binary from now on (`negotiate.rs`).
fn reply_to<T: serde::Serialize>(v: &T, req: &Msg) -> Result<tonic::Response<Msg>, Status> {
    wire::encode(v, Format::of(req.version))
        .map(tonic::Response::new)
        .map_err(wire_status)
}

fn decode<T: serde::de::DeserializeOwned>(m: &Msg) -> Result<T, Status> {
    wire::decode(m).map_err(wire_status)
}

/// A stopped Raft node is UNAVAILABLE, so the caller treats it as unreachable and backs off.
fn fatal(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("raft node stopped: {e}"))
}

#[tonic::async_trait]
impl RaftPeer for PeerService {
    async fn append_entries(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode(req.get_ref())?;
        self.check_fence(rpc.vote.leader_id().node_id)?;
        // Leader contact is stamped when the request arrives, not when it is answered: the
        // answer waits for this node's log flush, and with a slow disk every answer would come
        // an fsync late, so `has_leader` would report no leader (and `hasleader` watches be
        // cancelled) while Raft itself is healthy. Arrival counts only from the leader this
        // node already follows: the request carries the very committed vote this node holds.
        // A new leader's first request is stamped below, once openraft has accepted it.
        if rpc.vote.is_committed() && self.raft.metrics().borrow_watched().vote == rpc.vote {
            self.touch_contact();
        }
        let resp = self.raft.append_entries(rpc).await.map_err(fatal)?;
        // Anything but HigherVote means the sender is the leader this node follows (a conflict
        // is still a live leader repairing our log).
        if !matches!(resp, AppendEntriesResponse::HigherVote(_)) {
            self.touch_contact();
        }
        reply_to(&resp, req.get_ref())
    }

    async fn vote(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        self.check_fence(rpc.vote.leader_id().node_id)?;
        let resp = self.raft.vote(rpc).await.map_err(fatal)?;
        reply_to(&resp, req.get_ref())
    }

    async fn pre_vote(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        self.check_fence(rpc.vote.leader_id().node_id)?;
        let resp = self.raft.pre_vote(rpc).await.map_err(fatal)?;
        reply_to(&resp, req.get_ref())
    }

    async fn transfer_leader(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = decode(req.get_ref())?;
        let resp = self.raft.handle_transfer_leader(rpc).await.map_err(fatal)?;
        reply_to(&resp, req.get_ref())
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<tonic::Streaming<SnapshotChunk>>,
    ) -> Result<tonic::Response<Msg>, Status> {
        // The whole file is received and fsync'd before openraft sees it: an install is all
        // or nothing, and a stream cut short (sender crash, timeout) installs nothing.
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let header: SnapshotHeader = wire::decode_body(first.version, &first.header).map_err(wire_status)?;
        self.check_fence(header.vote.leader_id().node_id)?;
        tokio::fs::create_dir_all(&self.inbox)
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        let path = self
            .inbox
            .join(format!("incoming-{:016x}.db", rand::random::<u64>()));
        let received = async {
            let mut file = tokio::fs::File::create(&path).await?;
            while let Some(chunk) = stream.message().await.map_err(std::io::Error::other)? {
                file.write_all(&chunk.data).await?;
            }
            file.sync_all().await?;
            Ok::<(), std::io::Error>(())
        }
        .await;
        if let Err(e) = received {
            let _ = tokio::fs::remove_file(&path).await;
            return Err(Status::aborted(format!("snapshot transfer failed: {e}")));
        }
        let snapshot = Snapshot {
            meta: header.meta,
            snapshot: SnapshotFile { path: path.clone() },
        };
        let resp = self.raft.install_full_snapshot(header.vote, snapshot).await;
        // The state machine copied what it keeps; the inbox file is ours to delete.
        let _ = tokio::fs::remove_file(&path).await;
        let resp = resp.map_err(fatal)?;
        wire::encode(&resp, Format::of(first.version))
            .map(tonic::Response::new)
            .map_err(wire_status)
    }

    async fn forward(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let request: Request = decode(req.get_ref())?;
        // The outcome in the leader's response is dropped on purpose: the origin node learns
        // it from its own apply of the same entry (`Response` never crosses the wire). The
        // reply only says "committed at this log id" or "not the leader, nothing appended".
        let reply = match self.raft.client_write(request).await {
            Ok(resp) => ForwardReply::Committed { log_id: resp.log_id },
            Err(openraft::errors::RaftError::APIError(
                openraft::errors::ClientWriteError::ForwardToLeader(f),
            )) => ForwardReply::NotLeader { leader: f.leader_id },
            Err(e) => return Err(Status::unavailable(format!("forwarded write failed: {e}"))),
        };
        reply_to(&reply, req.get_ref())
    }

    async fn read_index(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        // ReadIndex on the leader: confirms leadership with a quorum, then reports the index
        // the caller must apply up to. The caller waits locally; the leader does not.
        let reply = match self.raft.get_read_linearizer(ReadPolicy::ReadIndex).await {
            Ok(lin) => ReadIndexReply::Index {
                index: lin.read_log_id().index(),
            },
            Err(openraft::errors::RaftError::APIError(
                openraft::errors::LinearizableReadError::ForwardToLeader(f),
            )) => ReadIndexReply::NotLeader { leader: f.leader_id },
            Err(e) => return Err(Status::unavailable(format!("read index failed: {e}"))),
        };
        reply_to(&reply, req.get_ref())
    }

    async fn join(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let join: JoinRequest = decode(req.get_ref())?;
        self.check_fence(join.id)?;
        let reply = membership::handle_join(&self.raft, &self.membership, join).await;
        reply_to(&reply, req.get_ref())
    }

    async fn remove(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let remove: RemoveRequest = decode(req.get_ref())?;
        let reply = membership::handle_remove(&self.raft, &self.membership, &self.policy, remove).await;
        reply_to(&reply, req.get_ref())
    }

    async fn lease(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let lease: LeaseRequest = decode(req.get_ref())?;
        let m = self.raft.metrics().borrow_watched().clone();
        // Only the leader expires leases, so only its deadlines mean anything; a follower that
        // answered from its own clock would let the lease expire on the leader regardless.
        let reply = match &self.leases {
            Some(clock) if m.current_leader == Some(m.id) => lease.answer(clock.as_ref()),
            Some(_) => LeaseReply::NotLeader {
                leader: m.current_leader,
            },
            None => return Err(Status::unimplemented("this peer keeps no lease clock")),
        };
        reply_to(&reply, req.get_ref())
    }
}

/// The peer service's gate (`peer_auth`): a caller whose certificate does not name a datastore
/// peer is logged with its address and the reason, and gets `PermissionDenied` before its call
/// reaches openraft.
impl tonic::service::Interceptor for PeerAuth {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        match self.check(&req) {
            Ok(()) => Ok(req),
            Err(refusal) => {
                let from = req
                    .remote_addr()
                    .map_or_else(|| "unknown".to_string(), |a| a.to_string());
                tracing::warn!(from = %from, reason = %refusal, "refused a datastore peer call");
                Err(Status::permission_denied(format!(
                    "refused by the datastore peer service: {refusal}"
                )))
            }
        }
    }
}
