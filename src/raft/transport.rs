//! The client side of the peer transport: openraft's `RaftNetworkV2` over tonic gRPC, and the
//! unary calls a `RaftNode` makes itself (Forward, ReadIndex, Join, Remove, Lease).
//!
//! ```text
//!  leader's openraft ──PeerNetwork──gRPC (mTLS)──▶ service.rs on the follower
//!                     AppendEntries/Vote/PreVote/TransferLeader: one `wire` body each way
//!                     InstallSnapshot: client stream, header chunk then the SQLite file
//!  follower RaftNode ──Forward / ReadIndex──────▶ the leader's service
//!  any RaftNode ──Join / Remove / Lease──────────▶ the leader's service
//! ```
//!
//! Error mapping, which decides openraft's retry behaviour: a connection failure or an
//! UNAVAILABLE status is `Unreachable` (openraft backs off), a deadline is `Timeout`, anything
//! else is `Network` (retried at once).
//!
//! Fault injection is a [`PeerFilter`] a test hands in through `RaftConfig::faults` (TiKV's
//! message filters, reduced to dropping): the filters themselves live with the tests, and a
//! production node has none, so all it costs there is one `None` check per RPC
//! (docs/decisions/001-fault-injection-as-a-peer-filter.md).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use openraft::RaftNetworkV2;
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Status};

use super::negotiate::PeerReads;
use super::pb::SnapshotChunk;
use super::pb::raft_peer_client::RaftPeerClient;
use super::types::{NodeInfo, Snapshot, SnapshotFile, TypeConfig, Vote};
use super::wire::{Format, JSON_VERSION, SnapshotHeader, decode, encode, encode_body};

/// Largest gRPC message either side accepts: one AppendEntries batch of big objects.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Snapshot bytes per stream message.
const SNAPSHOT_CHUNK: usize = 1 << 20;

/// Which peer RPCs a test drops. One filter is shared by every node of an in-process test
/// cluster; the sending node asks it before every RPC, and a dropped RPC fails as if the peer
/// were unreachable.
pub trait PeerFilter: Send + Sync + std::fmt::Debug {
    /// Whether an RPC from `from` to `to` is dropped.
    fn blocks(&self, from: u64, to: u64) -> bool;
}

/// Creates peer clients; one HTTP/2 channel per peer address, and one record of the body
/// format that peer reads (`negotiate.rs`), shared by all its clients.
#[derive(Debug, Clone)]
pub struct NetworkFactory {
    my_id: u64,
    tls: Option<ClientTlsConfig>,
    channels: Arc<Mutex<HashMap<String, Peer>>>,
    faults: Option<Arc<dyn PeerFilter>>,
}

/// One peer address's channel and what that peer reads.
type Peer = (Channel, Arc<PeerReads>);

/// A gRPC client of one peer, with what that peer reads.
#[derive(Debug, Clone)]
pub struct PeerClient {
    grpc: RaftPeerClient<Channel>,
    reads: Arc<PeerReads>,
}

impl PeerClient {
    /// The bare gRPC client, whose messages bypass the format negotiation (tests send
    /// hand-made bodies through it).
    pub fn grpc(&mut self) -> &mut RaftPeerClient<Channel> {
        &mut self.grpc
    }
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
    pub fn with_faults(mut self, faults: Option<Arc<dyn PeerFilter>>) -> Self {
        self.faults = faults;
        self
    }

    /// Whether fault injection drops RPCs from this node to `to`.
    pub fn blocks(&self, to: u64) -> bool {
        self.faults.as_ref().is_some_and(|f| f.blocks(self.my_id, to))
    }

    /// A gRPC client for the peer service at `addr` (`host:port`).
    pub fn client(&self, addr: &str) -> Result<PeerClient, tonic::transport::Error> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let (channel, reads) = match map.get(addr) {
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
                let c = (ep.connect_lazy(), Arc::default());
                map.insert(addr.to_string(), c.clone());
                c
            }
        };
        let grpc = RaftPeerClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(PeerClient { grpc, reads })
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
    faults: Option<Arc<dyn PeerFilter>>,
    my_id: u64,
    target: u64,
    client: Result<PeerClient, String>,
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

/// Which unary RPC to make; lets one function own the timeout, the body format and error
/// handling.
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

impl Method {
    /// Whether this RPC's body goes in binary to a peer that reads it. The ones that carry
    /// entries or run at every election do; the rest are rare and small, and stay JSON, so
    /// their k8sd-owned types can still grow a `#[serde(default)]` field without a new format.
    fn may_go_binary(self) -> bool {
        match self {
            Method::Append | Method::Vote | Method::PreVote | Method::Forward => true,
            Method::TransferLeader | Method::ReadIndex | Method::Join | Method::Remove | Method::Lease => {
                false
            }
        }
    }
}

/// One unary call with a deadline. The body is `req` encoded by `wire`, in binary where the
/// method allows it and the peer is known to read it; the reply is decoded as `T`, and its
/// `reads` is what the peer is sent next.
pub(crate) async fn call<Req: Serialize, T: DeserializeOwned>(
    peer: &mut PeerClient,
    method: Method,
    req: &Req,
    ttl: Duration,
) -> Result<T, CallError> {
    let format = if method.may_go_binary() {
        peer.reads.format()
    } else {
        Format::Json
    };
    let msg = encode(req, format).map_err(|e| CallError::Other(e.to_string()))?;
    let client = &mut peer.grpc;
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
    let reply = reply.map_err(|s| {
        if format == Format::Binary && matches!(s.code(), Code::FailedPrecondition | Code::InvalidArgument) {
            // A peer rolled back to a build that does not read binary bodies; openraft sends
            // the request again, in JSON from now on.
            tracing::info!(status = %s, "a peer refused a binary message; sending it JSON");
            peer.reads.refused();
        }
        CallError::from_status(s)
    })?;
    peer.reads.heard(reply.get_ref().reads);
    decode(reply.get_ref()).map_err(|e| CallError::Other(e.to_string()))
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
            version: JSON_VERSION,
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
                        version: JSON_VERSION,
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
        // The header goes in JSON to every peer: it is sent once per snapshot, and a snapshot
        // stream has no reply before it that could say what the receiver reads.
        let header = SnapshotHeader {
            vote,
            meta: snapshot.meta,
        };
        let header = encode_body(&header, Format::Json)
            .map_err(|e| CallError::Other(e.to_string()).into_streaming(my_id, target))?;
        let file = tokio::fs::File::open(&snapshot.snapshot.path)
            .await
            .map_err(|e| CallError::Other(format!("open snapshot: {e}")).into_streaming(my_id, target))?;
        // The file was opened before streaming starts, so a newer snapshot replacing (and
        // deleting) this one mid-transfer does not cut it short: the open file stays readable.
        // `cancel` fires when openraft no longer wants this snapshot (e.g. leadership lost).
        let ttl = option.hard_ttl();
        let send = tokio::time::timeout(ttl, client.grpc.install_snapshot(snapshot_chunks(header, file)));
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => {
                let reply = r.map_err(|_| CallError::Timeout(ttl).into_streaming(my_id, target))?
                    .map_err(|s| CallError::from_status(s).into_streaming(my_id, target))?;
                client.reads.heard(reply.get_ref().reads);
                decode(reply.get_ref()).map_err(|e| CallError::Other(e.to_string()).into_streaming(my_id, target))
            }
        }
    }
}
