//! Waiting for the datastore to have a leader before a restarted control-plane node reads or
//! writes any cluster record.
//!
//! The datastore's start already waits for its quorum (`node::wait_for_quorum`, the case of a
//! whole-cluster restart), but the group can lose its leader again right after, and a learner
//! whose leader is backing off its retries hears from it only after the next attempt. The first
//! cluster read (the member records, for the version check) would fail after the 10 s request
//! timeout, and a failed resume leaves the daemon idle in `failed` until someone restarts it.
//! etcd waits for its quorum without a deadline; so do we, saying what we wait for.

use std::time::{Duration, Instant};

use crate::node::{Node, NodeError};

/// How often a still-waiting node says so in its log.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// Returns once a linearizable barrier succeeds: a leader is known and this replica has applied
/// everything committed before the call. Only a stopped datastore ends the wait with an error.
pub(super) async fn until_leader(ds: &Node, step: impl Fn(&str)) -> Result<(), NodeError> {
    let started = Instant::now();
    let mut reported = started;
    let mut announced = false;
    loop {
        match ds.barrier().await {
            Ok(()) => {
                if announced {
                    tracing::info!(waited = ?started.elapsed(), "the datastore has a leader");
                }
                return Ok(());
            }
            Err(NodeError::Stopped) => return Err(NodeError::Stopped),
            Err(e) => {
                if !announced {
                    announced = true;
                    step(
                        "waiting for the datastore to have a leader (the other control-plane nodes may still be starting)",
                    );
                    tracing::warn!(error = %e, "the datastore has no leader yet; waiting for one");
                } else if reported.elapsed() >= REPORT_EVERY {
                    reported = Instant::now();
                    tracing::warn!(error = %e, waited = ?started.elapsed(),
                        "the datastore still has no leader: start the other control-plane nodes, or run `k8sd recover` on this one if a quorum of them is lost for good");
                }
                // A barrier with no leader already waited its request timeout; one failing at
                // once (a peer refusing) must not spin.
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
