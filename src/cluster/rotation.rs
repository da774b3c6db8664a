//! The plan of `k8sd secrets rotate-key`, pure: which keys every control-plane node must hold in
//! each phase, and which nodes still need them. The daemon (`daemon/secrets.rs`) fetches each
//! node's keys over the cluster API, pushes what this module says, and records the phase.
//!
//! ```text
//!  phase            every node's keys (write key first)   then
//!  add-read-key     old…, new                             no apiserver writes with new yet
//!  make-write-key   new, old…                             new Secrets use the new key
//!  rewrite-secrets  new, old…                             every stored Secret uses it
//!  drop-old-keys    new                                   the old keys are gone
//! ```
//!
//! A cluster with no key yet (initialised by a k8sd older than encryption at rest) rotates
//! from plaintext: its "old key" is `identity` (`KeyEntry::identity()`), so phase 1 stages the
//! new key behind identity (every apiserver reads it, none writes with it), phase 2 makes it
//! the write key with identity last as always, the rewrite encrypts every Secret stored in
//! plaintext, and phase 4 has nothing left to drop.
//!
//! A phase ends only when every control-plane node holds its keys (and, for the rewrite, when
//! no Secret in the datastore is stored with another key), so no apiserver ever meets a Secret
//! it cannot decrypt: the new key is readable everywhere before anyone writes with it, and an
//! old key is dropped only once nothing is stored with it.

use std::collections::BTreeMap;

use super::registry::{RotationPhase, RotationRecord};
use crate::pki::KeyEntry;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RotationError {
    #[error(
        "two control-plane nodes hold different secrets under the key name {name} ({a} and {b}); \
         copy pki/encryption-config.yaml from a node whose kube-apiserver reads every Secret to the other, \
         restart k8sd there, then run `k8sd secrets rotate-key` again"
    )]
    KeyConflict { name: String, a: String, b: String },
    #[error(
        "no control-plane node holds the old key {name}, which the rotation (at phase {phase}) still needs; \
         restore pki/encryption-config.yaml from a backup on a node that lost it, then run `k8sd secrets rotate-key` again"
    )]
    OldKeyMissing { name: String, phase: RotationPhase },
    #[error(
        "no control-plane node holds the new key {name}, but the rotation is already at phase {phase}; \
         restore pki/encryption-config.yaml from a backup on a node that lost it, then run `k8sd secrets rotate-key` again"
    )]
    NewKeyLost { name: String, phase: RotationPhase },
}

impl RotationPhase {
    /// The phase after this one; `None` after the last.
    pub fn next(self) -> Option<RotationPhase> {
        match self {
            RotationPhase::AddReadKey => Some(RotationPhase::MakeWriteKey),
            RotationPhase::MakeWriteKey => Some(RotationPhase::RewriteSecrets),
            RotationPhase::RewriteSecrets => Some(RotationPhase::DropOldKeys),
            RotationPhase::DropOldKeys => None,
        }
    }
}

/// The keys every control-plane node must hold in `phase`, the write key first.
pub fn target_keys(phase: RotationPhase, old: &[KeyEntry], new: &KeyEntry) -> Vec<KeyEntry> {
    let old = old.iter().filter(|k| k.name != new.name).cloned();
    match phase {
        RotationPhase::AddReadKey => old.chain(std::iter::once(new.clone())).collect(),
        // Staged identity goes back to its place at the end, where every list implies it.
        RotationPhase::MakeWriteKey | RotationPhase::RewriteSecrets => std::iter::once(new.clone())
            .chain(old.filter(|k| !k.is_identity()))
            .collect(),
        RotationPhase::DropOldKeys => vec![new.clone()],
    }
}

