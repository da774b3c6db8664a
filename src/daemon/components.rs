//! The Kubernetes components of a node: their arguments (pure functions, pinned by tests) and
//! the rendered configuration files. Arguments are our defaults only; a flag whose reason is
//! not obvious from its name says why in a comment beside it.
//!
//! Over 600 lines only with its tests (about 350 lines of code), which pin every component's
//! arguments.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use super::config::{NodeConfig, Role};
use super::extra_args;
use crate::paths::{Layout, RuntimeDir};

pub const APISERVER_PORT: u16 = 6443;
pub const DATASTORE_PORT: u16 = 2379;
/// The datastore's Raft peer service, on the advertise address.
pub const PEER_PORT: u16 = 2380;
/// The local API load balancer every node's components use (fronts every kube-apiserver).
pub const LB_PORT: u16 = 6444;

pub fn lb_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), LB_PORT)
}

pub fn apiserver_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), APISERVER_PORT)
}

pub fn datastore_addr() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DATASTORE_PORT)
}

/// The TLS 1.2 cipher suites every Go listener k8sd renders offers (kube-apiserver, kubelet,
/// controller-manager, scheduler): ECDHE with AEAD only (AES-GCM, ChaCha20-Poly1305), in Go's
/// names. CBC suites (and their SHA-1 MACs) are left out: they are what Lucky13-style padding
/// oracles attack, and Go offers them by default. TLS 1.3 suites are all AEAD and fixed by Go.
/// k8sd's own rustls listeners offer the same set (rustls has no CBC suite).
pub const TLS_CIPHER_SUITES: &[&str] = &[
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
];
/// Nothing older than TLS 1.2 on any listener.
pub const TLS_MIN_VERSION: &str = "VersionTLS12";

/// `--tls-min-version` and `--tls-cipher-suites` for a Go component's secure port.
fn tls_flags() -> [(&'static str, String); 2] {
    [
        ("tls-min-version", TLS_MIN_VERSION.into()),
        ("tls-cipher-suites", TLS_CIPHER_SUITES.join(",")),
    ]
}

/// Everything a component's arguments depend on.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    pub layout: &'a Layout,
    pub cfg: &'a NodeConfig,
    pub cgroup_root: &'a str,
    /// The Secrets encryption configuration exists and validated (every control-plane node
    /// made by `init` or `join`; only a node initialised by an older k8sd lacks it).
    pub encrypt_secrets: bool,
}

impl Ctx<'_> {
    fn pki(&self, f: &str) -> String {
        self.layout.pki_dir().join(f).display().to_string()
    }
    fn kubeconfig(&self, f: &str) -> String {
        self.layout.kubeconfig_dir().join(f).display().to_string()
    }
    fn config(&self, f: &str) -> String {
        self.layout.config_dir().join(f).display().to_string()
    }
}

fn flags(pairs: &[(&str, String)]) -> Vec<String> {
    pairs.iter().map(|(k, v)| format!("--{k}={v}")).collect()
}

