//! Supervision of the Kubernetes components that k8sd runs as child processes.
//!
//! The daemon hands the [`Supervisor`] ordered groups of [`ComponentSpec`]s, for example
//! `[[kube-apiserver], [kube-controller-manager, kube-scheduler], [containerd], [kubelet]]`.
//! Each group is started, then gated on every member's readiness [`Probe`], before the next
//! group starts; stopping goes through the groups in reverse. While running, each component has
//! a runner task that restarts it when it exits, with the exponential backoff of `backoff.rs`.
//!
//! Boundary: the supervisor knows nothing of the datastore, Raft, etcd or the PKI. It receives
//! specs and probes; a probe that needs a client certificate is a closure built by the daemon.
//!
//! Lifecycle of one component, as reported by [`Supervisor::status`]:
//!
//! ```text
//!                    start / start_one
//!                           |
//!                           v
//!     +-------------->  Starting  ---- spawn error ---->  Failed
//!     |                     |                               |
//!     |                  spawned                            |
//!     |                     v                               |
//!     |                  Running  ---- probe ok ---->  Ready |
//!     |                     |                          |     |
//!     |                     +------ exited ------------+     |
//!     |                     v                                |
//!     +-- delay over --  Backoff  <------- delay chosen -----+
//!
//!     any state --- stop / stop_one / restart / undo of a failed start ---> Stopped
//!     (SIGTERM to the process group, stop_timeout, then SIGKILL)
//! ```
//!
//! After a start that failed its readiness gate, the culprit is shown as `Failed` with its
//! last output, and everything started before it is `Stopped` again.
//!
//! Files: `<run_dir>/<name>.pid` while a child runs (see `pidfile.rs` for the stale-process
//! cleanup it enables), and each spec's `log_path`, rotated by size (see `logs.rs`).
//!
//! About 600 lines, a fifth of them comments and the diagram above: one job, the `Supervisor`
//! and the runner task behind each component; spawning, probes, backoff, pid files and logs are
//! the files below.

mod backoff;
mod child;
mod error;
mod logs;
mod pidfile;
mod probe;
mod spec;

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Instant, SystemTime};

use futures::future::join_all;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

pub use backoff::{Action, Backoff, BackoffPolicy, Event};
pub use error::Error;
pub use pidfile::is_alive;
pub use probe::Probe;
pub use spec::{ComponentSpec, LogRotation};

use child::Child;
use logs::LogSink;

/// Environment variable set on every child; its value is [`SupervisorConfig::instance`].
pub const MARKER_ENV: &str = "K8SD_MANAGED";

/// systemd's readiness socket, removed from every child's environment.
pub const NOTIFY_SOCKET_ENV: &str = "NOTIFY_SOCKET";

/// Where the supervisor keeps its state, and who it is.
#[derive(Clone, Debug)]
pub struct SupervisorConfig {
    /// Directory of the pid files, e.g. `<data dir>/run`.
    pub run_dir: PathBuf,
    /// Value of [`MARKER_ENV`] on our children: something unique to this k8sd installation,
    /// such as its data dir, so two k8sd instances on one host never kill each other's children.
    pub instance: OsString,
}

/// Where a component is in its lifecycle (see the diagram in the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentState {
    /// About to be spawned.
    Starting,
    /// Spawned; its readiness probe has not succeeded yet.
    Running,
    /// Spawned and its readiness probe succeeded.
    Ready,
    /// Exited; waiting out the backoff delay before a respawn.
    Backoff,
    /// Not running, on purpose.
    Stopped,
    /// Could not be spawned, or failed its readiness gate during start.
    Failed,
}

/// A snapshot of one component, for `k8sd status`. The daemon converts it to its wire type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ComponentStatus {
    pub name: String,
    pub state: ComponentState,
    pub pid: Option<u32>,
    /// Respawns after unplanned exits; `restart` and `start_one` do not count.
    pub restarts: u32,
    /// How the previous process ended, e.g. `exit status: 1` or `signal: 9 (SIGKILL)`.
    pub last_exit: Option<String>,
    /// The component's last lines of output (both streams, oldest first).
    pub last_lines: Vec<String>,
    /// When `state` last changed.
    pub since: SystemTime,
    /// The arguments it runs with (after the program), for `k8sd status -o json`.
    pub args: Vec<String>,
}

