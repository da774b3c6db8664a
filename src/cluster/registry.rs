//! k8sd's own records in the replicated datastore, beside Kubernetes' `/registry` keys:
//!
//! ```text
//!  /k8sd/cluster          ClusterInfo: the settings every node must share (CIDRs)
//!  /k8sd/members/<name>   MemberRecord: every node that joined, with its role and address
//!  /k8sd/tokens/<id>      TokenRecord: hashed join tokens and their state
//!  /k8sd/addons/<name>    AddonRecord: whether an add-on is enabled; absent means enabled
//!  /k8sd/secrets-rotation RotationRecord: a `k8sd secrets rotate-key` under way (key names only)
//! ```
//!
//! Every record carries its format in the field `record-version` (`RECORD_VERSION`). A record
//! written before the field existed reads as version 1, the format it has; one newer than this
//! build reads is refused, naming both versions, rather than misread (a mixed cluster during a
//! rolling upgrade). A k8sd without the field ignores it: its records are plain JSON objects
//! whose unknown fields are skipped.
//!
//! Reads are linearizable (read index, then the local replica), so a node never hands out a
//! token state or member list older than a write another node acknowledged. Every change that
//! must be atomic (consume a token and record the member) is one etcd-style Txn, one Raft entry.

use std::net::IpAddr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::token::{TokenRecord, TokenState};
use super::versions::NodeVersions;
use crate::datastore::{
    Command, CommandOutput, Compare, CompareResult, CompareTarget, DeleteRequest, KeyRange, KeyValue, Op,
    PutRequest, RangeRequest, TxnRequest,
};
use crate::node::Node;

pub const CLUSTER_KEY: &str = "/k8sd/cluster";
pub const MEMBERS_PREFIX: &str = "/k8sd/members/";
pub const TOKENS_PREFIX: &str = "/k8sd/tokens/";
pub const ADDONS_PREFIX: &str = "/k8sd/addons/";
pub const ROTATION_KEY: &str = "/k8sd/secrets-rotation";

/// Settings fixed when the cluster was founded; a joining node adopts them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct ClusterInfo {
    pub pod_cidr: String,
    pub service_cidr: String,
    /// `init --extra-sans`: names of the whole control plane (a load balancer's name or
    /// address), so every control-plane node's kube-apiserver certificate carries them, not
    /// only the founder's. Absent in clusters founded before it existed, and skipped when
    /// empty, so older nodes read the record as before.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_sans: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MemberRole {
    ControlPlane,
    Worker,
}

impl std::fmt::Display for MemberRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MemberRole::ControlPlane => "control-plane",
            MemberRole::Worker => "worker",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct MemberRecord {
    pub name: String,
    pub role: MemberRole,
    pub address: IpAddr,
    pub joined_unix: u64,
    /// What the node runs (`versions.rs`). Absent from a record written by a k8sd older than
    /// the field, and left out when unknown, so an older k8sd reads every record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<NodeVersions>,
}

/// A user's choice for one add-on. Absent means enabled: every add-on is on by default, and an
/// add-on a newer k8sd introduces is on in clusters founded before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct AddonRecord {
    pub enabled: bool,
}

/// The steps of a Secrets key rotation, in order (`cluster/rotation.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RotationPhase {
    /// Every control-plane node learns the new key as a read key.
    AddReadKey,
    /// Every control-plane node writes with the new key.
    MakeWriteKey,
    /// Every Secret is written again, so it is stored with the new key.
    RewriteSecrets,
    /// Every control-plane node forgets the old keys.
    DropOldKeys,
}

impl std::fmt::Display for RotationPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RotationPhase::AddReadKey => "1/4 add the new key as a read key",
            RotationPhase::MakeWriteKey => "2/4 make the new key the write key",
            RotationPhase::RewriteSecrets => "3/4 rewrite every Secret",
            RotationPhase::DropOldKeys => "4/4 drop the old keys",
        })
    }
}

/// A Secrets key rotation under way. It names keys, never holds one: the keys live only in
/// each control-plane node's `pki/encryption-config.yaml`, so a copy of the datastore (or a
/// backup's snapshot) never carries the key beside the Secrets it encrypts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RotationRecord {
    pub phase: RotationPhase,
    /// The key being introduced.
    pub new_key: String,
    /// The keys it replaces, the write key first, as they were when the rotation began.
    pub old_keys: Vec<String>,
    pub started_unix: u64,
    /// The node whose `rotate-key` began it (any control-plane node may finish it).
    pub started_on: String,
}

