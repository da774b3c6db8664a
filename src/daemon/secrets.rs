//! `k8sd secrets rotate-key`: a new Secrets encryption key on every control-plane node, every
//! Secret rewritten with it, the old keys dropped (the plan is `cluster/rotation.rs`).
//!
//! ```text
//!  rotate-key ─▶ daemon (any control-plane node)
//!     /k8sd/secrets-rotation: phase, key names        (datastore; created / advanced / deleted by CAS)
//!     each phase: every control-plane member ──Encryption (cluster API, its node certificate)──▶
//!        read its keys; where they differ from the phase's: install, restart kube-apiserver
//!     rewrite: kubectl get secrets -A -o json | kubectl replace -f -, until the datastore
//!        holds no Secret stored with another key
//! ```
//!
//! A cluster with no key (initialised by a k8sd older than encryption at rest) gets its first
//! one the same way, from plaintext (`cluster/rotation.rs`): its apiservers, started without
//! `--encryption-provider-config`, are restarted with it once their node holds the staged file.
//!
//! Every step can be repeated: the record says which phase is under way, each node's keys say
//! how far it got, and a second run (on any control-plane node) finishes what the first began.
//! A control-plane node that does not answer stops the rotation, named, before its phase ends:
//! it keeps the keys of the previous phase, which still read every Secret, until it is started
//! (or removed) and the rotation is run again.

use std::sync::Weak;

use futures::future::BoxFuture;

use super::{Daemon, DaemonError, Progress, report};
use crate::cluster::client::{self, JoinError, Rpc};
use crate::cluster::registry::{self, MemberRole, RotationPhase, RotationRecord};
use crate::cluster::rotation::{self, RotationError};
use crate::cluster::wire::{EncryptionReply, EncryptionRequest, WIRE_VERSION};
use crate::datastore::{KeyRange, RangeRequest};
use crate::node::Node;
use crate::pki::{self, KeyEntry};

/// Where kube-apiserver keeps Secrets in the datastore (`--etcd-prefix` is `/registry`).
const SECRETS_PREFIX: &str = "/registry/secrets/";
/// kube-apiserver's flag naming the Secrets encryption configuration.
const ENCRYPTION_FLAG: &str = "--encryption-provider-config";
/// Rewrite passes before giving up on Secrets that keep changing underneath.
const REWRITE_PASSES: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error(
        "control-plane node {node} ({address}) did not answer ({reason}); the rotation stopped at phase {phase}, \
         every node still reads every Secret. Start k8sd on {node}, or remove it with `k8sd remove-node {node}`, \
         then run `k8sd secrets rotate-key` again to finish"
    )]
    NodeDown {
        node: String,
        address: String,
        reason: String,
        phase: String,
    },
    #[error(
        "control-plane node {node} refused the new keys ({reason}); the rotation stopped at phase {phase}. \
         See `k8sd logs kube-apiserver` and `k8sd logs k8sd` there, then run `k8sd secrets rotate-key` again"
    )]
    NodeRefused {
        node: String,
        reason: String,
        phase: String,
    },
    #[error(
        "control-plane node {node} has no Secrets encryption key while {with_key} has one; copy \
         pki/encryption-config.yaml (0600) from {with_key} to {node}, restart k8sd there, then run \
         `k8sd secrets rotate-key` again"
    )]
    NodeWithoutKey { node: String, with_key: String },
    #[error("control-plane node {node} sent an unusable configuration: {reason}")]
    BadKeys { node: String, reason: String },
    #[error(transparent)]
    Plan(#[from] RotationError),
    #[error(
        "another `k8sd secrets rotate-key` changed the rotation record while this one ran; \
         wait for it to finish (`k8sd status` shows the phase), or run it again"
    )]
    Raced,
    #[error("rewriting the Secrets through kube-apiserver: {0}; run `k8sd secrets rotate-key` again")]
    Kubectl(String),
    #[error(
        "after {passes} rewrites, {count} Secret(s) are still stored without the new key {key} (for example {example}); \
         the old keys are kept. Run `k8sd secrets rotate-key` again"
    )]
    NotRewritten {
        passes: u32,
        count: usize,
        key: String,
        example: String,
    },
}

