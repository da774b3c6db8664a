//! Shrinking the cluster: `remove-node` (its Node, its datastore member, its record), `leave`,
//! and a node noticing that the cluster removed it.

use std::sync::Arc;

use super::{Daemon, DaemonError, Refusal};
use crate::cluster::client;
use crate::cluster::registry::{self, MemberRecord};
use crate::cluster::wire::*;

impl Daemon {
    /// `k8sd remove-node NAME [--force]`: its Node object, its datastore member (refusing to
    /// break quorum unless forced, before anything is removed), and its record. A removed
    /// control-plane node notices it is no longer a member and stops; a removed worker learns
    /// it from the cluster API and stops.
    pub async fn remove_node(&self, name: &str, force: bool) -> Result<(), DaemonError> {
        let (r, ds) = self.control_plane_node("remove-node")?;
        if name == r.cfg.node_name {
            return Err(Refusal::RemoveSelf(name.to_string()).into());
        }
        let rec = registry::get::<MemberRecord>(&ds, &registry::member_key(name)).await?;
        let raft_member = ds.members().into_iter().find(|m| m.info.name == name);
        if rec.is_none() && raft_member.is_none() {
            return Err(Refusal::NoSuchNode(name.to_string()).into());
        }
        // Refused before anything changes when the removal would break quorum.
        if let Some(m) = &raft_member
            && !force
        {
            ds.check_removal(m.id).await?;
        }
        // The Node first, while that node's kube-apiserver still serves: once its member is
        // removed the apiserver turns unready, and the local load balancer (which admin.conf
        // points at) closes every connection to it, a kubectl in flight included.
        // Each step is repeatable, so a failure says to run the command again, which finishes
        // from where it stopped.
        self.kubectl()?
            .delete_node(name)
            .await
            .map_err(|e| DaemonError::RemovalIncomplete {
                name: name.to_string(),
                source: Box::new(e.into()),
                state: "Nothing of it was removed yet (check `k8sd kubectl get nodes`)",
            })?;
        if let Some(m) = raft_member {
            let outcome =
                ds.remove_member(m.id, force)
                    .await
                    .map_err(|e| DaemonError::RemovalIncomplete {
                        name: name.to_string(),
                        source: Box::new(e.into()),
                        state: "Its Node is deleted but it is still a datastore member",
                    })?;
            tracing::info!(node = %name, ?outcome, "removed a datastore member");
        }
        // The record last: a removed node stops itself once no control-plane node knows it.
        registry::txn(
            &ds,
            vec![],
            vec![registry::delete_op(&registry::member_key(name))],
        )
        .await
        .map_err(|e| DaemonError::RemovalIncomplete {
            name: name.to_string(),
            source: Box::new(e.into()),
            state: "Its Node and datastore member are removed but its record is not",
        })?;
        Ok(())
    }

    /// `k8sd leave`: take this node out of its cluster, stop its services, and forget the
    /// cluster's state here, so the machine can `k8sd join` again.
    pub async fn leave(&self, force: bool) -> Result<(), DaemonError> {
        let r = self.running_node("leave")?;
        let name = r.cfg.node_name.clone();
        match &r.datastore {
            Some(ds) => {
                let me = ds.meta().member_id;
                let others = ds.members().iter().filter(|m| m.id != me).count();
                if others == 0 && !force {
                    return Err(Refusal::LastControlPlane.into());
                }
                if others > 0 {
                    // Ask the leader first, so a removal that would break quorum is refused
                    // before any record is deleted: a refused leave changes nothing.
                    if !force {
                        ds.check_removal(me).await?;
                    }
                    // Kubernetes records first, while this node still has a say in the datastore.
                    self.kubectl()?
                        .delete_node(&name)
                        .await
                        .map_err(|source| DaemonError::LeaveKubectl { source })?;
                    registry::txn(
                        ds,
                        vec![],
                        vec![registry::delete_op(&registry::member_key(&name))],
                    )
                    .await?;
                    ds.remove_member(me, force).await?;
                }
            }
            None => {
                let req = MembershipRequest {
                    version: WIRE_VERSION,
                    leave: true,
                    versions: None,
                };
                let _: MembershipReply = self.worker_call(&r.cfg, &req).await?;
            }
        }
        self.stop().await;
        self.set_phase(super::Phase::Uninitialised);
        self.forget_cluster();
        tracing::info!(node = %name, "left the cluster");
        Ok(())
    }

    /// Forget this node's cluster state (after leaving or being removed); logs stay.
    pub(crate) fn forget_cluster(&self) {
        let l = &self.opts.layout;
        let _ = std::fs::remove_file(l.node_file());
        for d in [l.pki_dir(), l.kubeconfig_dir(), l.datastore_dir()] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    /// Stop this node when the cluster has removed it: a control-plane node that is no longer a
    /// datastore member, a worker whose record is gone. Checked every 10 s.
    pub(crate) fn spawn_removal_watch(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut misses = 0;
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                let Some(d) = me.upgrade() else { return };
                let Some(r) = d.running() else { return };
                // A removed replica may never hear of its own removal, so ask the other
                // control-plane nodes too: their registry is the authority.
                let (in_raft, addrs) = match &r.datastore {
                    Some(ds) => {
                        let id = ds.meta().member_id;
                        let members = ds.members();
                        let addrs = members
                            .iter()
                            .filter(|m| m.id != id)
                            .filter_map(|m| m.info.peer_addr.parse::<std::net::SocketAddr>().ok())
                            .map(|a| a.ip())
                            .collect();
                        (members.is_empty() || members.iter().any(|m| m.id == id), addrs)
                    }
                    None => (true, r.cfg.control_plane.clone()),
                };
                // Carries this node's versions, so a worker upgraded in place shows them.
                let req = MembershipRequest {
                    version: WIRE_VERSION,
                    leave: false,
                    versions: Some(super::versions::this_node()),
                };
                let asked = d
                    .node_call::<_, MembershipReply>(&addrs, client::Rpc::Membership, &req)
                    .await;
                let removed = !in_raft || matches!(asked, Ok(MembershipReply { member: false, .. }));
                // Two checks in a row, so a passing glitch never stops a node.
                misses = if removed { misses + 1 } else { 0 };
                if misses >= 2 {
                    tracing::warn!("this node was removed from the cluster; stopping its services");
                    d.stop().await;
                    d.set_phase(super::Phase::Failed(
                        "removed from the cluster; its services are stopped. Wipe the data dir and `k8sd join` again to return".into(),
                    ));
                    return;
                }
            }
        });
    }
}
