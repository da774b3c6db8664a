//! Reading the executables images are built from: a static ELF that runs alone in an empty
//! rootfs, or a dynamic one with its program interpreter and the libraries the caller lists.

use std::fs;
use std::path::{Path, PathBuf};

use super::{DynamicExecutable, ImageError};

/// Reads an executable that must run alone in an empty rootfs: a static ELF (no `PT_INTERP`).
pub(crate) fn read_static_executable(path: &Path) -> Result<Vec<u8>, ImageError> {
    let data = fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_owned(),
        source,
    })?;
    check_static_elf(&data).map_err(|reason| ImageError::NotStatic {
        path: path.to_owned(),
        reason,
    })?;
    Ok(data)
}

/// Reads a dynamically linked executable and the files its loader needs. Each library goes
/// into the image at its host path as given (not resolved: `/lib64/ld-linux-x86-64.so.2` is a
/// symlink on the host but must be a file at that path in the image), with the content it
/// points to. The program interpreter must be one of them; which libraries it loads after that
/// is up to the caller (`ldd`), and the end-to-end test proves the set complete.
pub fn read_dynamic_executable(path: &Path, libraries: &[PathBuf]) -> Result<DynamicExecutable, ImageError> {
    let data = fs::read(path).map_err(|source| ImageError::Read {
        path: path.to_owned(),
        source,
    })?;
    let not_dynamic = |reason: String| ImageError::NotDynamic {
        path: path.to_owned(),
        reason,
    };
    let interpreter = elf_interpreter(&data).map_err(not_dynamic)?.ok_or_else(|| {
        not_dynamic(
            "it is statically linked; this image packs a dynamically linked busybox with its loader \
             and libraries, because glibc supports NSS in static programs only with its shared \
             libraries present. Use the busybox scripts/build-busybox.sh builds (scripts/build-images.sh \
             runs it)"
                .to_owned(),
        )
    })?;
    let mut libs = Vec::new();
    for lib in libraries {
        let bad = |reason: String| ImageError::BadLibrary {
            path: lib.clone(),
            reason,
        };
        let in_image = lib
            .to_str()
            .and_then(|p| p.strip_prefix('/'))
            .ok_or_else(|| bad("not an absolute UTF-8 path".to_owned()))?;
        let content = fs::read(lib).map_err(|source| ImageError::Read {
            path: lib.clone(),
            source,
        })?;
        if !content.starts_with(b"\x7fELF") {
            return Err(bad("not an ELF file".to_owned()));
        }
        libs.push((in_image.to_owned(), content));
    }
    if !libs
        .iter()
        .any(|(p, _)| interpreter.strip_prefix('/') == Some(p.as_str()))
    {
        return Err(ImageError::MissingInterpreter {
            executable: path.to_owned(),
            interpreter,
            given: libraries.to_vec(),
        });
    }
    Ok(DynamicExecutable {
        data,
        interpreter,
        libraries: libs,
    })
}

/// Checks that `data` is a little-endian ELF64 executable without a program interpreter.
pub(super) fn check_static_elf(data: &[u8]) -> Result<(), String> {
    match elf_interpreter(data)? {
        None => Ok(()),
        Some(_) => Err("dynamically linked (it has a program interpreter); use a static build".to_owned()),
    }
}

/// The program interpreter (`PT_INTERP`) of a little-endian ELF64 file, `None` when static.
pub(super) fn elf_interpreter(data: &[u8]) -> Result<Option<String>, String> {
    const PT_INTERP: u32 = 3;
    if data.len() < 64 || &data[..4] != b"\x7fELF" {
        return Err("not an ELF file".to_owned());
    }
    if data[4] != 2 || data[5] != 1 {
        return Err("not a little-endian 64-bit ELF file".to_owned());
    }
    let u16_at = |off: usize| data.get(off..off + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |off: usize| {
        data.get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |off: usize| {
        data.get(off..off + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
            .and_then(|v| usize::try_from(v).ok())
    };
    let truncated = || "truncated ELF header".to_owned();
    let phoff = u64_at(0x20).ok_or_else(truncated)?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(truncated)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph).ok_or_else(truncated)? != PT_INTERP {
            continue;
        }
        // p_offset at +8, p_filesz at +32: a NUL-terminated path.
        let (off, len) = (
            u64_at(ph + 8).ok_or_else(truncated)?,
            u64_at(ph + 32).ok_or_else(truncated)?,
        );
        let raw = data
            .get(off..off.saturating_add(len))
            .ok_or_else(|| "PT_INTERP points outside the file".to_owned())?;
        let raw = raw.split(|b| *b == 0).next().unwrap_or_default();
        let interp = std::str::from_utf8(raw).map_err(|_| "PT_INTERP is not UTF-8".to_owned())?;
        if !interp.starts_with('/') {
            return Err(format!("program interpreter {interp:?} is not an absolute path"));
        }
        return Ok(Some(interp.to_owned()));
    }
    Ok(None)
}
