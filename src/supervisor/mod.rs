//! Supervision of the Kubernetes components that k8sd runs as child processes.
//!
//! Work in progress: the restart policy comes first, as a pure state machine.

mod backoff;

pub use backoff::{Action, Backoff, BackoffPolicy, Event};
