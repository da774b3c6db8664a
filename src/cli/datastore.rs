//! `k8sd datastore`: the embedded datastore as a standalone etcd-compatible server.

#[derive(Debug, clap::Args)]
pub struct DatastoreArgs {}

pub fn run(_args: DatastoreArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
