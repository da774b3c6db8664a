//! A route to the service range from the host, where the host has none.
//!
//! ClusterIPs are virtual: kube-proxy rewrites them with DNAT in the `OUTPUT` (host processes)
//! and `PREROUTING` (pods) chains. For a host process the kernel looks the route up *before*
//! `OUTPUT` runs, so on a node without a default route (air-gapped sites, test namespaces) a
//! connect to a ClusterIP fails with `ENETUNREACH` and never reaches kube-proxy's rules.
//! Host-network clients then cannot use Services: kube-apiserver calling an admission webhook
//! or an aggregated API, the kubelet probing through a Service, `curl` on the node.
//!
//! So when the first address of the service range has no route, k8sd adds one: the whole range
//! on the interface that holds the advertise address, with that address as the source (so the
//! endpoint's replies come back to an address this node owns). The route only has to exist for
//! the lookup; the packet is DNATed and rerouted before it leaves. A node that already routes
//! the range (a default route, or an operator's own route) is never touched, and the route is
//! added with `ip route add`, so an existing route for exactly this prefix (even a blackhole)
//! is never replaced. The daemon re-checks every few seconds and puts the route back if it
//! disappears (an interface bounce flushes it).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::Daemon;
use crate::pki::IpCidr;

/// How often the route is re-checked.
const RECHECK: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("cannot run `ip {args}`: {source}")]
    Spawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Failed { args: String, stderr: String },
    #[error(
        "no interface holds the advertise address {0}, so no route to the service range can be added; check `ip addr`"
    )]
    NoInterface(IpAddr),
}

/// The `ip` command, behind a seam so the decisions are tested without root.
pub trait IpCommand {
    /// Runs `ip ARGS` and returns its standard output.
    fn run(&self, args: &[String]) -> Result<String, RouteError>;
}

/// The real `ip` binary.
#[derive(Debug, Clone, Copy)]
pub struct HostIp;

