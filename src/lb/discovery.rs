//! Endpoint discovery from the `kubernetes` Service's EndpointSlices: the list of kube-apiserver
//! addresses that the control plane itself maintains (each apiserver's `--advertise-address`,
//! added and removed by its endpoint reconciler as apiservers come and go).
//!
//! Only the parsing lives here and it is pure; the refresher loop in `mod.rs` does the GET.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

use serde::Deserialize;

/// The list request, through any backend. The label is set on the slices of the `kubernetes`
/// Service by kube-apiserver's endpoint reconciler.
pub(crate) const ENDPOINTSLICES_PATH: &str = "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes";

// Only the fields we read; serde ignores the rest (metadata, managedFields, hints, ...).
#[derive(Debug, Deserialize)]
struct EndpointSliceList {
    #[serde(default)]
    items: Option<Vec<EndpointSlice>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct EndpointSlice {
    address_type: String,
    #[serde(default)]
    endpoints: Option<Vec<Endpoint>>,
    #[serde(default)]
    ports: Option<Vec<EndpointPort>>,
}

#[derive(Debug, Deserialize)]
struct Endpoint {
    #[serde(default)]
    addresses: Vec<String>,
    #[serde(default)]
    conditions: Option<Conditions>,
}

#[derive(Debug, Deserialize)]
struct Conditions {
    ready: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct EndpointPort {
    name: Option<String>,
    port: Option<u16>,
    protocol: Option<String>,
}

/// The ready apiserver addresses in an `EndpointSliceList` body, sorted and deduplicated.
///
/// Rules, from the EndpointSlice API: `ready` absent means ready ("consumers should interpret
/// the unknown state as ready"); FQDN slices are skipped; the port is the one named `https` (the
/// `kubernetes` Service's only port), else the slice's only TCP port.
pub(crate) fn parse_endpoint_slices(body: &[u8]) -> Result<Vec<SocketAddr>, String> {
    let list: EndpointSliceList =
        serde_json::from_slice(body).map_err(|e| format!("bad EndpointSliceList: {e}"))?;
    let mut out = BTreeSet::new();
    for slice in list.items.unwrap_or_default() {
        if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
            continue;
        }
        let ports = slice.ports.unwrap_or_default();
        let tcp: Vec<&EndpointPort> = ports
            .iter()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP" && p.port.is_some())
            .collect();
        let port = tcp
            .iter()
            .find(|p| p.name.as_deref() == Some("https"))
            .or(if tcp.len() == 1 { tcp.first() } else { None })
            .and_then(|p| p.port);
        let Some(port) = port else { continue };
        for ep in slice.endpoints.unwrap_or_default() {
            if ep.conditions.and_then(|c| c.ready) == Some(false) {
                continue;
            }
            for a in ep.addresses {
                if let Ok(ip) = a.parse::<IpAddr>() {
                    out.insert(SocketAddr::new(ip, port));
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shaped like `kubectl get --raw` output on a 3-node control plane where one apiserver is
    /// shutting down (ready false), plus an IPv6 slice of a dual-stack cluster.
    const BODY: &str = r#"{
      "kind": "EndpointSliceList",
      "apiVersion": "discovery.k8s.io/v1",
      "metadata": {"resourceVersion": "1234"},
      "items": [
        {
          "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"kubernetes.io/service-name": "kubernetes",
                       "endpointslice.kubernetes.io/managed-by": "endpointslicemirroring-controller.k8s.io"},
            "managedFields": [{"manager": "kube-apiserver", "operation": "Update"}]
          },
          "addressType": "IPv4",
          "endpoints": [
            {"addresses": ["10.0.0.11"], "conditions": {"ready": true}},
            {"addresses": ["10.0.0.12"], "conditions": {}},
            {"addresses": ["10.0.0.13"], "conditions": {"ready": false, "terminating": true}}
          ],
          "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
        },
        {
          "metadata": {"name": "kubernetes-v6", "namespace": "default"},
          "addressType": "IPv6",
          "endpoints": [{"addresses": ["fd00::11"]}],
          "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]
        },
        {
          "metadata": {"name": "odd", "namespace": "default"},
          "addressType": "FQDN",
          "endpoints": [{"addresses": ["api.example.com"]}],
          "ports": [{"name": "https", "port": 6443}]
        }
      ]
    }"#;

    #[test]
    fn parses_ready_ip_endpoints_with_the_https_port() {
        let got = parse_endpoint_slices(BODY.as_bytes()).unwrap();
        let want: Vec<SocketAddr> = ["10.0.0.11:6443", "10.0.0.12:6443", "[fd00::11]:6443"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn empty_lists_and_slices_without_a_port_give_nothing() {
        assert!(
            parse_endpoint_slices(br#"{"kind":"EndpointSliceList","items":[]}"#)
                .unwrap()
                .is_empty()
        );
        assert!(
            parse_endpoint_slices(br#"{"kind":"EndpointSliceList","items":null}"#)
                .unwrap()
                .is_empty()
        );
        let no_port =
            br#"{"items":[{"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"]}],"ports":null}]}"#;
        assert!(parse_endpoint_slices(no_port).unwrap().is_empty());
        let two_unnamed = br#"{"items":[{"addressType":"IPv4","endpoints":[{"addresses":["10.0.0.1"]}],
            "ports":[{"port":1},{"port":2}]}]}"#;
        assert!(parse_endpoint_slices(two_unnamed).unwrap().is_empty());
    }

    #[test]
    fn a_non_json_body_is_an_error() {
        assert!(parse_endpoint_slices(b"<html>").is_err());
    }
}
