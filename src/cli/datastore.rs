//! `k8sd datastore`: the embedded datastore as a standalone etcd-compatible server.
//!
//! It takes etcd's core flags, so tools and test harnesses that start etcd can start it
//! instead, and prints `ready to serve client requests` once every listener is bound.

use super::exit::fail;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::datastore::Durability;
use crate::etcd::{self, TlsFiles};
use crate::node::{Node, NodeConfig, RaftSettings};

/// How long a stop waits for open client requests before it closes them.
const SERVER_DRAIN: Duration = Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct DatastoreArgs {
    /// Human-readable name for this member.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Directory for the database; created 0700 if missing.
    #[arg(long, default_value = "default.k8sd")]
    pub data_dir: PathBuf,
    /// Comma-separated URLs to serve clients on: http:// only on loopback, https:// anywhere.
    #[arg(long, default_value = "http://127.0.0.1:2379", value_delimiter = ',')]
    pub listen_client_urls: Vec<String>,
    /// Comma-separated client URLs advertised in MemberList (defaults to the listen URLs).
    #[arg(long, value_delimiter = ',')]
    pub advertise_client_urls: Vec<String>,
    /// Server certificate (PEM) for https listeners.
    #[arg(long)]
    pub cert_file: Option<PathBuf>,
    /// Server private key (PEM) for https listeners.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// CA bundle that client certificates must chain to.
    #[arg(long)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate signed by --trusted-ca-file.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", default_value = "false")]
    pub client_cert_auth: bool,
    /// Interval of progress notifications for watches that request them (etcd's
    /// --experimental-watch-progress-notify-interval), e.g. 5s or 100ms.
    #[arg(long, alias = "experimental-watch-progress-notify-interval", default_value = "5s", value_parser = parse_duration)]
    pub watch_progress_notify_interval: Duration,
    /// Backend quota in bytes (etcd's flag): when the bytes in use in the database would reach
    /// it, the NOSPACE alarm is raised and writes that add data are refused with `etcdserver:
    /// mvcc: database space exceeded` until `etcdctl alarm disarm`. 0: etcd's default, 2 GiB;
    /// negative: no quota.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub quota_backend_bytes: i64,
    /// Run as a Raft member with its peer service on this URL (http only on loopback, https with
    /// the --peer-* files anywhere). Without it the store runs standalone with no Raft log. A
    /// fresh data dir forms a cluster of one.
    #[arg(long, value_delimiter = ',')]
    pub listen_peer_urls: Vec<String>,
    /// Every member of a new cluster as NAME=PEER_URL, comma-separated (etcd's flag), e.g.
    /// n1=http://127.0.0.1:2380,n2=http://127.0.0.1:2480. The first member bootstraps a cluster
    /// of one; the others ask the listed peers to add them, as learners first, promoted to
    /// voters once caught up (3 voters at most, always an odd number). Only read on a fresh
    /// data dir: a member that has joined once restarts as itself.
    #[arg(long, value_delimiter = ',')]
    pub initial_cluster: Vec<String>,
    /// `new`: the first member of --initial-cluster bootstraps. `existing`: every member
    /// joins through the others (use it to add a node to, or to re-create a wiped member of, a
    /// running cluster, so a wiped first member cannot bootstrap a second cluster).
    #[arg(long, default_value = "new", value_parser = ["new", "existing"])]
    pub initial_cluster_state: String,
    /// Peer URL advertised to the other members (defaults to this member's --initial-cluster
    /// entry, else the peer listen address).
    #[arg(long, value_delimiter = ',')]
    pub initial_advertise_peer_urls: Vec<String>,
    /// Peer certificate (PEM): served on https peer URLs and presented to the other members
    /// (mutual TLS, as etcd with --peer-client-cert-auth). Needs --peer-key-file and
    /// --peer-trusted-ca-file; then every peer URL is https.
    #[arg(long)]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of --peer-cert-file.
    #[arg(long)]
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle that the other members' peer certificates must chain to.
    #[arg(long)]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Raft heartbeat interval in milliseconds (etcd's flag).
    #[arg(long, default_value_t = 100)]
    pub heartbeat_interval: u64,
    /// Raft election timeout in milliseconds (etcd's flag); elections are randomised between
    /// it and twice it, after a leader lease of twice it: a follower campaigns after 3 to 4
    /// times this of leader silence (the default fails over in about 0.9 s).
    #[arg(long, default_value_t = 250)]
    pub election_timeout: u64,
    /// Comma-separated URLs to serve Prometheus metrics on at /metrics, under etcd's metric
    /// names (etcd's flag). https:// serves --cert-file and requires a client certificate
    /// signed by --trusted-ca-file; http:// only on loopback. Without it no metrics listener.
    #[arg(long, value_delimiter = ',')]
    pub listen_metrics_urls: Vec<String>,
    /// Log level: error, warn, info or debug.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Parse etcd/Go style durations: `500ms`, `5s`, `2m`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 500ms, 5s, 2m"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("invalid duration unit in {s:?}: use ms, s, m or h")),
    })
}

