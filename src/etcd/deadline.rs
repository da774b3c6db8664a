//! A client's deadline (`grpc-timeout`) answered as etcd answers it: `Unavailable`
//! ("etcdserver: request timed out"), never `Cancelled`.
//!
//! tonic's server enforces `grpc-timeout` itself and answers an expired call with
//! `Cancelled` ("Timeout expired"). etcd's Go client treats `Cancelled` and `DeadlineExceeded`
//! from the server, while its own context is still live, as "the call's own deadline passed"
//! and sends the call again, writes included (`retry_interceptor.go`, `isContextError`).
//! A write whose proposal was already made when tonic gave up is then applied once per
//! attempt, each retry with what was left of the deadline: the linearizability check saw one
//! unconditional Txn applied five times. etcd's server never answers those codes: its handler
//! gives up with `ErrTimeout`, `Unavailable`, which the client does not retry for writes.
//!
//! [`Deadline`] sits inside tonic's own timeout and gives up first, [`MARGIN`] before the
//! client's deadline, with etcd's answer. tonic polls the call before its own timer, so when
//! both have passed this answer wins. A call that arrives with less than [`MARGIN`] left is
//! answered at once, before anything is proposed.

use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::{Service, http};

use super::metered::BoxFuture;

/// How long before the client's deadline a call is given up: just enough that this layer's
/// timer is never due after tonic's (created a few microseconds apart, both rounded up to the
/// timer's millisecond), and no more, so the client sees the failure when etcd's client would,
/// at its own deadline. With 20 ms, a Kubernetes storage test whose writer and watch share one
/// deadline saw the write fail before its watch ended, where etcd fails both at once.
pub const MARGIN: Duration = Duration::from_millis(2);

/// The layer: `tower_layer::layer_fn(Deadline::new)`.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S> Deadline<S> {
    pub fn new(inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

impl<S> Service<http::Request<Body>> for Deadline<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(timeout) = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| parse_grpc_timeout(v.as_bytes()))
        else {
            return Box::pin(self.inner.call(req));
        };
        let Some(budget) = timeout.checked_sub(MARGIN).filter(|b| !b.is_zero()) else {
            return Box::pin(async { Ok(timed_out()) });
        };
        let call = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout(budget, call).await {
                Ok(answer) => answer,
                Err(_) => Ok(timed_out()),
            }
        })
    }
}

fn timed_out() -> http::Response<Body> {
    super::status::timed_out().into_http()
}

/// The gRPC `grpc-timeout` header: at most 8 ASCII digits and a unit (H, M, S, m, u, n).
/// `None` when malformed, as tonic then applies no deadline either.
pub fn parse_grpc_timeout(v: &[u8]) -> Option<Duration> {
    let (digits, unit) = v.split_at_checked(v.len().checked_sub(1)?)?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(match unit {
        b"H" => Duration::from_secs(n * 3600),
        b"M" => Duration::from_secs(n * 60),
        b"S" => Duration::from_secs(n),
        b"m" => Duration::from_millis(n),
        b"u" => Duration::from_micros(n),
        b"n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_headers_parse_as_the_spec_writes_them() {
        assert_eq!(parse_grpc_timeout(b"1S"), Some(Duration::from_secs(1)));
        assert_eq!(parse_grpc_timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(b"4999m"), Some(Duration::from_millis(4999)));
        assert_eq!(
            parse_grpc_timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout(b"10n"), Some(Duration::from_nanos(10)));
        for bad in [&b""[..], b"S", b"123456789S", b"1x", b"-1S", b"1.5S", b"m1"] {
            assert_eq!(
                parse_grpc_timeout(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    /// A service that answers after `delay`, counting its calls.
    #[derive(Clone)]
    struct Slow {
        delay: Duration,
        calls: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Service<http::Request<Body>> for Slow {
        type Response = http::Response<Body>;
        type Error = std::convert::Infallible;
        type Future = BoxFuture<Result<http::Response<Body>, Self::Error>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<Body>) -> Self::Future {
            self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let delay = self.delay;
            Box::pin(async move {
                tokio::time::sleep(delay).await;
                Ok(http::Response::builder()
                    .header("grpc-status", "0")
                    .body(Body::empty())
                    .unwrap_or_default())
            })
        }
    }

    fn status_of(r: &http::Response<Body>) -> (String, String) {
        let h = |n: &str| {
            r.headers()
                .get(n)
                .map(|v| v.to_str().unwrap_or_default().to_string())
                .unwrap_or_default()
        };
        (h("grpc-status"), h("grpc-message"))
    }

    async fn call(delay: Duration, timeout: Option<&str>) -> (String, String, usize) {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut svc = Deadline {
            inner: Slow {
                delay,
                calls: calls.clone(),
            },
        };
        let mut req = http::Request::new(Body::empty());
        if let Some(t) = timeout {
            req.headers_mut().insert("grpc-timeout", t.parse().unwrap());
        }
        let r = svc.call(req).await.unwrap();
        let (code, msg) = status_of(&r);
        (code, msg, calls.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_answered_unavailable_as_etcd_does_never_cancelled() {
        let unavailable = (tonic::Code::Unavailable as i32).to_string();
        // Slower than the deadline: etcd's timeout answer, not tonic's Cancelled.
        let (code, msg, calls) = call(Duration::from_secs(5), Some("200m")).await;
        assert_eq!((code.as_str(), calls), (unavailable.as_str(), 1));
        assert!(msg.contains("request%20timed%20out"), "{msg}");
        // Faster than the deadline, or no deadline at all: the service's own answer.
        assert_eq!(call(Duration::ZERO, Some("5S")).await.0, "0");
        assert_eq!(call(Duration::from_millis(50), None).await.0, "0");
        // Too little time left to do anything: answered at once, the service never called.
        let (code, _, calls) = call(Duration::ZERO, Some("2m")).await;
        assert_eq!((code.as_str(), calls), (unavailable.as_str(), 0));
    }
}
