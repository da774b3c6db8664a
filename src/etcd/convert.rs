//! The one place where etcd protobuf types and datastore types meet.

use crate::datastore as ds;
use crate::pb::etcdserverpb as pb;
use crate::pb::mvccpb;

pub fn kv_to_pb(kv: ds::KeyValue) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value,
        lease: kv.lease,
    }
}

pub fn event_to_pb(ev: &ds::Event, with_prev: bool) -> mvccpb::Event {
    mvccpb::Event {
        r#type: match ev.kind {
            ds::EventKind::Put => mvccpb::event::EventType::Put as i32,
            ds::EventKind::Delete => mvccpb::event::EventType::Delete as i32,
        },
        kv: Some(kv_to_pb(ev.kv.clone())),
        prev_kv: if with_prev {
            ev.prev_kv.clone().map(kv_to_pb)
        } else {
            None
        },
    }
}

pub fn range_from_pb(r: pb::RangeRequest) -> ds::RangeRequest {
    use pb::range_request::{SortOrder, SortTarget};
    ds::RangeRequest {
        range: ds::KeyRange::new(r.key, r.range_end),
        limit: r.limit,
        revision: r.revision,
        sort_order: match SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None) {
            SortOrder::None => ds::SortOrder::None,
            SortOrder::Ascend => ds::SortOrder::Ascend,
            SortOrder::Descend => ds::SortOrder::Descend,
        },
        sort_target: match SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key) {
            SortTarget::Key => ds::SortTarget::Key,
            SortTarget::Version => ds::SortTarget::Version,
            SortTarget::Create => ds::SortTarget::Create,
            SortTarget::Mod => ds::SortTarget::Mod,
            SortTarget::Value => ds::SortTarget::Value,
        },
        keys_only: r.keys_only,
        count_only: r.count_only,
        min_mod_revision: r.min_mod_revision,
        max_mod_revision: r.max_mod_revision,
        min_create_revision: r.min_create_revision,
        max_create_revision: r.max_create_revision,
    }
}

pub fn put_from_pb(r: pb::PutRequest) -> ds::PutRequest {
    ds::PutRequest {
        key: r.key,
        value: r.value,
        lease: r.lease,
        prev_kv: r.prev_kv,
        ignore_value: r.ignore_value,
        ignore_lease: r.ignore_lease,
    }
}

pub fn delete_from_pb(r: pb::DeleteRangeRequest) -> ds::DeleteRequest {
    ds::DeleteRequest {
        range: ds::KeyRange::new(r.key, r.range_end),
        prev_kv: r.prev_kv,
    }
}

pub fn txn_from_pb(t: pb::TxnRequest) -> ds::TxnRequest {
    ds::TxnRequest {
        compare: t.compare.into_iter().map(compare_from_pb).collect(),
        success: t.success.into_iter().filter_map(op_from_pb).collect(),
        failure: t.failure.into_iter().filter_map(op_from_pb).collect(),
    }
}

fn compare_from_pb(c: pb::Compare) -> ds::Compare {
    use pb::compare::{CompareResult as R, CompareTarget as T, TargetUnion as U};
    let result = match R::try_from(c.result).unwrap_or(R::Equal) {
        R::Equal => ds::CompareResult::Equal,
        R::Greater => ds::CompareResult::Greater,
        R::Less => ds::CompareResult::Less,
        R::NotEqual => ds::CompareResult::NotEqual,
    };
    // The target enum chooses the field; a missing union member compares against zero.
    let u = c.target_union;
    let int = |want: fn(&U) -> Option<i64>| u.as_ref().and_then(want).unwrap_or(0);
    let target = match T::try_from(c.target).unwrap_or(T::Version) {
        T::Version => {
            ds::CompareTarget::Version(int(|u| if let U::Version(v) = u { Some(*v) } else { None }))
        }
        T::Create => ds::CompareTarget::Create(int(|u| {
            if let U::CreateRevision(v) = u {
                Some(*v)
            } else {
                None
            }
        })),
        T::Mod => ds::CompareTarget::Mod(int(|u| if let U::ModRevision(v) = u { Some(*v) } else { None })),
        T::Lease => ds::CompareTarget::Lease(int(|u| if let U::Lease(v) = u { Some(*v) } else { None })),
        T::Value => ds::CompareTarget::Value(match &u {
            Some(U::Value(v)) => v.clone(),
            _ => Vec::new(),
        }),
    };
    ds::Compare {
        range: ds::KeyRange::new(c.key, c.range_end),
        result,
        target,
    }
}

fn op_from_pb(op: pb::RequestOp) -> Option<ds::Op> {
    use pb::request_op::Request;
    Some(match op.request? {
        Request::RequestRange(r) => ds::Op::Range(range_from_pb(r)),
        Request::RequestPut(r) => ds::Op::Put(put_from_pb(r)),
        Request::RequestDeleteRange(r) => ds::Op::Delete(delete_from_pb(r)),
        Request::RequestTxn(t) => ds::Op::Txn(txn_from_pb(t)),
    })
}

pub fn range_result_to_pb(r: ds::RangeResult, header: pb::ResponseHeader) -> pb::RangeResponse {
    pb::RangeResponse {
        header: Some(header),
        kvs: r.kvs.into_iter().map(kv_to_pb).collect(),
        more: r.more,
        count: r.count,
    }
}

pub fn txn_result_to_pb(r: ds::TxnResult, header: pb::ResponseHeader) -> pb::TxnResponse {
    use pb::response_op::Response;
    let responses = r
        .responses
        .into_iter()
        .map(|op| pb::ResponseOp {
            response: Some(match op {
                ds::OpResult::Range(rr) => Response::ResponseRange(range_result_to_pb(rr, header)),
                ds::OpResult::Put { prev_kv } => Response::ResponsePut(pb::PutResponse {
                    header: Some(header),
                    prev_kv: prev_kv.map(kv_to_pb),
                }),
                ds::OpResult::Delete { deleted, prev_kvs } => {
                    Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                        header: Some(header),
                        deleted,
                        prev_kvs: prev_kvs.into_iter().map(kv_to_pb).collect(),
                    })
                }
                // etcd gives a nested Txn an empty header.
                ds::OpResult::Txn(t) => {
                    let mut inner = txn_result_to_pb(t, header);
                    inner.header = Some(pb::ResponseHeader::default());
                    Response::ResponseTxn(inner)
                }
            }),
        })
        .collect();
    pb::TxnResponse {
        header: Some(header),
        succeeded: r.succeeded,
        responses,
    }
}
