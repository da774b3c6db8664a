//! `k8sd reset`: leave the cluster if this node is in one (refused where that would break the
//! datastore's quorum, unless `--force`), then remove everything the node put on the host.

use super::exit::fail;
use anyhow::bail;

use super::cluster::call;
use crate::daemon::ControlClient;
use crate::daemon::api::{API_VERSION, Request};
use crate::daemon::config::NodeConfig;
use crate::paths::Layout;
use crate::reset::select::{Cidr, LeaveStep, leave_step};
use crate::reset::{self, ResetError, Target};

#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// Reset even where leaving would break the datastore's quorum, on the last control-plane
    /// node (the cluster is destroyed), or when the cluster cannot be reached to leave it.
    #[arg(long)]
    pub force: bool,
    /// The kubelet's cgroup root the node ran with (`k8sd run --cgroup-root`); the node's
    /// rendered kubelet configuration wins when it is still there.
    #[arg(long, env = "K8SD_CGROUP_ROOT", default_value = "/")]
    pub cgroup_root: String,
}

pub fn reset(layout: Layout, args: ResetArgs) -> anyhow::Result<()> {
    reset::preflight(&layout)?;
    // Read before leaving: a successful leave deletes node.yaml.
    let cfg = match read_node_config(&layout) {
        Ok(cfg) => cfg,
        Err(e) if args.force => {
            eprintln!("warning: {e}; going on without it (--force)");
            None
        }
        Err(e) => return Err(e.into()),
    };
    let client = ControlClient::new(layout.control_socket());
    match leave_step(layout.node_file().exists(), client.is_running(), args.force) {
        LeaveStep::Skip => {}
        LeaveStep::Leave { force } => match call(
            &layout,
            Request::Leave {
                version: API_VERSION,
                force,
            },
        ) {
            Ok(_) => println!("left the cluster"),
            Err(e) if force => {
                eprintln!("warning: could not leave the cluster ({e:#}); resetting anyway (--force)")
            }
            Err(e) => fail!(
                Refused,
                "k8sd reset refused, nothing was changed: {e:#}. `k8sd reset --force` resets this node anyway"
            ),
        },
        LeaveStep::RefuseUnreachable => fail!(
            Refused,
            "k8sd reset refused, nothing was changed: this node is initialised ({}) but its daemon does not \
             answer on {}, so it cannot leave the cluster or check that its departure keeps the datastore's \
             quorum. Start it (`k8sd run`) and retry, or run `k8sd reset --force` and then \
             `k8sd remove-node NAME` on a control-plane node",
            layout.node_file().display(),
            layout.control_socket().display()
        ),
        LeaveStep::SkipForced => eprintln!(
            "warning: the daemon does not answer on {}; resetting without leaving the cluster (--force). \
             Remove this node with `k8sd remove-node NAME` on a control-plane node",
            layout.control_socket().display()
        ),
    }
    let target = Target {
        cgroup_root: kubelet_cgroup_root(&layout).unwrap_or(args.cgroup_root),
        service_route: cfg.as_ref().and_then(|c| {
            let cidr = c.service_cidr.parse::<Cidr>().ok()?;
            Some((cidr, c.advertise_address))
        }),
        pod_cidr: cfg.as_ref().and_then(|c| c.pod_cidr.parse::<Cidr>().ok()),
        layout,
    };
    let report = reset::run(&target);
    for line in &report.removed {
        println!("  {line}");
    }
    if !report.remaining.is_empty() {
        bail!(
            "reset left {} thing(s) behind: {}. Run `k8sd reset` again; if they stay, remove them by hand",
            report.remaining.len(),
            report.remaining.join("; ")
        );
    }
    println!(
        "this node is reset: nothing of {} or {} remains",
        target.layout.data_dir.display(),
        target.layout.run_dir.display()
    );
    Ok(())
}

fn read_node_config(layout: &Layout) -> Result<Option<NodeConfig>, ResetError> {
    let path = layout.node_file();
    match std::fs::read_to_string(&path) {
        Ok(text) => serde_yaml::from_str(&text)
            .map(Some)
            .map_err(|e| ResetError::NodeConfig {
                path,
                reason: e.to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(ResetError::NodeConfig {
            path,
            reason: e.to_string(),
        }),
    }
}

/// The `cgroupRoot` of the node's rendered kubelet configuration: what its pods really used.
fn kubelet_cgroup_root(layout: &Layout) -> Option<String> {
    let path = layout.config_dir().join("kubelet.yaml");
    let text = std::fs::read_to_string(&path).ok()?;
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).ok()?;
    doc.get("cgroupRoot")?.as_str().map(str::to_owned)
}
