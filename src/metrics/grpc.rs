//! The gRPC server family of go-grpc-prometheus, which etcd registers on its client listener:
//! `grpc_server_started_total`, `grpc_server_handled_total`, `grpc_server_msg_received_total`,
//! `grpc_server_msg_sent_total` and `grpc_server_handling_seconds`, labelled `grpc_type`,
//! `grpc_service`, `grpc_method` (and `grpc_code` for handled).
//!
//! As go-grpc-prometheus does at registration, every method of every served service is listed
//! up front with every code at 0, so a rate over a code that has never happened is 0, not
//! absent. The table is fixed, so recording is an index and an atomic add: no map, no lock.

use super::{Counter, Histogram, Kind, Text};

/// How a method streams, as go-grpc-prometheus names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcType {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl GrpcType {
    fn as_str(self) -> &'static str {
        match self {
            GrpcType::Unary => "unary",
            GrpcType::ClientStream => "client_stream",
            GrpcType::ServerStream => "server_stream",
            GrpcType::BidiStream => "bidi_stream",
        }
    }
}

use GrpcType::{BidiStream, ServerStream, Unary};

/// Every method of the services the datastore's client listener serves (etcd's five, health,
/// and the Lock and Election services it refuses).
pub const METHODS: &[(&str, &str, GrpcType)] = &[
    ("etcdserverpb.KV", "Range", Unary),
    ("etcdserverpb.KV", "Put", Unary),
    ("etcdserverpb.KV", "DeleteRange", Unary),
    ("etcdserverpb.KV", "Txn", Unary),
    ("etcdserverpb.KV", "Compact", Unary),
    ("etcdserverpb.Watch", "Watch", BidiStream),
    ("etcdserverpb.Lease", "LeaseGrant", Unary),
    ("etcdserverpb.Lease", "LeaseRevoke", Unary),
    ("etcdserverpb.Lease", "LeaseKeepAlive", BidiStream),
    ("etcdserverpb.Lease", "LeaseTimeToLive", Unary),
    ("etcdserverpb.Lease", "LeaseLeases", Unary),
    ("etcdserverpb.Cluster", "MemberAdd", Unary),
    ("etcdserverpb.Cluster", "MemberRemove", Unary),
    ("etcdserverpb.Cluster", "MemberUpdate", Unary),
    ("etcdserverpb.Cluster", "MemberList", Unary),
    ("etcdserverpb.Cluster", "MemberPromote", Unary),
    ("etcdserverpb.Maintenance", "Alarm", Unary),
    ("etcdserverpb.Maintenance", "Status", Unary),
    ("etcdserverpb.Maintenance", "Defragment", Unary),
    ("etcdserverpb.Maintenance", "Hash", Unary),
    ("etcdserverpb.Maintenance", "HashKV", Unary),
    ("etcdserverpb.Maintenance", "Snapshot", ServerStream),
    ("etcdserverpb.Maintenance", "MoveLeader", Unary),
    ("etcdserverpb.Maintenance", "Downgrade", Unary),
    ("grpc.health.v1.Health", "Check", Unary),
    ("grpc.health.v1.Health", "Watch", ServerStream),
    ("v3lockpb.Lock", "Lock", Unary),
    ("v3lockpb.Lock", "Unlock", Unary),
    ("v3electionpb.Election", "Campaign", Unary),
    ("v3electionpb.Election", "Proclaim", Unary),
    ("v3electionpb.Election", "Leader", Unary),
    ("v3electionpb.Election", "Observe", ServerStream),
    ("v3electionpb.Election", "Resign", Unary),
];

const N_METHODS: usize = 33;
const _: () = assert!(METHODS.len() == N_METHODS);

/// grpc-go's names of the status codes, by number.
pub const CODES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// go-grpc-prometheus' handling-time buckets (Prometheus' `DefBuckets`).
const HANDLING_BUCKETS: [f64; 11] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Debug)]
struct MethodMetrics {
    started: Counter,
    handled: [Counter; 17],
    received: Counter,
    sent: Counter,
    handling: Histogram<11>,
}

impl MethodMetrics {
    const fn new() -> Self {
        MethodMetrics {
            started: Counter::new(),
            handled: [const { Counter::new() }; 17],
            received: Counter::new(),
            sent: Counter::new(),
            handling: Histogram::new(HANDLING_BUCKETS),
        }
    }
}

/// The counters of every method, plus etcd's client byte counters (recorded by the same
/// interceptor).
#[derive(Debug)]
pub struct GrpcMetrics {
    methods: [MethodMetrics; N_METHODS],
    /// `etcd_network_client_grpc_received_bytes_total`.
    pub received_bytes: Counter,
    /// `etcd_network_client_grpc_sent_bytes_total`.
    pub sent_bytes: Counter,
}

