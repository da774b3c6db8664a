//! Cluster membership through the node: the member list, removals and their dry run. A
//! standalone node answers as a cluster of one voter, itself.

use super::{Backend, Node, NodeError};

impl Node {
    /// Every member of the cluster (a standalone node lists itself as the only voter). Use it
    /// to map a member's name to the id `remove_member` takes.
    pub fn members(&self) -> Vec<crate::raft::Member> {
        match &self.inner.backend {
            Backend::Raft(raft) => raft.status().member_list(),
            Backend::Local { .. } => vec![crate::raft::Member {
                id: self.meta().member_id,
                info: crate::raft::NodeInfo {
                    name: self.inner.config.name.clone(),
                    peer_addr: String::new(),
                    client_addr: self.inner.config.client_urls.join(","),
                },
                voter: true,
            }],
        }
    }

    /// Remove member `id` from the cluster; callable on any member (forwarded to the leader).
    /// Refuses to break a healthy quorum unless `force`, and never removes the last voter.
    /// See `raft::RaftNode::remove_member` for the rules. The removed node keeps running
    /// until it is shut down.
    pub async fn remove_member(&self, id: u64, force: bool) -> Result<crate::raft::RemoveOutcome, NodeError> {
        use crate::raft::{RaftNodeError, RemoveError};
        match &self.inner.backend {
            Backend::Raft(raft) => Ok(raft.remove_member(id, force).await?),
            // A standalone node is a cluster of one voter: itself.
            Backend::Local { .. } => Err(NodeError::Raft(RaftNodeError::Remove(
                if id == self.meta().member_id {
                    RemoveError::LastVoter(id)
                } else {
                    RemoveError::UnknownMember(id)
                },
            ))),
        }
    }

    /// Whether removing member `id` (without force) would go ahead now; changes nothing. A
    /// standalone node is its own last voter, so the answer there is `LastVoter`.
    pub async fn check_removal(&self, id: u64) -> Result<(), NodeError> {
        use crate::raft::{RaftNodeError, RemoveError};
        match &self.inner.backend {
            Backend::Raft(raft) => Ok(raft.check_removal(id).await?),
            Backend::Local { .. } => Err(NodeError::Raft(RaftNodeError::Remove(RemoveError::LastVoter(id)))),
        }
    }
}
