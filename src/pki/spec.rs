//! The certificate table: every CA and leaf certificate k8sd issues, in one place.
//!
//! Nothing here does crypto or IO. [`Leaf::spec`] renders a table row against a
//! [`NodeIdentity`] into a [`LeafSpec`], which `ca.rs` signs and `plan.rs` compares existing
//! certificates against.
//!
//! ```text
//!  trust anchor                  leaf (file stem)           EKU     subject (CN / O)
//!  ───────────────────────────   ───────────────────────    ──────  ─────────────────────────────────────────
//!  kubernetes-ca   (ca.*) ────┬─ apiserver                  server  kube-apiserver            SANs: see below
//!   verifies every client     ├─ apiserver-kubelet-client   client  kube-apiserver-kubelet-client / system:masters
//!   of the apiserver and      ├─ kubelet                    server  <node>                    SANs: node name, IPs
//!   the kubelet               ├─ kubelet-client  (W)        client  system:node:<node> / system:nodes
//!                             ├─ controller-manager         client  system:kube-controller-manager
//!                             ├─ scheduler                  client  system:kube-scheduler
//!                             ├─ kube-proxy      (W)        client  system:kube-proxy
//!                             └─ admin                      client  kubernetes-admin / system:masters
//!  front-proxy-ca  (front-proxy-ca.*) ── front-proxy-client client  front-proxy-client
//!  datastore-ca    (datastore-ca.*) ─┬─ datastore-server    server  k8sd-datastore            SANs: loopback, node
//!   trusted only by the datastore    ├─ datastore-client    client  k8sd-datastore-client
//!                                    └─ datastore-peer      both    <node> / k8sd:datastore-peers
//!  sa.key / sa.pub: not a certificate; signs and verifies service-account tokens
//!  (W) also issued for worker nodes, signed by a control-plane node; workers never hold a CA key
//! ```
//!
//! The datastore has its own CA, as kubeadm's etcd has: every worker holds a cluster-CA client
//! certificate, and none of them may talk to the datastore or join its Raft group.
//!
//! Over 600 lines with its tests: one job, the certificate table, kept whole so every certificate
//! is read in one place.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use time::Duration;

use super::PkiError;

/// The organization of every datastore peer certificate and of no other certificate of the
/// datastore CA: the Raft peer service admits only callers whose certificate names it. Peer
/// certificates have carried it since the first release, so existing clusters pass unchanged.
pub const DATASTORE_PEER_ORG: &str = "k8sd:datastore-peers";

/// Lifetime of the three CAs.
pub const CA_LIFETIME: Duration = Duration::days(3650);
/// Lifetime of every leaf certificate; they are renewed from the same CA.
pub const LEAF_LIFETIME: Duration = Duration::days(365);
/// A leaf that expires sooner than this is re-issued by the next `ensure` run.
pub const DEFAULT_RENEW_BEFORE: Duration = Duration::days(120);
/// Certificates are back-dated by this much so a node whose clock lags can still use them.
pub const CLOCK_SKEW: Duration = Duration::hours(1);

/// The service-account token key pair (not a certificate).
pub const SA_KEY_FILE: &str = "sa.key";
pub const SA_PUB_FILE: &str = "sa.pub";

/// The node facts that end up in certificate subjects and SANs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// The Kubernetes node name (also a DNS SAN, or an IP SAN if it parses as an address).
    pub node_name: String,
    pub node_ips: Vec<IpAddr>,
    /// `--extra-sans`: addresses become IP SANs, anything else a DNS SAN of the apiserver cert.
    pub extra_sans: Vec<String>,
    /// The primary service CIDR; its first address is the `kubernetes` Service's ClusterIP.
    pub service_cidr: IpCidr,
}

/// An address prefix such as `10.96.0.0/12`, with host bits masked off (as Go's `net.ParseCIDR`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpCidr {
    network: IpAddr,
    prefix: u8,
}

