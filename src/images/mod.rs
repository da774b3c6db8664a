//! Local container images, built without a registry.
//!
//! Our machines reach no container registry, so every image a pod needs is built here from
//! files already on the host and imported into containerd before the kubelet asks for it:
//!
//! ```text
//!   pause binary (assets/pause/pause.c)        ─┐                      ┌─ registry.k8s.io/pause:3.10
//!   busybox (built from source, dynamic) + its ─┤                      ├─ docker.io/library/busybox:1.37-local
//!     loader and libraries from the host glibc  ├─ pack() ─> OCI tar ─ import() ─> containerd (k8s.io)
//!   add-on binaries (scripts/build-addons.sh)  ─┘                      └─ localhost/k8sd/{coredns,
//!                                                                          metrics-server,local-path-provisioner}
//! ```
//!
//! Each image is a one-layer OCI image layout in a plain tar: `oci-layout`, `index.json` and
//! `blobs/sha256/*`. Every tar header has uid/gid 0 and mtime 0, and the JSON documents carry
//! no timestamps, so the same inputs always give the same digests.
//!
//! The pause and add-on binaries are static and run alone in their rootfs. Busybox is not:
//! glibc supports name resolution (NSS) in a static program only with the shared libraries of
//! the same glibc present at run time, so the busybox image packs a dynamically linked busybox
//! (upstream's source at the pin of `assets/busybox/source.env`, built by
//! `scripts/build-busybox.sh`) with exactly the files its loader opens: the program
//! interpreter it names and the shared libraries the caller lists (glibc 2.36 carries
//! nss_files and nss_dns inside libc.so.6), plus `/etc/nsswitch.conf`.
//! [`read_dynamic_executable`] refuses a list that lacks the interpreter.
//!
//! Image names are stored fully normalized (`docker.io/library/…`), because that is what the
//! CRI looks up for a pod's `busybox:1.37-local`. Tags are never `latest`: the kubelet would
//! default such a pod to `imagePullPolicy: Always` and fail offline. [`catalog`] lists every
//! image a node needs.
//!
//! This module knows nothing of the daemon: it reads input files, writes tarballs, and runs
//! `ctr`. Rendering the containerd configuration that names the sandbox image is elsewhere.
//!
//! Files: this one builds image specs and packs them; `elf.rs` reads the executables they are
//! built from, `oci.rs` holds the OCI documents, `ctr.rs` imports and pins tarballs in
//! containerd, `addons.rs` and `rootfs.rs` make the add-on and directory images, `catalog.rs`
//! lists them all.

mod addons;
pub mod catalog;
mod ctr;
mod elf;
mod oci;
mod rootfs;

pub use addons::{Addon, addon_binary, addon_spec, build_addon};
pub use ctr::{PINNED_LABEL, import, import_command, pin, pin_command};
pub use elf::read_dynamic_executable;
pub(crate) use elf::read_static_executable;
pub use rootfs::read_rootfs;

use flate2::{Compression, GzBuilder};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

/// The sandbox image; containerd's `sandbox_image` must name exactly this.
pub const PAUSE_IMAGE: &str = "registry.k8s.io/pause:3.10";
/// The test image. Pods may say `busybox:1.37-local`; the CRI normalizes it to this. The tag is
/// the major.minor of `assets/busybox/source.env`'s VERSION (a unit test checks it).
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox:1.37-local";
/// File names `build_pause` and `build_busybox` write into their output directory.
pub const PAUSE_TARBALL: &str = "pause.tar";
pub const BUSYBOX_TARBALL: &str = "busybox.tar";
/// Image tarballs are readable by anyone: they hold nothing secret, and build scripts and
/// tests read them as other users.
const TARBALL_MODE: u32 = 0o644;
/// The containerd namespace the CRI plugin (and so the kubelet) uses.
pub const CONTAINERD_NAMESPACE: &str = "k8s.io";

