//! The server half of the cluster API, on every control-plane node.
//!
//! Invariants:
//! - Nothing is handed out before the token checks out against a linearizable read of its
//!   record, the CA fingerprint in it is this cluster's, and the node name is free.
//! - A worker's token is consumed in the same Txn that records the worker. A control-plane
//!   joiner's is claimed (for its name) in a Txn before any key is sent, so a replayed `Join`
//!   gets nothing, and consumed in the Txn of `JoinComplete`, after its datastore member exists.
//!   Every Txn compares the token record's mod revision, so two joiners racing with one token
//!   cannot both win.
//! - A worker never receives a CA key: its certificates are signed here, for the name and
//!   address the control plane records, over public keys it sent. The same holds when it
//!   renews (`Renew`): the name comes from its verified client certificate, the address from
//!   its member record.
//!
//! About 600 lines, on purpose: one job, the server side of every cluster API call, each
//! call beside the checks that guard it (the tests are at the end).

use std::net::IpAddr;
use std::path::PathBuf;

use tonic::{Request, Response, Status};

use super::pb::Msg;
use super::pb::cluster_api_server::ClusterApi;
use super::registry::{self, ClusterInfo, MemberRecord, MemberRole, RotationRecord};
use super::throttle::FailedJoins;
use super::token::{JoinToken, TokenError, TokenRecord, TokenRole, TokenState, now_unix};
use super::versions::check_kubernetes_skew;
use super::wire::*;
use crate::node::Node;
use crate::pki::{self, CaKind, Leaf, NodeIdentity, NodeRole};

/// The cluster API service of one control-plane node.
#[derive(Debug, Clone)]
pub struct ClusterService {
    pub node: Node,
    pub pki_dir: PathBuf,
    pub kubectl: super::Kubectl,
    /// Refused joins per source address (logged, and throttled past a limit).
    pub failed_joins: FailedJoins,
    /// This node's Secrets encryption configuration and kube-apiserver, for `Encryption`.
    pub encryption: std::sync::Arc<dyn super::EncryptionHost>,
}

/// The node name in a verified client certificate (CN `system:node:NAME`), if any.
fn node_of<T>(req: &Request<T>) -> Option<String> {
    use x509_parser::prelude::FromDer;
    let certs = req.peer_certs()?;
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(certs.first()?.as_ref()).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    cn.strip_prefix("system:node:").map(str::to_string)
}

fn body<T: serde::de::DeserializeOwned>(m: Request<Msg>) -> Result<T, Status> {
    serde_json::from_slice(&m.into_inner().body)
        .map_err(|e| Status::invalid_argument(format!("malformed request: {e}")))
}

fn reply<T: serde::Serialize>(t: &T) -> Result<Response<Msg>, Status> {
    Ok(Response::new(Msg {
        body: serde_json::to_vec(t).map_err(|e| Status::internal(e.to_string()))?,
    }))
}

fn unavailable(e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("the cluster cannot answer now ({e}); retry shortly"))
}

fn denied(e: TokenError) -> Status {
    Status::permission_denied(e.to_string())
}

fn check_version(v: u32) -> Result<(), Status> {
    if (MIN_WIRE_VERSION..=WIRE_VERSION).contains(&v) {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "joiner speaks cluster API {v}, this node {MIN_WIRE_VERSION} to {WIRE_VERSION}; use matching k8sd versions"
        )))
    }
}

/// A control-plane joiner must install the Secrets key, which a version-1 joiner ignores.
fn check_control_plane_version(v: u32) -> Result<(), Status> {
    if v >= ENCRYPTION_WIRE_VERSION {
        Ok(())
    } else {
        Err(Status::failed_precondition(format!(
            "the joining node's k8sd speaks cluster API {v}, too old to receive the Secrets encryption key \
             (needs {ENCRYPTION_WIRE_VERSION}); install this cluster's k8sd version on it and join again"
        )))
    }
}

