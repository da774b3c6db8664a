//! The `/metrics` listener: HTTP/1.1, one request per connection (`Connection: close`), over
//! TLS that requires a client certificate from the given CA, or plain http where the caller
//! allows it (`k8sd datastore --listen-metrics-urls http://127.0.0.1:…`, as etcd's flag).
//! What is served comes from a render callback, so this file knows nothing of what it serves.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

/// The longest request head read; a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// A client that has not sent its request (or finished its handshake) by then is dropped.
const CLIENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Produces the exposition text for one scrape.
pub type Render = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = String> + Send>> + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum MetricsTlsError {
    #[error("metrics listener {0}")]
    Tls(#[from] crate::tls::MtlsError),
}

/// A server configuration serving `cert_pem` that accepts only clients with a certificate
/// signed by `ca_pem`, speaking HTTP/1.1.
pub fn tls_config(
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, MetricsTlsError> {
    Ok(crate::tls::mutual_tls_server(
        ca_pem,
        cert_pem,
        key_pem,
        &[b"http/1.1"],
    )?)
}

/// Serve `/metrics` on `listener` until `shutdown` resolves. `tls: None` is plain http.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    render: Render,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "metrics listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            },
        };
        let (acceptor, render) = (acceptor.clone(), render.clone());
        tokio::spawn(async move {
            let result =
                match acceptor {
                    None => {
                        let mut tcp = tcp;
                        tokio::time::timeout(CLIENT_TIMEOUT, handle(&mut tcp, &render)).await
                    }
                    Some(acceptor) => tokio::time::timeout(CLIENT_TIMEOUT, async {
                        match acceptor.accept(tcp).await {
                            Ok(mut tls) => {
                                let r = handle(&mut tls, &render).await;
                                let _ = tls.shutdown().await;
                                r
                            }
                            Err(e) => {
                                tracing::debug!(%peer, error = %e, "metrics listener: TLS handshake refused");
                                Ok(())
                            }
                        }
                    })
                    .await,
                };
            match result {
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "metrics listener: connection ended early"),
                Err(_) => tracing::debug!(%peer, "metrics listener: client timed out"),
                Ok(Ok(())) => {}
            }
        });
    }
}

async fn handle<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, render: &Render) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return respond(
                s,
                "431 Request Header Fields Too Large",
                "request head too large\n",
            )
            .await;
        }
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => {
            let body = render().await;
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            s.write_all(head.as_bytes()).await?;
            s.write_all(body.as_bytes()).await?;
            s.flush().await
        }
        (_, "/metrics") => respond(s, "405 Method Not Allowed", "use GET /metrics\n").await,
        _ => respond(s, "404 Not Found", "this listener serves GET /metrics only\n").await,
    }
}

async fn respond<S: AsyncWrite + Unpin>(s: &mut S, status: &str, body: &str) -> std::io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(msg.as_bytes()).await?;
    s.flush().await
}