/// Busybox applets linked into the test image's `/bin`: enough for shell scripts and tests.
pub const BUSYBOX_APPLETS: &[&str] = &[
    "[", "awk", "basename", "cat", "chmod", "cp", "cut", "date", "df", "dirname", "du", "echo", "env",
    "false", "find", "grep", "head", "hostname", "httpd", "id", "ip", "kill", "ln", "ls", "mkdir", "mount",
    "mv", "nc", "nslookup", "ping", "printf", "ps", "pwd", "rm", "sed", "seq", "sh", "sleep", "sort", "stat",
    "tail", "tee", "test", "timeout", "touch", "tr", "true", "uname", "uniq", "wc", "wget", "which",
    "whoami", "xargs", "yes",
];

/// `hosts: files dns` makes glibc consult /etc/hosts, then the resolv.conf nameservers; both
/// backends are built into glibc 2.36's libc.so.6, so no libnss_*.so is packed.
pub const NSSWITCH_CONF: &str = "passwd: files\ngroup: files\nhosts: files dns\n";

/// The PATH every image gets unless it names its own (Docker's default for a Linux image).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{path} cannot go into an image: {reason}")]
    NotStatic { path: PathBuf, reason: String },
    #[error("{path} cannot go into the busybox image: {reason}")]
    NotDynamic { path: PathBuf, reason: String },
    #[error(
        "{executable} loads {interpreter}, which is not among the libraries given ({given:?}); pass it too (scripts/build-images.sh lists them with ldd)"
    )]
    MissingInterpreter {
        executable: PathBuf,
        interpreter: String,
        given: Vec<PathBuf>,
    },
    #[error("shared library {path} must be an absolute path to an ELF file: {reason}")]
    BadLibrary { path: PathBuf, reason: String },
    #[error(
        "add-on binary {path} ({addon} {version}) is missing: {source}; build it with scripts/build-addons.sh"
    )]
    MissingAddon {
        addon: &'static str,
        version: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("image reference {reference:?} is not usable offline: {reason}")]
    BadReference { reference: String, reason: String },
    #[error("{path} cannot go into an image: {reason}")]
    BadRootfs { path: PathBuf, reason: String },
    #[error("image {reference}: invalid rootfs entry {path:?}: {reason}")]
    BadEntry {
        reference: String,
        path: String,
        reason: String,
    },
    #[error("cannot run {program}: {source} (is the container runtime built? run scripts/build-runtime.sh)")]
    Spawn { program: PathBuf, source: io::Error },
    #[error("importing {tarball} into containerd at {address} failed ({status}): {stderr}")]
    Import {
        tarball: PathBuf,
        address: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    #[error("pinning image {reference} in containerd at {address} failed ({status}): {stderr}")]
    Pin {
        reference: String,
        address: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
}

/// One file-system object in an image's single layer. Paths are relative, without `./`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, data: Vec<u8> },
    Symlink { path: String, target: String },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Dir { path, .. } | Entry::File { path, .. } | Entry::Symlink { path, .. } => path,
        }
    }
}

/// What to pack: a name, the process defaults, and the rootfs.
#[derive(Debug, Clone, Default)]
pub struct ImageSpec {
    /// Fully qualified `registry/repository:tag`.
    pub reference: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    /// The process's working directory; `None` is `/`.
    pub working_dir: Option<String>,
    /// `uid`, `uid:gid` or a name from the image's `/etc/passwd`; `None` is root.
    pub user: Option<String>,
    /// `80/tcp`, `53/udp`: what Docker's `EXPOSE` records.
    pub exposed_ports: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub entries: Vec<Entry>,
}

/// A packed image tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    pub reference: String,
    pub tarball: PathBuf,
    /// `sha256:…` of the manifest: what `ctr images ls` and the CRI report as the image digest.
    pub manifest_digest: String,
}

/// The pause image: `/pause` as entrypoint and nothing else.
pub fn pause_spec(pause: Vec<u8>) -> ImageSpec {
    ImageSpec {
        reference: PAUSE_IMAGE.to_owned(),
        entrypoint: vec!["/pause".to_owned()],
        cmd: vec![],
        env: vec![DEFAULT_PATH.to_owned()],
        entries: vec![Entry::File {
            path: "pause".to_owned(),
            mode: 0o755,
            data: pause,
        }],
        ..ImageSpec::default()
    }
}

