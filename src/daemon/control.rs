//! The control socket (root only, 0600): newline-delimited JSON, one request per connection.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use super::api::{Message, Request, check_report_version, check_request_version};
use super::{Daemon, DaemonError, FailureKind};

/// Bind the socket, replacing a stale one that nobody answers on.
pub fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning {
                socket: path.to_path_buf(),
            });
        }
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(|source| DaemonError::Listen {
        listener: "control socket",
        addr: path.display().to_string(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        DaemonError::Write {
            path: path.to_path_buf(),
            source,
        }
    })?;
    Ok(l)
}

pub async fn serve(listener: UnixListener, daemon: Arc<Daemon>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let d = daemon.clone();
        tokio::spawn(async move {
            if let Err(e) = handle(stream, d).await {
                tracing::debug!(error = %e, "control connection ended");
            }
        });
    }
}

async fn send(w: &mut (impl AsyncWriteExt + Unpin), m: &Message) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    line.push(b'\n');
    w.write_all(&line).await
}

async fn handle(stream: UnixStream, daemon: Arc<Daemon>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let Some(line) = lines.next_line().await? else {
        return Ok(());
    };
    let req: Request = match serde_json::from_str(&line) {
        Ok(r) => r,
        Err(e) => {
            return send(
                &mut w,
                &Message::Error {
                    error: format!("malformed request: {e}"),
                    kind: FailureKind::Usage,
                },
            )
            .await;
        }
    };
    if let Err(error) = check_request_version(req.version()) {
        return send(
            &mut w,
            &Message::Error {
                error,
                kind: FailureKind::Usage,
            },
        )
        .await;
    }
    match req {
        Request::Status { .. } => {
            let status = daemon.status().await;
            send(
                &mut w,
                &Message::Status {
                    status: Box::new(status),
                },
            )
            .await
        }
        Request::AddNode {
            worker,
            name,
            ttl_secs,
            ..
        } => {
            let msg = match daemon.add_node(worker, name, ttl_secs).await {
                Ok((token, expires)) => Message::Token { token, expires },
                Err(e) => failed(&e),
            };
            send(&mut w, &msg).await
        }
        Request::Tokens { .. } => {
            let msg = match daemon.tokens().await {
                Ok(tokens) => Message::Tokens { tokens },
                Err(e) => failed(&e),
            };
            send(&mut w, &msg).await
        }
        Request::RevokeToken { id, .. } => send(&mut w, &done(daemon.revoke_token(&id).await)).await,
        Request::RemoveNode { name, force, .. } => {
            send(&mut w, &done(daemon.remove_node(&name, force).await)).await
        }
        Request::Leave { force, .. } => send(&mut w, &done(daemon.leave(force).await)).await,
        Request::Component { name, start, .. } => {
            send(&mut w, &done(daemon.component(&name, start).await)).await
        }
        Request::Addon { name, enable, .. } => {
            let r = daemon.set_addon(&name, enable).await.map_err(DaemonError::from);
            send(&mut w, &done(r)).await
        }
        req @ (Request::Init { .. } | Request::Join { .. } | Request::RotateSecretsKey { .. }) => {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let d = daemon.clone();
            let task = tokio::spawn(async move {
                match req {
                    Request::Join { join, .. } => d.join(join, tx).await,
                    Request::Init { init, .. } => d.init(init, tx).await,
                    Request::RotateSecretsKey { .. } => d.rotate_secrets_key(tx).await,
                    _ => Ok(()),
                }
            });
            while let Some(step) = rx.recv().await {
                // The client may go away; init carries on regardless.
                let _ = send(&mut w, &Message::Progress { step }).await;
            }
            let result = task.await.map_err(std::io::Error::other)?;
            let msg = match result {
                Ok(()) => Message::Done,
                Err(e) => failed(&e),
            };
            send(&mut w, &msg).await
        }
    }
}

fn done(r: Result<(), DaemonError>) -> Message {
    match r {
        Ok(()) => Message::Done,
        Err(e) => failed(&e),
    }
}

