//! The supervisor against real processes (`sh`, `sleep`, `false`): ordering, readiness gates,
//! restarts with backoff, SIGTERM escalation, environment hygiene, stale-process cleanup and
//! log rotation. Timeouts are short; timing assertions are only generous bounds.
#![allow(clippy::tests_outside_test_module, clippy::unwrap_used)]

// This module is named like the area, so that `cargo test supervisor` runs these tests together
// with the unit tests of `src/supervisor/`.
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8sd::supervisor::{
    BackoffPolicy, ComponentSpec, ComponentState, ComponentStatus, Error, LogRotation, MARKER_ENV, Probe,
    Supervisor, SupervisorConfig,
};
use tempfile::TempDir;

use crate::common;

struct Harness {
    dir: TempDir,
    instance: String,
    sup: Supervisor,
}

impl Harness {
    fn new(test: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // Unique per test and per run, so parallel tests never recognise each other's children.
        let instance = format!("k8sd-test-{}-{test}", std::process::id());
        let sup = Supervisor::new(SupervisorConfig {
            run_dir: dir.path().join("run"),
            instance: instance.clone().into(),
        });
        Self { dir, instance, sup }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A `sh -c script` component with `$DIR` set to the test directory and fast timings.
    fn sh(&self, name: &str, script: &str) -> ComponentSpec {
        self.spec(name, "sh").with_args(["-c", script])
    }

    /// Writes its pid to `$DIR/<name>.pid` (atomically) and is ready once it has.
    fn reports_pid(&self, name: &str) -> ComponentSpec {
        let script =
            format!(r#"echo $$ > "$DIR/{name}.tmp"; mv "$DIR/{name}.tmp" "$DIR/{name}.pid"; exec sleep 100"#);
        let ready = Probe::file_exists(self.path(&format!("{name}.pid")));
        self.sh(name, &script)
            .with_readiness(ready, Duration::from_secs(10))
    }

    fn spec(&self, name: &str, program: &str) -> ComponentSpec {
        let mut spec = ComponentSpec::new(name, program, self.path("logs"))
            .with_env("DIR", self.dir.path())
            .with_stop_timeout(Duration::from_secs(5))
            .with_backoff(BackoffPolicy {
                initial: Duration::from_millis(100),
                max: Duration::from_millis(400),
                stable_after: Duration::from_secs(10),
            });
        spec.ready_timeout = Duration::from_secs(10);
        spec.probe_interval = Duration::from_millis(50);
        spec
    }

    fn status(&self, name: &str) -> ComponentStatus {
        self.sup.status().into_iter().find(|s| s.name == name).unwrap()
    }

    /// Wait up to 15 s for `f`; a timeout shows the supervisor's status as it was then.
    async fn eventually(&self, what: &str, f: impl Fn(&Self) -> bool) {
        let what = WithStatus(what, &self.sup);
        common::eventually(Duration::from_secs(15), what, || f(self)).await;
    }
}

/// What a wait is for, followed by the supervisor's status when the message is formatted.
struct WithStatus<'a>(&'a str, &'a Supervisor);

impl std::fmt::Display for WithStatus<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; status: {:#?}", self.0, self.1.status())
    }
}

/// Alive and not a zombie (a killed process whose parent has not reaped it yet is gone to us).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].trim_start().chars().next());
    !matches!(state, None | Some('Z' | 'X'))
}

async fn wait_dead(pid: u32) {
    common::eventually(Duration::from_secs(10), format!("pid {pid} to die"), || {
        !alive(pid)
    })
    .await;
}

/// Spawns and waits until /proc/<pid>/environ shows the new image's environment, which the
/// kernel fills in a moment after a vfork-style spawn returns.
fn spawn_exec(cmd: &mut std::process::Command) -> std::process::Child {
    let child = cmd.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::fs::read(format!("/proc/{}/environ", child.id()))
        .unwrap_or_default()
        .is_empty()
    {
        assert!(Instant::now() < deadline, "exec did not finish");
        std::thread::sleep(Duration::from_millis(1));
    }
    child
}