impl IpCidr {
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Self, PkiError> {
        let input = format!("{addr}/{prefix}");
        let bad = |reason| PkiError::InvalidCidr {
            input: input.clone(),
            reason,
        };
        let network = match addr {
            IpAddr::V4(a) => {
                // /31 and /32 hold no address after the network address.
                if prefix > 30 {
                    return Err(bad("prefix must be at most /30"));
                }
                let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
            }
            IpAddr::V6(a) => {
                if prefix > 126 {
                    return Err(bad("prefix must be at most /126"));
                }
                let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
            }
        };
        Ok(Self { network, prefix })
    }

    pub fn network(&self) -> IpAddr {
        self.network
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The first address after the network address: what kube-apiserver allocates to the
    /// `kubernetes` Service (`GetIndexedIP(serviceCIDR, 1)` in upstream's controlplane code).
    pub fn first_service_ip(&self) -> IpAddr {
        // `new` guarantees at least two addresses, so +1 cannot overflow or leave the prefix.
        match self.network {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + 1)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + 1)),
        }
    }
}

impl IpCidr {
    /// The tenth address of the range: where the cluster DNS Service lives, as in kubeadm and
    /// every distribution that follows it (`10.96.0.10` in the default `10.96.0.0/12`). `None`
    /// when the range holds fewer than 11 addresses after the network address.
    pub fn dns_service_ip(&self) -> Option<IpAddr> {
        let host_bits = match self.network {
            IpAddr::V4(_) => 32 - u32::from(self.prefix),
            IpAddr::V6(_) => 128 - u32::from(self.prefix),
        };
        if host_bits < 4 {
            return None;
        }
        Some(match self.network {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) + 10)),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) + 10)),
        })
    }
}

impl FromStr for IpCidr {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| PkiError::InvalidCidr {
            input: s.to_owned(),
            reason,
        };
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(|| bad("missing /prefix"))?;
        let addr: IpAddr = addr.parse().map_err(|_| bad("not an IP address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("prefix is not a number"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > max {
            return Err(bad("prefix longer than the address"));
        }
        Self::new(addr, prefix).map_err(|_| bad("range too small for a service IP"))
    }
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// One subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// Addresses become IP SANs and everything else a DNS SAN, as kubeadm treats `certSANs`.
    pub fn parse(s: &str) -> Self {
        match s.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_owned()),
        }
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// The three trust anchors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CaKind {
    Cluster,
    FrontProxy,
    Datastore,
}

impl CaKind {
    pub const ALL: [CaKind; 3] = [CaKind::Cluster, CaKind::FrontProxy, CaKind::Datastore];

    pub fn file_stem(self) -> &'static str {
        match self {
            CaKind::Cluster => "ca",
            CaKind::FrontProxy => "front-proxy-ca",
            CaKind::Datastore => "datastore-ca",
        }
    }

    pub fn common_name(self) -> &'static str {
        match self {
            CaKind::Cluster => "kubernetes-ca",
            CaKind::FrontProxy => "front-proxy-ca",
            CaKind::Datastore => "k8sd-datastore-ca",
        }
    }

    /// Who reads this CA's certificate: changing it means restarting them.
    pub fn consumers(self) -> &'static [Consumer] {
        use Consumer::*;
        match self {
            CaKind::Cluster => &[
                KubeApiserver,
                ControllerManager,
                Scheduler,
                Kubelet,
                KubeProxy,
                K8sd,
            ],
            CaKind::FrontProxy => &[KubeApiserver],
            CaKind::Datastore => &[Datastore, KubeApiserver, K8sd],
        }
    }

    pub fn cert_file(self) -> String {
        format!("{}.crt", self.file_stem())
    }

    pub fn key_file(self) -> String {
        format!("{}.key", self.file_stem())
    }
}

/// Extended key usage of a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Usage {
    Server,
    Client,
    /// Both: Raft peers dial each other and accept each other's connections.
    Peer,
}

impl Usage {
    pub fn server_auth(self) -> bool {
        matches!(self, Usage::Server | Usage::Peer)
    }