/// Starts, watches, restarts and stops the components. See the module docs.
#[derive(Debug)]
pub struct Supervisor {
    config: SupervisorConfig,
    /// The groups of the last `start`, in start order.
    groups: Mutex<Vec<Vec<Arc<Component>>>>,
    /// Serialises `start` and `stop`, so that a stop never runs between a start's registration
    /// and its spawns.
    lifecycle: tokio::sync::Mutex<()>,
}

/// One registered component: what is shared with its runner task, and the handle to stop it.
#[derive(Debug)]
struct Component {
    shared: Arc<Shared>,
    /// `Some` while a runner task supervises a process. An async mutex, so that concurrent
    /// `start_one`/`stop_one` calls on the same component are serialised.
    runner: tokio::sync::Mutex<Option<Runner>>,
}

/// State shared between the supervisor and a component's runner task. The runner holds only
/// this, never the `Component`, so dropping the supervisor drops the stop senders and the
/// runners stop their children.
#[derive(Debug)]
struct Shared {
    spec: ComponentSpec,
    /// The arguments of the next spawn: `spec.args` until `restart_with_args` replaces them
    /// (kube-apiserver gaining `--encryption-provider-config` when a cluster gets its first
    /// Secrets key). Respawns after a crash use them too.
    args: Mutex<Vec<OsString>>,
    /// `spec.program` resolved against `PATH`.
    program: PathBuf,
    run_dir: PathBuf,
    instance: OsString,
    log: Arc<LogSink>,
    status: watch::Sender<Snapshot>,
}

