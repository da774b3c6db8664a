//! Builds `k8sd status` from the daemon's parts, and asks kube-apiserver for the Node.

use std::time::Duration;

use super::api::*;
use super::{Daemon, Phase, components};
use crate::cluster::versions::UNKNOWN;
use crate::httpc::TlsClient;
use crate::supervisor::ComponentState;

pub async fn build(d: &Daemon) -> StatusReport {
    let phase = d.phase();
    let running = d.running();
    let mut report = StatusReport {
        version: API_VERSION,
        initialised: d.layout().node_file().exists(),
        node_name: running.as_ref().map(|r| r.cfg.node_name.clone()),
        role: running
            .as_ref()
            .map(|_| "control-plane (datastore voter)".to_string()),
        ready: phase == Phase::Running,
        phase: phase.to_string(),
        datastore: None,
        components: Vec::new(),
        certificates: Vec::new(),
        kubernetes_node: None,
        k8sd_version: super::versions::this_node().k8sd,
        kubernetes_version: super::versions::this_node().kubernetes,
        nodes: Vec::new(),
        ha: None,
        api_backends: Vec::new(),
        addons: Vec::new(),
        scheduled_backups: None,
        secrets_encryption: None,
    };
    let Some(r) = running else { return report };
    report.role = Some(r.cfg.role_name());
    if let Some(ds) = &r.datastore {
        datastore_report(&mut report, &r.cfg, ds).await;
        cluster_report(&mut report, ds).await;
        report.addons = d.addon_reports(ds).await;
        report.secrets_encryption = Some(secrets_report(d, ds).await);
    }
    if let Some(lb) = &r.lb {
        report.api_backends = lb
            .status()
            .into_iter()
            .filter_map(|b| serde_json::to_value(b).ok())
            .collect();
    }
    components_report(&mut report, d, &r).await;
    report.scheduled_backups = d
        .backups
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .map(backups_report);
    report
}

/// The write key of this node's configuration (its name and age, never its value), and the
/// phase of a rotation under way.
async fn secrets_report(d: &Daemon, ds: &crate::node::Node) -> SecretsEncryptionReport {
    use crate::cluster::registry::{self, RotationRecord};
    let path = d.layout().encryption_config();
    let keys = crate::pki::read_encryption_config(&path)
        .ok()
        .flatten()
        .and_then(|(text, _)| crate::pki::encryption_keys(&path.display().to_string(), &text).ok())
        .unwrap_or_default();
    let rotation = registry::get::<RotationRecord>(ds, registry::ROTATION_KEY)
        .await
        .ok()
        .flatten()
        .map(|(r, _)| format!("to {}, phase {} (begun on {})", r.new_key, r.phase, r.started_on));
    let first = keys.first();
    let created = first.and_then(|k| k.created_unix());
    let now = crate::cluster::token::now_unix();
    SecretsEncryptionReport {
        provider: first.map_or("none".into(), |k| k.provider.clone()),
        key: first.map(|k| k.name.clone()).unwrap_or_default(),
        created: created.and_then(|c| i64::try_from(c).ok()).map(rfc3339),
        age_days: created.map(|c| now.saturating_sub(c) / 86_400),
        keys: keys.iter().map(|k| k.name.clone()).collect(),
        rotation,
    }
}

