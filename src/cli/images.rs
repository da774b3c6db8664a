//! `k8sd images`: build the local OCI image tarballs, list what a node needs, and import them
//! into containerd.

use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::images::{self, catalog};
use crate::paths;

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// Pack the pause, busybox and (with --addons-dir) add-on images into OCI layout tarballs.
    Build {
        /// Directory to write the tarballs into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The static pause binary (scripts/build-images.sh compiles assets/pause/pause.c).
        #[arg(long)]
        pause_bin: PathBuf,
        /// Debian's dynamically linked busybox (package busybox; scripts/build-images.sh fetches it).
        #[arg(long)]
        busybox: PathBuf,
        /// A file busybox's loader opens: its program interpreter and each shared library, as the
        /// absolute path it has in the image (what `ldd` prints). Repeat for each.
        #[arg(long = "busybox-lib", value_name = "PATH")]
        busybox_libs: Vec<PathBuf>,
        /// The output of scripts/build-addons.sh: also pack coredns.tar, metrics-server.tar and
        /// local-path-provisioner.tar from <DIR>/<name>/<version>/<name>.
        #[arg(long, value_name = "DIR")]
        addons_dir: Option<PathBuf>,
    },
    /// List every image a node needs and whether its tarball is in the images directory.
    List {
        /// Directory with the tarballs (default: $K8SD_IMAGES_DIR or /var/cache/k8sd/images).
        #[arg(long)]
        images_dir: Option<PathBuf>,
        #[arg(long, short, value_enum, default_value = "text")]
        output: ListOutput,
    },
    /// Import image tarballs into the containerd at ADDRESS, namespace k8s.io (idempotent).
    Import {
        /// containerd's gRPC socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
        /// The `ctr` client to run (default: the one in $K8SD_RUNTIME_DIR or the build cache of
        /// scripts/build-runtime.sh, built with the containerd k8sd runs).
        #[arg(long)]
        ctr: Option<PathBuf>,
        /// Tarballs written by `k8sd images build`.
        #[arg(required = true)]
        tarballs: Vec<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum ListOutput {
    Text,
    Json,
}

/// One line of `k8sd images list`; its JSON form is what `-o json` prints.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ListedImage {
    pub reference: String,
    pub tarball: PathBuf,
    pub present: bool,
    pub required: bool,
}

pub fn run(args: ImagesArgs) -> anyhow::Result<()> {
    match args.command {
        ImagesCommand::Build {
            out,
            pause_bin,
            busybox,
            busybox_libs,
            addons_dir,
        } => {
            let mut built = vec![
                images::build_pause(&out, &pause_bin)?,
                images::build_busybox(&out, &busybox, &busybox_libs)?,
            ];
            if let Some(dir) = addons_dir {
                for addon in images::Addon::ALL {
                    built.push(images::build_addon(&out, &dir, addon)?);
                }
            }
            for built in built {
                println!(
                    "{}\t{}\t{}",
                    built.tarball.display(),
                    built.reference,
                    built.manifest_digest
                );
            }
        }
        ImagesCommand::List { images_dir, output } => {
            let dir = images_dir.unwrap_or_else(paths::images_dir);
            list(&dir, output, &mut std::io::stdout().lock())?;
        }
        ImagesCommand::Import {
            address,
            ctr,
            tarballs,
        } => {
            let ctr = ctr.unwrap_or_else(|| paths::find_runtime_dir().ctr());
            for tarball in tarballs {
                images::import(&ctr, &address, &tarball).with_context(|| {
                    format!(
                        "is containerd running at {}? check with: {} --address {0} version",
                        address.display(),
                        ctr.display()
                    )
                })?;
                println!("imported {}", tarball.display());
            }
        }
    }
    Ok(())
}

/// Every catalog image with its tarball under `dir`.
pub fn listing(dir: &Path) -> Vec<ListedImage> {
    catalog::all()
        .into_iter()
        .map(|e| {
            let tarball = dir.join(&e.tarball);
            ListedImage {
                reference: e.reference,
                present: tarball.is_file(),
                tarball,
                required: e.required,
            }
        })
        .collect()
}

/// Prints the listing of `dir`; fails, naming the script to run, when the directory or a
/// required image is missing (after printing, so the listing shows what is there).
fn list(dir: &Path, output: ListOutput, out: &mut impl Write) -> anyhow::Result<()> {
    if !dir.is_dir() {
        anyhow::bail!(
            "images directory {} does not exist; build the images with scripts/build-images.sh \
             (or point --images-dir or K8SD_IMAGES_DIR at them)",
            dir.display()
        );
    }
    let images = listing(dir);
    match output {
        ListOutput::Json => writeln!(out, "{}", serde_json::to_string_pretty(&images)?)?,
        ListOutput::Text => {
            for i in &images {
                writeln!(
                    out,
                    "{}\t{}\t{}\t{}",
                    i.reference,
                    if i.present { "present" } else { "missing" },
                    if i.required { "required" } else { "optional" },
                    i.tarball.display()
                )?;
            }
        }
    }
    let missing: Vec<&str> = images
        .iter()
        .filter(|i| !i.present)
        .map(|i| i.reference.as_str())
        .collect();
    if images.iter().any(|i| i.required && !i.present) {
        anyhow::bail!(
            "required image(s) missing from {}: {}; build them with scripts/build-images.sh",
            dir.display(),
            missing.join(", ")
        );
    }
    if !missing.is_empty() {
        eprintln!(
            "{} image(s) not built in {} ({}); scripts/build-images.sh builds them all",
            missing.len(),
            dir.display(),
            missing.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_prints_every_catalog_image_with_its_state() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(images::PAUSE_TARBALL), b"x").unwrap();
        let mut out = Vec::new();
        list(dir.path(), ListOutput::Text, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), catalog::all().len(), "{text}");
        assert!(
            lines[0].starts_with("registry.k8s.io/pause:3.10\tpresent\trequired\t"),
            "{text}"
        );
        let coredns = catalog::coredns_image();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with(&format!("{coredns}\tmissing\toptional\t"))),
            "{text}"
        );

        let mut out = Vec::new();
        list(dir.path(), ListOutput::Json, &mut out).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(json[0]["present"], true);
        assert_eq!(json[1]["reference"], images::BUSYBOX_IMAGE);
        assert_eq!(json[1]["present"], false);
    }

    #[test]
    fn list_fails_naming_the_build_script() {
        let dir = tempfile::tempdir().unwrap();
        let err = list(&dir.path().join("nope"), ListOutput::Text, &mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("scripts/build-images.sh"), "{err}");
        // The directory exists but the sandbox image is not built: listed, then an error.
        let mut out = Vec::new();
        let err = list(dir.path(), ListOutput::Text, &mut out).unwrap_err();
        assert!(err.to_string().contains("registry.k8s.io/pause:3.10"), "{err}");
        assert!(err.to_string().contains("scripts/build-images.sh"), "{err}");
        assert!(!out.is_empty());
    }
}
