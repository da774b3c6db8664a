//! `k8sd images`: build the local OCI image tarballs and import them into containerd.

use anyhow::Context;
use std::path::PathBuf;

use crate::images;

#[derive(Debug, clap::Args)]
pub struct ImagesArgs {
    #[command(subcommand)]
    pub command: ImagesCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImagesCommand {
    /// Pack the pause and busybox images into OCI layout tarballs (pause.tar, busybox.tar).
    Build {
        /// Directory to write the tarballs into (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// The static pause binary (scripts/build-images.sh compiles assets/pause/pause.c).
        #[arg(long)]
        pause_bin: PathBuf,
        /// Debian's static busybox (package busybox-static).
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
    /// Import image tarballs into the containerd at ADDRESS, namespace k8s.io (idempotent).
    Import {
        /// containerd's gRPC socket.
        #[arg(long, default_value = "/run/containerd/containerd.sock")]
        address: PathBuf,
        /// Tarballs written by `k8sd images build`.
        #[arg(required = true)]
        tarballs: Vec<PathBuf>,
    },
}

pub fn run(args: ImagesArgs) -> anyhow::Result<()> {
    match args.command {
        ImagesCommand::Build {
            out,
            pause_bin,
            busybox,
        } => {
            for built in [
                images::build_pause(&out, &pause_bin)?,
                images::build_busybox(&out, &busybox)?,
            ] {
                println!(
                    "{}\t{}\t{}",
                    built.tarball.display(),
                    built.reference,
                    built.manifest_digest
                );
            }
        }
        ImagesCommand::Import { address, tarballs } => {
            for tarball in tarballs {
                images::import(&address, &tarball).with_context(|| {
                    format!(
                        "is containerd running at {}? check with: ctr --address {0} version",
                        address.display()
                    )
                })?;
                println!("imported {}", tarball.display());
            }
        }
    }
    Ok(())
}
