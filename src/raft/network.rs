//! The peer transport: openraft's `RaftNetworkV2` as a tonic gRPC client, and the `RaftPeer`
//! gRPC service that feeds incoming RPCs to the local `Raft`.
//!
//! ```text
//!  leader's openraft ──PeerNetwork──gRPC (mTLS)──▶ PeerService ──▶ follower's openraft
//!                     AppendEntries/Vote/PreVote/TransferLeader: one JSON body each way
//!                     InstallSnapshot: client stream, header chunk then the SQLite file
//!  follower RaftNode ──Forward / ReadIndex──────▶ PeerService on the leader
//!  any RaftNode ──Join / Remove / Lease──────────▶ PeerService on the leader
//! ```
//!
//! Bodies are JSON (serde_json) of openraft's serde types: it is self-describing, so an added
//! `#[serde(default)]` field stays compatible across a rolling upgrade. A binary codec is a
//! later optimisation (docs/design/raft.md).
//!
//! Every message carries `PEER_VERSION`, the format of its body. A body format that an older
//! node could misread bumps it; a node then refuses what is newer than it reads, naming both
//! versions, instead of misapplying it. A k8sd older than the field sends 0, read as 1.
//!
//! Error mapping, which decides openraft's retry behaviour: a connection failure or an
//! UNAVAILABLE status is `Unreachable` (openraft backs off), a deadline is `Timeout`, anything
//! else is `Network` (retried at once).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{RaftNetworkV2, ReadPolicy};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::membership::{self, JoinRequest, MembershipLock, RemoveRequest};
use super::pb::raft_peer_client::RaftPeerClient;
use super::pb::raft_peer_server::RaftPeer;
use super::pb::{Msg, SnapshotChunk};
use super::state_machine::StateMachine;
use super::types::{LogId, NodeInfo, Request, Snapshot, SnapshotFile, SnapshotMeta, TypeConfig, Vote};

/// Largest gRPC message either side accepts: one AppendEntries batch of big objects.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Snapshot bytes per stream message.
const SNAPSHOT_CHUNK: usize = 1 << 20;

pub type Raft = openraft::Raft<TypeConfig, StateMachine>;

/// Reply to `Forward`: the entry was appended on the leader and committed at `log_id`, or this
/// node is not the leader (with a hint where it is).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardReply {
    Committed { log_id: LogId },
    NotLeader { leader: Option<u64> },
}

/// Reply to `ReadIndex`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ReadIndexReply {
    Index { index: u64 },
    NotLeader { leader: Option<u64> },
}

/// `Lease` request: a lease keep-alive or time-to-live asked of the leader's lease clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaseRequest {
    Renew { id: i64 },
    Remaining { id: i64 },
}

/// Reply to `Lease`. `None` means the leader does not know the lease (never granted,
/// revoked, or already expiring).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LeaseReply {
    Renewed { ttl: Option<i64> },
    Remaining { left: Option<(i64, i64)> },
    NotLeader { leader: Option<u64> },
}

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

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotHeader {
    vote: Vote,
    meta: SnapshotMeta,
}

/// The format of peer message bodies and snapshot headers this build writes and reads.
pub const PEER_VERSION: u32 = 1;

/// A body of `found`'s format is readable here: any version up to ours (0 is a k8sd from before
/// messages carried one, whose format is 1's).
fn check_peer_version(found: u32) -> Result<(), Status> {
    if found <= PEER_VERSION {
        return Ok(());
    }
    Err(Status::failed_precondition(format!(
        "raft peer message has format version {found}, this k8sd reads up to {PEER_VERSION}; \
         upgrade this node's k8sd to the version of its peers"
    )))
}

fn encode<T: Serialize>(v: &T) -> Result<Msg, Status> {
    serde_json::to_vec(v)
        .map(|body| Msg {
            body,
            version: PEER_VERSION,
        })
        .map_err(|e| Status::internal(format!("encode: {e}")))
}

