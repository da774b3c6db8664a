//! Growing the cluster from this node: `add-node` (tokens) and `join`, and `k8sd stop|start`
//! of a component. The token and member records live in the datastore (see
//! `cluster::registry`); this file decides what the node does with them. Shrinking it is in
//! `removal.rs`, this node's own cluster API calls in `cluster_calls.rs`.

use std::sync::Arc;

use super::api::{JoinArgs, TokenReport};
use super::config::{self, InitRequest, NodeConfig, Role};
use super::host::{mkdir, write_file};
use super::{BadReply, Daemon, DaemonError, Progress, Refusal, report};
use crate::cluster::registry::{self, ClusterInfo, MemberRecord, MemberRole};
use crate::cluster::token::{self, JoinToken, TokenRecord, TokenRole};
use crate::cluster::wire::*;
use crate::cluster::{API_PORT, Kubectl, client};
use crate::node::Node;
use crate::pki::{self, CaKind, IssuedCert, Leaf};

/// A control-plane join between `Join` (secrets received) and `JoinComplete` (token consumed),
/// carried through bring-up, which completes it once the datastore member exists.
#[derive(Debug, Clone)]
pub(crate) struct PendingJoin {
    pub token: JoinToken,
    pub datastore_peers: Vec<String>,
}

/// The only file names a joiner accepts from the cluster API: nothing can be written elsewhere.
fn allowed_secret(name: &str) -> bool {
    CaKind::ALL
        .iter()
        .any(|k| k.cert_file() == name || k.key_file() == name)
        || name == pki::SA_KEY_FILE
        || name == pki::SA_PUB_FILE
}

/// A control-plane joiner's extra SANs: the cluster's (from `init`), then its own
/// (`join --extra-sans`), each once.
fn merge_sans(cluster: &[String], own: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in cluster.iter().chain(own) {
        if !out.contains(s) {
            out.push(s.clone());
        }
    }
    out
}

/// The Secrets encryption configuration of a control-plane `Join` answer, checked. An older
/// server's answer has none: refused with what to do, never installed half.
fn encryption_from_reply(rep: &JoinReply, via: &str) -> Result<String, DaemonError> {
    let Some(text) = &rep.encryption_config else {
        return Err(DaemonError::BadReply {
            via: via.to_string(),
            problem: BadReply::NoEncryptionKey {
                server: rep.version,
                this: WIRE_VERSION,
            },
        });
    };
    pki::validate_encryption_config(&format!("the Secrets encryption key from {via}"), text)?;
    Ok(text.clone())
}

impl Daemon {
    pub(super) fn control_plane_node(
        &self,
        verb: &'static str,
    ) -> Result<(super::RunningNode, crate::node::Node), DaemonError> {
        let r = self.running_node(verb)?;
        if r.cfg.role != Role::ControlPlane {
            return Err(Refusal::WorkerNode { verb }.into());
        }
        let ds = r.datastore.clone().ok_or(Refusal::DatastoreDown)?;
        Ok((r, ds))
    }

    /// The running node, or why there is none: never initialised, or not up.
    pub(super) fn running_node(&self, verb: &'static str) -> Result<super::RunningNode, DaemonError> {
        if let Some(r) = self.running() {
            return Ok(r);
        }
        Err(match self.phase() {
            super::Phase::Uninitialised => Refusal::NotInitialised { verb },
            phase => Refusal::NodeDown {
                verb,
                phase: phase.to_string(),
            },
        }
        .into())
    }

    /// Record the cluster's settings and this founding node (idempotent).
    pub(crate) async fn register_founder(
        &self,
        node: &crate::node::Node,
        cfg: &NodeConfig,
    ) -> Result<(), DaemonError> {
        let info = ClusterInfo {
            pod_cidr: cfg.pod_cidr.clone(),
            service_cidr: cfg.service_cidr.clone(),
            extra_sans: cfg.extra_sans.clone(),
        };
        registry::txn(
            node,
            vec![registry::unchanged(registry::CLUSTER_KEY, 0)],
            vec![registry::put_op(registry::CLUSTER_KEY, &info)],
        )
        .await?;
        let me = MemberRecord {
            name: cfg.node_name.clone(),
            role: MemberRole::ControlPlane,
            address: cfg.advertise_address,
            joined_unix: token::now_unix(),
            versions: None,
        };
        registry::add_member_if_absent(node, &me).await?;
        Ok(())
    }