pub fn apiserver_args(c: &Ctx<'_>) -> Vec<String> {
    let issuer = "https://kubernetes.default.svc.cluster.local".to_string();
    let mut args = flags(&[
        ("advertise-address", c.cfg.advertise_address.to_string()),
        ("bind-address", "0.0.0.0".into()),
        ("secure-port", APISERVER_PORT.to_string()),
        ("etcd-servers", format!("https://{}", datastore_addr())),
        ("etcd-cafile", c.pki("datastore-ca.crt")),
        ("etcd-certfile", c.pki("datastore-client.crt")),
        ("etcd-keyfile", c.pki("datastore-client.key")),
        ("storage-backend", "etcd3".into()),
        ("etcd-prefix", "/registry".into()),
        // A loaded 2-core machine can take longer than the 2 s default to answer a probe.
        ("etcd-healthcheck-timeout", "10s".into()),
        ("etcd-readycheck-timeout", "10s".into()),
        ("service-cluster-ip-range", c.cfg.service_cidr.clone()),
        ("service-account-issuer", issuer.clone()),
        ("api-audiences", issuer),
        ("service-account-key-file", c.pki("sa.pub")),
        ("service-account-signing-key-file", c.pki("sa.key")),
        ("client-ca-file", c.pki("ca.crt")),
        ("tls-cert-file", c.pki("apiserver.crt")),
        ("tls-private-key-file", c.pki("apiserver.key")),
        (
            "kubelet-client-certificate",
            c.pki("apiserver-kubelet-client.crt"),
        ),
        ("kubelet-client-key", c.pki("apiserver-kubelet-client.key")),
        // Kubelets serve a certificate from the cluster CA (issued by k8sd, with the node's
        // name and IP), so the apiserver verifies them for logs, exec and port-forward.
        ("kubelet-certificate-authority", c.pki("ca.crt")),
        ("kubelet-preferred-address-types", "InternalIP,Hostname".into()),
        ("authorization-mode", "Node,RBAC".into()),
        ("enable-admission-plugins", "NodeRestriction".into()),
        ("allow-privileged", "true".into()),
        ("profiling", "false".into()),
        ("anonymous-auth", "false".into()),
        ("requestheader-client-ca-file", c.pki("front-proxy-ca.crt")),
        ("requestheader-allowed-names", "front-proxy-client".into()),
        ("requestheader-username-headers", "X-Remote-User".into()),
        ("requestheader-group-headers", "X-Remote-Group".into()),
        ("requestheader-extra-headers-prefix", "X-Remote-Extra-".into()),
        ("proxy-client-cert-file", c.pki("front-proxy-client.crt")),
        ("proxy-client-key-file", c.pki("front-proxy-client.key")),
        // On SIGTERM keep serving for 3 s while /readyz fails, so the load balancers (every
        // node's, and an external one) drain this apiserver before it closes its listener.
        ("shutdown-delay-duration", "3s".into()),
    ]);
    args.extend(flags(&tls_flags()));
    if c.cfg.role == Role::ControlPlane {
        // The audit log: metadata for Secrets, bodies of RBAC changes (the policy says why),
        // rotated at 100 MB with 5 files kept, so it never grows without bound.
        args.extend(flags(&[
            ("audit-policy-file", c.config(AUDIT_POLICY_FILE)),
            ("audit-log-path", c.layout.audit_log().display().to_string()),
            ("audit-log-maxsize", "100".into()),
            ("audit-log-maxbackup", "5".into()),
            ("audit-log-maxage", "30".into()),
            // PodSecurity admission: baseline enforced, restricted warned and audited,
            // kube-system exempt (the file says why).
            ("admission-control-config-file", c.config(ADMISSION_CONTROL_FILE)),
        ]));
    }
    if c.encrypt_secrets {
        // Secrets are encrypted before they reach the datastore (secretbox, then identity
        // so Secrets written in plaintext earlier stay readable). A key rotation rewrites the
        // file and the apiserver reloads it in place, with no restart (daemon/apiserver_keys.rs).
        args.extend(flags(&[
            (
                "encryption-provider-config",
                c.layout.encryption_config().display().to_string(),
            ),
            ("encryption-provider-config-automatic-reload", "true".into()),
        ]));
    }
    with_changes(c, "kube-apiserver", args)
}

pub fn controller_manager_args(c: &Ctx<'_>) -> Vec<String> {
    let kc = c.kubeconfig("controller-manager.conf");
    let mut args = flags(&[
        ("kubeconfig", kc.clone()),
        ("authentication-kubeconfig", kc.clone()),
        ("authorization-kubeconfig", kc),
        ("bind-address", "127.0.0.1".into()),
        ("root-ca-file", c.pki("ca.crt")),
        ("service-account-private-key-file", c.pki("sa.key")),
        ("use-service-account-credentials", "true".into()),
        ("cluster-signing-cert-file", c.pki("ca.crt")),
        ("cluster-signing-key-file", c.pki("ca.key")),
        ("service-cluster-ip-range", c.cfg.service_cidr.clone()),
        ("cluster-cidr", c.cfg.pod_cidr.clone()),
        // Every node gets its own pod range; k8sd writes the node's CNI config from it.
        ("allocate-node-cidrs", "true".into()),
        ("node-cidr-mask-size", node_cidr_mask(&c.cfg.pod_cidr).to_string()),
        ("leader-elect", "true".into()),
        ("profiling", "false".into()),
    ]);
    args.extend(flags(&tls_flags()));
    with_changes(c, "kube-controller-manager", args)
}

