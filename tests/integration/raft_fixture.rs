//! What the in-process Raft tests share: timings faster than production so the suites stay
//! short, a bounded wait, a one-key write, and reading a node's SQLite file directly.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8sd::datastore::{Command, KeyRange, Op, PutRequest, RangeRequest, Reader, TxnRequest};
use k8sd::raft::{PeerFilter, RaftConfig};

/// Production is 100 ms and 1–2 s; these stay configurable, so the tests use shorter ones.
pub const HEARTBEAT: Duration = Duration::from_millis(50);
pub const ELECTION: (Duration, Duration) = (Duration::from_millis(400), Duration::from_millis(800));

/// Fault injection (TiKV's message filters, reduced to isolation): an isolated node can
/// neither send nor receive peer RPCs. One `Faults` is shared by every node of a test cluster.
#[derive(Debug, Default)]
pub struct Faults {
    isolated: Mutex<HashSet<u64>>,
}

impl Faults {
    pub fn isolate(&self, id: u64) {
        self.isolated.lock().unwrap_or_else(|p| p.into_inner()).insert(id);
    }

    pub fn heal(&self, id: u64) {
        self.isolated
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}

impl PeerFilter for Faults {
    fn blocks(&self, from: u64, to: u64) -> bool {
        let set = self.isolated.lock().unwrap_or_else(|p| p.into_inner());
        set.contains(&from) || set.contains(&to)
    }
}

/// A node's configuration with the test timings and a shared fault switchboard.
pub fn fast_config(dir: &Path, name: &str, addr: &str, faults: &Arc<Faults>) -> RaftConfig {
    let mut c = RaftConfig::new(dir, name, addr, "http://127.0.0.1:2379");
    c.heartbeat = HEARTBEAT;
    c.election_timeout = ELECTION;
    c.request_timeout = Duration::from_secs(3);
    c.faults = Some(faults.clone());
    c
}

/// A plain Put of one key, as a Txn without compares (what kube-apiserver never sends, but
/// the smallest write).
pub fn put(key: &str, value: &str) -> Command {
    put_leased(key, value, 0)
}

/// `put` attached to a lease.
pub fn put_leased(key: &str, value: &str, lease: i64) -> Command {
    Command::Txn(TxnRequest {
        compare: vec![],
        success: vec![Op::Put(PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        })],
        failure: vec![],
    })
}

/// The value of `key` in a node's SQLite file, read as the etcd façade would.
pub fn read(db: &Path, key: &str) -> Option<Vec<u8>> {
    let mut r = Reader::open(db).unwrap();
    let req = RangeRequest {
        range: KeyRange::single(key.as_bytes().to_vec()),
        ..Default::default()
    };
    r.range(&req).unwrap().0.kvs.first().map(|kv| kv.value.clone())
}
