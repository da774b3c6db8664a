//! Every image a node may need, by reference and tarball: the pause and base images k8sd packs
//! from host files, and the add-on images built from pinned Go modules by
//! `scripts/build-addons.sh`. The add-on versions come from `assets/addons/versions.env`, the
//! one pin, so a bumped pin renames the image and the manifests that use it together.

/// The pins file, compiled in.
const PINS: &str = include_str!("../../assets/addons/versions.env");

/// Where local images live in the reference space: never a real registry, so nothing can be
/// pulled by mistake and `k8sd images list` shows at a glance what is built here.
pub const LOCAL_REGISTRY: &str = "localhost/k8sd";

/// Tarballs of the add-on images in the images directory.
pub const COREDNS_TARBALL: &str = "coredns.tar";
pub const METRICS_SERVER_TARBALL: &str = "metrics-server.tar";
pub const LOCAL_PATH_PROVISIONER_TARBALL: &str = "local-path-provisioner.tar";

/// One image: the reference pods use and the tarball in the images directory that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogEntry {
    pub reference: String,
    pub tarball: String,
    /// Whether a node cannot run without it (the sandbox image); add-on images are optional.
    pub required: bool,
}

/// The version pinned for `key` in versions.env (e.g. `COREDNS`), or "" when absent; a unit
/// test pins that every key used here is present.
pub fn pin(key: &str) -> &'static str {
    PINS.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .unwrap_or("")
}

fn local(name: &str, key: &str) -> String {
    format!("{LOCAL_REGISTRY}/{name}:{}", pin(key))
}

pub fn coredns_image() -> String {
    local("coredns", "COREDNS")
}

pub fn metrics_server_image() -> String {
    local("metrics-server", "METRICS_SERVER")
}

pub fn local_path_provisioner_image() -> String {
    local("local-path-provisioner", "LOCAL_PATH_PROVISIONER")
}

/// Every image, in import order (the sandbox image first).
pub fn all() -> Vec<CatalogEntry> {
    let e = |reference: String, tarball: &str, required| CatalogEntry {
        reference,
        tarball: tarball.to_owned(),
        required,
    };
    vec![
        e(super::PAUSE_IMAGE.to_owned(), super::PAUSE_TARBALL, true),
        e(super::BUSYBOX_IMAGE.to_owned(), super::BUSYBOX_TARBALL, false),
        e(coredns_image(), COREDNS_TARBALL, false),
        e(metrics_server_image(), METRICS_SERVER_TARBALL, false),
        e(
            local_path_provisioner_image(),
            LOCAL_PATH_PROVISIONER_TARBALL,
            false,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_snap_ships_every_image_of_the_catalog() {
        // The first word of each line of snap/contents.txt is a file the snap ships.
        let contents = include_str!("../../snap/contents.txt");
        for entry in all() {
            let dest = format!("images/{}", entry.tarball);
            let listed = contents
                .lines()
                .any(|l| l.split_whitespace().next() == Some(dest.as_str()));
            assert!(listed, "snap/contents.txt lacks {dest}");
        }
    }

    #[test]
    fn every_pin_is_present_and_every_reference_is_offline_safe() {
        for key in ["COREDNS", "METRICS_SERVER", "LOCAL_PATH_PROVISIONER"] {
            assert!(
                pin(key).starts_with('v'),
                "{key} missing from assets/addons/versions.env"
            );
        }
        for entry in all() {
            super::super::tag_of(&entry.reference).unwrap();
            assert!(entry.tarball.ends_with(".tar"));
        }
        assert_eq!(pin("NOPE"), "");
    }
}
