//! The IO of `k8sd reset`: processes, mounts, cgroups, the network namespace, files. Every
//! step records what it removed, tolerates finding nothing, and never stops the others: what
//! a step could not undo is found again by [`remaining`] and reported there.
//!
//! Over 600 lines with its tests: one job, reset's host IO, a short function per step (the
//! choices they act on are made in `select.rs`).

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::select::{self, DATA_ENTRIES, RUN_ENTRIES};
use super::{Report, Target};
use crate::paths::{DEFAULT_DATA_DIR, ENV_DATA_DIR, Snap};
use crate::supervisor::{self, MARKER_ENV};

/// How long the daemon gets to stop its components after SIGTERM (kube-apiserver's own
/// shutdown takes a while) before it is killed.
const DAEMON_GRACE: Duration = Duration::from_secs(60);
/// Rounds of kill-then-remove for cgroups and mounts: a pod's process may still be exiting.
const ROUNDS: usize = 5;
const CGROUP_FS: &str = "/sys/fs/cgroup";
const NETNS_DIR: &str = "/run/netns";
/// libcni's default cache (containerd's CRI does not move it): `<network>-<id>-<ifname>`.
const CNI_RESULTS: &str = "/var/lib/cni/results";
/// Where the kubelet links every container log for log shippers.
const CONTAINER_LOG_LINKS: &str = "/var/log/containers";
/// The iptables front ends, each with `-save` and `-restore`: the kubelet and kube-proxy use
/// whichever `iptables` the host's alternatives choose, and the CNI plugins their own pick.
const IPTABLES: [&str; 4] = [
    "iptables-legacy",
    "iptables-nft",
    "ip6tables-legacy",
    "ip6tables-nft",
];

