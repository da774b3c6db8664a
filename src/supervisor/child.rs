//! One child process: spawn it with the hygiene every component needs, pump its output into
//! its [`LogSink`], and stop it with SIGTERM, a bounded wait, then SIGKILL.
//!
//! This file is the only place that forks, and the only place with `unsafe` in the supervisor.

use std::ffi::OsStr;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::task::JoinHandle;

use super::logs::{LogSink, Stream};
use super::spec::ComponentSpec;
use super::{Error, MARKER_ENV, NOTIFY_SOCKET_ENV};

/// Lines longer than this are split, so a child writing without newlines cannot grow our memory.
const MAX_LINE: u64 = 64 * 1024;

/// After the child exits, how long to wait for its output pipes to drain into the log. A
/// grandchild that inherited the pipes can keep them open forever, hence the bound.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A running component process. Its pid is also its process group id.
#[derive(Debug)]
pub(crate) struct Child {
    pid: u32,
    inner: tokio::process::Child,
    pumps: Vec<JoinHandle<()>>,
    /// Set once the leader has been reaped; from then on its pgid must not be signalled.
    reaped: bool,
}

/// Spawns `spec` with `args` (the spec's own, unless a restart replaced them), with `program`
/// already resolved by [`resolve_program`].
///
/// `marker` is this k8sd instance's value for `K8SD_MANAGED`; stale-process cleanup relies on
/// it to recognise our children after a crash of k8sd (see `pidfile.rs`).
pub(crate) fn spawn(
    spec: &ComponentSpec,
    args: &[std::ffi::OsString],
    program: &Path,
    marker: &OsStr,
    log: &Arc<LogSink>,
) -> Result<Child, Error> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        // After the spec's own variables, so neither can be overridden by a spec. kube-apiserver
        // and the kubelet send READY=1 themselves when they find NOTIFY_SOCKET, which would make
        // systemd consider k8sd ready before its start chain is (k3s does the same).
        .env_remove(NOTIFY_SOCKET_ENV)
        .env(MARKER_ENV, marker)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group (pgid = pid), so that stop can signal everything the component
        // forked, not just the leader. containerd's shims put themselves in their own group
        // (`Setpgid` in containerd's core/runtime/v2/shim/util_unix.go), so running containers
        // survive a containerd restart as they should. A side benefit: Ctrl-C on a foreground
        // `k8sd run` reaches only k8sd, which then stops the children in order.
        .process_group(0)
        // Lets tokio reap the leader in the background if a `Child` is dropped unreaped;
        // `Drop for Child` below kills the rest of the group.
        .kill_on_drop(true);
    if let Some(dir) = &spec.working_dir {
        cmd.current_dir(dir);
    }

    // Captured before the fork: inside the child, a different parent means k8sd already died.
    let parent = nix::unistd::getpid().as_raw();
    let death_signal = libc::c_ulong::from(libc::SIGKILL.unsigned_abs());
    // SAFETY: the closure runs in the forked child before exec, where only async-signal-safe
    // operations are allowed (another thread of ours may have held the allocator lock at the
    // fork). It calls only `prctl` and `getppid`, both plain syscalls, and builds errors with
    // `io::Error::last_os_error`/`from_raw_os_error`, which store an errno and do not allocate.
    // It touches no locks and no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            // PR_SET_PDEATHSIG: the kernel sends SIGKILL to the child when its parent dies, so
            // components do not outlive a k8sd that was SIGKILLed or crashed. Caveat: "parent"
            // is the forking *thread*; children are forked from tokio worker threads, which live
            // as long as the runtime. The daemon must not drive the supervisor from
            // `spawn_blocking` or `block_in_place` threads, which exit when idle
            // (Go has the same trap: golang/go#27505).
            if libc::prctl(libc::PR_SET_PDEATHSIG, death_signal, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // If k8sd died between fork and prctl, the signal was never armed; bail out rather
            // than run an orphan.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }

    let mut inner = cmd.spawn().map_err(|source| Error::Spawn {
        component: spec.name.clone(),
        program: program.to_owned(),
        source,
    })?;
    // `id()` is `Some` until the child has been waited for, which cannot have happened yet.
    let pid = inner.id().unwrap_or_default();
    let mut pumps = Vec::with_capacity(2);
    if let Some(out) = inner.stdout.take() {
        pumps.push(pump(out, Stream::Stdout, Arc::clone(log)));
    }
    if let Some(err) = inner.stderr.take() {
        pumps.push(pump(err, Stream::Stderr, Arc::clone(log)));
    }
    Ok(Child {
        pid,
        inner,
        pumps,
        reaped: false,
    })
}