/// A dynamically linked executable with the files its loader opens, each under the absolute
/// path (without the leading `/`) where the loader looks for it in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DynamicExecutable {
    pub data: Vec<u8>,
    /// `PT_INTERP` of the executable, e.g. `/lib64/ld-linux-x86-64.so.2`.
    pub interpreter: String,
    /// (path in the image, content): the interpreter and the shared libraries.
    pub libraries: Vec<(String, Vec<u8>)>,
}

/// The busybox test image: `/bin/busybox` with its loader and libraries, applet symlinks, and
/// just enough of `/etc` for `id` and `whoami` to answer, for `runAsUser: 65534` to have a
/// name, and for `wget`, `nc` and `ping` to resolve names through /etc/hosts and DNS.
pub fn busybox_spec(busybox: DynamicExecutable) -> ImageSpec {
    let dir = |path: &str, mode| Entry::Dir {
        path: path.to_owned(),
        mode,
    };
    let file = |path: &str, data: &str| Entry::File {
        path: path.to_owned(),
        mode: 0o644,
        data: data.into(),
    };
    let mut entries = vec![
        dir("bin", 0o755),
        Entry::File {
            path: "bin/busybox".to_owned(),
            mode: 0o755,
            data: busybox.data,
        },
        dir("etc", 0o755),
        file(
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n",
        ),
        file("etc/group", "root:x:0:\nnobody:x:65534:\n"),
        file("etc/nsswitch.conf", NSSWITCH_CONF),
        // The kubelet mounts its own /etc/hosts over this one; `ctr run` does not.
        file("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
        dir("home", 0o755),
        dir("root", 0o700),
        dir("tmp", 0o1777),
        // Mount points the runtime fills in; present so read-only rootfs pods work too.
        dir("dev", 0o755),
        dir("proc", 0o555),
        dir("sys", 0o555),
        dir("var", 0o755),
    ];
    entries.extend(BUSYBOX_APPLETS.iter().map(|a| Entry::Symlink {
        path: format!("bin/{a}"),
        target: "busybox".to_owned(),
    }));
    for (path, data) in busybox.libraries {
        entries.push(Entry::File {
            path,
            mode: 0o755,
            data,
        });
    }
    add_parent_dirs(&mut entries);
    ImageSpec {
        reference: BUSYBOX_IMAGE.to_owned(),
        entrypoint: vec![],
        cmd: vec!["sh".to_owned()],
        env: vec![DEFAULT_PATH.to_owned()],
        entries,
        ..ImageSpec::default()
    }
}

/// Adds a 0755 directory entry for every parent directory not listed yet (`lib64` for
/// `lib64/ld-linux-x86-64.so.2`).
fn add_parent_dirs(entries: &mut Vec<Entry>) {
    let mut dirs: BTreeSet<String> = entries
        .iter()
        .filter(|e| matches!(e, Entry::Dir { .. }))
        .map(|e| e.path().to_owned())
        .collect();
    let mut missing = Vec::new();
    for entry in entries.iter() {
        let mut path = entry.path();
        while let Some((parent, _)) = path.rsplit_once('/') {
            if dirs.insert(parent.to_owned()) {
                missing.push(parent.to_owned());
            }
            path = parent;
        }
    }
    entries.extend(missing.into_iter().map(|path| Entry::Dir { path, mode: 0o755 }));
}

/// Packs `pause_bin` (a static executable) into `<out_dir>/pause.tar`.
pub fn build_pause(out_dir: &Path, pause_bin: &Path) -> Result<BuiltImage, ImageError> {
    let data = read_static_executable(pause_bin)?;
    pack(&pause_spec(data), &out_dir.join(PAUSE_TARBALL))
}

/// Packs `busybox` (dynamically linked, from scripts/build-busybox.sh) with `libraries` (its
/// program interpreter and the shared libraries it needs, as host paths) into
/// `<out_dir>/busybox.tar`.
pub fn build_busybox(
    out_dir: &Path,
    busybox: &Path,
    libraries: &[PathBuf],
) -> Result<BuiltImage, ImageError> {
    let exe = read_dynamic_executable(busybox, libraries)?;
    pack(&busybox_spec(exe), &out_dir.join(BUSYBOX_TARBALL))
}

/// Writes `spec` as a one-layer OCI layout tarball at `tarball` (atomically, via a `.tmp` file).
pub fn pack(spec: &ImageSpec, tarball: &Path) -> Result<BuiltImage, ImageError> {
    let tag = tag_of(&spec.reference)?;
    validate_entries(spec)?;
    let layer_tar = layer_tar(spec).map_err(|source| write_err("<layer in memory>", source))?;
    let diff_id = sha256_digest(&layer_tar);
    let layer_gz = gzip(&layer_tar).map_err(|source| write_err("<layer in memory>", source))?;

    let arch = oci::host_architecture();
    let config = oci::ImageConfig {
        architecture: arch.to_owned(),
        os: "linux".to_owned(),
        config: oci::RuntimeConfig {
            env: spec.env.clone(),
            entrypoint: spec.entrypoint.clone(),
            cmd: spec.cmd.clone(),
            working_dir: spec.working_dir.clone().unwrap_or_else(|| "/".to_owned()),
            user: spec.user.clone().unwrap_or_default(),
            exposed_ports: spec
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), oci::Empty {}))
                .collect(),
            labels: spec.labels.clone(),
        },
        rootfs: oci::RootFs {
            kind: "layers".to_owned(),
            diff_ids: vec![diff_id],
        },
        history: vec![oci::History {
            created_by: "k8sd images build".to_owned(),
        }],
    };
    let config_json = to_json(&config);
    let manifest = oci::Manifest {
        schema_version: 2,
        media_type: oci::MEDIA_MANIFEST.to_owned(),
        config: descriptor(oci::MEDIA_CONFIG, &config_json),
        layers: vec![descriptor(oci::MEDIA_LAYER_GZIP, &layer_gz)],
    };
    let manifest_json = to_json(&manifest);
    let mut manifest_desc = descriptor(oci::MEDIA_MANIFEST, &manifest_json);
    manifest_desc.platform = Some(oci::Platform {
        architecture: arch.to_owned(),
        os: "linux".to_owned(),
    });
    manifest_desc.annotations = BTreeMap::from([
        (oci::ANNOTATION_CONTAINERD_NAME.to_owned(), spec.reference.clone()),
        (oci::ANNOTATION_REF_NAME.to_owned(), tag.to_owned()),
    ]);
    let manifest_digest = manifest_desc.digest.clone();
    let index = oci::Index {
        schema_version: 2,
        media_type: oci::MEDIA_INDEX.to_owned(),
        manifests: vec![manifest_desc],
    };

    let blobs: [&[u8]; 3] = [&layer_gz, &config_json, &manifest_json];
    if let Some(parent) = tarball.parent() {
        fs::create_dir_all(parent).map_err(|source| write_err(parent, source))?;
    }
    crate::atomic_file::replace_with(tarball, TARBALL_MODE, |file| {
        let mut out = tar::Builder::new(io::BufWriter::new(file));
        append_file(&mut out, "oci-layout", 0o644, oci::OCI_LAYOUT.as_bytes())?;
        append_file(&mut out, "index.json", 0o644, &to_json(&index))?;
        append_dir(&mut out, "blobs/", 0o755)?;
        append_dir(&mut out, "blobs/sha256/", 0o755)?;
        for blob in blobs {
            append_file(
                &mut out,
                &format!("blobs/sha256/{}", sha256_hex(blob)),
                0o644,
                blob,
            )?;
        }
        out.into_inner()?.flush()
    })
    .map_err(|e| write_err(&e.path, e.source))?;
    Ok(BuiltImage {
        reference: spec.reference.clone(),
        tarball: tarball.to_owned(),
        manifest_digest,
    })
}

