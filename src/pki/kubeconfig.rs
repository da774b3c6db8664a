//! Kubeconfig files for the client identities in the certificate table.
//!
//! The wire format is client-go's `Config` v1 (clientcmd/api/v1/types.go); the structs below
//! exist only to serialize it and are not used anywhere else. Certificates and keys are
//! embedded as base64 `*-data` fields, so a kubeconfig is self-contained and is rewritten
//! whenever the certificate it embeds is renewed.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Serialize;

use super::PkiError;
use super::inspect;
use super::plan::{ChangeReason, PlannedWrite, Snapshot};
use super::spec::{CaKind, Leaf, NodeRole};

/// The cluster name every k8sd kubeconfig uses.
pub const CLUSTER_NAME: &str = "k8sd";

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct KubeconfigV1<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    clusters: [NamedCluster<'a>; 1],
    contexts: [NamedContext<'a>; 1],
    current_context: &'a str,
    users: [NamedUser<'a>; 1],
}

#[derive(Serialize)]
struct NamedCluster<'a> {
    name: &'a str,
    cluster: Cluster<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct Cluster<'a> {
    server: &'a str,
    certificate_authority_data: String,
}

#[derive(Serialize)]
struct NamedContext<'a> {
    name: &'a str,
    context: Context<'a>,
}

#[derive(Serialize)]
struct Context<'a> {
    cluster: &'a str,
    user: &'a str,
}

#[derive(Serialize)]
struct NamedUser<'a> {
    name: &'a str,
    user: User,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct User {
    client_certificate_data: String,
    client_key_data: String,
}

/// A kubeconfig with one cluster, one user and one context named `<user>@<cluster>`.
/// Deterministic: the same inputs give the same bytes, which keeps `ensure` idempotent.
pub fn render_kubeconfig(
    cluster_name: &str,
    server_url: &str,
    ca_pem: &str,
    client_cert_pem: &str,
    client_key_pem: &str,
    user: &str,
) -> Result<String, PkiError> {
    let context = format!("{user}@{cluster_name}");
    let config = KubeconfigV1 {
        api_version: "v1",
        kind: "Config",
        clusters: [NamedCluster {
            name: cluster_name,
            cluster: Cluster {
                server: server_url,
                certificate_authority_data: STANDARD.encode(ca_pem),
            },
        }],
        contexts: [NamedContext {
            name: &context,
            context: Context {
                cluster: cluster_name,
                user,
            },
        }],
        current_context: &context,
        users: [NamedUser {
            name: user,
            user: User {
                client_certificate_data: STANDARD.encode(client_cert_pem),
                client_key_data: STANDARD.encode(client_key_pem),
            },
        }],
    };
    serde_yaml::to_string(&config).map_err(|source| PkiError::Kubeconfig {
        file: format!("kubeconfig for {user}"),
        source,
    })
}

/// The kubeconfigs of a node role, rendered from the certificates in `pki` and compared with
/// those in `existing` (file name to contents). Only differing files are returned. The user
/// name is the certificate's common name, as kubeadm names its kubeconfig users.
pub(crate) fn plan_kubeconfigs(
    pki: &Snapshot,
    existing: &Snapshot,
    role: NodeRole,
    server_url: &str,
) -> Result<Vec<PlannedWrite>, PkiError> {
    let ca_file = CaKind::Cluster.cert_file();
    let missing = |file: &str| PkiError::Parse {
        what: file.to_owned(),
        reason: "missing; run the PKI step before rendering kubeconfigs".into(),
    };
    let ca = pki.get(&ca_file).ok_or_else(|| missing(&ca_file))?;
    let mut writes = Vec::new();
    for leaf in Leaf::for_role(role) {
        let Some(file) = leaf.kubeconfig_file() else {
            continue;
        };
        let cert = pki
            .get(&leaf.cert_file())
            .ok_or_else(|| missing(&leaf.cert_file()))?;
        let key = pki
            .get(&leaf.key_file())
            .ok_or_else(|| missing(&leaf.key_file()))?;
        let user = inspect::parse_cert(&leaf.cert_file(), cert)?
            .common_name
            .ok_or_else(|| PkiError::Parse {
                what: leaf.cert_file(),
                reason: "no common name".into(),
            })?;
        let rendered = render_kubeconfig(CLUSTER_NAME, server_url, ca, cert, key, &user)?;
        let reason = match existing.get(file) {
            None => ChangeReason::Created,
            Some(old) if *old == rendered => continue,
            Some(_) => ChangeReason::Rendered,
        };
        writes.push(PlannedWrite {
            file: file.to_owned(),
            contents: rendered,
            secret: true,
            reason,
            consumers: leaf.consumers(),
        });
    }
    Ok(writes)
}

/// Every kubeconfig file name k8sd writes.
pub(crate) fn known_kubeconfigs() -> Vec<String> {
    Leaf::ALL
        .iter()
        .filter_map(|l| l.kubeconfig_file())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_parses_back_with_the_right_server_and_user() {
        let yaml = render_kubeconfig(
            "k8sd",
            "https://127.0.0.1:6443",
            "CA",
            "CERT",
            "KEY",
            "system:node:n1",
        )
        .unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&yaml).unwrap();
        assert_eq!(v["apiVersion"], "v1");
        assert_eq!(v["kind"], "Config");
        assert_eq!(v["current-context"], "system:node:n1@k8sd");
        assert_eq!(v["clusters"][0]["name"], "k8sd");
        assert_eq!(v["clusters"][0]["cluster"]["server"], "https://127.0.0.1:6443");
        assert_eq!(
            v["clusters"][0]["cluster"]["certificate-authority-data"],
            STANDARD.encode("CA")
        );
        assert_eq!(v["contexts"][0]["name"], "system:node:n1@k8sd");
        assert_eq!(v["contexts"][0]["context"]["cluster"], "k8sd");
        assert_eq!(v["contexts"][0]["context"]["user"], "system:node:n1");
        assert_eq!(v["users"][0]["name"], "system:node:n1");
        assert_eq!(
            v["users"][0]["user"]["client-certificate-data"],
            STANDARD.encode("CERT")
        );
        assert_eq!(v["users"][0]["user"]["client-key-data"], STANDARD.encode("KEY"));
    }
}