pub(super) fn clean(t: &Target, r: &mut Report) {
    // The pods' network namespaces and sandbox ids can only be learnt from their live
    // processes and cgroups, so before anything is stopped.
    let pod_netns = pod_network_namespaces(t);
    let ids = container_ids(t);
    stop_daemon(t, r);
    kill_processes(t, r);
    for _ in 0..ROUNDS {
        if kill_cgroup_procs(t, r) == 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    unmount_ours(t, r);
    remove_pod_netns(&pod_netns, r);
    remove_cgroups(t, r);
    clean_network(t, r);
    remove_cni_results(&ids, r);
    remove_log_links(t, r);
    remove_root(&t.layout.run_dir, "run dir", &RUN_ENTRIES, t, r);
    remove_root(&t.layout.data_dir, "data dir", &DATA_ENTRIES, t, r);
}

/// Everything of the node that is still there, one line each.
pub(super) fn remaining(t: &Target) -> Vec<String> {
    let mut left = Vec::new();
    for p in our_processes(t) {
        left.push(format!("process {} ({})", p.pid, p.comm));
    }
    for m in our_mounts(t) {
        left.push(format!("mount {}", m.display()));
    }
    for c in cgroup_tops(t).into_iter().filter(|c| c.exists()) {
        left.push(format!("cgroup {}", c.display()));
    }
    if run("ip", &["link", "show", select::CNI_BRIDGE], None).is_ok() {
        left.push(format!("interface {}", select::CNI_BRIDGE));
    }
    for route in our_routes(t) {
        left.push(format!("route {route}"));
    }
    for ipt in IPTABLES {
        if let Ok(save) = run(&format!("{ipt}-save"), &[], None) {
            for c in select::iptables_chains(&save) {
                left.push(format!("{ipt} chain {c}"));
            }
        }
    }
    for (fam, name) in nft_tables() {
        left.push(format!("nft table {fam} {name}"));
    }
    for (what, dir) in [("run dir", &t.layout.run_dir), ("data dir", &t.layout.data_dir)] {
        if dir.exists() {
            left.push(format!("{what} {}", dir.display()));
        }
    }
    left
}

/// Runs `program args` (feeding `stdin` when given) and returns its standard output, or a
/// message with its standard error.
fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input.as_bytes())
            .map_err(|e| format!("cannot write to {program}: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("{program} failed: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

// ---- processes -------------------------------------------------------------------------------

#[derive(Debug)]
struct Proc {
    pid: i32,
    comm: String,
}

fn nul_split(bytes: &[u8]) -> Vec<&[u8]> {
    bytes.split(|b| *b == 0).filter(|s| !s.is_empty()).collect()
}

/// Whether a k8sd process (`argv`, `environ`) is the daemon (`k8sd run`) of this data dir: the
/// data dir it was given with `--data-dir`, else `K8SD_DATA_DIR`, else its default (how
/// systemd and the snap start it): the snap's when snapd's variables are in its environment.
fn is_our_daemon(argv: &[&[u8]], environ: &[&[u8]], data_dir: &[u8]) -> bool {
    if !argv.iter().skip(1).any(|a| *a == b"run") {
        return false;
    }
    let flag = argv
        .windows(2)
        .find(|w| w[0] == b"--data-dir")
        .map(|w| w[1])
        .or_else(|| {
            argv.iter()
                .find_map(|a| a.strip_prefix(b"--data-dir=".as_slice()))
        });
    let var = |name: &str| {
        let prefix = format!("{name}=");
        environ.iter().find_map(|e| e.strip_prefix(prefix.as_bytes()))
    };
    if let Some(dir) = flag.or_else(|| var(ENV_DATA_DIR)) {
        return dir == data_dir;
    }
    let snap = Snap::from_vars(|name| var(name).map(|v| std::ffi::OsStr::from_bytes(v).to_owned()));
    match snap {
        Ok(Some(snap)) => snap.data_dir().as_os_str().as_bytes() == data_dir,
        Ok(None) => DEFAULT_DATA_DIR.as_bytes() == data_dir,
        // A daemon with half of snapd's variables refused to start; it is nobody's daemon.
        Err(_) => false,
    }
}

/// The file name of a process's executable, without the " (deleted)" an upgrade leaves.
fn exe_name(pid: i32) -> Option<Vec<u8>> {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    let name = exe.file_name()?.as_bytes();
    Some(name.strip_suffix(b" (deleted)").unwrap_or(name).to_vec())
}

/// Every live process that is this node's: its daemon, the supervisor's children (marked with
/// `K8SD_MANAGED=<data dir>`), and the container shims of its containerd. Never this process.
fn our_processes(t: &Target) -> Vec<Proc> {
    let data_dir = t.layout.data_dir.as_os_str().as_bytes();
    let mut marker = format!("{MARKER_ENV}=").into_bytes();
    marker.extend_from_slice(data_dir);
    let socket = t.layout.containerd_socket();
    let socket = socket.as_os_str().as_bytes();
    let me = std::process::id();
    // The daemon is this same program; without that check any `… run` command line (a
    // container engine's) would be weighed as a k8sd daemon with the default data dir.
    let k8sd = exe_name(i32::try_from(me).unwrap_or(0));
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if u32::try_from(pid).is_ok_and(|p| p == me) || !supervisor::is_alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let argv = nul_split(&cmdline);
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let env = nul_split(&environ);
        let marked = env.contains(&marker.as_slice());
        let shim = argv.first().is_some_and(|a| {
            a.rsplit(|b| *b == b'/')
                .next()
                .is_some_and(|n| n.starts_with(b"containerd-shim"))
        }) && argv.windows(2).any(|w| w[0] == b"-address" && w[1] == socket);
        let daemon = k8sd.is_some() && exe_name(pid) == k8sd && is_our_daemon(&argv, &env, data_dir);
        if marked || shim || daemon {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            out.push(Proc {
                pid,
                comm: comm.trim().to_string(),
            });
        }
    }
    out
}

/// SIGTERM to the daemon named by the pid file (when it is ours), so it stops its components
/// in order; SIGKILL after [`DAEMON_GRACE`].
fn stop_daemon(t: &Target, r: &mut Report) {
    let Ok(text) = std::fs::read_to_string(t.layout.daemon_pid_file()) else {
        return;
    };
    let Ok(pid) = text.trim().parse::<i32>() else {
        return;
    };
    // Only a positive pid that is provably our daemon: kill(0 or -1) would hit whole groups.
    if pid <= 0 || !our_processes(t).iter().any(|p| p.pid == pid) {
        return;
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + DAEMON_GRACE;
    while supervisor::is_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if supervisor::is_alive(pid) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        r.removed.push(format!(
            "killed the k8sd daemon {pid} (it did not stop within {DAEMON_GRACE:?})"
        ));
    } else {
        r.removed.push(format!("stopped the k8sd daemon {pid}"));
    }
}

/// SIGKILL to whatever of the node still runs after its daemon (children of a crashed daemon,
/// shims, which outlive containerd by design).
fn kill_processes(t: &Target, r: &mut Report) {
    for _ in 0..ROUNDS {
        let procs = our_processes(t);
        if procs.is_empty() {
            return;
        }
        for p in &procs {
            let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
        }
        let names: Vec<String> = procs.iter().map(|p| format!("{} ({})", p.pid, p.comm)).collect();
        r.removed.push(format!("killed {}", names.join(", ")));
        std::thread::sleep(Duration::from_millis(300));
    }
}

// ---- cgroups ---------------------------------------------------------------------------------

/// Every mounted cgroup hierarchy: the v2 root itself, or each v1 controller's directory.
fn hierarchies() -> Vec<PathBuf> {
    let root = Path::new(CGROUP_FS);
    let mut out = Vec::new();
    if root.join("cgroup.procs").exists() {
        out.push(root.to_owned());
    }
    if let Ok(entries) = std::fs::read_dir(root) {
        for e in entries.flatten() {
            let p = e.path();
            if p.join("cgroup.procs").exists() {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The top cgroup directories of this node in every hierarchy (existing or not).
fn cgroup_tops(t: &Target) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for base in hierarchies() {
        let children: Vec<String> = std::fs::read_dir(&base)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        out.extend(select::cgroup_tops(&base, &t.cgroup_root, &children));
    }
    out
}

/// Every cgroup directory at or under `top`, deepest first.
fn cgroup_tree(top: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                // Only real directories: cgroupfs has no symlinks, and following one could
                // leave the tree.
                if e.file_type().is_ok_and(|f| f.is_dir()) {
                    walk(&p, out);
                }
            }
        }
        out.push(dir.to_owned());
    }
    if top.is_dir() {
        walk(top, &mut out);
    }
    out
}

fn cgroup_pids(t: &Target) -> Vec<i32> {
    let mut pids = BTreeSet::new();
    for top in cgroup_tops(t) {
        for dir in cgroup_tree(&top) {
            if let Ok(text) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(text.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
            }
        }
    }
    pids.into_iter().filter(|p| *p > 0).collect()
}

/// SIGKILL to every process in the node's cgroups (the pods); how many were signalled.
fn kill_cgroup_procs(t: &Target, r: &mut Report) -> usize {
    let pids = cgroup_pids(t);
    let n = pids
        .iter()
        .filter(|p| kill(Pid::from_raw(**p), Signal::SIGKILL).is_ok())
        .count();
    if n > 0 {
        r.removed
            .push(format!("killed {n} process(es) in the node's pod cgroups"));
    }
    n
}

/// The sandbox and container ids named by the node's cgroups.
fn container_ids(t: &Target) -> BTreeSet<String> {
    cgroup_tops(t)
        .iter()
        .flat_map(|top| cgroup_tree(top))
        .filter_map(|d| {
            let name = d.file_name()?.to_str()?;
            select::container_id(name).map(str::to_owned)
        })
        .collect()
}

fn remove_cgroups(t: &Target, r: &mut Report) {
    for round in 0..ROUNDS {
        let tops: Vec<PathBuf> = cgroup_tops(t).into_iter().filter(|c| c.exists()).collect();
        if tops.is_empty() {
            return;
        }
        let mut n = 0;
        for top in &tops {
            for dir in cgroup_tree(top) {
                if std::fs::remove_dir(&dir).is_ok() {
                    n += 1;
                }
            }
        }
        if n > 0 {
            r.removed.push(format!("removed {n} cgroup(s)"));
        }
        if round + 1 < ROUNDS && tops.iter().any(|c| c.exists()) {
            kill_cgroup_procs(t, r);
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

// ---- mounts ----------------------------------------------------------------------------------

fn our_mounts(t: &Target) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    select::mounts_under(
        &select::mount_points(&info),
        &[t.layout.data_dir.clone(), t.layout.run_dir.clone()],
    )
}

/// umount(2), falling back to a lazy detach for a mount still busy.
fn unmount(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path that outlives both calls; umount2 only reads it.
    unsafe { libc::umount2(c.as_ptr(), 0) == 0 || libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 }
}

fn unmount_ours(t: &Target, r: &mut Report) {
    for _ in 0..ROUNDS {
        let mounts = our_mounts(t);
        if mounts.is_empty() {
            return;
        }
        let n = mounts.iter().filter(|m| unmount(m)).count();
        if n > 0 {
            r.removed.push(format!("unmounted {n} mount(s)"));
        }
    }
}

/// The network namespaces of the node's pods, as (device, inode) of their nsfs files, except
/// the namespace reset runs in (the node's own, which host-network pods share): those its
/// processes are in, and those at the far end of its bridge's ports, which a pod whose
/// processes are gone may still hold (its sandbox's teardown was cut short).
fn pod_network_namespaces(t: &Target) -> BTreeSet<(u64, u64)> {
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    let own = id(Path::new("/proc/self/ns/net"));
    let bridged = run("ip", &["-o", "link", "show", "master", select::CNI_BRIDGE], None)
        .map(|links| select::bridge_peer_netns(&links))
        .unwrap_or_default();
    cgroup_pids(t)
        .into_iter()
        .filter_map(|pid| id(Path::new(&format!("/proc/{pid}/ns/net"))))
        .chain(bridged.iter().filter_map(|n| id(&Path::new(NETNS_DIR).join(n))))
        .filter(|ns| Some(*ns) != own)
        .collect()
}

/// Unmounts and deletes the `/run/netns/cni-*` files of the node's pods (the CRI bind-mounts
/// each sandbox's namespace there; a killed pod keeps it pinned until it is unmounted).
fn remove_pod_netns(ours: &BTreeSet<(u64, u64)>, r: &mut Report) {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if !e.file_name().to_string_lossy().starts_with("cni-") {
            continue;
        }
        let Ok(m) = std::fs::metadata(&path) else {
            continue;
        };
        if ours.contains(&(m.dev(), m.ino())) {
            unmount(&path);
            if std::fs::remove_file(&path).is_ok() {
                r.removed
                    .push(format!("removed pod network namespace {}", path.display()));
            }
        }
    }
}

// ---- network (this network namespace) --------------------------------------------------------

fn our_routes(t: &Target) -> Vec<String> {
    let mut out = Vec::new();
    for family in ["-4", "-6"] {
        if let Ok(text) = run("ip", &[family, "-o", "route", "show"], None) {
            out.extend(select::k8sd_routes(&text, t.service_route, t.pod_cidr));
        }
    }
    out
}

fn nft_tables() -> Vec<(String, String)> {
    run("nft", &["list", "tables"], None)
        .map(|t| select::nft_tables(&t))
        .unwrap_or_default()
}

fn clean_network(t: &Target, r: &mut Report) {
    if run("ip", &["link", "show", select::CNI_BRIDGE], None).is_ok()
        && run("ip", &["link", "del", select::CNI_BRIDGE], None).is_ok()
    {
        r.removed.push(format!("deleted {}", select::CNI_BRIDGE));
    }
    for route in our_routes(t) {
        let mut args = vec!["route", "del"];
        args.extend(route.split_whitespace());
        if run("ip", &args, None).is_ok() {
            r.removed.push(format!("deleted route {route}"));
        }
    }
    for ipt in IPTABLES {
        let Ok(save) = run(&format!("{ipt}-save"), &[], None) else {
            continue;
        };
        if let Some((restore, n)) = select::iptables_removal(&save) {
            match run(
                &format!("{ipt}-restore"),
                &["--noflush", "-w", "5"],
                Some(&restore),
            ) {
                Ok(_) => r.removed.push(format!("deleted {n} chain(s) with {ipt}")),
                Err(e) => tracing::warn!(error = %e, "cannot remove k8sd's iptables chains"),
            }
        }
    }
    for (fam, name) in nft_tables() {
        if run("nft", &["delete", "table", &fam, &name], None).is_ok() {
            r.removed.push(format!("deleted nft table {fam} {name}"));
        }
    }
}

// ---- files -----------------------------------------------------------------------------------

fn remove_cni_results(ids: &BTreeSet<String>, r: &mut Report) {
    let Ok(entries) = std::fs::read_dir(CNI_RESULTS) else {
        return;
    };
    let mut n = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if ids.iter().any(|id| name.contains(&format!("-{id}-"))) && std::fs::remove_file(e.path()).is_ok() {
            n += 1;
        }
    }
    if n > 0 {
        r.removed
            .push(format!("removed {n} CNI result cache file(s) in {CNI_RESULTS}"));
    }
}

fn remove_log_links(t: &Target, r: &mut Report) {
    let Ok(entries) = std::fs::read_dir(CONTAINER_LOG_LINKS) else {
        return;
    };
    let ours = t.layout.pod_logs_dir();
    let mut n = 0;
    for e in entries.flatten() {
        let p = e.path();
        if std::fs::read_link(&p).is_ok_and(|target| target.starts_with(&ours))
            && std::fs::remove_file(&p).is_ok()
        {
            n += 1;
        }
    }
    if n > 0 {
        r.removed
            .push(format!("removed {n} link(s) in {CONTAINER_LOG_LINKS}"));
    }
}

/// Removes k8sd's entries of a root dir and then the dir itself if nothing else is in it. Not
/// while a mount remains under it: removing files recursively would reach into that mount.
fn remove_root(dir: &Path, what: &str, known: &[&str], t: &Target, r: &mut Report) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    if our_mounts(t).iter().any(|m| m.starts_with(dir)) {
        tracing::warn!(dir = %dir.display(), "mounts remain under the {what}; it is kept");
        return;
    }
    let mut foreign = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !select::is_k8sd_entry(&name, known) {
            foreign.push(name);
            continue;
        }
        let p = e.path();
        let _ = if e.file_type().is_ok_and(|f| f.is_dir()) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
    }
    if !foreign.is_empty() {
        tracing::warn!(dir = %dir.display(), entries = ?foreign, "the {what} holds entries k8sd did not make; they and the dir are kept");
        return;
    }
    if std::fs::remove_dir(dir).is_ok() {
        r.removed.push(format!("removed the {what} {}", dir.display()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_is_recognised_by_its_verb_and_data_dir_only() {
        let argv = |s: &str| -> Vec<Vec<u8>> { s.split(' ').map(|w| w.as_bytes().to_vec()).collect() };
        let check_env = |s: &str, env: &[&[u8]], dir: &[u8]| {
            let a = argv(s);
            let refs: Vec<&[u8]> = a.iter().map(Vec::as_slice).collect();
            is_our_daemon(&refs, env, dir)
        };
        let check = |s: &str| check_env(s, &[], b"/var/tmp/e/n1");
        assert!(check(
            "/usr/bin/k8sd run --data-dir /var/tmp/e/n1 --run-dir /run/x"
        ));
        assert!(check("/usr/bin/k8sd --data-dir=/var/tmp/e/n1 run"));
        assert!(!check("/usr/bin/k8sd run --data-dir /var/tmp/e/n10"));
        assert!(!check("/usr/bin/k8sd --data-dir /var/tmp/e/n1 reset"));
        assert!(!check("/usr/bin/k8sd --data-dir /var/tmp/e/n1 status"));
        // Without the flag: K8SD_DATA_DIR, else the default.
        assert!(check_env(
            "/usr/bin/k8sd run",
            &[b"K8SD_DATA_DIR=/var/tmp/e/n1"],
            b"/var/tmp/e/n1"
        ));
        assert!(!check_env("/usr/bin/k8sd run", &[], b"/var/tmp/e/n1"));
        assert!(check_env("/usr/bin/k8sd run", &[], b"/var/lib/k8sd"));
        assert!(!check_env(
            "/usr/bin/k8sd run",
            &[b"K8SD_DATA_DIR=/srv/k"],
            b"/var/lib/k8sd"
        ));
        // Started by snapd: the snap's default, under $SNAP_COMMON.
        let snapd: [&[u8]; 5] = [
            b"SNAP=/snap/k8sd/3",
            b"SNAP_DATA=/var/snap/k8sd/3",
            b"SNAP_COMMON=/var/snap/k8sd/common",
            b"SNAP_NAME=k8sd",
            b"SNAP_REVISION=3",
        ];
        let snap_dir = b"/var/snap/k8sd/common/var/lib/k8sd";
        assert!(check_env("/snap/k8sd/3/bin/k8sd run", &snapd, snap_dir));
        assert!(!check_env("/snap/k8sd/3/bin/k8sd run", &snapd, b"/var/lib/k8sd"));
        assert!(!check_env("/snap/k8sd/3/bin/k8sd run", &snapd[..4], snap_dir));
    }
}
