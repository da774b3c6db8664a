//! gRPC services of etcd that k8sd does not serve (v3lock `Lock`, v3election `Election`).
//!
//! Without a route, tonic answers Unimplemented with an empty message, which leaves an
//! operator guessing. Each service here answers every method with Unimplemented and a
//! message that names the service and what to use instead.

use std::convert::Infallible;
use std::future::Ready;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

use super::status::service_unimplemented;

macro_rules! refused {
    ($ty:ident, $name:literal, $instead:literal) => {
        #[derive(Debug, Clone, Copy, Default)]
        pub struct $ty;

        impl NamedService for $ty {
            const NAME: &'static str = $name;
        }

        impl Service<http::Request<Body>> for $ty {
            type Response = http::Response<Body>;
            type Error = Infallible;
            type Future = Ready<Result<Self::Response, Infallible>>;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, _req: http::Request<Body>) -> Self::Future {
                std::future::ready(Ok(service_unimplemented($name, $instead).into_http()))
            }
        }
    };
}

refused!(
    Lock,
    "v3lockpb.Lock",
    "take a lock with a lease and a create-if-absent Txn (mod_revision == 0), as etcd's concurrency package does, or use a Kubernetes Lease object"
);
refused!(
    Election,
    "v3electionpb.Election",
    "elect a leader with a Kubernetes Lease object (client-go leaderelection) or a lease-bound create-if-absent Txn"
);