impl Child {
    pub(crate) fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits for the process to exit on its own. Cancel-safe, so it can sit in a `select!`.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.inner.wait().await?;
        self.reaped = true;
        self.after_exit().await;
        Ok(status)
    }

    /// SIGTERM to the process group, wait up to `grace`, then SIGKILL.
    pub(crate) async fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.signal_group(Signal::SIGTERM);
        let status = match tokio::time::timeout(grace, self.inner.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                tracing::warn!(pid = self.pid, ?grace, "child ignored SIGTERM; sending SIGKILL");
                self.signal_group(Signal::SIGKILL);
                self.inner.wait().await?
            }
        };
        self.reaped = true;
        self.after_exit().await;
        Ok(status)
    }

    /// Once the leader has been reaped: kill whatever it left behind in its group, so a restart
    /// never runs next to leftovers of the previous run, then let the log pumps drain.
    async fn after_exit(&mut self) {
        // The pgid cannot have been reused yet by an unrelated group: the leader was reaped
        // microseconds ago and Linux hands out pids in increasing order.
        self.signal_group(Signal::SIGKILL);
        for pump in self.pumps.drain(..) {
            // Dropping the handle on timeout detaches the pump; it ends when the pipe closes.
            let _ = tokio::time::timeout(DRAIN_TIMEOUT, pump).await;
        }
    }

    fn signal_group(&self, signal: Signal) {
        let Ok(raw) = i32::try_from(self.pid) else { return };
        match killpg(Pid::from_raw(raw), signal) {
            // ESRCH: the group is already empty, which is what we want.
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => tracing::warn!(pid = self.pid, %signal, error = %e, "cannot signal process group"),
        }
    }
}

/// A `Child` dropped without being waited for (the runtime shut down, or the daemon panicked
/// before calling `stop`): SIGKILL the whole group. `kill_on_drop` alone would kill only the
/// leader and leave, say, a shell's background job running with nobody to stop it.
impl Drop for Child {
    fn drop(&mut self) {
        if !self.reaped {
            self.signal_group(Signal::SIGKILL);
        }
    }
}

/// Copies one output stream, line by line, into the component's log sink.
fn pump<R>(reader: R, stream: Stream, log: Arc<LogSink>) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match (&mut reader).take(MAX_LINE).read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    while line.last().is_some_and(|&b| b == b'\n' || b == b'\r') {
                        line.pop();
                    }
                    log.line(stream, &line);
                }
            }
        }
    })
}

/// Finds the executable for `program`: a bare name is looked up in `PATH` (as `execvp` would);
/// a path is used as given. The result is not canonicalised, because multi-call binaries
/// dispatch on `argv[0]` and need the symlink name they were started by.
pub(crate) fn resolve_program(program: &Path) -> Option<PathBuf> {
    let is_executable = |p: &Path| {
        p.metadata()
            .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.components().count() > 1 || program.is_absolute() {
        return is_executable(program).then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_bare_names_on_path() {
        let sleep = resolve_program(Path::new("sleep")).unwrap();
        assert!(sleep.is_absolute(), "{}", sleep.display());
        assert_eq!(resolve_program(&sleep), Some(sleep.clone()));
        assert_eq!(resolve_program(Path::new("no-such-program-k8sd")), None);
        assert_eq!(resolve_program(Path::new("/etc/passwd")), None, "not executable");
    }
}