struct Listen {
    addr: SocketAddr,
    tls: bool,
}

fn parse_listen(url: &str, have_tls: bool) -> anyhow::Result<Listen> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("invalid URL {url:?}: expected http://HOST:PORT"))?;
    let hostport = rest.trim_end_matches('/');
    let addr: SocketAddr = match hostport.parse() {
        Ok(a) => a,
        Err(_) if hostport.starts_with("localhost:") => {
            format!("127.0.0.1:{}", &hostport["localhost:".len()..])
                .parse()
                .with_context(|| format!("invalid port in {url:?}"))?
        }
        Err(_) => fail!(
            Usage,
            "invalid listen URL {url:?}: use an IP address and port, e.g. https://10.0.0.1:2379"
        ),
    };
    match scheme {
        "http" if !addr.ip().is_loopback() => {
            fail!(
                Usage,
                "refusing plain http on non-loopback address {url}; use https:// with --cert-file and --key-file"
            )
        }
        "http" => Ok(Listen { addr, tls: false }),
        "https" if !have_tls => fail!(Usage, "{url} needs --cert-file and --key-file"),
        "https" => Ok(Listen { addr, tls: true }),
        other => fail!(
            Usage,
            "unsupported URL scheme {other:?} in {url}: use http or https"
        ),
    }
}

/// How this member enters its cluster, from --initial-cluster and friends.
#[derive(Debug, PartialEq, Eq)]
struct Formation {
    /// `host:port` other members reach this one on.
    advertise: String,
    /// Form a cluster of one (if the data dir has never belonged to one).
    bootstrap: bool,
    /// Peers to ask for membership otherwise.
    join: Vec<String>,
}

/// `host:port` of a peer URL: http only on loopback, as for listeners, and https exactly when
/// peer TLS is configured (the peer transport uses one scheme for every member).
fn peer_hostport(url: &str, peer_tls: bool) -> anyhow::Result<String> {
    let l = parse_listen(url, peer_tls)?;
    if peer_tls && !l.tls {
        fail!(
            Usage,
            "peer URL {url} is http but --peer-cert-file is set: use https:// for every peer URL"
        );
    }
    Ok(l.addr.to_string())
}

/// Mutual TLS for the peer service from --peer-cert-file, --peer-key-file and
/// --peer-trusted-ca-file (all or none).
fn peer_tls(
    args: &DatastoreArgs,
) -> anyhow::Result<
    Option<(
        tonic::transport::ServerTlsConfig,
        tonic::transport::ClientTlsConfig,
    )>,
> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};
    let (cert, key, ca) = match (
        &args.peer_cert_file,
        &args.peer_key_file,
        &args.peer_trusted_ca_file,
    ) {
        (None, None, None) => return Ok(None),
        (Some(c), Some(k), Some(ca)) => (c, k, ca),
        _ => fail!(
            Usage,
            "--peer-cert-file, --peer-key-file and --peer-trusted-ca-file go together (mutual TLS)"
        ),
    };
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    let identity = Identity::from_pem(read(cert)?, read(key)?);
    let ca = read(ca)?;
    Ok(Some((
        ServerTlsConfig::new()
            .identity(identity.clone())
            .client_ca_root(Certificate::from_pem(&ca)),
        ClientTlsConfig::new()
            .identity(identity)
            .ca_certificate(Certificate::from_pem(&ca)),
    )))
}

/// TLS for https metrics URLs: the client listener's certificate, and a client certificate
/// signed by --trusted-ca-file is always required (metrics are never served to anyone with
/// TLS alone; plain http on loopback is the explicit alternative, as etcd allows).
fn metrics_tls(args: &DatastoreArgs) -> anyhow::Result<std::sync::Arc<rustls::ServerConfig>> {
    let (Some(cert), Some(key)) = (&args.cert_file, &args.key_file) else {
        fail!(
            Usage,
            "an https:// --listen-metrics-urls needs --cert-file and --key-file"
        );
    };
    let Some(ca) = &args.trusted_ca_file else {
        fail!(
            Usage,
            "an https:// --listen-metrics-urls requires client certificates: give --trusted-ca-file (the CA that signs your Prometheus' client certificate), or use http://127.0.0.1:PORT"
        );
    };
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("cannot read {}", p.display()));
    Ok(crate::metrics::server::tls_config(
        &read(ca)?,
        &read(cert)?,
        &read(key)?,
    )?)
}

fn formation(args: &DatastoreArgs, listen_addr: &str) -> anyhow::Result<Formation> {
    let tls = args.peer_cert_file.is_some();
    let mut members: Vec<(&str, String)> = Vec::new();
    for entry in &args.initial_cluster {
        let (name, url) = entry
            .split_once('=')
            .with_context(|| format!("invalid --initial-cluster entry {entry:?}: expected NAME=URL"))?;
        if members.iter().any(|(n, _)| *n == name) {
            fail!(
                Usage,
                "--initial-cluster names {name:?} twice; give each member one peer URL"
            );
        }
        members.push((name, peer_hostport(url, tls)?));
    }
    let mine = members.iter().position(|(n, _)| *n == args.name);
    let advertise = match (args.initial_advertise_peer_urls.first(), mine) {
        (Some(url), _) => peer_hostport(url, tls)?,
        (None, Some(i)) => members[i].1.clone(),
        (None, None) => listen_addr.to_string(),
    };
    if members.is_empty() {
        // No cluster given: a cluster of one, as before.
        return Ok(Formation {
            advertise,
            bootstrap: true,
            join: Vec::new(),
        });
    }
    let Some(mine) = mine else {
        fail!(Usage, "--name {:?} is not in --initial-cluster", args.name);
    };
    let join: Vec<String> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != mine)
        .map(|(_, (_, addr))| addr.clone())
        .collect();
    let bootstrap = args.initial_cluster_state == "new" && mine == 0;
    Ok(Formation {
        advertise,
        bootstrap,
        join,
    })
}

