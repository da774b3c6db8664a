//! `k8sd images`: build the local OCI image tarballs, list what a node needs, and import them
//! into containerd.

use super::exit::fail;
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
        /// A dynamically linked busybox (scripts/build-busybox.sh builds it from source).
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
    /// Pack a root filesystem directory as a one-layer OCI image tarball named REFERENCE.
    ///
    /// Files keep their content and permission bits (setuid included), symlinks their target;
    /// every entry is owned by root with mtime 0, so the same directory gives the same tarball.
    Pack {
        /// Fully qualified `registry/repository:tag` the image is imported under.
        #[arg(long)]
        reference: String,
        /// The directory that becomes `/` in the image.
        #[arg(long)]
        rootfs: PathBuf,
        /// The tarball to write (atomically).
        #[arg(long)]
        out: PathBuf,
        /// One element of the entrypoint; repeat for each, in order.
        #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
        entrypoint: Vec<String>,
        /// One element of the default command (the arguments of the entrypoint); repeat for each.
        #[arg(long, allow_hyphen_values = true, value_name = "ARG")]
        cmd: Vec<String>,
        /// NAME=VALUE in the process environment; repeat for each. A PATH is added unless given.
        #[arg(long, value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// The process's working directory (default /).
        #[arg(long)]
        workdir: Option<String>,
        /// The user the process runs as: uid, uid:gid or a name from the rootfs's /etc/passwd.
        #[arg(long)]
        user: Option<String>,
        /// A port the image serves on, PORT or PORT/PROTOCOL (tcp, udp, sctp); repeat for each.
        #[arg(long, value_name = "PORT[/PROTO]")]
        expose: Vec<String>,
        /// KEY=VALUE image label; repeat for each.
        #[arg(long, value_name = "KEY=VALUE")]
        label: Vec<String>,
    },
    /// List every image a node needs and whether its tarball is in the images directory.
    List {
        /// Directory with the tarballs (default: $K8SD_IMAGES_DIR, $SNAP/images in the snap, or /var/cache/k8sd/images).
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
        ImagesCommand::Pack {
            reference,
            rootfs,
            out,
            entrypoint,
            cmd,
            env,
            workdir,
            user,
            expose,
            label,
        } => {
            let config = PackConfig {
                entrypoint,
                cmd,
                env,
                workdir,
                user,
                expose,
                label,
            };
            let mut spec = pack_spec(reference, config)?;
            spec.entries = images::read_rootfs(&rootfs)
                .with_context(|| format!("reading the rootfs {} to pack", rootfs.display()))?;
            let built = images::pack(&spec, &out)?;
            println!(
                "{}\t{}\t{}",
                built.tarball.display(),
                built.reference,
                built.manifest_digest
            );
        }
        ImagesCommand::List { images_dir, output } => {
            let dir = match images_dir {
                Some(dir) => dir,
                None => paths::images_dir(paths::Snap::from_env()?.as_ref()),
            };
            list(&dir, output, &mut std::io::stdout().lock())?;
        }
        ImagesCommand::Import {
            address,
            ctr,
            tarballs,
        } => {
            let ctr = match ctr {
                Some(ctr) => ctr,
                None => paths::find_runtime_dir(paths::Snap::from_env()?.as_ref()).ctr(),
            };
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

/// The process configuration `k8sd images pack` was given, before validation.
#[derive(Debug, Default)]
struct PackConfig {
    entrypoint: Vec<String>,
    cmd: Vec<String>,
    env: Vec<String>,
    workdir: Option<String>,
    user: Option<String>,
    expose: Vec<String>,
    label: Vec<String>,
}

/// Checks `config` and turns it into an image spec without entries. A mistake here would
/// otherwise surface only when a pod using the image fails to start.
fn pack_spec(reference: String, config: PackConfig) -> anyhow::Result<images::ImageSpec> {
    for env in &config.env {
        match env.split_once('=') {
            Some((name, _)) if !name.is_empty() => {}
            _ => fail!(Usage, "--env {env:?} must be NAME=VALUE"),
        }
    }
    let mut env = config.env;
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, images::DEFAULT_PATH.to_owned());
    }
    let mut labels = std::collections::BTreeMap::new();
    for label in &config.label {
        let Some((key, value)) = label.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            fail!(Usage, "--label {label:?} must be KEY=VALUE");
        };
        labels.insert(key.to_owned(), value.to_owned());
    }
    let mut exposed_ports = Vec::new();
    for port in &config.expose {
        let (number, proto) = port.split_once('/').unwrap_or((port, "tcp"));
        if number.parse::<u16>().map_or(true, |n| n == 0) || !["tcp", "udp", "sctp"].contains(&proto) {
            fail!(
                Usage,
                "--expose {port:?} must be PORT or PORT/PROTOCOL with PORT 1-65535 and PROTOCOL tcp, udp or sctp"
            );
        }
        exposed_ports.push(format!("{number}/{proto}"));
    }
    if let Some(dir) = &config.workdir {
        anyhow::ensure!(dir.starts_with('/'), "--workdir {dir:?} must be an absolute path");
    }
    if config.entrypoint.is_empty() && config.cmd.is_empty() {
        fail!(
            Usage,
            "give --entrypoint or --cmd (or both): an image with neither cannot start a container"
        );
    }
    Ok(images::ImageSpec {
        reference,
        entrypoint: config.entrypoint,
        cmd: config.cmd,
        env,
        working_dir: config.workdir,
        user: config.user.filter(|u| !u.is_empty()),
        exposed_ports,
        labels,
        entries: vec![],
    })
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
    fn pack_config_is_checked_and_gets_a_path() {
        let ok = |config: PackConfig| pack_spec("registry.k8s.io/x:1".to_owned(), config);
        let spec = ok(PackConfig {
            entrypoint: vec!["/agnhost".into()],
            env: vec!["A=1".into()],
            expose: vec!["80".into(), "53/udp".into()],
            label: vec!["k=v=w".into()],
            user: Some(String::new()),
            ..PackConfig::default()
        })
        .unwrap();
        assert_eq!(spec.env, [images::DEFAULT_PATH, "A=1"]);
        assert_eq!(spec.exposed_ports, ["80/tcp", "53/udp"]);
        assert_eq!(spec.labels["k"], "v=w");
        assert_eq!(spec.user, None);
        // A given PATH is kept, not doubled.
        let spec = ok(PackConfig {
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into()],
            ..PackConfig::default()
        })
        .unwrap();
        assert_eq!(spec.env, ["PATH=/bin"]);

        let cmd = || vec!["sh".to_owned()];
        for (config, want) in [
            (PackConfig::default(), "--entrypoint or --cmd"),
            (
                PackConfig {
                    cmd: cmd(),
                    env: vec!["NOEQUALS".into()],
                    ..PackConfig::default()
                },
                "NAME=VALUE",
            ),
            (
                PackConfig {
                    cmd: cmd(),
                    expose: vec!["80/icmp".into()],
                    ..PackConfig::default()
                },
                "PORT/PROTOCOL",
            ),
            (
                PackConfig {
                    cmd: cmd(),
                    expose: vec!["0".into()],
                    ..PackConfig::default()
                },
                "1-65535",
            ),
            (
                PackConfig {
                    cmd: cmd(),
                    label: vec!["=v".into()],
                    ..PackConfig::default()
                },
                "KEY=VALUE",
            ),
            (
                PackConfig {
                    cmd: cmd(),
                    workdir: Some("srv".into()),
                    ..PackConfig::default()
                },
                "absolute",
            ),
        ] {
            let err = ok(config).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
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
