//! The gRPC server metrics of the client listener (`metrics::grpc`): a tower layer in front of
//! tonic's routes, as go-grpc-prometheus' interceptors sit in front of etcd's handlers.
//!
//! A call is *started* when its request arrives and *handled* when its status is known: in
//! the response headers (a trailers-only answer, as an immediate error is), in the trailers
//! at the end of the body, or, when the client goes away first, as `Canceled`. Messages are
//! counted from the gRPC length prefixes in the bodies, bytes from their data frames. All of
//! it is atomic adds on a fixed table.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::Frame;
use tonic::body::Body;
use tonic::codegen::{Bytes, Service, http};

use crate::metrics::grpc::{GRPC, method_index};

/// grpc-go's code for a call whose client went away.
const CANCELED: usize = 1;

#[derive(Debug, Clone, Copy, Default)]
pub struct MeteredLayer;

impl<S> tower_layer::Layer<S> for MeteredLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner }
    }
}

#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
}

/// The boxed response future of this module's and `deadline.rs`'s services.
pub(super) type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for Metered<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<http::Response<Body>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let Some(method) = method_index(req.uri().path()) else {
            return Box::pin(self.inner.call(req));
        };
        let start = Instant::now();
        GRPC.started(method);
        let req = req.map(|b| {
            Body::new(Counted {
                inner: b,
                method,
                start,
                frames: Frames::default(),
                side: Side::Request,
            })
        });
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            let code = status_code(resp.headers());
            if let Some(code) = code {
                GRPC.handled(method, code, start.elapsed());
            }
            Ok(resp.map(|b| {
                Body::new(Counted {
                    inner: b,
                    method,
                    start,
                    frames: Frames::default(),
                    side: Side::Response {
                        handled: code.is_some(),
                    },
                })
            }))
        })
    }
}

fn status_code(headers: &http::HeaderMap) -> Option<usize> {
    let v = headers.get("grpc-status")?.to_str().ok()?;
    v.parse::<usize>().ok()
}

#[derive(Debug)]
enum Side {
    Request,
    /// `handled`: the status has been counted already.
    Response {
        handled: bool,
    },
}

/// A body that counts gRPC messages and bytes as they pass and, on the response side,
/// records the call's status.
#[derive(Debug)]
struct Counted {
    inner: Body,
    method: usize,
    start: Instant,
    frames: Frames,
    side: Side,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                let n = this.frames.feed(data);
                match this.side {
                    Side::Request => {
                        GRPC.received_bytes.add(data.len() as u64);
                        GRPC.received(this.method, n);
                    }
                    Side::Response { .. } => {
                        GRPC.sent_bytes.add(data.len() as u64);
                        GRPC.sent(this.method, n);
                    }
                }
            } else if let Some(trailers) = frame.trailers_ref()
                && let Side::Response { handled } = &mut this.side
                && !*handled
                && let Some(code) = status_code(trailers)
            {
                *handled = true;
                GRPC.handled(this.method, code, this.start.elapsed());
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        // The response body went away before its trailers: the client cancelled (a watch
        // stream closed by its client ends this way).
        if let Side::Response { handled: false } = self.side {
            GRPC.handled(self.method, CANCELED, self.start.elapsed());
        }
    }
}

/// Splits a byte stream into gRPC messages (1 flag byte, 4 bytes of big-endian length, the
/// message) to count them, whatever the data frames' boundaries.
#[derive(Debug, Default)]
struct Frames {
    header: [u8; 5],
    header_len: usize,
    body_left: u64,
}

impl Frames {
    /// Consume `data`; returns how many messages started in it.
    fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut started = 0;
        while !data.is_empty() {
            if self.body_left > 0 {
                let n = usize::try_from(self.body_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.body_left -= n as u64;
                data = &data[n..];
                continue;
            }
            let n = (5 - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == 5 {
                let len =
                    u32::from_be_bytes([self.header[1], self.header[2], self.header[3], self.header[4]]);
                self.body_left = u64::from(len);
                self.header_len = 0;
                started += 1;
            }
        }
        started
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_counted_across_frame_boundaries() {
        let mut f = Frames::default();
        let msg = |len: u8| {
            let mut m = vec![0, 0, 0, 0, len];
            m.extend(std::iter::repeat_n(7u8, usize::from(len)));
            m
        };
        let stream: Vec<u8> = [msg(3), msg(0), msg(10)].concat();
        assert_eq!(f.feed(&stream), 3);
        let mut f = Frames::default();
        let counted: u64 = stream.chunks(2).map(|c| f.feed(c)).sum();
        assert_eq!(counted, 3);
    }
}