/// /24 per node, or the whole range when it is already that small.
fn node_cidr_mask(pod_cidr: &str) -> u8 {
    let prefix: u8 = pod_cidr
        .split_once('/')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(16);
    prefix.max(24)
}

pub fn scheduler_args(c: &Ctx<'_>) -> Vec<String> {
    let kc = c.kubeconfig("scheduler.conf");
    let mut args = flags(&[
        ("kubeconfig", kc.clone()),
        ("authentication-kubeconfig", kc.clone()),
        ("authorization-kubeconfig", kc),
        ("bind-address", "127.0.0.1".into()),
        ("leader-elect", "true".into()),
        ("profiling", "false".into()),
    ]);
    args.extend(flags(&tls_flags()));
    with_changes(c, "kube-scheduler", args)
}

pub fn containerd_args(c: &Ctx<'_>) -> Vec<String> {
    flags(&[("config", c.config("containerd.toml"))])
}

pub fn kubelet_args(c: &Ctx<'_>) -> Vec<String> {
    let args = flags(&[
        ("config", c.config("kubelet.yaml")),
        ("kubeconfig", c.kubeconfig("kubelet.conf")),
        ("hostname-override", c.cfg.node_name.clone()),
        ("node-ip", c.cfg.advertise_address.to_string()),
        ("root-dir", c.layout.kubelet_root().display().to_string()),
        (
            "cert-dir",
            c.layout.kubelet_root().join("pki").display().to_string(),
        ),
    ]);
    with_changes(c, "kubelet", args)
}

pub fn kube_proxy_args(c: &Ctx<'_>) -> Vec<String> {
    with_changes(c, "kube-proxy", flags(&[("config", c.config("kube-proxy.yaml"))]))
}

/// k8sd's defaults for `component` with the operator's changes applied (`extra_args`).
fn with_changes(c: &Ctx<'_>, component: &str, defaults: Vec<String>) -> Vec<String> {
    extra_args::apply(defaults, c.cfg.extra_args.changes(component))
}

/// A Kubernetes component's arguments by the name it runs under (`extra_args::COMPONENTS`),
/// if it runs on a node of this one's role: a worker runs only the kubelet and kube-proxy.
pub fn kube_args(component: &str, c: &Ctx<'_>) -> Option<Vec<String>> {
    let control_plane = c.cfg.role == Role::ControlPlane;
    Some(match component {
        "kube-apiserver" if control_plane => apiserver_args(c),
        "kube-controller-manager" if control_plane => controller_manager_args(c),
        "kube-scheduler" if control_plane => scheduler_args(c),
        "kubelet" => kubelet_args(c),
        "kube-proxy" => kube_proxy_args(c),
        _ => return None,
    })
}

const CONTAINERD_TEMPLATE: &str = include_str!("../../assets/containerd/config.toml");
const REGISTRY_HOSTS_TEMPLATE: &str = include_str!("../../assets/containerd/hosts.toml");

/// The node-local image mirror's port (`crate::mirror`), on the node's advertise address.
pub const MIRROR_PORT: u16 = 6446;

pub fn mirror_addr(cfg: &NodeConfig) -> SocketAddr {
    SocketAddr::new(cfg.advertise_address, MIRROR_PORT)
}
const CNI_TEMPLATE: &str = include_str!("../../assets/cni/10-k8sd.conflist");
const KUBELET_TEMPLATE: &str = include_str!("../../assets/kubelet/config.yaml");
const KUBE_PROXY_TEMPLATE: &str = include_str!("../../assets/kube-proxy/config.yaml");
/// kube-apiserver's audit policy (control-plane nodes), in the config dir.
const AUDIT_POLICY: &str = include_str!("../../assets/kube-apiserver/audit-policy.yaml");
pub const AUDIT_POLICY_FILE: &str = "audit-policy.yaml";
/// kube-apiserver's admission configuration (control-plane nodes): PodSecurity's defaults.
const ADMISSION_CONTROL: &str = include_str!("../../assets/kube-apiserver/admission-control.yaml");
pub const ADMISSION_CONTROL_FILE: &str = "admission-control.yaml";

