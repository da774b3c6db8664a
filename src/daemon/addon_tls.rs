//! metrics-server's serving certificate.
//!
//! kube-apiserver reaches the metrics API through an APIService, and verifies the server it
//! dials against the APIService's `caBundle`. metrics-server would otherwise serve a certificate
//! it signs itself at every start, which nothing can verify (upstream's manifest sets
//! `insecureSkipTLSVerify`). So k8sd issues it one from the cluster CA, for the name
//! kube-apiserver dials (`metrics-server.kube-system.svc`), into the Secret
//! `kube-system/metrics-server-tls` that the add-on mounts, and renders the cluster CA as the
//! `caBundle`.
//!
//! The Secret is the record: every control-plane node reads it and re-issues only when it is
//! missing, unreadable, from another CA, for other names, or due for renewal (the same lifetime
//! and window as a node's certificates), so the nodes converge on one certificate.
//! metrics-server reloads its certificate files when the mounted Secret changes.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use super::Daemon;
use super::addons::{AddonsError, ApiRead, run_kubectl};
use super::components;
use crate::addons::Addon;
use crate::cluster::Kubectl;
use crate::pki::{self, CaKind, ChangeReason, RenewalPolicy, ServiceCertSpec};

/// The Service whose certificate this is.
pub const METRICS_SERVER: ServiceCertSpec = ServiceCertSpec {
    service: "metrics-server",
    namespace: "kube-system",
};
/// The Secret that holds it (named in assets/addons/manifests/metrics.yaml too).
pub const SECRET: &str = "metrics-server-tls";
/// k8sd's field manager for the Secret's data. Not the manifests' `k8sd`, so that an apply of a
/// manifest never takes ownership of (and so never removes) the certificate.
const FIELD_MANAGER: &str = "k8sd-certificates";

/// The certificate and key a Secret holds (`tls.crt`, `tls.key`), where present and decodable.
#[derive(Debug, Default, PartialEq, Eq)]
struct Held {
    cert_pem: Option<String>,
    key_pem: Option<String>,
}

/// Read the PEM files out of a Secret's JSON.
fn held(secret: &serde_json::Value) -> Held {
    let field = |name: &str| {
        secret["data"][name]
            .as_str()
            .and_then(|b64| STANDARD.decode(b64).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
    };
    Held {
        cert_pem: field("tls.crt"),
        key_pem: field("tls.key"),
    }
}

/// The Secret to apply: a `kubernetes.io/tls` Secret with the add-on's labels.
fn secret_manifest(issued: &pki::IssuedCert) -> String {
    serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": SECRET,
            "namespace": METRICS_SERVER.namespace,
            "labels": {
                "app.kubernetes.io/managed-by": "k8sd",
                "k8sd.io/addon": Addon::Metrics.name(),
            },
        },
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": STANDARD.encode(&issued.cert_pem),
            "tls.key": STANDARD.encode(&issued.key_pem),
        },
    })
    .to_string()
}

/// The `caBundle` of the metrics APIService: the cluster CA certificate, base64.
pub fn ca_bundle(ca_cert_pem: &str) -> String {
    STANDARD.encode(ca_cert_pem)
}

impl Daemon {
    /// Make sure the Secret holds a good certificate; issue one if not. Returns why it issued.
    pub(super) async fn ensure_metrics_tls(
        &self,
        kubectl: &Kubectl,
    ) -> Result<Option<ChangeReason>, AddonsError> {
        let cert_err = |source: pki::PkiError| AddonsError::ServingCert {
            what: METRICS_SERVER.describe(),
            source,
        };
        let ca = pki::load_ca(&self.layout().pki_dir(), CaKind::Cluster).map_err(cert_err)?;
        let current = self.read_metrics_secret().await?;
        let policy = RenewalPolicy::current();
        let Some(reason) = pki::service_cert_verdict(
            current.cert_pem.as_deref(),
            current.key_pem.as_deref(),
            &METRICS_SERVER,
            ca.cert_pem(),
            &policy,
        )
        .map_err(cert_err)?
        else {
            return Ok(None);
        };
        let issued = pki::issue_service_serving(&ca, &METRICS_SERVER, policy.now).map_err(cert_err)?;
        run_kubectl(
            kubectl,
            Addon::Metrics,
            "issuing the serving certificate of",
            &[
                "apply",
                "--server-side",
                &format!("--field-manager={FIELD_MANAGER}"),
                "--force-conflicts",
                "--request-timeout=60s",
                "-f",
                "-",
            ],
            &secret_manifest(&issued),
        )
        .await?;
        tracing::info!(
            secret = SECRET,
            ?reason,
            "issued metrics-server's serving certificate"
        );
        Ok(Some(reason))
    }

