//! The on-disk encoding of a command's outcome, kept in the datastore's `dedup` table so that a
//! retried proposal returns the outcome of its first application (see `datastore::RaftApplied`).
//!
//! This is a versioned wire type (STYLE: what lands on disk is its own type, converted in one
//! place): the datastore's `CommandOutput` and `StoreError` stay free of serde. Every replica
//! writes the same bytes for the same entry, because apply is deterministic and so is this
//! encoding (no maps, fixed field order). Byte strings are base64 so the JSON stays compact.

use serde::{Deserialize, Serialize};

use crate::datastore::{CommandOutput, KeyValue, OpResult, RangeResult, StoreError, TxnResult};

const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct Stored {
    v: u32,
    r: Result<Output, Error>,
}

#[derive(Serialize, Deserialize)]
enum Output {
    Txn { revision: i64, result: Txn },
    Compact { revision: i64 },
    LeaseGrant { revision: i64, id: i64, ttl: i64 },
    LeaseRevoke { revision: i64 },
}

#[derive(Serialize, Deserialize)]
struct Txn {
    succeeded: bool,
    responses: Vec<Op>,
}

#[derive(Serialize, Deserialize)]
enum Op {
    Range { kvs: Vec<Kv>, more: bool, count: i64 },
    Put { prev_kv: Option<Kv> },
    Delete { deleted: i64, prev_kvs: Vec<Kv> },
    Txn(Txn),
}

#[derive(Serialize, Deserialize)]
struct Kv {
    #[serde(with = "b64")]
    key: Vec<u8>,
    create: i64,
    modr: i64,
    version: i64,
    #[serde(with = "b64")]
    value: Vec<u8>,
    lease: i64,
}

/// Client errors only: a fatal store error aborts the batch before anything is stored, so
/// `Other` exists only to keep `encode` total.
#[derive(Serialize, Deserialize)]
enum Error {
    Compacted { requested: i64, compacted: i64 },
    FutureRevision { requested: i64, current: i64 },
    LeaseNotFound(i64),
    LeaseExists(i64),
    LeaseTtlTooLarge(i64),
    KeyNotFound,
    ValueProvided,
    LeaseProvided,
    EmptyKey,
    TooManyOps { ops: usize, max: usize },
    DuplicateKey,
    Other(String),
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

    pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s: String = serde::Deserialize::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

// The conversions below are total in both directions: every field of every variant is
// carried, so `decode(encode(x)) == x` (tested below). A new datastore variant must be added
// here and to the enums above; the compiler's exhaustiveness check points at both.

fn kv(k: &KeyValue) -> Kv {
    Kv {
        key: k.key.clone(),
        create: k.create_revision,
        modr: k.mod_revision,
        version: k.version,
        value: k.value.clone(),
        lease: k.lease,
    }
}

fn kv_back(k: Kv) -> KeyValue {
    KeyValue {
        key: k.key,
        create_revision: k.create,
        mod_revision: k.modr,
        version: k.version,
        value: k.value,
        lease: k.lease,
    }
}

fn txn(t: &TxnResult) -> Txn {
    let responses = t
        .responses
        .iter()
        .map(|r| match r {
            OpResult::Range(rr) => Op::Range {
                kvs: rr.kvs.iter().map(kv).collect(),
                more: rr.more,
                count: rr.count,
            },
            OpResult::Put { prev_kv } => Op::Put {
                prev_kv: prev_kv.as_ref().map(kv),
            },
            OpResult::Delete { deleted, prev_kvs } => Op::Delete {
                deleted: *deleted,
                prev_kvs: prev_kvs.iter().map(kv).collect(),
            },
            OpResult::Txn(t) => Op::Txn(txn(t)),
        })
        .collect();
    Txn {
        succeeded: t.succeeded,
        responses,
    }
}

fn txn_back(t: Txn) -> TxnResult {
    let responses = t
        .responses
        .into_iter()
        .map(|r| match r {
            Op::Range { kvs, more, count } => OpResult::Range(RangeResult {
                kvs: kvs.into_iter().map(kv_back).collect(),
                more,
                count,
            }),
            Op::Put { prev_kv } => OpResult::Put {
                prev_kv: prev_kv.map(kv_back),
            },
            Op::Delete { deleted, prev_kvs } => OpResult::Delete {
                deleted,
                prev_kvs: prev_kvs.into_iter().map(kv_back).collect(),
            },
            Op::Txn(t) => OpResult::Txn(txn_back(t)),
        })
        .collect();
    TxnResult {
        succeeded: t.succeeded,
        responses,
    }
}

/// Encode an outcome for the dedup table.
pub fn encode(r: &Result<CommandOutput, StoreError>) -> Vec<u8> {
    let r = match r {
        Ok(CommandOutput::Txn { revision, result }) => Ok(Output::Txn {
            revision: *revision,
            result: txn(result),
        }),
        Ok(CommandOutput::Compact { revision }) => Ok(Output::Compact { revision: *revision }),
        Ok(CommandOutput::LeaseGrant { revision, id, ttl }) => Ok(Output::LeaseGrant {
            revision: *revision,
            id: *id,
            ttl: *ttl,
        }),
        Ok(CommandOutput::LeaseRevoke { revision }) => Ok(Output::LeaseRevoke { revision: *revision }),
        Err(e) => Err(match e {
            StoreError::Compacted { requested, compacted } => Error::Compacted {
                requested: *requested,
                compacted: *compacted,
            },
            StoreError::FutureRevision { requested, current } => Error::FutureRevision {
                requested: *requested,
                current: *current,
            },
            StoreError::LeaseNotFound(id) => Error::LeaseNotFound(*id),
            StoreError::LeaseExists(id) => Error::LeaseExists(*id),
            StoreError::LeaseTtlTooLarge(t) => Error::LeaseTtlTooLarge(*t),
            StoreError::KeyNotFound => Error::KeyNotFound,
            StoreError::ValueProvided => Error::ValueProvided,
            StoreError::LeaseProvided => Error::LeaseProvided,
            StoreError::EmptyKey => Error::EmptyKey,
            StoreError::TooManyOps { ops, max } => Error::TooManyOps { ops: *ops, max: *max },
            StoreError::DuplicateKey => Error::DuplicateKey,
            other => Error::Other(other.to_string()),
        }),
    };
    // Serialising these plain structs to JSON cannot fail.
    serde_json::to_vec(&Stored { v: VERSION, r }).unwrap_or_default()
}

/// Decode an outcome stored by `encode` (by this or an older version of k8sd).
pub fn decode(bytes: &[u8]) -> Result<Result<CommandOutput, StoreError>, String> {
    let stored: Stored =
        serde_json::from_slice(bytes).map_err(|e| format!("undecodable stored outcome: {e}"))?;
    if stored.v != VERSION {
        return Err(format!(
            "stored outcome has version {}, this k8sd understands {VERSION}",
            stored.v
        ));
    }
    Ok(match stored.r {
        Ok(Output::Txn { revision, result }) => Ok(CommandOutput::Txn {
            revision,
            result: txn_back(result),
        }),
        Ok(Output::Compact { revision }) => Ok(CommandOutput::Compact { revision }),
        Ok(Output::LeaseGrant { revision, id, ttl }) => Ok(CommandOutput::LeaseGrant { revision, id, ttl }),
        Ok(Output::LeaseRevoke { revision }) => Ok(CommandOutput::LeaseRevoke { revision }),
        Err(e) => Err(match e {
            Error::Compacted { requested, compacted } => StoreError::Compacted { requested, compacted },
            Error::FutureRevision { requested, current } => StoreError::FutureRevision { requested, current },
            Error::LeaseNotFound(id) => StoreError::LeaseNotFound(id),
            Error::LeaseExists(id) => StoreError::LeaseExists(id),
            Error::LeaseTtlTooLarge(t) => StoreError::LeaseTtlTooLarge(t),
            Error::KeyNotFound => StoreError::KeyNotFound,
            Error::ValueProvided => StoreError::ValueProvided,
            Error::LeaseProvided => StoreError::LeaseProvided,
            Error::EmptyKey => StoreError::EmptyKey,
            Error::TooManyOps { ops, max } => StoreError::TooManyOps { ops, max },
            Error::DuplicateKey => StoreError::DuplicateKey,
            Error::Other(reason) => StoreError::Corrupt {
                path: "dedup".into(),
                reason,
            },
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_round_trip() {
        let kv1 = KeyValue {
            key: b"/a".to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
            value: vec![0, 255, 7],
            lease: 9,
        };
        let out = CommandOutput::Txn {
            revision: 5,
            result: TxnResult {
                succeeded: true,
                responses: vec![
                    OpResult::Put {
                        prev_kv: Some(kv1.clone()),
                    },
                    OpResult::Range(RangeResult {
                        kvs: vec![kv1.clone()],
                        more: true,
                        count: 4,
                    }),
                    OpResult::Txn(TxnResult {
                        succeeded: false,
                        responses: vec![OpResult::Delete {
                            deleted: 1,
                            prev_kvs: vec![kv1],
                        }],
                    }),
                ],
            },
        };
        assert_eq!(decode(&encode(&Ok(out.clone()))).unwrap().unwrap(), out);
        let err = decode(&encode(&Err(StoreError::LeaseNotFound(7))))
            .unwrap()
            .unwrap_err();
        assert!(matches!(err, StoreError::LeaseNotFound(7)));
    }
}