/// The format of k8sd's records this build writes and reads (see the module docs).
pub const RECORD_VERSION: u64 = 1;
/// The field of every record that holds its format.
const VERSION_FIELD: &str = "record-version";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("datastore: {0}")]
    Node(#[from] crate::node::NodeError),
    #[error("record {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    #[error(
        "record {key} has format version {found}, this k8sd reads up to {RECORD_VERSION}; a newer k8sd wrote it: \
         upgrade k8sd on this node to the version of the other nodes"
    )]
    TooNew { key: String, found: u64 },
}

pub fn member_key(name: &str) -> String {
    format!("{MEMBERS_PREFIX}{name}")
}

pub fn addon_key(name: &str) -> String {
    format!("{ADDONS_PREFIX}{name}")
}

pub fn token_key(id: &str) -> String {
    format!("{TOKENS_PREFIX}{id}")
}

fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    end
}

async fn range(node: &Node, range: KeyRange) -> Result<Vec<KeyValue>, RegistryError> {
    node.barrier().await?;
    let req = RangeRequest {
        range,
        ..Default::default()
    };
    let (res, _) = node.read(move |r| r.range(&req)).await?;
    Ok(res.kvs)
}

fn decode<T: DeserializeOwned>(kv: &KeyValue) -> Result<T, RegistryError> {
    decode_record(&String::from_utf8_lossy(&kv.key), &kv.value)
}

/// A record's value as `T`, its version checked first and then dropped (records have no field
/// of that name).
fn decode_record<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, RegistryError> {
    let corrupt = |reason: String| RegistryError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let mut v: serde_json::Value = serde_json::from_slice(value).map_err(|e| corrupt(e.to_string()))?;
    if let serde_json::Value::Object(m) = &mut v
        && let Some(found) = m.remove(VERSION_FIELD)
    {
        let found = found
            .as_u64()
            .ok_or_else(|| corrupt(format!("{VERSION_FIELD} is {found}, not a version number")))?;
        if found > RECORD_VERSION {
            return Err(RegistryError::TooNew {
                key: key.to_string(),
                found,
            });
        }
    }
    serde_json::from_value(v).map_err(|e| corrupt(e.to_string()))
}

