//! What a node's backup archive holds and how its snapshot is taken; `k8sd backup`,
//! `k8sd recover` and the scheduled backups all call `write_node_backup`. The scheduled
//! backups' loop (`spawn`) runs on control-plane nodes and writes into `<data dir>/backups`:
//!
//! ```text
//!  next_run(schedule, last, now) ─▶ sleep until due ─▶ write_node_backup (blocking thread)
//!    ─▶ ok: retention removes all but the newest N scheduled archives
//!    ─▶ either way: logged, and recorded for `k8sd status`; then the next one
//! ```
//!
//! The snapshot reads the datastore file itself: SQLite lets a second connection copy it in
//! one read transaction (`VACUUM INTO`) while the daemon commits, so writes wait at most for
//! one commit, and it works with the daemon stopped too (`k8sd recover` takes its backup
//! offline).

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::backup::archive::{self, Contents, SnapshotInfo};
use crate::backup::schedule;
use crate::backup::{BackupError, Manifest};
use crate::paths::Layout;

use super::config::{BackupPlan, NodeConfig};

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

/// The last scheduled backup and the next one, for `k8sd status`. The last one is also kept in
/// `<data dir>/backups/last-scheduled.json` ([`LAST_FILE`]), so after a restart status still
/// shows it and an `every N` schedule counts from it, not from the start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleState {
    pub schedule: String,
    pub retention: u32,
    pub last: Option<LastBackup>,
    /// Unix seconds; `None` when the schedule is `off`.
    pub next_due: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastBackup {
    /// When it started, Unix seconds.
    pub time: i64,
    /// The archive written, or why none was.
    pub result: Result<PathBuf, String>,
}

/// The file in the backups dir that records the last scheduled backup (0600).
pub const LAST_FILE: &str = "last-scheduled.json";

/// [`LastBackup`] as stored in [`LAST_FILE`]: exactly one of `archive` and `error`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LastRecord {
    time: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    archive: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Record `last` in the backups dir, replacing the file atomically. A failure is returned for
/// the log only: the record serves status and the schedule, never the archives themselves.
fn save_last(dir: &Path, last: &LastBackup) -> Result<(), String> {
    let (archive, error) = match &last.result {
        Ok(p) => (Some(p.clone()), None),
        Err(e) => (None, Some(e.clone())),
    };
    let record = LastRecord {
        time: last.time,
        archive,
        error,
    };
    let path = dir.join(LAST_FILE);
    let json = serde_json::to_vec_pretty(&record).map_err(|e| e.to_string())?;
    crate::atomic_file::replace(&path, &json, 0o600).map_err(|e| e.to_string())
}

/// The last scheduled backup recorded in the backups dir: `Ok(None)` when none has run yet,
/// an error naming the file when it cannot be read or parsed.
fn load_last(dir: &Path) -> Result<Option<LastBackup>, String> {
    let path = dir.join(LAST_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let bad = |why: String| {
        format!(
            "{} is damaged ({why}); the next scheduled backup replaces it",
            path.display()
        )
    };
    let r: LastRecord = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    let result = match (r.archive, r.error) {
        (Some(a), None) => Ok(a),
        (None, Some(e)) => Err(e),
        _ => return Err(bad("it must name exactly one of archive and error".into())),
    };
    Ok(Some(LastBackup { time: r.time, result }))
}

/// Shared between the loop and status.
pub type SharedState = Arc<Mutex<Option<ScheduleState>>>;

/// Start the scheduled backups of this node: control-plane nodes only
/// (`NodeConfig::schedules_backups`). One archive at a time, on a blocking thread; a failure
/// is logged and shown in `k8sd status`, never fatal. The loop ends when the node stops
/// (`alive` answers false) or the schedule is `off`.
pub fn spawn(
    layout: Layout,
    cfg: NodeConfig,
    plan: BackupPlan,
    state: SharedState,
    alive: impl Fn() -> bool + Send + 'static,
) {
    if !cfg.schedules_backups() {
        return;
    }
    let set = {
        let state = state.clone();
        move |f: &dyn Fn(&mut ScheduleState)| {
            let mut g = state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(s) = g.as_mut() {
                f(s);
            }
        }
    };
    let recorded = load_last(&layout.backups_dir()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the last scheduled backup is unknown");
        None
    });
    *state.lock().unwrap_or_else(|e| e.into_inner()) = Some(ScheduleState {
        schedule: plan.schedule.to_string(),
        retention: plan.retention,
        last: recorded.clone(),
        next_due: None,
    });
    tokio::spawn(async move {
        let mut last: Option<i64> = recorded.map(|l| l.time);
        loop {
            let now = unix_now();
            let Some(due) = plan.schedule.next_run(last, now) else {
                tracing::info!("scheduled backups are off (backup-schedule: off)");
                return;
            };
            set(&|s| s.next_due = Some(due));
            // Sleep in short steps: the node may stop meanwhile, and the wall clock may jump.
            while unix_now() < due {
                if !alive() {
                    return;
                }
                let left = u64::try_from(due - unix_now()).unwrap_or(0).min(10);
                tokio::time::sleep(Duration::from_secs(left.max(1))).await;
            }
            if !alive() {
                return;
            }
            let started = unix_now();
            last = Some(started);
            let (l, c, keep) = (layout.clone(), cfg.clone(), plan.retention);
            let res = tokio::task::spawn_blocking(move || take_scheduled(&l, &c, keep, started))
                .await
                .unwrap_or_else(|e| Err(format!("the backup task failed: {e}")));
            match &res {
                Ok(path) => tracing::info!(archive = %path.display(), "scheduled backup written"),
                Err(e) => {
                    tracing::error!(error = %e, "scheduled backup failed; the next one is still due on schedule")
                }
            }
            let record = LastBackup {
                time: started,
                result: res,
            };
            if let Err(e) = save_last(&layout.backups_dir(), &record) {
                tracing::warn!(error = %e, "the last scheduled backup's result is not kept across restarts");
            }
            set(&|s| s.last = Some(record.clone()));
        }
    });
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// One scheduled backup into `<data dir>/backups` (0700), then retention: all but the `keep`
/// newest scheduled archives are removed (only after a success, so a failing schedule never
/// eats the archives that are left).
fn take_scheduled(layout: &Layout, node: &NodeConfig, keep: u32, now: i64) -> Result<PathBuf, String> {
    let dir = layout.backups_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let out = dir.join(schedule::archive_name(&node.node_name, &archive::stamp(now)));
    write_node_backup(layout, node, &out, now).map_err(|e| scheduled_error(&e, &dir))?;
    let names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(|e| {
            format!(
                "wrote {} but cannot list {} for retention: {e}",
                out.display(),
                dir.display()
            )
        })?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    for old in schedule::to_remove(names.iter().map(String::as_str), keep) {
        let p = dir.join(old);
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(archive = %p.display(), error = %e, "retention could not remove an old scheduled backup");
        }
    }
    Ok(out)
}