/// Returns the tag of a fully qualified, offline-safe reference (`registry/repo:tag`).
fn tag_of(reference: &str) -> Result<&str, ImageError> {
    let bad = |reason: &str| ImageError::BadReference {
        reference: reference.to_owned(),
        reason: reason.to_owned(),
    };
    if reference.contains('@') {
        return Err(bad(
            "digest references cannot be built; use registry/repository:tag",
        ));
    }
    let (registry, rest) = reference.split_once('/').ok_or_else(|| bad("no registry host"))?;
    // The same test the Docker reference grammar uses to tell a host from a path component.
    if !(registry.contains('.') || registry.contains(':') || registry == "localhost") {
        return Err(bad(
            "the first component must be a registry host, e.g. docker.io/library/…",
        ));
    }
    let (_, tag) = rest.rsplit_once(':').ok_or_else(|| bad("no tag"))?;
    if tag.is_empty() || tag.contains('/') {
        return Err(bad("no tag"));
    }
    if tag == "latest" {
        return Err(bad(
            "':latest' makes the kubelet default to imagePullPolicy Always, which fails offline",
        ));
    }
    Ok(tag)
}

/// Checks the rootfs entries: relative clean paths, no duplicates, every parent listed as a
/// directory (the tar is written in path order, so parents come first).
fn validate_entries(spec: &ImageSpec) -> Result<(), ImageError> {
    let mut dirs = BTreeSet::new();
    let mut seen = BTreeSet::new();
    for entry in sorted_entries(spec) {
        let path = entry.path();
        let reason = if path.is_empty() || path.starts_with('/') || path.ends_with('/') {
            Some("must be relative and must not end in '/'")
        } else if path.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            Some("must not contain empty, '.' or '..' components")
        } else if !seen.insert(path) {
            Some("listed twice")
        } else if path
            .rsplit_once('/')
            .is_some_and(|(parent, _)| !dirs.contains(parent))
        {
            Some("its parent directory is not listed")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(ImageError::BadEntry {
                reference: spec.reference.clone(),
                path: path.to_owned(),
                reason: reason.to_owned(),
            });
        }
        if matches!(entry, Entry::Dir { .. }) {
            dirs.insert(path);
        }
    }
    Ok(())
}

