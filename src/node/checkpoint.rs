//! The checkpointer thread: WAL checkpoints and the NOSPACE alarm's view of the database size
//! and of the disk.

use std::time::Duration;

use super::Inner;
use super::alarm::{self, NoSpaceCause};

/// Checkpoint the WAL every 200 ms while the node lives (and empty it once the writer is idle,
/// see `Checkpointer::checkpoint`), and keep the alarm's view of the
/// database size and of the disk current (a full-disk alarm clears itself here).
pub(super) fn spawn_checkpointer(mut cp: crate::datastore::Checkpointer, node: std::sync::Weak<Inner>) {
    let _ = std::thread::Builder::new()
        .name("k8sd-checkpoint".into())
        .spawn(move || {
            while let Some(inner) = node.upgrade() {
                let disk_full = inner.alarm.cause() == Some(NoSpaceCause::DiskFull);
                // A checkpoint on a full disk fails every time; the alarm already says so.
                if let Err(e) = cp.checkpoint()
                    && !(disk_full && e.is_disk_full())
                {
                    tracing::warn!(error = %e, "WAL checkpoint failed; will retry");
                }
                if let Ok(bytes) = cp.in_use_bytes() {
                    inner.alarm.set_in_use(bytes);
                }
                if let Some(free) = alarm::free_bytes(&inner.config.data_dir) {
                    inner.alarm.observe_free(free);
                }
                drop(inner);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
}