fn failed(e: &DaemonError) -> Message {
    Message::Error {
        error: e.to_string(),
        kind: e.kind(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "k8sd is not running (no socket at {0}); start it with `k8sd run` or bring a node up with `k8sd init`"
    )]
    NotRunning(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon sent a malformed message: {0}")]
    Malformed(String),
    #[error("the daemon closed the connection without an answer; see its log")]
    Closed,
}

/// The CLI side of the socket.
#[derive(Debug, Clone)]
pub struct ControlClient {
    path: PathBuf,
}

impl ControlClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        ControlClient { path: path.into() }
    }

    pub fn is_running(&self) -> bool {
        std::os::unix::net::UnixStream::connect(&self.path).is_ok()
    }

    /// Send `req` and call `on_message` for every message until a final one, which is returned.
    pub async fn call(
        &self,
        req: &Request,
        mut on_message: impl FnMut(&Message),
    ) -> Result<Message, ControlError> {
        let io = |source| ControlError::Io {
            path: self.path.clone(),
            source,
        };
        let stream = match UnixStream::connect(&self.path).await {
            Ok(s) => s,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Err(ControlError::NotRunning(self.path.clone()));
            }
            Err(e) => return Err(io(e)),
        };
        let (r, mut w) = stream.into_split();
        let mut line = serde_json::to_vec(req).map_err(|e| ControlError::Malformed(e.to_string()))?;
        line.push(b'\n');
        w.write_all(&line).await.map_err(io)?;
        let mut lines = BufReader::new(r).lines();
        while let Some(l) = lines.next_line().await.map_err(io)? {
            let msg: Message =
                serde_json::from_str(&l).map_err(|e| ControlError::Malformed(e.to_string()))?;
            match msg {
                Message::Progress { .. } => on_message(&msg),
                Message::Status { ref status } => {
                    check_report_version(status.version).map_err(ControlError::Malformed)?;
                    return Ok(msg);
                }
                _ => return Ok(msg),
            }
        }
        Err(ControlError::Closed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second daemon on the same socket is refused naming the socket, and the first one
    /// keeps its socket; a socket nobody answers on is replaced.
    #[tokio::test]
    async fn a_second_daemon_is_refused_and_a_stale_socket_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("control.sock");
        let first = bind(&path).expect("first bind");
        match bind(&path) {
            Err(e @ DaemonError::AlreadyRunning { .. }) => {
                assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            }
            other => panic!("expected AlreadyRunning, got {other:?}"),
        }
        assert!(path.exists(), "the running daemon's socket must stay");
        drop(first);
        let mode = bind(&path)
            .map(|_| std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777))
            .expect("a stale socket is replaced")
            .expect("metadata");
        assert_eq!(mode, 0o600);
    }

    /// A request of this API version or an older one is answered; a newer one is refused
    /// naming both versions, and so is a newer daemon's status report.
    #[test]
    fn control_api_versions_older_accepted_newer_refused() {
        use crate::daemon::api::API_VERSION;
        assert!(check_request_version(API_VERSION).is_ok());
        assert!(check_request_version(API_VERSION - 1).is_ok());
        let e = check_request_version(API_VERSION + 1).unwrap_err();
        assert!(
            e.contains(&format!("control API {}", API_VERSION + 1))
                && e.contains(&format!("reads up to {API_VERSION}")),
            "{e}"
        );
        assert!(check_report_version(API_VERSION).is_ok());
        let e = check_report_version(API_VERSION + 1).unwrap_err();
        assert!(
            e.contains(&format!("control API {}", API_VERSION + 1))
                && e.contains(&format!("reads up to {API_VERSION}")),
            "{e}"
        );
    }

    /// A socket that cannot be created says which listener and which path.
    #[tokio::test]
    async fn an_unusable_path_names_the_listener_and_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("control.sock");
        let e = bind(&path).expect_err("no parent dir");
        let text = e.to_string();
        assert!(matches!(e, DaemonError::Listen { .. }), "{e:?}");
        assert!(
            text.contains("control socket") && text.contains(&path.display().to_string()),
            "{text}"
        );
    }
}