/// A scheduled backup's failure, in words for the node's operator: where `k8sd backup` would
/// suggest `--output`, a schedule has no flags, so say what to change instead.
fn scheduled_error(e: &BackupError, dir: &Path) -> String {
    let what = match e {
        BackupError::Snapshot { path, reason } => format!(
            "cannot snapshot the datastore into {} (it needs room for a full copy of the datastore): {reason}",
            path.display()
        ),
        BackupError::Write { path, source } if source.raw_os_error() == Some(libc::ENOSPC) => {
            format!("cannot write the backup to {}: {source}", path.display())
        }
        _ => return e.to_string(),
    };
    format!(
        "{what}; free space on the filesystem of {}, or keep fewer archives (backup-retention in node.yaml), \
         or turn the schedule off (backup-schedule: off) and take backups elsewhere with `k8sd backup --output`",
        dir.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Role;

    fn node(role: Role) -> NodeConfig {
        NodeConfig {
            role,
            backup_schedule: Some("every 1s".into()),
            ..NodeConfig::example()
        }
    }

    #[test]
    fn only_control_plane_nodes_schedule_backups() {
        assert!(node(Role::ControlPlane).schedules_backups());
        assert!(!node(Role::Worker).schedules_backups());
    }

    #[tokio::test]
    async fn a_worker_never_starts_the_loop_whatever_its_schedule() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path().join("data"), d.path().join("run"));
        let cfg = node(Role::Worker);
        let plan = cfg.backup_plan().unwrap();
        let state = SharedState::default();
        spawn(layout.clone(), cfg, plan, state.clone(), || true);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(*state.lock().unwrap(), None, "no schedule state on a worker");
        assert!(
            !layout.backups_dir().exists(),
            "a worker wrote into its backups dir"
        );
    }

    #[test]
    fn a_failed_scheduled_backup_says_why_and_removes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let layout = Layout::new(d.path().join("data"), d.path().join("run"));
        let dir = layout.backups_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let old = dir.join(schedule::archive_name("n1", "20200101T000000Z"));
        std::fs::write(&old, b"old").unwrap();
        // No datastore in this data dir: the snapshot fails.
        let e = take_scheduled(&layout, &node(Role::ControlPlane), 1, 1_796_515_200).unwrap_err();
        assert!(e.contains("cannot snapshot the datastore"), "{e}");
        assert!(e.contains("backup-retention in node.yaml"), "{e}");
        assert!(!e.contains("pass --output"), "a schedule has no --output: {e}");
        assert!(old.exists(), "retention ran after a failure");
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn the_last_scheduled_backup_survives_a_restart() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path();
        assert_eq!(load_last(dir), Ok(None), "nothing recorded yet");
        for last in [
            LastBackup {
                time: 1_796_515_200,
                result: Ok(dir.join("k8sd-scheduled-backup-n1-x.tar.gz")),
            },
            LastBackup {
                time: 1_796_515_260,
                result: Err("cannot snapshot: disk full".into()),
            },
        ] {
            save_last(dir, &last).unwrap();
            assert_eq!(load_last(dir), Ok(Some(last)));
            let mode = std::fs::metadata(dir.join(LAST_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn a_damaged_record_is_named_and_not_fatal() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(LAST_FILE), b"{\"time\": 1}").unwrap();
        let e = load_last(d.path()).unwrap_err();
        assert!(
            e.contains(LAST_FILE) && e.contains("exactly one of archive and error"),
            "{e}"
        );
        std::fs::write(d.path().join(LAST_FILE), b"not json").unwrap();
        let e = load_last(d.path()).unwrap_err();
        assert!(e.contains("is damaged"), "{e}");
    }
}
