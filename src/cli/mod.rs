//! Command-line interface: clap derive, one file per verb. Verbs stay thin and call into the
//! library; only this module and `main.rs` use `anyhow`.

use clap::{Parser, Subcommand};

mod backup;
mod cluster;
mod datastore;
mod debug;
pub mod exit;
mod images;
mod node;
mod recover;
mod reset;
mod secrets;

/// k8sd turns Linux machines into a Kubernetes cluster.
#[derive(Debug, Parser)]
#[command(name = "k8sd", version, about, long_about = None, after_help = exit::EXIT_CODES_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub layout: node::LayoutArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bootstrap this machine as the first control-plane node and wait until it is ready.
    Init(node::InitArgs),
    /// Mint a single-use join token for a new control-plane node (or `--worker`).
    AddNode(cluster::AddNodeArgs),
    /// Join this machine to a cluster with a token from `k8sd add-node`.
    Join(cluster::JoinCliArgs),
    /// List or revoke join tokens.
    #[command(subcommand)]
    Tokens(cluster::TokensCommand),
    /// Remove a node from the cluster: its datastore member, its Node object and its record.
    RemoveNode(cluster::RemoveNodeArgs),
    /// Remove this node from its cluster and stop its services.
    Leave(cluster::LeaveArgs),
    /// Stop one component and keep it down (e.g. `k8sd stop kube-apiserver`).
    Stop { component: String },
    /// Start a component stopped with `k8sd stop`.
    Start { component: String },
    /// Deploy a cluster add-on (dns, metrics, storage) and keep it current; on a control-plane node.
    Enable { addon: String },
    /// Remove a cluster add-on (dns, metrics, storage) and what k8sd created for it.
    Disable { addon: String },
    /// The long-running daemon (what systemd or the snap runs); idle until `init`.
    Run(node::RunArgs),
    /// Show the node, datastore, components, certificates and readiness.
    Status(node::StatusArgs),
    /// Run kubectl against this cluster with the admin kubeconfig.
    #[command(disable_help_flag = true)]
    Kubectl {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print the admin kubeconfig.
    Config,
    /// Show a component's log.
    Logs(node::LogsArgs),
    /// Write one consistent archive of this control-plane node: datastore snapshot, PKI,
    /// node and cluster config, manifest with checksums. Works while the cluster serves.
    Backup(backup::BackupArgs),
    /// Build a new single-node cluster from a `k8sd backup` archive on a fresh machine (same
    /// CA, same data, revisions preserved); other nodes then join with new tokens.
    Restore(backup::RestoreArgs),
    /// Remove everything this node put on the host: processes, containers, mounts, cgroups,
    /// the CNI bridge and routes, KUBE-*/CNI-* rules, its data and run dirs. Leaves the cluster
    /// first; refused where that would break the datastore's quorum, unless --force.
    Reset(reset::ResetArgs),
    /// After losing the datastore's quorum for good: make this surviving control-plane node
    /// the only voter with its data (daemon stopped, confirmation, backup first).
    Recover(recover::RecoverArgs),
    /// The Secrets encryption key (`rotate-key`), on a control-plane node.
    #[command(subcommand)]
    Secrets(secrets::SecretsCommand),
    /// Run the etcd-compatible datastore on its own (accepts etcd's core flags).
    Datastore(datastore::DatastoreArgs),
    /// Build, list and import the local container images (pause, busybox, add-ons).
    Images(images::ImagesArgs),
    /// What k8sd would write and run, shown without a daemon (`render`).
    #[command(subcommand)]
    Debug(debug::DebugCommand),
}

/// Parse the process arguments and run the chosen verb.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let layout_args = cli.layout;
    // Only the node verbs resolve a layout, so `datastore` and `images` work with any $SNAP.
    let layout = move || layout_args.layout();
    match cli.command {
        Command::Datastore(args) => datastore::run(args),
        Command::Init(args) => node::init(layout()?, args),
        Command::AddNode(args) => cluster::add_node(layout()?, args),
        Command::Join(args) => cluster::join(layout()?, args),
        Command::Tokens(cmd) => cluster::tokens(layout()?, cmd),
        Command::RemoveNode(args) => cluster::remove_node(layout()?, args),
        Command::Leave(args) => cluster::leave(layout()?, args),
        Command::Stop { component } => cluster::component(layout()?, component, false),
        Command::Start { component } => cluster::component(layout()?, component, true),
        Command::Enable { addon } => cluster::addon(layout()?, addon, true),
        Command::Disable { addon } => cluster::addon(layout()?, addon, false),
        Command::Run(args) => node::run(layout()?, args),
        Command::Status(args) => node::status(layout()?, args),
        Command::Kubectl { args } => node::kubectl(layout()?, args),
        Command::Config => node::config(layout()?),
        Command::Logs(args) => node::logs(layout()?, args),
        Command::Images(args) => images::run(args),
        Command::Backup(args) => backup::backup(layout()?, args),
        Command::Restore(args) => backup::restore(layout()?, args),
        Command::Reset(args) => reset::reset(layout()?, args),
        Command::Recover(args) => recover::recover(layout()?, args),
        Command::Secrets(cmd) => secrets::run(layout()?, cmd),
        Command::Debug(cmd) => debug::run(layout()?, cmd),
    }
}

/// Send logs to stderr; `RUST_LOG` overrides `level`.
pub fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    use std::io::IsTerminal;
    // Colours only on a terminal: the daemon's log file and the journal stay plain text that
    // grep can search (`source=10.0.0.5`, not escape codes around the `=`).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The process exit code of a failed command (`exit::EXIT_CODES_HELP`). clap exits with 2 itself
/// for the usage errors it finds, the same code as ours.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    exit::code(exit::kind_of(err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_worker_token_must_name_its_node() {
        use clap::Parser;
        let err = Cli::try_parse_from(["k8sd", "add-node", "--worker"]).unwrap_err();
        assert!(err.to_string().contains("--name"), "{err}");
        assert!(Cli::try_parse_from(["k8sd", "add-node", "--worker", "--name", "w1"]).is_ok());
        assert!(Cli::try_parse_from(["k8sd", "add-node"]).is_ok());
    }

    /// A worker has no datastore and takes no backups: `join --worker` with a control-plane
    /// setting is a usage error (exit 2) before the token is even read.
    #[test]
    fn a_worker_join_refuses_control_plane_settings() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        for flags in [
            &["--quota-backend-bytes", "1048576"][..],
            &["--backup-schedule", "every 1h"][..],
            &["--backup-retention", "3"][..],
        ] {
            let mut argv = vec!["k8sd", "join", "--worker", "--token-file", "/nonexistent/token"];
            argv.extend_from_slice(flags);
            let Command::Join(args) = Cli::try_parse_from(&argv).unwrap().command else {
                panic!("{argv:?} did not parse as join");
            };
            let layout = crate::paths::Layout::new(dir.path().join("data"), dir.path().join("run"));
            let err = cluster::join(layout, args).unwrap_err();
            assert_eq!(exit_code(&err), 2, "{argv:?}: {err:#}");
            assert!(err.to_string().contains("for control-plane nodes"), "{err:#}");
        }
        assert!(!dir.path().join("data").exists(), "nothing was written");
    }
}
