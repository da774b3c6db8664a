//! Replacing a file so that a crash leaves either the old contents or the new, never a part.
//!
//! ```text
//!   <dir>/.<name>.tmp-<random>   created 0 bytes, exact mode set (the umask may have narrowed it)
//!        │ write, fsync
//!        ▼ rename over <dir>/<name>, then fsync <dir> so the rename itself survives a crash
//! ```
//!
//! The temporary file lives in the target's directory, because a rename is atomic only within
//! one filesystem. Its name is random, so two writers of the same file never share one; a
//! failed write removes it. A crash can still leave one behind: [`is_temp_name`] recognises
//! such leftovers for a directory's owner to delete at start.
//!
//! Boundary: a leaf. It names no other module of the crate, so every module (the supervisor
//! and the PKI included, which may know nothing else) can use it.

use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Replacing `path` failed; nothing was changed (the old file, if any, is intact).
#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct AtomicWriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl From<AtomicWriteError> for io::Error {
    /// Keeps the kind of the underlying error and adds the path to its message.
    fn from(e: AtomicWriteError) -> io::Error {
        io::Error::new(e.source.kind(), e)
    }
}

/// Replace `path` with `contents`, mode exactly `mode`, atomically and durably.
pub fn replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), AtomicWriteError> {
    replace_with(path, mode, |file| file.write_all(contents))
}

/// Replace `path` with what `fill` writes into the temporary file, mode exactly `mode`,
/// atomically and durably. For contents streamed rather than held in memory (an image
/// tarball). An error from `fill` leaves no temporary file and the old `path` intact.
pub fn replace_with(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> Result<(), AtomicWriteError> {
    // A bare file name has the empty path as its parent; it lives in the working directory.
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}{TEMP_MARK}{:016x}", rand::random::<u64>()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the mode (0644 under umask 077); set it exactly, before
        // the file has its name, so it is never visible with the wrong one.
        file.set_permissions(Permissions::from_mode(mode))?;
        fill(&mut file)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map_err(|source| AtomicWriteError {
        path: path.to_owned(),
        source,
    })
}

/// Replace `path` with `finished`, a complete file another writer made and synced beside it
/// (SQLite, say), keeping `path`'s permissions: rename, then fsync the directory so the rename
/// survives a crash. On an error `path` is as it was.
pub fn replace_by_file(finished: &Path, path: &Path) -> Result<(), AtomicWriteError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let result = (|| {
        let mode = fs::metadata(path)?.permissions();
        fs::set_permissions(finished, mode)?;
        fs::rename(finished, path)?;
        File::open(dir)?.sync_all()
    })();
    result.map_err(|source| AtomicWriteError {
        path: path.to_owned(),
        source,
    })
}

/// What every temporary file name carries between the target's name and the random suffix.
const TEMP_MARK: &str = ".tmp-";

/// Whether `name` (a file name, not a path) is a temporary file of [`replace`] left behind by
/// a crash.
pub fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(TEMP_MARK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn writes_a_new_file_with_the_exact_mode_whatever_the_umask() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca.key");
        let cert = dir.path().join("ca.crt");
        replace(&key, b"secret", 0o600).unwrap();
        replace(&cert, b"public", 0o644).unwrap();
        assert_eq!(fs::read(&key).unwrap(), b"secret");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
        // A mode wider than the usual umask allows is kept as asked, too.
        let shared = dir.path().join("shared");
        replace(&shared, b"x", 0o666).unwrap();
        assert_eq!(mode(&shared), 0o666);
        assert_eq!(names(dir.path()), ["ca.crt", "ca.key", "shared"]);
    }

    #[test]
    fn replaces_contents_and_mode_of_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.yaml");
        fs::write(&path, b"a much longer old version of the file").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        replace(&path, b"new", 0o600).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(names(dir.path()), ["node.yaml"]);
    }

    #[test]
    fn a_failed_fill_leaves_the_old_file_and_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images").join("pause.tar");
        fs::create_dir(path.parent().unwrap()).unwrap();
        fs::write(&path, b"old").unwrap();
        let err = replace_with(&path, 0o644, |f| {
            f.write_all(b"half")?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert_eq!(err.path, path);
        assert!(err.to_string().contains("pause.tar"), "{err}");
        assert!(err.to_string().contains("disk on fire"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        assert_eq!(names(path.parent().unwrap()), ["pause.tar"]);
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent").join("file");
        let err = replace(&path, b"x", 0o600).unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::NotFound);
        assert_eq!(err.path, path);
        let io: io::Error = err.into();
        assert_eq!(io.kind(), io::ErrorKind::NotFound);
        assert!(io.to_string().contains("absent/file"), "{io}");
        assert!(names(dir.path()).is_empty());
    }

    #[test]
    fn leftover_temporary_names_are_recognised() {
        assert!(is_temp_name(".current.json.tmp-00000000deadbeef"));
        assert!(is_temp_name(".ca.key.tmp-0123456789abcdef"));
        assert!(!is_temp_name("current.json"));
        assert!(!is_temp_name("snap-1-2-abcd.db"));
        assert!(!is_temp_name(".hidden"));
    }
}
