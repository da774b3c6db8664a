//! `k8sd reset`: remove everything this node put on its host, and nothing of anyone else's.
//!
//! Several nodes may share one machine (the e2e suites and the conformance run put each in its
//! own network namespace, sharing the mount namespace and the cgroup tree), so every step
//! selects by what identifies *this* node, never by name alone:
//!
//! ```text
//!  1. processes   the daemon (k8sd `run` with our data dir; first SIGTERM via its pid file),
//!                 every process whose environment carries K8SD_MANAGED=<data dir> (the
//!                 supervisor's marker), every shim started with `-address <our socket>`, and
//!                 every process in the kubepods cgroups under our cgroup root (the pods)
//!  2. mounts      strictly under the data dir and run dir (volumes, overlays, sandbox shm),
//!                 deepest first; then the pods' /run/netns/cni-* files, found by the network
//!                 namespace of the pods' processes (collected before they are killed)
//!  3. cgroups     the private cgroup root whole, or only kubepods* at the hierarchy roots
//!  4. network     in the network namespace reset runs in: cni0, the service-range route whose
//!                 source is our advertise address, routes via gateways into the pod range,
//!                 KUBE-*/CNI-* iptables chains and the rules jumping to them (legacy and nft
//!                 backends, IPv4 and IPv6), kube-proxy's nftables tables
//!  5. files       libcni's result cache of our sandboxes, /var/log/containers links into our
//!                 pod-logs dir, then the run dir and data dir (k8sd's entries only)
//!  6. verify      whatever of the above is still found is reported as remaining
//! ```
//!
//! Each step tolerates finding nothing, so reset is safe on a clean host, twice, or after a
//! crash. Leaving the cluster (and the quorum check that goes with it) happens before, in
//! `cli/reset.rs`, through the daemon's `leave`; this module decides nothing about clusters.

mod host;
pub mod select;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::paths::Layout;
use select::Cidr;

/// Why `reset` cannot start. Nothing has been changed when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    #[error(
        "k8sd reset must run as root (running as uid {uid}): it stops processes, unmounts and \
         changes the network; nothing was changed. Run `sudo k8sd reset`"
    )]
    NotRoot { uid: u32 },
    #[error("refusing to reset with {what} {path}: {why}; nothing was changed")]
    UnsafeDir {
        what: &'static str,
        path: PathBuf,
        why: &'static str,
    },
    #[error("{path} is unreadable: {reason}; fix or remove it, or pass --force to reset without it")]
    NodeConfig { path: PathBuf, reason: String },
}

/// What belongs to the node being reset.
#[derive(Debug, Clone)]
pub struct Target {
    pub layout: Layout,
    /// The kubelet's cgroupRoot (`/`, or a private subtree when nodes share a machine).
    pub cgroup_root: String,
    /// The service range and advertise address from node.yaml, when known: the route
    /// `daemon/svcroute.rs` may have added.
    pub service_route: Option<(Cidr, IpAddr)>,
    /// The cluster's pod range, when known: routes to other nodes' pods.
    pub pod_cidr: Option<Cidr>,
}

/// What a reset did and what it could not undo.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// One line per thing removed ("killed 3 processes of ...", "deleted cni0").
    pub removed: Vec<String>,
    /// One line per thing still found afterwards; empty means the host is clean.
    pub remaining: Vec<String>,
}

/// Refuses before anything is touched: not root, or a data/run dir that could not be a k8sd
/// node's (relative, or the file system root).
pub fn preflight(layout: &Layout) -> Result<(), ResetError> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        return Err(ResetError::NotRoot { uid });
    }
    for (what, path) in [("data dir", &layout.data_dir), ("run dir", &layout.run_dir)] {
        check_dir(what, path)?;
    }
    Ok(())
}

fn check_dir(what: &'static str, path: &Path) -> Result<(), ResetError> {
    let why = if !path.is_absolute() {
        Some("it is not an absolute path")
    } else if path.parent().is_none() {
        Some("it is the file system root")
    } else {
        None
    };
    match why {
        Some(why) => Err(ResetError::UnsafeDir {
            what,
            path: path.to_owned(),
            why,
        }),
        None => Ok(()),
    }
}

/// Clean the host of everything `target` names, in the order of the module doc, then look
/// again and report what remains.
pub fn run(target: &Target) -> Report {
    let mut report = Report::default();
    host::clean(target, &mut report);
    report.remaining = host::remaining(target);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_root_dirs_are_refused_naming_the_dir() {
        let e = check_dir("data dir", Path::new("/")).unwrap_err();
        assert!(
            e.to_string().contains("data dir /: it is the file system root"),
            "{e}"
        );
        let e = check_dir("run dir", Path::new("run/k8sd")).unwrap_err();
        assert!(e.to_string().contains("run dir run/k8sd"), "{e}");
        check_dir("data dir", Path::new("/var/lib/k8sd")).unwrap();
    }
}
