//! Reading a root filesystem directory into image entries, for `k8sd images pack`.
//!
//! The conformance images are assembled as plain directories (Debian packages unpacked with
//! `dpkg-deb -x`, Go binaries, upstream's test files) and packed here, so the packing keeps
//! the properties of [`super::pack`]: owner root, mtime 0, entries in path order. What is kept
//! of each file is its content, its permission bits (setuid included: the nonewprivs image
//! relies on a setuid-root `nnp`) and, for a symlink, its target. Ownership on disk is ignored
//! on purpose: `dpkg-deb -x` run by a non-root user would otherwise change the image.
//!
//! A hard link becomes a second regular file with the same content. Devices, FIFOs and
//! sockets are refused: the runtime provides `/dev`, and nothing else in an image needs them.

use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;

use super::{Entry, ImageError};

/// Every file, directory and symlink under `dir` (not `dir` itself), with paths relative to it.
pub fn read_rootfs(dir: &Path) -> Result<Vec<Entry>, ImageError> {
    let meta = fs::metadata(dir).map_err(|source| ImageError::Read {
        path: dir.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(ImageError::BadRootfs {
            path: dir.to_owned(),
            reason: "not a directory".to_owned(),
        });
    }
    let mut entries = Vec::new();
    walk(dir, "", &mut entries)?;
    Ok(entries)
}

fn walk(dir: &Path, prefix: &str, entries: &mut Vec<Entry>) -> Result<(), ImageError> {
    let read_err = |path: &Path| {
        let path = path.to_owned();
        move |source| ImageError::Read { path, source }
    };
    let mut children: Vec<_> = fs::read_dir(dir)
        .map_err(read_err(dir))?
        .collect::<Result<_, _>>()
        .map_err(read_err(dir))?;
    // Sorted so that the walk, and so any error it reports, does not depend on the file system.
    children.sort_by_key(|c| c.file_name());
    for child in children {
        let host = child.path();
        let name = child
            .file_name()
            .into_string()
            .map_err(|_| ImageError::BadRootfs {
                path: host.clone(),
                reason: "the name is not UTF-8".to_owned(),
            })?;
        let path = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let meta = fs::symlink_metadata(&host).map_err(read_err(&host))?;
        let mode = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_symlink() {
            let target = fs::read_link(&host).map_err(read_err(&host))?;
            let target = target
                .into_os_string()
                .into_string()
                .map_err(|_| ImageError::BadRootfs {
                    path: host.clone(),
                    reason: "the symlink target is not UTF-8".to_owned(),
                })?;
            entries.push(Entry::Symlink { path, target });
        } else if kind.is_dir() {
            entries.push(Entry::Dir {
                path: path.clone(),
                mode,
            });
            walk(&host, &path, entries)?;
        } else if kind.is_file() {
            let data = fs::read(&host).map_err(read_err(&host))?;
            entries.push(Entry::File { path, mode, data });
        } else {
            let what = if kind.is_block_device() || kind.is_char_device() {
                "a device"
            } else if kind.is_fifo() {
                "a FIFO"
            } else {
                "a socket"
            };
            return Err(ImageError::BadRootfs {
                path: host,
                reason: format!(
                    "{what}; an image carries only files, directories and symlinks (the runtime provides /dev), remove it from the rootfs"
                ),
            });
        }
    }
    Ok(())
}