    pub fn client_auth(self) -> bool {
        matches!(self, Usage::Client | Usage::Peer)
    }
}

/// The processes that read PKI files; the daemon maps them to supervised components and
/// restarts only those whose files changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Consumer {
    KubeApiserver,
    ControllerManager,
    Scheduler,
    Kubelet,
    KubeProxy,
    /// k8sd's embedded datastore and its Raft transport.
    Datastore,
    /// k8sd itself as a client: readiness probes and the CLI.
    K8sd,
}

/// Which nodes hold a leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    ControlPlane,
    Worker,
}

/// Every leaf certificate k8sd issues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Leaf {
    Apiserver,
    ApiserverKubeletClient,
    FrontProxyClient,
    KubeletServing,
    KubeletClient,
    ControllerManager,
    Scheduler,
    KubeProxy,
    Admin,
    DatastoreServer,
    DatastoreClient,
    DatastorePeer,
}

#[derive(Debug, Clone, Copy)]
enum Cn {
    Fixed(&'static str),
    NodeName,
    /// The prefix followed by the node name.
    NodePrefixed(&'static str),
}

#[derive(Debug, Clone, Copy)]
enum Sans {
    None,
    /// Node name and IPs, loopback, the in-cluster names and first service IP, `--extra-sans`.
    Apiserver,
    /// Node name and node IPs.
    Node,
    /// Loopback, node name and node IPs.
    LoopbackAndNode,
}

/// One row of the table.
#[derive(Debug)]
struct Row {
    leaf: Leaf,
    stem: &'static str,
    cn: Cn,
    org: Option<&'static str>,
    usage: Usage,
    sans: Sans,
    signer: CaKind,
    /// The kubeconfig that embeds this client certificate, if any.
    kubeconfig: Option<&'static str>,
    worker: bool,
    consumers: &'static [Consumer],
}

use Consumer as C;

/// The table. Subjects follow kubernetes.io "PKI certificates and requirements" and kubeadm's
/// file names; `system:masters` bypasses RBAC, so only two rows may carry it.
#[rustfmt::skip]
const TABLE: [Row; 12] = [
    Row { leaf: Leaf::Apiserver, stem: "apiserver", cn: Cn::Fixed("kube-apiserver"), org: None,
          usage: Usage::Server, sans: Sans::Apiserver, signer: CaKind::Cluster, kubeconfig: None,
          worker: false, consumers: &[C::KubeApiserver] },
    Row { leaf: Leaf::ApiserverKubeletClient, stem: "apiserver-kubelet-client",
          cn: Cn::Fixed("kube-apiserver-kubelet-client"), org: Some("system:masters"),
          usage: Usage::Client, sans: Sans::None, signer: CaKind::Cluster, kubeconfig: None,
          worker: false, consumers: &[C::KubeApiserver] },
    // Signed by the front-proxy CA so that a cluster-CA client cert cannot impersonate the
    // aggregation proxy (the apiserver trusts request headers from this CA's clients).
    Row { leaf: Leaf::FrontProxyClient, stem: "front-proxy-client", cn: Cn::Fixed("front-proxy-client"),
          org: None, usage: Usage::Client, sans: Sans::None, signer: CaKind::FrontProxy, kubeconfig: None,
          worker: false, consumers: &[C::KubeApiserver] },
    Row { leaf: Leaf::KubeletServing, stem: "kubelet", cn: Cn::NodeName, org: None,
          usage: Usage::Server, sans: Sans::Node, signer: CaKind::Cluster, kubeconfig: None,
          worker: true, consumers: &[C::Kubelet] },
    // The Node authorizer and NodeRestriction admission key on exactly this CN and O.
    Row { leaf: Leaf::KubeletClient, stem: "kubelet-client", cn: Cn::NodePrefixed("system:node:"),
          org: Some("system:nodes"), usage: Usage::Client, sans: Sans::None, signer: CaKind::Cluster,
          kubeconfig: Some("kubelet.conf"), worker: true, consumers: &[C::Kubelet] },
    Row { leaf: Leaf::ControllerManager, stem: "controller-manager",
          cn: Cn::Fixed("system:kube-controller-manager"), org: None, usage: Usage::Client, sans: Sans::None,
          signer: CaKind::Cluster, kubeconfig: Some("controller-manager.conf"), worker: false,
          consumers: &[C::ControllerManager] },
    Row { leaf: Leaf::Scheduler, stem: "scheduler", cn: Cn::Fixed("system:kube-scheduler"), org: None,
          usage: Usage::Client, sans: Sans::None, signer: CaKind::Cluster, kubeconfig: Some("scheduler.conf"),
          worker: false, consumers: &[C::Scheduler] },
    Row { leaf: Leaf::KubeProxy, stem: "kube-proxy", cn: Cn::Fixed("system:kube-proxy"), org: None,
          usage: Usage::Client, sans: Sans::None, signer: CaKind::Cluster, kubeconfig: Some("proxy.conf"),
          worker: true, consumers: &[C::KubeProxy] },
    Row { leaf: Leaf::Admin, stem: "admin", cn: Cn::Fixed("kubernetes-admin"), org: Some("system:masters"),
          usage: Usage::Client, sans: Sans::None, signer: CaKind::Cluster, kubeconfig: Some("admin.conf"),
          worker: false, consumers: &[C::K8sd] },
    Row { leaf: Leaf::DatastoreServer, stem: "datastore-server", cn: Cn::Fixed("k8sd-datastore"), org: None,
          usage: Usage::Server, sans: Sans::LoopbackAndNode, signer: CaKind::Datastore, kubeconfig: None,
          worker: false, consumers: &[C::Datastore] },
    Row { leaf: Leaf::DatastoreClient, stem: "datastore-client", cn: Cn::Fixed("k8sd-datastore-client"),
          org: None, usage: Usage::Client, sans: Sans::None, signer: CaKind::Datastore, kubeconfig: None,
          worker: false, consumers: &[C::KubeApiserver, C::K8sd] },
    Row { leaf: Leaf::DatastorePeer, stem: "datastore-peer", cn: Cn::NodeName, org: Some(DATASTORE_PEER_ORG),
          usage: Usage::Peer, sans: Sans::Node, signer: CaKind::Datastore, kubeconfig: None,
          worker: false, consumers: &[C::Datastore] },
];

/// A leaf rendered for one node: exactly what its certificate must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafSpec {
    pub leaf: Leaf,
    pub common_name: String,
    pub organization: Option<String>,
    pub sans: BTreeSet<San>,
    pub usage: Usage,
    pub signer: CaKind,
    pub lifetime: Duration,
}

/// A serving certificate for an in-cluster Service (`<service>.<namespace>.svc`), signed by the
/// cluster CA. It lives in a Secret of the cluster, not in a node's PKI directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceCertSpec {
    pub service: &'static str,
    pub namespace: &'static str,
}

