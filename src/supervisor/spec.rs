//! What to run: one [`ComponentSpec`] per child process, built by the daemon.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::backoff::BackoffPolicy;
use super::probe::Probe;

/// Size-based rotation of a component's log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogRotation {
    /// Rotate when the next line would make the file larger than this.
    pub max_bytes: u64,
    /// Rotated files kept as `<log>.1` (newest) to `<log>.<keep>`; zero keeps none.
    pub keep: usize,
}

impl Default for LogRotation {
    fn default() -> Self {
        Self {
            max_bytes: 10 * 1024 * 1024,
            keep: 3,
        }
    }
}

/// Everything the supervisor needs to run, watch and stop one component.
///
/// Build it with [`ComponentSpec::new`] and the `with_*` methods; all fields are public so the
/// daemon and tests can also adjust them directly.
#[derive(Clone, Debug)]
pub struct ComponentSpec {
    /// Unique name, e.g. `kube-apiserver`; also names the pid and log files.
    pub name: String,
    /// Absolute path, or a bare name looked up in `PATH` when the component is started.
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Added to k8sd's own environment. `NOTIFY_SOCKET` is removed even if listed here, and the
    /// `K8SD_MANAGED` marker always wins.
    pub env: Vec<(OsString, OsString)>,
    pub working_dir: Option<PathBuf>,
    /// Combined stdout and stderr, appended and rotated.
    pub log_path: PathBuf,
    pub log_rotation: LogRotation,
    pub readiness: Probe,
    /// How long `start` waits for `readiness` before giving up on the whole start.
    pub ready_timeout: Duration,
    /// Pause between readiness attempts.
    pub probe_interval: Duration,
    /// Bound on one readiness attempt, so a hanging custom probe cannot stall the gate.
    pub probe_timeout: Duration,
    /// Grace period between SIGTERM and SIGKILL.
    pub stop_timeout: Duration,
    pub backoff: BackoffPolicy,
}

impl ComponentSpec {
    /// A spec with defaults: no arguments, log at `<log_dir>/<name>.log`, ready as soon as it
    /// runs, 60 s readiness timeout, 10 s stop timeout.
    pub fn new(name: impl Into<String>, program: impl Into<PathBuf>, log_dir: impl AsRef<Path>) -> Self {
        let name = name.into();
        let log_path = log_dir.as_ref().join(format!("{name}.log"));
        Self {
            name,
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            working_dir: None,
            log_path,
            log_rotation: LogRotation::default(),
            readiness: Probe::always(),
            ready_timeout: Duration::from_secs(60),
            probe_interval: Duration::from_millis(500),
            probe_timeout: Duration::from_secs(5),
            stop_timeout: Duration::from_secs(10),
            backoff: BackoffPolicy::default(),
        }
    }

    pub fn with_args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn with_env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    pub fn with_working_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.working_dir = Some(dir.into());
        self
    }

    pub fn with_readiness(mut self, probe: Probe, ready_timeout: Duration) -> Self {
        self.readiness = probe;
        self.ready_timeout = ready_timeout;
        self
    }

    pub fn with_stop_timeout(mut self, timeout: Duration) -> Self {
        self.stop_timeout = timeout;
        self
    }

    pub fn with_backoff(mut self, backoff: BackoffPolicy) -> Self {
        self.backoff = backoff;
        self
    }

    pub fn with_log_rotation(mut self, rotation: LogRotation) -> Self {
        self.log_rotation = rotation;
        self
    }
}
