//! Bringing the node up in dependency order, after `init`, a join or a restart: PKI, the
//! datastore and the cluster records (control-plane nodes), the local API load balancer,
//! rendered configs, the image mirror and `/metrics`, the supervised components, the node's
//! background loops, then Ready.

use std::sync::Arc;

use tokio::sync::watch;

use super::components::{self, Ctx};
use super::config::{self, NodeConfig, Role};
use super::host::{ensure_cgroup_root, mkdir, write_file};
use super::{
    Daemon, DaemonError, Phase, Progress, RunningNode, backups, join, metrics, mirror, noderole, podnet,
    report, storagedir, svcroute,
};
use crate::paths::Layout;
use crate::pki::{self, NodeIdentity, NodeRole};
use crate::supervisor::{Supervisor, SupervisorConfig};

impl Daemon {
    pub(super) async fn bring_up(
        self: &Arc<Self>,
        cfg: NodeConfig,
        progress: Option<Progress>,
        pending: Option<join::PendingJoin>,
    ) -> Result<(), DaemonError> {
        let l = self.opts.layout.clone();
        let step = |s: &str| {
            self.set_phase(Phase::Starting(s.to_string()));
            report(&progress, s);
        };
        let kubebin = self.kubebin()?;
        // node.yaml's `disable` (from `init --disable`) waits for the first reconcile to record
        // it in the datastore; replayed on every start, it only fills in what is still unset.
        let disabled = crate::addons::parse_list(&cfg.disable).map_err(config::ConfigError::from)?;
        if !disabled.is_empty() {
            self.addons.set_init_disabled(disabled);
        }
        make_node_dirs(&l)?;
        let identity = node_identity(&cfg)?;
        let (etcd_stop, stop_rx) = watch::channel(false);
        let backups_stop = etcd_stop.subscribe();
        let datastore = if cfg.role == Role::ControlPlane {
            step("generating certificates and kubeconfigs");
            write_control_plane_pki(&l, &identity, &kubeconfig_server())?;
            if pending.is_some() {
                step("joining the datastore (as a learner, promoted to voter once caught up)");
            } else if progress.is_none() {
                // A restart: after a whole-cluster one, this waits for a second member.
                step("starting the datastore, waiting for a quorum of its members");
            } else {
                step("starting the datastore");
            }
            let peers = pending
                .as_ref()
                .map(|p| p.datastore_peers.clone())
                .unwrap_or_default();
            let datastore = match self.start_datastore(&cfg, peers).await {
                Ok(d) => d,
                Err(e) => {
                    if pending.is_some() {
                        self.wipe_failed_join();
                    }
                    return Err(e);
                }
            };
            if let Some(p) = &pending {
                step("recording this node in the cluster (the token is consumed now)");
                if let Err(e) = self.complete_join(p, &cfg).await {
                    tracing::error!(error = %e, "completing the join failed; leaving the datastore group");
                    self.abandon_datastore(&datastore).await;
                    self.wipe_failed_join();
                    return Err(e);
                }
            } else {
                datastore.until_leader(&step).await?;
                self.register_founder(&datastore, &cfg).await?;
            }
            step("checking this node's Kubernetes version against the control plane's");
            self.check_and_publish_versions(&datastore, &cfg).await?;
            self.serve_datastore_and_api(&datastore, &cfg, stop_rx).await?;
            Some(datastore)
        } else {
            // Renew before the kubelet starts, so a worker that was down for months comes back
            // with valid certificates. Only a due certificate costs a call; an unreachable
            // control plane is not fatal here (the renewal loop retries).
            step("checking certificates");
            match self.renew_worker_certs(&cfg, &identity).await {
                Ok(r) if !r.is_empty() => tracing::info!(files = r.changes.len(), "renewed certificates"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "certificate renewal failed; retrying in 12 h"),
            }
            step("checking this node's Kubernetes version against the control plane's");
            self.check_worker_versions(&cfg).await?;
            pki::ensure_kubeconfigs(
                &l.pki_dir(),
                &l.kubeconfig_dir(),
                NodeRole::Worker,
                &kubeconfig_server(),
            )?;
            None
        };

        step("starting the local API load balancer");
        let lb = Arc::new(self.start_lb(&cfg, datastore.as_ref()).await?);

        step("rendering component configuration");
        let encrypt_secrets = cfg.role == Role::ControlPlane && self.secrets_encryption()?;
        let ctx = Ctx {
            layout: &l,
            cfg: &cfg,
            cgroup_root: &self.opts.cgroup_root,
            encrypt_secrets,
        };
        self.write_component_configs(&ctx)?;
        ensure_cgroup_root(&self.opts.cgroup_root)?;
        step("starting the image mirror");
        let mirror = mirror::start(&l, &cfg, self.runtime()?).await?;

        let supervisor = Arc::new(Supervisor::new(SupervisorConfig {
            run_dir: l.pid_dir(),
            instance: l.data_dir.clone().into_os_string(),
        }));
        step("starting the metrics listener");
        let node_metrics =
            metrics::start(&l, &cfg, datastore.clone(), supervisor.clone(), lb.clone()).await?;
        *self.node.lock().unwrap_or_else(|e| e.into_inner()) = Some(RunningNode {
            cfg: cfg.clone(),
            datastore,
            supervisor: supervisor.clone(),
            etcd_stop,
            lb: Some(lb),
            _mirror: Arc::new(mirror),
            _metrics: node_metrics.map(Arc::new),
        });
        // Before the components start: kube-apiserver may call a webhook Service at once.
        svcroute::spawn(self, identity.service_cidr, cfg.advertise_address);

        let groups = match cfg.role {
            Role::ControlPlane => {
                step(
                    "starting kube-apiserver, controller-manager, scheduler, containerd, kubelet and kube-proxy",
                );
                let mut g = self.control_plane_groups(&ctx, &kubebin)?;
                g.extend(self.node_groups(&ctx, &kubebin)?);
                g
            }
            Role::Worker => {
                step("starting the API load balancer, containerd, kubelet and kube-proxy");
                self.node_groups(&ctx, &kubebin)?
            }
        };
        supervisor
            .start(groups)
            .await
            .map_err(|source| DaemonError::StartComponents { source })?;
        podnet::spawn(self.clone(), cfg.clone());
        storagedir::spawn(self, cfg.clone());
        if cfg.role == Role::ControlPlane {
            noderole::spawn(self, cfg.node_name.clone());
        }
        // Checked at init and at load; a plan that fails here was edited while running.
        match cfg.backup_plan() {
            Ok(plan) => backups::spawn(
                self.opts.layout.clone(),
                cfg.clone(),
                plan,
                self.backups.clone(),
                move || !*backups_stop.borrow(),
            ),
            Err(e) => tracing::error!(error = %e, "scheduled backups are not running"),
        }

        step("waiting for the node to become Ready");
        self.wait_until_ready(&cfg).await?;
        self.set_phase(Phase::Running);
        report(&progress, "node is Ready");
        self.spawn_cert_renewal(cfg.clone(), identity, supervisor);
        if cfg.role == Role::ControlPlane {
            self.spawn_addons(cfg.clone());
        }
        self.spawn_removal_watch();
        let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
        Ok(())
    }

