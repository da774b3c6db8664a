//! The PKI module's only IO: read a directory into a snapshot, plan, write atomically.
//!
//! Every write goes to a temporary file in the same directory, created with its final mode
//! (0600 for keys and kubeconfigs, so a key is never readable by others, not even briefly;
//! 0644 for certificates), then is fsynced, renamed over the target, and the directory is
//! fsynced. A crash leaves either the old file or the new one, never a torn one.

use std::collections::BTreeSet;
use std::fs::{self, DirBuilder, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::PkiError;
use super::ca::{CertificateAuthority, IssuedCert};
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

/// Writes `contents` to `path` with `mode`, atomically and durably.
pub(crate) fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode (0644 under umask 077); set it exactly.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(err)
}
