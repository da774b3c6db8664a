//! The mirror's listener: HTTPS with client certificates from the cluster CA, one request per
//! connection (`Connection: close`), which is all a pull needs and keeps the server small.

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::route::{self, Route, RouteError};
use super::store::{self, ContainerdStore};

/// The longest request head accepted; a pull's are a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;

/// Serves until the listener fails. Each connection is handled on its own task.
pub async fn serve(listener: TcpListener, tls: Arc<rustls::ServerConfig>, store: Arc<ContainerdStore>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "image mirror: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let (acceptor, store) = (acceptor.clone(), store.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(std::time::Duration::from_secs(10), acceptor.accept(tcp)).await {
                Ok(Ok(mut tls)) => {
                    if let Err(e) = handle(&mut tls, &store).await {
                        tracing::debug!(%peer, error = %e, "image mirror: connection ended early");
                    }
                    let _ = tls.shutdown().await;
                }
                Ok(Err(e)) => tracing::info!(%peer, error = %e, "image mirror: TLS handshake refused"),
                Err(_) => tracing::info!(%peer, "image mirror: TLS handshake timed out"),
            }
        });
    }
}

/// Reads one request and writes its response.
async fn handle<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    store: &ContainerdStore,
) -> std::io::Result<()> {
    let Some((method, target)) = read_request_line(s).await? else {
        return respond(s, 400, "text/plain", &[], b"malformed request\n", false).await;
    };
    let head = method == "HEAD";
    match route::parse(&method, &target) {
        Ok(Route::Base) => respond(s, 200, "application/json", &[], b"{}", head).await,
        Ok(Route::Manifest { image }) => manifest(s, store, &image, head).await,
        Ok(Route::Blob { digest }) => blob(s, store, &digest, head).await,
        Err(e @ RouteError::Method(_)) => error(s, 405, "UNSUPPORTED", &e.to_string(), head).await,
        Err(e @ RouteError::NotFound(_)) => error(s, 404, "NOT_FOUND", &e.to_string(), head).await,
        Err(e @ RouteError::Invalid { .. }) => error(s, 400, "NAME_INVALID", &e.to_string(), head).await,
    }
}

async fn manifest<S: AsyncWrite + Unpin>(
    s: &mut S,
    store: &ContainerdStore,
    image: &str,
    head: bool,
) -> std::io::Result<()> {
    let found = match image.split_once('@') {
        Some((_, digest)) => Ok(Some((digest.to_owned(), None))),
        None => store
            .resolve(image)
            .await
            .map(|r| r.map(|r| (r.digest, Some(r.media_type)))),
    };
    let (digest, media_type) = match found {
        Ok(Some(f)) => f,
        Ok(None) => {
            let msg =
                format!("{image} is not on this node (k8sd serves only the images its containerd holds)");
            return error(s, 404, "MANIFEST_UNKNOWN", &msg, head).await;
        }
        Err(e) => {
            tracing::warn!(image, error = %e, "image mirror: cannot resolve");
            return error(s, 500, "UNKNOWN", &e.to_string(), head).await;
        }
    };
    let body = match store::read_small(&store.blob_path(&digest)).await {
        Ok(b) => b,
        Err(_) => {
            let msg = format!("manifest {digest} of {image} is not in this node's content store");
            return error(s, 404, "MANIFEST_UNKNOWN", &msg, head).await;
        }
    };
    let media_type = media_type
        .or_else(|| store::declared_media_type(&body))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".into());
    let digest_header = ("Docker-Content-Digest", digest.as_str());
    respond(s, 200, &media_type, &[digest_header], &body, head).await
}

async fn blob<S: AsyncWrite + Unpin>(
    s: &mut S,
    store: &ContainerdStore,
    digest: &str,
    head: bool,
) -> std::io::Result<()> {
    let size = match store.blob_size(digest).await {
        Ok(Some(size)) => size,
        Ok(None) => {
            return error(
                s,
                404,
                "BLOB_UNKNOWN",
                &format!("{digest} is not on this node"),
                head,
            )
            .await;
        }
        Err(e) => return error(s, 500, "UNKNOWN", &e.to_string(), head).await,
    };
    write_head(
        s,
        200,
        "application/octet-stream",
        &[("Docker-Content-Digest", digest)],
        size,
    )
    .await?;
    if !head {
        let mut f = tokio::fs::File::open(store.blob_path(digest)).await?;
        tokio::io::copy(&mut f, s).await?;
    }
    s.flush().await
}

/// The distribution API's error body.
async fn error<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    code: &str,
    msg: &str,
    head: bool,
) -> std::io::Result<()> {
    let body = serde_json::json!({ "errors": [{ "code": code, "message": msg }] }).to_string();
    respond(s, status, "application/json", &[], body.as_bytes(), head).await
}

async fn respond<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    body: &[u8],
    head: bool,
) -> std::io::Result<()> {
    write_head(s, status, content_type, extra, body.len() as u64).await?;
    if !head {
        s.write_all(body).await?;
    }
    s.flush().await
}

async fn write_head<S: AsyncWrite + Unpin>(
    s: &mut S,
    status: u16,
    content_type: &str,
    extra: &[(&str, &str)],
    len: u64,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Internal Server Error",
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\
         Docker-Distribution-API-Version: registry/2.0\r\nConnection: close\r\n"
    );
    for (k, v) in extra {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await
}

/// The method and target of the request line, after reading the whole head; `None` when the
/// head is not HTTP/1.x or is too long.
async fn read_request_line<S: AsyncRead + Unpin>(s: &mut S) -> std::io::Result<Option<(String, String)>> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        if buf.len() > MAX_HEAD {
            return Ok(None);
        }
        let n = tokio::time::timeout(std::time::Duration::from_secs(30), s.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "request head"))??;
        if n == 0 {
            return Ok(None);
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Ok(parse_request_line(&buf))
}

fn parse_request_line(head: &[u8]) -> Option<(String, String)> {
    let line = head.split(|&b| b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?.trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    (version.starts_with("HTTP/1.") && parts.next().is_none()).then(|| (method.to_owned(), target.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse_or_are_refused() {
        assert_eq!(
            parse_request_line(b"HEAD /v2/a/manifests/1?ns=x HTTP/1.1\r\nHost: h\r\n\r\n"),
            Some(("HEAD".into(), "/v2/a/manifests/1?ns=x".into()))
        );
        assert_eq!(parse_request_line(b"GET / HTTP/2\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"GET /a b HTTP/1.1\r\n\r\n"), None);
        assert_eq!(parse_request_line(b"\xff\xfe\r\n\r\n"), None);
    }

    #[tokio::test]
    async fn errors_are_distribution_api_bodies() {
        let mut out = Vec::new();
        error(
            &mut out,
            404,
            "MANIFEST_UNKNOWN",
            "x:1 is not on this node",
            false,
        )
        .await
        .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
        assert!(text.contains("Connection: close\r\n"));
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["errors"][0]["code"], "MANIFEST_UNKNOWN");
        let mut head_only = Vec::new();
        error(&mut head_only, 404, "X", "y", true).await.unwrap();
        assert!(String::from_utf8(head_only).unwrap().ends_with("\r\n\r\n"));
    }
}
