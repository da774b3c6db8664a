//! The Lease service. Grant and revoke are replicated commands; keep-alive and time-to-live
//! use the leader's lessor deadlines (a follower asks the leader, as etcd forwards them),
//! because only the leader expires leases.

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status, Streaming};

use super::EtcdService;
use super::status::node_status;
use crate::datastore::{Command, CommandOutput};
use crate::pb::etcdserverpb as pb;

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::lease_server::Lease for EtcdService {
    async fn lease_grant(
        &self,
        req: Request<pb::LeaseGrantRequest>,
    ) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let req = req.into_inner();
        match self
            .node
            .propose(Command::LeaseGrant {
                id: req.id,
                ttl: req.ttl,
            })
            .await
            .map_err(node_status)?
        {
            CommandOutput::LeaseGrant { revision, id, ttl } => Ok(Response::new(pb::LeaseGrantResponse {
                header: Some(self.header(revision)),
                id,
                ttl,
                error: String::new(),
            })),
            other => Err(Status::internal(format!("unexpected apply output {other:?}"))),
        }
    }

    async fn lease_revoke(
        &self,
        req: Request<pb::LeaseRevokeRequest>,
    ) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = req.into_inner().id;
        let out = self
            .node
            .propose(Command::LeaseRevoke { id })
            .await
            .map_err(node_status)?;
        Ok(Response::new(pb::LeaseRevokeResponse {
            header: Some(self.header(out.revision())),
        }))
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let mut incoming = req.into_inner();
        let svc = self.clone();
        let out = async_stream(move |tx| async move {
            while let Ok(Some(r)) = incoming.message().await {
                // Like etcd: an unknown or expired lease answers TTL 0 rather than an error.
                // Without a leader the stream ends with the error; clients open a new one.
                let ttl = match svc.node.lease_renew(r.id).await {
                    Ok(ttl) => ttl.unwrap_or(0),
                    Err(e) => {
                        let _ = tx.send(Err(node_status(e))).await;
                        break;
                    }
                };
                let resp = pb::LeaseKeepAliveResponse {
                    header: Some(svc.header(svc.node.meta().current_rev)),
                    id: r.id,
                    ttl,
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(out))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<pb::LeaseTimeToLiveRequest>,
    ) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        let (id, keys) = (req.id, req.keys);
        let info = self
            .node
            .read(move |r| r.lease(id, keys))
            .await
            .map_err(node_status)?;
        let Some(info) = info else {
            // etcd answers an unknown or expired lease with TTL -1, not an error.
            return Ok(Response::new(pb::LeaseTimeToLiveResponse {
                header: Some(self.header(self.node.meta().current_rev)),
                id,
                ttl: -1,
                granted_ttl: 0,
                keys: Vec::new(),
            }));
        };
        let left = self.node.lease_remaining(id).await.map_err(node_status)?;
        let (ttl, granted) = left.unwrap_or((info.ttl, info.ttl));
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header: Some(self.header(self.node.meta().current_rev)),
            id,
            ttl,
            granted_ttl: granted,
            keys: info.keys,
        }))
    }

    async fn lease_leases(
        &self,
        _req: Request<pb::LeaseLeasesRequest>,
    ) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let leases = self.node.read(|r| r.leases()).await.map_err(node_status)?;
        Ok(Response::new(pb::LeaseLeasesResponse {
            header: Some(self.header(self.node.meta().current_rev)),
            leases: leases.into_iter().map(|(id, _)| pb::LeaseStatus { id }).collect(),
        }))
    }
}

/// A response stream fed by a task through a bounded channel.
pub fn async_stream<T, F, Fut>(f: F) -> Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