/// Every key any node holds, by name. One name with two different secrets is refused: an
/// apiserver would fail to decrypt what another wrote under that name.
pub fn known_keys(nodes: &[(String, Vec<KeyEntry>)]) -> Result<BTreeMap<String, KeyEntry>, RotationError> {
    let mut known: BTreeMap<String, (String, KeyEntry)> = BTreeMap::new();
    for (node, keys) in nodes {
        for k in keys {
            match known.get(&k.name) {
                Some((other, seen)) if seen != k => {
                    return Err(RotationError::KeyConflict {
                        name: k.name.clone(),
                        a: other.clone(),
                        b: node.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    known.insert(k.name.clone(), (node.clone(), k.clone()));
                }
            }
        }
    }
    Ok(known.into_iter().map(|(n, (_, k))| (n, k)).collect())
}

/// What a rotation at `rec.phase` does now: the key list for this phase and the nodes whose
/// keys differ from it (by name, provider, secret and order; comments and layout do not count).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PhasePlan {
    pub target: Vec<KeyEntry>,
    pub pushes: Vec<String>,
}

/// The new key of `rec` as the nodes hold it, and the old keys it replaces. The new key is
/// `None` when no node holds it yet while the rotation has not handed it out (phase
/// `add-read-key`, interrupted before its first push): the caller makes another and records it.
pub fn resolve(
    rec: &RotationRecord,
    known: &BTreeMap<String, KeyEntry>,
) -> Result<(Option<KeyEntry>, Vec<KeyEntry>), RotationError> {
    let new = known.get(&rec.new_key).cloned();
    if new.is_none() && rec.phase != RotationPhase::AddReadKey {
        return Err(RotationError::NewKeyLost {
            name: rec.new_key.clone(),
            phase: rec.phase,
        });
    }
    let mut old = Vec::new();
    for name in rec.old_keys.iter().filter(|n| **n != rec.new_key) {
        // Plaintext is no key a node can lose.
        if name == crate::pki::IDENTITY {
            old.push(KeyEntry::identity());
            continue;
        }
        match known.get(name) {
            Some(k) => old.push(k.clone()),
            // Dropping keys needs none of them, and a node that already dropped them is done.
            None if rec.phase == RotationPhase::DropOldKeys => {}
            None => {
                return Err(RotationError::OldKeyMissing {
                    name: name.clone(),
                    phase: rec.phase,
                });
            }
        }
    }
    Ok((new, old))
}

/// The plan for `phase`: its key list and the nodes that do not hold exactly it.
pub fn plan_phase(
    phase: RotationPhase,
    new: &KeyEntry,
    old: &[KeyEntry],
    nodes: &[(String, Vec<KeyEntry>)],
) -> PhasePlan {
    let target = target_keys(phase, old, new);
    let pushes = nodes
        .iter()
        .filter(|(_, keys)| *keys != target)
        .map(|(n, _)| n.clone())
        .collect();
    PhasePlan { target, pushes }
}

/// A new rotation from the keys this node holds now (its write key first).
pub fn begin(node: &str, current: &[KeyEntry], new: &KeyEntry, now_unix: u64) -> RotationRecord {
    RotationRecord {
        phase: RotationPhase::AddReadKey,
        new_key: new.name.clone(),
        old_keys: current.iter().map(|k| k.name.clone()).collect(),
        started_unix: now_unix,
        started_on: node.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RotationPhase::*;

    fn key(name: &str, secret: &str) -> KeyEntry {
        KeyEntry {
            provider: "secretbox".into(),
            name: name.into(),
            secret: secret.into(),
        }
    }

    fn names(keys: &[KeyEntry]) -> Vec<&str> {
        keys.iter().map(|k| k.name.as_str()).collect()
    }

    /// The order of the four phases, and what each node holds in each: the new key is read
    /// everywhere before it writes anywhere, and the old keys go only at the end.
    #[test]
    fn each_phase_gives_every_node_the_keys_in_the_right_order() {
        let (old, new) = ([key("k1", "a"), key("k0", "z")], key("k2", "b"));
        assert_eq!(names(&target_keys(AddReadKey, &old, &new)), ["k1", "k0", "k2"]);
        assert_eq!(names(&target_keys(MakeWriteKey, &old, &new)), ["k2", "k1", "k0"]);
        assert_eq!(
            names(&target_keys(RewriteSecrets, &old, &new)),
            ["k2", "k1", "k0"]
        );
        assert_eq!(names(&target_keys(DropOldKeys, &old, &new)), ["k2"]);
        let mut p = AddReadKey;
        let mut order = vec![p];
        while let Some(n) = p.next() {
            order.push(n);
            p = n;
        }
        assert_eq!(order, [AddReadKey, MakeWriteKey, RewriteSecrets, DropOldKeys]);
    }

    /// A re-run pushes only to nodes that do not hold the phase's keys yet: a node that got
    /// them before an interruption is left alone (its apiserver is not restarted again).
    #[test]
    fn a_resumed_phase_pushes_only_to_the_nodes_that_lack_its_keys() {
        let (old, new) = (vec![key("k1", "a")], key("k2", "b"));
        let nodes = vec![
            ("n1".to_string(), vec![key("k1", "a"), key("k2", "b")]),
            ("n2".to_string(), vec![key("k1", "a")]),
            ("n3".to_string(), vec![key("k2", "b"), key("k1", "a")]),
        ];
        let plan = plan_phase(AddReadKey, &new, &old, &nodes);
        assert_eq!(plan.pushes, ["n2", "n3"]);
        assert_eq!(names(&plan.target), ["k1", "k2"]);
        let plan = plan_phase(MakeWriteKey, &new, &old, &nodes);
        assert_eq!(plan.pushes, ["n1", "n2"]);
        let done = vec![("n1".to_string(), vec![key("k2", "b")])];
        assert!(plan_phase(DropOldKeys, &new, &old, &done).pushes.is_empty());
    }

    #[test]
    fn a_resumed_rotation_finds_its_keys_on_the_nodes_or_says_what_is_missing() {
        let nodes = vec![
            ("n1".to_string(), vec![key("k1", "a"), key("k2", "b")]),
            ("n2".to_string(), vec![key("k1", "a")]),
        ];
        let known = known_keys(&nodes).unwrap();
        let mut rec = begin("n1", &[key("k1", "a")], &key("k2", "b"), 7);
        assert_eq!(rec.old_keys, ["k1"]);
        let (new, old) = resolve(&rec, &known).unwrap();
        assert_eq!((new.unwrap().name.as_str(), names(&old)), ("k2", vec!["k1"]));
        // Interrupted before any node got the key: a fresh one is made while still in phase 1.
        rec.new_key = "k9".into();
        let (new, old) = resolve(&rec, &known).unwrap();
        assert_eq!((new, names(&old)), (None, vec!["k1"]));
        rec.phase = MakeWriteKey;
        let e = resolve(&rec, &known).unwrap_err();
        assert!(
            e.to_string()
                .contains("no control-plane node holds the new key k9"),
            "{e}"
        );
        // An old key no node has: refused until the last phase, which no longer needs it.
        rec.new_key = "k2".into();
        rec.old_keys = vec!["k1".into(), "gone".into()];
        assert!(matches!(
            resolve(&rec, &known),
            Err(RotationError::OldKeyMissing { .. })
        ));
        rec.phase = DropOldKeys;
        assert_eq!(names(&resolve(&rec, &known).unwrap().1), ["k1"]);
    }

    /// From plaintext: nodes with no key get the new key staged behind identity, then as the
    /// write key; identity is never "missing", and the last phase pushes nothing more.
    #[test]
    fn a_cluster_without_a_key_gets_its_first_one_staged_behind_plaintext() {
        let new = key("k1", "a");
        let rec = begin("n1", &[KeyEntry::identity()], &new, 7);
        assert_eq!(rec.old_keys, ["identity"]);
        let nodes = vec![("n1".to_string(), vec![]), ("n2".to_string(), vec![])];
        let (held, old) = resolve(&rec, &known_keys(&nodes).unwrap()).unwrap();
        assert_eq!((held, names(&old)), (None, vec!["identity"]));
        let plan = plan_phase(AddReadKey, &new, &old, &nodes);
        assert_eq!(
            (names(&plan.target), plan.pushes.len()),
            (vec!["identity", "k1"], 2)
        );
        let staged = vec![
            ("n1".to_string(), plan.target.clone()),
            ("n2".to_string(), plan.target.clone()),
        ];
        let plan = plan_phase(MakeWriteKey, &new, &old, &staged);
        assert_eq!((names(&plan.target), plan.pushes.len()), (vec!["k1"], 2));
        let done = vec![
            ("n1".to_string(), vec![new.clone()]),
            ("n2".to_string(), vec![new.clone()]),
        ];
        assert!(plan_phase(RewriteSecrets, &new, &old, &done).pushes.is_empty());
        assert!(plan_phase(DropOldKeys, &new, &old, &done).pushes.is_empty());
    }

    #[test]
    fn one_key_name_with_two_secrets_is_refused_naming_both_nodes() {
        let nodes = vec![
            ("n1".to_string(), vec![key("k1", "a")]),
            ("n2".to_string(), vec![key("k1", "other")]),
        ];
        let e = known_keys(&nodes).unwrap_err().to_string();
        assert!(e.contains("key name k1 (n1 and n2)"), "{e}");
    }
}