fn backups_report(s: &super::backups::ScheduleState) -> ScheduledBackupsReport {
    ScheduledBackupsReport {
        schedule: s.schedule.clone(),
        retention: s.retention,
        last: s.last.as_ref().map(|l| LastBackupReport {
            time: rfc3339(l.time),
            ok: l.result.is_ok(),
            path: l.result.as_ref().ok().map(|p| p.display().to_string()),
            error: l.result.as_ref().err().cloned(),
        }),
        next_due: s.next_due.map(rfc3339),
    }
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

async fn datastore_report(
    report: &mut StatusReport,
    cfg: &super::config::NodeConfig,
    ds: &crate::node::Node,
) {
    let r = RunningRef { cfg, datastore: ds };
    let meta = r.datastore.meta();
    let db = r
        .datastore
        .read(|rd| rd.db_size())
        .await
        .map(|(s, _)| s)
        .unwrap_or(0);
    let (leader, members) = match r.datastore.raft_status() {
        Some(st) => {
            let name = |id: u64| st.members.get(&id).map(|i| i.name.clone()).unwrap_or_default();
            let members = st
                .voters
                .iter()
                .map(|id| (id, "voter"))
                .chain(st.learners.iter().map(|id| (id, "learner")))
                .map(|(id, role)| MemberReport {
                    id: format!("{id:016x}"),
                    name: name(*id),
                    role: role.into(),
                    leader: st.leader == Some(*id),
                    // Only this node's own apply position is known locally.
                    applied_index: if *id == st.id {
                        st.last_applied.unwrap_or(0)
                    } else {
                        0
                    },
                })
                .collect();
            (
                st.leader
                    .map(|l| {
                        let n = name(l);
                        if n.is_empty() { format!("{l:016x}") } else { n }
                    })
                    .unwrap_or_else(|| "none".into()),
                members,
            )
        }
        None => (
            r.cfg.node_name.clone(),
            vec![MemberReport {
                id: format!("{:016x}", meta.member_id),
                name: r.cfg.node_name.clone(),
                role: "voter".into(),
                leader: true,
                applied_index: meta.applied_index,
            }],
        ),
    };
    report.datastore = Some(DatastoreStatus {
        endpoint: format!("https://{}", components::datastore_addr()),
        revision: meta.current_rev,
        applied_index: meta.applied_index,
        leader,
        members,
        db_size_bytes: db,
        quota_bytes: r.datastore.alarm().quota_bytes(),
        alarms: r
            .datastore
            .alarm()
            .cause()
            .map(|c| AlarmReport {
                alarm: "NOSPACE".into(),
                cause: c.as_str().into(),
            })
            .into_iter()
            .collect(),
    });
}

/// Every node of the cluster with its role, and whether HA holds: at least 3 datastore voters,
/// a leader, and every voter known to the registry.
async fn cluster_report(report: &mut StatusReport, ds: &crate::node::Node) {
    use crate::cluster::registry::{self, MemberRole};
    let st = ds.raft_status();
    let members = ds.members();
    let leader_name = st
        .as_ref()
        .and_then(|s| s.leader)
        .and_then(|l| members.iter().find(|m| m.id == l))
        .map(|m| m.info.name.clone());
    let Ok(records) = registry::members(ds).await else {
        return;
    };
    report.nodes = records
        .iter()
        .map(|rec| {
            let raft = members.iter().find(|m| m.info.name == rec.name);
            let role = match (rec.role, raft) {
                (MemberRole::Worker, _) => "worker",
                (MemberRole::ControlPlane, Some(m)) if m.voter => "voter",
                (MemberRole::ControlPlane, Some(_)) => "standby",
                (MemberRole::ControlPlane, None) => "control-plane (not a datastore member)",
            };
            let (k8sd, kubernetes) = match &rec.versions {
                Some(v) => (v.k8sd.clone(), v.kubernetes.clone()),
                None => (UNKNOWN.to_string(), UNKNOWN.to_string()),
            };
            ClusterNodeReport {
                name: rec.name.clone(),
                address: rec.address.to_string(),
                role: role.into(),
                datastore_leader: leader_name.as_deref() == Some(rec.name.as_str()),
                k8sd_version: k8sd,
                kubernetes_version: kubernetes,
            }
        })
        .collect();
    let voters = members.iter().filter(|m| m.voter).count();
    report.ha = Some(voters >= 3 && leader_name.is_some());
}

struct RunningRef<'a> {
    cfg: &'a super::config::NodeConfig,
    datastore: &'a crate::node::Node,
}

async fn components_report(report: &mut StatusReport, d: &Daemon, r: &super::RunningNode) {
    report.components = r
        .supervisor
        .status()
        .into_iter()
        .map(|c| ComponentReport {
            running: matches!(c.state, ComponentState::Running | ComponentState::Ready),
            state: format!("{:?}", c.state).to_lowercase(),
            name: c.name,
            pid: c.pid,
            restarts: c.restarts,
            last_exit: c.last_exit,
            last_lines: c.last_lines.into_iter().rev().take(5).rev().collect(),
            args: c.args,
        })
        .collect();
    let now = time::OffsetDateTime::now_utc();
    if let Ok(certs) = crate::pki::cert_status(&d.layout().pki_dir()) {
        report.certificates = certs
            .into_iter()
            .map(|c| CertReport {
                file: c.file_name(),
                subject: c.common_name.unwrap_or_default(),
                expires: c.not_after.date().to_string(),
                days_left: (c.not_after - now).whole_days(),
            })
            .collect();
    }
    if let Ok(client) = d.node_client(&r.cfg) {
        report.kubernetes_node = kube_node(&client, d.api_addr(&r.cfg), &r.cfg.node_name).await;
    }
}

