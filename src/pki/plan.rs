//! Deciding what to (re)write: the pure core of every `ensure_*` function.
//!
//! `files.rs` reads the PKI directory into a [`Snapshot`] (file name to contents), calls a
//! planner here, and writes the returned [`PlannedWrite`]s. Nothing here touches the disk, so
//! every decision (create, renew, re-issue on SAN drift, refuse a half-present CA) is tested
//! on in-memory maps.
//!
//! Rules:
//! - A CA is never replaced. A CA certificate without its key is an error (a node that cannot
//!   sign must not mint a new, different CA); a key without its certificate gets the
//!   certificate rebuilt from the key.
//! - `sa.key` is never replaced once it exists: that would invalidate every issued token.
//! - A leaf is re-issued, with a new key, when missing, unreadable, not matching its key, not
//!   signed by the current CA, different from its spec (subject, usages, SANs), or expiring
//!   within the renewal window.
//!
//! Over 600 lines only with its tests (about 410 lines of code): one job, the PKI's pure decisions.

use std::collections::{BTreeMap, BTreeSet};

use time::{Duration, OffsetDateTime};

use super::PkiError;
use super::ca::{self, CertificateAuthority, IssuedCert};
use super::inspect::{self, CertInfo};
use super::spec::{
    CaKind, Consumer, DEFAULT_RENEW_BEFORE, Leaf, LeafSpec, NodeIdentity, NodeRole, SA_KEY_FILE, SA_PUB_FILE,
    San, ServiceCertSpec, Usage,
};

/// File name (relative to the PKI directory) to contents, for the files that exist.
pub(crate) type Snapshot = BTreeMap<String, String>;

/// Why a file was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeReason {
    Created,
    /// Expires within the renewal window.
    Expiring,
    SansChanged,
    /// Common name or organization differ from the spec.
    SubjectChanged,
    UsageChanged,
    /// Not signed by the CA now on disk.
    SignerChanged,
    /// The certificate does not belong to the key next to it.
    KeyMismatch,
    Unreadable,
    /// `sa.pub` or a CA certificate rebuilt from its existing private key.
    Rebuilt,
    /// A kubeconfig whose embedded material changed.
    Rendered,
    /// Installed from material the control plane sent.
    Installed,
}

/// When "now" is and how early to renew; injected so tests need no clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPolicy {
    pub now: OffsetDateTime,
    pub renew_before: Duration,
}

