//! Cluster verbs: `add-node`, `join`, `tokens`, `remove-node`, `leave`, `stop`, `start`.

use anyhow::{Context, bail};

use super::exit::{self, fail};
use super::node::{ControlPlaneFlags, ExtraArgFlags, RunArgs, check_writable, drive};
use crate::cluster::token::{self, JoinToken};
use crate::daemon::ControlClient;
use crate::daemon::api::{API_VERSION, JoinArgs, Message, Request};
use crate::daemon::config;
use crate::paths::Layout;

#[derive(Debug, clap::Args)]
pub struct AddNodeArgs {
    /// Mint a token for a worker (kubelet and kube-proxy only; never receives CA keys).
    #[arg(long)]
    pub worker: bool,
    /// Reserve the token for this node name; required with --worker, whose name comes from
    /// its token and never from the joiner.
    #[arg(long, required_if_eq("worker", "true"))]
    pub name: Option<String>,
    /// How long the token stays valid (e.g. 24h, 90m, 600s).
    #[arg(long, default_value = "24h")]
    pub ttl: String,
}

#[derive(Debug, clap::Args)]
pub struct JoinCliArgs {
    /// The token printed by `k8sd add-node` on a control-plane node. Prefer --token-file: a
    /// token on the command line is visible to other users in /proc/PID/cmdline.
    #[arg(required_unless_present = "token_file", conflicts_with = "token_file")]
    pub token: Option<String>,
    /// Read the token from this file, or from standard input with `-`.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Join as a worker (needs a token minted with `add-node --worker`).
    #[arg(long)]
    pub worker: bool,
    /// Kubernetes node name. A token that names the node (every worker token) decides it, and
    /// a different --name is refused; else (a control-plane token) the default is the host name.
    #[arg(long, alias = "node-name")]
    pub name: Option<String>,
    /// This node's address for the cluster (default: first non-loopback IPv4).
    #[arg(long)]
    pub advertise_address: Option<String>,
    /// A control-plane joiner's extra subject alternative names for its API server
    /// certificate (comma-separated), beside those the cluster was initialised with, which
    /// every control-plane node carries.
    #[arg(long, value_delimiter = ',')]
    pub extra_sans: Vec<String>,
    #[command(flatten)]
    pub extra_args: ExtraArgFlags,
    /// A control-plane joiner's datastore quota and backup schedule, as `k8sd init` takes them.
    #[command(flatten)]
    pub control_plane: ControlPlaneFlags,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Debug, clap::Subcommand)]
pub enum TokensCommand {
    /// Every token with its role, state and expiry (secrets are never shown again).
    List,
    /// Revoke a token by id (see `tokens list`).
    Revoke { id: String },
}

#[derive(Debug, clap::Args)]
pub struct RemoveNodeArgs {
    pub name: String,
    /// Remove even if the datastore would lose its quorum of healthy voters.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct LeaveArgs {
    /// Leave even if the datastore would lose its quorum of healthy voters.
    #[arg(long)]
    pub force: bool,
}

pub(super) fn call(layout: &Layout, req: Request) -> anyhow::Result<Message> {
    let client = ControlClient::new(layout.control_socket());
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let msg = rt.block_on(client.call(&req, |_| {}))?;
    match msg {
        Message::Error { error, kind } => Err(exit::failure(kind, error)),
        m => Ok(m),
    }
}

pub fn add_node(layout: Layout, args: AddNodeArgs) -> anyhow::Result<()> {
    let ttl_secs = token::parse_ttl(&args.ttl).map_err(anyhow::Error::msg)?;
    if let Some(n) = &args.name {
        config::validate_node_name(n)?;
    }
    let req = Request::AddNode {
        version: API_VERSION,
        worker: args.worker,
        name: args.name,
        ttl_secs,
    };
    match call(&layout, req)? {
        Message::Token { token, expires } => {
            let verb = if args.worker {
                "k8sd join --worker"
            } else {
                "k8sd join"
            };
            eprintln!("single-use token, valid until {expires}. On the new node run:\n  {verb} <token>");
            println!("{token}");
            Ok(())
        }
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}

/// The token from the command line, a file, or standard input (`--token-file -`).
fn read_token(args: &JoinCliArgs) -> anyhow::Result<String> {
    use std::io::Read;
    let text = match (&args.token, &args.token_file) {
        (Some(t), _) => return Ok(t.clone()),
        (None, Some(p)) if p.as_os_str() == "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("cannot read the join token from standard input")?;
            s
        }
        (None, Some(p)) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read the join token from {}", p.display()))?,
        (None, None) => fail!(
            Usage,
            "give the join token, or --token-file FILE (- for standard input)"
        ),
    };
    let token = text.trim();
    if token.is_empty() {
        fail!(
            Usage,
            "the join token file is empty; put the line `k8sd add-node` printed in it"
        );
    }
    Ok(token.to_string())
}

