//! Where the mirror finds what it serves: the images and content of this node's containerd.
//!
//! A tag is resolved with `ctr images ls` in the CRI's namespace (`k8s.io`), the same records
//! the kubelet sees. Blobs, manifests included, are read from containerd's content store on disk
//! (`<root>/io.containerd.content.v1.content/blobs/sha256/<hex>`), so large layers stream from
//! the file instead of passing through a child process.

use std::path::{Path, PathBuf};

/// One image as containerd records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub digest: String,
    pub media_type: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot run {ctr}: {source}")]
    Spawn {
        ctr: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`ctr images ls` failed: {stderr}")]
    Ctr { stderr: String },
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// This node's containerd: the `ctr` binary, its socket and its root directory.
#[derive(Debug, Clone)]
pub struct ContainerdStore {
    pub ctr: PathBuf,
    pub address: PathBuf,
    pub root: PathBuf,
}

impl ContainerdStore {
    /// The digest and media type of the image named `image` (a full reference with a tag), or
    /// `None` when this node does not have it.
    pub async fn resolve(&self, image: &str) -> Result<Option<Resolved>, StoreError> {
        let out = tokio::process::Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.address)
            .args(["--namespace", "k8s.io", "images", "ls"])
            .arg(format!("name=={image}"))
            // containerd 2's ctr warns about deprecated server features on every call.
            .env("CONTAINERD_SUPPRESS_DEPRECATION_WARNINGS", "1")
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| StoreError::Spawn {
                ctr: self.ctr.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(StoreError::Ctr {
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(parse_images_ls(&String::from_utf8_lossy(&out.stdout), image))
    }

    /// The file holding the blob `digest` (`sha256:<hex>`, validated by the router).
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.root
            .join("io.containerd.content.v1.content/blobs/sha256")
            .join(hex)
    }

    /// The blob's size, or `None` when the content store does not hold it.
    pub async fn blob_size(&self, digest: &str) -> Result<Option<u64>, StoreError> {
        let path = self.blob_path(digest);
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StoreError::Read { path, source }),
        }
    }
}

/// Reads the blob at `path` whole (manifests are small).
pub async fn read_small(path: &Path) -> Result<Vec<u8>, StoreError> {
    tokio::fs::read(path).await.map_err(|source| StoreError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The media type a manifest declares (OCI and Docker manifests and indexes all carry one),
/// for a manifest asked for by digest, which `ctr images ls` cannot name.
pub fn declared_media_type(manifest: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(manifest).ok()?;
    v.get("mediaType")?.as_str().map(str::to_owned)
}

/// The row of `ctr images ls` output for exactly `image`: columns REF, TYPE, DIGEST, SIZE
/// (two words), PLATFORMS, LABELS, separated by runs of spaces.
fn parse_images_ls(out: &str, image: &str) -> Option<Resolved> {
    out.lines().skip(1).find_map(|line| {
        let mut f = line.split_whitespace();
        let (reference, media_type, digest) = (f.next()?, f.next()?, f.next()?);
        (reference == image && digest.starts_with("sha256:")).then(|| Resolved {
            digest: digest.to_owned(),
            media_type: media_type.to_owned(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_ls_rows_resolve_to_digest_and_type() {
        let out = "REF                                          TYPE                                    DIGEST                                                                  SIZE      PLATFORMS   LABELS\n\
registry.k8s.io/e2e-test-images/kitten:1.8   application/vnd.oci.image.index.v1+json sha256:aaaa000000000000000000000000000000000000000000000000000000000000 12.3 MiB  linux/amd64 io.cri-containerd.image=managed\n\
registry.k8s.io/e2e-test-images/kitten:1.80  application/vnd.oci.image.manifest.v1+json sha256:bbbb000000000000000000000000000000000000000000000000000000000000 1.0 KiB   linux/amd64 -\n";
        assert_eq!(
            parse_images_ls(out, "registry.k8s.io/e2e-test-images/kitten:1.8"),
            Some(Resolved {
                digest: "sha256:aaaa000000000000000000000000000000000000000000000000000000000000".into(),
                media_type: "application/vnd.oci.image.index.v1+json".into(),
            })
        );
        assert_eq!(
            parse_images_ls(out, "registry.k8s.io/e2e-test-images/kitten:1"),
            None
        );
        assert_eq!(
            parse_images_ls("REF TYPE DIGEST SIZE PLATFORMS LABELS\n", "x:1"),
            None
        );
    }

    #[test]
    fn manifests_declare_their_media_type() {
        let m =
            br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{}}"#;
        assert_eq!(
            declared_media_type(m).as_deref(),
            Some("application/vnd.oci.image.manifest.v1+json")
        );
        assert_eq!(declared_media_type(b"{}"), None);
        assert_eq!(declared_media_type(b"not json"), None);
    }

    #[test]
    fn blobs_live_in_the_content_store() {
        let s = ContainerdStore {
            ctr: "ctr".into(),
            address: "/run/c.sock".into(),
            root: "/var/lib/k8sd/containerd".into(),
        };
        assert_eq!(
            s.blob_path("sha256:ab12"),
            Path::new("/var/lib/k8sd/containerd/io.containerd.content.v1.content/blobs/sha256/ab12")
        );
    }
}