#[derive(Debug)]
struct Runner {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

#[derive(Clone, Debug)]
struct Snapshot {
    state: ComponentState,
    pid: Option<u32>,
    restarts: u32,
    last_exit: Option<String>,
    since: SystemTime,
}

impl Supervisor {
    pub fn new(config: SupervisorConfig) -> Self {
        Self {
            config,
            groups: Mutex::new(Vec::new()),
            lifecycle: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts `groups` in order, each gated on its members' readiness probes.
    ///
    /// Before anything starts, the specs are validated (unique names, programs found, log
    /// files writable) and processes left behind by a previous k8sd are cleaned up. If a group
    /// fails (spawn error or readiness timeout), everything started so far is stopped in
    /// reverse order and the error names the component with its last lines of output.
    ///
    /// Replaces the components of a previous `start`, which must have been stopped.
    ///
    /// Cancel-safe: every spawned child is registered before the next await, so to abort a
    /// slow start (k8sd got SIGTERM while waiting for kube-apiserver), drop this future and
    /// call [`Supervisor::stop`].
    pub async fn start(&self, groups: Vec<Vec<ComponentSpec>>) -> Result<(), Error> {
        let _lifecycle = self.lifecycle.lock().await;
        let registered = self.register(groups).await?;
        for (i, group) in registered.iter().enumerate() {
            if let Err(e) = start_group(group).await {
                tracing::error!(error = %e, "start failed; stopping what was started");
                for group in registered[..=i].iter().rev() {
                    stop_group(group).await;
                }
                return Err(e);
            }
        }
        tracing::info!("all components ready");
        Ok(())
    }

    /// Stops every component, groups in reverse start order, members of a group concurrently.
    /// Idempotent.
    pub async fn stop(&self) {
        let _lifecycle = self.lifecycle.lock().await;
        let groups = self.groups();
        for group in groups.iter().rev() {
            stop_group(group).await;
        }
    }

    /// Stops and starts one component and waits for it to be ready again, e.g. after its
    /// certificate was renewed. Does not touch other components.
    pub async fn restart(&self, name: &str) -> Result<(), Error> {
        let component = self.find(name)?;
        component.stop().await;
        component.start().await?;
        component.wait_ready().await
    }

    /// Like `restart`, with `args` in place of the component's arguments from now on (crash
    /// respawns included), e.g. kube-apiserver gaining a flag whose file did not exist when
    /// k8sd started it. The rest of its spec is unchanged.
    pub async fn restart_with_args(&self, name: &str, args: Vec<String>) -> Result<(), Error> {
        let component = self.find(name)?;
        component.stop().await;
        *component
            .shared
            .args
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = args.into_iter().map(OsString::from).collect();
        component.start().await?;
        component.wait_ready().await
    }

    /// Stops one component; the others keep running.
    pub async fn stop_one(&self, name: &str) -> Result<(), Error> {
        self.find(name)?.stop().await;
        Ok(())
    }

    /// Starts one previously stopped component and waits for it to be ready. Unlike `start`,
    /// a readiness timeout leaves it running (and restarting) rather than stopping it.
    pub async fn start_one(&self, name: &str) -> Result<(), Error> {
        let component = self.find(name)?;
        component.start().await?;
        component.wait_ready().await
    }

    /// One entry per component, in start order.
    pub fn status(&self) -> Vec<ComponentStatus> {
        self.groups()
            .iter()
            .flatten()
            .map(|c| c.shared.status())
            .collect()
    }

    /// Where a component's log file is, for `k8sd logs`.
    pub fn log_path(&self, name: &str) -> Option<PathBuf> {
        self.find(name).ok().map(|c| c.shared.spec.log_path.clone())
    }

    fn groups(&self) -> Vec<Vec<Arc<Component>>> {
        self.groups.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn find(&self, name: &str) -> Result<Arc<Component>, Error> {
        self.groups()
            .into_iter()
            .flatten()
            .find(|c| c.shared.spec.name == name)
            .ok_or_else(|| Error::UnknownComponent(name.to_owned()))
    }

    /// Validates the specs, cleans up stale processes and makes the components visible in
    /// `status` (as `Stopped`) before any of them starts.
    async fn register(&self, specs: Vec<Vec<ComponentSpec>>) -> Result<Vec<Vec<Arc<Component>>>, Error> {
        for component in self.groups().iter().flatten() {
            if component.runner.lock().await.is_some() {
                return Err(Error::AlreadyRunning(component.shared.spec.name.clone()));
            }
        }
        let mut seen = std::collections::HashSet::new();
        let mut groups = Vec::with_capacity(specs.len());
        for group in specs {
            let mut members = Vec::with_capacity(group.len());
            for spec in group {
                if !seen.insert(spec.name.clone()) {
                    return Err(Error::DuplicateComponent(spec.name));
                }
                let program =
                    child::resolve_program(&spec.program).ok_or_else(|| Error::ProgramNotFound {
                        component: spec.name.clone(),
                        program: spec.program.clone(),
                    })?;
                let log = LogSink::open(&spec.name, &spec.log_path, spec.log_rotation).map_err(|source| {
                    Error::Io {
                        component: spec.name.clone(),
                        path: spec.log_path.clone(),
                        source,
                    }
                })?;
                members.push((spec, program, log));
            }
            groups.push(members);
        }

        // Only after validation, so a typo in a spec never kills anything.
        for (spec, program, _) in groups.iter().flatten() {
            pidfile::clean_stale(
                &self.config.run_dir,
                &spec.name,
                program,
                &self.config.instance,
                spec.stop_timeout,
            )
            .await;
        }
        std::fs::create_dir_all(&self.config.run_dir).map_err(|source| Error::RunDir {
            path: self.config.run_dir.clone(),
            source,
        })?;

        let now = SystemTime::now();
        let registered: Vec<Vec<Arc<Component>>> = groups
            .into_iter()
            .map(|members| {
                members
                    .into_iter()
                    .map(|(spec, program, log)| {
                        let snapshot = Snapshot {
                            state: ComponentState::Stopped,
                            pid: None,
                            restarts: 0,
                            last_exit: None,
                            since: now,
                        };
                        Arc::new(Component {
                            shared: Arc::new(Shared {
                                args: Mutex::new(spec.args.clone()),
                                spec,
                                program,
                                run_dir: self.config.run_dir.clone(),
                                instance: self.config.instance.clone(),
                                log: Arc::new(log),
                                status: watch::Sender::new(snapshot),
                            }),
                            runner: tokio::sync::Mutex::new(None),
                        })
                    })
                    .collect()
            })
            .collect();
        *self.groups.lock().unwrap_or_else(PoisonError::into_inner) = registered.clone();
        Ok(registered)
    }
}

/// Spawns every member, then waits for all of them to be ready. On error the caller stops the
/// group (members that did start included).
async fn start_group(group: &[Arc<Component>]) -> Result<(), Error> {
    for component in group {
        component.start().await?;
    }
    let results = join_all(group.iter().map(|c| c.wait_ready())).await;
    for (component, result) in group.iter().zip(results) {
        if let Err(e) = result {
            // Stop first, then mark: stopping would otherwise overwrite `Failed` with `Stopped`.
            component.stop().await;
            component.shared.update(|s| s.state = ComponentState::Failed);
            return Err(e);
        }
    }
    Ok(())
}

async fn stop_group(group: &[Arc<Component>]) {
    join_all(group.iter().map(|c| c.stop())).await;
}

impl Component {
    /// Spawns the process and hands it to a new runner task. Spawning here rather than in the
    /// task lets a spawn error (missing library, bad working dir) fail `start` immediately.
    async fn start(&self) -> Result<(), Error> {
        let mut runner = self.runner.lock().await;
        if runner.is_some() {
            return Err(Error::AlreadyRunning(self.shared.spec.name.clone()));
        }
        let shared = &self.shared;
        shared.update(|s| s.state = ComponentState::Starting);
        let child = match child::spawn(
            &shared.spec,
            &shared.args(),
            &shared.program,
            &shared.instance,
            &shared.log,
        ) {
            Ok(child) => child,
            Err(e) => {
                shared.update(|s| {
                    s.state = ComponentState::Failed;
                    s.last_exit = Some(format!("spawn failed: {e}"));
                });
                return Err(e);
            }
        };
        shared.spawned(&child);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(supervise(Arc::clone(shared), child, stop_rx));
        *runner = Some(Runner { stop: stop_tx, task });
        Ok(())
    }

    /// Asks the runner to stop its process and waits until it has. A no-op if not running.
    async fn stop(&self) {
        let Some(runner) = self.runner.lock().await.take() else {
            return;
        };
        // An error means the runner already ended (it only does so when told to); fine.
        let _ = runner.stop.send(());
        if let Err(e) = runner.task.await {
            tracing::error!(component = %self.shared.spec.name, error = %e, "runner task failed");
            self.shared.update(|s| {
                s.state = ComponentState::Stopped;
                s.pid = None;
            });
        }
    }

    /// Waits until the component is `Ready`, up to its `ready_timeout`. Fails early when the
    /// component is `Failed` (it cannot even be spawned) or `Stopped`. A component that crashes
    /// and restarts meanwhile is still waited for: kube-apiserver may exit a few times while
    /// its datastore comes up, and the backoff is short at first.
    async fn wait_ready(&self) -> Result<(), Error> {
        use ComponentState::{Failed, Ready, Stopped};
        let spec = &self.shared.spec;
        let mut rx = self.shared.status.subscribe();
        let outcome = tokio::time::timeout(spec.ready_timeout, async {
            rx.wait_for(|s| matches!(s.state, Ready | Failed | Stopped))
                .await
                .map(|s| s.state)
        })
        .await;
        match outcome {
            Ok(Ok(Ready)) => Ok(()),
            // `Failed`, `Stopped`, or the status channel closed (cannot happen while we hold it).
            Ok(_) => Err(Error::StoppedBeforeReady {
                component: spec.name.clone(),
                last_exit: self.shared.status.borrow().last_exit.clone(),
                last_lines: self.shared.log.tail(),
            }),
            Err(_) => Err(Error::NotReady {
                component: spec.name.clone(),
                timeout: spec.ready_timeout,
                last_exit: self.shared.status.borrow().last_exit.clone(),
                last_lines: self.shared.log.tail(),
            }),
        }
    }
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        self.status.send_modify(|s| {
            let before = s.state;
            f(s);
            if s.state != before {
                s.since = SystemTime::now();
            }
        });
    }

    fn spawned(&self, child: &Child) {
        let name = &self.spec.name;
        if let Err(e) = pidfile::write(&self.run_dir, name, child.pid()) {
            // Not fatal: the pid file only matters if k8sd dies without its children.
            tracing::warn!(component = %name, error = %e, "cannot write pid file");
        }
        tracing::info!(component = %name, pid = child.pid(), "started");
        self.update(|s| {
            s.state = ComponentState::Running;
            s.pid = Some(child.pid());
        });
    }

    fn exited(&self, last_exit: String, state: ComponentState) {
        pidfile::remove(&self.run_dir, &self.spec.name);
        self.update(|s| {
            s.state = state;
            s.pid = None;
            s.last_exit = Some(last_exit);
        });
    }

    fn args(&self) -> Vec<OsString> {
        self.args.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn status(&self) -> ComponentStatus {
        let s = self.status.borrow().clone();
        ComponentStatus {
            name: self.spec.name.clone(),
            state: s.state,
            pid: s.pid,
            restarts: s.restarts,
            last_exit: s.last_exit,
            last_lines: self.log.tail(),
            since: s.since,
            args: self
                .args()
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
        }
    }
}

/// The runner task of one component: watches its process, probes readiness, respawns after
/// exits with backoff, and stops the process when `stop` fires (or its sender is dropped).
async fn supervise(shared: Arc<Shared>, mut child: Child, mut stop: oneshot::Receiver<()>) {
    let spec = &shared.spec;
    let name = spec.name.as_str();
    let mut backoff = Backoff::new(spec.backoff);
    loop {
        backoff.handle(Event::Started { at: Instant::now() });

        // Running: until the process exits or we are told to stop, probing readiness meanwhile.
        let exit = {
            let ready = until_ready(spec);
            tokio::pin!(ready);
            let mut is_ready = false;
            loop {
                tokio::select! {
                    status = child.wait() => break Some(status),
                    _ = &mut stop => break None,
                    () = &mut ready, if !is_ready => {
                        is_ready = true;
                        tracing::info!(component = name, probe = spec.readiness.description(), "ready");
                        shared.update(|s| s.state = ComponentState::Ready);
                    }
                }
            }
        };
        let Some(status) = exit else {
            tracing::info!(component = name, pid = child.pid(), "stopping");
            let status = child.stop(spec.stop_timeout).await;
            shared.exited(describe(status), ComponentState::Stopped);
            tracing::info!(component = name, "stopped");
            return;
        };
        let status = describe(status);
        let mut delay = next_delay(&mut backoff, name);
        tracing::warn!(component = name, %status, ?delay, "exited; restarting after delay");
        shared.exited(status, ComponentState::Backoff);

        // Backoff: wait, then respawn; a failed spawn backs off again.
        child = loop {
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = &mut stop => {
                    shared.update(|s| s.state = ComponentState::Stopped);
                    return;
                }
            }
            shared.update(|s| {
                s.state = ComponentState::Starting;
                s.restarts = s.restarts.saturating_add(1);
            });
            match child::spawn(
                spec,
                &shared.args(),
                &shared.program,
                &shared.instance,
                &shared.log,
            ) {
                Ok(child) => break child,
                Err(e) => {
                    delay = next_delay(&mut backoff, name);
                    tracing::error!(component = name, error = %e, ?delay, "respawn failed");
                    shared.exited(format!("spawn failed: {e}"), ComponentState::Failed);
                }
            }
        };
        shared.spawned(&child);
    }
}

/// Feeds an exit into the backoff policy and returns the delay it chose.
fn next_delay(backoff: &mut Backoff, name: &str) -> std::time::Duration {
    let mut delay = std::time::Duration::ZERO;
    for action in backoff.handle(Event::Exited { at: Instant::now() }) {
        match action {
            Action::ForgetFailures => tracing::info!(component = name, "ran stably; backoff reset"),
            Action::RestartAfter(d) => delay = d,
        }
    }
    delay
}

/// Resolves once the readiness probe succeeds; each attempt is bounded by `probe_timeout`.
async fn until_ready(spec: &ComponentSpec) {
    loop {
        if let Ok(true) = tokio::time::timeout(spec.probe_timeout, spec.readiness.check()).await {
            return;
        }
        tokio::time::sleep(spec.probe_interval).await;
    }
}

fn describe(status: std::io::Result<std::process::ExitStatus>) -> String {
    match status {
        Ok(status) => status.to_string(),
        Err(e) => format!("unknown (wait failed: {e})"),
    }
}
