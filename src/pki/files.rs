//! The PKI module's only IO: read a directory into a snapshot, plan, write atomically.
//!
//! Every write goes to a temporary file in the same directory, created with its final mode
//! (0600 for keys and kubeconfigs, so a key is never readable by others, not even briefly;
//! 0644 for certificates), then is fsynced, renamed over the target, and the directory is
//! fsynced. A crash leaves either the old file or the new one, never a torn one.
//!
//! Over 600 lines only with its tests (about 280 lines of code): one job, the PKI's IO.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::PkiError;
use super::ca::{CertificateAuthority, IssuedCert};
use super::encryption::{self, EncryptionSummary};
use super::inspect;
use super::kubeconfig::{known_kubeconfigs, plan_kubeconfigs};
use super::plan::{self, ChangeReason, PlannedWrite, RenewalPolicy, Snapshot};
use super::spec::{CaKind, Consumer, Leaf, LeafSpec, NodeIdentity, NodeRole};

pub const KEY_MODE: u32 = 0o600;
pub const CERT_MODE: u32 = 0o644;
const DIR_MODE: u32 = 0o755;

/// What an `ensure_*` or install call changed on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PkiReport {
    pub changes: Vec<FileChange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    pub path: PathBuf,
    pub reason: ChangeReason,
    /// The processes that read this file and must restart to pick it up.
    pub consumers: &'static [Consumer],
}

impl PkiReport {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// Every process that must restart because one of its files changed.
    pub fn affected(&self) -> BTreeSet<Consumer> {
        self.changes
            .iter()
            .flat_map(|c| c.consumers.iter().copied())
            .collect()
    }

    pub fn merge(mut self, other: PkiReport) -> PkiReport {
        self.changes.extend(other.changes);
        self
    }
}

/// One certificate file and its expiry, for `k8sd status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertStatus {
    pub path: PathBuf,
    pub common_name: Option<String>,
    pub is_ca: bool,
    pub not_after: OffsetDateTime,
}

