//! Exit codes: one per kind of failure, so scripts can branch on what went wrong. The table is
//! printed at the end of `k8sd --help` and written in docs/cli.md; codes never change meaning.

use crate::daemon::config::ConfigError;
use crate::daemon::{ControlError, DaemonError, FailureKind, config_error_kind};

/// `k8sd --help`'s closing section.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  internal error: a fault, a broken host or an unreachable peer
  2  usage: a wrong flag, value, name or token text (nothing was changed)
  3  this node is not initialised (run `k8sd init` or `k8sd join` first)
  4  this node is already initialised (nothing was changed)
  5  the k8sd daemon is not running here
  6  refused: by the cluster, a quorum or safety check, or for want of confirmation (nothing was changed)";

/// The exit code of a kind of failure (the table above).
pub fn code(kind: FailureKind) -> u8 {
    match kind {
        FailureKind::Internal => 1,
        FailureKind::Usage => 2,
        FailureKind::NotInitialised => 3,
        FailureKind::AlreadyInitialised => 4,
        FailureKind::DaemonNotRunning => 5,
        FailureKind::Refused => 6,
    }
}

/// A CLI failure with its kind: what the daemon answered, or what the CLI itself found.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

/// A [`Failure`] as the CLI's error type.
pub fn failure(kind: FailureKind, message: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(Failure {
        kind,
        message: message.into(),
    })
}

/// Returns early with a [`Failure`] of `kind` (a `FailureKind` variant) and a formatted message.
macro_rules! fail {
    ($kind:ident, $($arg:tt)+) => {
        return Err($crate::cli::exit::failure(
            $crate::daemon::FailureKind::$kind,
            format!($($arg)+),
        ))
    };
}
pub(crate) use fail;

/// The kind of the first classified error in `err`'s chain; unclassified errors are internal.
pub fn kind_of(err: &anyhow::Error) -> FailureKind {
    for cause in err.chain() {
        if let Some(f) = cause.downcast_ref::<Failure>() {
            return f.kind;
        }
        if let Some(e) = cause.downcast_ref::<DaemonError>() {
            return e.kind();
        }
        if let Some(e) = cause.downcast_ref::<ConfigError>() {
            return config_error_kind(e);
        }
        if let Some(ControlError::NotRunning(_)) = cause.downcast_ref::<ControlError>() {
            return FailureKind::DaemonNotRunning;
        }
    }
    FailureKind::Internal
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn every_kind_has_its_own_code_and_the_help_lists_it() {
        let kinds = [
            FailureKind::Internal,
            FailureKind::Usage,
            FailureKind::NotInitialised,
            FailureKind::AlreadyInitialised,
            FailureKind::DaemonNotRunning,
            FailureKind::Refused,
        ];
        let mut codes: Vec<u8> = kinds.iter().map(|k| code(*k)).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes, vec![1, 2, 3, 4, 5, 6]);
        for c in codes {
            assert!(
                EXIT_CODES_HELP.contains(&format!("\n  {c}  ")),
                "code {c} missing from --help"
            );
        }
    }

    #[test]
    fn the_kind_is_found_under_added_context() {
        let daemon_down = anyhow::Error::new(ControlError::NotRunning("/run/k8sd/control.sock".into()))
            .context("asking for the status");
        assert_eq!(kind_of(&daemon_down), FailureKind::DaemonNotRunning);

        let already: anyhow::Result<()> =
            Err(DaemonError::AlreadyInitialised("/var/lib/k8sd/node.yaml".into())).context("k8sd init");
        assert_eq!(kind_of(&already.unwrap_err()), FailureKind::AlreadyInitialised);

        let refused = failure(FailureKind::Refused, "not confirmed; nothing was changed");
        assert_eq!(code(kind_of(&refused)), 6);

        assert_eq!(kind_of(&anyhow::anyhow!("disk on fire")), FailureKind::Internal);
    }

    #[test]
    fn a_bad_flag_is_usage_and_said_once() {
        use crate::daemon::extra_args::ExtraArgsError;
        let bad = anyhow::Error::new(ConfigError::from(ExtraArgsError::Malformed {
            component: "kube-proxy".into(),
            arg: "bogus".into(),
        }));
        assert_eq!(code(kind_of(&bad)), 2);
        // main prints `{err:#}`, every source included: the cause must not be repeated.
        assert_eq!(format!("{bad:#}").matches("is malformed").count(), 1, "{bad:#}");
    }

    #[test]
    fn fail_returns_a_failure_of_that_kind() {
        fn refuse(n: u32) -> anyhow::Result<()> {
            fail!(Usage, "--ttl must be positive, not {n}");
        }
        let err = refuse(0).unwrap_err();
        assert_eq!(kind_of(&err), FailureKind::Usage);
        assert_eq!(err.to_string(), "--ttl must be positive, not 0");
    }
}
