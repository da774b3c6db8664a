//! Supervision of the Kubernetes components that k8sd runs as child processes.
//!
//! Work in progress: specs, probes, errors and log handling; the process runtime follows.

mod backoff;
mod error;
mod logs;
mod probe;
mod spec;

pub use backoff::{Action, Backoff, BackoffPolicy, Event};
pub use error::Error;
pub use probe::Probe;
pub use spec::{ComponentSpec, LogRotation};