    /// The rendered component configuration files (0600) and containerd's state dir.
    pub(super) fn write_component_configs(&self, ctx: &Ctx<'_>) -> Result<(), DaemonError> {
        for (path, text) in components::config_files(ctx, self.runtime()?, &self.opts.cni_bin_dir)? {
            write_file(&path, text.as_bytes(), 0o600)?;
        }
        mkdir(&ctx.layout.containerd_state(), 0o711)
    }

    /// Whether kube-apiserver gets `--encryption-provider-config`: the file exists and is
    /// valid. A malformed file stops the start (an apiserver without it could not read the
    /// encrypted Secrets); a missing one only warns, since a node initialised by an older
    /// k8sd has none, and making one here would give this apiserver a key the others lack.
    pub(super) fn secrets_encryption(&self) -> Result<bool, DaemonError> {
        let path = self.opts.layout.encryption_config();
        match pki::read_encryption_config(&path)? {
            Some((_, key)) if key.provider == pki::IDENTITY => {
                tracing::warn!(
                    keys = ?key.keys,
                    "a first Secrets key is staged but not written with yet: Secrets are still stored \
                     in plaintext; run `k8sd secrets rotate-key` on a control-plane node to finish"
                );
                Ok(true)
            }
            Some((_, key)) => {
                tracing::info!(provider = %key.provider, key = %key.write_key, "Secrets are encrypted at rest");
                Ok(true)
            }
            None => {
                tracing::warn!(
                    path = %path.display(),
                    "no Secrets encryption configuration: Secrets are stored in plaintext. A node \
                     initialised by an older k8sd has none: run `k8sd secrets rotate-key` on a \
                     control-plane node to give the cluster its first key (or, if another \
                     control-plane node has the file, copy it here and restart k8sd)"
                );
                Ok(false)
            }
        }
    }
}

/// The data dir's subdirectories every node's start writes into.
pub(super) fn make_node_dirs(l: &Layout) -> Result<(), DaemonError> {
    for dir in [l.pki_dir(), l.kubeconfig_dir(), l.config_dir(), l.datastore_dir()] {
        mkdir(&dir, 0o700)?;
    }
    Ok(())
}

/// What this node's certificates must name.
pub(super) fn node_identity(cfg: &NodeConfig) -> Result<NodeIdentity, DaemonError> {
    Ok(NodeIdentity {
        node_name: cfg.node_name.clone(),
        node_ips: vec![cfg.advertise_address],
        extra_sans: cfg.extra_sans.clone(),
        service_cidr: cfg.service_cidr.parse()?,
    })
}

/// The server every kubeconfig names: the local API load balancer, so components keep working
/// (and keep their leader leases) when this node's own apiserver is down.
pub(super) fn kubeconfig_server() -> String {
    format!("https://{}", components::lb_addr())
}

/// A control-plane node's CAs, leaves and kubeconfigs (naming `server`): made when missing,
/// renewed when due, left alone otherwise.
pub(super) fn write_control_plane_pki(
    l: &Layout,
    identity: &NodeIdentity,
    server: &str,
) -> Result<(), DaemonError> {
    pki::ensure_control_plane_pki(&l.pki_dir(), identity)?;
    pki::ensure_kubeconfigs(&l.pki_dir(), &l.kubeconfig_dir(), NodeRole::ControlPlane, server)?;
    Ok(())
}