fn read_pid(path: &Path) -> u32 {
    std::fs::read_to_string(path).unwrap().trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_start_in_order_gated_on_readiness() {
    let h = Harness::new("order");
    // `a` becomes ready only after a delay; `b` records whether `a` was ready when it started.
    let a = h
        .sh("a", r#"sleep 0.3; touch "$DIR/a.ready"; exec sleep 100"#)
        .with_readiness(Probe::file_exists(h.path("a.ready")), Duration::from_secs(10));
    let b = h
        .sh(
            "b",
            r#"[ -e "$DIR/a.ready" ] && touch "$DIR/b.saw-a"; touch "$DIR/b.ready"; exec sleep 100"#,
        )
        .with_readiness(Probe::file_exists(h.path("b.ready")), Duration::from_secs(10));
    h.sup.start(vec![vec![a], vec![b]]).await.unwrap();
    assert!(h.path("b.saw-a").exists(), "b started before a was ready");

    let status = h.sup.status();
    assert_eq!(
        status.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["a", "b"]
    );
    let pids: Vec<u32> = status.iter().map(|s| s.pid.unwrap()).collect();
    for s in &status {
        assert_eq!(s.state, ComponentState::Ready, "{s:?}");
        assert_eq!(read_pid(&h.path(&format!("run/{}.pid", s.name))), s.pid.unwrap());
    }

    h.sup.stop().await;
    for s in h.sup.status() {
        assert_eq!((s.state, s.pid), (ComponentState::Stopped, None), "{s:?}");
        assert!(!h.path(&format!("run/{}.pid", s.name)).exists());
    }
    for pid in pids {
        assert!(!alive(pid));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_goes_in_reverse_order() {
    let h = Harness::new("reverse");
    // Ready only once the trap is installed, or an early SIGTERM would kill it silently.
    let spec = |name: &str| {
        let script = format!(
            r#"trap 'echo {name} >> "$DIR/order"; exit 0' TERM; touch "$DIR/{name}.ready"; while :; do sleep 0.05; done"#
        );
        h.sh(name, &script).with_readiness(
            Probe::file_exists(h.path(&format!("{name}.ready"))),
            Duration::from_secs(10),
        )
    };
    h.sup
        .start(vec![vec![spec("a")], vec![spec("b")], vec![spec("c")]])
        .await
        .unwrap();
    h.sup.stop().await;
    assert_eq!(std::fs::read_to_string(h.path("order")).unwrap(), "c\nb\na\n");
    for s in h.sup.status() {
        assert_eq!(s.last_exit.as_deref(), Some("exit status: 0"), "{s:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_child_is_restarted_with_backoff() {
    let h = Harness::new("crash");
    let started = Instant::now();
    h.sup.start(vec![vec![h.spec("crasher", "false")]]).await.unwrap();
    h.eventually("three restarts", |h| h.status("crasher").restarts >= 3)
        .await;
    // Backoff delays of 100, 200 and 400 ms come before the first three restarts.
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "restarted too fast: {:?}",
        started.elapsed()
    );
    let s = h.status("crasher");
    assert_eq!(s.last_exit.as_deref(), Some("exit status: 1"));
    // Without backoff `false` would have been respawned hundreds of times by now.
    assert!(s.restarts < 20, "{s:?}");
    h.sup.stop().await;
    assert_eq!(h.status("crasher").state, ComponentState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_child_is_restarted() {
    let h = Harness::new("kill9");
    h.sup
        .start(vec![vec![h.spec("a", "sleep").with_args(["100"])]])
        .await
        .unwrap();
    let first = h.status("a").pid.unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(first).unwrap()),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    h.eventually("a respawned and ready", |h| {
        let s = h.status("a");
        s.state == ComponentState::Ready && s.pid.is_some_and(|p| p != first)
    })
    .await;
    let s = h.status("a");
    assert_eq!(s.restarts, 1);
    assert_eq!(s.last_exit.as_deref(), Some("signal: 9 (SIGKILL)"));
    h.sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_escalated_to_sigkill_for_the_whole_group() {
    let h = Harness::new("sigkill");
    let spec = h
        .sh(
            "stubborn",
            r#"trap '' TERM; sleep 100 & echo $! > "$DIR/gc.tmp"; mv "$DIR/gc.tmp" "$DIR/grandchild"; wait"#,
        )
        .with_readiness(Probe::file_exists(h.path("grandchild")), Duration::from_secs(10))
        .with_stop_timeout(Duration::from_millis(300));
    h.sup.start(vec![vec![spec]]).await.unwrap();
    let pid = h.status("stubborn").pid.unwrap();
    let grandchild = read_pid(&h.path("grandchild"));
    assert!(alive(grandchild));

    let before = Instant::now();
    h.sup.stop().await;
    let took = before.elapsed();
    assert!(
        took >= Duration::from_millis(300),
        "stop did not wait for the grace period: {took:?}"
    );
    assert!(took < Duration::from_secs(10), "stop took {took:?}");
    let s = h.status("stubborn");
    assert_eq!(s.last_exit.as_deref(), Some("signal: 9 (SIGKILL)"), "{s:?}");
    assert!(!alive(pid));
    // The background `sleep` also ignored SIGTERM; the group-wide SIGKILL took it down too.
    wait_dead(grandchild).await;
}

/// The daemon panicked or its runtime shut down without `stop`: no task gets to run a
/// graceful stop, and the whole process group must still die.
#[test]
fn dropping_the_runtime_kills_every_child() {
    let h = Harness::new("drop");
    let spec = h
        .sh(
            "a",
            r#"trap '' TERM; sleep 100 & echo $! > "$DIR/gc.tmp"; mv "$DIR/gc.tmp" "$DIR/grandchild"; wait"#,
        )
        .with_readiness(Probe::file_exists(h.path("grandchild")), Duration::from_secs(10));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(h.sup.start(vec![vec![spec]])).unwrap();
    let leader = h.status("a").pid.unwrap();
    let grandchild = read_pid(&h.path("grandchild"));
    drop(runtime);
    common::eventually_blocking(
        Duration::from_secs(10),
        "the children to die with the runtime",
        || !alive(leader) && !alive(grandchild),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn children_get_the_marker_but_never_notify_socket() {
    let h = Harness::new("env");
    // The spec even asks for NOTIFY_SOCKET explicitly: it must still be removed. (The test
    // process cannot portably set it on itself; `env_remove` covers inherited variables too.)
    let spec = h
        .sh(
            "env",
            r#"env > "$DIR/env.tmp" && mv "$DIR/env.tmp" "$DIR/env.txt"; exec sleep 100"#,
        )
        .with_env("NOTIFY_SOCKET", "/run/systemd/notify")
        .with_env(MARKER_ENV, "spoofed")
        .with_env("FOO", "bar")
        .with_readiness(Probe::file_exists(h.path("env.txt")), Duration::from_secs(10));
    h.sup.start(vec![vec![spec]]).await.unwrap();
    let env = std::fs::read_to_string(h.path("env.txt")).unwrap();
    let lines: Vec<&str> = env.lines().collect();
    assert!(
        lines.contains(&format!("{MARKER_ENV}={}", h.instance).as_str()),
        "{env}"
    );
    assert!(lines.contains(&"FOO=bar"), "{env}");
    assert!(
        lines.iter().any(|l| l.starts_with("PATH=")),
        "k8sd's own environment is inherited: {env}"
    );
    assert!(!env.contains("NOTIFY_SOCKET"), "{env}");
    assert!(!env.contains("spoofed"), "{env}");
    h.sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_processes_are_killed_only_when_provably_ours() {
    let h = Harness::new("stale");
    let run = h.path("run");
    std::fs::create_dir_all(&run).unwrap();
    // Leftovers of a "previous k8sd": one carries our marker, one does not.
    let mut marked = spawn_exec(
        std::process::Command::new("sleep")
            .arg("100")
            .env(MARKER_ENV, &h.instance),
    );
    let mut unmarked = spawn_exec(std::process::Command::new("sleep").arg("100"));
    std::fs::write(run.join("a.pid"), format!("{}\n", marked.id())).unwrap();
    std::fs::write(run.join("b.pid"), format!("{}\n", unmarked.id())).unwrap();

    let a = h.spec("a", "sleep").with_args(["100"]);
    let b = h.spec("b", "sleep").with_args(["100"]);
    h.sup.start(vec![vec![a, b]]).await.unwrap();
    marked.wait().unwrap();
    assert!(alive(unmarked.id()), "an unmarked process was killed");
    for (name, old) in [("a", marked.id()), ("b", unmarked.id())] {
        let new = h.status(name).pid.unwrap();
        assert_ne!(new, old);
        assert_eq!(read_pid(&run.join(format!("{name}.pid"))), new);
    }

    h.sup.stop().await;
    unmarked.kill().unwrap();
    unmarked.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_readiness_undoes_the_partial_start() {
    let h = Harness::new("undo");
    let a = h.reports_pid("a");
    let b = h
        .sh("b", "echo hello-from-b; echo oops-from-b >&2; exec sleep 100")
        .with_readiness(Probe::never(), Duration::from_millis(500));
    let c = h.sh("c", r#"touch "$DIR/c.started"; exec sleep 100"#);
    let err = h.sup.start(vec![vec![a], vec![b], vec![c]]).await.unwrap_err();

    assert!(
        matches!(&err, Error::NotReady { component, .. } if component == "b"),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.starts_with("component b did not become ready within 500ms"),
        "{message}"
    );
    assert!(
        message.contains("hello-from-b") && message.contains("oops-from-b"),
        "{message}"
    );

    wait_dead(read_pid(&h.path("a.pid"))).await;
    assert!(!h.path("c.started").exists(), "c was started after b failed");
    let states: Vec<_> = h
        .sup
        .status()
        .into_iter()
        .map(|s| (s.name, s.state, s.pid))
        .collect();
    assert_eq!(
        states,
        [
            ("a".to_owned(), ComponentState::Stopped, None),
            ("b".to_owned(), ComponentState::Failed, None),
            ("c".to_owned(), ComponentState::Stopped, None),
        ]
    );
    assert!(h.status("b").last_lines.contains(&"hello-from-b".to_owned()));
    assert_eq!(
        std::fs::read_dir(h.path("run")).unwrap().count(),
        0,
        "pid files left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_start_is_cleaned_up_by_stop() {
    let h = Harness::new("cancel");
    let a = h.reports_pid("a");
    let b = h
        .spec("b", "sleep")
        .with_args(["100"])
        .with_readiness(Probe::never(), Duration::from_secs(60));
    let start = h.sup.start(vec![vec![a], vec![b]]);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), start)
            .await
            .is_err()
    );
    let b_pid = h.status("b").pid.unwrap();
    assert_eq!(h.status("b").state, ComponentState::Running);
    h.sup.stop().await;
    wait_dead(read_pid(&h.path("a.pid"))).await;
    assert!(!alive(b_pid));
    assert!(h.sup.status().iter().all(|s| s.state == ComponentState::Stopped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_errors_fail_fast_and_undo() {
    let h = Harness::new("spawn");
    // A missing program is caught before anything starts.
    let err = h
        .sup
        .start(vec![
            vec![h.spec("a", "sleep").with_args(["100"])],
            vec![h.spec("b", "/nonexistent/kubelet")],
        ])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::ProgramNotFound { component, .. } if component == "b"),
        "{err:?}"
    );
    assert!(h.sup.status().is_empty() || h.sup.status().iter().all(|s| s.pid.is_none()));

    // A spawn failure (here: a missing working directory) undoes the groups before it.
    let b = h
        .spec("b", "sleep")
        .with_args(["100"])
        .with_working_dir(h.path("missing"));
    let err = h
        .sup
        .start(vec![vec![h.spec("a", "sleep").with_args(["100"])], vec![b]])
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Spawn { component, .. } if component == "b"),
        "{err:?}"
    );
    let s = h.status("a");
    assert_eq!((s.state, s.pid), (ComponentState::Stopped, None));
    assert_eq!(h.status("b").state, ComponentState::Failed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_goes_to_a_rotated_log_and_the_status_tail() {
    let h = Harness::new("logs");
    let script = r#"
        i=0
        while [ $i -lt 300 ]; do echo "line $i padding padding padding"; i=$((i+1)); done
        sleep 0.5
        echo "to stderr" >&2
        sleep 0.2
        echo done
        exec sleep 100"#;
    let spec = h.sh("chatty", script).with_log_rotation(LogRotation {
        max_bytes: 2048,
        keep: 2,
    });
    let log = spec.log_path.clone();
    h.sup.start(vec![vec![spec]]).await.unwrap();
    assert_eq!(h.sup.log_path("chatty"), Some(log.clone()));
    h.eventually("all output read", |h| {
        h.status("chatty").last_lines.last().map(String::as_str) == Some("done")
    })
    .await;

    let tail = h.status("chatty").last_lines;
    assert_eq!(tail.len(), 20);
    assert!(
        tail.contains(&"line 299 padding padding padding".to_owned()),
        "{tail:?}"
    );
    assert!(tail.contains(&"to stderr".to_owned()), "{tail:?}");
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", log.display()));
    assert!(rotated(1).exists() && rotated(2).exists(), "log was not rotated");
    assert!(!rotated(3).exists(), "more than `keep` rotated files");
    let mut all = String::new();
    for path in [rotated(2), rotated(1), log.clone()] {
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= 2048, "{} is {len} bytes", path.display());
        all.push_str(&std::fs::read_to_string(&path).unwrap());
    }
    // stdout and stderr are separate pipes read by separate tasks, so their relative order is
    // not guaranteed; within one stream it is.
    assert!(all.contains("\nto stderr\n"), "{all}");
    let stdout: Vec<&str> = all.lines().filter(|l| *l != "to stderr").collect();
    assert_eq!(stdout.last(), Some(&"done"));
    assert_eq!(stdout[stdout.len() - 2], "line 299 padding padding padding");
    h.sup.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_component_can_be_restarted_stopped_and_started() {
    let h = Harness::new("one");
    let a = h.spec("a", "sleep").with_args(["100"]);
    let b = h.spec("b", "sleep").with_args(["100"]);
    h.sup.start(vec![vec![a], vec![b]]).await.unwrap();
    let (a1, b1) = (h.status("a").pid.unwrap(), h.status("b").pid.unwrap());

    h.sup.restart("a").await.unwrap();
    let s = h.status("a");
    assert_eq!(s.state, ComponentState::Ready);
    assert_ne!(s.pid, Some(a1));
    assert_eq!(s.restarts, 0, "an operator restart is not a crash");
    assert!(!alive(a1));
    assert_eq!(h.status("b").pid, Some(b1), "restart touched another component");

    h.sup.stop_one("b").await.unwrap();
    assert_eq!(h.status("b").state, ComponentState::Stopped);
    assert!(matches!(
        h.sup.start_one("a").await,
        Err(Error::AlreadyRunning(_))
    ));
    h.sup.start_one("b").await.unwrap();
    assert_eq!(h.status("b").state, ComponentState::Ready);
    assert!(matches!(
        h.sup.restart("nope").await,
        Err(Error::UnknownComponent(_))
    ));
    assert!(matches!(h.sup.start(vec![]).await, Err(Error::AlreadyRunning(_))));

    h.sup.stop().await;
    assert!(h.sup.status().iter().all(|s| s.state == ComponentState::Stopped));
}

/// A restart with new arguments runs them from then on, crash respawns included, and status
/// shows them (how kube-apiserver gains `--encryption-provider-config` when a cluster that had
/// no Secrets key gets its first one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_new_arguments_keeps_them_across_crashes() {
    let h = Harness::new("newargs");
    let a = h.spec("a", "sleep").with_args(["100"]);
    h.sup.start(vec![vec![a]]).await.unwrap();
    let cmdline = |pid: u32| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .unwrap()
            .split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(cmdline(h.status("a").pid.unwrap())[1..], ["100"]);

    h.sup.restart_with_args("a", vec!["200".into()]).await.unwrap();
    let s = h.status("a");
    assert_eq!(s.state, ComponentState::Ready);
    assert_eq!(s.args, ["200"]);
    let pid = s.pid.unwrap();
    assert_eq!(cmdline(pid)[1..], ["200"]);

    // A crash respawns it with the new arguments, not the spec's.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
        nix::sys::signal::SIGKILL,
    )
    .unwrap();
    h.eventually("a respawned", |h| {
        h.status("a").pid.is_some_and(|p| p != pid) && h.status("a").state == ComponentState::Ready
    })
    .await;
    assert_eq!(cmdline(h.status("a").pid.unwrap())[1..], ["200"]);
    assert!(matches!(
        h.sup.restart_with_args("nope", vec![]).await,
        Err(Error::UnknownComponent(_))
    ));
    h.sup.stop().await;
}
