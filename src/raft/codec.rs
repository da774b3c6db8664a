//! How a Raft log entry is stored in `log.db`: a version byte, then postcard.
//!
//! Format 1 (before this module) was serde_json, in which every byte of a key or value became a
//! decimal number and a comma: a 1 KiB put took about 3.5 KiB in the log. Format 2 is
//! `[COMMAND_FORMAT_VERSION] ++ postcard(entry)`: byte strings are raw bytes, integers varints,
//! so the same put takes about 1.1 KiB.
//!
//! Upgrade: a JSON entry always starts with `{`, which no binary version byte may be, so rows
//! of both formats can sit in one log and each decodes by its own first byte. A log written by
//! an older k8sd is read as it is; nothing is rewritten.
//!
//! postcard is not self-describing: a field added to `Request`, `Command` or anything inside
//! them changes the bytes. Such a change must bump `COMMAND_FORMAT_VERSION` and keep a decoder
//! for the previous version here; `#[serde(default)]` alone is not enough (it is for JSON).

use crate::datastore::COMMAND_FORMAT_VERSION;

use super::types::Entry;

/// The first byte of every format-1 (JSON) entry.
const JSON_START: u8 = b'{';

/// The version byte this build writes. Checked at compile time against the JSON marker, so a
/// future bump can never make a binary entry look like a JSON one.
#[allow(clippy::cast_possible_truncation)] // the assert bounds it below 123
const BINARY_VERSION: u8 = {
    assert!(COMMAND_FORMAT_VERSION >= 2 && COMMAND_FORMAT_VERSION < JSON_START as u32);
    COMMAND_FORMAT_VERSION as u8
};

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("empty log entry")]
    Empty,
    #[error(
        "log entry has format version {found}; this k8sd reads versions 1 (JSON) and {BINARY_VERSION}: \
         upgrade k8sd to read this log"
    )]
    UnknownVersion { found: u8 },
    #[error("cannot decode a format-{version} log entry: {reason}")]
    Decode { version: u8, reason: String },
    #[error("cannot encode log entry {index}: {reason}")]
    Encode { index: u64, reason: String },
}

/// Encode one entry in the current (binary) format.
pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, CodecError> {
    postcard::to_extend(entry, vec![BINARY_VERSION]).map_err(|e| CodecError::Encode {
        index: entry.log_id.index,
        reason: e.to_string(),
    })
}

/// Decode one entry written by this or any earlier k8sd.
pub fn decode_entry(blob: &[u8]) -> Result<Entry, CodecError> {
    match blob.first() {
        None => Err(CodecError::Empty),
        Some(&JSON_START) => serde_json::from_slice(blob).map_err(|e| CodecError::Decode {
            version: 1,
            reason: e.to_string(),
        }),
        Some(&BINARY_VERSION) => postcard::from_bytes(&blob[1..]).map_err(|e| CodecError::Decode {
            version: BINARY_VERSION,
            reason: e.to_string(),
        }),
        Some(&found) => Err(CodecError::UnknownVersion { found }),
    }
}

#[cfg(test)]
mod tests {
    use openraft::alias::LeaderIdOf;
    use openraft::vote::RaftLeaderIdExt;
    use openraft::{EntryPayload, Membership};

    use super::*;
    use crate::datastore::{Command, Op, PutRequest, TxnRequest};
    use crate::raft::types::{LogId, Request, TypeConfig};

    fn put_entry(value_len: usize) -> Entry {
        let put = Op::Put(PutRequest {
            key: b"/registry/pods/default/web-0".to_vec(),
            value: vec![0xA5; value_len],
            ..Default::default()
        });
        Entry {
            log_id: LogId::new(LeaderIdOf::<TypeConfig>::new_committed(3, 9), 42),
            payload: EntryPayload::Normal(Request {
                origin: u64::MAX,
                request_id: 7,
                low_water: 5,
                cmd: Command::Txn(TxnRequest {
                    success: vec![put],
                    ..Default::default()
                }),
            }),
        }
    }

    #[test]
    fn binary_round_trips_every_payload_kind() {
        let mut blank = put_entry(0);
        blank.payload = EntryPayload::Blank;
        let mut membership = put_entry(0);
        membership.payload =
            EntryPayload::Membership(Membership::new_with_defaults(vec![[1].into()], [1, 2]));
        for e in [put_entry(1024), blank, membership] {
            let blob = encode_entry(&e).unwrap();
            assert_eq!(blob[0], BINARY_VERSION);
            assert_eq!(decode_entry(&blob).unwrap(), e);
        }
    }

    #[test]
    fn json_entries_from_older_k8sd_still_decode() {
        let e = put_entry(1024);
        let json = serde_json::to_vec(&e).unwrap();
        assert_eq!(decode_entry(&json).unwrap(), e);
    }

    #[test]
    fn a_1kib_put_is_about_its_own_size() {
        let e = put_entry(1024);
        let binary = encode_entry(&e).unwrap().len();
        let json = serde_json::to_vec(&e).unwrap().len();
        assert!(binary < 1024 + 100, "binary entry is {binary} bytes");
        assert!(json > 3 * 1024, "json entry is {json} bytes");
    }

    /// Format 2's bytes, pinned: a change to the types inside `Request` (or to how serde sees
    /// them) that alters them must bump `COMMAND_FORMAT_VERSION`, not slip through. Every byte
    /// string kind is here (a put's key and value, a compared value, a range's ends).
    #[test]
    fn format_2_bytes_are_pinned() {
        use crate::datastore::{Compare, CompareResult, CompareTarget, KeyRange};
        let mut e = put_entry(3);
        if let EntryPayload::Normal(req) = &mut e.payload
            && let Command::Txn(txn) = &mut req.cmd
        {
            txn.compare.push(Compare {
                range: KeyRange::new(b"k".to_vec(), b"l".to_vec()),
                result: CompareResult::Equal,
                target: CompareTarget::Value(vec![1, 2]),
            });
        }
        let hex: String = encode_entry(&e)
            .unwrap()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            hex,
            "0203092a01ffffffffffffffffff0107050001016b016c000302010201011c2f72656769737472792f706f64732f64656661756c742f7765622d3003a5a5a50000000000"
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_clear_errors() {
        let err = decode_entry(&[99, 1, 2]).unwrap_err();
        assert!(matches!(err, CodecError::UnknownVersion { found: 99 }), "{err}");
        assert!(err.to_string().contains("upgrade k8sd"), "{err}");
        assert!(matches!(decode_entry(&[]).unwrap_err(), CodecError::Empty));
        let err = decode_entry(&[BINARY_VERSION, 0xFF, 0xFF]).unwrap_err();
        assert!(matches!(err, CodecError::Decode { version: 2, .. }), "{err}");
    }
}
