//! The watch hub: the apply loop publishes each committed batch of events here, and every
//! watch stream subscribes. Publication happens after the SQLite commit, so anything a
//! subscriber receives can also be read back from the store.
//!
//! `subscribe` and `publish` share a lock so that a subscriber learns exactly which revision its
//! receiver starts after: every batch with a higher revision will arrive on the receiver, and
//! every batch at or below it was published before. A receiver that falls behind the channel's
//! capacity gets `Lagged` and must catch up from SQLite (rule W14 of
//! `docs/design/etcd-contract.md`): the apply loop never waits for a watcher.

use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use crate::datastore::Event;

/// One committed apply batch: its events, in (revision, sub-revision) order, and the store
/// revision after it.
#[derive(Debug)]
pub struct EventBatch {
    pub revision: i64,
    pub events: Vec<Event>,
    /// The store jumped to `revision` without events (a Raft snapshot was installed): every
    /// stream must catch its watchers up from SQLite.
    pub resync: bool,
}

#[derive(Debug)]
pub struct WatchHub {
    published: Mutex<i64>,
    tx: broadcast::Sender<Arc<EventBatch>>,
}

/// How many batches a slow watch stream may fall behind before it must resync from SQLite.
const HUB_CAPACITY: usize = 4096;

impl WatchHub {
    pub fn new(revision: i64) -> Self {
        let (tx, _) = broadcast::channel(HUB_CAPACITY);
        WatchHub {
            published: Mutex::new(revision),
            tx,
        }
    }

    pub fn publish(&self, batch: EventBatch) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        *published = batch.revision;
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Arc::new(batch));
    }

    /// A receiver plus the revision it starts after.
    pub fn subscribe(&self) -> (broadcast::Receiver<Arc<EventBatch>>, i64) {
        let published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        (self.tx.subscribe(), *published)
    }

    /// Start after `revision` (a node that recovered its store before anyone subscribed).
    pub fn advance_to(&self, revision: i64) {
        let mut published = self.published.lock().unwrap_or_else(|p| p.into_inner());
        *published = (*published).max(revision);
    }

    pub fn published(&self) -> i64 {
        *self.published.lock().unwrap_or_else(|p| p.into_inner())
    }
}