fn decode<T: DeserializeOwned>(m: &Msg) -> Result<T, Status> {
    check_peer_version(m.version)?;
    serde_json::from_slice(&m.body)
        .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------------------------

/// Fault injection for in-process cluster tests (TiKV's message filters, reduced to
/// isolation): an isolated node can neither send nor receive peer RPCs. One `Faults` is shared
/// by every node of a test cluster; production nodes have none.
#[derive(Debug, Default)]
pub struct Faults {
    isolated: Mutex<HashSet<u64>>,
}

impl Faults {
    pub fn isolate(&self, id: u64) {
        self.isolated.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    }

    pub fn heal(&self, id: u64) {
        self.isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }

    /// Whether an RPC from `from` to `to` is dropped.
    pub fn blocks(&self, from: u64, to: u64) -> bool {
        let set = self.isolated.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(&from) || set.contains(&to)
    }
}

/// Creates peer clients; one HTTP/2 channel per peer address, shared by all its clients.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    my_id: u64,
    tls: Option<ClientTlsConfig>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    faults: Option<Arc<Faults>>,
}

impl NetworkFactory {
    /// `tls` carries the cluster CA and this node's peer certificate for mutual TLS; `None`
    /// means plain HTTP/2 (tests on loopback only).
    pub fn new(my_id: u64, tls: Option<ClientTlsConfig>) -> Self {
        NetworkFactory {
            my_id,
            tls,
            channels: Arc::default(),
            faults: None,
        }
    }

    /// Drop RPCs according to `faults` (tests only).
    pub fn with_faults(mut self, faults: Option<Arc<Faults>>) -> Self {
        self.faults = faults;
        self
    }

    /// Whether fault injection drops RPCs from this node to `to`.
    pub fn blocks(&self, to: u64) -> bool {
        self.faults.as_ref().is_some_and(|f| f.blocks(self.my_id, to))
    }

    /// A gRPC client for the peer service at `addr` (`host:port`).
    pub fn client(&self, addr: &str) -> Result<RaftPeerClient<Channel>, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match map.get(addr) {
            Some(c) => c.clone(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut ep = Endpoint::from_shared(format!("{scheme}://{addr}"))?
                    .tcp_nodelay(true)
                    .connect_timeout(Duration::from_secs(2))
                    .http2_keep_alive_interval(Duration::from_secs(10))
                    .keep_alive_timeout(Duration::from_secs(5));
                if let Some(tls) = &self.tls {
                    ep = ep.tls_config(tls.clone())?;
                }
                // Lazy: a peer that is down now costs nothing until it is called, and tonic
                // reconnects by itself when it comes back.
                let c = ep.connect_lazy();
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        Ok(RaftPeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = PeerNetwork;

    async fn new_client(&mut self, target: u64, node: &NodeInfo) -> PeerNetwork {
        PeerNetwork {
            faults: self.faults.clone(),
            my_id: self.my_id,
            target,
            client: self
                .client(&node.peer_addr)
                .map_err(|e| format!("peer address {}: {e}", node.peer_addr)),
        }
    }
}

/// openraft's connection to one peer.
#[derive(Debug)]
pub struct PeerNetwork {
    faults: Option<Arc<Faults>>,
    my_id: u64,
    target: u64,
    client: Result<RaftPeerClient<Channel>, String>,
}

/// Why a unary call failed, before it is mapped to openraft's error type.
#[derive(Debug)]
pub(crate) enum CallError {
    Timeout(Duration),
    Unreachable(String),
    Other(String),
}

impl CallError {
    fn from_status(s: Status) -> Self {
        // tonic reports a refused connection or a failed TLS handshake as UNAVAILABLE or
        // UNKNOWN ("transport error"); a stopped remote Raft answers UNAVAILABLE on purpose.
        // All of those mean "try again later", not "this request is bad".
        match s.code() {
            Code::Unavailable | Code::Unknown | Code::Cancelled => CallError::Unreachable(s.to_string()),
            _ => CallError::Other(s.to_string()),
        }
    }

    fn into_rpc(self, my_id: u64, target: u64, action: RPCTypes) -> RPCError<TypeConfig> {
        match self {
            CallError::Timeout(timeout) => RPCError::Timeout(Timeout {
                action,
                id: my_id,
                target,
                timeout,
            }),
            CallError::Unreachable(m) => RPCError::Unreachable(Unreachable::new(&std::io::Error::other(m))),
            CallError::Other(m) => RPCError::Network(NetworkError::new(&std::io::Error::other(m))),
        }
    }

    fn into_streaming(self, my_id: u64, target: u64) -> StreamingError<TypeConfig> {
        match self.into_rpc(my_id, target, RPCTypes::InstallSnapshot) {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&r)),
        }
    }
}

/// Which unary RPC to make; lets one function own the timeout and error handling.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Method {
    Append,
    Vote,
    PreVote,
    TransferLeader,
    Forward,
    ReadIndex,
    Join,
    Remove,
    Lease,
}

