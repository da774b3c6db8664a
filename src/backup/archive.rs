//! One backup of a node, end to end: a scratch directory beside the archive, the datastore
//! snapshot into it, the node's files and directories listed, the archive written (`super::write`),
//! the scratch removed. `k8sd backup`, `k8sd recover` and the daemon's scheduled backups all
//! come through here.
//!
//! What goes in and how the snapshot is taken are the caller's (`daemon::backups`): this
//! module knows files and bytes, not the datastore or which files a node has.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::{BackupError, FORMAT_VERSION, Manifest, SNAPSHOT_ENTRY};

/// What a snapshot says about the data it holds, for the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub revision: i64,
    pub cluster_id: u64,
}

/// What an archive holds besides the snapshot, decided by the caller.
#[derive(Debug, Clone)]
pub struct Contents {
    pub node_name: String,
    pub k8sd_version: String,
    pub kubernetes_version: String,
    /// Single files: (archive path, source).
    pub files: Vec<(String, PathBuf)>,
    /// Whole directories: (archive prefix, source), carried whole so a file a newer k8sd adds
    /// there is carried too. A directory that does not exist is skipped.
    pub dirs: Vec<(String, PathBuf)>,
}

/// The name `k8sd backup` gives an archive taken at `created` (Unix seconds, UTC):
/// `<prefix>-<node>-<YYYYMMDDTHHMMSSZ>.tar.gz`.
pub fn default_name(prefix: &str, node: &str, created: i64) -> String {
    format!("{prefix}-{node}-{}.tar.gz", stamp(created))
}

/// `YYYYMMDDTHHMMSSZ` for Unix seconds, the stamp in archive names.
pub fn stamp(created: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(created).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Write one archive to `out` (which must not exist): `snapshot` copies the datastore
/// consistently into the path it is given, inside `scratch`, a directory this creates (0700)
/// and removes whatever happens. `scratch` should sit on the archive's filesystem, so a full
/// disk shows up against the path the archive goes to and nothing is left in the data dir.
pub fn write_backup(
    out: &Path,
    scratch: &Path,
    contents: &Contents,
    created: i64,
    snapshot: impl FnOnce(&Path) -> Result<SnapshotInfo, String>,
) -> Result<Manifest, BackupError> {
    if out.exists() {
        return Err(BackupError::Exists {
            path: out.to_path_buf(),
        });
    }
    let _ = fs::remove_dir_all(scratch);
    fs::DirBuilder::new()
        .mode(0o700)
        .create(scratch)
        .map_err(|source| BackupError::Write {
            path: out.to_path_buf(),
            source,
        })?;
    let res = write_in(out, scratch, contents, created, snapshot);
    let _ = fs::remove_dir_all(scratch);
    res
}

fn write_in(
    out: &Path,
    scratch: &Path,
    contents: &Contents,
    created: i64,
    snapshot: impl FnOnce(&Path) -> Result<SnapshotInfo, String>,
) -> Result<Manifest, BackupError> {
    let snap = scratch.join("state.db");
    let info = snapshot(&snap).map_err(|reason| BackupError::Snapshot {
        path: snap.clone(),
        reason,
    })?;
    let mut members = vec![(SNAPSHOT_ENTRY.to_string(), snap.clone())];
    members.extend(contents.files.iter().cloned());
    for (name, dir) in &contents.dirs {
        if !dir.exists() {
            continue;
        }
        for (rel, full) in super::walk(dir)? {
            members.push((format!("{name}/{}", rel.display()), full));
        }
    }
    let base = Manifest {
        format: FORMAT_VERSION,
        k8sd_version: contents.k8sd_version.clone(),
        kubernetes_version: contents.kubernetes_version.clone(),
        cluster_id: format!("{:x}", info.cluster_id),
        revision: info.revision,
        node_name: contents.node_name.clone(),
        created: u64::try_from(created).unwrap_or(0),
        files: Default::default(),
    };
    super::write(out, base, &members)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn contents(src: &Path) -> Contents {
        fs::create_dir_all(src.join("pki/sub")).unwrap();
        fs::write(src.join("node.yaml"), b"node-name: n1\n").unwrap();
        fs::write(src.join("pki/ca.key"), b"secret").unwrap();
        fs::write(src.join("pki/sub/enc.yaml"), b"key: 1").unwrap();
        Contents {
            node_name: "n1".into(),
            k8sd_version: "0.1.0".into(),
            kubernetes_version: "v1.36.3".into(),
            files: vec![("node.yaml".into(), src.join("node.yaml"))],
            dirs: vec![
                ("pki".into(), src.join("pki")),
                ("config".into(), src.join("absent")),
            ],
        }
    }

    #[test]
    fn a_backup_holds_the_snapshot_files_and_whole_dirs_and_leaves_no_scratch() {
        let d = tempfile::tempdir().unwrap();
        let c = contents(&d.path().join("src"));
        let out = d.path().join(default_name("k8sd-backup", "n1", 1_796_515_200));
        assert!(
            out.ends_with("k8sd-backup-n1-20261206T000000Z.tar.gz"),
            "{}",
            out.display()
        );
        let scratch = d.path().join(".scratch");
        let m = write_backup(&out, &scratch, &c, 1_796_515_200, |p| {
            fs::write(p, b"db").map_err(|e| e.to_string())?;
            Ok(SnapshotInfo {
                revision: 7,
                cluster_id: 0xabc,
            })
        })
        .unwrap();
        assert_eq!((m.revision, m.cluster_id.as_str()), (7, "abc"));
        let names: Vec<&str> = m.files.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "datastore/state.db",
                "node.yaml",
                "pki/ca.key",
                "pki/sub/enc.yaml"
            ]
        );
        assert!(!scratch.exists());
        assert_eq!(fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn a_failed_snapshot_names_its_path_and_leaves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let c = contents(&d.path().join("src"));
        let out = d.path().join("b.tar.gz");
        let scratch = d.path().join(".scratch");
        let e = write_backup(&out, &scratch, &c, 0, |_| Err("disk full".into())).unwrap_err();
        assert!(
            matches!(&e, BackupError::Snapshot { path, reason } if path.ends_with("state.db") && reason == "disk full"),
            "{e}"
        );
        assert!(e.to_string().contains("free space there"), "{e}");
        assert!(!out.exists() && !scratch.exists());
        fs::write(&out, b"x").unwrap();
        let e = write_backup(&out, &scratch, &c, 0, |_| unreachable!()).unwrap_err();
        assert!(matches!(e, BackupError::Exists { .. }), "{e}");
    }
}
