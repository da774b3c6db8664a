//! What must hold before `init` writes anything: kubebin, a complete container runtime and
//! the pause image are there, and every component the operator changed accepts its whole
//! command line. A refusal here leaves the node as it was.

use std::path::PathBuf;

use super::components::{self, Ctx};
use super::config::{self, NodeConfig, Role};
use super::{Daemon, DaemonError, extra_args};
use crate::paths::RuntimeDir;

impl Daemon {
    /// Every component the operator changed must accept its whole command line
    /// (`extra_args::check_with_component`): checked before anything is written, so a refused
    /// flag leaves the node as it was.
    pub(super) async fn check_extra_args(&self, cfg: &NodeConfig) -> Result<(), DaemonError> {
        if cfg.extra_args.is_empty() {
            return Ok(());
        }
        let kubebin = self.kubebin()?;
        let ctx = Ctx {
            layout: &self.opts.layout,
            cfg,
            cgroup_root: &self.opts.cgroup_root,
            encrypt_secrets: cfg.role == Role::ControlPlane,
        };
        for (component, changes) in &cfg.extra_args.0 {
            if changes.is_empty() {
                continue;
            }
            let args = components::kube_args(component, &ctx).ok_or_else(|| {
                config::ConfigError::from(extra_args::ExtraArgsError::NotOnThisNode {
                    component: component.clone(),
                    role: cfg.role_name(),
                })
            })?;
            extra_args::check_with_component(&kubebin, component, &args, changes)
                .await
                .map_err(|e| DaemonError::Config(e.into()))?;
        }
        Ok(())
    }

    pub(super) fn kubebin(&self) -> Result<PathBuf, DaemonError> {
        self.opts
            .kubebin
            .clone()
            .filter(|p| p.is_file())
            .ok_or(DaemonError::NoKubebin)
    }

    /// The container runtime, complete: never Debian's containerd 1.x or runc from `PATH`.
    pub(super) fn runtime(&self) -> Result<&RuntimeDir, DaemonError> {
        let rt = &self.opts.runtime;
        let missing = rt.missing();
        if missing.is_empty() {
            return Ok(rt);
        }
        Err(DaemonError::NoRuntime {
            dir: rt.dir().to_owned(),
            missing,
        })
    }

    pub(super) fn preflight(&self) -> Result<(), DaemonError> {
        self.kubebin()?;
        let pause = self.opts.images_dir.join(crate::images::PAUSE_TARBALL);
        if !pause.is_file() {
            return Err(DaemonError::NoPauseImage(pause));
        }
        self.runtime()?;
        Ok(())
    }
}