/// One unary call with a deadline. The body is JSON of `req`; the reply is decoded as `T`.
pub(crate) async fn call<Req: Serialize, T: DeserializeOwned>(
    client: &mut RaftPeerClient<Channel>,
    method: Method,
    req: &Req,
    ttl: Duration,
) -> Result<T, CallError> {
    let msg = encode(req).map_err(|s| CallError::Other(s.to_string()))?;
    let fut = async {
        match method {
            Method::Append => client.append_entries(msg).await,
            Method::Vote => client.vote(msg).await,
            Method::PreVote => client.pre_vote(msg).await,
            Method::TransferLeader => client.transfer_leader(msg).await,
            Method::Forward => client.forward(msg).await,
            Method::ReadIndex => client.read_index(msg).await,
            Method::Join => client.join(msg).await,
            Method::Remove => client.remove(msg).await,
            Method::Lease => client.lease(msg).await,
        }
    };
    let reply = tokio::time::timeout(ttl, fut)
        .await
        .map_err(|_| CallError::Timeout(ttl))?;
    let reply = reply.map_err(CallError::from_status)?;
    decode(reply.get_ref()).map_err(|s| CallError::Other(s.to_string()))
}

impl PeerNetwork {
    fn isolated(&self) -> bool {
        self.faults
            .as_ref()
            .is_some_and(|f| f.blocks(self.my_id, self.target))
    }

    async fn unary<Req: Serialize, T: DeserializeOwned>(
        &mut self,
        method: Method,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> Result<T, RPCError<TypeConfig>> {
        let (my_id, target) = (self.my_id, self.target);
        if self.isolated() {
            return Err(
                CallError::Unreachable("isolated by fault injection".into()).into_rpc(my_id, target, action)
            );
        }
        let client = self
            .client
            .as_mut()
            .map_err(|e| CallError::Unreachable(e.clone()).into_rpc(my_id, target, action))?;
        // `hard_ttl` is openraft's deadline for this RPC (heartbeats get a short one, big
        // appends a longer one); past it the caller treats the peer as timed out.
        call(client, method, req, option.hard_ttl())
            .await
            .map_err(|e| e.into_rpc(my_id, target, action))
    }
}

/// The snapshot as a stream of chunks: the header first, then the file in 1 MiB pieces.
fn snapshot_chunks(
    header: Vec<u8>,
    file: tokio::fs::File,
) -> impl Stream<Item = SnapshotChunk> + Send + 'static {
    use tokio::io::AsyncReadExt;
    let first = futures::stream::once(async move {
        SnapshotChunk {
            header,
            data: Vec::new(),
            version: PEER_VERSION,
        }
    });
    let rest = futures::stream::unfold(Some(file), |file| async move {
        let mut file = file?;
        let mut buf = vec![0u8; SNAPSHOT_CHUNK];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    SnapshotChunk {
                        header: Vec::new(),
                        data: buf,
                        version: PEER_VERSION,
                    },
                    Some(file),
                ))
            }
            Err(e) => {
                // Ending early makes the receiver see a short file, which fails to install;
                // openraft then retries the whole snapshot.
                tracing::warn!(error = %e, "reading snapshot for sending failed");
                None
            }
        }
    });
    first.chain(rest)
}

