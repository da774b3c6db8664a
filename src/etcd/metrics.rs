//! What the datastore's `/metrics` serves: etcd's metrics (`metrics::etcd`) with this node's
//! scrape-time values, the gRPC server family and the process metrics.

use crate::metrics::{Text, etcd, grpc::GRPC};
use crate::node::Node;

/// Render the datastore's families into `out`. Reading the database size and key count is
/// one short read transaction; if it fails the values are reported as 0 and the failure logged,
/// so a scrape still shows leader and disk latencies when the store is in trouble.
pub async fn render(node: &Node, out: &mut Text) {
    let sizes = node
        .read(|r| {
            let (size, in_use) = r.db_size()?;
            Ok((size, in_use, r.key_count()?))
        })
        .await;
    let (db_size, db_size_in_use, keys) = sizes.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "metrics: cannot read the database size and key count");
        (0, 0, 0)
    });
    let meta = node.meta();
    let (committed_index, applied_index) = node.commit_positions();
    let scrape = etcd::Scrape {
        has_leader: node.has_leader(),
        is_leader: node.is_leader(),
        committed_index,
        applied_index,
        db_size,
        db_size_in_use,
        quota_bytes: node.alarm().quota_bytes(),
        keys,
        current_revision: meta.current_rev,
        compact_revision: meta.compact_rev,
        member_id: meta.member_id,
        version: crate::EMULATED_ETCD_VERSION.to_owned(),
    };
    etcd::render(out, &scrape);
    GRPC.render(out);
}

/// The whole exposition of a `k8sd datastore`: the datastore's families and the process'.
pub async fn exposition(node: &Node) -> String {
    let mut out = Text::new();
    render(node, &mut out).await;
    etcd::render_process(&mut out);
    out.finish()
}
