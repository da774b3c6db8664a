//! The Watch service. Each gRPC stream is one task that owns its watchers, its hub receiver
//! and its progress bookkeeping, so every rule below is enforced without locks.
//!
//! Stream state: `seen` is the revision up to which this stream has processed the hub; every
//! watcher has `next_rev`, the next revision it may deliver. A watcher is *synced* when
//! `next_rev == seen + 1`.
//!
//! - W1/W2: requests are handled in order; a watcher's `created` reply is sent before any of its
//!   events, with a non-zero header revision.
//! - W3: prev_kv on every event inside retained history (above the compaction revision).
//! - W6/W7: events come from SQLite (catch-up) or from hub batches (live); either way each
//!   revision's events are sent whole, in order, once: a watcher only takes events with
//!   `rev >= next_rev` and then moves `next_rev` past them.
//! - W4/W5: a start below the compaction point is cancelled with `compact_revision`; a start
//!   above the current revision waits and keeps the stream unsynced until reached.
//! - W8/W9: progress (`watch_id = -1` on request, per watcher on the timer) claims revision
//!   `seen` only when the stream (or the watcher) is synced and no header above `seen` has been
//!   sent, so "progress R" always means every event <= R was already written to this stream.
//! - W14: a stream that falls behind the hub's capacity resubscribes and catches every watcher
//!   up from SQLite; the apply loop never waits for it.

use crate::metrics::etcd::ETCD;
use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status, Streaming};

use super::EtcdService;
use super::convert::event_to_pb;
use super::status::{NO_LEADER, no_leader};
use crate::datastore::{Event, EventKind, KeyRange, StoreError};
use crate::node::NodeError;
use crate::node::hub::EventBatch;
use crate::pb::etcdserverpb as pb;

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// Revisions read from SQLite per catch-up step, so a long history never sits in memory whole.
const CATCHUP_REVS: i64 = 1000;
/// How often a hasleader stream looks for a leader.
const LEADER_CHECK: std::time::Duration = std::time::Duration::from_millis(250);
const COMPACTED_REASON: &str = "etcdserver: mvcc: required revision has been compacted";

