//! The persisted endpoint list: a small versioned JSON file, written atomically with mode 0600.
//!
//! ```json
//! {"version":1,"backends":["10.0.0.1:6443","10.0.0.2:6443"]}
//! ```
//!
//! It exists so that a worker restarted after the control-plane node it joined through is gone
//! still knows the others. Reading it never fails the start: a missing, unreadable or garbled file
//! only loses that knowledge, and the configured backends still apply.

use std::fs;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub(crate) const STATE_VERSION: u32 = 1;
const STATE_MODE: u32 = 0o600;

/// The file's format. Its own type, so the on-disk shape never follows internal changes.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct StateFile {
    version: u32,
    backends: Vec<SocketAddr>,
}

/// The backends stored in `path`. `Ok(None)` if there is no file.
pub(crate) fn load(path: &Path) -> Result<Option<Vec<SocketAddr>>, String> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let state: StateFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if state.version != STATE_VERSION {
        return Err(format!(
            "unsupported version {} (this k8sd reads {STATE_VERSION})",
            state.version
        ));
    }
    Ok(Some(state.backends))
}

/// Writes `backends` to `path`, mode 0600, atomically and durably (`atomic_file`).
pub(crate) fn save(path: &Path, backends: &[SocketAddr]) -> std::io::Result<()> {
    let state = StateFile {
        version: STATE_VERSION,
        backends: backends.to_vec(),
    };
    let mut json = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
    json.push(b'\n');
    crate::atomic_file::replace(path, &json, STATE_MODE)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn round_trip_with_mode_0600_and_no_temp_files() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lb.json");
        assert_eq!(load(&path).unwrap(), None);
        let list: Vec<SocketAddr> = vec![
            "10.0.0.1:6443".parse().unwrap(),
            "[fd00::2]:6443".parse().unwrap(),
        ];
        save(&path, &list).unwrap();
        save(&path, &list[..1]).unwrap();
        assert_eq!(load(&path).unwrap(), Some(list[..1].to_vec()));
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "{\"version\":1,\"backends\":[\"10.0.0.1:6443\"]}\n"
        );
    }

    #[test]
    fn garbled_or_future_files_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("lb.json");
        fs::write(&path, b"{not json").unwrap();
        assert!(load(&path).is_err());
        fs::write(&path, br#"{"version":2,"backends":[]}"#).unwrap();
        assert!(load(&path).unwrap_err().contains("unsupported version 2"));
    }
}