    /// `k8sd add-node`: store a hashed token and return it with its expiry.
    pub async fn add_node(
        &self,
        worker: bool,
        name: Option<String>,
        ttl_secs: u64,
    ) -> Result<(String, String), DaemonError> {
        let (r, ds) = self.control_plane_node("add-node")?;
        // A worker's certificates are signed for the name in its token, so the token must
        // carry one: the joiner cannot pick it.
        if worker && name.is_none() {
            return Err(Refusal::WorkerTokenNeedsName.into());
        }
        if let Some(n) = &name {
            config::validate_node_name(n)?;
            if registry::get::<MemberRecord>(&ds, &registry::member_key(n))
                .await?
                .is_some()
            {
                return Err(Refusal::NameTaken(n.clone()).into());
            }
        }
        if ttl_secs == 0 {
            return Err(Refusal::ZeroTtl.into());
        }
        let ca_path = self.opts.layout.pki_dir().join("ca.crt");
        let ca = std::fs::read_to_string(&ca_path).map_err(|source| DaemonError::Read {
            path: ca_path.clone(),
            source,
        })?;
        let fp = pki::ca_fingerprint_sha256(&ca)?;
        let mut addrs: Vec<String> = registry::members(&ds)
            .await?
            .into_iter()
            .filter(|m| m.role == MemberRole::ControlPlane)
            .map(|m| std::net::SocketAddr::new(m.address, API_PORT).to_string())
            .collect();
        // This node first: it is known to be up.
        let me = std::net::SocketAddr::new(r.cfg.advertise_address, API_PORT).to_string();
        addrs.retain(|a| *a != me);
        addrs.insert(0, me);
        let role = if worker {
            TokenRole::Worker
        } else {
            TokenRole::ControlPlane
        };
        let t = JoinToken::mint(&fp, addrs, role, name);
        let rec = TokenRecord::new(&t, token::now_unix(), ttl_secs);
        let key = registry::token_key(&t.id);
        registry::txn(
            &ds,
            vec![registry::unchanged(&key, 0)],
            vec![registry::put_op(&key, &rec)],
        )
        .await?;
        tracing::info!(id = %t.id, role = %role, "minted a join token");
        Ok((t.encode(), token::rfc3339(rec.expires_unix)))
    }

    pub async fn tokens(&self) -> Result<Vec<TokenReport>, DaemonError> {
        let (_, ds) = self.control_plane_node("tokens list")?;
        let now = token::now_unix();
        Ok(registry::tokens(&ds)
            .await?
            .into_iter()
            .map(|t| TokenReport {
                state: t.describe(now),
                id: t.id,
                role: t.role.to_string(),
                name: t.name,
                expires: token::rfc3339(t.expires_unix),
            })
            .collect())
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), DaemonError> {
        let (_, ds) = self.control_plane_node("tokens revoke")?;
        if registry::revoke_token(&ds, id, token::now_unix()).await? {
            Ok(())
        } else {
            Err(Refusal::NoSuchToken(id.to_string()).into())
        }
    }

    /// `k8sd join`: refuse on an initialised node, check everything locally, ask the cluster,
    /// write what it returns, and bring the node up.
    pub async fn join(self: &Arc<Self>, args: JoinArgs, progress: Progress) -> Result<(), DaemonError> {
        let _guard = self.lifecycle.lock().await;
        let l = self.opts.layout.clone();
        if l.node_file().exists() {
            return Err(DaemonError::AlreadyInitialised(l.node_file()));
        }
        let p = Some(progress.clone());
        report(&p, "checking the token and this machine");
        let t = JoinToken::decode(&args.token)?;
        let role = if args.worker {
            TokenRole::Worker
        } else {
            TokenRole::ControlPlane
        };
        if t.role != role {
            let flag = if t.role == TokenRole::Worker {
                " --worker"
            } else {
                ""
            };
            return Err(token::TokenError::WrongRole {
                token: t.role,
                asked: role,
                flag,
            }
            .into());
        }
        let req = InitRequest {
            node_name: t.node_name(args.node_name.as_deref())?,
            advertise_address: args.advertise_address.clone(),
            extra_sans: args.extra_sans.clone(),
            extra_args: args.extra_args.clone(),
            quota_backend_bytes: args.quota_backend_bytes,
            backup_schedule: args.backup_schedule.clone(),
            backup_retention: args.backup_retention,
            ..Default::default()
        };
        let mut cfg = config::validate(&req, &config::host_name(), &config::local_addresses())?;
        config::check_ports(if args.worker {
            config::WORKER_PORTS
        } else {
            config::PORTS
        })?;
        self.preflight()?;
        if args.worker {
            // For the extra-args check (join_worker sets it too).
            cfg.role = Role::Worker;
        }
        self.check_extra_args(&cfg).await?;
        for dir in [l.pki_dir(), l.kubeconfig_dir(), l.config_dir(), l.datastore_dir()] {
            mkdir(&dir, 0o700)?;
        }
        report(
            &p,
            &format!("asking the cluster to admit {} as a {role} node", cfg.node_name),
        );
        let res = if args.worker {
            self.join_worker(&t, &mut cfg).await
        } else {
            self.join_control_plane(&t, &mut cfg).await
        };
        let pending = match res {
            Ok(p) => p,
            Err(e) => {
                // Nothing of the cluster's stays behind on a refused join.
                let _ = std::fs::remove_dir_all(l.pki_dir());
                let _ = std::fs::remove_dir_all(l.kubeconfig_dir());
                return Err(e);
            }
        };
        let res = self.bring_up(cfg.clone(), Some(progress), pending).await;
        match &res {
            Ok(()) => {}
            Err(e) => self.set_phase(super::Phase::Failed(e.to_string())),
        }
        res
    }