impl RenewalPolicy {
    pub fn current() -> Self {
        Self {
            now: OffsetDateTime::now_utc(),
            renew_before: DEFAULT_RENEW_BEFORE,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PlannedWrite {
    pub file: String,
    pub contents: String,
    /// Private material: written 0600, else 0644.
    pub secret: bool,
    pub reason: ChangeReason,
    pub consumers: &'static [Consumer],
}

impl PlannedWrite {
    fn cert(file: String, contents: String, reason: ChangeReason, consumers: &'static [Consumer]) -> Self {
        Self {
            file,
            contents,
            secret: false,
            reason,
            consumers,
        }
    }

    fn key(file: String, contents: String, reason: ChangeReason, consumers: &'static [Consumer]) -> Self {
        Self {
            file,
            contents,
            secret: true,
            reason,
            consumers,
        }
    }
}

/// Loads or creates one CA.
pub(crate) fn plan_ca(
    snap: &Snapshot,
    kind: CaKind,
    now: OffsetDateTime,
    writes: &mut Vec<PlannedWrite>,
) -> Result<CertificateAuthority, PkiError> {
    let (cert_file, key_file) = (kind.cert_file(), kind.key_file());
    match (snap.get(&cert_file), snap.get(&key_file)) {
        (Some(cert), Some(key)) => CertificateAuthority::from_pem(kind, cert, key),
        (None, None) => {
            let ca = CertificateAuthority::generate(kind, now)?;
            // Key first: after a crash between the two writes, the key alone is recoverable.
            writes.push(PlannedWrite::key(
                key_file,
                ca.key_pem().to_owned(),
                ChangeReason::Created,
                kind.consumers(),
            ));
            writes.push(PlannedWrite::cert(
                cert_file,
                ca.cert_pem().to_owned(),
                ChangeReason::Created,
                kind.consumers(),
            ));
            Ok(ca)
        }
        (None, Some(key)) => {
            let ca = CertificateAuthority::from_key_pem(kind, key, now)?;
            writes.push(PlannedWrite::cert(
                cert_file,
                ca.cert_pem().to_owned(),
                ChangeReason::Rebuilt,
                kind.consumers(),
            ));
            Ok(ca)
        }
        (Some(_), None) => Err(PkiError::CaIncomplete {
            present: cert_file.into(),
            missing: key_file.into(),
        }),
    }
}

const SA_CONSUMERS: &[Consumer] = &[Consumer::KubeApiserver, Consumer::ControllerManager];

fn plan_service_account(snap: &Snapshot, writes: &mut Vec<PlannedWrite>) -> Result<(), PkiError> {
    match snap.get(SA_KEY_FILE) {
        None => {
            let (key, public) = ca::generate_service_account_key()?;
            writes.push(PlannedWrite::key(
                SA_KEY_FILE.into(),
                key,
                ChangeReason::Created,
                SA_CONSUMERS,
            ));
            writes.push(PlannedWrite::cert(
                SA_PUB_FILE.into(),
                public,
                ChangeReason::Created,
                SA_CONSUMERS,
            ));
        }
        Some(key) => {
            let public = ca::public_key_pem(SA_KEY_FILE, key)?;
            let reason = match snap.get(SA_PUB_FILE) {
                None => Some(ChangeReason::Created),
                Some(existing) if existing.trim() != public.trim() => Some(ChangeReason::Rebuilt),
                Some(_) => None,
            };
            if let Some(reason) = reason {
                writes.push(PlannedWrite::cert(
                    SA_PUB_FILE.into(),
                    public,
                    reason,
                    SA_CONSUMERS,
                ));
            }
        }
    }
    Ok(())
}

/// Why an existing leaf must be re-issued, or `None` if it is good.
pub fn leaf_verdict(
    cert_pem: Option<&str>,
    key_pem: Option<&str>,
    spec: &LeafSpec,
    ca_cert_pem: &str,
    policy: &RenewalPolicy,
) -> Result<Option<ChangeReason>, PkiError> {
    let wanted = Wanted {
        cert_file: spec.leaf.cert_file(),
        key_file: spec.leaf.key_file(),
        common_name: &spec.common_name,
        organization: spec.organization.as_deref(),
        usage: spec.usage,
        sans: &spec.sans,
    };
    verdict(cert_pem, key_pem, &wanted, ca_cert_pem, policy)
}

/// Why a Service's serving certificate (`ca::issue_service_serving`) must be re-issued, or
/// `None` if it is good: the same checks as for a node's leaves.
pub fn service_cert_verdict(
    cert_pem: Option<&str>,
    key_pem: Option<&str>,
    spec: &ServiceCertSpec,
    ca_cert_pem: &str,
    policy: &RenewalPolicy,
) -> Result<Option<ChangeReason>, PkiError> {
    let what = spec.describe();
    let (common_name, sans) = (spec.common_name(), spec.sans());
    let wanted = Wanted {
        cert_file: what.clone(),
        key_file: format!("the key of {what}"),
        common_name: &common_name,
        organization: None,
        usage: Usage::Server,
        sans: &sans,
    };
    verdict(cert_pem, key_pem, &wanted, ca_cert_pem, policy)
}

/// What a certificate must say, for [`verdict`].
struct Wanted<'a> {
    cert_file: String,
    key_file: String,
    common_name: &'a str,
    organization: Option<&'a str>,
    usage: Usage,
    sans: &'a BTreeSet<San>,
}

fn verdict(
    cert_pem: Option<&str>,
    key_pem: Option<&str>,
    wanted: &Wanted<'_>,
    ca_cert_pem: &str,
    policy: &RenewalPolicy,
) -> Result<Option<ChangeReason>, PkiError> {
    let (Some(cert_pem), Some(key_pem)) = (cert_pem, key_pem) else {
        return Ok(Some(ChangeReason::Created));
    };
    let Ok(info) = inspect::parse_cert(&wanted.cert_file, cert_pem) else {
        return Ok(Some(ChangeReason::Unreadable));
    };
    let Ok(key_spki) = ca::key_spki_der(&wanted.key_file, key_pem) else {
        return Ok(Some(ChangeReason::Unreadable));
    };
    Ok(if key_spki != info.spki_der {
        Some(ChangeReason::KeyMismatch)
    } else if !inspect::is_signed_by(cert_pem, ca_cert_pem)? {
        Some(ChangeReason::SignerChanged)
    } else if let Some(reason) = mismatch(&info, wanted) {
        Some(reason)
    } else if info.not_after - policy.now < policy.renew_before {
        Some(ChangeReason::Expiring)
    } else {
        None
    })
}

fn mismatch(info: &CertInfo, wanted: &Wanted<'_>) -> Option<ChangeReason> {
    let orgs: Vec<String> = wanted.organization.iter().map(|o| o.to_string()).collect();
    if info.common_name.as_deref() != Some(wanted.common_name) || info.organizations != orgs {
        Some(ChangeReason::SubjectChanged)
    } else if info.server_auth != wanted.usage.server_auth()
        || info.client_auth != wanted.usage.client_auth()
        || info.is_ca
    {
        Some(ChangeReason::UsageChanged)
    } else if &info.sans != wanted.sans {
        Some(ChangeReason::SansChanged)
    } else {
        None
    }
}

fn push_leaf(writes: &mut Vec<PlannedWrite>, leaf: Leaf, issued: IssuedCert, reason: ChangeReason) {
    writes.push(PlannedWrite::key(
        leaf.key_file(),
        issued.key_pem,
        reason,
        leaf.consumers(),
    ));
    writes.push(PlannedWrite::cert(
        leaf.cert_file(),
        issued.cert_pem,
        reason,
        leaf.consumers(),
    ));
}

/// Everything a control-plane node needs, created or renewed.
pub(crate) fn plan_control_plane(
    snap: &Snapshot,
    id: &NodeIdentity,
    policy: &RenewalPolicy,
) -> Result<Vec<PlannedWrite>, PkiError> {
    let mut writes = Vec::new();
    let cas = CaKind::ALL
        .map(|kind| plan_ca(snap, kind, policy.now, &mut writes))
        .into_iter()
        .collect::<Result<Vec<_>, _>>()?;
    plan_service_account(snap, &mut writes)?;
    for leaf in Leaf::for_role(NodeRole::ControlPlane) {
        let spec = leaf.spec(id);
        let Some(ca) = cas.iter().find(|ca| ca.kind() == spec.signer) else {
            continue; // unreachable: every CaKind was planned above
        };
        let verdict = leaf_verdict(
            snap.get(&leaf.cert_file()).map(String::as_str),
            snap.get(&leaf.key_file()).map(String::as_str),
            &spec,
            ca.cert_pem(),
            policy,
        )?;
        if let Some(reason) = verdict {
            push_leaf(&mut writes, leaf, ca::issue_leaf(ca, &spec, policy.now)?, reason);
        }
    }
    Ok(writes)
}

/// On a worker: the leaves it must ask the control plane to (re)sign.
pub(crate) fn worker_leaves_due(
    snap: &Snapshot,
    id: &NodeIdentity,
    policy: &RenewalPolicy,
) -> Result<Vec<(LeafSpec, ChangeReason)>, PkiError> {
    let ca_file = CaKind::Cluster.cert_file();
    let Some(ca_cert) = snap.get(&ca_file) else {
        // Without the CA nothing can be checked: everything is due.
        return Ok(Leaf::for_role(NodeRole::Worker)
            .map(|l| (l.spec(id), ChangeReason::Created))
            .collect());
    };
    let mut due = Vec::new();
    for leaf in Leaf::for_role(NodeRole::Worker) {
        let spec = leaf.spec(id);
        let verdict = leaf_verdict(
            snap.get(&leaf.cert_file()).map(String::as_str),
            snap.get(&leaf.key_file()).map(String::as_str),
            &spec,
            ca_cert,
            policy,
        )?;
        if let Some(reason) = verdict {
            due.push((spec, reason));
        }
    }
    Ok(due)
}

/// On a worker: installs the cluster CA certificate and leaves signed by the control plane,
/// after checking each leaf against that CA and its key.
pub(crate) fn plan_worker_install(
    snap: &Snapshot,
    ca_cert_pem: &str,
    certs: &[(Leaf, IssuedCert)],
) -> Result<Vec<PlannedWrite>, PkiError> {
    let mut writes = Vec::new();
    let ca_file = CaKind::Cluster.cert_file();
    let ca_info = inspect::parse_cert(&ca_file, ca_cert_pem)?;
    if !ca_info.is_ca {
        return Err(PkiError::Parse {
            what: ca_file,
            reason: "not a CA certificate".into(),
        });
    }
    if snap.get(&ca_file).map(String::as_str) != Some(ca_cert_pem) {
        writes.push(PlannedWrite::cert(
            ca_file,
            ca_cert_pem.to_owned(),
            ChangeReason::Installed,
            CaKind::Cluster.consumers(),
        ));
    }
    for (leaf, issued) in certs {
        let file = leaf.cert_file();
        let info = inspect::parse_cert(&file, &issued.cert_pem)?;
        if !inspect::is_signed_by(&issued.cert_pem, ca_cert_pem)? {
            return Err(PkiError::NotSignedByCa { file });
        }
        if info.spki_der != ca::key_spki_der(&leaf.key_file(), &issued.key_pem)? {
            return Err(PkiError::KeyMismatch {
                cert: file,
                key: leaf.key_file(),
            });
        }
        let unchanged = snap.get(&leaf.cert_file()) == Some(&issued.cert_pem)
            && snap.get(&leaf.key_file()) == Some(&issued.key_pem);
        if !unchanged {
            push_leaf(&mut writes, *leaf, issued.clone(), ChangeReason::Installed);
        }
    }
    Ok(writes)
}

/// Every file name the planners look at.
pub(crate) fn known_files() -> Vec<String> {
    let mut files: Vec<String> = CaKind::ALL
        .iter()
        .flat_map(|k| [k.cert_file(), k.key_file()])
        .collect();
    files.extend([SA_KEY_FILE.to_owned(), SA_PUB_FILE.to_owned()]);
    files.extend(Leaf::ALL.iter().flat_map(|l| [l.cert_file(), l.key_file()]));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::pki::test_identity as id;

    fn policy() -> RenewalPolicy {
        RenewalPolicy::current()
    }

    /// Applies planned writes to an in-memory directory.
    fn apply(snap: &mut Snapshot, writes: &[PlannedWrite]) {
        for w in writes {
            snap.insert(w.file.clone(), w.contents.clone());
        }
    }

    fn bootstrapped() -> Snapshot {
        let mut snap = Snapshot::new();
        let writes = plan_control_plane(&snap, &id(), &policy()).unwrap();
        apply(&mut snap, &writes);
        snap
    }

    fn changed(writes: &[PlannedWrite]) -> Vec<(&str, ChangeReason)> {
        writes.iter().map(|w| (w.file.as_str(), w.reason)).collect()
    }

    #[test]
    fn bootstrap_creates_every_file_once_and_then_nothing() {
        let snap = bootstrapped();
        let mut files: Vec<_> = snap.keys().cloned().collect();
        let mut want = known_files();
        files.sort();
        want.sort();
        assert_eq!(files, want);
        assert!(plan_control_plane(&snap, &id(), &policy()).unwrap().is_empty());
    }

    #[test]
    fn a_new_node_ip_reissues_exactly_the_certs_that_carry_it() {
        let snap = bootstrapped();
        let mut moved = id();
        moved.node_ips.push("192.0.2.11".parse().unwrap());
        let writes = plan_control_plane(&snap, &moved, &policy()).unwrap();
        let mut stems: Vec<_> = writes.iter().map(|w| w.file.as_str()).collect();
        stems.sort();
        assert_eq!(
            stems,
            [
                "apiserver.crt",
                "apiserver.key",
                "datastore-peer.crt",
                "datastore-peer.key",
                "datastore-server.crt",
                "datastore-server.key",
                "kubelet.crt",
                "kubelet.key",
            ]
        );
        assert!(writes.iter().all(|w| w.reason == ChangeReason::SansChanged));
    }

    #[test]
    fn an_extra_san_reissues_only_the_apiserver_cert() {
        let snap = bootstrapped();
        let mut extra = id();
        extra.extra_sans.push("api.example.com".into());
        let writes = plan_control_plane(&snap, &extra, &policy()).unwrap();
        assert_eq!(
            changed(&writes),
            [
                ("apiserver.key", ChangeReason::SansChanged),
                ("apiserver.crt", ChangeReason::SansChanged)
            ]
        );
        assert_eq!(writes[1].consumers, [Consumer::KubeApiserver]);
    }

    #[test]
    fn a_renamed_node_gets_new_node_identities() {
        let snap = bootstrapped();
        let mut renamed = id();
        renamed.node_name = "node-2".into();
        let writes = plan_control_plane(&snap, &renamed, &policy()).unwrap();
        let reason = |file: &str| writes.iter().find(|w| w.file == file).map(|w| w.reason);
        assert_eq!(reason("kubelet-client.crt"), Some(ChangeReason::SubjectChanged));
        assert_eq!(reason("kubelet.crt"), Some(ChangeReason::SubjectChanged));
        assert_eq!(reason("apiserver.crt"), Some(ChangeReason::SansChanged));
        assert_eq!(reason("admin.crt"), None);
    }

    #[test]
    fn leaves_are_renewed_inside_the_window_but_cas_are_not() {
        let snap = bootstrapped();
        let later = RenewalPolicy {
            now: policy().now + Duration::days(250),
            ..policy()
        };
        let writes = plan_control_plane(&snap, &id(), &later).unwrap();
        // Every leaf, key and cert; no CA file, no service-account file.
        assert_eq!(writes.len(), Leaf::ALL.len() * 2);
        assert!(writes.iter().all(|w| w.reason == ChangeReason::Expiring));
        let earlier = RenewalPolicy {
            now: policy().now + Duration::days(240),
            ..policy()
        };
        assert!(plan_control_plane(&snap, &id(), &earlier).unwrap().is_empty());
    }

    #[test]
    fn a_ca_certificate_without_its_key_is_refused() {
        let mut snap = bootstrapped();
        snap.remove("ca.key");
        let err = plan_control_plane(&snap, &id(), &policy()).unwrap_err();
        assert!(matches!(err, PkiError::CaIncomplete { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("copy ca.key from another control-plane node"),
            "{err}"
        );
    }

    #[test]
    fn a_ca_key_without_its_certificate_is_repaired_and_leaves_still_verify() {
        let mut snap = bootstrapped();
        snap.remove("ca.crt");
        let writes = plan_control_plane(&snap, &id(), &policy()).unwrap();
        assert_eq!(changed(&writes), [("ca.crt", ChangeReason::Rebuilt)]);
        assert!(inspect::is_signed_by(&snap["admin.crt"], &writes[0].contents).unwrap());
    }

    #[test]
    fn a_replaced_ca_reissues_all_its_leaves() {
        let mut snap = bootstrapped();
        snap.remove("front-proxy-ca.crt");
        snap.remove("front-proxy-ca.key");
        let writes = plan_control_plane(&snap, &id(), &policy()).unwrap();
        assert_eq!(
            changed(&writes),
            [
                ("front-proxy-ca.key", ChangeReason::Created),
                ("front-proxy-ca.crt", ChangeReason::Created),
                ("front-proxy-client.key", ChangeReason::SignerChanged),
                ("front-proxy-client.crt", ChangeReason::SignerChanged),
            ]
        );
    }

    #[test]
    fn broken_leaves_and_sa_pub_are_repaired_but_sa_key_is_kept() {
        let mut snap = bootstrapped();
        let sa_key = snap["sa.key"].clone();
        snap.insert("scheduler.crt".into(), "garbage".into());
        snap.insert("admin.key".into(), snap["scheduler.key"].clone());
        snap.remove("sa.pub");
        let writes = plan_control_plane(&snap, &id(), &policy()).unwrap();
        assert_eq!(
            changed(&writes),
            [
                ("sa.pub", ChangeReason::Created),
                ("scheduler.key", ChangeReason::Unreadable),
                ("scheduler.crt", ChangeReason::Unreadable),
                ("admin.key", ChangeReason::KeyMismatch),
                ("admin.crt", ChangeReason::KeyMismatch),
            ]
        );
        apply(&mut snap, &writes);
        assert_eq!(snap["sa.key"], sa_key);
        assert!(plan_control_plane(&snap, &id(), &policy()).unwrap().is_empty());
    }

    #[test]
    fn a_worker_installs_what_the_control_plane_signed() {
        let cp = bootstrapped();
        let ca = CertificateAuthority::from_pem(CaKind::Cluster, &cp["ca.crt"], &cp["ca.key"]).unwrap();
        let mut worker = Snapshot::new();
        let due = worker_leaves_due(&worker, &id(), &policy()).unwrap();
        assert_eq!(due.len(), 3);
        let certs: Vec<_> = due
            .iter()
            .map(|(spec, _)| (spec.leaf, ca::issue_leaf(&ca, spec, policy().now).unwrap()))
            .collect();
        let writes = plan_worker_install(&worker, ca.cert_pem(), &certs).unwrap();
        assert_eq!(writes.len(), 7);
        assert!(writes.iter().all(|w| !w.file.ends_with(".key") || w.secret));
        apply(&mut worker, &writes);
        assert!(!worker.contains_key("ca.key"), "a worker never holds a CA key");
        assert!(worker_leaves_due(&worker, &id(), &policy()).unwrap().is_empty());
        assert!(
            plan_worker_install(&worker, ca.cert_pem(), &certs)
                .unwrap()
                .is_empty()
        );

        // Certificates from another cluster's CA are refused.
        let other = CertificateAuthority::generate(CaKind::Cluster, policy().now).unwrap();
        let err = plan_worker_install(&Snapshot::new(), other.cert_pem(), &certs).unwrap_err();
        assert!(matches!(err, PkiError::NotSignedByCa { .. }), "{err}");
    }
}