pub fn join(layout: Layout, args: JoinCliArgs) -> anyhow::Result<()> {
    // Everything that can be checked here is, before a daemon starts or a file is written.
    if args.worker && args.control_plane.any() {
        fail!(
            Usage,
            "--quota-backend-bytes, --backup-schedule and --backup-retention are for control-plane nodes (a worker has no datastore and takes no backups); nothing was changed. Drop them, or join with a control-plane token and without --worker"
        );
    }
    if args.worker && !args.extra_sans.is_empty() {
        fail!(
            Usage,
            "--extra-sans names a control-plane node's API server certificate; a worker serves no API; nothing was changed. Drop it, or join with a control-plane token and without --worker"
        );
    }
    let token = read_token(&args)?;
    let t = JoinToken::decode(&token)?;
    if layout.node_file().exists() {
        fail!(
            AlreadyInitialised,
            "this node is already initialised ({} exists); nothing was changed. `k8sd join` is for a fresh node",
            layout.node_file().display()
        );
    }
    let req = config::InitRequest {
        node_name: t.node_name(args.name.as_deref())?,
        advertise_address: args.advertise_address.clone(),
        extra_sans: args.extra_sans.clone(),
        extra_args: args.extra_args.to_extra_args()?,
        quota_backend_bytes: args.control_plane.quota_backend_bytes,
        backup_schedule: args.control_plane.backup_schedule.clone(),
        backup_retention: args.control_plane.backup_retention,
        ..Default::default()
    };
    config::validate(&req, &config::host_name(), &config::local_addresses())?;
    check_writable(&layout.data_dir)?;
    let join = JoinArgs {
        token,
        worker: args.worker,
        node_name: req.node_name,
        advertise_address: args.advertise_address,
        extra_args: req.extra_args,
        extra_sans: req.extra_sans,
        quota_backend_bytes: req.quota_backend_bytes,
        backup_schedule: req.backup_schedule,
        backup_retention: req.backup_retention,
    };
    let ports = if args.worker {
        config::WORKER_PORTS
    } else {
        config::PORTS
    };
    drive(
        &layout,
        &args.run,
        Request::Join {
            version: API_VERSION,
            join,
        },
        ports,
        args.timeout,
    )
}

pub fn tokens(layout: Layout, cmd: TokensCommand) -> anyhow::Result<()> {
    match cmd {
        TokensCommand::List => match call(&layout, Request::Tokens { version: API_VERSION })? {
            Message::Tokens { tokens } => {
                println!(
                    "{:<14} {:<14} {:<12} {:<22} EXPIRES",
                    "ID", "ROLE", "NAME", "STATE"
                );
                for t in tokens {
                    println!(
                        "{:<14} {:<14} {:<12} {:<22} {}",
                        t.id,
                        t.role,
                        t.name.unwrap_or_else(|| "-".into()),
                        t.state,
                        t.expires
                    );
                }
                Ok(())
            }
            other => bail!("unexpected answer from the daemon: {other:?}"),
        },
        TokensCommand::Revoke { id } => {
            call(
                &layout,
                Request::RevokeToken {
                    version: API_VERSION,
                    id: id.clone(),
                },
            )?;
            println!("token {id} revoked");
            Ok(())
        }
    }
}

pub fn remove_node(layout: Layout, args: RemoveNodeArgs) -> anyhow::Result<()> {
    call(
        &layout,
        Request::RemoveNode {
            version: API_VERSION,
            name: args.name.clone(),
            force: args.force,
        },
    )?;
    println!("node {} removed", args.name);
    Ok(())
}

pub fn leave(layout: Layout, args: LeaveArgs) -> anyhow::Result<()> {
    call(
        &layout,
        Request::Leave {
            version: API_VERSION,
            force: args.force,
        },
    )?;
    println!("this node left the cluster and its services are stopped");
    Ok(())
}

pub fn component(layout: Layout, name: String, start: bool) -> anyhow::Result<()> {
    call(
        &layout,
        Request::Component {
            version: API_VERSION,
            name: name.clone(),
            start,
        },
    )?;
    println!(
        "{name} {}",
        if start {
            "started"
        } else {
            "stopped (it stays down until `k8sd start` or a k8sd restart)"
        }
    );
    Ok(())
}

/// `k8sd enable|disable NAME`: the daemon records the choice for the whole cluster and applies
/// or removes the add-on before answering.
pub fn addon(layout: Layout, name: String, enable: bool) -> anyhow::Result<()> {
    let addon = crate::addons::Addon::parse(&name)?;
    call(
        &layout,
        Request::Addon {
            version: API_VERSION,
            name: addon.name().to_string(),
            enable,
        },
    )?;
    if enable {
        println!("{addon} enabled; `k8sd status --wait-ready` waits for it to be ready");
    } else {
        println!("{addon} disabled; what k8sd created for it was removed");
    }
    Ok(())
}
