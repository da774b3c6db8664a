//! What each node runs, and the Kubernetes version rule of a rolling upgrade.
//!
//! Every node publishes its k8sd and Kubernetes versions in its member record
//! (`registry::MemberRecord::versions`): a control-plane node at every start, a worker when it
//! joins. A record written by a k8sd older than the field has none: its versions are unknown,
//! which `k8sd status` shows as such and the rule below does not hold against anyone.
//!
//! The rule follows Kubernetes' version skew policy for control planes: a cluster moves one
//! minor version at a time. A node whose binary carries another minor than a node already in
//! the cluster crosses a minor only when the user asked for it; one that would leave two minors
//! between nodes (a skipped minor, or another major) is refused even then. Patch releases of
//! the same minor mix freely.

use serde::{Deserialize, Serialize};

/// Shown (and serialised in status) for a node that published no versions.
pub const UNKNOWN: &str = "unknown";

/// The versions a node runs, as its member record carries them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct NodeVersions {
    /// k8sd's own version (its crate version).
    pub k8sd: String,
    /// The Kubernetes version its binary carries (`v1.36.3`).
    pub kubernetes: String,
}

/// A Kubernetes version reduced to what the rule compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Minor {
    major: u64,
    minor: u64,
}

/// `v1.36.3`, `1.36.3` or `v1.36.0-rc.1`: major and minor; `None` for anything else.
fn minor_of(version: &str) -> Option<Minor> {
    let mut parts = version.trim().trim_start_matches('v').split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    // A patch must be there, though its pre-release suffix is not compared.
    parts.next().filter(|p| !p.is_empty())?;
    Some(Minor { major, minor })
}

/// Why this node may not run its Kubernetes version beside another node's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkewError {
    #[error(
        "this k8sd carries Kubernetes {ours} and node {node} runs {theirs}: a change of minor version. \
         Kubernetes minors are crossed one at a time and only on purpose: to upgrade, start k8sd with \
         --allow-kubernetes-minor-change (or K8SD_ALLOW_KUBERNETES_MINOR_CHANGE=1); otherwise run a k8sd \
         that carries Kubernetes {theirs_minor}.x on this node"
    )]
    Crossed {
        ours: String,
        node: String,
        theirs: String,
        theirs_minor: String,
    },
    #[error(
        "this k8sd carries Kubernetes {ours} and node {node} runs {theirs}: more than one minor version \
         apart, which Kubernetes does not support (minors are never skipped, even with \
         --allow-kubernetes-minor-change); move every node one minor at a time, through a k8sd carrying \
         each minor in between"
    )]
    Skipped {
        ours: String,
        node: String,
        theirs: String,
    },
    #[error("this k8sd's own Kubernetes version {0:?} is malformed; the binary was built wrongly")]
    OwnVersion(String),
}

/// Check `ours` (this binary's Kubernetes version) against every other node's `(name,
/// version)`. Unknown or unparsable versions are passed over: an older node that published
/// nothing cannot be held against anyone. `allow_minor_change` is the user's consent to cross
/// one minor; it never allows two.
pub fn check_kubernetes_skew<'a>(
    ours: &str,
    others: impl IntoIterator<Item = (&'a str, &'a str)>,
    allow_minor_change: bool,
) -> Result<(), SkewError> {
    let mine = minor_of(ours).ok_or_else(|| SkewError::OwnVersion(ours.to_string()))?;
    for (node, theirs) in others {
        let Some(t) = minor_of(theirs) else { continue };
        if t == mine {
            continue;
        }
        if t.major != mine.major || t.minor.abs_diff(mine.minor) > 1 {
            return Err(SkewError::Skipped {
                ours: ours.to_string(),
                node: node.to_string(),
                theirs: theirs.to_string(),
            });
        }
        if !allow_minor_change {
            return Err(SkewError::Crossed {
                ours: ours.to_string(),
                node: node.to_string(),
                theirs: theirs.to_string(),
                theirs_minor: format!("v{}.{}", t.major, t.minor),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(ours: &str, others: &[(&str, &str)], allow: bool) -> Result<(), SkewError> {
        check_kubernetes_skew(ours, others.iter().copied(), allow)
    }

    #[test]
    fn same_minor_any_patch_is_allowed() {
        assert_eq!(
            check("v1.36.3", &[("n1", "v1.36.0"), ("n2", "v1.36.9")], false),
            Ok(())
        );
        assert_eq!(check("v1.36.3", &[], false), Ok(()));
        assert_eq!(check("v1.36.0-rc.1", &[("n1", "v1.36.3")], false), Ok(()));
    }

    #[test]
    fn one_minor_up_or_down_needs_the_users_consent() {
        for theirs in ["v1.35.8", "v1.37.0"] {
            let e = check("v1.36.3", &[("n1", "v1.36.3"), ("n2", theirs)], false).unwrap_err();
            assert!(
                matches!(&e, SkewError::Crossed { node, .. } if node == "n2"),
                "{e:?}"
            );
            let text = e.to_string();
            assert!(
                text.contains("v1.36.3")
                    && text.contains(theirs)
                    && text.contains("--allow-kubernetes-minor-change"),
                "{text}"
            );
            assert_eq!(check("v1.36.3", &[("n2", theirs)], true), Ok(()));
        }
    }

    #[test]
    fn a_skipped_minor_or_another_major_is_refused_even_when_allowed() {
        for theirs in ["v1.34.2", "v1.38.0", "v2.36.3"] {
            for allow in [false, true] {
                let e = check("v1.36.3", &[("n3", theirs)], allow).unwrap_err();
                assert!(matches!(e, SkewError::Skipped { .. }), "{theirs} {allow}: {e:?}");
                assert!(e.to_string().contains("never skipped"), "{e}");
            }
        }
    }

    #[test]
    fn unknown_versions_hold_against_no_one() {
        assert_eq!(
            check(
                "v1.36.3",
                &[("old", UNKNOWN), ("odd", "latest"), ("x", "")],
                false
            ),
            Ok(())
        );
        assert!(matches!(
            check("garbage", &[("n1", "v1.36.3")], false),
            Err(SkewError::OwnVersion(_))
        ));
    }
}
