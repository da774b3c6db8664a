//! The add-on images: CoreDNS, metrics-server and local-path-provisioner, each one static Go
//! binary built by `scripts/build-addons.sh` at the version pinned in
//! `assets/addons/versions.env`.
//!
//! The build script writes `<addons dir>/<name>/<version>/<name>`. We look the binary up under
//! the version compiled into k8sd (see [`super::catalog::pin`]), so an image can never carry a
//! binary of another version than its tag says.

use std::fs;
use std::path::{Path, PathBuf};

use super::catalog;
use super::{BuiltImage, DEFAULT_PATH, Entry, ImageError, ImageSpec, pack};

/// One add-on image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Addon {
    CoreDns,
    MetricsServer,
    LocalPathProvisioner,
}

impl Addon {
    pub const ALL: [Addon; 3] = [Addon::CoreDns, Addon::MetricsServer, Addon::LocalPathProvisioner];

    /// The binary's name, its directory under the add-ons dir, and its path in the image.
    pub fn name(self) -> &'static str {
        match self {
            Addon::CoreDns => "coredns",
            Addon::MetricsServer => "metrics-server",
            Addon::LocalPathProvisioner => "local-path-provisioner",
        }
    }

    /// The pinned upstream version (`v1.14.7`).
    pub fn version(self) -> &'static str {
        catalog::pin(match self {
            Addon::CoreDns => "COREDNS",
            Addon::MetricsServer => "METRICS_SERVER",
            Addon::LocalPathProvisioner => "LOCAL_PATH_PROVISIONER",
        })
    }

    pub fn reference(self) -> String {
        match self {
            Addon::CoreDns => catalog::coredns_image(),
            Addon::MetricsServer => catalog::metrics_server_image(),
            Addon::LocalPathProvisioner => catalog::local_path_provisioner_image(),
        }
    }

    pub fn tarball(self) -> &'static str {
        match self {
            Addon::CoreDns => catalog::COREDNS_TARBALL,
            Addon::MetricsServer => catalog::METRICS_SERVER_TARBALL,
            Addon::LocalPathProvisioner => catalog::LOCAL_PATH_PROVISIONER_TARBALL,
        }
    }
}

/// Where `scripts/build-addons.sh` leaves the binary of `addon` under `addons_dir`.
pub fn addon_binary(addons_dir: &Path, addon: Addon) -> PathBuf {
    addons_dir
        .join(addon.name())
        .join(addon.version())
        .join(addon.name())
}

/// The image of `addon`: its static binary at `/<name>` as the entrypoint, `/tmp` (metrics-server
/// writes its self-signed serving certificate to `--cert-dir=/tmp`; every rootfs may be mounted
/// read-only, so the manifests mount an emptyDir there), and an `/etc/passwd` and `/etc/group`
/// that name root and nobody (65534), the user the manifests run these as.
pub fn addon_spec(addon: Addon, binary: Vec<u8>) -> ImageSpec {
    let name = addon.name();
    let file = |path: &str, mode, data: Vec<u8>| Entry::File {
        path: path.to_owned(),
        mode,
        data,
    };
    let dir = |path: &str, mode| Entry::Dir {
        path: path.to_owned(),
        mode,
    };
    ImageSpec {
        reference: addon.reference(),
        entrypoint: vec![format!("/{name}")],
        cmd: vec![],
        env: vec![DEFAULT_PATH.to_owned()],
        entries: vec![
            file(name, 0o755, binary),
            dir("etc", 0o755),
            file(
                "etc/passwd",
                0o644,
                b"root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n"
                    .to_vec(),
            ),
            file("etc/group", 0o644, b"root:x:0:\nnobody:x:65534:\n".to_vec()),
            dir("tmp", 0o1777),
        ],
        ..ImageSpec::default()
    }
}

/// Packs the binary of `addon` found under `addons_dir` into `<out_dir>/<tarball>`.
pub fn build_addon(out_dir: &Path, addons_dir: &Path, addon: Addon) -> Result<BuiltImage, ImageError> {
    let path = addon_binary(addons_dir, addon);
    // Name the build script when the binary is absent, the usual case on a fresh machine.
    if let Err(source) = fs::metadata(&path) {
        return Err(ImageError::MissingAddon {
            addon: addon.name(),
            version: addon.version(),
            path,
            source,
        });
    }
    let data = super::read_static_executable(&path)?;
    pack(&addon_spec(addon, data), &out_dir.join(addon.tarball()))
}
