//! Which body format to send one peer, learned from what that peer sends back.
//!
//! A k8sd refuses a body newer than it reads, so during a rolling upgrade a node may send a
//! peer format 2 (postcard, `wire.rs`) only once it knows the peer reads it. Each message
//! carries `reads`, the newest format its sender reads, and each reply is a message. So:
//!
//! ```text
//!  not heard from ──reply reads ≥ 2──▶ binary ──reply reads < 2 (an older k8sd: 0)──▶ json
//!        │  (json)                        │
//!        └──reply reads < 2──▶ json       └──FAILED_PRECONDITION to a binary body──▶ json
//! ```
//!
//! The newest reply always wins, not the best one ever seen: a peer rolled back to an older
//! build answers with `reads` 0, and the sender drops back to JSON at once. A rolled-back peer
//! may also be sent one binary body before any reply of the old build arrives; it refuses it
//! (FAILED_PRECONDITION from a k8sd that reads `version`, `WireError::TooNew`; INVALID_ARGUMENT
//! from 0.1.0, which parses every body as JSON), the sender drops back, and openraft sends the
//! request again. Nothing here is persisted: a restarted node starts every peer at JSON and
//! learns again from its first reply.

use std::sync::atomic::{AtomicU32, Ordering};

use super::wire::{Format, PEER_VERSION};

/// What one peer reads, as far as this node knows. Shared by every client of that peer
/// (openraft's replication and the node's own calls) and updated from every reply.
#[derive(Debug, Default)]
pub struct PeerReads {
    /// The `reads` of the newest reply, capped at our own; 0 until the first reply.
    reads: AtomicU32,
}

impl PeerReads {
    /// The format to send this peer a message in, for a message that may go in binary.
    pub fn format(&self) -> Format {
        Format::readable_by(self.reads.load(Ordering::Relaxed))
    }

    /// A reply from the peer said it reads up to `reads`.
    pub fn heard(&self, reads: u32) {
        self.reads.store(reads.min(PEER_VERSION), Ordering::Relaxed);
    }

    /// The peer refused a body as too new: it reads only what every k8sd reads.
    pub fn refused(&self) {
        self.reads.store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_not_heard_from_gets_json() {
        assert_eq!(PeerReads::default().format(), Format::Json);
    }

    #[test]
    fn a_reply_saying_it_reads_format_2_switches_to_binary() {
        let p = PeerReads::default();
        p.heard(2);
        assert_eq!(p.format(), Format::Binary);
    }

    /// A k8sd older than the `reads` field leaves it out (0), one of the previous format-1
    /// release would say 1: both get JSON, however often they reply.
    #[test]
    fn replies_of_an_older_peer_keep_json() {
        let p = PeerReads::default();
        for reads in [0, 1, 0] {
            p.heard(reads);
            assert_eq!(p.format(), Format::Json, "after reads {reads}");
        }
    }

    /// A peer of a later build that reads format 3 still gets the newest format this build
    /// writes.
    #[test]
    fn a_newer_peer_gets_our_newest_format() {
        let p = PeerReads::default();
        p.heard(PEER_VERSION + 1);
        assert_eq!(p.format(), Format::Binary);
    }

    /// A peer rolled back to an older build: its first reply (no `reads`) drops the sender
    /// back to JSON, and a refusal of a binary body does the same when that comes first.
    #[test]
    fn a_rolled_back_peer_gets_json_again() {
        let p = PeerReads::default();
        p.heard(2);
        p.heard(0);
        assert_eq!(p.format(), Format::Json);

        p.heard(2);
        p.refused();
        assert_eq!(p.format(), Format::Json);

        // Upgraded again: the next reply from the new build switches back.
        p.heard(2);
        assert_eq!(p.format(), Format::Binary);
    }
}
