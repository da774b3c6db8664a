//! Maintenance and Cluster: real Status and MemberList (etcdctl's endpoint health and status
//! read them), HashKV with etcd's semantics, Snapshot streamed in etcd's framing,
//! MemberRemove through the quorum-safe `Node::remove_member`, this member's NOSPACE alarm
//! (`node::alarm`: listed, raised and disarmed as etcd's), a no-op defragment, and
//! Unimplemented for the rest.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::EtcdService;
use super::status::{node_status, unimplemented};
use crate::EMULATED_ETCD_VERSION;
use crate::pb::etcdserverpb as pb;

impl EtcdService {
    /// The real membership of a Raft member (every voter and learner, as the replicated
    /// membership config names them); a standalone node is a cluster of one.
    fn members(&self) -> Vec<pb::Member> {
        let Some(st) = self.node.raft_status() else {
            let meta = self.node.meta();
            return vec![pb::Member {
                id: meta.member_id,
                name: self.node.config().name.clone(),
                peer_ur_ls: Vec::new(),
                client_ur_ls: self.node.config().client_urls.clone(),
                is_learner: false,
            }];
        };
        st.members
            .iter()
            .map(|(id, info)| pb::Member {
                id: *id,
                name: info.name.clone(),
                peer_ur_ls: vec![peer_url(&info.peer_addr)],
                client_ur_ls: info
                    .client_addr
                    .split(',')
                    .filter(|u| !u.is_empty())
                    .map(str::to_string)
                    .collect(),
                is_learner: st.learners.contains(id),
            })
            .collect()
    }
}

/// `host:port` of a peer service as a URL for MemberList. Peers are plain http only on
/// loopback (the CLI refuses anything else); everywhere else they run mutual TLS.
fn peer_url(addr: &str) -> String {
    let loopback = addr
        .parse::<std::net::SocketAddr>()
        .is_ok_and(|a| a.ip().is_loopback());
    if loopback {
        format!("http://{addr}")
    } else {
        format!("https://{addr}")
    }
}

#[tonic::async_trait]
impl pb::maintenance_server::Maintenance for EtcdService {
    /// etcd's Alarm: GET lists the raised alarms (of one member, or all for member 0);
    /// ACTIVATE and DEACTIVATE answer with the alarm they changed. `etcdctl alarm disarm`
    /// lists, then deactivates each one listed. Only NOSPACE exists here, and only this member's.
    async fn alarm(&self, req: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        let req = req.into_inner();
        let me = self.node.meta().member_id;
        let mine = req.member_id == 0 || req.member_id == me;
        let nospace = req.alarm == pb::AlarmType::Nospace as i32;
        let alarm = self.node.alarm();
        let member = || pb::AlarmMember {
            member_id: me,
            alarm: pb::AlarmType::Nospace as i32,
        };
        let alarms = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => (mine && alarm.cause().is_some())
                .then(member)
                .into_iter()
                .collect(),
            Ok(AlarmAction::Activate) if mine && nospace => {
                alarm.raise(crate::node::alarm::NoSpaceCause::Quota);
                vec![member()]
            }
            Ok(AlarmAction::Deactivate) if mine && nospace => {
                alarm.disarm().map(|_| member()).into_iter().collect()
            }
            Ok(AlarmAction::Activate | AlarmAction::Deactivate) => Vec::new(),
            Err(_) => return Err(super::status::unknown_alarm_action(req.action)),
        };
        Ok(Response::new(pb::AlarmResponse {
            header: Some(self.header(self.node.meta().current_rev)),
            alarms,
        }))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        let (size, in_use) = self.node.read(|r| r.db_size()).await.map_err(node_status)?;
        let meta = self.node.meta();
        // A Raft member reports its real leader (0 while there is none, as etcd does), term,
        // last log index and applied index; a standalone node leads itself.
        let (leader, term, index, is_learner) = match self.node.raft_status() {
            Some(st) => (
                // A leader this node has not heard from within an election timeout is none.
                st.leader.filter(|_| self.node.has_leader()).unwrap_or(0),
                st.term,
                st.last_log_index.unwrap_or(0),
                st.learners.contains(&st.id),
            ),
            None => (meta.member_id, 1, meta.applied_index, false),
        };
        Ok(Response::new(pb::StatusResponse {
            header: Some(self.header(meta.current_rev)),
            version: EMULATED_ETCD_VERSION.to_string(),
            db_size: size,
            leader,
            raft_index: index,
            raft_term: term,
            raft_applied_index: meta.applied_index,
            // etcd lists every raised alarm here too, as its protobuf text (AlarmMember.String()).
            errors: (leader == 0)
                .then(|| "etcdserver: no leader".to_string())
                .into_iter()
                .chain(
                    self.node
                        .alarm()
                        .cause()
                        .map(|_| format!("memberID:{} alarm:NOSPACE ", meta.member_id)),
                )
                .collect(),
            db_size_in_use: in_use,
            is_learner,
            storage_version: "3.6.0".to_string(),
            db_size_quota: self.node.alarm().quota_bytes(),
            downgrade_info: Some(pb::DowngradeInfo {
                enabled: false,
                target_version: String::new(),
            }),
        }))
    }

    async fn defragment(
        &self,
        _req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        // SQLite reuses free pages and compaction checkpoints the WAL; nothing to do here.
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(self.header(self.node.meta().current_rev)),
        }))
    }

    async fn hash(&self, _req: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        Err(unimplemented("Maintenance.Hash"))
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        let rev = req.into_inner().revision;
        let h = self
            .node
            .read(move |r| r.hash_kv(rev))
            .await
            .map_err(node_status)?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(self.header(h.current_revision)),
            hash: h.hash,
            compact_revision: h.compact_revision,
            hash_revision: h.revision,
        }))
    }

    type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

    /// A consistent copy of the datastore (SQLite `VACUUM INTO` from one read transaction, so
    /// writers are never held up), streamed as etcd streams its backend: 32 KiB blobs with
    /// the bytes still to come in `remaining_bytes`, then one message whose blob is the
    /// SHA-256 of everything before it (etcd's v3rpc/maintenance.go; `etcdctl snapshot save`
    /// stores it at the end of the file and `snapshot restore` checks it). The file is a
    /// SQLite database, not bbolt: etcd's own `snapshot status` and `snapshot restore` cannot read it.
    async fn snapshot(
        &self,
        _req: Request<pb::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let file = self.node.export_snapshot().await.map_err(node_status)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::task::spawn_blocking(move || stream_snapshot(file, &tx));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn move_leader(
        &self,
        _req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        Err(unimplemented("Maintenance.MoveLeader"))
    }

    async fn downgrade(
        &self,
        _req: Request<pb::DowngradeRequest>,
    ) -> Result<Response<pb::DowngradeResponse>, Status> {
        Err(unimplemented("Maintenance.Downgrade"))
    }
}

