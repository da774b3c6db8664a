//! `DaemonError`: every way a daemon call fails; most variants carry what failed (a path, a
//! listener and its address, a component). `failure.rs` classifies them for the CLI's exit code.

use std::path::PathBuf;

use super::{Refusal, addons, config, secrets};
use crate::pki;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    NodeFile(#[from] config::NodeFileError),
    #[error("certificates: {0}")]
    Pki(#[from] pki::PkiError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another daemon answers on this node's control socket.
    #[error("another k8sd is already running on {socket}; stop it first")]
    AlreadyRunning { socket: PathBuf },
    /// One of the node's listeners could not take its address.
    #[error(
        "{listener}: cannot listen on {addr}: {source}; is another k8sd or another program using it? `ss -ltnp` shows which"
    )]
    Listen {
        listener: &'static str,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A client certificate and key this node uses for its own calls cannot be loaded.
    #[error("{what} credentials: {source}")]
    Credentials {
        what: &'static str,
        #[source]
        source: crate::httpc::HttpError,
    },
    /// The TLS configuration of one of the node's HTTPS listeners cannot be built.
    #[error("{listener}: {source}")]
    ListenerTls {
        listener: String,
        #[source]
        source: crate::tls::MtlsError,
    },
    /// A component's config file did not render: the template and k8sd's values disagree (a
    /// bug in this build, not something the node's config can fix).
    #[error("rendering {file}: {source}; this build's templates are broken, report it")]
    RenderConfig {
        file: PathBuf,
        #[source]
        source: crate::template::TemplateError,
    },
    #[error("node {node} did not become Ready within 5 minutes; see `k8sd status` and `k8sd logs kubelet`")]
    NotReady { node: String },
    #[error("local API load balancer: {0}")]
    LoadBalancer(#[source] crate::lb::LbError),
    #[error("a readiness probe: {0}")]
    Probe(#[source] crate::supervisor::Error),
    #[error(
        "kubebin (the Kubernetes components) was not found; build it with scripts/build-kube.sh or set K8SD_KUBEBIN"
    )]
    NoKubebin,
    #[error(
        "the container runtime (containerd 2, its runc shim, ctr, runc) is incomplete in {dir}: missing {}; build it with scripts/build-runtime.sh or set K8SD_RUNTIME_DIR",
        display_paths(.missing)
    )]
    NoRuntime { dir: PathBuf, missing: Vec<PathBuf> },
    #[error(
        "the pause image {0} is missing; build images with scripts/build-images.sh or set K8SD_IMAGES_DIR"
    )]
    NoPauseImage(PathBuf),
    #[error(
        "this node is already initialised ({0} exists); nothing was changed. Use `k8sd status` to inspect it"
    )]
    AlreadyInitialised(PathBuf),
    /// The supervisor could not start the node's components (its error names the component).
    #[error("starting the node's components: {source}; see `k8sd status` and `k8sd logs COMPONENT`")]
    StartComponents {
        #[source]
        source: crate::supervisor::Error,
    },
    #[error("renewing this worker's certificates through the cluster API: {0}")]
    WorkerRenewal(#[source] crate::cluster::client::JoinError),
    #[error("the control plane answered a renewal without a certificate for {cert}")]
    RenewalIncomplete { cert: String },
    #[error("{0}")]
    Addons(#[from] addons::AddonsError),
    #[error(transparent)]
    Refused(#[from] Refusal),
    #[error("{0}")]
    Token(#[from] crate::cluster::token::TokenError),
    #[error(transparent)]
    ClusterApi(#[from] crate::cluster::client::JoinError),
    #[error(transparent)]
    Secrets(#[from] secrets::SecretsError),
    #[error("the cluster records in the datastore: {0}")]
    Registry(#[from] crate::cluster::registry::RegistryError),
    #[error("{0}")]
    Datastore(#[from] crate::node::NodeError),
    /// This binary's Kubernetes minor differs from the control plane's, and the user did not
    /// ask to cross it (or it would skip one).
    #[error("{0}")]
    KubernetesSkew(#[from] crate::cluster::versions::SkewError),
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The cluster API server at `via` answered, but not with what a join needs; nothing was
    /// written.
    #[error("{via} {problem}")]
    BadReply { via: String, problem: BadReply },
    #[error("cannot encode the node config: {0}")]
    EncodeConfig(#[source] serde_yaml::Error),
    /// `leave` could not delete this node's Kubernetes Node, its first step.
    #[error("{source}; nothing else was changed, run `k8sd leave` again")]
    LeaveKubectl {
        #[source]
        source: crate::cluster::KubectlError,
    },
    /// `remove-node` stopped part way; every step can be repeated.
    #[error("{source}. {state}; run `k8sd remove-node {name}` again")]
    RemovalIncomplete {
        name: String,
        /// Boxed: a datastore error is large, and this variant is rare.
        #[source]
        source: Box<RemovalStep>,
        state: &'static str,
    },
}

/// What a cluster API answer to a join lacked or held that it must not. Each case is an older
/// or newer k8sd on the other side, or a server that is not k8sd's.
#[derive(Debug, thiserror::Error)]
pub enum BadReply {
    #[error(
        "answered without the Secrets encryption key (cluster API version {server}, this node {this}); run the same k8sd version on every control-plane node"
    )]
    NoEncryptionKey { server: u32, this: u32 },
    #[error("answered without certificates; run the same k8sd version on this node as on the control plane")]
    NoWorkerCertificates,
    #[error(
        "answered without the cluster secrets or datastore peers; run the same k8sd version on every control-plane node"
    )]
    NoSecretsOrPeers,
    #[error(
        "sent an unexpected file {name:?}; refusing to write it. Run the same k8sd version on every control-plane node"
    )]
    UnexpectedFile { name: String },
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The step of `remove-node` that failed: deleting the Node, the datastore member or the record.
#[derive(Debug, thiserror::Error)]
pub enum RemovalStep {
    #[error(transparent)]
    Kubectl(#[from] crate::cluster::KubectlError),
    #[error(transparent)]
    Datastore(#[from] crate::node::NodeError),
    #[error("deleting its member record: {0}")]
    Registry(#[from] crate::cluster::registry::RegistryError),
}