impl CertStatus {
    /// The file's name inside the PKI directory (`apiserver.crt`), as status and metrics show it.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// Creates the CAs and service-account key if missing (else loads them) and creates, renews or
/// re-issues every control-plane leaf in `dir`. A second call with the same identity writes
/// nothing.
pub fn ensure_control_plane_pki(dir: &Path, id: &NodeIdentity) -> Result<PkiReport, PkiError> {
    ensure_control_plane_pki_with(dir, id, &RenewalPolicy::current())
}

/// [`ensure_control_plane_pki`] with an explicit clock and renewal window.
pub fn ensure_control_plane_pki_with(
    dir: &Path,
    id: &NodeIdentity,
    policy: &RenewalPolicy,
) -> Result<PkiReport, PkiError> {
    let snap = read_snapshot(dir, &plan::known_files())?;
    let writes = plan::plan_control_plane(&snap, id, policy)?;
    apply(dir, writes)
}

/// Writes the kubeconfigs of `role` into `out_dir`, embedding the certificates from `pki_dir`;
/// rewrites one only when its content changed (for example after a renewal).
/// Control-plane nodes use `https://127.0.0.1:6443` as `server_url`.
pub fn ensure_kubeconfigs(
    pki_dir: &Path,
    out_dir: &Path,
    role: NodeRole,
    server_url: &str,
) -> Result<PkiReport, PkiError> {
    let files: Vec<String> = Leaf::for_role(role)
        .filter(|l| l.kubeconfig_file().is_some())
        .flat_map(|l| [l.cert_file(), l.key_file()])
        .chain([CaKind::Cluster.cert_file()])
        .collect();
    let pki = read_snapshot(pki_dir, &files)?;
    let existing = read_snapshot(out_dir, &known_kubeconfigs())?;
    apply(out_dir, plan_kubeconfigs(&pki, &existing, role, server_url)?)
}

/// Loads a CA with its key from `dir`, e.g. to sign a joining worker's certificates.
pub fn load_ca(dir: &Path, kind: CaKind) -> Result<CertificateAuthority, PkiError> {
    let cert_path = dir.join(kind.cert_file());
    let key_path = dir.join(kind.key_file());
    let cert = read_optional(&cert_path)?;
    let key = read_optional(&key_path)?;
    match (cert, key) {
        (Some(cert), Some(key)) => CertificateAuthority::from_pem(kind, &cert, &key),
        (Some(_), None) => Err(PkiError::CaIncomplete {
            present: cert_path,
            missing: key_path,
        }),
        (None, _) => Err(PkiError::Read {
            path: cert_path,
            source: io::Error::new(
                io::ErrorKind::NotFound,
                "no CA certificate; run `k8sd init` first",
            ),
        }),
    }
}

/// On a worker: the leaves that are missing, stale or expiring and must be signed again by
/// the control plane.
pub fn worker_renewals_due(
    dir: &Path,
    id: &NodeIdentity,
    policy: &RenewalPolicy,
) -> Result<Vec<(LeafSpec, ChangeReason)>, PkiError> {
    plan::worker_leaves_due(&read_snapshot(dir, &plan::known_files())?, id, policy)
}

/// On a worker: writes the cluster CA certificate and the leaves the control plane signed,
/// after checking each against the CA and its key. Files already identical are left alone.
pub fn install_worker_pki(
    dir: &Path,
    ca_cert_pem: &str,
    certs: &[(Leaf, IssuedCert)],
) -> Result<PkiReport, PkiError> {
    let snap = read_snapshot(dir, &plan::known_files())?;
    apply(dir, plan::plan_worker_install(&snap, ca_cert_pem, certs)?)
}

/// Every known certificate file present in `dir` with its expiry, CAs first.
pub fn cert_status(dir: &Path) -> Result<Vec<CertStatus>, PkiError> {
    let certs: Vec<String> = plan::known_files()
        .into_iter()
        .filter(|f| f.ends_with(".crt"))
        .collect();
    let snap = read_snapshot(dir, &certs)?;
    certs
        .iter()
        .filter_map(|file| snap.get(file).map(|pem| (file, pem)))
        .map(|(file, pem)| {
            let info = inspect::parse_cert(file, pem)?;
            Ok(CertStatus {
                path: dir.join(file),
                common_name: info.common_name,
                is_ca: info.is_ca,
                not_after: info.not_after,
            })
        })
        .collect()
}

/// At `k8sd init`: writes a new Secrets encryption configuration to `path` (0600) unless one
/// is there, which is kept after it validates (init never replaces a key). Returns
/// what the file now says.
pub fn create_encryption_config(path: &Path, now_unix: u64) -> Result<EncryptionSummary, PkiError> {
    if let Some((_, summary)) = read_encryption_config(path)? {
        return Ok(summary);
    }
    let text = encryption::generate_encryption_config(now_unix)?;
    install_encryption_config(path, &text)
}

/// On a joining control-plane node: validates the configuration the cluster sent, then writes
/// it to `path` (0600).
pub fn install_encryption_config(path: &Path, text: &str) -> Result<EncryptionSummary, PkiError> {
    let summary = encryption::validate_encryption_config(&path.display().to_string(), text)?;
    if let Some(dir) = path.parent() {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| PkiError::Write {
                path: dir.to_owned(),
                source,
            })?;
    }
    write_atomic(path, text.as_bytes(), KEY_MODE)?;
    Ok(summary)
}

/// The Secrets encryption configuration at `path`, validated, or `None` if there is none.
pub fn read_encryption_config(path: &Path) -> Result<Option<(String, EncryptionSummary)>, PkiError> {
    let Some(text) = read_optional(path)? else {
        return Ok(None);
    };
    let summary = encryption::validate_encryption_config(&path.display().to_string(), &text)?;
    Ok(Some((text, summary)))
}

