//! Supervision of the Kubernetes components that k8sd runs as child processes.
//!
//! Work in progress: one child process and pid files; the supervisor that ties them follows.

mod backoff;
mod child;
mod error;
mod logs;
mod pidfile;
mod probe;
mod spec;

pub use backoff::{Action, Backoff, BackoffPolicy, Event};
pub use error::Error;
pub use probe::Probe;
pub use spec::{ComponentSpec, LogRotation};

/// Environment variable set on every child; its value identifies this k8sd instance.
pub const MARKER_ENV: &str = "K8SD_MANAGED";

/// systemd's readiness socket, removed from every child's environment.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";
