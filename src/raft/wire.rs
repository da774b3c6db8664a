//! The peer messages: what the `RaftPeer` RPCs carry besides openraft's own types, and how a
//! body is encoded.
//!
//! A body is in one of two formats, named by `Msg.version`:
//!
//! | version | format | who reads it |
//! |---|---|---|
//! | 0, 1 | serde_json | every k8sd (0 is a k8sd from before messages carried a version) |
//! | 2 | postcard: byte strings raw, integers varints | this build and later |
//!
//! JSON turns every key and value byte of an AppendEntries into a decimal number and a comma
//! (about 3.5 bytes each) and costs the leader and every follower the CPU to write and parse
//! them; postcard carries them as they are, the way `codec.rs` stores entries in `log.db`.
//!
//! Nodes of different versions exchange these messages during a rolling upgrade, so what exists
//! keeps its bytes (the unit tests below pin both formats). JSON is self-describing: a field
//! added with `#[serde(default)]` stays readable both ways. postcard is not: a change to any
//! type a format-2 body carries (openraft's included, so an openraft bump) changes its bytes
//! and needs a new version here, with a decoder for the old one kept.
//!
//! A node refuses a body newer than it reads (`WireError::TooNew`), naming both versions, so a
//! sender must know what its peer reads before sending format 2: every message carries `reads`,
//! the newest format its sender reads, and `negotiate.rs` keeps that per peer. Which format a
//! message goes in is the caller's choice (`Format`); nothing here knows how a message is sent
//! (`transport.rs`) or answered (`service.rs`).
//!
//! Over 600 lines only with its tests (about 280 lines of code), which pin both formats byte for
//! byte.

use std::collections::BTreeSet;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::pb::Msg;
use super::types::{LogId, NodeInfo, SnapshotMeta, Vote};

/// A body that could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("encode a format-{version} body: {reason}")]
    Encode { version: u32, reason: String },
    #[error("undecodable raft message: format-{version} body: {reason}")]
    Decode { version: u32, reason: String },
    #[error(
        "raft peer message has format version {found}, this k8sd reads up to {PEER_VERSION}; \
         upgrade this node's k8sd to the version of its peers"
    )]
    TooNew { found: u32 },
}

/// Format 1: serde_json, which every k8sd reads.
pub const JSON_VERSION: u32 = 1;
/// Format 2: postcard.
pub const BINARY_VERSION: u32 = 2;
/// The newest format of peer message bodies and snapshot headers this build reads; every
/// message it sends says so in `reads`.
pub const PEER_VERSION: u32 = BINARY_VERSION;

/// The format a body is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Binary,
}

impl Format {
    /// The `version` a body of this format carries.
    pub fn version(self) -> u32 {
        match self {
            Format::Json => JSON_VERSION,
            Format::Binary => BINARY_VERSION,
        }
    }

    /// The format of a body of `version`; a reply goes in its request's format, which the
    /// requester evidently reads.
    pub fn of(version: u32) -> Format {
        if version == BINARY_VERSION {
            Format::Binary
        } else {
            Format::Json
        }
    }

    /// The newest format both this build and a peer that reads up to `reads` know (0, from a
    /// k8sd older than the field, reads 1).
    pub fn readable_by(reads: u32) -> Format {
        if reads >= BINARY_VERSION {
            Format::Binary
        } else {
            Format::Json
        }
    }
}

/// A body of `found`'s format is readable here: any version up to ours (0 is a k8sd from before
/// messages carried one, whose format is 1's).
pub fn check_version(found: u32) -> Result<(), WireError> {
    if found <= PEER_VERSION {
        Ok(())
    } else {
        Err(WireError::TooNew { found })
    }
}

/// `v` as a body of `format`.
pub fn encode_body<T: Serialize>(v: &T, format: Format) -> Result<Vec<u8>, WireError> {
    let failed = |reason: String| WireError::Encode {
        version: format.version(),
        reason,
    };
    match format {
        Format::Json => serde_json::to_vec(v).map_err(|e| failed(e.to_string())),
        Format::Binary => postcard::to_allocvec(v).map_err(|e| failed(e.to_string())),
    }
}

/// A body of format `version` as `T`, refused before it is read when the format is newer than
/// this build reads.
pub fn decode_body<T: DeserializeOwned>(version: u32, body: &[u8]) -> Result<T, WireError> {
    check_version(version)?;
    let failed = |reason: String| WireError::Decode { version, reason };
    if version == BINARY_VERSION {
        postcard::from_bytes(body).map_err(|e| failed(e.to_string()))
    } else {
        serde_json::from_slice(body).map_err(|e| failed(e.to_string()))
    }
}

/// `v` as the body of a peer message in `format`.
pub fn encode<T: Serialize>(v: &T, format: Format) -> Result<Msg, WireError> {
    Ok(Msg {
        body: encode_body(v, format)?,
        version: format.version(),
        reads: PEER_VERSION,
    })
}

