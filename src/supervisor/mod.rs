//! Supervisor of child processes (filled in by the supervisor work).