impl ClusterService {
    fn read_pki(&self, name: &str) -> Result<String, Status> {
        std::fs::read_to_string(self.pki_dir.join(name))
            .map_err(|e| Status::internal(format!("cannot read {name}: {e}")))
    }

    /// Decode the token and check it against its record for `role` and `name`; the record's
    /// mod revision comes back for the consuming Txn.
    async fn check_token(
        &self,
        token: &str,
        role: TokenRole,
        name: &str,
    ) -> Result<(JoinToken, TokenRecord, i64), Status> {
        let t = JoinToken::decode(token).map_err(denied)?;
        let ours = pki::ca_fingerprint_sha256(&self.read_pki("ca.crt")?)
            .map_err(|e| Status::internal(e.to_string()))?;
        if !t.ca.eq_ignore_ascii_case(&ours) {
            return Err(denied(TokenError::Unknown));
        }
        let (rec, rev) = self.token_record(&t).await?;
        rec.check(&t, role, name, now_unix()).map_err(denied)?;
        Ok((t, rec, rev))
    }

    /// The stored record of `t` and its mod revision, by a linearizable read.
    async fn token_record(&self, t: &JoinToken) -> Result<(TokenRecord, i64), Status> {
        registry::get::<TokenRecord>(&self.node, &registry::token_key(&t.id))
            .await
            .map_err(unavailable)?
            .ok_or_else(|| denied(TokenError::Unknown))
    }

    async fn check_name_free(&self, name: &str) -> Result<(), Status> {
        if let Some((m, _)) = registry::get::<MemberRecord>(&self.node, &registry::member_key(name))
            .await
            .map_err(unavailable)?
        {
            return Err(Status::already_exists(format!(
                "node name {name} is already taken by a {} node at {}; pick another with --name, or `k8sd remove-node {name}` first",
                m.role, m.address
            )));
        }
        Ok(())
    }

    /// A control-plane node may not join during a Secrets key rotation (see `consume`).
    async fn check_no_rotation(&self) -> Result<(), Status> {
        if let Some((rec, _)) = registry::get::<RotationRecord>(&self.node, registry::ROTATION_KEY)
            .await
            .map_err(unavailable)?
        {
            return Err(Status::failed_precondition(format!(
                "a Secrets key rotation is under way (phase {}, begun on {}); finish it with \
                 `k8sd secrets rotate-key` on a control-plane node, then join again with the same token",
                rec.phase, rec.started_on
            )));
        }
        Ok(())
    }

    async fn cluster_info(&self) -> Result<ClusterInfo, Status> {
        registry::get::<ClusterInfo>(&self.node, registry::CLUSTER_KEY)
            .await
            .map_err(unavailable)?
            .map(|(c, _)| c)
            .ok_or_else(|| unavailable("the cluster record is not written yet"))
    }

    async fn control_plane(&self) -> Result<Vec<IpAddr>, Status> {
        Ok(registry::members(&self.node)
            .await
            .map_err(unavailable)?
            .into_iter()
            .filter(|m| m.role == MemberRole::ControlPlane)
            .map(|m| m.address)
            .collect())
    }

    /// Consume the token and record the member in one write. Loses cleanly to a racing use.
    async fn consume(
        &self,
        t: &JoinToken,
        mut rec: TokenRecord,
        rev: i64,
        member: &MemberRecord,
    ) -> Result<(), Status> {
        let tkey = registry::token_key(&t.id);
        let mkey = registry::member_key(&member.name);
        rec.state = TokenState::Used {
            by: member.name.clone(),
            at_unix: now_unix(),
        };
        let mut compare = vec![registry::unchanged(&tkey, rev), registry::unchanged(&mkey, 0)];
        // A control-plane node is recorded only while no Secrets key rotation is under way, in
        // the same write: a rotation lists the members when it starts each phase, so one that
        // joined with the keys of before could otherwise miss the new key.
        if member.role == MemberRole::ControlPlane {
            compare.push(registry::unchanged(registry::ROTATION_KEY, 0));
        }
        let ok = registry::txn(
            &self.node,
            compare,
            vec![registry::put_op(&tkey, &rec), registry::put_op(&mkey, member)],
        )
        .await
        .map_err(unavailable)?;
        if ok {
            return Ok(());
        }
        // Say which compare failed.
        self.check_name_free(&member.name).await?;
        if member.role == MemberRole::ControlPlane {
            self.check_no_rotation().await?;
        }
        if member.role == MemberRole::Worker {
            self.check_token(&t.encode(), TokenRole::Worker, &member.name)
                .await?;
        } else {
            let (rec, _) = self.token_record(t).await?;
            rec.check_claimed(t, &member.name).map_err(denied)?;
        }
        Err(Status::aborted("the token changed while joining; retry"))
    }

