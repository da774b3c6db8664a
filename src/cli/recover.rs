//! `k8sd recover`: on the one surviving control-plane node of a cluster that lost its
//! datastore quorum for good, make this node the only voter with its own data.
//!
//! ```text
//!  refuse: not root, not initialised, a worker, no confirmation possible (no --yes, no terminal),
//!          a quorum of voters reachable (says how many), daemon still running,
//!          not confirmed ("recover" typed on a terminal)
//!  ─▶ backup archive, offline ─▶ rewrite the Raft membership (raft::recover) ─▶ next steps
//! ```
//!
//! The rewrite needs the daemon stopped (it writes the Raft log), and recover does not stop it
//! itself: under systemd (`Restart=always`) a daemon killed by recover would be started again
//! in the middle of the rewrite; `systemctl stop k8sd` keeps it stopped.

use super::exit::fail;
use std::collections::BTreeSet;
use std::io::{BufRead, IsTerminal, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use crate::daemon::ControlClient;
use crate::daemon::config::Role;
use crate::paths::Layout;
use crate::raft::recover::{self, RecoveryView};

#[derive(Debug, clap::Args)]
pub struct RecoverArgs {
    /// Confirm that the other control-plane nodes are gone for good. Without it recover asks
    /// on a terminal, and refuses when there is none.
    #[arg(long)]
    pub yes: bool,
    /// Where to write the backup taken first (default:
    /// k8sd-recover-backup-<node>-<UTC time>.tar.gz in the current directory). Must not exist.
    #[arg(long)]
    pub backup: Option<PathBuf>,
}

/// How long a voter's peer address has to accept a connection to count as reachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub fn recover(layout: Layout, args: RecoverArgs) -> anyhow::Result<()> {
    let uid = nix::unistd::geteuid().as_raw();
    if uid != 0 {
        fail!(
            Refused,
            "k8sd recover must run as root (running as uid {uid}): it rewrites the datastore. Nothing was changed. Run `sudo k8sd recover`"
        );
    }
    let node_file = layout.node_file();
    let Some(node) = crate::daemon::config::read_node_file(&node_file)? else {
        fail!(
            NotInitialised,
            "this machine is not a k8sd node ({} does not exist); nothing to recover. Run k8sd recover on the surviving control-plane node, or pass its --data-dir",
            node_file.display()
        );
    };
    if node.role != Role::ControlPlane {
        fail!(
            Refused,
            "{} is a worker, which holds no datastore; nothing was changed. Run k8sd recover on the surviving control-plane node",
            node.node_name
        );
    }
    let ds_dir = layout.datastore_dir();
    let raft_dir = ds_dir.join("raft");
    // Never create an id here: a node without one has no datastore to recover.
    if !raft_dir.join("node-id").is_file() {
        fail!(
            NotInitialised,
            "{} has no datastore node id ({} is missing); there is nothing to recover. Nothing was changed",
            node.node_name,
            raft_dir.join("node-id").display()
        );
    }
    // Refused before any datastore file is opened: even a read-only SQLite open of a stopped
    // node's database creates its -wal and -shm files, and a refused recover changes nothing.
    let client = ControlClient::new(layout.control_socket());
    let running = client.is_running();
    if !running && !args.yes && !std::io::stdin().is_terminal() {
        fail!(
            Refused,
            "k8sd recover makes {} the only datastore voter and removes every other member; run it only if they are \
             gone for good. Nothing was changed: there is no terminal to confirm on; pass --yes to confirm",
            node.node_name
        );
    }
    let me = crate::raft::load_or_create_node_id(&raft_dir)?;
    let membership = recover::applied_membership(&ds_dir.join("state.db"))?;
    let (voters, learners, nodes) = recover::members_of(&membership);
    // A voter counts as reachable when its peer port accepts a connection: a stopped or
    // vanished node does not, a running one does even if it cannot reach us back.
    let reachable: BTreeSet<u64> = voters
        .iter()
        .filter(|id| **id != me)
        .filter(|id| nodes.get(id).is_some_and(|n| answers(&n.peer_addr)))
        .copied()
        .collect();
    let plan = recover::plan_recovery(&RecoveryView {
        me,
        voters: voters.clone(),
        learners,
        reachable,
    })?;
    let name = |id: &u64| {
        nodes
            .get(id)
            .map_or_else(|| format!("{id:016x}"), |n| n.name.clone())
    };
    let lost: Vec<String> = plan.remove.iter().map(name).collect();
    if running {
        fail!(
            Refused,
            "the k8sd daemon is running (it answers on {}); recover rewrites the datastore and needs it stopped. \
             Nothing was changed. Stop it (`systemctl stop k8sd`, or end the `k8sd run` process) and run k8sd recover again",
            layout.control_socket().display()
        );
    }
    confirm(&node.node_name, &lost, args.yes)?;
    let (archive, m) = super::backup::write_backup(&layout, &node, args.backup, "k8sd-recover-backup")?;
    println!(
        "backup written to {} (datastore revision {}); k8sd restore rebuilds this node from it if needed",
        archive.display(),
        m.revision
    );
    // Checked again now that nothing can change it: the daemon may have been started while
    // the operator answered.
    if client.is_running() {
        fail!(
            Refused,
            "the k8sd daemon was started meanwhile; nothing was changed apart from the backup {}. Stop it and run k8sd recover again",
            archive.display()
        );
    }
    let done = recover::make_sole_voter(&ds_dir, me)?;
    let removed: Vec<&str> = done.removed.values().map(String::as_str).collect();
    println!(
        "{} is now the only datastore voter (membership entry {} in term {}); removed: {}",
        node.node_name,
        done.index,
        done.term,
        removed.join(", ")
    );
    println!("next:");
    println!("  1. start the daemon: systemctl start k8sd (or k8sd run)");
    println!(
        "  2. for each removed node, k8sd remove-node NAME: {} (deletes its Node and its record; it is no \
         datastore member any more)",
        removed.join(", ")
    );
    println!(
        "  3. never start a removed node on its old data: this node refuses it, but two of them together would \
         form a cluster of their own. Run `k8sd reset --force` on each before it comes back"
    );
    println!("  4. add control-plane nodes again: k8sd add-node here, k8sd join <token> there");
    Ok(())
}

fn answers(peer_addr: &str) -> bool {
    peer_addr
        .to_socket_addrs()
        .ok()
        .into_iter()
        .flatten()
        .any(|a| TcpStream::connect_timeout(&a, PROBE_TIMEOUT).is_ok())
}

/// `--yes`, or the word `recover` typed on a terminal. Never a default: recover throws the
/// other members away.
fn confirm(node: &str, lost: &[String], yes: bool) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    let warning = format!(
        "k8sd recover makes {node} the only datastore voter and removes {}. Run it only if they are gone for good: \
         if they are still running they keep a cluster of their own",
        lost.join(", ")
    );
    if !std::io::stdin().is_terminal() {
        fail!(
            Refused,
            "{warning}. Nothing was changed: there is no terminal to confirm on; pass --yes to confirm"
        );
    }
    print!("{warning}.\nType \"recover\" to continue: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "recover" {
        fail!(Refused, "not confirmed; nothing was changed");
    }
    Ok(())
}
