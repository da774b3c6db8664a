//! Readiness probes: how the supervisor learns that a component is ready to serve.
//!
//! A probe is an async closure returning `true` when ready. The supervisor only polls it; it does
//! not know what is behind it. Plain checks (a TCP port, a unix socket, an HTTP endpoint on
//! loopback) are built in. Anything that needs credentials, such as kube-apiserver's `/readyz`
//! with an admin client certificate, is built by the daemon with [`Probe::custom`], which keeps
//! the supervisor free of PKI and TLS.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::time::timeout;

use super::Error;

type ProbeFn = dyn Fn() -> BoxFuture<'static, bool> + Send + Sync;

/// Bound on one attempt of a built-in probe. The supervisor additionally bounds every attempt,
/// custom ones included, by the spec's `probe_timeout`.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// A readiness check, cheap to clone.
#[derive(Clone)]
pub struct Probe {
    check: Arc<ProbeFn>,
    /// Shown in logs and `Debug`, e.g. `http://127.0.0.1:10248/healthz`.
    description: Arc<str>,
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Probe").field(&self.description).finish()
    }
}

impl Probe {
    /// Ready as soon as the process is spawned.
    pub fn always() -> Self {
        Self::custom("always", || async { true })
    }

    /// Never ready; useful in tests of the readiness timeout.
    pub fn never() -> Self {
        Self::custom("never", || async { false })
    }

    /// Ready when a TCP connection to `addr` succeeds.
    pub fn tcp(addr: SocketAddr) -> Self {
        Self::custom(format!("tcp {addr}"), move || async move {
            matches!(
                timeout(ATTEMPT_TIMEOUT, TcpStream::connect(addr)).await,
                Ok(Ok(_))
            )
        })
    }

    /// Ready when a connection to the unix socket at `path` succeeds (containerd's socket, say).
    /// A socket file left over from a previous run refuses connections, so this is stricter
    /// than checking that the file exists.
    pub fn unix_socket(path: impl Into<PathBuf>) -> Self {
        let path = Arc::new(path.into());
        Self::custom(format!("unix socket {}", path.display()), move || {
            let path = Arc::clone(&path);
            async move {
                matches!(
                    timeout(ATTEMPT_TIMEOUT, UnixStream::connect(&*path)).await,
                    Ok(Ok(_))
                )
            }
        })
    }

    /// Ready when the file at `path` exists.
    pub fn file_exists(path: impl Into<PathBuf>) -> Self {
        let path = Arc::new(path.into());
        Self::custom(format!("file {}", path.display()), move || {
            let path = Arc::clone(&path);
            async move { tokio::fs::try_exists(&*path).await.unwrap_or(false) }
        })
    }

    /// Ready when a plain-HTTP GET of `url` answers with a 2xx status, as the kubelet's
    /// `http://127.0.0.1:10248/healthz` and kube-proxy's `http://127.0.0.1:10256/healthz` do.
    ///
    /// Only `http://host:port/path` is accepted: these endpoints are on loopback and the
    /// supervisor deliberately speaks no TLS (use [`Probe::custom`] for https).
    pub fn http_get(url: &str) -> Result<Self, Error> {
        let target = HttpTarget::parse(url)?;
        let target = Arc::new(target);
        Ok(Self::custom(url.to_owned(), move || {
            let target = Arc::clone(&target);
            async move { timeout(ATTEMPT_TIMEOUT, target.get()).await.unwrap_or(false) }
        }))
    }

    /// Any async check, described by `description` in logs.
    pub fn custom<F, Fut>(description: impl Into<String>, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = bool> + Send + 'static,
    {
        let description: String = description.into();
        Self {
            check: Arc::new(move || f().boxed()),
            description: description.into(),
        }
    }

    /// Runs one attempt.
    pub async fn check(&self) -> bool {
        (self.check)().await
    }

    pub fn description(&self) -> &str {
        &self.description
    }
}

/// A parsed `http://host:port/path` URL.
#[derive(Debug, PartialEq, Eq)]
struct HttpTarget {
    host: String,
    port: u16,
    path: String,
}

impl HttpTarget {
    fn parse(url: &str) -> Result<Self, Error> {
        let invalid = |reason| Error::InvalidProbeUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| invalid("only http:// is supported"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        // `rsplit_once` so that a bracketed IPv6 literal keeps its inner colons.
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) if !port.contains(']') => {
                (host, port.parse::<u16>().map_err(|_| invalid("bad port"))?)
            }
            _ => (authority, 80),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(invalid("missing host"));
        }
        if path.contains(['\r', '\n', ' ']) {
            return Err(invalid("path contains whitespace"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
            path: path.to_owned(),
        })
    }

