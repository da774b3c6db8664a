//! `k8sd debug`: what k8sd would do, shown without a daemon.

use anyhow::Context;

use super::node::{HostArgs, InitSettings};
use crate::daemon::Daemon;
use crate::daemon::render::RenderOptions;
use crate::paths::Layout;

#[derive(Debug, clap::Subcommand)]
pub enum DebugCommand {
    /// Write into --data-dir and --run-dir exactly what `k8sd init` writes for a control-plane
    /// node (node.yaml, the Secrets key, CAs, certificates and keys, kubeconfigs, component
    /// configs), start nothing, and print JSON: every file with its mode, each component's
    /// command line and environment in start order, and where the datastore would listen.
    /// The data dir must be new or empty; the advertise address must be this machine's.
    Render(RenderArgs),
}

#[derive(Debug, clap::Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub settings: InitSettings,
    #[command(flatten)]
    pub host: HostArgs,
    /// Also write the CNI configuration for this pod range of the Node (inside --pod-cidr;
    /// controller-manager gives the first node the first /24). The daemon writes it once the
    /// Node has its range; without a daemon nothing would.
    #[arg(long, value_name = "CIDR")]
    pub node_pod_cidr: Option<String>,
    /// The server the kubeconfigs name [default: https://127.0.0.1:6444, the local API load
    /// balancer, which only the k8sd daemon serves]. Without a daemon, name kube-apiserver
    /// itself: https://127.0.0.1:6443.
    #[arg(long, value_name = "URL")]
    pub kubeconfig_server: Option<String>,
}

pub fn run(layout: Layout, cmd: DebugCommand) -> anyhow::Result<()> {
    match cmd {
        DebugCommand::Render(args) => render(layout, args),
    }
}

fn render(layout: Layout, args: RenderArgs) -> anyhow::Result<()> {
    super::init_logging("warn");
    let req = args.settings.request()?;
    let opts = RenderOptions {
        node_pod_cidr: args.node_pod_cidr,
        kubeconfig_server: args.kubeconfig_server,
    };
    let daemon = Daemon::new(args.host.options(layout, false)?);
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    // As an error from the daemon reaches `init`: its kind and its message, which already
    // holds its causes.
    let rendered = rt
        .block_on(daemon.render(&req, &opts))
        .map_err(|e| super::exit::failure(e.kind(), e.to_string()))?;
    println!("{}", serde_json::to_string_pretty(&rendered)?);
    Ok(())
}
