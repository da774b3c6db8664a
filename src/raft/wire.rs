//! The peer messages: what the `RaftPeer` RPCs carry besides openraft's own types, and how a
//! body is encoded.
//!
//! Every body is serde_json in a `Msg` (`proto/raft/raft.proto`). JSON is self-describing, so a
//! field added with `#[serde(default)]` stays compatible across a rolling upgrade, where old
//! and new nodes exchange these messages: never rename a field or variant, never change a
//! field's type, and keep the encoding of what exists byte for byte (the unit tests below pin
//! it). Nothing here knows how a message is sent (`transport.rs`) or answered (`service.rs`).
//!
//! Every message carries `PEER_VERSION`, the format of its body. A body format that an older
//! node could misread bumps it; a node then refuses what is newer than it reads, naming both
//! versions, instead of misapplying it. A k8sd older than the field sends 0, read as 1.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::pb::Msg;
use super::types::{LogId, NodeInfo, SnapshotMeta, Vote};

/// A body that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("encode: {0}")]
    Encode(#[source] serde_json::Error),
    #[error("undecodable raft message: {0}")]
    Decode(#[source] serde_json::Error),
    #[error(
        "raft peer message has format version {found}, this k8sd reads up to {PEER_VERSION}; \
         upgrade this node's k8sd to the version of its peers"
    )]
    TooNew { found: u32 },
}

/// The format of peer message bodies and snapshot headers this build writes and reads.
pub const PEER_VERSION: u32 = 1;

/// A body of `found`'s format is readable here: any version up to ours (0 is a k8sd from before
/// messages carried one, whose format is 1's).
pub fn check_version(found: u32) -> Result<(), WireError> {
    if found <= PEER_VERSION {
        Ok(())
    } else {
        Err(WireError::TooNew { found })
    }
}

/// `v` as the body of a peer message.
pub fn encode<T: Serialize>(v: &T) -> Result<Msg, WireError> {
    serde_json::to_vec(v)
        .map(|body| Msg {
            body,
            version: PEER_VERSION,
        })
        .map_err(WireError::Encode)
}

/// The body of a peer message as `T`, refused before it is read when its format is newer.
pub fn decode<T: DeserializeOwned>(m: &Msg) -> Result<T, WireError> {
    check_version(m.version)?;
    serde_json::from_slice(&m.body).map_err(WireError::Decode)
}

/// The first chunk of an `InstallSnapshot` stream: the leader's vote and what the snapshot
/// covers. The SQLite file follows in the next chunks' `data`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapshotHeader {
    pub(super) vote: Vote,
    pub(super) meta: SnapshotMeta,
}

impl SnapshotHeader {
    pub(super) fn to_bytes(&self) -> Result<Vec<u8>, serde_json::Error> {
        serde_json::to_vec(self)
    }

    pub(super) fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

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

/// `Join` request: add the caller under its own id.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    pub id: u64,
    pub info: NodeInfo,
    /// Only ask whether the receiver belongs to a cluster (`InCluster` / `NotInCluster`);
    /// change nothing. A first member asks this before it bootstraps.
    #[serde(default)]
    pub probe: bool,
}

/// `Join` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinReply {
    /// The caller is a member (a voter, or a learner that will be promoted when due).
    Member { voter: bool },
    /// Ask the leader instead; `None` when this node does not know one yet.
    NotLeader { leader: Option<NodeInfo> },
    /// Transient (a change in flight, catch-up still running, leadership lost): ask again.
    Retry { reason: String },
    /// Never going to work as asked; the joiner must stop.
    Refused { reason: String },
    /// The receiver has never belonged to a cluster (it is waiting to bootstrap or join).
    NotInCluster,
    /// Answer to a probe: the receiver belongs to a cluster.
    InCluster,
}

/// `Remove` request: take member `id` out of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RemoveRequest {
    pub id: u64,
    /// Skip the healthy-quorum check (never the last-voter check).
    pub force: bool,
    /// Only decide: answer `Allowed` where the removal would go ahead, change nothing. `k8sd
    /// leave` and `k8sd reset` ask first, so a refusal comes before they touch any record.
    /// Absent (false) in requests from older nodes.
    #[serde(default)]
    pub dry_run: bool,
}