/// Chunks of a snapshot file as etcd sends them; the file is removed when done (it is a
/// temporary copy, `SnapshotFile` deletes it on drop).
fn stream_snapshot(
    file: crate::node::SnapshotFile,
    tx: &tokio::sync::mpsc::Sender<Result<pb::SnapshotResponse, Status>>,
) {
    use sha2::Digest;
    use std::io::Read;
    const CHUNK: usize = 32 * 1024;
    let send_err = |e: std::io::Error| {
        let _ = tx.blocking_send(Err(super::status::io_status(file.path(), &e)));
    };
    let mut f = match std::fs::File::open(file.path()) {
        Ok(f) => f,
        Err(e) => return send_err(e),
    };
    let size = match f.metadata() {
        Ok(m) => m.len(),
        Err(e) => return send_err(e),
    };
    let mut h = sha2::Sha256::new();
    let mut sent = 0u64;
    let mut buf = vec![0u8; CHUNK];
    while sent < size {
        let n = match f.read(&mut buf) {
            Ok(0) => {
                let e = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "snapshot file shrank");
                return send_err(e);
            }
            Ok(n) => n,
            Err(e) => return send_err(e),
        };
        sent += n as u64;
        h.update(&buf[..n]);
        let msg = pb::SnapshotResponse {
            header: None,
            remaining_bytes: size.saturating_sub(sent),
            blob: buf[..n].to_vec(),
            version: String::new(),
        };
        if tx.blocking_send(Ok(msg)).is_err() {
            return; // The client went away.
        }
    }
    let _ = tx.blocking_send(Ok(pb::SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: h.finalize().to_vec(),
        version: String::new(),
    }));
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for EtcdService {
    async fn member_add(
        &self,
        _req: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberAddResponse>, Status> {
        Err(unimplemented(
            "Cluster.MemberAdd; members join with k8sd add-node and k8sd join",
        ))
    }

    async fn member_remove(
        &self,
        req: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberRemoveResponse>, Status> {
        // Never forced here: etcd's API has no force flag, and its strict reconfiguration
        // check refuses the same unhealthy cases (`etcdserver: unhealthy cluster`).
        let id = req.into_inner().id;
        self.node.remove_member(id, false).await.map_err(node_status)?;
        Ok(Response::new(pb::MemberRemoveResponse {
            header: Some(self.header(self.node.meta().current_rev)),
            members: self.members(),
        }))
    }

    async fn member_update(
        &self,
        _req: Request<pb::MemberUpdateRequest>,
    ) -> Result<Response<pb::MemberUpdateResponse>, Status> {
        Err(unimplemented("Cluster.MemberUpdate"))
    }

    async fn member_list(
        &self,
        _req: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(pb::MemberListResponse {
            header: Some(self.header(self.node.meta().current_rev)),
            members: self.members(),
        }))
    }

    async fn member_promote(
        &self,
        _req: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberPromoteResponse>, Status> {
        Err(unimplemented(
            "Cluster.MemberPromote; k8sd promotes learners itself",
        ))
    }
}
