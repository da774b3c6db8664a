//! The peer body formats over real gRPC: what a node answers to each format, and which format
//! a node sends a peer of each kind, the way a rolling upgrade meets them.
//!
//! A k8sd of the previous release refuses a body newer than it reads, so a node must send a
//! peer the binary format (2) only after that peer said it reads it. The fake peers below
//! answer as the three kinds of k8sd a cluster can hold during an upgrade or a rollback, and
//! record the format of every request they get.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8sd::raft::pb::Msg;
use k8sd::raft::pb::raft_peer_server::{RaftPeer, RaftPeerServer};
use k8sd::raft::transport::NetworkFactory;
use k8sd::raft::types::Vote;
use k8sd::raft::wire::{self, Format, PEER_VERSION};
use k8sd::raft::{NodeInfo, RaftConfig, RaftNode, TypeConfig};
use openraft::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status, Streaming};

/// Which k8sd a fake peer answers as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Kind {
    /// This build: reads both formats, answers in the request's, says it reads 2.
    Current = 0,
    /// The release before binary bodies: reads format 1, refuses a newer one with
    /// FAILED_PRECONDITION, and its messages carry no `reads`.
    Format1 = 1,
    /// k8sd 0.1.0: no version at all; it parses every body as JSON, so a binary one is
    /// INVALID_ARGUMENT.
    Unversioned = 2,
}

/// A peer service that answers Vote and AppendEntries as `kind` says, recording the `version`
/// of every request.
#[derive(Debug, Clone, Default)]
struct FakePeer {
    kind: Arc<AtomicU8>,
    seen: Arc<Mutex<Vec<u32>>>,
}

impl FakePeer {
    fn become_(&self, kind: Kind) {
        self.kind.store(kind as u8, Ordering::SeqCst);
    }

    fn kind(&self) -> Kind {
        match self.kind.load(Ordering::SeqCst) {
            0 => Kind::Current,
            1 => Kind::Format1,
            _ => Kind::Unversioned,
        }
    }

    /// The versions of the requests since the last call.
    fn take(&self) -> Vec<u32> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }

    fn answer<Req: serde::de::DeserializeOwned, Resp: serde::Serialize>(
        &self,
        req: &Msg,
        respond: impl FnOnce(Req) -> Resp,
    ) -> Result<Response<Msg>, Status> {
        self.seen.lock().unwrap().push(req.version);
        let kind = self.kind();
        match kind {
            Kind::Format1 if req.version > 1 => {
                return Err(Status::failed_precondition(format!(
                    "raft peer message has format version {}, this k8sd reads up to 1",
                    req.version
                )));
            }
            Kind::Unversioned if req.version > 1 => {
                return Err(Status::invalid_argument(
                    "undecodable raft message: expected value",
                ));
            }
            _ => {}
        }
        let parsed: Req = wire::decode(req).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let mut reply = wire::encode(&respond(parsed), Format::of(req.version)).unwrap();
        if kind != Kind::Current {
            // Older builds do not know the field; proto3 leaves it out, which reads as 0.
            reply.reads = 0;
        }
        if kind == Kind::Unversioned {
            reply.version = 0;
        }
        Ok(Response::new(reply))
    }
}

fn unused() -> Status {
    Status::unimplemented("not part of this test")
}

#[tonic::async_trait]
impl RaftPeer for FakePeer {
    async fn append_entries(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        self.answer(req.get_ref(), |_: AppendEntriesRequest<TypeConfig>| {
            AppendEntriesResponse::<TypeConfig>::Success
        })
    }

    async fn vote(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        self.answer(req.get_ref(), |r: VoteRequest<TypeConfig>| {
            VoteResponse::<TypeConfig>::new(r.vote, None, false)
        })
    }

    async fn pre_vote(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        self.vote(req).await
    }

    async fn transfer_leader(&self, _: Request<Msg>) -> Result<Response<Msg>, Status> {
        Err(unused())
    }

    async fn install_snapshot(
        &self,
        _: Request<Streaming<k8sd::raft::pb::SnapshotChunk>>,
    ) -> Result<Response<Msg>, Status> {
        Err(unused())
    }

    async fn forward(&self, _: Request<Msg>) -> Result<Response<Msg>, Status> {
        Err(unused())
    }

    async fn read_index(&self, _: Request<Msg>) -> Result<Response<Msg>, Status> {
        Err(unused())
    }

    async fn join(&self, _: Request<Msg>) -> Result<Response<Msg>, Status> {
        Err(unused())
    }

    async fn remove(&self, _: Request<Msg>) -> Result<Response<Msg>, Status> {
        Err(unused())
    }

    async fn lease(&self, _: Request<Msg>) -> Result<Response<Msg>, Status> {
        Err(unused())
    }
}

/// `fake` serving on a loopback port; its address.
async fn serve(fake: FakePeer) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RaftPeerServer::new(fake))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
    );
    addr
}

fn opt() -> RPCOption {
    RPCOption::new(Duration::from_secs(5))
}

fn heartbeat() -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(2, 1),
        prev_log_id: None,
        entries: vec![],
        leader_commit: None,
    }
}