pub use crate::template::render;

/// The CNI configuration for this node's pod range (written once the Node has one).
pub fn cni_conflist(c: &Ctx<'_>, node_pod_cidr: &str) -> Result<String, crate::template::TemplateError> {
    let values = [
        ("cni_ipam_dir", c.layout.cni_ipam_dir().display().to_string()),
        ("pod_cidr", node_pod_cidr.to_string()),
    ];
    render(CNI_TEMPLATE, &values)
}

/// The kubelet's `clusterDNS` as a YAML flow list. `validate` refuses service ranges too small
/// for the DNS address, so an empty list only follows a hand-edited node.yaml; the kubelet then
/// gives pods the host's resolvers (and reports MissingClusterDNS) rather than a bogus server.
fn cluster_dns(cfg: &NodeConfig) -> String {
    match cfg.dns_service_ip() {
        Some(ip) => format!("[\"{ip}\"]"),
        None => "[]".into(),
    }
}

/// The rendered configuration files: (path, contents); containerd's names `runtime`'s runc and
/// the CNI plugins in `cni_bin_dir` (`paths::cni_bin_dir`: the host's or the snap's).
/// The CNI configuration is not among them: it needs the node's pod range (`cni_conflist`).
pub fn config_files(
    c: &Ctx<'_>,
    runtime: &RuntimeDir,
    cni_bin_dir: &Path,
) -> Result<Vec<(PathBuf, String)>, super::DaemonError> {
    let l = c.layout;
    let p = |x: &Path| x.display().to_string();
    let values = [
        ("containerd_root", p(&l.containerd_root())),
        ("containerd_state", p(&l.containerd_state())),
        ("containerd_address", p(&l.containerd_socket())),
        ("cni_conf_dir", p(&l.cni_conf_dir())),
        ("cni_bin_dir", p(cni_bin_dir)),
        ("registry_config_dir", p(&l.registry_config_dir())),
        ("mirror_addr", mirror_addr(c.cfg).to_string()),
        ("runc", p(&runtime.runc())),
        ("cni_ipam_dir", p(&l.cni_ipam_dir())),
        ("pod_cidr", c.cfg.pod_cidr.clone()),
        ("pki_dir", p(&l.pki_dir())),
        ("cgroup_root", c.cgroup_root.to_string()),
        ("pod_logs_dir", p(&l.pod_logs_dir())),
        ("kubeconfig", c.kubeconfig("proxy.conf")),
        ("node_name", c.cfg.node_name.clone()),
        ("cluster_dns", cluster_dns(c.cfg)),
        (
            "resolv_conf",
            crate::paths::host_kubelet_resolv_conf().to_string(),
        ),
        ("tls_min_version", TLS_MIN_VERSION.to_string()),
        ("tls_cipher_suites", format!("[{}]", TLS_CIPHER_SUITES.join(", "))),
    ];
    let rendered = |file: PathBuf, template: &str| match render(template, &values) {
        Ok(text) => Ok((file, text)),
        Err(source) => Err(super::DaemonError::RenderConfig { file, source }),
    };
    let mut files = vec![
        rendered(l.config_dir().join("containerd.toml"), CONTAINERD_TEMPLATE)?,
        rendered(l.config_dir().join("kubelet.yaml"), KUBELET_TEMPLATE)?,
        rendered(l.config_dir().join("kube-proxy.yaml"), KUBE_PROXY_TEMPLATE)?,
        rendered(
            l.registry_config_dir().join("_default/hosts.toml"),
            REGISTRY_HOSTS_TEMPLATE,
        )?,
    ];
    if c.cfg.role == Role::ControlPlane {
        files.push((l.config_dir().join(AUDIT_POLICY_FILE), AUDIT_POLICY.to_string()));
        files.push((
            l.config_dir().join(ADMISSION_CONTROL_FILE),
            ADMISSION_CONTROL.to_string(),
        ));
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Role;

    fn cfg() -> NodeConfig {
        NodeConfig::example()
    }

    #[test]
    fn operators_changes_reach_only_the_named_component() {
        let layout = Layout::new("/d", "/r");
        let mut cfg = cfg();
        let items = ["profiling-", "event-ttl=2h", "--anonymous-auth=true"].map(String::from);
        cfg.extra_args.add_cli("kube-apiserver", &items).unwrap();
        let ctx = Ctx {
            layout: &layout,
            cfg: &cfg,
            cgroup_root: "/",
            encrypt_secrets: true,
        };
        let a = apiserver_args(&ctx);
        assert!(!a.iter().any(|x| x.starts_with("--profiling=")), "{a:?}");
        assert!(a.contains(&"--event-ttl=2h".to_string()));
        let anon: Vec<_> = a.iter().filter(|x| x.starts_with("--anonymous-auth=")).collect();
        assert_eq!(anon, ["--anonymous-auth=true"]);
        assert!(scheduler_args(&ctx).contains(&"--profiling=false".to_string()));
        for c in extra_args::COMPONENTS {
            assert!(kube_args(c, &ctx).is_some(), "{c}");
        }
        assert!(kube_args("containerd", &ctx).is_none());
        let worker = NodeConfig {
            role: Role::Worker,
            ..cfg.clone()
        };
        let ctx = Ctx { cfg: &worker, ..ctx };
        let on_worker: Vec<_> = extra_args::COMPONENTS
            .iter()
            .filter(|c| kube_args(c, &ctx).is_some())
            .collect();
        assert_eq!(on_worker, [&"kubelet", &"kube-proxy"]);
    }

    #[test]
    fn apiserver_flags_are_pinned() {
        let layout = Layout::new("/d", "/r");
        let cfg = cfg();
        let args = apiserver_args(&Ctx {
            layout: &layout,
            cfg: &cfg,
            cgroup_root: "/",
            encrypt_secrets: true,
        });
        let must = [
            "--anonymous-auth=false",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--profiling=false",
            "--etcd-servers=https://127.0.0.1:2379",
            "--etcd-certfile=/d/pki/datastore-client.crt",
            "--advertise-address=10.0.0.5",
            "--service-cluster-ip-range=10.96.0.0/12",
            "--kubelet-certificate-authority=/d/pki/ca.crt",
            "--kubelet-client-certificate=/d/pki/apiserver-kubelet-client.crt",
        ];
        for m in must {
            assert!(args.iter().any(|a| a == m), "missing {m}");
        }
        // Default feature gates stay on: upstream's defaults are what Kubernetes tests.
        assert!(!args.iter().any(|a| a.starts_with("--feature-gates")), "{args:?}");
        assert!(args.contains(&"--audit-log-path=/d/logs/audit.log".to_string()));
        assert!(args.contains(&"--audit-policy-file=/d/config/audit-policy.yaml".to_string()));
        assert!(
            args.contains(&"--admission-control-config-file=/d/config/admission-control.yaml".to_string())
        );
        assert_eq!(
            args.len(),
            46,
            "the full flag set is pinned; update this test deliberately"
        );
        assert!(args.contains(&"--encryption-provider-config=/d/pki/encryption-config.yaml".to_string()));
        // A rotation's new keys are loaded in place: no restart, no API downtime.
        assert!(args.contains(&"--encryption-provider-config-automatic-reload=true".to_string()));
        assert_eq!(
            layout.encryption_config(),
            layout.pki_dir().join(crate::pki::ENCRYPTION_CONFIG_FILE)
        );
        // A node initialised by an older k8sd has no key: the flag is left out, not pointed
        // at a missing file (kube-apiserver would not start).
        let without = apiserver_args(&Ctx {
            layout: &layout,
            cfg: &cfg,
            cgroup_root: "/",
            encrypt_secrets: false,
        });
        assert_eq!(without.len(), 44);
        assert!(
            !without
                .iter()
                .any(|a| a.starts_with("--encryption-provider-config"))
        );
    }

    /// Every Go listener k8sd renders: TLS 1.2 minimum and ECDHE AEAD suites only.
    #[test]
    fn every_go_secure_port_offers_tls12_and_up_with_aead_suites_only() {
        let layout = Layout::new("/d", "/r");
        let cfg = cfg();
        let c = Ctx {
            layout: &layout,
            cfg: &cfg,
            cgroup_root: "/",
            encrypt_secrets: true,
        };
        for suite in TLS_CIPHER_SUITES {
            assert!(suite.starts_with("TLS_ECDHE_"), "{suite}: forward secrecy");
            assert!(
                suite.contains("_GCM_") || suite.ends_with("_CHACHA20_POLY1305_SHA256"),
                "{suite}: AEAD only"
            );
        }
        let suites = format!("--tls-cipher-suites={}", TLS_CIPHER_SUITES.join(","));
        for (name, args) in [
            ("kube-apiserver", apiserver_args(&c)),
            ("controller-manager", controller_manager_args(&c)),
            ("scheduler", scheduler_args(&c)),
        ] {
            assert!(
                args.contains(&"--tls-min-version=VersionTLS12".to_string()),
                "{name}"
            );
            assert!(args.contains(&suites), "{name}");
        }
        let y = kubelet_yaml(&cfg);
        assert_eq!(y["tlsMinVersion"].as_str(), Some("VersionTLS12"));
        let kubelet: Vec<&str> = y["tlsCipherSuites"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(kubelet, TLS_CIPHER_SUITES);
    }

    /// k8sd's own listeners (cluster API, datastore client and peer ports) are rustls with the
    /// ring provider: its TLS 1.2 suites must stay ECDHE + AEAD, as the Go listeners above.
    #[test]
    fn rustls_listeners_offer_aead_suites_only() {
        let provider = rustls::crypto::ring::default_provider();
        assert!(!provider.cipher_suites.is_empty());
        for suite in &provider.cipher_suites {
            let name = format!("{:?}", suite.suite());
            if suite.version() == &rustls::version::TLS12 {
                assert!(name.starts_with("TLS_ECDHE_"), "{name}");
            }
            assert!(
                name.contains("_GCM_") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
        }
    }

    #[test]
    fn kubelet_never_gets_a_loopback_node_ip() {
        let layout = Layout::new("/d", "/r");
        let cfg = cfg();
        let args = kubelet_args(&Ctx {
            layout: &layout,
            cfg: &cfg,
            cgroup_root: "/",
            encrypt_secrets: true,
        });
        assert!(args.contains(&"--node-ip=10.0.0.5".to_string()));
        assert!(args.contains(&"--root-dir=/d/kubelet".to_string()));
    }

    #[test]
    fn every_template_marker_is_rendered() {
        let layout = Layout::new("/d", "/r");
        let cfg = cfg();
        let files = config_files(
            &Ctx {
                layout: &layout,
                cfg: &cfg,
                cgroup_root: "/",
                encrypt_secrets: true,
            },
            &RuntimeDir("/rt".into()),
            Path::new("/cni"),
        )
        .unwrap();
        // containerd, kubelet, kube-proxy, hosts.toml, and the audit policy and admission
        // configuration (control plane).
        assert_eq!(files.len(), 6);
        let policy = &files
            .iter()
            .find(|(p, _)| p.ends_with(AUDIT_POLICY_FILE))
            .unwrap()
            .1;
        let policy: serde_yaml::Value = serde_yaml::from_str(policy).unwrap();
        assert_eq!(policy["kind"], "Policy");
        let admission = &files
            .iter()
            .find(|(p, _)| p.ends_with(ADMISSION_CONTROL_FILE))
            .unwrap()
            .1;
        let admission: serde_yaml::Value = serde_yaml::from_str(admission).unwrap();
        let pss = &admission["plugins"][0];
        assert_eq!(pss["name"], "PodSecurity");
        let defaults = &pss["configuration"]["defaults"];
        assert_eq!(
            (&defaults["enforce"], &defaults["warn"], &defaults["audit"]),
            (&"baseline".into(), &"restricted".into(), &"restricted".into())
        );
        assert_eq!(pss["configuration"]["exemptions"]["namespaces"][0], "kube-system");
        let cni = cni_conflist(
            &Ctx {
                layout: &layout,
                cfg: &cfg,
                cgroup_root: "/",
                encrypt_secrets: true,
            },
            "10.88.3.0/24",
        )
        .unwrap();
        assert!(cni.contains("10.88.3.0/24") && !cni.contains("{{"));
        assert_eq!(node_cidr_mask("10.88.0.0/16"), 24);
        assert_eq!(node_cidr_mask("10.88.0.0/26"), 26);
        for (path, text) in &files {
            assert!(
                !text.contains("{{"),
                "{} has an unrendered marker",
                path.display()
            );
        }
        let containerd = &files[0].1;
        assert!(containerd.contains("restrict_oom_score_adj = true"));
        assert!(containerd.contains("address = \"/r/containerd/containerd.sock\""));
        assert!(containerd.contains("config_path = \"/d/config/registry\""));
        let hosts = &files[3];
        assert_eq!(hosts.0, Path::new("/d/config/registry/_default/hosts.toml"));
        let mirror = format!("[host.\"https://{}:6446\"]", cfg.advertise_address);
        assert!(hosts.1.contains(&mirror), "{}", hosts.1);
        assert!(
            hosts
                .1
                .contains("client = [[\"/d/pki/kubelet-client.crt\", \"/d/pki/kubelet-client.key\"]]")
        );
        assert!(containerd.contains("BinaryName = \"/rt/runc\""));
        assert!(containerd.contains("bin_dirs = [\"/cni\"]"));
        assert!(containerd.contains("version = 3"));
        assert!(render("a {{x}}", &[]).is_err());
    }

    /// The kubelet config as YAML, parsed back: what the kubelet itself will read.
    fn kubelet_yaml(cfg: &NodeConfig) -> serde_yaml::Value {
        let layout = Layout::new("/d", "/r");
        let files = config_files(
            &Ctx {
                layout: &layout,
                cfg,
                cgroup_root: "/",
                encrypt_secrets: true,
            },
            &RuntimeDir("/rt".into()),
            Path::new("/cni"),
        )
        .unwrap();
        let (_, text) = files.iter().find(|(p, _)| p.ends_with("kubelet.yaml")).unwrap();
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn kubelet_serves_the_cluster_ca_certificate_k8sd_issued() {
        let y = kubelet_yaml(&cfg());
        assert_eq!(y["tlsCertFile"].as_str(), Some("/d/pki/kubelet.crt"));
        assert_eq!(y["tlsPrivateKeyFile"].as_str(), Some("/d/pki/kubelet.key"));
        assert_eq!(
            y["authentication"]["x509"]["clientCAFile"].as_str(),
            Some("/d/pki/ca.crt")
        );
    }

    #[test]
    fn kubelet_dns_is_the_tenth_service_ip_and_never_the_resolved_stub() {
        let y = kubelet_yaml(&cfg());
        let dns: Vec<&str> = y["clusterDNS"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(dns, ["10.96.0.10"]);
        assert_eq!(y["clusterDomain"].as_str(), Some("cluster.local"));
        let mut other = cfg();
        other.service_cidr = "10.43.0.0/16".into();
        assert_eq!(kubelet_yaml(&other)["clusterDNS"][0].as_str(), Some("10.43.0.10"));
        // A range without a 10th address (only from a hand-edited node.yaml): no clusterDNS.
        other.service_cidr = "10.43.0.0/29".into();
        assert!(
            kubelet_yaml(&other)["clusterDNS"]
                .as_sequence()
                .unwrap()
                .is_empty()
        );
        // resolvConf follows this machine; both choices are pinned in paths.rs.
        assert_eq!(
            y["resolvConf"].as_str(),
            Some(crate::paths::host_kubelet_resolv_conf())
        );
        assert_eq!(
            crate::paths::kubelet_resolv_conf(true),
            "/run/systemd/resolve/resolv.conf"
        );
        assert_eq!(crate::paths::kubelet_resolv_conf(false), "/etc/resolv.conf");
    }
}