    /// The Secret's certificate and key; both absent when there is no Secret.
    async fn read_metrics_secret(&self) -> Result<Held, AddonsError> {
        let err = |source: ApiRead| AddonsError::SecretRead {
            secret: format!("{}/{SECRET}", METRICS_SERVER.namespace),
            source,
        };
        let client = self
            .admin_client()
            .map_err(|e| err(ApiRead::Credentials(Box::new(e))))?;
        let path = format!("/api/v1/namespaces/{}/secrets/{SECRET}", METRICS_SERVER.namespace);
        let (code, body) = client
            .get(components::apiserver_addr(), &path, Duration::from_secs(10))
            .await
            .map_err(|e| err(e.into()))?;
        match code {
            200 => {
                let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| err(e.into()))?;
                Ok(held(&v))
            }
            404 => Ok(Held::default()),
            _ => Err(err(ApiRead::Status(code))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::OffsetDateTime;

    fn secret_json(manifest: &str) -> serde_json::Value {
        serde_json::from_str(manifest).unwrap()
    }

    #[test]
    fn an_issued_certificate_round_trips_through_the_secret_and_is_kept() {
        let ca = pki::CertificateAuthority::generate(CaKind::Cluster, OffsetDateTime::now_utc()).unwrap();
        let issued = pki::issue_service_serving(&ca, &METRICS_SERVER, OffsetDateTime::now_utc()).unwrap();
        let secret = secret_json(&secret_manifest(&issued));
        assert_eq!(secret["type"], "kubernetes.io/tls");
        assert_eq!(secret["metadata"]["name"], SECRET);
        let h = held(&secret);
        assert_eq!(h.cert_pem.as_deref(), Some(issued.cert_pem.as_str()));
        assert_eq!(h.key_pem.as_deref(), Some(issued.key_pem.as_str()));
        let verdict = pki::service_cert_verdict(
            h.cert_pem.as_deref(),
            h.key_pem.as_deref(),
            &METRICS_SERVER,
            ca.cert_pem(),
            &RenewalPolicy::current(),
        )
        .unwrap();
        assert_eq!(verdict, None, "a fresh certificate is kept");
        let info = pki::parse_cert("cert", &issued.cert_pem).unwrap();
        assert!(
            info.sans
                .contains(&pki::San::Dns("metrics-server.kube-system.svc".into()))
        );
        assert!(info.server_auth && !info.client_auth && !info.is_ca);
    }

    #[test]
    fn a_missing_foreign_or_expiring_certificate_is_reissued() {
        let now = OffsetDateTime::now_utc();
        let ca = pki::CertificateAuthority::generate(CaKind::Cluster, now).unwrap();
        let other = pki::CertificateAuthority::generate(CaKind::Cluster, now).unwrap();
        let verdict = |h: &Held, policy: &RenewalPolicy| {
            pki::service_cert_verdict(
                h.cert_pem.as_deref(),
                h.key_pem.as_deref(),
                &METRICS_SERVER,
                ca.cert_pem(),
                policy,
            )
            .unwrap()
        };
        let policy = RenewalPolicy::current();
        assert_eq!(verdict(&Held::default(), &policy), Some(ChangeReason::Created));
        assert_eq!(
            verdict(
                &held(&serde_json::json!({"data": {"tls.crt": "!!", "tls.key": "!!"}})),
                &policy
            ),
            Some(ChangeReason::Created),
            "undecodable data counts as absent"
        );
        let foreign = pki::issue_service_serving(&other, &METRICS_SERVER, now).unwrap();
        assert_eq!(
            verdict(&held(&secret_json(&secret_manifest(&foreign))), &policy),
            Some(ChangeReason::SignerChanged)
        );
        let ours = held(&secret_json(&secret_manifest(
            &pki::issue_service_serving(&ca, &METRICS_SERVER, now).unwrap(),
        )));
        let later = RenewalPolicy {
            now: now + time::Duration::days(300),
            ..policy
        };
        assert_eq!(verdict(&ours, &later), Some(ChangeReason::Expiring));
        let mismatched = Held {
            cert_pem: ours.cert_pem.clone(),
            key_pem: Some(foreign.key_pem),
        };
        assert_eq!(verdict(&mismatched, &policy), Some(ChangeReason::KeyMismatch));
    }

    #[test]
    fn only_the_cluster_ca_issues_it() {
        let ca = pki::CertificateAuthority::generate(CaKind::FrontProxy, OffsetDateTime::now_utc()).unwrap();
        let err = pki::issue_service_serving(&ca, &METRICS_SERVER, OffsetDateTime::now_utc()).unwrap_err();
        assert!(err.to_string().contains("metrics-server"), "{err}");
    }
}
