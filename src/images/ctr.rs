//! Importing and pinning images in containerd through `ctr` (the one built with that
//! containerd), in the CRI's namespace. The commands are built apart from running them so tests
//! check them without a containerd.

use std::path::Path;
use std::process::{Command, ExitStatus};

use super::{CONTAINERD_NAMESPACE, ImageError};

/// The `ctr` invocation that imports `tarball` into the CRI's namespace of the containerd at
/// `address`. Separate from [`import`] so tests can check it without a containerd.
pub fn import_command(ctr: &Path, address: &Path, tarball: &Path) -> Command {
    let mut cmd = ctr_images(ctr, address);
    cmd.arg("import").arg(tarball);
    cmd
}

/// The label containerd's CRI plugin reads to report an image as pinned. The kubelet's image
/// garbage collector never deletes a pinned image, whatever the disk usage or the image's age.
pub const PINNED_LABEL: &str = "io.cri-containerd.pinned=pinned";

/// The `ctr` invocation that pins `reference` in the CRI's namespace: k8sd's own images cannot
/// be pulled back on an offline host, so the kubelet's image GC must leave them alone.
pub fn pin_command(ctr: &Path, address: &Path, reference: &str) -> Command {
    let mut cmd = ctr_images(ctr, address);
    cmd.args(["label", reference, PINNED_LABEL]);
    cmd
}

/// `ctr --address ADDRESS --namespace k8s.io images`, the start of every image command.
fn ctr_images(ctr: &Path, address: &Path) -> Command {
    let mut cmd = Command::new(ctr);
    // containerd 2's ctr asks the server for its deprecations (cgroup v1 on these hosts) and
    // prints them at every call; containerd logs them itself, and here they would only bury
    // the real error of a failed import.
    cmd.env("CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS", "1")
        .arg("--address")
        .arg(address)
        .args(["--namespace", CONTAINERD_NAMESPACE, "images"]);
    cmd
}

/// Imports `tarball` into the containerd listening on `ctr_address`, with the `ctr` at `ctr`
/// (the one built with that containerd: a 1.x `ctr` from `PATH` would be the wrong client).
///
/// Idempotent: importing the same tarball again re-points the name at the same digest and
/// re-unpacks nothing, so k8sd runs it on every start to repair a lost or replaced image.
pub fn import(ctr: &Path, ctr_address: &Path, tarball: &Path) -> Result<(), ImageError> {
    let (status, stderr) = run_ctr(ctr, import_command(ctr, ctr_address, tarball))?;
    if status.success() {
        return Ok(());
    }
    Err(ImageError::Import {
        tarball: tarball.to_owned(),
        address: ctr_address.to_owned(),
        status,
        stderr,
    })
}

/// Pins the imported image `reference` ([`PINNED_LABEL`]). Idempotent.
pub fn pin(ctr: &Path, ctr_address: &Path, reference: &str) -> Result<(), ImageError> {
    let (status, stderr) = run_ctr(ctr, pin_command(ctr, ctr_address, reference))?;
    if status.success() {
        return Ok(());
    }
    Err(ImageError::Pin {
        reference: reference.to_owned(),
        address: ctr_address.to_owned(),
        status,
        stderr,
    })
}

/// Runs a `ctr` command, returning its exit status and trimmed stderr.
fn run_ctr(ctr: &Path, mut cmd: Command) -> Result<(ExitStatus, String), ImageError> {
    let output = cmd
        .env_remove("NOTIFY_SOCKET")
        .output()
        .map_err(|source| ImageError::Spawn {
            program: ctr.to_owned(),
            source,
        })?;
    Ok((
        output.status,
        String::from_utf8_lossy(&output.stderr).trim().to_owned(),
    ))
}
