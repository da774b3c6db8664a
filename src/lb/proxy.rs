//! The data path: accept, choose a backend, dial (the next one on failure), then copy bytes both
//! ways until either side closes, the backend is drained, or the balancer stops.
//!
//! Bytes are never inspected: TLS runs end to end between the client and kube-apiserver.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, warn};

use super::Shared;

/// Accepts until the balancer stops. An accept error (out of file descriptors, a connection reset
/// before accept) never ends the loop: the balancer is the worker's only way to the API.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            () = shared.stopped() => return,
        };
        match accepted {
            Ok((client, peer)) => {
                tokio::spawn(serve(shared.clone(), client, peer));
            }
            Err(e) => {
                warn!(error = %e, "api load balancer accept failed");
                // EMFILE does not go away by retrying at once; give connections time to close.
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    () = shared.stopped() => return,
                }
            }
        }
    }
}

/// Counts one proxied connection for as long as it lives, however the task ends.
struct ConnGuard {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.shared.pool().release(self.id);
    }
}

async fn serve(shared: Arc<Shared>, mut client: TcpStream, peer: SocketAddr) {
    let _ = client.set_nodelay(true);
    let plan = shared.pool().plan();
    let mut errors = Vec::new();
    for mut candidate in plan {
        let dial = tokio::time::timeout(shared.dial_timeout, TcpStream::connect(candidate.addr));
        let dialled = tokio::select! {
            r = dial => r,
            () = shared.stopped() => return,
        };
        let mut upstream = match dialled {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                let e = format!("dial {}: {e}", candidate.addr);
                shared.pool().note_dial_error(candidate.id, e.clone());
                errors.push(e);
                continue;
            }
            Err(_) => {
                let e = format!(
                    "dial {}: timed out after {:?}",
                    candidate.addr, shared.dial_timeout
                );
                shared.pool().note_dial_error(candidate.id, e.clone());
                errors.push(e);
                continue;
            }
        };
        // Drained or removed while we dialled: no byte has gone through yet, so moving on to the
        // next candidate costs the client nothing.
        if !matches!(candidate.drained.has_changed(), Ok(false)) {
            continue;
        }
        if !shared.pool().register(candidate.id) {
            continue;
        }
        let _guard = ConnGuard {
            shared: shared.clone(),
            id: candidate.id,
        };
        let _ = upstream.set_nodelay(true);
        tokio::select! {
            r = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
                debug!(client = %peer, backend = %candidate.addr, result = ?r, "proxied connection ended");
            }
            // A drain between `register` and here is not lost: the receiver still sees it as new.
            _ = candidate.drained.changed() => {
                debug!(client = %peer, backend = %candidate.addr, "closing a connection to a drained backend");
            }
            () = shared.stopped() => {}
        }
        return;
    }
    warn!(client = %peer, errors = %errors.join("; "), "no api server reachable for a client connection");
}
