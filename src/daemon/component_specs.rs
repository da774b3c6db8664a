//! The supervised components as specs, in start order, each gated on its readiness probe:
//! kube-apiserver, then controller-manager and scheduler on a control-plane node; containerd
//! (ready once its socket answers and every image is imported), kubelet and kube-proxy on
//! every node.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::components::{self, Ctx};
use super::{Daemon, DaemonError};
use crate::supervisor::{ComponentSpec, Probe};

impl Daemon {
    fn kube_spec(&self, kubebin: &Path, name: &str, args: Vec<String>) -> ComponentSpec {
        ComponentSpec::new(name, kubebin, self.opts.layout.logs_dir())
            .with_args(std::iter::once(name.to_string()).chain(args))
    }

    /// kube-apiserver, then controller-manager and scheduler.
    pub(super) fn control_plane_groups(
        &self,
        ctx: &Ctx<'_>,
        kubebin: &Path,
    ) -> Result<Vec<Vec<ComponentSpec>>, DaemonError> {
        let kube = |name: &str, args: Vec<String>| self.kube_spec(kubebin, name, args);
        let admin = self.admin_client()?;
        let apiserver_ready = Probe::custom("kube-apiserver /readyz", move || {
            let admin = admin.clone();
            async move {
                matches!(
                    admin
                        .get(components::apiserver_addr(), "/readyz", Duration::from_secs(3))
                        .await,
                    Ok((200, _))
                )
            }
        });
        let tcp = |port: u16| Probe::tcp(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
        let minute = Duration::from_secs(120);
        Ok(vec![
            vec![
                kube("kube-apiserver", components::apiserver_args(ctx))
                    .with_readiness(apiserver_ready, minute)
                    .with_stop_timeout(Duration::from_secs(30)),
            ],
            vec![
                kube(
                    "kube-controller-manager",
                    components::controller_manager_args(ctx),
                )
                .with_readiness(tcp(10257), minute),
                kube("kube-scheduler", components::scheduler_args(ctx)).with_readiness(tcp(10259), minute),
            ],
        ])
    }

    /// What every node runs: containerd, kubelet, kube-proxy.
    pub(super) fn node_groups(
        &self,
        ctx: &Ctx<'_>,
        kubebin: &Path,
    ) -> Result<Vec<Vec<ComponentSpec>>, DaemonError> {
        let kube = |name: &str, args: Vec<String>| self.kube_spec(kubebin, name, args);
        let logs = self.opts.layout.logs_dir();
        let path_env = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        let runtime = self.runtime()?.clone();
        let containerd_sock = self.opts.layout.containerd_socket();
        let images = self.opts.images_dir.clone();
        let ctr = runtime.ctr();
        let imported = Arc::new(tokio::sync::Mutex::new(false));
        let containerd_ready = Probe::custom("containerd socket and images", move || {
            let (sock, images, imported, ctr) = (
                containerd_sock.clone(),
                images.clone(),
                imported.clone(),
                ctr.clone(),
            );
            async move {
                if tokio::net::UnixStream::connect(&sock).await.is_err() {
                    return false;
                }
                let mut done = imported.lock().await;
                if !*done {
                    *done = tokio::task::spawn_blocking(move || import_images(&ctr, &sock, &images))
                        .await
                        .unwrap_or(false);
                }
                *done
            }
        });
        let http = |url: &str| Probe::http_get(url).map_err(DaemonError::Probe);
        let minute = Duration::from_secs(120);
        Ok(vec![
            vec![
                ComponentSpec::new("containerd", runtime.containerd(), &logs)
                    .with_args(components::containerd_args(ctx))
                    .with_env("PATH", runtime.path_env(path_env))
                    .with_readiness(containerd_ready, minute),
            ],
            vec![
                kube("kubelet", components::kubelet_args(ctx))
                    .with_env("PATH", path_env)
                    .with_readiness(http("http://127.0.0.1:10248/healthz")?, minute),
            ],
            vec![
                kube("kube-proxy", components::kube_proxy_args(ctx))
                    .with_env("PATH", path_env)
                    .with_readiness(http("http://127.0.0.1:10256/healthz")?, minute),
            ],
        ])
    }
}

/// Import every image tarball into containerd's k8s.io namespace and pin it (idempotent).
/// Pinned, because none of them can be pulled back on an offline host: the kubelet's image
/// GC (on above 85 % disk use, assets/kubelet/config.yaml) then frees only other images.
fn import_images(ctr: &Path, sock: &Path, dir: &Path) -> bool {
    // Every image of the catalog whose tarball was built; only the sandbox image is required,
    // the add-ons are imported when scripts/build-images.sh packed them.
    for entry in crate::images::catalog::all() {
        let tarball = dir.join(&entry.tarball);
        if !tarball.is_file() {
            if entry.required {
                tracing::error!(path = %tarball.display(), image = %entry.reference, "required image missing");
                return false;
            }
            continue;
        }
        let imported = crate::images::import(ctr, sock, &tarball)
            .and_then(|()| crate::images::pin(ctr, sock, &entry.reference));
        if let Err(e) = imported {
            tracing::warn!(error = %e, "image import failed; retrying");
            return false;
        }
    }
    true
}