    /// The joiner's Kubernetes version against every control-plane member's, once its token
    /// checks out (so only a token holder learns the members' names and versions) and before
    /// the token is spent: a refused join spends nothing.
    async fn check_skew(&self, req: &JoinRequest) -> Result<(), Status> {
        let Some(joiner) = &req.versions else {
            return Ok(());
        };
        self.check_token(&req.token, req.role, &req.name).await?;
        let members = registry::members(&self.node).await.map_err(unavailable)?;
        let control_plane = members
            .iter()
            .filter(|m| m.role == MemberRole::ControlPlane && m.name != req.name)
            .filter_map(|m| Some((m.name.as_str(), m.versions.as_ref()?.kubernetes.as_str())));
        check_kubernetes_skew(
            &joiner.kubernetes,
            control_plane,
            req.allow_kubernetes_minor_change,
        )
        .map_err(|e| Status::failed_precondition(format!("the joining node: {e}")))
    }

    async fn join_worker(&self, req: JoinRequest, source: Option<IpAddr>) -> Result<JoinReply, Status> {
        // The worker's certificates name its address; it must be the one it calls from.
        if let Some(ip) = source
            && ip != req.address
        {
            return Err(Status::invalid_argument(format!(
                "this worker asks for certificates for address {}, but its request came from {ip}; \
                 join with --advertise-address {ip}",
                req.address
            )));
        }
        let keys = req
            .worker_keys
            .clone()
            .ok_or_else(|| Status::invalid_argument("a worker join must carry its public keys"))?;
        let (t, rec, rev) = self.check_token(&req.token, TokenRole::Worker, &req.name).await?;
        self.check_name_free(&req.name).await?;
        let cluster = self.cluster_info().await?;
        let ca = pki::load_ca(&self.pki_dir, CaKind::Cluster).map_err(|e| Status::internal(e.to_string()))?;
        let id = NodeIdentity {
            node_name: req.name.clone(),
            node_ips: vec![req.address],
            extra_sans: vec![],
            service_cidr: cluster
                .service_cidr
                .parse()
                .map_err(|e: pki::PkiError| Status::internal(e.to_string()))?,
        };
        let now = time::OffsetDateTime::now_utc();
        let sign = |leaf: Leaf, key: &str| {
            pki::sign_leaf_for_public_key(&ca, &leaf.spec(&id), key, now)
                .map_err(|e| Status::invalid_argument(e.to_string()))
        };
        let certs = WorkerCerts {
            kubelet_client: sign(Leaf::KubeletClient, &keys.kubelet_client)?,
            kubelet_serving: sign(Leaf::KubeletServing, &keys.kubelet_serving)?,
            kube_proxy: sign(Leaf::KubeProxy, &keys.kube_proxy)?,
        };
        let member = MemberRecord {
            name: req.name.clone(),
            role: MemberRole::Worker,
            address: req.address,
            joined_unix: now_unix(),
            versions: req.versions.clone(),
        };
        self.consume(&t, rec, rev, &member).await?;
        tracing::info!(node = %req.name, address = %req.address, "a worker joined");
        Ok(JoinReply {
            version: WIRE_VERSION,
            cluster,
            ca_cert: ca.cert_pem().to_string(),
            control_plane: self.control_plane().await?,
            secrets: vec![],
            datastore_peers: vec![],
            worker_certs: Some(certs),
            encryption_config: None,
        })
    }

