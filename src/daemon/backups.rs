//! What a node's backup archive holds and how its snapshot is taken; `k8sd backup`,
//! `k8sd recover` and the scheduled backups all call `write_node_backup`.
//!
//! The snapshot reads the datastore file itself: SQLite lets a second connection copy it in
//! one read transaction (`VACUUM INTO`) while the daemon commits, so writes wait at most for
//! one commit, and it works with the daemon stopped too (`k8sd recover` takes its backup
//! offline).

use std::path::{Path, PathBuf};

use crate::backup::archive::{self, Contents, SnapshotInfo};
use crate::backup::{BackupError, Manifest};
use crate::paths::Layout;

use super::config::NodeConfig;

/// Write a backup archive of `node` to `out`, which must not exist; its snapshot goes through
/// a scratch directory beside `out`.
pub fn write_node_backup(
    layout: &Layout,
    node: &NodeConfig,
    out: &Path,
    created: i64,
) -> Result<Manifest, BackupError> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let scratch = crate::paths::backup_scratch(&parent);
    let db = layout.datastore_dir().join("state.db");
    archive::write_backup(out, &scratch, &contents(layout, node), created, |into| {
        snapshot(&db, into)
    })
}

fn contents(layout: &Layout, node: &NodeConfig) -> Contents {
    Contents {
        node_name: node.node_name.clone(),
        k8sd_version: env!("CARGO_PKG_VERSION").to_string(),
        kubernetes_version: crate::paths::kube_version().to_string(),
        files: vec![("node.yaml".to_string(), layout.node_file())],
        dirs: vec![
            ("pki".to_string(), layout.pki_dir()),
            ("kubeconfig".to_string(), layout.kubeconfig_dir()),
            ("config".to_string(), layout.config_dir()),
        ],
    }
}

/// Copy the datastore at `db` into `into` consistently and read back what the manifest says.
fn snapshot(db: &Path, into: &Path) -> Result<SnapshotInfo, String> {
    crate::datastore::export_snapshot(db, into).map_err(|e| e.to_string())?;
    let mut reader = crate::datastore::Reader::open(into).map_err(|e| e.to_string())?;
    let revision = reader.view().map_err(|e| e.to_string())?.current_rev;
    // A Raft member reports the replicated id (the one etcdctl shows); older stores their own.
    let cluster_id =
        match crate::raft::state_machine::replicated_cluster_id(into).map_err(|e| e.to_string())? {
            Some(id) => id,
            None => reader.cluster_id().map_err(|e| e.to_string())?,
        };
    Ok(SnapshotInfo { revision, cluster_id })
}