fn sorted_entries(spec: &ImageSpec) -> Vec<&Entry> {
    let mut entries: Vec<&Entry> = spec.entries.iter().collect();
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    entries
}

/// Builds the uncompressed layer tar from validated entries, in path order.
fn layer_tar(spec: &ImageSpec) -> io::Result<Vec<u8>> {
    let entries = sorted_entries(spec);
    let mut tar = tar::Builder::new(Vec::new());
    for entry in entries {
        match entry {
            Entry::Dir { path, mode } => append_dir(&mut tar, &format!("{path}/"), *mode)?,
            Entry::File { path, mode, data } => append_file(&mut tar, path, *mode, data)?,
            Entry::Symlink { path, target } => {
                let mut header = header(tar::EntryType::Symlink, 0o777, 0);
                tar.append_link(&mut header, path, target)?;
            }
        }
    }
    tar.into_inner()
}

/// A GNU tar header with everything that could vary between machines pinned: owner root,
/// mtime 0 (the epoch), no user or group names.
fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header
}

fn append_file<W: Write>(tar: &mut tar::Builder<W>, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
    let mut header = header(tar::EntryType::Regular, mode, data.len() as u64);
    tar.append_data(&mut header, path, data)
}

fn append_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str, mode: u32) -> io::Result<()> {
    let mut header = header(tar::EntryType::Directory, mode, 0);
    tar.append_data(&mut header, path, io::empty())
}

fn gzip(data: &[u8]) -> io::Result<Vec<u8>> {
    // mtime 0 and a fixed OS byte (3 = Unix) keep the gzip header reproducible.
    let mut gz = GzBuilder::new()
        .mtime(0)
        .operating_system(3)
        .write(Vec::new(), Compression::best());
    gz.write_all(data)?;
    gz.finish()
}

fn descriptor(media_type: &str, blob: &[u8]) -> oci::Descriptor {
    oci::Descriptor {
        media_type: media_type.to_owned(),
        digest: sha256_digest(blob),
        size: blob.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    }
}

fn to_json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Serializing these plain structs (strings, numbers, vectors, string maps) cannot fail.
    #[allow(clippy::expect_used)] // reason: infallible for the types in oci.rs
    serde_json::to_vec(value).expect("OCI documents serialize")
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

fn write_err(path: impl AsRef<Path>, source: io::Error) -> ImageError {
    ImageError::Write {
        path: path.as_ref().to_owned(),
        source,
    }
}

#[cfg(test)]
mod tests;
