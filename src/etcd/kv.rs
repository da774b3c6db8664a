//! The KV service: Range is served from the local replica; Put, DeleteRange, Txn and Compact
//! become commands applied by the state machine.

use crate::metrics::etcd::ETCD;
use prost::Message;
use tonic::{Request, Response, Status};

use super::convert::*;
use super::status::{node_status, store_status, too_large};
use super::{EtcdService, MAX_RECV_BYTES, MAX_REQUEST_BYTES};
use crate::datastore::{self as ds, Command, CommandOutput, OpResult, validate_txn};
use crate::pb::etcdserverpb as pb;

fn check_size<M: Message>(m: &M) -> Result<(), Status> {
    let len = m.encoded_len();
    if len > MAX_RECV_BYTES {
        return Err(Status::resource_exhausted(format!(
            "grpc: received message larger than max ({len} vs. {MAX_RECV_BYTES})"
        )));
    }
    if len > MAX_REQUEST_BYTES {
        Err(too_large())
    } else {
        Ok(())
    }
}

impl EtcdService {
    async fn write_txn(&self, txn: ds::TxnRequest) -> Result<(i64, ds::TxnResult), Status> {
        validate_txn(&txn).map_err(|e| store_status(&e))?;
        match self.node.propose(Command::Txn(txn)).await.map_err(node_status)? {
            CommandOutput::Txn { revision, result } => Ok((revision, result)),
            other => Err(Status::internal(format!("unexpected apply output {other:?}"))),
        }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for EtcdService {
    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        ETCD.ranges.inc();
        let req = req.into_inner();
        check_size(&req)?;
        if req.key.is_empty() {
            return Err(store_status(&ds::StoreError::EmptyKey));
        }
        // Linearizable: wait until the local replica has applied everything committed before
        // this call (read index), then read locally. Serializable reads skip the round trip.
        if !req.serializable {
            self.node.barrier().await.map_err(node_status)?;
        }
        let r = range_from_pb(req);
        let (res, view) = self
            .node
            .read(move |rd| rd.range(&r))
            .await
            .map_err(node_status)?;
        Ok(Response::new(range_result_to_pb(
            res,
            self.header(view.current_rev),
        )))
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        ETCD.puts.inc();
        let req = req.into_inner();
        check_size(&req)?;
        let txn = ds::TxnRequest {
            success: vec![ds::Op::Put(put_from_pb(req))],
            ..Default::default()
        };
        let (rev, mut result) = self.write_txn(txn).await?;
        let prev_kv = match result.responses.pop() {
            Some(OpResult::Put { prev_kv }) => prev_kv.map(kv_to_pb),
            _ => None,
        };
        Ok(Response::new(pb::PutResponse {
            header: Some(self.header(rev)),
            prev_kv,
        }))
    }

    async fn delete_range(
        &self,
        req: Request<pb::DeleteRangeRequest>,
    ) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        ETCD.deletes.inc();
        let req = req.into_inner();
        check_size(&req)?;
        let txn = ds::TxnRequest {
            success: vec![ds::Op::Delete(delete_from_pb(req))],
            ..Default::default()
        };
        let (rev, mut result) = self.write_txn(txn).await?;
        let (deleted, prev_kvs) = match result.responses.pop() {
            Some(OpResult::Delete { deleted, prev_kvs }) => (deleted, prev_kvs),
            _ => (0, Vec::new()),
        };
        Ok(Response::new(pb::DeleteRangeResponse {
            header: Some(self.header(rev)),
            deleted,
            prev_kvs: prev_kvs.into_iter().map(kv_to_pb).collect(),
        }))
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        ETCD.txns.inc();
        let req = req.into_inner();
        check_size(&req)?;
        let (rev, result) = self.write_txn(txn_from_pb(req)).await?;
        Ok(Response::new(txn_result_to_pb(result, self.header(rev))))
    }

    async fn compact(
        &self,
        req: Request<pb::CompactionRequest>,
    ) -> Result<Response<pb::CompactionResponse>, Status> {
        let req = req.into_inner();
        let out = self
            .node
            .propose(Command::Compact {
                revision: req.revision,
            })
            .await
            .map_err(node_status)?;
        if req.physical {
            // Physical compaction runs between apply batches; wait for it to reach the target.
            while self.node.meta().physical_compact_rev < req.revision {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
        Ok(Response::new(pb::CompactionResponse {
            header: Some(self.header(out.revision())),
        }))
    }
}