/// The process's gRPC server metrics (one datastore client API per process).
pub static GRPC: GrpcMetrics = GrpcMetrics {
    methods: [const { MethodMetrics::new() }; N_METHODS],
    received_bytes: Counter::new(),
    sent_bytes: Counter::new(),
};

/// A method's index in [`METHODS`], from a request path `/package.Service/Method`. Paths of
/// methods nobody serves are not counted (grpc-go answers them before any interceptor).
pub fn method_index(path: &str) -> Option<usize> {
    let (service, method) = path.strip_prefix('/')?.split_once('/')?;
    METHODS.iter().position(|(s, m, _)| *s == service && *m == method)
}

impl GrpcMetrics {
    pub fn started(&self, method: usize) {
        self.methods[method].started.inc();
    }

    /// A call ended with gRPC status `code` after `elapsed`.
    pub fn handled(&self, method: usize, code: usize, elapsed: std::time::Duration) {
        let m = &self.methods[method];
        m.handled[code.min(CODES.len() - 1)].inc();
        m.handling.observe(elapsed);
    }

    pub fn received(&self, method: usize, messages: u64) {
        self.methods[method].received.add(messages);
    }

    pub fn sent(&self, method: usize, messages: u64) {
        self.methods[method].sent.add(messages);
    }

    pub fn handled_count(&self, method: usize, code: usize) -> u64 {
        self.methods[method].handled[code].get()
    }

    pub fn render(&self, out: &mut Text) {
        let labels = |i: usize| {
            let (s, m, t) = METHODS[i];
            [("grpc_method", m), ("grpc_service", s), ("grpc_type", t.as_str())]
        };
        #[allow(clippy::cast_precision_loss)] // counts stay far below 2^53
        let f = |c: &Counter| c.get() as f64;
        out.family(
            "grpc_server_started_total",
            Kind::Counter,
            "Total number of RPCs started on the server.",
        );
        for (i, m) in self.methods.iter().enumerate() {
            out.sample("grpc_server_started_total", &labels(i), f(&m.started));
        }
        out.family(
            "grpc_server_handled_total",
            Kind::Counter,
            "Total number of RPCs completed on the server, regardless of success or failure.",
        );
        for (i, m) in self.methods.iter().enumerate() {
            for (code, c) in CODES.iter().zip(&m.handled) {
                let [a, b, t] = labels(i);
                out.sample("grpc_server_handled_total", &[("grpc_code", code), a, b, t], f(c));
            }
        }
        out.family(
            "grpc_server_msg_received_total",
            Kind::Counter,
            "Total number of RPC stream messages received on the server.",
        );
        for (i, m) in self.methods.iter().enumerate() {
            out.sample("grpc_server_msg_received_total", &labels(i), f(&m.received));
        }
        out.family(
            "grpc_server_msg_sent_total",
            Kind::Counter,
            "Total number of gRPC stream messages sent by the server.",
        );
        for (i, m) in self.methods.iter().enumerate() {
            out.sample("grpc_server_msg_sent_total", &labels(i), f(&m.sent));
        }
        out.family(
            "grpc_server_handling_seconds",
            Kind::Histogram,
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
        );
        for (i, m) in self.methods.iter().enumerate() {
            m.handling.render(out, "grpc_server_handling_seconds", &labels(i));
        }
        out.single(
            "etcd_network_client_grpc_received_bytes_total",
            Kind::Counter,
            "The total number of bytes received from grpc clients.",
            f(&self.received_bytes),
        );
        out.single(
            "etcd_network_client_grpc_sent_bytes_total",
            Kind::Counter,
            "The total number of bytes sent to grpc clients.",
            f(&self.sent_bytes),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_map_to_methods_and_unknown_ones_to_none() {
        let i = method_index("/etcdserverpb.KV/Range").unwrap();
        assert_eq!(METHODS[i].1, "Range");
        assert!(method_index("/etcdserverpb.Auth/Authenticate").is_none());
        assert!(method_index("nonsense").is_none());
    }

    #[test]
    fn every_method_and_code_is_present_before_any_call() {
        let m = GrpcMetrics {
            methods: [const { MethodMetrics::new() }; N_METHODS],
            received_bytes: Counter::new(),
            sent_bytes: Counter::new(),
        };
        let mut t = Text::new();
        m.render(&mut t);
        let s = t.finish();
        let handled = s
            .lines()
            .filter(|l| l.starts_with("grpc_server_handled_total{"))
            .count();
        assert_eq!(handled, N_METHODS * CODES.len());
        assert!(s.contains(
            "grpc_server_handled_total{grpc_code=\"Unavailable\",grpc_method=\"Txn\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"} 0\n"
        ), "{s}");
    }
}