    async fn join_worker(
        &self,
        t: &JoinToken,
        cfg: &mut NodeConfig,
    ) -> Result<Option<PendingJoin>, DaemonError> {
        let l = &self.opts.layout;
        let key = |what: &str| pki::generate_private_key_pem(what);
        let (kc, ks, kp) = (
            key("kubelet-client.key")?,
            key("kubelet.key")?,
            key("kube-proxy.key")?,
        );
        let keys = WorkerKeys {
            kubelet_client: pki::public_key_pem("kubelet-client.key", &kc)?,
            kubelet_serving: pki::public_key_pem("kubelet.key", &ks)?,
            kube_proxy: pki::public_key_pem("kube-proxy.key", &kp)?,
        };
        let req = JoinRequest {
            version: WIRE_VERSION,
            token: t.encode(),
            name: cfg.node_name.clone(),
            role: TokenRole::Worker,
            address: cfg.advertise_address,
            worker_keys: Some(keys),
            versions: Some(super::versions::this_node()),
            allow_kubernetes_minor_change: self.opts.allow_kubernetes_minor_change,
        };
        let (rep, via): (JoinReply, String) =
            client::call_any(&t.addrs, &t.ca, client::Rpc::Join, &req).await?;
        let certs = rep.worker_certs.ok_or_else(|| DaemonError::BadReply {
            via: via.clone(),
            problem: BadReply::NoWorkerCertificates,
        })?;
        let issued = [
            (
                Leaf::KubeletClient,
                IssuedCert {
                    cert_pem: certs.kubelet_client,
                    key_pem: kc,
                },
            ),
            (
                Leaf::KubeletServing,
                IssuedCert {
                    cert_pem: certs.kubelet_serving,
                    key_pem: ks,
                },
            ),
            (
                Leaf::KubeProxy,
                IssuedCert {
                    cert_pem: certs.kube_proxy,
                    key_pem: kp,
                },
            ),
        ];
        pki::install_worker_pki(&l.pki_dir(), &rep.ca_cert, &issued)?;
        cfg.role = Role::Worker;
        cfg.pod_cidr = rep.cluster.pod_cidr;
        cfg.service_cidr = rep.cluster.service_cidr;
        cfg.control_plane = rep.control_plane;
        if cfg.control_plane.is_empty() {
            cfg.control_plane = t
                .addrs
                .iter()
                .filter_map(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|s| s.ip())
                .collect();
        }
        self.persist(cfg)?;
        Ok(None)
    }

    async fn join_control_plane(
        &self,
        t: &JoinToken,
        cfg: &mut NodeConfig,
    ) -> Result<Option<PendingJoin>, DaemonError> {
        let l = &self.opts.layout;
        let req = JoinRequest {
            version: WIRE_VERSION,
            token: t.encode(),
            name: cfg.node_name.clone(),
            role: TokenRole::ControlPlane,
            address: cfg.advertise_address,
            worker_keys: None,
            versions: Some(super::versions::this_node()),
            allow_kubernetes_minor_change: self.opts.allow_kubernetes_minor_change,
        };
        let (rep, via): (JoinReply, String) =
            client::call_any(&t.addrs, &t.ca, client::Rpc::Join, &req).await?;
        if rep.secrets.is_empty() || rep.datastore_peers.is_empty() {
            return Err(DaemonError::BadReply {
                via,
                problem: BadReply::NoSecretsOrPeers,
            });
        }
        // Checked before anything is written: without the cluster's key this node's apiserver
        // could not read a single Secret.
        let encryption_config = encryption_from_reply(&rep, &via)?;
        for s in &rep.secrets {
            if !allowed_secret(&s.name) {
                return Err(DaemonError::BadReply {
                    via,
                    problem: BadReply::UnexpectedFile { name: s.name.clone() },
                });
            }
            let mode = if s.name.ends_with(".key") {
                pki::KEY_MODE
            } else {
                pki::CERT_MODE
            };
            write_file(&l.pki_dir().join(&s.name), s.pem.as_bytes(), mode)?;
        }
        pki::install_encryption_config(&l.encryption_config(), &encryption_config)?;
        cfg.role = Role::ControlPlane;
        cfg.pod_cidr = rep.cluster.pod_cidr;
        cfg.service_cidr = rep.cluster.service_cidr;
        cfg.extra_sans = merge_sans(&rep.cluster.extra_sans, &cfg.extra_sans);
        Ok(Some(PendingJoin {
            token: t.clone(),
            datastore_peers: rep.datastore_peers,
        }))
    }

