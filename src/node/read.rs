//! The node's read side: a pool of SQLite readers (WAL snapshots, so reads never wait for the
//! writer) used on blocking threads, and consistent copies of the whole store for backups.

use std::path::{Path, PathBuf};

use crate::datastore::{Reader, StoreError};

use super::{Node, NodeError};

/// Temporary snapshot files in the datastore directory start with this.
pub const SNAPSHOT_PREFIX: &str = ".snapshot-";

/// A temporary copy of the datastore made by [`Node::export_snapshot`]; deleted on drop.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Node {
    /// A consistent copy of the datastore in a temporary file beside it, made from one read
    /// transaction (`VACUUM INTO`), so writes go on while it is taken.
    pub async fn export_snapshot(&self) -> Result<SnapshotFile, NodeError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let db = self.inner.db_path.clone();
        tokio::task::spawn_blocking(move || {
            let dir = db.parent().unwrap_or(Path::new("."));
            let n = SEQ.fetch_add(1, Ordering::Relaxed);
            let path = dir.join(format!("{SNAPSHOT_PREFIX}{}-{n}.db", std::process::id()));
            // A file of that name can only be left over from a crashed earlier process.
            let _ = std::fs::remove_file(&path);
            let file = SnapshotFile { path };
            crate::datastore::export_snapshot(&db, &file.path)?;
            Ok(file)
        })
        .await
        .map_err(|_| NodeError::Stopped)?
    }

    /// Run `f` on a pooled reader on a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T, NodeError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Reader) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().unwrap_or_else(|p| p.into_inner()).pop();
            let mut reader = match pooled {
                Some(r) => r,
                None => Reader::open(&inner.db_path)?,
            };
            let out = f(&mut reader);
            inner
                .readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(reader);
            Ok(out?)
        })
        .await
        .map_err(|_| NodeError::Stopped)?
    }
}