    /// One minimal HTTP/1.1 exchange: send a GET with `Connection: close`, read the status line.
    async fn get(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect((self.host.as_str(), self.port)).await else {
            return false;
        };
        let request = format!(
            "GET {} HTTP/1.1\r\nHost: {}:{}\r\nUser-Agent: k8sd-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n",
            self.path, self.host, self.port
        );
        if stream.write_all(request.as_bytes()).await.is_err() {
            return false;
        }
        // The status line ("HTTP/1.1 200 OK") is all we need; read at most a small buffer.
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 256];
        while !buf.contains(&b'\n') && buf.len() < 1024 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        status_is_success(&buf)
    }
}

fn status_is_success(response: &[u8]) -> bool {
    let line = response.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let version_ok = parts.next().is_some_and(|v| v.starts_with(b"HTTP/1."));
    let code = parts.next().unwrap_or_default();
    version_ok && code.len() == 3 && code[0] == b'2' && code.iter().all(u8::is_ascii_digit)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_urls() {
        let t = HttpTarget::parse("http://127.0.0.1:10248/healthz").unwrap();
        assert_eq!(
            t,
            HttpTarget {
                host: "127.0.0.1".into(),
                port: 10248,
                path: "/healthz".into()
            }
        );
        let t = HttpTarget::parse("http://localhost").unwrap();
        assert_eq!(
            t,
            HttpTarget {
                host: "localhost".into(),
                port: 80,
                path: "/".into()
            }
        );
        let t = HttpTarget::parse("http://[::1]:10256/healthz?verbose").unwrap();
        assert_eq!(
            t,
            HttpTarget {
                host: "::1".into(),
                port: 10256,
                path: "/healthz?verbose".into()
            }
        );
        assert!(HttpTarget::parse("https://127.0.0.1:6443/readyz").is_err());
        assert!(HttpTarget::parse("http://:80/").is_err());
        assert!(HttpTarget::parse("http://h:99999/").is_err());
        assert!(HttpTarget::parse("http://h:1/a b").is_err());
    }

    #[test]
    fn status_line() {
        assert!(status_is_success(b"HTTP/1.1 200 OK\r\n"));
        assert!(status_is_success(b"HTTP/1.0 204 No Content\r\n"));
        assert!(!status_is_success(b"HTTP/1.1 500 Internal Server Error\r\n"));
        assert!(!status_is_success(b"HTTP/1.1 2000\r\n"));
        assert!(!status_is_success(b"garbage"));
        assert!(!status_is_success(b""));
    }

    /// Serves one connection with a canned response, after reading the request head.
    async fn serve_once(response: &'static str) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 512];
            while !request.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            conn.write_all(response.as_bytes()).await.unwrap();
            request
        });
        (addr, task)
    }

    #[tokio::test]
    async fn http_probe_accepts_2xx_only() {
        let (addr, server) = serve_once("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
        let probe = Probe::http_get(&format!("http://{addr}/healthz")).unwrap();
        assert!(probe.check().await);
        let request = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"), "{request}");
        assert!(request.contains(&format!("Host: {addr}\r\n")), "{request}");

        let (addr, _server) = serve_once("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        let probe = Probe::http_get(&format!("http://{addr}/readyz")).unwrap();
        assert!(!probe.check().await);
    }

    #[tokio::test]
    async fn tcp_and_unix_probes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(Probe::tcp(addr).check().await);
        drop(listener);
        // A port that is bound but not listening: connections are refused, and unlike a port
        // that was merely closed, no concurrently running test can take it over meanwhile
        // (that race made this test flaky).
        let reserved = tokio::net::TcpSocket::new_v4().unwrap();
        reserved.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let closed = reserved.local_addr().unwrap();
        assert!(!Probe::tcp(closed).check().await);
        // Nothing listens there, so the HTTP probe fails too.
        assert!(
            !Probe::http_get(&format!("http://{closed}/"))
                .unwrap()
                .check()
                .await
        );

        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        assert!(!Probe::unix_socket(&sock).check().await);
        let _l = tokio::net::UnixListener::bind(&sock).unwrap();
        assert!(Probe::unix_socket(&sock).check().await);
    }
}