    /// Claim a control-plane token for `name` before anything secret is sent: from here on only
    /// that joiner's `JoinComplete` can use it, and a second `Join` with it gets nothing.
    async fn claim(&self, t: &JoinToken, mut rec: TokenRecord, rev: i64, name: &str) -> Result<(), Status> {
        let tkey = registry::token_key(&t.id);
        rec.state = TokenState::Claimed {
            by: name.to_string(),
            at_unix: now_unix(),
        };
        let ok = registry::txn(
            &self.node,
            vec![registry::unchanged(&tkey, rev)],
            vec![registry::put_op(&tkey, &rec)],
        )
        .await
        .map_err(unavailable)?;
        if ok {
            return Ok(());
        }
        self.check_token(&t.encode(), TokenRole::ControlPlane, name)
            .await?;
        Err(Status::aborted("the token changed while joining; retry"))
    }

    async fn join_control_plane(&self, req: JoinRequest) -> Result<JoinReply, Status> {
        check_control_plane_version(req.version)?;
        let (t, rec, rev) = self
            .check_token(&req.token, TokenRole::ControlPlane, &req.name)
            .await?;
        self.check_name_free(&req.name).await?;
        self.check_no_rotation().await?;
        let cluster = self.cluster_info().await?;
        // Every apiserver must hold the same Secrets key; a node without one (initialised by an
        // older k8sd) cannot admit a control-plane node that would need it.
        let enc_path = self.pki_dir.join(pki::ENCRYPTION_CONFIG_FILE);
        let encryption_config = match pki::read_encryption_config(&enc_path) {
            Ok(Some((text, _))) => text,
            Ok(None) => {
                return Err(Status::failed_precondition(format!(
                    "this control-plane node has no Secrets encryption key ({} is missing), so it \
                     cannot hand one to a joining control-plane node; see docs/security.md",
                    enc_path.display()
                )));
            }
            Err(e) => return Err(Status::internal(e.to_string())),
        };
        let mut secrets = Vec::new();
        for kind in CaKind::ALL {
            for f in [kind.cert_file(), kind.key_file()] {
                secrets.push(SecretFile {
                    pem: self.read_pki(&f)?,
                    name: f,
                });
            }
        }
        for f in [pki::SA_KEY_FILE, pki::SA_PUB_FILE] {
            secrets.push(SecretFile {
                name: f.to_string(),
                pem: self.read_pki(f)?,
            });
        }
        self.claim(&t, rec, rev, &req.name).await?;
        let peers = self
            .node
            .raft_status()
            .map(|s| s.members.values().map(|i| i.peer_addr.clone()).collect())
            .unwrap_or_default();
        tracing::info!(node = %req.name, address = %req.address, "handing cluster secrets to a joining control-plane node");
        Ok(JoinReply {
            version: WIRE_VERSION,
            cluster,
            ca_cert: self.read_pki("ca.crt")?,
            control_plane: self.control_plane().await?,
            secrets,
            datastore_peers: peers,
            worker_certs: None,
            encryption_config: Some(encryption_config),
        })
    }
}

#[tonic::async_trait]
impl ClusterApi for ClusterService {
    async fn join(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let source = req.remote_addr().map(|a| a.ip());
        self.guarded(source, "Join", async {
            let req: JoinRequest = body(req)?;
            check_version(req.version)?;
            crate::daemon::config::validate_node_name(&req.name)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            self.check_skew(&req).await?;
            let out = match req.role {
                TokenRole::Worker => self.join_worker(req, source).await?,
                TokenRole::ControlPlane => self.join_control_plane(req).await?,
            };
            reply(&out)
        })
        .await
    }