#[tonic::async_trait]
impl pb::watch_server::Watch for EtcdService {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<Streaming<pb::WatchRequest>>,
    ) -> Result<Response<WatchStream>, Status> {
        let require_leader = req.metadata().get("hasleader").is_some_and(|v| v == "true");
        if require_leader && !self.node.has_leader() {
            return Err(no_leader());
        }
        let incoming = req.into_inner();
        let (tx, rx) = mpsc::channel(256);
        let (hub_rx, seen) = self.node.hub().subscribe();
        let stream = StreamTask {
            svc: self.clone(),
            tx,
            hub_rx,
            seen,
            last_header: seen,
            watchers: BTreeMap::new(),
            next_id: 0,
            progress_pending: false,
            require_leader,
            leaderless_since: None,
        };
        ETCD.watch_streams.add(1);
        tokio::spawn(stream.run(incoming));
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

#[derive(Debug)]
struct Watcher {
    range: KeyRange,
    next_rev: i64,
    prev_kv: bool,
    progress_notify: bool,
    no_put: bool,
    no_delete: bool,
    sent_since_tick: bool,
}

impl Watcher {
    fn wants(&self, ev: &Event) -> bool {
        ev.kv.mod_revision >= self.next_rev
            && self.range.contains(&ev.kv.key)
            && !(self.no_put && ev.kind == EventKind::Put)
            && !(self.no_delete && ev.kind == EventKind::Delete)
    }
}

/// Why a stream task stops: the client went away or an unrecoverable error.
struct Closed;

struct StreamTask {
    svc: EtcdService,
    tx: mpsc::Sender<Result<pb::WatchResponse, Status>>,
    hub_rx: broadcast::Receiver<Arc<EventBatch>>,
    seen: i64,
    last_header: i64,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    progress_pending: bool,
    require_leader: bool,
    /// When this node was first seen without a leader (hasleader streams only); cleared
    /// whenever a leader is seen again.
    leaderless_since: Option<tokio::time::Instant>,
}

/// A stream's watchers leave the gauges with it, however it ends.
impl Drop for StreamTask {
    fn drop(&mut self) {
        ETCD.watch_streams.add(-1);
        ETCD.watchers
            .add(-i64::try_from(self.watchers.len()).unwrap_or(0));
    }
}

impl StreamTask {
    async fn run(mut self, mut incoming: Streaming<pb::WatchRequest>) {
        let interval = self.svc.node.config().progress_notify_interval;
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // hasleader streams check for a leader every LEADER_CHECK, independently of the
        // progress interval (which may be long); other streams never fire this arm.
        let mut leader_check = tokio::time::interval(LEADER_CHECK);
        leader_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                msg = incoming.message() => match msg {
                    Ok(Some(req)) => self.on_request(req).await,
                    _ => Err(Closed),
                },
                batch = self.hub_rx.recv() => match batch {
                    Ok(b) if b.resync => self.resync().await,
                    Ok(b) => self.on_batch(&b).await,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.resync().await,
                    Err(broadcast::error::RecvError::Closed) => Err(Closed),
                },
                _ = ticker.tick() => self.on_tick().await,
                _ = leader_check.tick(), if self.require_leader => self.check_leader().await,
            };
            if step.is_err() {
                return;
            }
            if self.progress_pending && self.stream_synced() {
                self.progress_pending = false;
                let r = self.response(-1, self.seen);
                if self.send(r).await.is_err() {
                    return;
                }
            }
        }
    }

    fn header(&mut self, revision: i64) -> pb::ResponseHeader {
        // Headers never go backwards on a stream (W6).
        self.last_header = self.last_header.max(revision);
        self.svc.header(self.last_header)
    }

    fn response(&mut self, watch_id: i64, revision: i64) -> pb::WatchResponse {
        pb::WatchResponse {
            header: Some(self.header(revision)),
            watch_id,
            ..Default::default()
        }
    }

    async fn send(&mut self, r: pb::WatchResponse) -> Result<(), Closed> {
        self.tx.send(Ok(r)).await.map_err(|_| Closed)
    }

    fn synced(&self, w: &Watcher) -> bool {
        w.next_rev == self.seen + 1 && self.last_header <= self.seen
    }

    fn stream_synced(&self) -> bool {
        self.watchers.values().all(|w| self.synced(w)) && self.last_header <= self.seen
    }

    async fn on_request(&mut self, req: pb::WatchRequest) -> Result<(), Closed> {
        use pb::watch_request::RequestUnion;
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    ETCD.watchers.add(-1);
                    let mut r = self.response(c.watch_id, self.seen);
                    r.canceled = true;
                    self.send(r).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                self.progress_pending = true;
                Ok(())
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: pb::WatchCreateRequest) -> Result<(), Closed> {
        use pb::watch_create_request::FilterType;
        if c.start_revision < 0 {
            let mut r = self.response(-1, self.seen);
            (r.created, r.canceled, r.cancel_reason) = (true, true, COMPACTED_REASON.to_string());
            return self.send(r).await;
        }
        let id = if c.watch_id != 0 {
            if self.watchers.contains_key(&c.watch_id) {
                let mut r = self.response(c.watch_id, self.seen);
                (r.created, r.canceled) = (true, true);
                r.cancel_reason = "mvcc: duplicate watch ID provided on the WatchStream".into();
                return self.send(r).await;
            }
            c.watch_id
        } else {
            // Like etcd: a counter that explicit ids do not move, skipping ids in use.
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        };
        let w = Watcher {
            range: KeyRange::new(c.key, c.range_end),
            next_rev: if c.start_revision == 0 {
                self.seen + 1
            } else {
                c.start_revision
            },
            prev_kv: c.prev_kv,
            progress_notify: c.progress_notify,
            no_put: c.filters.contains(&(FilterType::Noput as i32)),
            no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
            sent_since_tick: false,
        };
        self.watchers.insert(id, w);
        ETCD.watchers.add(1);
        let mut r = self.response(id, self.seen);
        r.created = true;
        self.send(r).await?;
        if c.start_revision != 0 {
            self.catch_up(id, None).await?;
        }
        Ok(())
    }

    /// Deliver a watcher's history from SQLite, from its `next_rev` up to `upto` (or the
    /// store's current revision), in steps of whole revisions.
    async fn catch_up(&mut self, id: i64, upto: Option<i64>) -> Result<(), Closed> {
        loop {
            let Some(w) = self.watchers.get(&id) else {
                return Ok(());
            };
            let (range, from) = (w.range.clone(), w.next_rev);
            let limit = upto.unwrap_or(i64::MAX);
            if from > limit {
                return Ok(());
            }
            let to = from.saturating_add(CATCHUP_REVS - 1).min(limit);
            let read = self.svc.node.read(move |r| r.events(&range, from, to)).await;
            let (events, view) = match read {
                Ok(x) => x,
                Err(NodeError::Store(StoreError::Compacted { compacted, .. })) => {
                    if self.watchers.remove(&id).is_some() {
                        ETCD.watchers.add(-1);
                    }
                    let mut r = self.response(id, self.seen);
                    // etcd leaves cancel_reason empty here; clients read compact_revision.
                    (r.canceled, r.compact_revision) = (true, compacted);
                    return self.send(r).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "watch catch-up failed");
                    let _ = self
                        .tx
                        .send(Err(Status::unavailable("etcdserver: server stopped")))
                        .await;
                    return Err(Closed);
                }
            };
            let reached = to.min(view.current_rev);
            if reached < from {
                return Ok(()); // a future start: wait for live batches
            }
            self.deliver(id, &events, reached).await?;
            if reached < to || reached == limit || reached >= view.current_rev {
                return Ok(());
            }
        }
    }

    /// Send `events` (already in revision order) that watcher `id` wants, then mark it as
    /// having seen everything up to `through`.
    async fn deliver(&mut self, id: i64, events: &[Event], through: i64) -> Result<(), Closed> {
        // Like etcd, an event at or below the compaction revision has no prev_kv: its previous
        // revision is compacted history. (Our rows keep it, but kube-apiserver's storage tests
        // require a watch from the compaction point to fail, which it does on the missing
        // prev_kv, as on etcd.)
        let compacted = self.svc.node.meta().compact_rev;
        let Some(w) = self.watchers.get_mut(&id) else {
            return Ok(());
        };
        let out: Vec<_> = events
            .iter()
            .filter(|e| w.wants(e))
            .map(|e| event_to_pb(e, w.prev_kv && e.kv.mod_revision > compacted))
            .collect();
        w.next_rev = w.next_rev.max(through + 1);
        if out.is_empty() {
            return Ok(());
        }
        w.sent_since_tick = true;
        let mut r = self.response(id, through);
        r.events = out;
        self.send(r).await
    }

    async fn on_batch(&mut self, b: &EventBatch) -> Result<(), Closed> {
        let ids: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.next_rev <= b.revision)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.deliver(id, &b.events, b.revision).await?;
        }
        self.seen = self.seen.max(b.revision);
        Ok(())
    }

    /// The hub dropped batches for this stream: start over from a fresh receiver and replay
    /// the gap from SQLite for every watcher.
    async fn resync(&mut self) -> Result<(), Closed> {
        let (rx, published) = self.svc.node.hub().subscribe();
        self.hub_rx = rx;
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            self.catch_up(id, Some(published)).await?;
        }
        self.seen = self.seen.max(published);
        Ok(())
    }

    /// Cancel a hasleader stream once the node has been without a leader for about three
    /// election timeouts (etcd's monitorLeader does the same): long enough to ride out an
    /// election, short enough that a client on a partitioned node moves elsewhere.
    async fn check_leader(&mut self) -> Result<(), Closed> {
        let Some(grace) = self.svc.node.no_leader_grace() else {
            return Ok(());
        };
        if self.svc.node.has_leader() {
            self.leaderless_since = None;
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        let since = *self.leaderless_since.get_or_insert(now);
        if now.duration_since(since) >= grace {
            let _ = self.tx.send(Err(Status::unavailable(NO_LEADER))).await;
            return Err(Closed);
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<(), Closed> {
        let due: Vec<i64> = self
            .watchers
            .iter()
            .filter(|(_, w)| w.progress_notify && !w.sent_since_tick && self.synced(w))
            .map(|(id, _)| *id)
            .collect();
        for w in self.watchers.values_mut() {
            w.sent_since_tick = false;
        }
        for id in due {
            let r = self.response(id, self.seen);
            self.send(r).await?;
        }
        Ok(())
    }
}