    pub(crate) fn persist(&self, cfg: &NodeConfig) -> Result<(), DaemonError> {
        let text = serde_yaml::to_string(cfg).map_err(DaemonError::EncodeConfig)?;
        write_file(&self.opts.layout.node_file(), text.as_bytes(), 0o600)
    }

    /// The second half of a control-plane join, once this node's datastore is a Raft member:
    /// consume the token and record the member in one write, then persist `node.yaml`.
    pub(crate) async fn complete_join(
        &self,
        pending: &PendingJoin,
        cfg: &NodeConfig,
    ) -> Result<(), DaemonError> {
        let req = JoinCompleteRequest {
            version: WIRE_VERSION,
            token: pending.token.encode(),
            name: cfg.node_name.clone(),
            address: cfg.advertise_address,
        };
        let _: (JoinCompleteReply, String) = client::call_any(
            &pending.token.addrs,
            &pending.token.ca,
            client::Rpc::JoinComplete,
            &req,
        )
        .await?;
        self.persist(cfg)
    }

    /// Wipe what a failed control-plane join left on this node (the caller has stopped the
    /// datastore and removed its member).
    pub(crate) fn wipe_failed_join(&self) {
        let l = &self.opts.layout;
        for d in [l.pki_dir(), l.kubeconfig_dir(), l.datastore_dir()] {
            let _ = std::fs::remove_dir_all(d);
        }
        let _ = std::fs::remove_file(l.node_file());
    }

    /// Leave the datastore group after a failed join: this node's member must not linger.
    pub(crate) async fn abandon_datastore(&self, datastore: &Node) {
        let me = datastore.meta().member_id;
        if let Err(e) = datastore.remove_member(me, true).await {
            tracing::error!(error = %e, "could not remove this node's datastore member; remove it with `k8sd remove-node` on a control-plane node");
        }
        datastore.shutdown().await;
    }

    pub(crate) fn kubectl(&self) -> Result<Kubectl, DaemonError> {
        Ok(Kubectl {
            kubebin: self.kubebin()?,
            kubeconfig: self.opts.layout.admin_kubeconfig(),
        })
    }

    /// `k8sd stop|start COMPONENT`.
    pub async fn component(&self, name: &str, start: bool) -> Result<(), DaemonError> {
        let r = self.running_node(if start { "start" } else { "stop" })?;
        let res = if start {
            r.supervisor.start_one(name).await
        } else {
            r.supervisor.stop_one(name).await
        };
        res.map_err(|e| {
            Refusal::Component {
                source: e,
                known: r.supervisor.status().iter().map(|c| c.name.clone()).collect(),
            }
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(encryption_config: Option<String>) -> JoinReply {
        JoinReply {
            version: 1,
            cluster: ClusterInfo {
                pod_cidr: "10.88.0.0/16".into(),
                service_cidr: "10.96.0.0/12".into(),
                extra_sans: vec![],
            },
            ca_cert: String::new(),
            control_plane: vec![],
            secrets: vec![],
            datastore_peers: vec![],
            worker_certs: None,
            encryption_config,
        }
    }

    #[test]
    fn a_joiner_takes_the_clusters_extra_sans_then_its_own_each_once() {
        let cluster = vec!["api.example.com".to_string(), "198.51.100.7".to_string()];
        let own = vec!["n2.example.com".to_string(), "api.example.com".to_string()];
        assert_eq!(
            merge_sans(&cluster, &own),
            ["api.example.com", "198.51.100.7", "n2.example.com"]
        );
        assert_eq!(merge_sans(&[], &own), ["n2.example.com", "api.example.com"]);
    }

    #[test]
    fn a_join_answer_without_a_valid_encryption_key_is_refused_with_what_to_do() {
        let e = encryption_from_reply(&reply(None), "10.0.0.1:6400")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.0.0.1:6400 answered without the Secrets encryption key (cluster API version 1"),
            "{e}"
        );
        assert!(e.contains("run the same k8sd version"), "{e}");
        let e = encryption_from_reply(&reply(Some("kind: nope".into())), "10.0.0.1:6400")
            .unwrap_err()
            .to_string();
        assert!(e.contains("the Secrets encryption key from 10.0.0.1:6400"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(pki::ENCRYPTION_CONFIG_FILE);
        pki::create_encryption_config(&path, 1).unwrap();
        let good = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            encryption_from_reply(&reply(Some(good.clone())), "x").unwrap(),
            good
        );
    }
}