/// The body of a peer message as `T`, in whichever format it says it is.
pub fn decode<T: DeserializeOwned>(m: &Msg) -> Result<T, WireError> {
    decode_body(m.version, &m.body)
}

/// The first chunk of an `InstallSnapshot` stream: the leader's vote and what the snapshot
/// covers. The SQLite file follows in the next chunks' `data`.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct SnapshotHeader {
    pub(super) vote: Vote,
    pub(super) meta: SnapshotMeta,
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
    use openraft::EntryPayload;
    use openraft::alias::LeaderIdOf;
    use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};
    use openraft::vote::RaftLeaderIdExt;

    use super::*;
    use crate::datastore::{Command, Op, PutRequest, TxnRequest};
    use crate::raft::types::{Entry, Request, TypeConfig};

    fn json<T: Serialize>(v: &T) -> String {
        String::from_utf8(encode(v, Format::Json).unwrap().body).unwrap()
    }

    fn hex<T: Serialize>(v: &T) -> String {
        encode(v, Format::Binary)
            .unwrap()
            .body
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn msg(body: impl Into<Vec<u8>>, version: u32) -> Msg {
        Msg {
            body: body.into(),
            version,
            reads: 0,
        }
    }

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(LeaderIdOf::<TypeConfig>::new_committed(term, node), index)
    }

    fn put(value: Vec<u8>) -> Request {
        Request {
            origin: 0x0102,
            request_id: 7,
            low_water: 5,
            cmd: Command::Txn(TxnRequest {
                success: vec![Op::Put(PutRequest {
                    key: b"/k".to_vec(),
                    value,
                    ..Default::default()
                })],
                ..Default::default()
            }),
        }
    }

    /// A leader's AppendEntries: vote 3 by node 1, one put entry with a value of `value_len`
    /// bytes after 5, committed up to 5.
    fn append(value_len: usize) -> AppendEntriesRequest<TypeConfig> {
        AppendEntriesRequest {
            vote: Vote::new_committed(3, 1),
            prev_log_id: Some(log_id(3, 1, 5)),
            entries: vec![Entry {
                log_id: log_id(3, 1, 6),
                payload: EntryPayload::Normal(put(vec![0xA5; value_len])),
            }],
            leader_commit: Some(log_id(3, 1, 5)),
        }
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

    /// What an AppendEntries and a VoteRequest look like in format 1, the only format a k8sd
    /// before this one reads: every byte of a value is a decimal number.
    #[test]
    fn format_1_raft_messages_keep_their_encoding() {
        let leader = r#"{"term":3,"node_id":1}"#;
        let log = |i: u64| format!(r#"{{"leader_id":{leader},"index":{i}}}"#);
        assert_eq!(
            json(&append(2)),
            format!(
                r#"{{"vote":{{"leader_id":{leader},"committed":true}},"prev_log_id":{},"entries":[{{"log_id":{},"payload":{{"Normal":{{"origin":258,"request_id":7,"low_water":5,"cmd":{{"Txn":{{"compare":[],"success":[{{"Put":{{"key":[47,107],"value":[165,165],"lease":0,"prev_kv":false,"ignore_value":false,"ignore_lease":false}}}}],"failure":[]}}}}}}}}}}],"leader_commit":{}}}"#,
                log(5),
                log(6),
                log(5)
            )
        );
        assert_eq!(
            json(&VoteRequest::<TypeConfig>::new(
                Vote::new(4, 2),
                Some(log_id(3, 1, 6))
            )),
            format!(
                r#"{{"vote":{{"leader_id":{{"term":4,"node_id":2}},"committed":false}},"last_log_id":{},"leadership_transfer":false}}"#,
                log(6)
            )
        );
    }

    /// The format-2 bytes of every message that may go in binary (`transport::Method`), pinned
    /// like format 1: a later k8sd reading format 2 must read exactly these. postcard writes
    /// integers as varints (258 is `82 02`), an `Option` or enum as its variant's index first,
    /// and a byte string as its length and the bytes themselves. The AppendEntries, field by
    /// field: vote (term 3, node 1, committed), prev_log_id (Some, term 3, node 1, index 5),
    /// one entry (log id 3-1-6, `Normal`, origin 258, request id 7, low water 5, `Txn`, no
    /// compare, one `Put`, key "/k", value a5 a5, lease 0, three false flags, no failure ops),
    /// leader_commit (Some, 3-1-5).
    #[test]
    fn format_2_messages_keep_their_encoding() {
        let cases: Vec<(String, &str)> = vec![
            (
                hex(&append(2)),
                "030101 01030105 01 030106 01 8202 07 05 00 00 01 01 022f6b 02a5a5 00000000 00 01030105",
            ),
            (hex(&AppendEntriesResponse::<TypeConfig>::Success), "00"),
            (
                hex(&AppendEntriesResponse::<TypeConfig>::PartialSuccess(Some(
                    log_id(3, 1, 6),
                ))),
                "01 01 030106",
            ),
            (hex(&AppendEntriesResponse::<TypeConfig>::Conflict), "02"),
            (
                hex(&AppendEntriesResponse::<TypeConfig>::HigherVote(Vote::new(4, 2))),
                "03 040200",
            ),
            (
                hex(&VoteRequest::<TypeConfig>::new(
                    Vote::new(4, 2),
                    Some(log_id(3, 1, 6)),
                )),
                "040200 01 030106 00",
            ),
            (
                hex(&VoteResponse::<TypeConfig>::new(Vote::new(4, 2), None, true)),
                "040200 01 00",
            ),
            (
                hex(&put(vec![1])),
                "8202 07 05 00 00 01 01 022f6b 0101 00000000 00",
            ),
            (
                hex(&ForwardReply::Committed {
                    log_id: log_id(3, 1, 6),
                }),
                "00 030106",
            ),
            (hex(&ForwardReply::NotLeader { leader: Some(3) }), "01 01 03"),
        ];
        for (got, want) in cases {
            assert_eq!(got, want.replace(' ', ""));
        }
    }

    /// The same AppendEntries decodes from either format, and the binary one is about the size
    /// of its value where JSON takes about 3.5 bytes per value byte.
    #[test]
    fn format_2_round_trips_at_about_the_size_of_the_data() {
        let rpc = append(1024);
        let binary = encode(&rpc, Format::Binary).unwrap();
        let text = encode(&rpc, Format::Json).unwrap();
        assert_eq!((binary.version, text.version), (2, 1));
        assert_eq!((binary.reads, text.reads), (PEER_VERSION, PEER_VERSION));
        for m in [&binary, &text] {
            let back: AppendEntriesRequest<TypeConfig> = decode(m).unwrap();
            assert_eq!(back.entries, rpc.entries);
            assert_eq!(
                (back.vote, back.prev_log_id, back.leader_commit),
                (rpc.vote, rpc.prev_log_id, rpc.leader_commit)
            );
        }
        assert!(
            binary.body.len() < 1024 + 64,
            "binary body is {} bytes",
            binary.body.len()
        );
        assert!(
            text.body.len() > 3 * 1024,
            "json body is {} bytes",
            text.body.len()
        );
    }

    #[test]
    fn requests_from_older_nodes_without_the_newer_fields_decode() {
        // An older k8sd also sends no version (0).
        let join: JoinRequest = decode(&msg(format!(r#"{{"id":1,"info":{INFO}}}"#), 0)).unwrap();
        assert!(!join.probe);
        assert_eq!(join.info, info());
        let remove: RemoveRequest = decode(&msg(r#"{"id":2,"force":false}"#, 0)).unwrap();
        assert_eq!((remove.id, remove.force, remove.dry_run), (2, false, false));
    }

    #[test]
    fn a_garbled_body_is_a_decode_error_naming_the_problem() {
        let err = decode::<JoinRequest>(&msg("{not json", 1)).unwrap_err();
        assert!(matches!(err, WireError::Decode { version: 1, .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("undecodable raft message: format-1 body: "),
            "{err}"
        );
        // A binary body cut short.
        let mut cut = encode(&append(8), Format::Binary).unwrap();
        cut.body.truncate(cut.body.len() / 2);
        let err = decode::<AppendEntriesRequest<TypeConfig>>(&cut).unwrap_err();
        assert!(matches!(err, WireError::Decode { version: 2, .. }), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("undecodable raft message: format-2 body: "),
            "{err}"
        );
    }

    /// A message of this version decodes; a newer one is refused naming both versions, before
    /// its body is read.
    #[test]
    fn peer_messages_carry_a_version_and_newer_ones_are_refused() {
        let req = RemoveRequest {
            id: 7,
            force: false,
            dry_run: false,
        };
        for format in [Format::Json, Format::Binary] {
            let m = encode(&req, format).unwrap();
            assert_eq!(m.version, format.version());
            assert_eq!(decode::<RemoveRequest>(&m).unwrap().id, 7);
        }
        let newer = msg(encode(&req, Format::Binary).unwrap().body, PEER_VERSION + 1);
        let e = decode::<RemoveRequest>(&newer).unwrap_err();
        assert!(matches!(e, WireError::TooNew { found: 3 }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("format version {}", PEER_VERSION + 1))
                && text.contains(&format!("reads up to {PEER_VERSION}")),
            "{text}"
        );
    }

    #[test]
    fn a_reply_goes_in_its_requests_format() {
        assert_eq!(Format::of(0), Format::Json);
        assert_eq!(Format::of(1), Format::Json);
        assert_eq!(Format::of(2), Format::Binary);
        assert_eq!(Format::readable_by(0), Format::Json);
        assert_eq!(Format::readable_by(1), Format::Json);
        assert_eq!(Format::readable_by(2), Format::Binary);
        assert_eq!(Format::readable_by(3), Format::Binary);
    }
}