pub fn run(args: DatastoreArgs) -> anyhow::Result<()> {
    super::init_logging(&args.log_level);
    let tls = TlsFiles {
        cert_file: args.cert_file.clone(),
        key_file: args.key_file.clone(),
        trusted_ca_file: args.trusted_ca_file.clone(),
        client_cert_auth: args.client_cert_auth,
    };
    let listens = args
        .listen_client_urls
        .iter()
        .map(|u| parse_listen(u, tls.enabled()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metrics_listens = args
        .listen_metrics_urls
        .iter()
        .map(|u| parse_listen(u, tls.enabled()))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let metrics_tls = if metrics_listens.iter().any(|l| l.tls) {
        Some(metrics_tls(&args)?)
    } else {
        None
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    rt.block_on(async move {
        let mut metrics_listeners = Vec::new();
        for l in &metrics_listens {
            let listener = tokio::net::TcpListener::bind(l.addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {}; is another etcd or k8sd already using it?", l.addr))?;
            metrics_listeners.push((listener, if l.tls { metrics_tls.clone() } else { None }));
        }
        let mut listeners = Vec::new();
        for l in &listens {
            let listener = tokio::net::TcpListener::bind(l.addr)
                .await
                .with_context(|| format!("cannot listen on {}; is another etcd or k8sd already using it?", l.addr))?;
            listeners.push((listener, l.tls));
        }
        let advertise =
            if args.advertise_client_urls.is_empty() { args.listen_client_urls.clone() } else { args.advertise_client_urls.clone() };
        let config = NodeConfig {
            name: args.name.clone(),
            data_dir: args.data_dir.clone(),
            durability: Durability::Full,
            client_urls: advertise.clone(),
            progress_notify_interval: args.watch_progress_notify_interval,
            quota_bytes: crate::node::alarm::effective_quota(args.quota_backend_bytes),
        };
        let node = match args.listen_peer_urls.first() {
            None => Node::start(config),
            Some(url) => {
                let tls = peer_tls(&args)?;
                let peer = parse_listen(url, tls.is_some())?;
                if tls.is_some() != peer.tls {
                    fail!(Usage, "--listen-peer-urls {url}: use https:// exactly when --peer-cert-file is set");
                }
                let listener = tokio::net::TcpListener::bind(peer.addr)
                    .await
                    .with_context(|| format!("cannot listen on peer address {}", peer.addr))?;
                let formation = formation(&args, &listener.local_addr()?.to_string())?;
                let mut rc =
                    crate::raft::RaftConfig::new(&args.data_dir, &args.name, &formation.advertise, &advertise.join(","));
                rc.heartbeat = Duration::from_millis(args.heartbeat_interval);
                rc.election_timeout =
                    (Duration::from_millis(args.election_timeout), Duration::from_millis(args.election_timeout * 2));
                rc.auto_promote = true;
                if let Some((server, client)) = tls {
                    rc.server_tls = Some(server);
                    rc.client_tls = Some(client);
                }
                rc.join = formation.join;
                Node::start_raft(config, RaftSettings { config: rc, listener, bootstrap: formation.bootstrap }).await
            }
        }
        .with_context(|| format!("cannot open the datastore in {}", args.data_dir.display()))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut servers = tokio::task::JoinSet::new();
        for (listener, use_tls) in listeners {
            let node = node.clone();
            let tls = if use_tls { tls.clone() } else { TlsFiles::default() };
            let mut stop = stop_rx.clone();
            servers.spawn(async move {
                etcd::serve(node, listener, &tls, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
            });
        }
        for (listener, tls) in metrics_listeners {
            let render_node = node.clone();
            let render: crate::metrics::server::Render = std::sync::Arc::new(move || {
                let node = render_node.clone();
                Box::pin(async move { etcd::metrics::exposition(&node).await })
            });
            let mut stop = stop_rx.clone();
            servers.spawn(async move {
                crate::metrics::server::serve(listener, tls, render, async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
                Ok(())
            });
        }
        tracing::info!(name = %args.name, data_dir = %args.data_dir.display(), "ready to serve client requests");
        eprintln!("ready to serve client requests");
        tokio::select! {
            _ = super::shutdown_signal() => tracing::info!("shutting down"),
            Some(res) = servers.join_next() => {
                res.context("server task panicked")??;
            }
        }
        let _ = stop_tx.send(true);
        // Open requests get a few seconds to finish. One that waits on this node (a read
        // waiting for an apply that a full disk holds back) must not hold the stop.
        let drain = async {
            while let Some(res) = servers.join_next().await {
                res.context("server task panicked")??;
            }
            anyhow::Ok(())
        };
        match tokio::time::timeout(SERVER_DRAIN, drain).await {
            Ok(drained) => drained?,
            Err(_) => {
                tracing::warn!(after = ?SERVER_DRAIN, "requests still open at shutdown; closing them");
                servers.abort_all();
            }
        }
        node.shutdown().await;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_is_loopback_only() {
        assert!(parse_listen("http://127.0.0.1:2379", false).is_ok());
        assert!(parse_listen("http://localhost:2379", false).is_ok());
        let err = parse_listen("http://0.0.0.0:2379", false)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("refusing plain http"), "{err}");
        assert!(parse_listen("https://0.0.0.0:2379", false).is_err());
        assert!(parse_listen("https://0.0.0.0:2379", true).is_ok());
        assert!(parse_listen("ftp://127.0.0.1:1", true).is_err());
    }

    fn args(extra: &[&str]) -> DatastoreArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            a: DatastoreArgs,
        }
        let mut v = vec!["k8sd"];
        v.extend_from_slice(extra);
        <Cli as clap::Parser>::parse_from(v).a
    }

    #[test]
    fn initial_cluster_first_member_bootstraps_and_others_join() {
        let cluster =
            "--initial-cluster=n1=http://127.0.0.1:7001,n2=http://127.0.0.1:7002,n3=http://127.0.0.1:7003";
        let f = formation(&args(&["--name=n1", cluster]), "127.0.0.1:9").unwrap();
        assert_eq!(
            f,
            Formation {
                advertise: "127.0.0.1:7001".into(),
                bootstrap: true,
                join: vec!["127.0.0.1:7002".into(), "127.0.0.1:7003".into()]
            }
        );
        let f = formation(&args(&["--name=n2", cluster]), "127.0.0.1:9").unwrap();
        assert!(!f.bootstrap);
        assert_eq!(
            f.join,
            vec!["127.0.0.1:7001".to_string(), "127.0.0.1:7003".into()]
        );
        let f = formation(
            &args(&["--name=n1", cluster, "--initial-cluster-state=existing"]),
            "x",
        )
        .unwrap();
        assert!(!f.bootstrap, "an existing cluster is joined, never bootstrapped");
        assert!(formation(&args(&["--name=n4", cluster]), "x").is_err());
        let f = formation(&args(&["--name=solo"]), "127.0.0.1:9").unwrap();
        assert!(f.bootstrap && f.join.is_empty() && f.advertise == "127.0.0.1:9");
        assert!(
            formation(
                &args(&["--name=n1", "--initial-cluster=n1=http://10.0.0.1:1"]),
                "x"
            )
            .is_err()
        );
    }

    #[test]
    fn peer_tls_means_https_peer_urls_anywhere() {
        let cluster = "--initial-cluster=n1=https://10.0.0.1:2380,n2=https://10.0.0.2:2380";
        assert!(
            formation(&args(&["--name=n1", cluster]), "x").is_err(),
            "https peers need --peer-cert-file"
        );
        let tls = [
            "--peer-cert-file=c",
            "--peer-key-file=k",
            "--peer-trusted-ca-file=ca",
        ];
        let f = formation(&args(&[&["--name=n2", cluster][..], &tls[..]].concat()), "x").unwrap();
        assert_eq!(
            f,
            Formation {
                advertise: "10.0.0.2:2380".into(),
                bootstrap: false,
                join: vec!["10.0.0.1:2380".into()]
            }
        );
        let mixed = "--initial-cluster=n1=https://10.0.0.1:2380,n2=http://127.0.0.1:2380";
        let err = formation(&args(&[&["--name=n1", mixed][..], &tls[..]].concat()), "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("use https://"), "{err}");
        let err = peer_tls(&args(&["--peer-cert-file=c"])).unwrap_err().to_string();
        assert!(err.contains("go together"), "{err}");
    }

    #[test]
    fn durations_parse_like_etcd_flags() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert!(parse_duration("5x").is_err());
    }
}