impl IpCommand for HostIp {
    fn run(&self, args: &[String]) -> Result<String, RouteError> {
        let joined = args.join(" ");
        let out = std::process::Command::new("ip")
            .args(args)
            .output()
            .map_err(|source| RouteError::Spawn {
                args: joined.clone(),
                source,
            })?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(RouteError::Failed {
                args: joined,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

/// What [`ensure`] found or did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteOutcome {
    /// The first service address already has a route (ours from an earlier check, a default
    /// route, or the operator's): nothing was changed.
    AlreadyRouted,
    /// k8sd added the range on this interface.
    Added { dev: String },
}

/// The interface holding `addr` in `ip -o addr show` output (one address per line:
/// `2: eth0    inet 10.0.0.5/24 brd ... scope global eth0`).
pub fn interface_of(ip_o_addr: &str, addr: IpAddr) -> Option<String> {
    ip_o_addr.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let dev = f.nth(1)?;
        let family = f.next()?;
        if family != "inet" && family != "inet6" {
            return None;
        }
        let a: IpAddr = f.next()?.split('/').next()?.parse().ok()?;
        // A veth may print as `eth0@if7`; the route needs the bare name.
        (a == addr).then(|| dev.split('@').next().unwrap_or(dev).to_string())
    })
}

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Adds a route for `cidr` via the advertise address's interface when the range's first
/// address has no route; leaves a routed node alone.
pub fn ensure(ip: &impl IpCommand, cidr: IpCidr, advertise: IpAddr) -> Result<RouteOutcome, RouteError> {
    let first = cidr.first_service_ip().to_string();
    match ip.run(&args(&["route", "get", &first])) {
        Ok(_) => return Ok(RouteOutcome::AlreadyRouted),
        // ENETUNREACH (no route) or an unreachable/prohibit/blackhole route: the lookup fails.
        // The `add` below refuses to replace an exact-prefix route of any type.
        Err(RouteError::Failed { .. }) => {}
        Err(e) => return Err(e),
    }
    let family = if advertise.is_ipv4() { "-4" } else { "-6" };
    let addrs = ip.run(&args(&["-o", family, "addr", "show"]))?;
    let dev = interface_of(&addrs, advertise).ok_or(RouteError::NoInterface(advertise))?;
    ip.run(&args(&[
        "route",
        "add",
        &cidr.to_string(),
        "dev",
        &dev,
        "src",
        &advertise.to_string(),
    ]))?;
    Ok(RouteOutcome::Added { dev })
}

/// Check now, then every [`RECHECK`] while the node runs. Logs only changes, so a persistent
/// failure is reported once rather than every few seconds.
pub fn spawn(d: &Arc<Daemon>, cidr: IpCidr, advertise: IpAddr) {
    let me = Arc::downgrade(d);
    tokio::spawn(async move {
        let mut last_error: Option<String> = None;
        loop {
            let Some(d) = me.upgrade() else { return };
            if d.running().is_none() {
                return;
            }
            drop(d);
            let res = tokio::task::spawn_blocking(move || ensure(&HostIp, cidr, advertise)).await;
            match res {
                Ok(Ok(RouteOutcome::AlreadyRouted)) => last_error = None,
                Ok(Ok(RouteOutcome::Added { dev })) => {
                    last_error = None;
                    tracing::info!(%cidr, %dev, src = %advertise, "the service range had no route; added one so host processes reach ClusterIPs");
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    if last_error.as_deref() != Some(msg.as_str()) {
                        tracing::warn!(%cidr, error = %msg, "cannot add a route to the service range; host processes cannot reach ClusterIPs");
                        last_error = Some(msg);
                    }
                }
                Err(e) => tracing::error!(error = %e, "the service route check panicked"),
            }
            tokio::time::sleep(RECHECK).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;

    /// Answers `route get` as told and records every call.
    struct FakeIp {
        routed: bool,
        addrs: &'static str,
        calls: RefCell<Vec<String>>,
    }

    impl IpCommand for FakeIp {
        fn run(&self, args: &[String]) -> Result<String, RouteError> {
            let joined = args.join(" ");
            self.calls.borrow_mut().push(joined.clone());
            match args.first().map(String::as_str) {
                Some("route") if args[1] == "get" && !self.routed => Err(RouteError::Failed {
                    args: joined,
                    stderr: "RTNETLINK answers: Network is unreachable".into(),
                }),
                Some("route") => Ok(String::new()),
                _ => Ok(self.addrs.to_string()),
            }
        }
    }

    const ADDRS: &str =
        "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0@if9    inet 10.210.1.2/24 scope global eth0\\       valid_lft forever preferred_lft forever
3: cni0    inet 10.88.0.1/24 brd 10.88.0.255 scope global cni0\\       valid_lft forever preferred_lft forever
";

    fn fake(routed: bool) -> FakeIp {
        FakeIp {
            routed,
            addrs: ADDRS,
            calls: RefCell::new(vec![]),
        }
    }

    #[test]
    fn an_unrouted_range_gets_a_route_on_the_advertise_interface_with_its_source() {
        let ip = fake(false);
        let out = ensure(
            &ip,
            "10.96.0.0/12".parse().unwrap(),
            "10.210.1.2".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(out, RouteOutcome::Added { dev: "eth0".into() });
        assert_eq!(
            *ip.calls.borrow(),
            [
                "route get 10.96.0.1",
                "-o -4 addr show",
                "route add 10.96.0.0/12 dev eth0 src 10.210.1.2"
            ]
        );
    }

    #[test]
    fn a_node_that_routes_the_range_is_never_touched() {
        let ip = fake(true);
        let out = ensure(
            &ip,
            "10.96.0.0/12".parse().unwrap(),
            "10.210.1.2".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(out, RouteOutcome::AlreadyRouted);
        assert_eq!(*ip.calls.borrow(), ["route get 10.96.0.1"]);
    }

    #[test]
    fn no_interface_with_the_advertise_address_is_an_error_and_adds_nothing() {
        let ip = fake(false);
        let err = ensure(&ip, "10.96.0.0/12".parse().unwrap(), "192.0.2.1".parse().unwrap()).unwrap_err();
        assert!(matches!(err, RouteError::NoInterface(_)), "{err}");
        assert!(!ip.calls.borrow().iter().any(|c| c.contains("route add")));
    }

    #[test]
    fn interfaces_are_found_by_exact_address() {
        assert_eq!(
            interface_of(ADDRS, "10.88.0.1".parse().unwrap()).as_deref(),
            Some("cni0")
        );
        assert_eq!(interface_of(ADDRS, "10.210.1.20".parse().unwrap()), None);
        let v6 = "2: eth0    inet6 fd00::5/64 scope global \\       valid_lft forever";
        assert_eq!(
            interface_of(v6, "fd00::5".parse().unwrap()).as_deref(),
            Some("eth0")
        );
    }
}