impl ServiceCertSpec {
    /// How errors name it: "the serving certificate of Service kube-system/metrics-server".
    pub fn describe(&self) -> String {
        format!(
            "the serving certificate of Service {}/{}",
            self.namespace, self.service
        )
    }

    /// kube-apiserver dials an APIService's Service as `<service>.<namespace>.svc` and checks
    /// that name; the other forms are what in-cluster clients may use.
    pub fn common_name(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }

    pub fn sans(&self) -> BTreeSet<San> {
        let (s, ns) = (self.service, self.namespace);
        [
            s.to_string(),
            format!("{s}.{ns}"),
            format!("{s}.{ns}.svc"),
            format!("{s}.{ns}.svc.cluster.local"),
        ]
        .into_iter()
        .map(San::Dns)
        .collect()
    }
}

impl Leaf {
    pub const ALL: [Leaf; 12] = {
        let mut all = [Leaf::Apiserver; 12];
        let mut i = 0;
        while i < TABLE.len() {
            all[i] = TABLE[i].leaf;
            i += 1;
        }
        all
    };

    fn row(self) -> &'static Row {
        // The table lists the variants in declaration order (checked by a test).
        &TABLE[self as usize]
    }

    /// The leaves a node of this role holds.
    pub fn for_role(role: NodeRole) -> impl Iterator<Item = Leaf> {
        Leaf::ALL
            .into_iter()
            .filter(move |l| role == NodeRole::ControlPlane || l.row().worker)
    }

    pub fn file_stem(self) -> &'static str {
        self.row().stem
    }

    pub fn cert_file(self) -> String {
        format!("{}.crt", self.row().stem)
    }

    pub fn key_file(self) -> String {
        format!("{}.key", self.row().stem)
    }

    pub fn signer(self) -> CaKind {
        self.row().signer
    }

    pub fn kubeconfig_file(self) -> Option<&'static str> {
        self.row().kubeconfig
    }

    pub fn consumers(self) -> &'static [Consumer] {
        self.row().consumers
    }

    /// Renders this row for a node.
    pub fn spec(self, id: &NodeIdentity) -> LeafSpec {
        let row = self.row();
        let common_name = match row.cn {
            Cn::Fixed(cn) => cn.to_owned(),
            Cn::NodeName => id.node_name.clone(),
            Cn::NodePrefixed(prefix) => format!("{prefix}{}", id.node_name),
        };
        let node =
            || std::iter::once(San::parse(&id.node_name)).chain(id.node_ips.iter().copied().map(San::Ip));
        let loopback = || {
            [
                San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)),
                San::Dns("localhost".to_owned()),
            ]
        };
        let sans: BTreeSet<San> = match row.sans {
            Sans::None => BTreeSet::new(),
            Sans::Node => node().collect(),
            Sans::LoopbackAndNode => node().chain(loopback()).collect(),
            Sans::Apiserver => node()
                .chain(loopback())
                .chain(
                    [
                        "kubernetes",
                        "kubernetes.default",
                        "kubernetes.default.svc",
                        "kubernetes.default.svc.cluster",
                        "kubernetes.default.svc.cluster.local",
                    ]
                    .map(|n| San::Dns(n.to_owned())),
                )
                .chain(std::iter::once(San::Ip(id.service_cidr.first_service_ip())))
                .chain(id.extra_sans.iter().map(|s| San::parse(s.trim())))
                .collect(),
        };
        LeafSpec {
            leaf: self,
            common_name,
            organization: row.org.map(str::to_owned),
            sans,
            usage: row.usage,
            signer: row.signer,
            lifetime: LEAF_LIFETIME,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> NodeIdentity {
        NodeIdentity {
            node_name: "node-1".into(),
            node_ips: vec!["192.0.2.10".parse().unwrap(), "2001:db8::10".parse().unwrap()],
            extra_sans: vec!["api.example.com".into(), "198.51.100.7".into()],
            service_cidr: "10.96.0.0/12".parse().unwrap(),
        }
    }

    #[test]
    fn table_is_in_declaration_order() {
        for (i, row) in TABLE.iter().enumerate() {
            assert_eq!(row.leaf as usize, i, "{:?} is out of place", row.leaf);
        }
    }

    #[test]
    fn file_stems_are_unique() {
        let stems: BTreeSet<_> = TABLE
            .iter()
            .map(|r| r.stem)
            .chain(CaKind::ALL.map(CaKind::file_stem))
            .collect();
        assert_eq!(stems.len(), TABLE.len() + CaKind::ALL.len());
    }

    #[test]
    fn first_service_ip_v4_and_v6() {
        let v4: IpCidr = "10.96.0.0/12".parse().unwrap();
        assert_eq!(v4.first_service_ip(), "10.96.0.1".parse::<IpAddr>().unwrap());
        let v6: IpCidr = "fd00::/108".parse().unwrap();
        assert_eq!(v6.first_service_ip(), "fd00::1".parse::<IpAddr>().unwrap());
        // Host bits are masked, as net.ParseCIDR does.
        let sloppy: IpCidr = "10.100.3.4/16".parse().unwrap();
        assert_eq!(sloppy.to_string(), "10.100.0.0/16");
        assert_eq!(sloppy.first_service_ip(), "10.100.0.1".parse::<IpAddr>().unwrap());
        let zero: IpCidr = "0.0.0.0/0".parse().unwrap();
        assert_eq!(zero.first_service_ip(), "0.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn bad_cidrs_are_refused() {
        for bad in [
            "10.96.0.0",
            "10.96.0.0/33",
            "10.96.0.0/31",
            "fd00::/127",
            "nope/12",
            "10.0.0.0/x",
            "",
        ] {
            let err = bad.parse::<IpCidr>().unwrap_err();
            assert!(matches!(err, PkiError::InvalidCidr { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn apiserver_sans_are_exactly_right() {
        let spec = Leaf::Apiserver.spec(&id());
        let want: BTreeSet<San> = [
            "node-1",
            "192.0.2.10",
            "2001:db8::10",
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster",
            "kubernetes.default.svc.cluster.local",
            "10.96.0.1",
            "api.example.com",
            "198.51.100.7",
        ]
        .into_iter()
        .map(San::parse)
        .collect();
        assert_eq!(spec.sans, want);
        assert!(spec.sans.contains(&San::Ip("198.51.100.7".parse().unwrap())));
        assert!(spec.sans.contains(&San::Dns("api.example.com".into())));
    }

    #[test]
    fn identities_are_exactly_right() {
        let id = id();
        let subject = |l: Leaf| {
            let s = l.spec(&id);
            (s.common_name, s.organization)
        };
        let s = |x: &str| x.to_owned();
        assert_eq!(
            subject(Leaf::KubeletClient),
            (s("system:node:node-1"), Some(s("system:nodes")))
        );
        assert_eq!(subject(Leaf::KubeletServing), (s("node-1"), None));
        assert_eq!(
            subject(Leaf::Admin),
            (s("kubernetes-admin"), Some(s("system:masters")))
        );
        assert_eq!(
            subject(Leaf::ApiserverKubeletClient),
            (s("kube-apiserver-kubelet-client"), Some(s("system:masters")))
        );
        assert_eq!(
            subject(Leaf::ControllerManager),
            (s("system:kube-controller-manager"), None)
        );
        assert_eq!(subject(Leaf::Scheduler), (s("system:kube-scheduler"), None));
        assert_eq!(subject(Leaf::KubeProxy), (s("system:kube-proxy"), None));
        assert_eq!(Leaf::FrontProxyClient.signer(), CaKind::FrontProxy);
        let masters: Vec<_> = TABLE
            .iter()
            .filter(|r| r.org == Some("system:masters"))
            .map(|r| r.leaf)
            .collect();
        assert_eq!(masters, [Leaf::ApiserverKubeletClient, Leaf::Admin]);
    }

    #[test]
    fn node_and_datastore_sans() {
        let id = id();
        let node: BTreeSet<San> = ["node-1", "192.0.2.10", "2001:db8::10"].map(San::parse).into();
        assert_eq!(Leaf::KubeletServing.spec(&id).sans, node);
        assert_eq!(Leaf::DatastorePeer.spec(&id).sans, node);
        let mut server = node.clone();
        server.extend(["127.0.0.1", "localhost"].map(San::parse));
        assert_eq!(Leaf::DatastoreServer.spec(&id).sans, server);
        assert!(Leaf::DatastoreClient.spec(&id).sans.is_empty());
    }

    #[test]
    fn workers_hold_only_kubelet_and_proxy_identities() {
        let worker: Vec<_> = Leaf::for_role(NodeRole::Worker).collect();
        assert_eq!(
            worker,
            [Leaf::KubeletServing, Leaf::KubeletClient, Leaf::KubeProxy]
        );
        assert_eq!(Leaf::for_role(NodeRole::ControlPlane).count(), 12);
    }
}