/// The Node's Ready condition, or None if the API cannot be asked.
pub async fn kube_node(client: &TlsClient, addr: std::net::SocketAddr, name: &str) -> Option<KubeNodeReport> {
    let (code, body) = client
        .get(addr, &format!("/api/v1/nodes/{name}"), Duration::from_secs(3))
        .await
        .ok()?;
    if code == 404 {
        return Some(KubeNodeReport {
            name: name.into(),
            ready: false,
            reason: "not registered yet".into(),
        });
    }
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let cond = v["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")?
        .clone();
    Some(KubeNodeReport {
        name: name.into(),
        ready: cond["status"] == "True",
        reason: cond["reason"].as_str().unwrap_or_default().to_string(),
    })
}

/// Human-readable rendering of a status report.
pub fn render_text(s: &StatusReport) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "node:        {}",
        s.node_name.as_deref().unwrap_or("(not initialised)")
    );
    let _ = writeln!(o, "role:        {}", s.role.as_deref().unwrap_or("-"));
    let _ = writeln!(
        o,
        "version:     k8sd {}, Kubernetes {}",
        s.k8sd_version, s.kubernetes_version
    );
    let _ = writeln!(
        o,
        "status:      {}{}",
        s.phase,
        if s.ready { " (ready)" } else { "" }
    );
    if let Some(n) = &s.kubernetes_node {
        let _ = writeln!(
            o,
            "k8s node:    {} {}{}",
            n.name,
            if n.ready { "Ready" } else { "NotReady" },
            if n.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", n.reason)
            }
        );
    }
    if let Some(ds) = &s.datastore {
        let _ = writeln!(
            o,
            "datastore:   {} revision {} applied index {} leader {} size {} KiB",
            ds.endpoint,
            ds.revision,
            ds.applied_index,
            ds.leader,
            ds.db_size_bytes / 1024
        );
        for a in &ds.alarms {
            let _ = writeln!(
                o,
                "  alarm {} ({}): writes that add data are refused until space is freed",
                a.alarm, a.cause
            );
        }
        for m in &ds.members {
            let _ = writeln!(
                o,
                "  member {} {} {}{} applied {}",
                m.id,
                m.name,
                m.role,
                if m.leader { " leader" } else { "" },
                m.applied_index
            );
        }
    }
    if let Some(b) = &s.scheduled_backups {
        let _ = writeln!(
            o,
            "backups:     schedule {} keeping {}; next {}",
            b.schedule,
            b.retention,
            b.next_due.as_deref().unwrap_or("never (off)")
        );
        let _ = match &b.last {
            None => writeln!(o, "  last: none since the daemon started"),
            Some(l) if l.ok => writeln!(o, "  last: {} ok {}", l.time, l.path.as_deref().unwrap_or("")),
            Some(l) => writeln!(
                o,
                "  last: {} FAILED: {}",
                l.time,
                l.error.as_deref().unwrap_or("")
            ),
        };
    }
    if let Some(e) = &s.secrets_encryption {
        let _ = if e.key.is_empty() {
            writeln!(
                o,
                "secrets:     NOT encrypted at rest (no key); `k8sd secrets rotate-key` gives the cluster its first key"
            )
        } else if e.provider == crate::pki::IDENTITY {
            writeln!(
                o,
                "secrets:     NOT encrypted at rest yet: a first key is staged; `k8sd secrets rotate-key` finishes it"
            )
        } else {
            writeln!(
                o,
                "secrets:     encrypted with {} key {}{}{}",
                e.provider,
                e.key,
                e.created
                    .as_deref()
                    .map(|c| format!(", created {c}"))
                    .unwrap_or_default(),
                e.age_days.map(|d| format!(" ({d} days ago)")).unwrap_or_default()
            )
        };
        if e.keys.len() > 1 {
            let _ = writeln!(o, "  also reads: {}", e.keys[1..].join(", "));
        }
        if let Some(r) = &e.rotation {
            let _ = writeln!(
                o,
                "  rotation under way: {r}; `k8sd secrets rotate-key` finishes it"
            );
        }
    }
    if !s.nodes.is_empty() {
        let ha = match s.ha {
            Some(true) => "yes (survives the loss of one control-plane node)",
            Some(false) => "no (fewer than 3 datastore voters, or no leader)",
            None => "unknown",
        };
        let _ = writeln!(o, "cluster:     {} nodes; high availability: {ha}", s.nodes.len());
        for n in &s.nodes {
            let role = format!(
                "{}{}",
                n.role,
                if n.datastore_leader {
                    " (datastore leader)"
                } else {
                    ""
                }
            );
            let _ = writeln!(
                o,
                "  {:<20} {:<16} {:<26} k8sd {} Kubernetes {}",
                n.name, n.address, role, n.k8sd_version, n.kubernetes_version
            );
        }
    }
    if !s.api_backends.is_empty() {
        let _ = writeln!(o, "api load balancer (127.0.0.1:6444):");
        for b in &s.api_backends {
            let _ = writeln!(
                o,
                "  {:<22} {:<10} connections {}{}",
                b["address"].as_str().unwrap_or("?"),
                b["state"].as_str().unwrap_or("?"),
                b["active-connections"],
                b["last-error"]
                    .as_str()
                    .map(|e| format!(" last error: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if !s.components.is_empty() {
        let _ = writeln!(o, "components:");
        for c in &s.components {
            let pid = c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            let _ = writeln!(
                o,
                "  {:<24} {:<8} pid {:<8} restarts {:<3} {}",
                c.name,
                c.state,
                pid,
                c.restarts,
                c.last_exit
                    .as_deref()
                    .map(|e| format!("last exit: {e}"))
                    .unwrap_or_default()
            );
            if !c.running && !c.last_lines.is_empty() {
                for l in &c.last_lines {
                    let _ = writeln!(o, "      | {l}");
                }
            }
        }
    }
    if !s.addons.is_empty() {
        let _ = writeln!(o, "add-ons:");
        for a in &s.addons {
            let _ = writeln!(
                o,
                "  {:<10} {:<9} {}/{} ready  {}",
                a.name,
                if a.enabled { "enabled" } else { "disabled" },
                a.ready_replicas,
                a.desired_replicas,
                a.state
            );
        }
    }
    if !s.certificates.is_empty() {
        let soonest = s.certificates.iter().min_by_key(|c| c.days_left);
        if let Some(c) = soonest {
            let _ = writeln!(
                o,
                "certificates: {} files; soonest expiry {} ({}, {} days)",
                s.certificates.len(),
                c.expires,
                c.file,
                c.days_left
            );
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report from a daemon older than the version fields, listing a node whose record has
    /// none, parses and prints both as `unknown`; a node that published shows its versions.
    #[test]
    fn versions_per_node_and_unknown_for_an_older_node() {
        let old = r#"{"version":1,"initialised":true,"node-name":"n1","role":"control-plane",
            "ready":true,"phase":"running","datastore":null,"components":[],"certificates":[],
            "kubernetes-node":null,"nodes":[{"name":"n2","address":"10.0.0.2","role":"voter",
            "datastore-leader":false}]}"#;
        let mut s: StatusReport = serde_json::from_str(old).unwrap();
        assert_eq!(
            (s.k8sd_version.as_str(), s.kubernetes_version.as_str()),
            (UNKNOWN, UNKNOWN)
        );
        assert_eq!(s.nodes[0].k8sd_version, UNKNOWN);
        s.nodes.push(ClusterNodeReport {
            name: "n3".into(),
            address: "10.0.0.3".into(),
            role: "voter".into(),
            datastore_leader: true,
            k8sd_version: "0.2.0".into(),
            kubernetes_version: "v1.36.3".into(),
        });
        let text = render_text(&s);
        assert!(
            text.contains("version:     k8sd unknown, Kubernetes unknown"),
            "{text}"
        );
        let line = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_default()
                .to_string()
        };
        assert!(line("n2").ends_with("k8sd unknown Kubernetes unknown"), "{text}");
        assert!(
            line("n3").contains("voter (datastore leader)")
                && line("n3").ends_with("k8sd 0.2.0 Kubernetes v1.36.3"),
            "{text}"
        );
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["nodes"][1]["k8sd-version"], "0.2.0");
        assert_eq!(json["nodes"][1]["kubernetes-version"], "v1.36.3");
    }
}