impl RaftNetworkV2<TypeConfig> for PeerNetwork {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        // A heartbeat (no entries) is a bare round trip to the peer: etcd's
        // `peer_round_trip_time_seconds`, which etcd measures with its own probes.
        let heartbeat = rpc.entries.is_empty();
        let started = std::time::Instant::now();
        let reply = self
            .unary(Method::Append, RPCTypes::AppendEntries, &rpc, &option)
            .await;
        if heartbeat && reply.is_ok() {
            crate::metrics::etcd::ETCD.peer_round_trip(self.target, started.elapsed());
        }
        reply
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Method::Vote, RPCTypes::Vote, &rpc, &option).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Method::PreVote, RPCTypes::Vote, &rpc, &option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.unary(Method::TransferLeader, RPCTypes::TransferLeader, &req, &option)
            .await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let (my_id, target) = (self.my_id, self.target);
        if self.isolated() {
            return Err(
                CallError::Unreachable("isolated by fault injection".into()).into_streaming(my_id, target)
            );
        }
        let client = match self.client.as_mut() {
            Ok(c) => c,
            Err(e) => return Err(CallError::Unreachable(e.clone()).into_streaming(my_id, target)),
        };
        let header = serde_json::to_vec(&SnapshotHeader {
            vote,
            meta: snapshot.meta,
        })
        .map_err(|e| CallError::Other(e.to_string()).into_streaming(my_id, target))?;
        let file = tokio::fs::File::open(&snapshot.snapshot.path)
            .await
            .map_err(|e| CallError::Other(format!("open snapshot: {e}")).into_streaming(my_id, target))?;
        // The file was opened before streaming starts, so a newer snapshot replacing (and
        // deleting) this one mid-transfer does not cut it short: the open file stays readable.
        // `cancel` fires when openraft no longer wants this snapshot (e.g. leadership lost).
        let ttl = option.hard_ttl();
        let send = tokio::time::timeout(ttl, client.install_snapshot(snapshot_chunks(header, file)));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => {
                let reply = r.map_err(|_| CallError::Timeout(ttl).into_streaming(my_id, target))?
                    .map_err(|s| CallError::from_status(s).into_streaming(my_id, target))?;
                decode(reply.get_ref()).map_err(|s| CallError::Other(s.to_string()).into_streaming(my_id, target))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Server side
// ---------------------------------------------------------------------------------------------

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
        encode(&resp).map(tonic::Response::new)
    }

    async fn vote(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        self.check_fence(rpc.vote.leader_id().node_id)?;
        let resp = self.raft.vote(rpc).await.map_err(fatal)?;
        encode(&resp).map(tonic::Response::new)
    }

    async fn pre_vote(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let rpc: VoteRequest<TypeConfig> = decode(req.get_ref())?;
        self.check_fence(rpc.vote.leader_id().node_id)?;
        let resp = self.raft.pre_vote(rpc).await.map_err(fatal)?;
        encode(&resp).map(tonic::Response::new)
    }

    async fn transfer_leader(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let rpc: TransferLeaderRequest<TypeConfig> = decode(req.get_ref())?;
        let resp = self.raft.handle_transfer_leader(rpc).await.map_err(fatal)?;
        encode(&resp).map(tonic::Response::new)
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
        check_peer_version(first.version)?;
        let header: SnapshotHeader = serde_json::from_slice(&first.header)
            .map_err(|e| Status::invalid_argument(format!("undecodable snapshot header: {e}")))?;
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
        encode(&resp.map_err(fatal)?).map(tonic::Response::new)
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
        encode(&reply).map(tonic::Response::new)
    }

    async fn read_index(&self, _req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
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
        encode(&reply).map(tonic::Response::new)
    }

    async fn join(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let join: JoinRequest = decode(req.get_ref())?;
        self.check_fence(join.id)?;
        let reply = membership::handle_join(&self.raft, &self.membership, join).await;
        encode(&reply).map(tonic::Response::new)
    }

    async fn remove(&self, req: tonic::Request<Msg>) -> Result<tonic::Response<Msg>, Status> {
        let remove: RemoveRequest = decode(req.get_ref())?;
        let reply = membership::handle_remove(&self.raft, &self.membership, &self.policy, remove).await;
        encode(&reply).map(tonic::Response::new)
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
        encode(&reply).map(tonic::Response::new)
    }
}

/// The peer service's gate (`peer_auth`): a caller whose certificate does not name a datastore
/// peer is logged with its address and the reason, and gets `PermissionDenied` before its call
/// reaches openraft.
impl tonic::service::Interceptor for super::peer_auth::PeerAuth {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A message from a k8sd older than the version field (0) and one of this version decode;
    /// a newer one is refused naming both versions, before its body is read.
    #[test]
    fn peer_messages_carry_a_version_and_newer_ones_are_refused() {
        let msg = encode(&LeaseRequest::Renew { id: 7 }).unwrap();
        assert_eq!(msg.version, PEER_VERSION);
        assert!(matches!(
            decode::<LeaseRequest>(&msg).unwrap(),
            LeaseRequest::Renew { id: 7 }
        ));

        let old = Msg {
            version: 0,
            ..msg.clone()
        };
        assert!(matches!(
            decode::<LeaseRequest>(&old).unwrap(),
            LeaseRequest::Renew { id: 7 }
        ));

        let newer = Msg {
            version: PEER_VERSION + 1,
            ..msg
        };
        let e = decode::<LeaseRequest>(&newer).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
        let text = e.message();
        assert!(
            text.contains(&format!("format version {}", PEER_VERSION + 1))
                && text.contains(&format!("reads up to {PEER_VERSION}")),
            "{text}"
        );
    }
}