fn read_optional(path: &Path) -> Result<Option<String>, PkiError> {
    match fs::read(path) {
        // Invalid UTF-8 turns into text that fails to parse, which the planners handle.
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_snapshot(dir: &Path, files: &[String]) -> Result<Snapshot, PkiError> {
    let mut snap = Snapshot::new();
    for file in files {
        if let Some(contents) = read_optional(&dir.join(file))? {
            snap.insert(file.clone(), contents);
        }
    }
    Ok(snap)
}

fn apply(dir: &Path, writes: Vec<PlannedWrite>) -> Result<PkiReport, PkiError> {
    if writes.is_empty() {
        return Ok(PkiReport::default());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(|source| PkiError::Write {
            path: dir.to_owned(),
            source,
        })?;
    let mut report = PkiReport::default();
    for w in writes {
        let path = dir.join(&w.file);
        write_atomic(
            &path,
            w.contents.as_bytes(),
            if w.secret { KEY_MODE } else { CERT_MODE },
        )?;
        report.changes.push(FileChange {
            path,
            reason: w.reason,
            consumers: w.consumers,
        });
    }
    Ok(report)
}

/// Writes `contents` to `path` with `mode`, atomically and durably (`atomic_file`).
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    crate::atomic_file::replace(path, contents, mode).map_err(|e| PkiError::Write {
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::time::SystemTime;

    use super::*;
    use crate::pki::{ENCRYPTION_CONFIG_FILE, San};

    fn id() -> NodeIdentity {
        NodeIdentity {
            node_name: "node-1".into(),
            node_ips: vec!["192.0.2.10".parse().unwrap()],
            extra_sans: vec!["api.example.com".into()],
            service_cidr: "10.96.0.0/12".parse().unwrap(),
        }
    }

    /// Name to (bytes, mtime, mode) for every file in `dir`.
    fn listing(dir: &Path) -> BTreeMap<String, (Vec<u8>, SystemTime, u32)> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| {
                let meta = e.metadata().unwrap();
                let name = e.file_name().into_string().unwrap();
                (
                    name,
                    (
                        fs::read(e.path()).unwrap(),
                        meta.modified().unwrap(),
                        meta.permissions().mode() & 0o777,
                    ),
                )
            })
            .collect()
    }

    fn read(dir: &Path, file: &str) -> String {
        fs::read_to_string(dir.join(file)).unwrap()
    }

    #[test]
    fn control_plane_files_have_the_right_modes_and_no_temp_files_remain() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("pki");
        let report = ensure_control_plane_pki(&dir, &id()).unwrap();
        assert!(report.changes.iter().all(|c| c.reason == ChangeReason::Created));
        // What `k8sd init` writes beside them: the Secrets encryption key.
        create_encryption_config(&dir.join(ENCRYPTION_CONFIG_FILE), 1).unwrap();
        let files = listing(&dir);
        assert_eq!(files.len(), plan::known_files().len() + 1, "{:?}", files.keys());
        for (name, (_, _, mode)) in &files {
            let secret = name.ends_with(".key") || name == ENCRYPTION_CONFIG_FILE;
            let want = if secret { 0o600 } else { 0o644 };
            assert_eq!(*mode, want, "{name}");
        }
    }

    #[test]
    fn the_encryption_key_is_created_once_kept_and_installed_only_when_valid() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("pki").join(ENCRYPTION_CONFIG_FILE);
        assert!(read_encryption_config(&path).unwrap().is_none());
        let first = create_encryption_config(&path, 1).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        // A second init (or a restart) keeps the key: other apiservers may be using it.
        assert_eq!(create_encryption_config(&path, 2).unwrap(), first);
        assert_eq!(fs::read_to_string(&path).unwrap(), text);
        // A joiner installs exactly what the cluster sent, 0600.
        let joined = tmp.path().join("joiner/pki").join(ENCRYPTION_CONFIG_FILE);
        assert_eq!(install_encryption_config(&joined, &text).unwrap(), first);
        assert_eq!(fs::read_to_string(&joined).unwrap(), text);
        assert_eq!(fs::metadata(&joined).unwrap().permissions().mode() & 0o777, 0o600);
        // A malformed file is refused, names its path and is not replaced by a fresh key.
        let broken = tmp.path().join("broken.yaml");
        fs::write(&broken, "kind: nope").unwrap();
        let e = create_encryption_config(&broken, 3).unwrap_err().to_string();
        assert!(e.contains("broken.yaml"), "{e}");
        assert_eq!(fs::read_to_string(&broken).unwrap(), "kind: nope");
        assert!(install_encryption_config(&joined, "kind: nope").is_err());
        assert_eq!(fs::read_to_string(&joined).unwrap(), text);
    }

    #[test]
    fn certificates_on_disk_chain_and_carry_exactly_their_identity() {
        let tmp = tempfile::tempdir().unwrap();
        ensure_control_plane_pki(tmp.path(), &id()).unwrap();
        for leaf in Leaf::ALL {
            let spec = leaf.spec(&id());
            let pem = read(tmp.path(), &leaf.cert_file());
            let info = inspect::parse_cert(&leaf.cert_file(), &pem).unwrap();
            let ca = read(tmp.path(), &spec.signer.cert_file());
            assert!(inspect::is_signed_by(&pem, &ca).unwrap(), "{leaf:?}");
            assert_eq!(info.common_name.as_ref(), Some(&spec.common_name), "{leaf:?}");
            assert_eq!(
                info.organizations,
                spec.organization.iter().cloned().collect::<Vec<_>>(),
                "{leaf:?}"
            );
            assert_eq!(info.sans, spec.sans, "{leaf:?}");
            assert_eq!(
                (info.server_auth, info.client_auth),
                (spec.usage.server_auth(), spec.usage.client_auth())
            );
            assert!(!info.is_ca, "{leaf:?}");
        }
        // Spot checks written out in full, independent of the table.
        let eku = |file: &str| {
            let i = inspect::parse_cert(file, &read(tmp.path(), file)).unwrap();
            (i.server_auth, i.client_auth)
        };
        assert_eq!(eku("apiserver.crt"), (true, false));
        assert_eq!(eku("kubelet.crt"), (true, false));
        assert_eq!(eku("admin.crt"), (false, true));
        assert_eq!(eku("datastore-client.crt"), (false, true));
        assert_eq!(eku("datastore-peer.crt"), (true, true));
        let apiserver = inspect::parse_cert("apiserver.crt", &read(tmp.path(), "apiserver.crt")).unwrap();
        assert!(apiserver.sans.contains(&San::Ip("10.96.0.1".parse().unwrap())));
        assert!(apiserver.sans.contains(&San::Dns("api.example.com".into())));
        assert!(
            inspect::is_signed_by(
                &read(tmp.path(), "front-proxy-client.crt"),
                &read(tmp.path(), "front-proxy-ca.crt")
            )
            .unwrap()
        );
        assert!(
            !inspect::is_signed_by(
                &read(tmp.path(), "front-proxy-client.crt"),
                &read(tmp.path(), "ca.crt")
            )
            .unwrap()
        );
    }

    #[test]
    fn ensure_is_idempotent() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = tmp.path().join("pki");
        ensure_control_plane_pki(&pki, &id()).unwrap();
        ensure_kubeconfigs(&pki, tmp.path(), NodeRole::ControlPlane, "https://127.0.0.1:6443").unwrap();
        let (before_pki, before_conf) = (listing(&pki), listing(tmp.path()));
        assert!(ensure_control_plane_pki(&pki, &id()).unwrap().is_empty());
        assert!(
            ensure_kubeconfigs(&pki, tmp.path(), NodeRole::ControlPlane, "https://127.0.0.1:6443")
                .unwrap()
                .is_empty()
        );
        assert_eq!(listing(&pki), before_pki);
        assert_eq!(listing(tmp.path()), before_conf);
    }

    #[test]
    fn a_san_change_reissues_and_names_the_components_to_restart() {
        let tmp = tempfile::tempdir().unwrap();
        ensure_control_plane_pki(tmp.path(), &id()).unwrap();
        let before = listing(tmp.path());
        let mut changed = id();
        changed.extra_sans.push("203.0.113.5".into());
        let report = ensure_control_plane_pki(tmp.path(), &changed).unwrap();
        let files: Vec<_> = report
            .changes
            .iter()
            .map(|c| c.path.file_name().unwrap().to_str().unwrap())
            .collect();
        assert_eq!(files, ["apiserver.key", "apiserver.crt"]);
        assert_eq!(report.affected(), BTreeSet::from([Consumer::KubeApiserver]));
        let after = listing(tmp.path());
        for (name, entry) in &before {
            assert_eq!(entry == &after[name], !name.starts_with("apiserver."), "{name}");
        }
        let info = inspect::parse_cert("apiserver.crt", &read(tmp.path(), "apiserver.crt")).unwrap();
        assert!(info.sans.contains(&San::Ip("203.0.113.5".parse().unwrap())));
    }

    #[test]
    fn kubeconfigs_embed_their_identity_and_follow_renewals() {
        let tmp = tempfile::tempdir().unwrap();
        let pki = tmp.path().join("pki");
        let conf = tmp.path().join("conf");
        ensure_control_plane_pki(&pki, &id()).unwrap();
        let report =
            ensure_kubeconfigs(&pki, &conf, NodeRole::ControlPlane, "https://127.0.0.1:6443").unwrap();
        assert_eq!(report.changes.len(), 5);
        let users = [
            ("admin.conf", "kubernetes-admin"),
            ("controller-manager.conf", "system:kube-controller-manager"),
            ("scheduler.conf", "system:kube-scheduler"),
            ("kubelet.conf", "system:node:node-1"),
            ("proxy.conf", "system:kube-proxy"),
        ];
        for (file, user) in users {
            let meta = fs::metadata(conf.join(file)).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
            let v: serde_yaml::Value = serde_yaml::from_str(&read(&conf, file)).unwrap();
            assert_eq!(
                v["clusters"][0]["cluster"]["server"], "https://127.0.0.1:6443",
                "{file}"
            );
            assert_eq!(v["users"][0]["name"], user, "{file}");
            assert_eq!(v["current-context"], format!("{user}@k8sd").as_str(), "{file}");
        }

        // Renew everything (as if 250 days had passed): every kubeconfig is rewritten.
        let later = RenewalPolicy {
            now: OffsetDateTime::now_utc() + time::Duration::days(250),
            ..RenewalPolicy::current()
        };
        assert!(
            !ensure_control_plane_pki_with(&pki, &id(), &later)
                .unwrap()
                .is_empty()
        );
        let report =
            ensure_kubeconfigs(&pki, &conf, NodeRole::ControlPlane, "https://127.0.0.1:6443").unwrap();
        assert_eq!(report.changes.len(), 5);
        assert!(report.changes.iter().all(|c| c.reason == ChangeReason::Rendered));
    }

    #[test]
    fn worker_gets_its_certs_from_the_control_plane_without_any_ca_key() {
        let tmp = tempfile::tempdir().unwrap();
        let (cp, worker) = (tmp.path().join("cp"), tmp.path().join("worker"));
        ensure_control_plane_pki(&cp, &id()).unwrap();
        let mut worker_id = id();
        worker_id.node_name = "worker-1".into();
        let due = worker_renewals_due(&worker, &worker_id, &RenewalPolicy::current()).unwrap();
        let ca = load_ca(&cp, CaKind::Cluster).unwrap();
        let now = OffsetDateTime::now_utc();
        let certs: Vec<_> = due
            .iter()
            .map(|(s, _)| (s.leaf, crate::pki::issue_leaf(&ca, s, now).unwrap()))
            .collect();
        install_worker_pki(&worker, ca.cert_pem(), &certs).unwrap();
        ensure_kubeconfigs(&worker, &worker, NodeRole::Worker, "https://127.0.0.1:6444").unwrap();
        let mut names: Vec<_> = listing(&worker).into_keys().collect();
        names.sort();
        assert_eq!(
            names,
            [
                "ca.crt",
                "kube-proxy.crt",
                "kube-proxy.key",
                "kubelet-client.crt",
                "kubelet-client.key",
                "kubelet.conf",
                "kubelet.crt",
                "kubelet.key",
                "proxy.conf"
            ]
        );
        assert!(
            worker_renewals_due(&worker, &worker_id, &RenewalPolicy::current())
                .unwrap()
                .is_empty()
        );
        assert!(
            install_worker_pki(&worker, ca.cert_pem(), &certs)
                .unwrap()
                .is_empty()
        );
        let status = cert_status(&worker).unwrap();
        assert_eq!(status.len(), 4);
        assert!(status[0].is_ca);
    }

    /// What a worker does through the cluster API's `Renew`: its leaves are due near expiry,
    /// it sends new public keys, the control plane signs them, and the worker installs them
    /// (keys 0600) so that its kubelet serves a fresh cluster-CA certificate for its name and IP.
    #[test]
    fn a_worker_renews_expiring_certificates_for_new_keys() {
        let tmp = tempfile::tempdir().unwrap();
        let (cp, worker) = (tmp.path().join("cp"), tmp.path().join("worker"));
        ensure_control_plane_pki(&cp, &id()).unwrap();
        let ca = load_ca(&cp, CaKind::Cluster).unwrap();
        let mut worker_id = id();
        worker_id.node_name = "worker-1".into();
        worker_id.extra_sans = vec![];
        let now = OffsetDateTime::now_utc();
        let sign_all = |due: &[(LeafSpec, ChangeReason)], at: OffsetDateTime| -> Vec<(Leaf, IssuedCert)> {
            due.iter()
                .map(|(spec, _)| {
                    let key = crate::pki::generate_private_key_pem("k").unwrap();
                    let public = crate::pki::public_key_pem("k", &key).unwrap();
                    let cert = crate::pki::sign_leaf_for_public_key(&ca, spec, &public, at).unwrap();
                    (
                        spec.leaf,
                        IssuedCert {
                            cert_pem: cert,
                            key_pem: key,
                        },
                    )
                })
                .collect()
        };
        let due = worker_renewals_due(&worker, &worker_id, &RenewalPolicy::current()).unwrap();
        install_worker_pki(&worker, ca.cert_pem(), &sign_all(&due, now)).unwrap();
        let before = read(&worker, "kubelet.crt");

        // 300 days on, every 365-day leaf is inside the 120-day window.
        let later = RenewalPolicy {
            now: now + time::Duration::days(300),
            renew_before: crate::pki::DEFAULT_RENEW_BEFORE,
        };
        let due = worker_renewals_due(&worker, &worker_id, &later).unwrap();
        let leaves: Vec<Leaf> = due.iter().map(|(s, _)| s.leaf).collect();
        assert_eq!(
            leaves,
            [Leaf::KubeletServing, Leaf::KubeletClient, Leaf::KubeProxy]
        );
        assert!(due.iter().all(|(_, r)| *r == ChangeReason::Expiring), "{due:?}");
        let report = install_worker_pki(&worker, ca.cert_pem(), &sign_all(&due, later.now)).unwrap();
        assert!(report.affected().contains(&Consumer::Kubelet));
        assert!(report.affected().contains(&Consumer::KubeProxy));
        assert!(
            worker_renewals_due(&worker, &worker_id, &later)
                .unwrap()
                .is_empty()
        );

        let pem = read(&worker, "kubelet.crt");
        assert_ne!(pem, before);
        let info = inspect::parse_cert("kubelet.crt", &pem).unwrap();
        assert!(inspect::is_signed_by(&pem, ca.cert_pem()).unwrap());
        assert_eq!((info.server_auth, info.client_auth), (true, false));
        let want: std::collections::BTreeSet<San> = [
            San::Dns("worker-1".into()),
            San::Ip("192.0.2.10".parse().unwrap()),
        ]
        .into();
        assert_eq!(info.sans, want);
        let files = listing(&worker);
        for key in ["kubelet.key", "kubelet-client.key", "kube-proxy.key"] {
            assert_eq!(files[key].2, 0o600, "{key}");
        }
    }

    #[test]
    fn status_lists_every_certificate_with_its_expiry() {
        let tmp = tempfile::tempdir().unwrap();
        ensure_control_plane_pki(tmp.path(), &id()).unwrap();
        let status = cert_status(tmp.path()).unwrap();
        assert_eq!(status.len(), CaKind::ALL.len() + Leaf::ALL.len());
        let soon = OffsetDateTime::now_utc() + time::Duration::days(366);
        for s in &status {
            assert_eq!(s.is_ca, s.not_after > soon, "{}", s.path.display());
        }
    }

    #[test]
    fn load_ca_without_its_key_says_what_to_do() {
        let tmp = tempfile::tempdir().unwrap();
        ensure_control_plane_pki(tmp.path(), &id()).unwrap();
        fs::remove_file(tmp.path().join("ca.key")).unwrap();
        let err = load_ca(tmp.path(), CaKind::Cluster).unwrap_err();
        assert!(err.to_string().contains("or remove"), "{err}");
        let err = ensure_control_plane_pki(tmp.path(), &id()).unwrap_err();
        assert!(matches!(err, PkiError::CaIncomplete { .. }), "{err}");
    }

    #[test]
    fn write_atomic_sets_the_exact_mode_and_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("x.crt");
        write_atomic(&path, b"one", 0o644).unwrap();
        write_atomic(&path, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
        let err = write_atomic(&tmp.path().join("missing/x.key"), b"k", 0o600).unwrap_err();
        assert!(err.to_string().starts_with("cannot write "), "{err}");
    }
}