/// What a successful removal did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoveOutcome {
    /// A learner (standby) left the cluster.
    LearnerRemoved,
    /// A voter left and the standby `replacement` became a voter in its place.
    VoterReplaced { replacement: u64 },
    /// A voter left and no standby was ready, so the voter set shrank to `voters`.
    VoterRemoved { voters: BTreeSet<u64> },
}

/// `Remove` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RemoveReply {
    Removed(RemoveOutcome),
    /// A dry run whose removal would go ahead now (nothing was changed).
    Allowed,
    Refused(RemoveError),
    /// Ask the leader instead (also the answer after this leader handed leadership away in
    /// order to remove itself).
    NotLeader {
        leader: Option<(u64, NodeInfo)>,
    },
    /// Transient (a change in flight, no quorum contact yet): ask again.
    Retry {
        reason: String,
    },
    /// The change was proposed but not committed in time. It stays in flight and completes
    /// once a quorum of the old and the new voter sets is reachable; asking again would not
    /// help.
    InFlight {
        reason: String,
    },
}

/// Why a removal is refused. Crosses the wire in `RemoveReply`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RemoveError {
    #[error("no member with id {0:016x}; list the members and use one of their ids")]
    UnknownMember(u64),
    #[error("member {0:016x} is the last voter; removing it would leave the cluster without voters")]
    LastVoter(u64),
    #[error(
        "removing member {id:016x} would leave {healthy} healthy of {voters} voters, short of a quorum of \
         {quorum}; bring the unreachable members back, or pass --force to skip this health check"
    )]
    Unhealthy {
        id: u64,
        healthy: usize,
        voters: usize,
        quorum: usize,
    },
    #[error(
        "member {0:016x} is the leader and no other healthy voter can take over; bring a voter back, \
         or remove another member first"
    )]
    NoSuccessor(u64),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: Serialize>(v: &T) -> String {
        String::from_utf8(encode(v).unwrap().body).unwrap()
    }

    fn info() -> NodeInfo {
        NodeInfo {
            name: "n1".into(),
            peer_addr: "10.0.0.1:2380".into(),
            client_addr: "https://10.0.0.1:2379".into(),
        }
    }

    const INFO: &str = r#"{"name":"n1","peer_addr":"10.0.0.1:2380","client_addr":"https://10.0.0.1:2379"}"#;

    /// Nodes of different versions exchange these bodies during a rolling upgrade, so their
    /// bytes are pinned: a change here must stay readable by the k8sd before it.
    #[test]
    fn every_message_keeps_its_encoding() {
        let cases: Vec<(String, String)> = vec![
            (
                json(&ForwardReply::NotLeader { leader: Some(3) }),
                r#"{"NotLeader":{"leader":3}}"#.into(),
            ),
            (
                json(&ReadIndexReply::Index { index: 7 }),
                r#"{"Index":{"index":7}}"#.into(),
            ),
            (
                json(&ReadIndexReply::NotLeader { leader: None }),
                r#"{"NotLeader":{"leader":null}}"#.into(),
            ),
            (
                json(&LeaseRequest::Renew { id: 5 }),
                r#"{"Renew":{"id":5}}"#.into(),
            ),
            (
                json(&LeaseRequest::Remaining { id: -1 }),
                r#"{"Remaining":{"id":-1}}"#.into(),
            ),
            (
                json(&LeaseReply::Renewed { ttl: None }),
                r#"{"Renewed":{"ttl":null}}"#.into(),
            ),
            (
                json(&LeaseReply::Remaining { left: Some((4, 10)) }),
                r#"{"Remaining":{"left":[4,10]}}"#.into(),
            ),
            (
                json(&JoinRequest {
                    id: 1,
                    info: info(),
                    probe: false,
                }),
                format!(r#"{{"id":1,"info":{INFO},"probe":false}}"#),
            ),
            (
                json(&JoinReply::Member { voter: true }),
                r#"{"Member":{"voter":true}}"#.into(),
            ),
            (
                json(&JoinReply::NotLeader { leader: Some(info()) }),
                format!(r#"{{"NotLeader":{{"leader":{INFO}}}}}"#),
            ),
            (
                json(&JoinReply::Retry { reason: "r".into() }),
                r#"{"Retry":{"reason":"r"}}"#.into(),
            ),
            (
                json(&JoinReply::Refused { reason: "no".into() }),
                r#"{"Refused":{"reason":"no"}}"#.into(),
            ),
            (json(&JoinReply::NotInCluster), r#""NotInCluster""#.into()),
            (json(&JoinReply::InCluster), r#""InCluster""#.into()),
            (
                json(&RemoveRequest {
                    id: 2,
                    force: true,
                    dry_run: false,
                }),
                r#"{"id":2,"force":true,"dry_run":false}"#.into(),
            ),
            (
                json(&RemoveReply::Removed(RemoveOutcome::LearnerRemoved)),
                r#"{"Removed":"LearnerRemoved"}"#.into(),
            ),
            (
                json(&RemoveReply::Removed(RemoveOutcome::VoterReplaced {
                    replacement: 4,
                })),
                r#"{"Removed":{"VoterReplaced":{"replacement":4}}}"#.into(),
            ),
            (
                json(&RemoveReply::Removed(RemoveOutcome::VoterRemoved {
                    voters: BTreeSet::from([3, 1]),
                })),
                r#"{"Removed":{"VoterRemoved":{"voters":[1,3]}}}"#.into(),
            ),
            (json(&RemoveReply::Allowed), r#""Allowed""#.into()),
            (
                json(&RemoveReply::Refused(RemoveError::UnknownMember(9))),
                r#"{"Refused":{"UnknownMember":9}}"#.into(),
            ),
            (
                json(&RemoveReply::Refused(RemoveError::LastVoter(1))),
                r#"{"Refused":{"LastVoter":1}}"#.into(),
            ),
            (
                json(&RemoveReply::Refused(RemoveError::Unhealthy {
                    id: 2,
                    healthy: 1,
                    voters: 2,
                    quorum: 2,
                })),
                r#"{"Refused":{"Unhealthy":{"id":2,"healthy":1,"voters":2,"quorum":2}}}"#.into(),
            ),
            (
                json(&RemoveReply::Refused(RemoveError::NoSuccessor(1))),
                r#"{"Refused":{"NoSuccessor":1}}"#.into(),
            ),
            (
                json(&RemoveReply::NotLeader {
                    leader: Some((1, info())),
                }),
                format!(r#"{{"NotLeader":{{"leader":[1,{INFO}]}}}}"#),
            ),
            (
                json(&RemoveReply::Retry { reason: "r".into() }),
                r#"{"Retry":{"reason":"r"}}"#.into(),
            ),
            (
                json(&RemoveReply::InFlight { reason: "f".into() }),
                r#"{"InFlight":{"reason":"f"}}"#.into(),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn requests_from_older_nodes_without_the_newer_fields_decode() {
        // An older k8sd also sends no version (0).
        let join: JoinRequest = decode(&Msg {
            body: format!(r#"{{"id":1,"info":{INFO}}}"#).into_bytes(),
            version: 0,
        })
        .unwrap();
        assert!(!join.probe);
        assert_eq!(join.info, info());
        let remove: RemoveRequest = decode(&Msg {
            body: br#"{"id":2,"force":false}"#.to_vec(),
            version: 0,
        })
        .unwrap();
        assert_eq!((remove.id, remove.force, remove.dry_run), (2, false, false));
    }

    #[test]
    fn a_garbled_body_is_a_decode_error_naming_the_problem() {
        let err = decode::<JoinRequest>(&Msg {
            body: b"{not json".to_vec(),
            version: PEER_VERSION,
        })
        .unwrap_err();
        assert!(matches!(err, WireError::Decode(_)), "{err:?}");
        assert!(err.to_string().starts_with("undecodable raft message: "), "{err}");
    }

    /// A message of this version decodes; a newer one is refused naming both versions, before
    /// its body is read.
    #[test]
    fn peer_messages_carry_a_version_and_newer_ones_are_refused() {
        let msg = encode(&RemoveRequest {
            id: 7,
            force: false,
            dry_run: false,
        })
        .unwrap();
        assert_eq!(msg.version, PEER_VERSION);
        assert_eq!(decode::<RemoveRequest>(&msg).unwrap().id, 7);
        let newer = Msg {
            version: PEER_VERSION + 1,
            ..msg
        };
        let e = decode::<RemoveRequest>(&newer).unwrap_err();
        assert!(matches!(e, WireError::TooNew { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("format version {}", PEER_VERSION + 1))
                && text.contains(&format!("reads up to {PEER_VERSION}")),
            "{text}"
        );
    }
}