    async fn membership(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let name = node_of(&req)
            .ok_or_else(|| Status::unauthenticated("present this node's kubelet client certificate"))?;
        let req: MembershipRequest = body(req)?;
        check_version(req.version)?;
        let key = registry::member_key(&name);
        if req.leave {
            // Only the caller's own record: another node's (even an unreadable one) is no
            // reason to keep a worker from leaving.
            let own = registry::get::<MemberRecord>(&self.node, &key)
                .await
                .map_err(unavailable)?;
            if let Some((m, _)) = own {
                if m.role != MemberRole::Worker {
                    return Err(Status::failed_precondition(
                        "a control-plane node leaves through its own datastore",
                    ));
                }
                self.kubectl.delete_node(&name).await.map_err(unavailable)?;
                registry::txn(&self.node, vec![], vec![registry::delete_op(&key)])
                    .await
                    .map_err(unavailable)?;
                tracing::info!(node = %name, "a worker left the cluster");
            }
            return reply(&MembershipReply {
                version: WIRE_VERSION,
                member: false,
                control_plane: vec![],
            });
        }
        // One read of every member: the caller's own record is among them.
        let mut members = registry::members(&self.node).await.map_err(unavailable)?;
        let member = members.iter().position(|m| m.name == name);
        if let (Some(versions), Some(i)) = (&req.versions, member)
            && members[i].versions.as_ref() != Some(versions)
        {
            // Answer with what is now recorded: the new versions, or no record at all if it
            // went away meanwhile.
            if registry::publish_versions(&self.node, &name, versions)
                .await
                .map_err(unavailable)?
            {
                members[i].versions = Some(versions.clone());
            } else {
                members.remove(i);
            }
        }
        let control_plane = members
            .into_iter()
            .filter(|m| m.role == MemberRole::ControlPlane)
            .filter_map(|m| {
                Some(ControlPlaneVersion {
                    kubernetes: m.versions?.kubernetes,
                    name: m.name,
                })
            })
            .collect();
        reply(&MembershipReply {
            version: WIRE_VERSION,
            member: member.is_some(),
            control_plane,
        })
    }

    async fn renew(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let name = node_of(&req)
            .ok_or_else(|| Status::unauthenticated("present this node's kubelet client certificate"))?;
        let req: RenewRequest = body(req)?;
        check_version(req.version)?;
        // The identity comes from the verified certificate and the member record, so a worker
        // can renew only its own certificates, for the address it joined with.
        let member = registry::get::<MemberRecord>(&self.node, &registry::member_key(&name))
            .await
            .map_err(unavailable)?
            .map(|(m, _)| m)
            .ok_or_else(|| Status::permission_denied(format!("{name} is not a member of this cluster")))?;
        if member.role != MemberRole::Worker {
            return Err(Status::failed_precondition(
                "a control-plane node renews its certificates from its own copy of the CA",
            ));
        }
        let cluster = self.cluster_info().await?;
        let ca = pki::load_ca(&self.pki_dir, CaKind::Cluster).map_err(|e| Status::internal(e.to_string()))?;
        let id = NodeIdentity {
            node_name: name.clone(),
            node_ips: vec![member.address],
            extra_sans: vec![],
            service_cidr: cluster
                .service_cidr
                .parse()
                .map_err(|e: pki::PkiError| Status::internal(e.to_string()))?,
        };
        let now = time::OffsetDateTime::now_utc();
        let mut certs = Vec::new();
        for k in &req.keys {
            let leaf = Leaf::for_role(NodeRole::Worker)
                .find(|l| l.file_stem() == k.leaf)
                .ok_or_else(|| {
                    Status::invalid_argument(format!("{:?} is not a worker certificate", k.leaf))
                })?;
            let signed = pki::sign_leaf_for_public_key(&ca, &leaf.spec(&id), &k.public_key, now)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            certs.push(RenewedCert {
                leaf: k.leaf.clone(),
                cert: signed,
            });
        }
        tracing::info!(node = %name, leaves = ?req.keys.iter().map(|k| &k.leaf).collect::<Vec<_>>(), "renewed a worker's certificates");
        reply(&RenewReply {
            version: WIRE_VERSION,
            ca_cert: ca.cert_pem().to_string(),
            certs,
        })
    }