/// The cluster API's `Encryption` call on this node: its configuration file and its
/// kube-apiserver (reached through the daemon, which owns the supervisor).
#[derive(Debug)]
pub(super) struct ApiserverKeys {
    pub path: std::path::PathBuf,
    pub daemon: Weak<Daemon>,
}

impl crate::cluster::EncryptionHost for ApiserverKeys {
    fn current(&self) -> Result<Option<String>, crate::cluster::EncryptionHostError> {
        Ok(pki::read_encryption_config(&self.path)?.map(|(text, _)| text))
    }

    fn apply(&self, text: String) -> BoxFuture<'static, Result<(), crate::cluster::EncryptionHostError>> {
        let (path, daemon) = (self.path.clone(), self.daemon.clone());
        Box::pin(async move {
            let running = daemon.upgrade().and_then(|d| d.running());
            pki::install_encryption_config(&path, &text)?;
            // Not running yet: its kube-apiserver starts with the new file.
            let Some(r) = running else { return Ok(()) };
            let args = r
                .supervisor
                .status()
                .into_iter()
                .find(|c| c.name == "kube-apiserver")
                .map(|c| c.args)
                .unwrap_or_default();
            let restarted = if args.iter().any(|a| a.starts_with(ENCRYPTION_FLAG)) {
                r.supervisor.restart("kube-apiserver").await
            } else {
                // Started without a key (its cluster had none): the flag is new, and a plain
                // restart would not read the file.
                let mut args = args;
                args.push(format!("{ENCRYPTION_FLAG}={}", path.display()));
                r.supervisor.restart_with_args("kube-apiserver", args).await
            };
            restarted.map_err(|e| crate::cluster::EncryptionHostError::Restart(Box::new(e)))
        })
    }
}

/// One control-plane node as a rotation sees it.
#[derive(Debug)]
struct Peer {
    name: String,
    address: String,
    keys: Vec<KeyEntry>,
}

impl Daemon {
    /// `k8sd secrets rotate-key` (see the module docs).
    pub async fn rotate_secrets_key(&self, progress: Progress) -> Result<(), DaemonError> {
        let (r, ds) = self.control_plane_node("secrets rotate-key")?;
        let step = |s: String| report(&Some(progress.clone()), &s);
        let rec = match registry::get::<RotationRecord>(&ds, registry::ROTATION_KEY).await? {
            Some((rec, _)) => {
                step(format!(
                    "resuming the rotation to key {} begun on {} at phase {}",
                    rec.new_key, rec.started_on, rec.phase
                ));
                rec
            }
            None => {
                // Every node must answer before anything changes.
                let peers = self
                    .peers(&ds, "0/4 check every control-plane node", true)
                    .await?;
                let keyless: Vec<&Peer> = peers.iter().filter(|p| p.keys.is_empty()).collect();
                let mine = if keyless.len() == peers.len() {
                    // No node has a key: the cluster's first, from plaintext.
                    vec![KeyEntry::identity()]
                } else if let (Some(node), Some(with_key)) =
                    (keyless.first(), peers.iter().find(|p| !p.keys.is_empty()))
                {
                    return Err(SecretsError::NodeWithoutKey {
                        node: node.name.clone(),
                        with_key: with_key.name.clone(),
                    }
                    .into());
                } else {
                    peers
                        .iter()
                        .find(|p| p.name == r.cfg.node_name)
                        .map(|p| p.keys.clone())
                        .unwrap_or_default()
                };
                let known = rotation::known_keys(&pairs(&peers)).map_err(SecretsError::from)?;
                // This node's keys in its order, then any other node has: a key only one node
                // holds may still have Secrets stored with it, so it stays until the end too.
                let mut current = mine;
                current.extend(
                    known
                        .values()
                        .filter(|k| !current.contains(k))
                        .cloned()
                        .collect::<Vec<_>>(),
                );
                let taken: Vec<&str> = known.keys().map(String::as_str).collect();
                let new = KeyEntry::generate(crate::cluster::token::now_unix(), &taken)?;
                let rec = rotation::begin(
                    &r.cfg.node_name,
                    &current,
                    &new,
                    crate::cluster::token::now_unix(),
                );
                if !registry::txn(
                    &ds,
                    vec![registry::unchanged(registry::ROTATION_KEY, 0)],
                    vec![registry::put_op(registry::ROTATION_KEY, &rec)],
                )
                .await?
                {
                    return Err(SecretsError::Raced.into());
                }
                step(format!(
                    "rotating the Secrets key: {} replaces {} on {} control-plane node(s)",
                    new.name,
                    rec.old_keys.join(", "),
                    peers.len()
                ));
                return self.run_phases(&ds, rec, Some(new), &step).await;
            }
        };
        self.run_phases(&ds, rec, None, &step).await
    }