/// `value` as a record: its JSON with `record-version`.
fn encode_record<T: Serialize>(value: &T) -> Vec<u8> {
    let mut v = serde_json::to_value(value).unwrap_or_default();
    if let serde_json::Value::Object(m) = &mut v {
        m.insert(VERSION_FIELD.into(), RECORD_VERSION.into());
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// A record and its mod revision (for compare-and-swap), if present.
pub async fn get<T: DeserializeOwned>(node: &Node, key: &str) -> Result<Option<(T, i64)>, RegistryError> {
    match range(node, KeyRange::single(key)).await?.first() {
        Some(kv) => Ok(Some((decode(kv)?, kv.mod_revision))),
        None => Ok(None),
    }
}

pub async fn list<T: DeserializeOwned>(node: &Node, prefix: &str) -> Result<Vec<T>, RegistryError> {
    range(
        node,
        KeyRange::new(prefix.as_bytes().to_vec(), prefix_end(prefix)),
    )
    .await?
    .iter()
    .map(decode)
    .collect()
}

pub fn put_op<T: Serialize>(key: &str, value: &T) -> Op {
    Op::Put(PutRequest {
        key: key.as_bytes().to_vec(),
        value: encode_record(value),
        ..Default::default()
    })
}

pub fn delete_op(key: &str) -> Op {
    Op::Delete(DeleteRequest {
        range: KeyRange::single(key),
        prev_kv: false,
    })
}

/// `key` was last modified at `rev` (0: the key does not exist).
pub fn unchanged(key: &str, rev: i64) -> Compare {
    Compare {
        range: KeyRange::single(key),
        result: CompareResult::Equal,
        target: CompareTarget::Mod(rev),
    }
}

/// Run `success` if every compare holds. Returns whether it did.
pub async fn txn(node: &Node, compare: Vec<Compare>, success: Vec<Op>) -> Result<bool, RegistryError> {
    match node
        .propose(Command::Txn(TxnRequest {
            compare,
            success,
            failure: vec![],
        }))
        .await?
    {
        CommandOutput::Txn { result, .. } => Ok(result.succeeded),
        _ => Ok(false),
    }
}

pub async fn members(node: &Node) -> Result<Vec<MemberRecord>, RegistryError> {
    list(node, MEMBERS_PREFIX).await
}

pub async fn tokens(node: &Node) -> Result<Vec<TokenRecord>, RegistryError> {
    list(node, TOKENS_PREFIX).await
}

/// Record `m` unless a member of that name exists. Returns false when the name is taken.
pub async fn add_member_if_absent(node: &Node, m: &MemberRecord) -> Result<bool, RegistryError> {
    let key = member_key(&m.name);
    txn(node, vec![unchanged(&key, 0)], vec![put_op(&key, m)]).await
}

/// Record what member `name` runs, if its record exists and says otherwise (compare-and-swap,
/// so a concurrent change to the record is never overwritten). `Ok(false)`: no such member.
pub async fn publish_versions(
    node: &Node,
    name: &str,
    versions: &NodeVersions,
) -> Result<bool, RegistryError> {
    let key = member_key(name);
    loop {
        let Some((mut rec, rev)) = get::<MemberRecord>(node, &key).await? else {
            return Ok(false);
        };
        if rec.versions.as_ref() == Some(versions) {
            return Ok(true);
        }
        rec.versions = Some(versions.clone());
        if txn(node, vec![unchanged(&key, rev)], vec![put_op(&key, &rec)]).await? {
            return Ok(true);
        }
    }
}

/// Revoke an active token. `Ok(false)`: no such token.
pub async fn revoke_token(node: &Node, id: &str, now_unix: u64) -> Result<bool, RegistryError> {
    let key = token_key(id);
    loop {
        let Some((mut rec, rev)) = get::<TokenRecord>(node, &key).await? else {
            return Ok(false);
        };
        if rec.state != TokenState::Active {
            return Ok(true);
        }
        rec.state = TokenState::Revoked { at_unix: now_unix };
        if txn(node, vec![unchanged(&key, rev)], vec![put_op(&key, &rec)]).await? {
            return Ok(true);
        }
    }
}

/// Whether the add-on `name` is enabled (absent: yes).
pub async fn addon_enabled(node: &Node, name: &str) -> Result<bool, RegistryError> {
    Ok(get::<AddonRecord>(node, &addon_key(name))
        .await?
        .is_none_or(|(r, _)| r.enabled))
}

/// Record the user's choice for the add-on `name`.
pub async fn set_addon(node: &Node, name: &str, enabled: bool) -> Result<(), RegistryError> {
    txn(
        node,
        vec![],
        vec![put_op(&addon_key(name), &AddonRecord { enabled })],
    )
    .await?;
    Ok(())
}

/// Record `enabled` for `name` only if nobody chose before (the founder's `init --disable`,
/// which must not override a choice made since).
pub async fn set_addon_if_absent(node: &Node, name: &str, enabled: bool) -> Result<bool, RegistryError> {
    let key = addon_key(name);
    txn(
        node,
        vec![unchanged(&key, 0)],
        vec![put_op(&key, &AddonRecord { enabled })],
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member() -> MemberRecord {
        decode_record(
            "/k8sd/members/n1",
            br#"{"name":"n1","role":"control-plane","address":"10.0.0.1","joined-unix":7}"#,
        )
        .unwrap()
    }

    /// A record carries its version; one written before the field reads as version 1; a newer
    /// one is refused naming both versions and what to do; a garbled version is corrupt.
    #[test]
    fn records_carry_their_version_and_newer_ones_are_refused() {
        let m = member();
        let bytes = encode_record(&m);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["record-version"], 1);
        assert_eq!(decode_record::<MemberRecord>("k", &bytes).unwrap(), m);
        let mut newer = v.clone();
        newer["record-version"] = 2.into();
        let e = decode_record::<MemberRecord>("/k8sd/members/n1", &serde_json::to_vec(&newer).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/k8sd/members/n1 has format version 2, this k8sd reads up to 1")
                && e.contains("upgrade k8sd"),
            "{e}"
        );
        let mut garbled = v;
        garbled["record-version"] = "x".into();
        assert!(matches!(
            decode_record::<MemberRecord>("k", &serde_json::to_vec(&garbled).unwrap()),
            Err(RegistryError::Corrupt { .. })
        ));
    }
}
