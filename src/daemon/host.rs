//! What the daemon does to the host directly: directories and files with their modes, the
//! kubelet's cgroup root, and binding the node's TCP listeners. Each error names the path or
//! the listener and address that failed.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::DaemonError;

/// Bind one of the node's TCP listeners; the error names the listener and its address.
pub(super) async fn listen(
    listener: &'static str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, DaemonError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| DaemonError::Listen {
            listener,
            addr: addr.to_string(),
            source,
        })
}

fn write_err(path: &Path) -> impl FnOnce(std::io::Error) -> DaemonError + '_ {
    move |source| DaemonError::Write {
        path: path.to_path_buf(),
        source,
    }
}

/// Create a directory (and parents) with `mode`.
pub(super) fn mkdir(path: &Path, mode: u32) -> Result<(), DaemonError> {
    std::fs::create_dir_all(path).map_err(write_err(path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(write_err(path))
}

/// Write a file atomically and durably with `mode` (`atomic_file`), creating its directory.
pub(super) fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), DaemonError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(write_err(dir))?;
    }
    crate::atomic_file::replace(path, contents, mode).map_err(|e| DaemonError::Write {
        path: e.path,
        source: e.source,
    })
}

/// The kubelet requires its cgroupRoot to exist in every (v1) hierarchy; a new cpuset cgroup
/// starts with no CPUs or memory nodes, so copy its parent's.
pub(super) fn ensure_cgroup_root(root: &str) -> Result<(), DaemonError> {
    let rel = root.trim_matches('/');
    if rel.is_empty() {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir("/sys/fs/cgroup") else {
        return Ok(());
    };
    for h in entries.flatten().map(|e| e.path()) {
        if !h.join("cgroup.procs").exists() {
            continue;
        }
        let dir = h.join(rel);
        std::fs::create_dir_all(&dir).map_err(write_err(&dir))?;
        for f in ["cpuset.cpus", "cpuset.mems"] {
            if let Ok(v) = std::fs::read_to_string(h.join(f))
                && std::fs::read_to_string(dir.join(f))
                    .map(|c| c.trim().is_empty())
                    .unwrap_or(false)
            {
                std::fs::write(dir.join(f), v.trim()).map_err(write_err(&dir.join(f)))?;
            }
        }
    }
    Ok(())
}
