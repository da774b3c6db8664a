//! Backup archives: one `tar.gz` holding a datastore snapshot, the PKI, the node and cluster
//! config, and a manifest naming every member file with its SHA-256.
//!
//! ```text
//!  manifest.json            first, so a reader learns the format before anything else
//!  datastore/state.db       a consistent SQLite copy (VACUUM INTO of one read transaction)
//!  node.yaml  pki/…  kubeconfig/…  config/…   the node's directories, whole
//! ```
//!
//! This module knows files and bytes only: what goes in is decided by the caller
//! (`daemon::backups`, for `k8sd backup`, `k8sd recover` and scheduled backups), which also
//! takes the snapshot; `archive.rs` runs one backup through a scratch directory. Whole directories are archived rather than a fixed list of
//! files, so a file a newer k8sd adds to `pki/` (an encryption key) is carried without a
//! change here. Reading verifies the format version, that the archive holds exactly the
//! manifest's files, and every checksum, all into a scratch directory, before the caller
//! touches anything.

pub mod archive;
pub mod schedule;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The archive format this k8sd writes and the newest it reads.
pub const FORMAT_VERSION: u32 = 1;
pub const MANIFEST: &str = "manifest.json";
/// Where the datastore snapshot sits inside an archive.
pub const SNAPSHOT_ENTRY: &str = "datastore/state.db";

/// What an archive says about itself. Versioned: `format` is checked before anything else.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Manifest {
    pub format: u32,
    pub k8sd_version: String,
    pub kubernetes_version: String,
    /// The datastore's cluster id, hex, as etcd prints it.
    pub cluster_id: String,
    /// The datastore revision of the snapshot.
    pub revision: i64,
    pub node_name: String,
    /// Seconds since the Unix epoch.
    pub created: u64,
    /// Every member file (archive path → SHA-256, hex).
    pub files: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("cannot write the backup to {path}: {source}{hint}", hint = disk_hint(source))]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot snapshot the datastore into {path} (beside the archive; it needs room for a full copy of the datastore): {reason}; free space there or pass --output on another filesystem"
    )]
    Snapshot { path: PathBuf, reason: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} already exists; choose another --output or move it away")]
    Exists { path: PathBuf },
    #[error("{path} is not a k8sd backup archive or is damaged: {reason}; nothing was changed")]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "{path} is a backup of format {found} from k8sd {k8sd}; this k8sd reads format {FORMAT_VERSION} at most. Restore it with k8sd {k8sd} or newer; nothing was changed"
    )]
    TooNew { path: PathBuf, found: u32, k8sd: String },
    #[error(
        "{path}: {entry} fails its checksum (manifest {want}, archive {got}); the archive is damaged, nothing was changed"
    )]
    Checksum {
        path: PathBuf,
        entry: String,
        want: String,
        got: String,
    },
}

fn disk_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        "; free space there or pass --output on another filesystem"
    } else {
        ""
    }
}

/// Every regular file under `dir`, as (path relative to `dir`, full path), sorted.
pub fn walk(dir: &Path) -> Result<Vec<(PathBuf, PathBuf)>, BackupError> {
    fn go(root: &Path, dir: &Path, out: &mut Vec<(PathBuf, PathBuf)>) -> Result<(), BackupError> {
        let read = |source| BackupError::Read {
            path: dir.to_path_buf(),
            source,
        };
        for e in fs::read_dir(dir).map_err(read)? {
            let e = e.map_err(read)?;
            let ty = e.file_type().map_err(read)?;
            let path = e.path();
            if ty.is_dir() {
                go(root, &path, out)?;
            } else if ty.is_file() {
                let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                out.push((rel, path));
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    go(dir, dir, &mut out)?;
    out.sort();
    Ok(out)
}

fn sha256_file(path: &Path) -> Result<String, BackupError> {
    let read = |source| BackupError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut f = File::open(path).map_err(read)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(read)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Write `members` (archive path, source file) and a manifest built from `base` with their
/// checksums to `out`, mode 0600 (the archive holds the CA keys). The archive appears under
/// its name only when complete: it is written to `<out>.part`, synced, then linked to `out`
/// (never replacing a file there); the partial file is removed whatever happens.
pub fn write(out: &Path, base: Manifest, members: &[(String, PathBuf)]) -> Result<Manifest, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists {
            path: out.to_path_buf(),
        });
    }
    let mut manifest = base;
    manifest.format = FORMAT_VERSION;
    manifest.files = BTreeMap::new();
    for (name, src) in members {
        manifest.files.insert(name.clone(), sha256_file(src)?);
    }
    let part = PathBuf::from(format!("{}.part", out.display()));
    // A hard link, not a rename, puts the finished archive in place: it fails instead of
    // replacing a file that appeared at `out` meanwhile.
    let res = write_tar(&part, &manifest, members).and_then(|()| {
        fs::hard_link(&part, out).map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => BackupError::Exists {
                path: out.to_path_buf(),
            },
            _ => BackupError::Write {
                path: out.to_path_buf(),
                source,
            },
        })
    });
    let _ = fs::remove_file(&part);
    res.map(|()| manifest)
}