/// Node 1's openraft network to the fake as node 2.
async fn network_to(addr: &str) -> k8sd::raft::transport::PeerNetwork {
    let info = NodeInfo {
        name: "fake".into(),
        peer_addr: addr.into(),
        client_addr: String::new(),
    };
    NetworkFactory::new(1, None).new_client(2, &info).await
}

/// A peer of this build is sent JSON until its first reply says it reads format 2, and binary
/// from then on, for votes and AppendEntries alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t10_a_current_peer_gets_binary_after_its_first_reply() {
    let fake = FakePeer::default();
    let mut net = network_to(&serve(fake.clone()).await).await;
    net.vote(VoteRequest::new(Vote::new(2, 1), None), opt())
        .await
        .unwrap();
    net.append_entries(heartbeat(), opt()).await.unwrap();
    net.vote(VoteRequest::new(Vote::new(3, 1), None), opt())
        .await
        .unwrap();
    assert_eq!(fake.take(), vec![1, 2, 2]);
}

/// A peer of the release before, and one of 0.1.0, never get a binary body however many
/// times they answer: their replies carry no `reads`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t20_older_peers_only_ever_get_json() {
    for kind in [Kind::Format1, Kind::Unversioned] {
        let fake = FakePeer::default();
        fake.become_(kind);
        let mut net = network_to(&serve(fake.clone()).await).await;
        for _ in 0..3 {
            net.append_entries(heartbeat(), opt()).await.unwrap();
        }
        net.pre_vote(VoteRequest::new(Vote::new(2, 1), None), opt())
            .await
            .unwrap();
        assert_eq!(fake.take(), vec![1, 1, 1, 1], "{kind:?}");
    }
}

/// A peer rolled back to an older build while this node was sending it binary: the first
/// binary body it refuses (each older build refuses in its own way) fails that one request,
/// which openraft sends again, and every request after it goes in JSON. Upgraded again, the
/// peer gets binary after its first reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t30_a_rolled_back_peer_gets_json_again_and_binary_after_it_is_upgraded() {
    for old in [Kind::Format1, Kind::Unversioned] {
        let fake = FakePeer::default();
        let mut net = network_to(&serve(fake.clone()).await).await;
        net.append_entries(heartbeat(), opt()).await.unwrap();
        net.append_entries(heartbeat(), opt()).await.unwrap();
        assert_eq!(fake.take(), vec![1, 2]);

        fake.become_(old);
        let refused = net.append_entries(heartbeat(), opt()).await;
        assert!(
            refused.is_err(),
            "{old:?}: a binary body to an older build is refused"
        );
        net.append_entries(heartbeat(), opt()).await.unwrap();
        net.append_entries(heartbeat(), opt()).await.unwrap();
        assert_eq!(fake.take(), vec![2, 1, 1], "{old:?}");

        fake.become_(Kind::Current);
        net.append_entries(heartbeat(), opt()).await.unwrap();
        net.append_entries(heartbeat(), opt()).await.unwrap();
        assert_eq!(fake.take(), vec![1, 2], "{old:?}");
    }
}

/// A real node's peer service: it answers a request in the request's format (so a JSON
/// request from an older build gets JSON back), says in every reply that it reads format 2,
/// and refuses a newer format with FAILED_PRECONDITION naming both versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn t40_a_node_answers_in_the_requests_format_and_says_what_it_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let mut c = RaftConfig::new(tmp.path(), "n", &addr, "http://127.0.0.1:2379");
    c.heartbeat = Duration::from_millis(50);
    c.election_timeout = (Duration::from_millis(400), Duration::from_millis(800));
    let node = RaftNode::start(c, l).await.unwrap();
    node.bootstrap().await.unwrap();

    // A pre-vote of a stranger in term 0 changes nothing on the node; it is only asked.
    let ask = VoteRequest::<TypeConfig>::new(Vote::new(0, 99), None);
    let mut client = NetworkFactory::new(99, None).client(&addr).unwrap();
    for (version, reads) in [(0, 0), (1, 0), (1, PEER_VERSION), (2, PEER_VERSION)] {
        let mut m = wire::encode(&ask, Format::of(version)).unwrap();
        (m.version, m.reads) = (version, reads);
        let reply = client.grpc().pre_vote(m).await.unwrap().into_inner();
        assert_eq!(
            (reply.version, reply.reads),
            (Format::of(version).version(), PEER_VERSION),
            "request version {version}, reads {reads}"
        );
        let resp: VoteResponse<TypeConfig> = wire::decode(&reply).unwrap();
        assert!(!resp.vote_granted, "request version {version}");
    }

    let mut newer = wire::encode(&ask, Format::Binary).unwrap();
    newer.version = PEER_VERSION + 1;
    let status = client.grpc().pre_vote(newer).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status}");
    assert!(
        status
            .message()
            .contains(&format!("format version {}", PEER_VERSION + 1))
            && status.message().contains(&format!("reads up to {PEER_VERSION}")),
        "{status}"
    );
    node.shutdown().await.unwrap();
}
