//! Pid files, and the cleanup of processes left behind by a previous k8sd.
//!
//! PR_SET_PDEATHSIG normally takes children down with k8sd, but not always: a child that was
//! being forked while k8sd died, or a component started by an older k8sd that lacked it. A
//! leftover kube-apiserver holds port 6443 and makes the new one crash-loop, so at start we look
//! at each component's pid file and kill what it names.
//!
//! Killing by pid file alone is dangerous: after a reboot or enough time the pid belongs to an
//! unrelated process. So we kill only when two independent facts prove the process is ours
//! (as k0s does): its environment carries `K8SD_MANAGED=<our instance>`, set by `child.rs` on
//! every child, and its executable is the component's program. Anything else is left alone and
//! only the pid file is removed.
//!
//! A race remains between the check and the kill (the process could exit and its pid be reused
//! in between). pidfd_open would close it for the leader but not for the rest of its group; the
//! window is microseconds on a process that was just seen alive, and we accept it.

use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{Pid, getpgid};

use super::MARKER_ENV;

/// How often to look whether a signalled stale process is gone.
const POLL: Duration = Duration::from_millis(20);

/// After SIGKILL, how long to wait for the kernel to finish the process off.
const KILL_WAIT: Duration = Duration::from_secs(5);

pub(crate) fn path(run_dir: &Path, component: &str) -> PathBuf {
    run_dir.join(format!("{component}.pid"))
}

/// Pid files are readable by anyone, as a process's pid is anyway (`/proc`).
const PID_FILE_MODE: u32 = 0o644;

/// Writes the pid file atomically (`atomic_file`), so a crash of k8sd never leaves a
/// half-written pid that could name some other process.
pub(crate) fn write(run_dir: &Path, component: &str, pid: u32) -> io::Result<()> {
    std::fs::create_dir_all(run_dir)?;
    let contents = format!("{pid}\n");
    crate::atomic_file::replace(&path(run_dir, component), contents.as_bytes(), PID_FILE_MODE)?;
    Ok(())
}

pub(crate) fn remove(run_dir: &Path, component: &str) {
    match std::fs::remove_file(path(run_dir, component)) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(component, error = %e, "cannot remove pid file"),
    }
}

/// What [`clean_stale`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stale {
    NoPidFile,
    /// The pid file named no live process (or was unreadable); the file was removed.
    Gone,
    /// A live process that we cannot prove is ours; it was left running.
    NotOurs {
        pid: i32,
        reason: &'static str,
    },
    /// Our process: it was terminated.
    Killed {
        pid: i32,
    },
}

/// Handles `<run_dir>/<component>.pid` before `component` is started. `program` is the
/// component's resolved program, `instance` our `K8SD_MANAGED` value. The pid file is always
/// removed.
pub(crate) async fn clean_stale(
    run_dir: &Path,
    component: &str,
    program: &Path,
    instance: &OsStr,
    grace: Duration,
) -> Stale {
    let file = path(run_dir, component);
    let contents = match std::fs::read_to_string(&file) {
        Ok(contents) => contents,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Stale::NoPidFile,
        Err(e) => {
            tracing::warn!(component, path = %file.display(), error = %e, "cannot read pid file; removing it");
            remove(run_dir, component);
            return Stale::Gone;
        }
    };
    let outcome = match contents.trim().parse::<i32>() {
        // pid 0 and negative values would make kill() signal whole groups; never act on them.
        Ok(pid) if pid > 0 && is_alive(pid) => match is_ours(pid, program, instance) {
            Ok(()) => {
                tracing::warn!(component, pid, "killing a process left behind by a previous k8sd");
                terminate(pid, grace).await;
                Stale::Killed { pid }
            }
            Err(reason) => {
                tracing::warn!(
                    component,
                    pid,
                    reason,
                    "stale pid file names a process that is not ours; leaving it alone"
                );
                Stale::NotOurs { pid, reason }
            }
        },
        _ => Stale::Gone,
    };
    remove(run_dir, component);
    outcome
}

/// Proves that `pid` was started by this k8sd instance as `program`, or says why not.
pub(crate) fn is_ours(pid: i32, program: &Path, instance: &OsStr) -> Result<(), &'static str> {
    // The environment the process was exec'd with: NUL-separated KEY=VALUE entries. Reading
    // another user's environ needs privileges; failure to read means "not proven", not "ours".
    let environ = std::fs::read(format!("/proc/{pid}/environ")).map_err(|_| "cannot read its environment")?;
    let mut marker = Vec::from(MARKER_ENV.as_bytes());
    marker.push(b'=');
    marker.extend_from_slice(instance.as_bytes());
    if !environ.split(|&b| b == 0).any(|entry| entry == marker.as_slice()) {
        return Err("no K8SD_MANAGED marker of this instance");
    }

    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|_| "cannot read its executable")?;
    // An upgrade replaces the binary while the old process runs; the kernel then reports the
    // old path with " (deleted)" appended. It is still the same program for our purposes.
    let exe_bytes = exe.as_os_str().as_bytes();
    let exe = Path::new(OsStr::from_bytes(
        exe_bytes.strip_suffix(b" (deleted)").unwrap_or(exe_bytes),
    ));
    // /proc/<pid>/exe is fully resolved, so compare with the resolved program. If the program
    // no longer exists, compare with its path as given.
    let expected = program.canonicalize().unwrap_or_else(|_| program.to_owned());
    if exe != expected {
        return Err("runs a different program");
    }
    Ok(())
}

