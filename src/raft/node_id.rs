//! This node's identity: a random `u64` kept in `<data>/raft/node-id`, never its hostname or
//! address, so renaming or readdressing a node keeps its identity and a wiped data directory
//! is a new node (docs/design/raft.md).

use std::path::Path;

use super::error::RaftNodeError;

/// `node-id` is readable by anyone: the id is no secret (every peer and `k8sd status` show it).
const NODE_ID_MODE: u32 = 0o644;

/// Load this node's id, or create one: a random non-zero u64, written atomically and durably
/// (`atomic_file`) before first use so that the id a peer learns can never change under it.
pub fn load_or_create_node_id(raft_dir: &Path) -> Result<u64, RaftNodeError> {
    let path = raft_dir.join("node-id");
    let io = |source| RaftNodeError::NodeId {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(s) => u64::from_str_radix(s.trim(), 16)
            .ok()
            .filter(|id| *id != 0)
            .ok_or_else(|| RaftNodeError::NodeIdCorrupt { path: path.clone() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(raft_dir).map_err(io)?;
            let id = rand::random::<u64>() >> 1 | 1;
            crate::atomic_file::replace(&path, format!("{id:016x}\n").as_bytes(), NODE_ID_MODE)
                .map_err(|e| io(e.source))?;
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}
