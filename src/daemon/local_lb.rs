//! The local API load balancer on 127.0.0.1:6444 that every component of this node talks to,
//! started with its first backends; it then follows the `kubernetes` EndpointSlice itself.

use super::components;
use super::config::NodeConfig;
use super::host::mkdir;
use super::{Daemon, DaemonError};
use crate::httpc::TlsClient;
use crate::node::Node;

impl Daemon {
    /// The local API load balancer on 127.0.0.1:6444, in front of every control-plane
    /// kube-apiserver: the registry's list on a control-plane node (this node first), the join
    /// answer's on a worker; the balancer then follows the `kubernetes` EndpointSlice itself.
    pub(super) async fn start_lb(
        &self,
        cfg: &NodeConfig,
        datastore: Option<&Node>,
    ) -> Result<crate::lb::LbHandle, DaemonError> {
        let p = self.opts.layout.pki_dir();
        let tls = TlsClient::from_files(
            &p.join("ca.crt"),
            &p.join("kube-proxy.crt"),
            &p.join("kube-proxy.key"),
        )
        .map_err(|source| DaemonError::Credentials {
            what: "load balancer",
            source,
        })?;
        let mut addrs = vec![];
        if let Some(ds) = datastore {
            addrs.push(cfg.advertise_address);
            if let Ok(members) = crate::cluster::registry::members(ds).await {
                addrs.extend(
                    members
                        .into_iter()
                        .filter(|m| m.role == crate::cluster::registry::MemberRole::ControlPlane)
                        .map(|m| m.address),
                );
            }
        }
        addrs.extend(cfg.control_plane.iter().copied());
        let mut backends: Vec<std::net::SocketAddr> = Vec::new();
        for a in addrs {
            let s = std::net::SocketAddr::new(a, components::APISERVER_PORT);
            if !backends.contains(&s) {
                backends.push(s);
            }
        }
        // Kept whatever the EndpointSlices say (see `LbConfig::pinned`): the apiserver that is
        // always there for this node, its own, or on a worker the ones it joined through.
        let pinned = match datastore {
            Some(_) => vec![cfg.advertise_address],
            None => cfg.control_plane.clone(),
        };
        let state = self.opts.layout.lb_state_file();
        if let Some(dir) = state.parent() {
            mkdir(dir, 0o700)?;
        }
        let mut lb = crate::lb::LbConfig::new(components::lb_addr(), backends, tls, state);
        lb.pinned = pinned
            .into_iter()
            .map(|a| std::net::SocketAddr::new(a, components::APISERVER_PORT))
            .collect();
        crate::lb::LoadBalancer::start(lb)
            .await
            .map_err(DaemonError::LoadBalancer)
    }
}