/// SIGTERM (to the group, if `pid` leads one, which our children always do), a bounded wait,
/// then SIGKILL. The process is not our child any more, so we cannot wait() for it: we poll.
async fn terminate(pid: i32, grace: Duration) {
    let target = Pid::from_raw(pid);
    let is_group_leader = getpgid(Some(target)).is_ok_and(|pgid| pgid == target);
    let send = |signal| {
        let result = if is_group_leader {
            killpg(target, signal)
        } else {
            kill(target, signal)
        };
        if let Err(e) = result
            && e != Errno::ESRCH
        {
            tracing::warn!(pid, %signal, error = %e, "cannot signal stale process");
        }
    };
    send(Signal::SIGTERM);
    if wait_gone(pid, grace).await {
        return;
    }
    send(Signal::SIGKILL);
    if !wait_gone(pid, KILL_WAIT).await {
        tracing::warn!(pid, "stale process survived SIGKILL");
    }
}

async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while is_alive(pid) {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

/// Whether `pid` exists and is not a zombie. A killed zombie is as good as gone: its parent
/// (often not us) has merely not reaped it yet.
pub fn is_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // Format: "pid (comm) state ...". comm may contain spaces and parentheses, so find the
    // state after the last ')'.
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X' | 'x'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sleep_path() -> PathBuf {
        super::super::child::resolve_program(Path::new("sleep")).unwrap()
    }

    /// Spawns and waits until the exec has fully finished. A vfork-style spawn returns once
    /// the new image replaced the old one, but the kernel fills in the new environment (what
    /// /proc/<pid>/environ shows) a moment later. Real stale processes are long past that.
    fn spawn(cmd: &mut Command) -> std::process::Child {
        let child = cmd.spawn().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::read(format!("/proc/{}/environ", child.id()))
            .unwrap_or_default()
            .is_empty()
        {
            assert!(std::time::Instant::now() < deadline, "exec did not finish");
            std::thread::sleep(Duration::from_millis(1));
        }
        child
    }

    fn pid_of(child: &std::process::Child) -> i32 {
        i32::try_from(child.id()).unwrap()
    }

    #[tokio::test]
    async fn kills_only_marked_processes_running_the_program() {
        let run = tempfile::tempdir().unwrap();
        let instance = OsStr::new("test-instance-pidfile");
        let sleep = sleep_path();

        let mut marked = spawn(Command::new(&sleep).arg("100").env(MARKER_ENV, instance));
        let mut unmarked = spawn(Command::new(&sleep).arg("100"));
        let mut other_instance = spawn(Command::new(&sleep).arg("100").env(MARKER_ENV, "someone-else"));
        // Marked, but the spec names a different program: not provably ours.
        let mut wrong_program = spawn(Command::new(&sleep).arg("100").env(MARKER_ENV, instance));

        assert_eq!(is_ours(pid_of(&marked), &sleep, instance), Ok(()));
        assert!(is_ours(pid_of(&unmarked), &sleep, instance).is_err());
        assert!(is_ours(pid_of(&other_instance), &sleep, instance).is_err());
        let sh = super::super::child::resolve_program(Path::new("sh")).unwrap();
        assert_eq!(
            is_ours(pid_of(&wrong_program), &sh, instance),
            Err("runs a different program")
        );

        for (name, child) in [
            ("a", &marked),
            ("b", &unmarked),
            ("c", &other_instance),
            ("d", &wrong_program),
        ] {
            write(run.path(), name, child.id()).unwrap();
        }
        let grace = Duration::from_secs(2);
        let a = clean_stale(run.path(), "a", &sleep, instance, grace).await;
        assert_eq!(a, Stale::Killed { pid: pid_of(&marked) });
        assert!(!is_alive(pid_of(&marked)));
        let b = clean_stale(run.path(), "b", &sleep, instance, grace).await;
        assert!(matches!(b, Stale::NotOurs { .. }), "{b:?}");
        let c = clean_stale(run.path(), "c", &sleep, instance, grace).await;
        assert!(matches!(c, Stale::NotOurs { .. }), "{c:?}");
        let d = clean_stale(run.path(), "d", &sh, instance, grace).await;
        assert!(matches!(d, Stale::NotOurs { .. }), "{d:?}");
        assert!(
            is_alive(pid_of(&unmarked))
                && is_alive(pid_of(&other_instance))
                && is_alive(pid_of(&wrong_program))
        );
        for name in ["a", "b", "c", "d"] {
            assert!(
                !path(run.path(), name).exists(),
                "pid file {name} was not removed"
            );
        }
        assert_eq!(
            clean_stale(run.path(), "a", &sleep, instance, grace).await,
            Stale::NoPidFile
        );

        for child in [&mut unmarked, &mut other_instance, &mut wrong_program] {
            child.kill().unwrap();
        }
        for child in [
            &mut marked,
            &mut unmarked,
            &mut other_instance,
            &mut wrong_program,
        ] {
            child.wait().unwrap();
        }
    }

    #[tokio::test]
    async fn garbage_and_dead_pids_are_just_removed() {
        let run = tempfile::tempdir().unwrap();
        std::fs::write(path(run.path(), "x"), "not a pid").unwrap();
        std::fs::write(path(run.path(), "y"), "0\n").unwrap();
        let mut dead = Command::new("true").spawn().unwrap();
        dead.wait().unwrap();
        write(run.path(), "z", dead.id()).unwrap();
        for name in ["x", "y", "z"] {
            let outcome = clean_stale(
                run.path(),
                name,
                Path::new("/bin/true"),
                OsStr::new("i"),
                Duration::ZERO,
            )
            .await;
            assert_eq!(outcome, Stale::Gone, "{name}");
            assert!(!path(run.path(), name).exists());
        }
    }

    #[test]
    fn zombie_is_not_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = pid_of(&child);
        // Not yet reaped: wait until it is a zombie.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while is_alive(pid) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!is_alive(pid));
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "zombie should still be listed"
        );
        child.wait().unwrap();
    }
}