fn write_tar(part: &Path, manifest: &Manifest, members: &[(String, PathBuf)]) -> Result<(), BackupError> {
    let werr = |source| BackupError::Write {
        path: part.to_path_buf(),
        source,
    };
    let _ = fs::remove_file(part);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(part)
        .map_err(werr)?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let json = serde_json::to_vec_pretty(manifest).map_err(|e| werr(io::Error::other(e)))?;
    let mut h = tar::Header::new_gnu();
    h.set_size(json.len() as u64);
    h.set_mode(0o600);
    h.set_mtime(manifest.created);
    h.set_cksum();
    tar.append_data(&mut h, MANIFEST, json.as_slice()).map_err(werr)?;
    for (name, src) in members {
        let mut f = File::open(src).map_err(|source| BackupError::Read {
            path: src.clone(),
            source,
        })?;
        tar.append_file(name, &mut f).map_err(werr)?;
    }
    let gz = tar.into_inner().map_err(werr)?;
    let file = gz.finish().map_err(werr)?;
    file.sync_all().map_err(werr)?;
    Ok(())
}

/// Unpack `archive` into `dest` (an empty scratch directory) and verify it: the format is one
/// this k8sd reads, the archive holds exactly the manifest's files, under plain relative
/// paths, and every checksum matches. Modes are kept (keys stay 0600).
pub fn unpack_verified(archive: &Path, dest: &Path) -> Result<Manifest, BackupError> {
    let corrupt = |reason: String| BackupError::Corrupt {
        path: archive.to_path_buf(),
        reason,
    };
    let file = File::open(archive).map_err(|source| BackupError::Read {
        path: archive.to_path_buf(),
        source,
    })?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
    tar.set_preserve_permissions(true);
    let mut manifest: Option<Manifest> = None;
    let mut seen = Vec::new();
    for entry in tar.entries().map_err(|e| corrupt(e.to_string()))? {
        let mut entry = entry.map_err(|e| corrupt(e.to_string()))?;
        let name = entry
            .path()
            .map_err(|e| corrupt(e.to_string()))?
            .to_string_lossy()
            .into_owned();
        let plain = Path::new(&name)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain || !entry.header().entry_type().is_file() {
            return Err(corrupt(format!("unexpected entry {name:?}")));
        }
        if name == MANIFEST {
            let mut json = Vec::new();
            entry.read_to_end(&mut json).map_err(|e| corrupt(e.to_string()))?;
            let v: serde_json::Value =
                serde_json::from_slice(&json).map_err(|e| corrupt(format!("manifest: {e}")))?;
            // The format first: a newer archive may have fields this k8sd does not know.
            let found = v["format"].as_u64().unwrap_or(0);
            if found > u64::from(FORMAT_VERSION) {
                return Err(BackupError::TooNew {
                    path: archive.to_path_buf(),
                    found: u32::try_from(found).unwrap_or(u32::MAX),
                    k8sd: v["k8sd-version"].as_str().unwrap_or("?").to_string(),
                });
            }
            manifest = Some(serde_json::from_value(v).map_err(|e| corrupt(format!("manifest: {e}")))?);
            continue;
        }
        if manifest.is_none() {
            return Err(corrupt(format!("{name:?} comes before the manifest")));
        }
        let target = dest.join(&name);
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent).map_err(|source| BackupError::Write {
                path: parent.to_path_buf(),
                source,
            })?;
            let _ = fs::set_permissions(parent, fs::Permissions::from_mode(0o700));
        }
        entry
            .unpack(&target)
            .map_err(|e| corrupt(format!("{name}: {e}")))?;
        seen.push(name);
    }
    let manifest = manifest.ok_or_else(|| corrupt("no manifest".into()))?;
    seen.sort();
    let listed: Vec<&String> = manifest.files.keys().collect();
    if seen.iter().collect::<Vec<_>>() != listed {
        return Err(corrupt(format!(
            "its files {seen:?} are not the manifest's {listed:?}"
        )));
    }
    for (name, want) in &manifest.files {
        let got = sha256_file(&dest.join(name))?;
        if &got != want {
            return Err(BackupError::Checksum {
                path: archive.to_path_buf(),
                entry: name.clone(),
                want: want.clone(),
                got,
            });
        }
    }
    if !manifest.files.contains_key(SNAPSHOT_ENTRY) {
        return Err(corrupt(format!("no {SNAPSHOT_ENTRY}")));
    }
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Manifest {
        Manifest {
            format: 0,
            k8sd_version: "0.1.0".into(),
            kubernetes_version: "v1.36.3".into(),
            cluster_id: "abc".into(),
            revision: 42,
            node_name: "n1".into(),
            created: 1,
            files: BTreeMap::new(),
        }
    }

    /// A source tree with a snapshot, a key (0600) and a nested file.
    fn sources(dir: &Path) -> Vec<(String, PathBuf)> {
        fs::create_dir_all(dir.join("pki/sub")).unwrap();
        fs::write(dir.join("state.db"), vec![7u8; 100_000]).unwrap();
        fs::write(dir.join("pki/ca.key"), b"secret").unwrap();
        fs::set_permissions(dir.join("pki/ca.key"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(dir.join("pki/sub/enc.yaml"), b"key: 1").unwrap();
        let mut m = vec![(SNAPSHOT_ENTRY.to_string(), dir.join("state.db"))];
        for (rel, full) in walk(&dir.join("pki")).unwrap() {
            m.push((format!("pki/{}", rel.display()), full));
        }
        m
    }

    #[test]
    fn an_archive_round_trips_with_modes_and_checksums() {
        let d = tempfile::tempdir().unwrap();
        let members = sources(&d.path().join("src"));
        let out = d.path().join("b.tar.gz");
        let written = write(&out, base(), &members).unwrap();
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(written.files.len(), 3, "{:?}", written.files);
        assert!(
            written.files.contains_key("pki/sub/enc.yaml"),
            "whole directories are carried"
        );
        let dest = d.path().join("dest");
        fs::create_dir(&dest).unwrap();
        let read = unpack_verified(&out, &dest).unwrap();
        assert_eq!(read, written);
        assert_eq!(fs::read(dest.join("pki/ca.key")).unwrap(), b"secret");
        assert_eq!(
            fs::metadata(dest.join("pki/ca.key"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let again = write(&out, base(), &members).unwrap_err();
        assert!(matches!(again, BackupError::Exists { .. }), "{again}");
    }

    #[test]
    fn damaged_truncated_and_newer_archives_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let members = sources(&d.path().join("src"));
        let out = d.path().join("b.tar.gz");
        write(&out, base(), &members).unwrap();
        let bytes = fs::read(&out).unwrap();
        let fresh = |n: &str| {
            let p = d.path().join(n);
            fs::create_dir(&p).unwrap();
            p
        };

        let trunc = d.path().join("trunc.tar.gz");
        fs::write(&trunc, &bytes[..bytes.len() / 2]).unwrap();
        let e = unpack_verified(&trunc, &fresh("t")).unwrap_err();
        assert!(matches!(e, BackupError::Corrupt { .. }), "{e}");

        // A member changed after the manifest was written: the checksum catches it.
        let tampered = d.path().join("tampered.tar.gz");
        let mut m2 = members.clone();
        let evil = d.path().join("evil.db");
        fs::write(&evil, b"not the snapshot").unwrap();
        let manifest = write(&tampered, base(), &m2).unwrap();
        fs::remove_file(&tampered).unwrap();
        m2[0].1 = evil;
        write_tar(&tampered, &manifest, &m2).unwrap();
        let e = unpack_verified(&tampered, &fresh("x")).unwrap_err();
        assert!(
            matches!(e, BackupError::Checksum { ref entry, .. } if entry == SNAPSHOT_ENTRY),
            "{e}"
        );

        let newer = d.path().join("newer.tar.gz");
        let mut m = manifest.clone();
        m.format = FORMAT_VERSION + 1;
        write_tar(&newer, &m, &members).unwrap();
        let e = unpack_verified(&newer, &fresh("n")).unwrap_err();
        assert!(matches!(e, BackupError::TooNew { .. }), "{e}");
        assert!(e.to_string().contains("k8sd 0.1.0 or newer"), "{e}");
    }
}
