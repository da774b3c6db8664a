//! `k8sd secrets rotate-key`: the daemon runs the rotation and streams its steps.

use anyhow::{Context, bail};

use super::exit;
use crate::daemon::ControlClient;
use crate::daemon::api::{API_VERSION, Message, Request};
use crate::paths::Layout;

#[derive(Debug, clap::Subcommand)]
pub enum SecretsCommand {
    /// Encrypt every Secret with a new key and drop the old one, on every control-plane node
    /// (each kube-apiserver restarts twice or three times, one node at a time). Safe to run
    /// again after an interruption: it finishes the rotation under way.
    RotateKey,
}

pub fn run(layout: Layout, cmd: SecretsCommand) -> anyhow::Result<()> {
    let SecretsCommand::RotateKey = cmd;
    let client = ControlClient::new(layout.control_socket());
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let req = Request::RotateSecretsKey { version: API_VERSION };
    let msg = rt.block_on(client.call(&req, |m| {
        if let Message::Progress { step } = m {
            println!("{step}");
        }
    }))?;
    match msg {
        Message::Done => Ok(()),
        Message::Error { error, kind } => Err(exit::failure(kind, error)),
        other => bail!("unexpected answer from the daemon: {other:?}"),
    }
}