    async fn encryption(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let name = node_of(&req)
            .ok_or_else(|| Status::unauthenticated("present this node's kubelet client certificate"))?;
        let req: EncryptionRequest = body(req)?;
        check_version(req.version)?;
        // The keys go only to a control-plane node, which holds every CA key anyway: its name
        // comes from the verified certificate, its role from its member record.
        let member = registry::get::<MemberRecord>(&self.node, &registry::member_key(&name))
            .await
            .map_err(unavailable)?
            .map(|(m, _)| m);
        if member.is_none_or(|m| m.role != MemberRole::ControlPlane) {
            return Err(Status::permission_denied(format!(
                "{name} is not a control-plane member of this cluster"
            )));
        }
        let mut applied = None;
        if let Some(text) = req.set {
            pki::validate_encryption_config("the Secrets encryption configuration sent", &text)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            // Finish even if the caller goes away: the file and the running apiserver must agree.
            let apply = self.encryption.apply(text);
            let how = tokio::spawn(apply)
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::internal(e.to_string()))?;
            tracing::info!(by = %name, kube_apiserver = ?how, "Secrets encryption keys replaced");
            applied = Some(how);
        }
        reply(&EncryptionReply {
            version: WIRE_VERSION,
            config: self
                .encryption
                .current()
                .map_err(|e| Status::internal(e.to_string()))?,
            applied,
        })
    }

    async fn join_complete(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let source = req.remote_addr().map(|a| a.ip());
        self.guarded(source, "JoinComplete", self.complete(req)).await
    }
}

impl ClusterService {
    /// Run a join call unless its source is throttled; log and count a refusal. Failures of
    /// the cluster itself (unavailable, a lost race) are not the caller's and are not counted.
    async fn guarded(
        &self,
        source: Option<IpAddr>,
        rpc: &'static str,
        call: impl std::future::Future<Output = Result<Response<Msg>, Status>>,
    ) -> Result<Response<Msg>, Status> {
        let now = std::time::Instant::now();
        if let Some(ip) = source
            && let Some(left) = self.failed_joins.blocked(ip, now)
        {
            return Err(Status::resource_exhausted(format!(
                "too many refused joins from {ip}; wait {left} s and check the token"
            )));
        }
        let res = call.await;
        if let Err(s) = &res
            && !matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Aborted)
        {
            let count = source.map(|ip| self.failed_joins.record(ip, now));
            let source = source.map_or_else(|| "unknown".to_string(), |ip| ip.to_string());
            tracing::warn!(%source, rpc, code = ?s.code(), reason = s.message(), refusals_in_window = ?count, "refused a join");
        }
        res
    }

    async fn complete(&self, req: Request<Msg>) -> Result<Response<Msg>, Status> {
        let req: JoinCompleteRequest = body(req)?;
        check_version(req.version)?;
        let t = JoinToken::decode(&req.token).map_err(denied)?;
        let (rec, rev) = self.token_record(&t).await?;
        rec.check_claimed(&t, &req.name).map_err(denied)?;
        let member = MemberRecord {
            name: req.name.clone(),
            role: MemberRole::ControlPlane,
            address: req.address,
            joined_unix: now_unix(),
            versions: None,
        };
        self.consume(&t, rec, rev, &member).await?;
        tracing::info!(node = %req.name, address = %req.address, "a control-plane node joined");
        reply(&JoinCompleteReply {
            version: WIRE_VERSION,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_1_joiners_may_be_workers_but_not_control_plane_nodes() {
        assert!(check_version(1).is_ok() && check_version(WIRE_VERSION).is_ok());
        let e = check_version(WIRE_VERSION + 1).unwrap_err();
        assert!(e.message().contains("use matching k8sd versions"), "{e}");
        let e = check_control_plane_version(1).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(e.message().contains("Secrets encryption key"), "{e}");
        assert!(check_control_plane_version(WIRE_VERSION).is_ok());
    }
}