    /// Run the phases from `rec.phase` to the end. `fresh`: the new key when this run made it
    /// (no node holds it before the first push).
    async fn run_phases(
        &self,
        ds: &Node,
        mut rec: RotationRecord,
        mut fresh: Option<KeyEntry>,
        step: &impl Fn(String),
    ) -> Result<(), DaemonError> {
        loop {
            let phase = rec.phase.to_string();
            // From plaintext, a node may not hold the staged key yet.
            let from_plaintext = rec.old_keys.iter().any(|k| k == pki::IDENTITY);
            let peers = self.peers(ds, &phase, from_plaintext).await?;
            let known = rotation::known_keys(&pairs(&peers)).map_err(SecretsError::from)?;
            let (held, old) = rotation::resolve(&rec, &known).map_err(SecretsError::from)?;
            let new = match (held, fresh.take()) {
                (Some(k), _) => k,
                (None, Some(k)) if k.name == rec.new_key => k,
                // Interrupted before any node got the key it named: make another.
                (None, _) => {
                    let taken: Vec<&str> = known.keys().map(String::as_str).collect();
                    let k = KeyEntry::generate(crate::cluster::token::now_unix(), &taken)?;
                    let mut next = rec.clone();
                    next.new_key = k.name.clone();
                    self.advance(ds, &rec, Some(&next)).await?;
                    step(format!(
                        "no node held {}; the rotation now introduces {}",
                        rec.new_key, k.name
                    ));
                    rec = next;
                    k
                }
            };
            step(format!("phase {phase}"));
            let plan = rotation::plan_phase(rec.phase, &new, &old, &pairs(&peers));
            let text = pki::render_keys(&plan.target);
            for p in peers.iter().filter(|p| plan.pushes.contains(&p.name)) {
                self.push(p, &text, &phase).await?;
                step(format!(
                    "  {}: kube-apiserver restarted with keys {}",
                    p.name,
                    plan.target
                        .iter()
                        .map(|k| k.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            if plan.pushes.is_empty() {
                step(format!(
                    "  every control-plane node ({}) holds these keys",
                    peers.len()
                ));
            }
            if rec.phase == RotationPhase::RewriteSecrets {
                let n = self.rewrite_secrets(ds, &new).await?;
                step(format!("  {n} Secret(s) stored with {}", new.name));
            }
            match rec.phase.next() {
                Some(phase) => {
                    let mut next = rec.clone();
                    next.phase = phase;
                    self.advance(ds, &rec, Some(&next)).await?;
                    rec = next;
                }
                None => {
                    self.advance(ds, &rec, None).await?;
                    let gone: Vec<&str> = old
                        .iter()
                        .filter(|k| !k.is_identity())
                        .map(|k| k.name.as_str())
                        .collect();
                    step(format!(
                        "done: every Secret is encrypted with {}; keys dropped: {}",
                        new.name,
                        if gone.is_empty() {
                            "none".to_string()
                        } else {
                            gone.join(", ")
                        }
                    ));
                    return Ok(());
                }
            }
        }
    }

    /// Replace the record `from` with `to` (or delete it), only if nobody changed it meanwhile.
    async fn advance(
        &self,
        ds: &Node,
        from: &RotationRecord,
        to: Option<&RotationRecord>,
    ) -> Result<(), DaemonError> {
        let Some((cur, rev)) = registry::get::<RotationRecord>(ds, registry::ROTATION_KEY).await? else {
            return Err(SecretsError::Raced.into());
        };
        if &cur != from {
            return Err(SecretsError::Raced.into());
        }
        let op = match to {
            Some(r) => registry::put_op(registry::ROTATION_KEY, r),
            None => registry::delete_op(registry::ROTATION_KEY),
        };
        if !registry::txn(
            ds,
            vec![registry::unchanged(registry::ROTATION_KEY, rev)],
            vec![op],
        )
        .await?
        {
            return Err(SecretsError::Raced.into());
        }
        Ok(())
    }

    /// Every control-plane member with its keys, read over the cluster API. A node that does
    /// not answer stops the rotation by name, and so does one with no key unless `keyless_ok`
    /// (then it holds no keys).
    async fn peers(&self, ds: &Node, phase: &str, keyless_ok: bool) -> Result<Vec<Peer>, DaemonError> {
        let mut members: Vec<_> = registry::members(ds)
            .await?
            .into_iter()
            .filter(|m| m.role == MemberRole::ControlPlane)
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let mut peers = Vec::new();
        for m in members {
            let address = std::net::SocketAddr::new(m.address, crate::cluster::API_PORT).to_string();
            let rep = self.encryption_call(&m.name, &address, None, phase).await?;
            let keys = match rep.config {
                Some(text) => pki::encryption_keys(&m.name, &text).map_err(|e| SecretsError::BadKeys {
                    node: m.name.clone(),
                    reason: e.to_string(),
                })?,
                None if keyless_ok => Vec::new(),
                None => {
                    return Err(SecretsError::NodeWithoutKey {
                        node: m.name,
                        with_key: "another control-plane node".into(),
                    }
                    .into());
                }
            };
            peers.push(Peer {
                name: m.name,
                address,
                keys,
            });
        }
        Ok(peers)
    }

    async fn push(&self, p: &Peer, text: &str, phase: &str) -> Result<(), DaemonError> {
        self.encryption_call(&p.name, &p.address, Some(text.to_string()), phase)
            .await
            .map(|_| ())
    }

    /// One `Encryption` call with this node's certificate.
    async fn encryption_call(
        &self,
        node: &str,
        address: &str,
        set: Option<String>,
        phase: &str,
    ) -> Result<EncryptionReply, DaemonError> {
        let p = self.opts.layout.pki_dir();
        let read = |f: &str| {
            let path = p.join(f);
            std::fs::read_to_string(&path).map_err(|source| DaemonError::Read { path, source })
        };
        let (ca, cert, key) = (
            read("ca.crt")?,
            read("kubelet-client.crt")?,
            read("kubelet-client.key")?,
        );
        let req = EncryptionRequest {
            version: WIRE_VERSION,
            set,
        };
        let call = async {
            let mut c = client::connect(address, &ca, Some((&cert, &key))).await?;
            client::call::<_, EncryptionReply>(&mut c, address, Rpc::Encryption, &req).await
        };
        call.await.map_err(|e| {
            match e {
                JoinError::Refused(reason) => SecretsError::NodeRefused {
                    node: node.to_string(),
                    reason,
                    phase: phase.to_string(),
                },
                JoinError::Unreachable { reason, .. } => SecretsError::NodeDown {
                    node: node.to_string(),
                    address: address.to_string(),
                    reason,
                    phase: phase.to_string(),
                },
                other => SecretsError::NodeDown {
                    node: node.to_string(),
                    address: address.to_string(),
                    reason: other.to_string(),
                    phase: phase.to_string(),
                },
            }
            .into()
        })
    }

    /// Write every Secret again through kube-apiserver (which now writes with `new`), until the
    /// datastore holds none stored another way. Returns how many Secrets there are.
    async fn rewrite_secrets(&self, ds: &Node, new: &KeyEntry) -> Result<usize, DaemonError> {
        let prefix = format!("k8s:enc:{}:v1:{}:", new.provider, new.name);
        let kubectl = self.kubectl()?;
        let mut stale = stored_without(ds, &prefix).await?;
        for _ in 0..REWRITE_PASSES {
            if stale.1.is_empty() {
                return Ok(stale.0);
            }
            let list = run_kubectl(&kubectl, &["get", "secrets", "-A", "-o", "json"], None).await?;
            // A Secret changed between the get and the replace conflicts, and one deleted is
            // not found: both are fine (the next pass reads it again, or it is gone).
            if let Err(e) = run_kubectl(&kubectl, &["replace", "-f", "-"], Some(list)).await {
                tracing::warn!(error = %e, "some Secrets were not replaced; checking the datastore");
            }
            stale = stored_without(ds, &prefix).await?;
        }
        if stale.1.is_empty() {
            return Ok(stale.0);
        }
        Err(SecretsError::NotRewritten {
            passes: REWRITE_PASSES,
            count: stale.1.len(),
            key: new.name.clone(),
            example: stale.1[0].clone(),
        }
        .into())
    }
}

fn pairs(peers: &[Peer]) -> Vec<(String, Vec<KeyEntry>)> {
    peers.iter().map(|p| (p.name.clone(), p.keys.clone())).collect()
}

/// How many Secrets the datastore holds, and the keys of those not stored with `prefix`
/// (a linearizable read of this node's replica).
async fn stored_without(ds: &Node, prefix: &str) -> Result<(usize, Vec<String>), DaemonError> {
    ds.barrier().await?;
    let mut end = SECRETS_PREFIX.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let req = RangeRequest {
        range: KeyRange::new(SECRETS_PREFIX.as_bytes().to_vec(), end),
        ..Default::default()
    };
    let (res, _) = ds.read(move |r| r.range(&req)).await?;
    let stale = res
        .kvs
        .iter()
        .filter(|kv| !kv.value.starts_with(prefix.as_bytes()))
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect();
    Ok((res.kvs.len(), stale))
}

/// kubectl with the admin kubeconfig; `stdin` piped in when given. Its stdout, or its stderr as
/// the error.
async fn run_kubectl(
    k: &crate::cluster::Kubectl,
    args: &[&str],
    stdin: Option<Vec<u8>>,
) -> Result<Vec<u8>, SecretsError> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(&k.kubebin);
    cmd.arg("kubectl")
        .arg(format!("--kubeconfig={}", k.kubeconfig.display()))
        .arg("--request-timeout=60s")
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| SecretsError::Kubectl(format!("cannot run kubectl: {e}")))?;
    // Fed from its own task: kubectl answers line by line while it reads, and a full stdout
    // pipe must not stop the input.
    let feeder = match (stdin, child.stdin.take()) {
        (Some(input), Some(mut pipe)) => Some(tokio::spawn(async move { pipe.write_all(&input).await })),
        _ => None,
    };
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| SecretsError::Kubectl(format!("kubectl: {e}")))?;
    if let Some(f) = feeder
        && let Ok(Err(e)) = f.await
    {
        return Err(SecretsError::Kubectl(format!("writing to kubectl: {e}")));
    }
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(SecretsError::Kubectl(format!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}
